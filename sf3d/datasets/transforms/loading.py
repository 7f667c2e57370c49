"""Loading the six camera images of a sample and building its ``MultiViewCameras``.

After ``LoadMultiViewImages`` the sample's camera parameters live ONLY in
``results['cameras']`` (a ``MultiViewCameras``, float64, no batch dims): the per-camera
``cam2img`` / ``lidar2cam`` / ``lidar2img`` matrices that the dataset put into
``results['images'][CAM]`` are removed, so no later transform can read a stale copy.
"""
import io
from typing import Dict, List

import cv2
import numpy as np
from PIL import Image

from sf3d.registry import TRANSFORMS
from sf3d.structures import MultiViewCameras

# per-camera keys that become part of MultiViewCameras and are then removed from results['images']
CAMERA_MATRIX_KEYS = ('cam2img', 'lidar2cam', 'lidar2img', 'cam2ego')
JPEG_EOI = b'\xff\xd9'  # the JPEG end-of-image marker: the last two bytes of a complete file


def read_rgb(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of the image at ``path``; a missing, truncated or otherwise
    unreadable file raises an error that names it.

    A complete colour JPEG (what the nuScenes cameras write: PIL mode RGB, ending with the JPEG
    end-of-image marker) is decoded by OpenCV, about 3x faster per image than PIL here and
    pixel-identical (both libjpeg-turbo; EXIF orientation ignored by both). Everything else --
    PNG, grayscale or CMYK JPEGs, a truncated file (no end-of-image marker) -- goes through PIL,
    which converts to RGB or raises.
    """
    try:
        with open(path, 'rb') as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            if img.format == 'JPEG' and img.mode == 'RGB' and data.endswith(JPEG_EOI):
                bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
                if bgr is not None and bgr.shape == (img.height, img.width, 3):
                    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            return np.asarray(img if img.mode == 'RGB' else img.convert('RGB'))  # decodes the whole file here
    except FileNotFoundError as err:
        raise FileNotFoundError(f'camera image {path} does not exist') from err
    except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for corrupt/truncated files
        raise OSError(f'camera image {path} cannot be read (corrupt or truncated?): {err}') from err


@TRANSFORMS.register_module()
class LoadMultiViewImages:
    """Read every camera image of a sample and build its ``MultiViewCameras``.

    Required keys: ``images`` = ``{CAM: {img_path, cam2img (3, 3), lidar2cam (4, 4), ...}}`` in
    camera order (the dataset's ``CAMERAS`` order).

    Added keys:
        img: list of N_cam (H, W, 3) RGB arrays (uint8, or float32 with ``to_float32``).
        cameras: ``MultiViewCameras`` (float64) with ``image_size`` = each image's (H, W).
        cam_names: list of N_cam camera names.
        img_shape, ori_shape: list of N_cam (H, W) tuples.
    Modified keys: ``images[CAM]`` loses its camera matrices (paths and tokens stay).

    Args:
        to_float32: convert the pixels to float32 (values still 0..255).
    """

    def __init__(self, to_float32: bool = False):
        self.to_float32 = to_float32

    def __call__(self, results: Dict) -> Dict:
        images = results.get('images')
        if not images:
            raise KeyError(f"LoadMultiViewImages needs results['images'] = {{CAM: {{img_path, cam2img, lidar2cam}}}}, "
                           f"got keys {sorted(results)}")
        imgs: List[np.ndarray] = []
        cam2img, lidar2cam = [], []
        for cam, info in images.items():
            for key in ('img_path', 'cam2img', 'lidar2cam'):
                if key not in info:
                    raise KeyError(f"LoadMultiViewImages: results['images']['{cam}'] has no '{key}' "
                                   f"(sample {results.get('token', '?')})")
            img = read_rgb(info['img_path'])
            imgs.append(img.astype(np.float32) if self.to_float32 else img)
            cam2img.append(np.asarray(info['cam2img'], dtype=np.float64))
            lidar2cam.append(np.asarray(info['lidar2cam'], dtype=np.float64))
            for key in CAMERA_MATRIX_KEYS:
                info.pop(key, None)
        sizes = [tuple(img.shape[:2]) for img in imgs]
        results['img'] = imgs
        results['cameras'] = MultiViewCameras(np.stack(cam2img), np.stack(lidar2cam), np.asarray(sizes, np.float64))
        results['cam_names'] = list(images)
        results['img_shape'] = sizes
        results['ori_shape'] = list(sizes)
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(to_float32={self.to_float32})'
