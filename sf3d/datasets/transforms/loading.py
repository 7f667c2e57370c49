"""Loading the six camera images of a sample and building its ``MultiViewCameras``.

After ``LoadMultiViewImages`` the sample's camera parameters live ONLY in
``results['cameras']`` (a ``MultiViewCameras``, float64, no batch dims): the per-camera
``cam2img`` / ``lidar2cam`` / ``lidar2img`` matrices that the dataset put into
``results['images'][CAM]`` are removed, so no later transform can read a stale copy.
"""
import io
import math
from typing import Dict, List

import cv2
import numpy as np
from PIL import Image

from sf3d.registry import TRANSFORMS
from sf3d.structures import MultiViewCameras, img_resize

# per-camera keys that become part of MultiViewCameras and are then removed from results['images']
CAMERA_MATRIX_KEYS = ('cam2img', 'lidar2cam', 'lidar2img', 'cam2ego')
JPEG_EOI = b'\xff\xd9'  # the JPEG end-of-image marker: the last two bytes of a complete file
REDUCED_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}  # decode_scale -> OpenCV flag (libjpeg's scaled IDCT)


def read_rgb(path: str, decode_scale: int = 1) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of the image at ``path``; a missing, truncated or otherwise
    unreadable file raises an error that names it.

    ``decode_scale`` s in (1, 2, 4, 8) returns the image reduced s times, (ceil(H / s), ceil(W / s)),
    pixel (u, v) -> (u / s, v / s): a JPEG is decoded at that size by libjpeg's scaled IDCT (several
    times cheaper than a full decode; each output pixel about the mean of its s x s block), other
    files are decoded fully and reduced with ``cv2.INTER_AREA`` (the s x s block mean).

    A complete colour JPEG (what the nuScenes cameras write: PIL mode RGB, ending with the JPEG
    end-of-image marker) is decoded by OpenCV, about 3x faster per image than PIL here and
    pixel-identical (both libjpeg-turbo; EXIF orientation ignored by both). Everything else --
    PNG, grayscale or CMYK JPEGs, a truncated file (no end-of-image marker) -- goes through PIL,
    which converts to RGB or raises.
    """
    if decode_scale not in REDUCED_FLAGS:
        raise ValueError(f'read_rgb: decode_scale must be one of {sorted(REDUCED_FLAGS)}, got {decode_scale!r}')
    try:
        with open(path, 'rb') as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            size = (math.ceil(img.height / decode_scale), math.ceil(img.width / decode_scale), 3)
            if img.format == 'JPEG' and img.mode == 'RGB' and data.endswith(JPEG_EOI):
                flags = REDUCED_FLAGS[decode_scale] | cv2.IMREAD_IGNORE_ORIENTATION
                bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
                if bgr is not None and bgr.shape == size:
                    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            rgb = np.asarray(img if img.mode == 'RGB' else img.convert('RGB'))  # decodes the whole file here
        if decode_scale == 1:
            return rgb
        # edge-pad to whole s x s blocks, then the block means (INTER_AREA at an integer factor)
        padded = np.pad(rgb, ((0, size[0] * decode_scale - rgb.shape[0]), (0, size[1] * decode_scale - rgb.shape[1]),
                              (0, 0)), mode='edge')
        return cv2.resize(padded, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    except FileNotFoundError as err:
        raise FileNotFoundError(f'camera image {path} does not exist') from err
    except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for corrupt/truncated files
        raise OSError(f'camera image {path} cannot be read (corrupt or truncated?): {err}') from err


def _file_size(path: str) -> tuple:
    """(H, W) of the image file at ``path`` (reads the header only)."""
    with Image.open(path) as img:
        return img.height, img.width


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
        decode_scale: 1 (default: full size), or 2, 4, 8 to decode every JPEG that many times
            smaller (``read_rgb``): ``cameras`` then describe the reduced images (intrinsics scaled
            by 1 / decode_scale); ``ori_shape`` keeps the file's size, ``img_shape`` the reduced one.
            For pipelines that shrink the images anyway (``ResizeCropFlipMultiView``'s scale is
            relative to the width it receives).
    """

    def __init__(self, to_float32: bool = False, decode_scale: int = 1):
        if decode_scale not in REDUCED_FLAGS:
            raise ValueError(f'LoadMultiViewImages: decode_scale must be one of {sorted(REDUCED_FLAGS)}, '
                             f'got {decode_scale!r}')
        self.to_float32 = to_float32
        self.decode_scale = decode_scale

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
            img = read_rgb(info['img_path'], self.decode_scale)
            imgs.append(img.astype(np.float32) if self.to_float32 else img)
            cam2img.append(np.asarray(info['cam2img'], dtype=np.float64))
            lidar2cam.append(np.asarray(info['lidar2cam'], dtype=np.float64))
            for key in CAMERA_MATRIX_KEYS:
                info.pop(key, None)
        sizes = [tuple(img.shape[:2]) for img in imgs]
        ori_sizes = list(sizes)
        if self.decode_scale != 1:
            ori_sizes = [_file_size(info['img_path']) for info in images.values()]
        cameras = MultiViewCameras(np.stack(cam2img), np.stack(lidar2cam), np.asarray(ori_sizes, np.float64))
        if self.decode_scale != 1:
            shrink = img_resize(1 / self.decode_scale, 1 / self.decode_scale)  # (3, 3) u -> u / s
            cameras = cameras.image_transform(shrink, image_size=np.asarray(sizes, np.float64))
        results['img'] = imgs
        results['cameras'] = cameras
        results['cam_names'] = list(images)
        results['img_shape'] = sizes
        results['ori_shape'] = ori_sizes
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(to_float32={self.to_float32}, decode_scale={self.decode_scale})'
