"""Single-image transforms for COCO detection / instance segmentation and semantic segmentation.

The pipeline passes a ``results`` dict (numpy, one image) from step to step; ``Pack2DInputs``
turns it into the 2D data contract's item ``dict(inputs=uint8 (3, h, w), data_samples=dict(...))``.

Keys (H0, W0 = the file's size; h, w = the current size)::

    img_path      str                       (from the dataset)
    img_id        int                       (COCO; from the dataset)
    height, width int                       the annotation file's image size (COCO; checked by LoadImage)
    instances     list of dict(bbox=[x1, y1, x2, y2], bbox_label, ignore_flag, mask=COCO segmentation)
    img           (h, w, 3) uint8 RGB       LoadImage; resized / flipped in place of the original
    ori_shape     (H0, W0)                  LoadImage
    img_shape     (h, w)                    LoadImage, Resize2D
    scale_factor  (w / W0, h / H0)          Resize2D (absent = (1.0, 1.0))
    flip          bool                      RandomFlip2D (absent = False)
    gt_bboxes     (K, 4) float32 xyxy       LoadCocoAnnotations, in img_shape pixels
    gt_labels     (K,) int64                LoadCocoAnnotations
    gt_masks      (K, h, w) uint8 {0, 1}    LoadCocoAnnotations(with_mask=True)
    gt_seg_map    (h, w) int64, 255 ignore  a segmentation loader (Resize2D / RandomFlip2D transform it
                                            when present; test pipelines load it AFTER Resize2D, as mmseg
                                            does, so it stays at ori_shape)

Geometry: pixel (i, j) covers [j, j + 1) x [i, i + 1); resizing maps x -> x * w' / w (what cv2 and
PIL do with pixel centres at j + 0.5), so boxes scale exactly with the image. Masks and segmentation
maps are resized by centre-aligned nearest neighbour (output pixel j takes input pixel about
``floor((j + 0.5) * w / w')``: OpenCV's ``INTER_NEAREST_EXACT`` rule, applied by numpy indexing so
any number of masks and any integer dtype work; plain ``INTER_NEAREST``, mmcv's choice, shifts by
half an input pixel), images bilinearly (``cv2.INTER_LINEAR``, mmcv's default).

Randomness (multi-scale choice, flip) comes from numpy's global generator, which mmengine seeds
per data-loader worker.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

from sf3d.registry import TRANSFORMS

from .loading import read_rgb

Scale = Tuple[int, int]  # (W, H)
DEFAULT_META_KEYS = ('img_path', 'img_id', 'ori_shape', 'img_shape', 'scale_factor', 'flip')
GT_KEYS = ('gt_bboxes', 'gt_labels', 'gt_masks', 'gt_seg_map')


def _require(results: Dict, key: str, step: str, hint: str) -> object:
    if key not in results:
        raise KeyError(f'{step} needs results[{key!r}] ({hint}); got keys {sorted(results)}')
    return results[key]


@TRANSFORMS.register_module()
class LoadImage:
    """Read ``results['img_path']`` as ``img`` (H0, W0, 3) uint8 RGB; set ``ori_shape`` and
    ``img_shape`` to (H0, W0). When the sample carries the annotation file's ``height`` and ``width``
    they must equal the file's size (otherwise masks and boxes would not fit the image)."""

    def __call__(self, results: Dict) -> Dict:
        path = _require(results, 'img_path', 'LoadImage', 'the image file, set by the dataset')
        img = read_rgb(path)
        shape = tuple(img.shape[:2])
        expected = (results.get('height'), results.get('width'))
        if None not in expected and tuple(int(v) for v in expected) != shape:
            raise ValueError(f'LoadImage: image {path} is {shape[0]}x{shape[1]} (HxW) but its annotation says '
                             f'{expected[0]}x{expected[1]}')
        results.update(img=img, ori_shape=shape, img_shape=shape)
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}()'


def decode_segmentation(segmentation: Union[List, Dict], height: int, width: int) -> Optional[np.ndarray]:
    """(H, W) uint8 {0, 1} mask of a COCO segmentation: polygons ``[[x1, y1, x2, y2, ...], ...]``,
    uncompressed RLE ``{'size': [H, W], 'counts': [int, ...]}`` or compressed RLE (``counts`` a str
    or bytes). Polygon parts with fewer than 3 points or an odd number of coordinates are dropped
    (pycocotools would read a 4-number part as a box); None when no part is left."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
        if not polygons:
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and 'counts' in segmentation and 'size' in segmentation:
        if list(segmentation['size']) != [height, width]:
            raise ValueError(f"RLE of size {segmentation['size']} does not match the image ({height}, {width})")
        rle = segmentation
        if isinstance(rle['counts'], list):
            rle = mask_utils.frPyObjects(rle, height, width)
        elif isinstance(rle['counts'], str):
            rle = dict(rle, counts=rle['counts'].encode('ascii'))
    else:
        raise ValueError(f'a COCO segmentation must be a list of polygons or an RLE dict with size and counts, '
                         f'got {type(segmentation).__name__}: {str(segmentation)[:80]}')
    return mask_utils.decode(rle)


@TRANSFORMS.register_module()
class LoadCocoAnnotations:
    """Turn the sample's ``instances`` into ``gt_bboxes`` (K, 4) float32 xyxy, ``gt_labels`` (K,)
    int64 and, with ``with_mask``, ``gt_masks`` (K, H0, W0) uint8 decoded with pycocotools.

    As mmdet: instances with ``ignore_flag`` (``iscrowd=1``) are kept out of the GT; with
    ``with_mask`` an instance whose polygons are all degenerate (fewer than 3 points) is ignored
    too. Needs the dataset's ``with_mask=True`` for masks (it keeps the segmentations).
    """

    def __init__(self, with_mask: bool = False):
        self.with_mask = bool(with_mask)

    def __call__(self, results: Dict) -> Dict:
        instances = _require(results, 'instances', 'LoadCocoAnnotations', 'set by CocoDetection')
        if 'ori_shape' in results:
            h, w = results['ori_shape']
        else:
            h, w = _require(results, 'height', 'LoadCocoAnnotations', 'image size'), results['width']
        boxes, labels, masks = [], [], []
        for k, inst in enumerate(instances):
            if inst.get('ignore_flag', 0):
                continue
            if self.with_mask:
                if 'mask' not in inst:
                    raise KeyError(f"LoadCocoAnnotations(with_mask=True): instance {k} of {results.get('img_path')} "
                                   'has no segmentation (build CocoDetection with with_mask=True)')
                try:
                    mask = decode_segmentation(inst['mask'], int(h), int(w))
                except ValueError as err:
                    raise ValueError(f"LoadCocoAnnotations: instance {k} of {results.get('img_path')}: {err}") from err
                if mask is None:
                    continue
                masks.append(mask)
            boxes.append(inst['bbox'])
            labels.append(inst['bbox_label'])
        results['gt_bboxes'] = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)  # (K, 4)
        results['gt_labels'] = np.asarray(labels, dtype=np.int64)  # (K,)
        if self.with_mask:
            results['gt_masks'] = (np.stack(masks) if masks else np.zeros((0, int(h), int(w)), np.uint8))
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(with_mask={self.with_mask})'


def rescale_size(old: Tuple[int, int], scale: Scale) -> Tuple[int, int]:
    """(H, W) of an image of size ``old`` (H, W) resized with its aspect ratio kept so that its long
    side fits ``max(scale)`` and its short side ``min(scale)`` (mmcv's ``rescale_size``:
    ``int(side * factor + 0.5)``)."""
    h, w = old
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def nearest_index(src: int, dst: int) -> np.ndarray:
    """(dst,) source index of every output pixel of a centre-aligned nearest resize src -> dst:
    about ``floor((j + 0.5) * src / dst)``, computed exactly as OpenCV's ``INTER_NEAREST_EXACT``
    does (16.16 fixed point), so exact ties fall the same way as there."""
    step = ((src << 16) + dst // 2) // dst  # src / dst in 16.16 fixed point
    return np.minimum((step // 2 - src % 2 + np.arange(dst, dtype=np.int64) * step) >> 16, src - 1)


def _check_scale(scale, name: str) -> Scale:
    if (not isinstance(scale, (tuple, list)) or len(scale) != 2
            or not all(isinstance(v, (int, np.integer)) and v > 0 for v in scale)):
        raise ValueError(f'Resize2D: {name} must be a (W, H) pair of positive ints, got {scale!r}')
    return int(scale[0]), int(scale[1])


@TRANSFORMS.register_module()
class Resize2D:
    """Resize the image and everything in its frame (boxes, masks, ``gt_seg_map``).

    Args:
        scale: target ``(W, H)``, or a list of them for multi-scale training.
        keep_ratio: keep the aspect ratio: the long side fits ``max(scale)`` and the short side
            ``min(scale)`` (mmdet's ``Resize(keep_ratio=True)``, e.g. (1333, 800)); otherwise the
            image becomes exactly ``(W, H)``.
        mode: how a list of scales is used: ``'choice'`` picks one uniformly (mmdet's
            ``RandomChoiceResize``); ``'range'`` takes two scales and draws W and H as integers
            uniformly between them (mmdet's ``RandomResize(scale=[(1333, 640), (1333, 800)])``).
        ratio_range: with a single scale, multiply it by ``U(ratio_range)`` first (mmseg's
            ``RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0))``).

    Updates ``img``, ``img_shape``, ``scale_factor`` = (w / W0, h / H0); boxes are scaled and
    clipped to the image; ``gt_masks`` / ``gt_seg_map``, when present, nearest-resized.
    """

    def __init__(self, scale: Union[Scale, Sequence[Scale]], keep_ratio: bool = True, mode: str = 'choice',
                 ratio_range: Optional[Tuple[float, float]] = None):
        multi = isinstance(scale, (list, tuple)) and len(scale) > 0 and isinstance(scale[0], (list, tuple))
        self.scales = [_check_scale(s, f'scale[{i}]') for i, s in enumerate(scale)] if multi \
            else [_check_scale(scale, 'scale')]
        if mode not in ('choice', 'range'):
            raise ValueError(f"Resize2D: mode must be 'choice' or 'range', got {mode!r}")
        if mode == 'range' and len(self.scales) != 2:
            raise ValueError(f"Resize2D: mode='range' needs exactly two scales, got {self.scales}")
        if ratio_range is not None:
            if len(self.scales) != 1 or len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]:
                raise ValueError(f'Resize2D: ratio_range needs one scale and 0 < low <= high, got '
                                 f'scale={self.scales}, ratio_range={ratio_range}')
            ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.keep_ratio = bool(keep_ratio)
        self.mode = mode
        self.ratio_range = ratio_range

    def _sample_scale(self) -> Scale:
        if self.ratio_range is not None:
            ratio = np.random.uniform(*self.ratio_range)
            return int(self.scales[0][0] * ratio), int(self.scales[0][1] * ratio)
        if len(self.scales) == 1:
            return self.scales[0]
        if self.mode == 'choice':
            return self.scales[np.random.randint(len(self.scales))]
        (w0, h0), (w1, h1) = self.scales
        return (int(np.random.randint(min(w0, w1), max(w0, w1) + 1)),
                int(np.random.randint(min(h0, h1), max(h0, h1) + 1)))

    def __call__(self, results: Dict) -> Dict:
        img = _require(results, 'img', 'Resize2D', 'add LoadImage before it')
        h, w = img.shape[:2]
        scale = self._sample_scale()
        new_h, new_w = rescale_size((h, w), scale) if self.keep_ratio else (scale[1], scale[0])
        new_h, new_w = max(new_h, 1), max(new_w, 1)
        if (new_h, new_w) != (h, w):
            results['img'] = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
            rows, cols = nearest_index(h, new_h), nearest_index(w, new_w)  # (h',), (w',)
            if 'gt_bboxes' in results:
                factor = np.array([new_w / w, new_h / h, new_w / w, new_h / h], np.float32)
                boxes = results['gt_bboxes'] * factor  # (K, 4)
                boxes[:, 0::2] = boxes[:, 0::2].clip(0, new_w)
                boxes[:, 1::2] = boxes[:, 1::2].clip(0, new_h)
                results['gt_bboxes'] = boxes.astype(np.float32)
            if 'gt_masks' in results:
                results['gt_masks'] = results['gt_masks'][:, rows[:, None], cols[None, :]]  # (K, h', w')
            if 'gt_seg_map' in results:
                results['gt_seg_map'] = results['gt_seg_map'][rows[:, None], cols[None, :]]  # (h', w')
        h0, w0 = results.get('ori_shape', (h, w))
        results.update(img_shape=(new_h, new_w), scale_factor=(new_w / w0, new_h / h0))
        return results

    def __repr__(self) -> str:
        scale = self.scales[0] if len(self.scales) == 1 else self.scales
        return (f'{type(self).__name__}(scale={scale}, keep_ratio={self.keep_ratio}, mode={self.mode!r}, '
                f'ratio_range={self.ratio_range})')


@TRANSFORMS.register_module()
class RandomFlip2D:
    """Flip the image horizontally with probability ``prob``, with its boxes (x1, x2 -> w - x2,
    w - x1), ``gt_masks`` and ``gt_seg_map``; sets ``flip`` (bool)."""

    def __init__(self, prob: float = 0.5):
        if not 0 <= prob <= 1:
            raise ValueError(f'RandomFlip2D: prob must be in [0, 1], got {prob}')
        self.prob = float(prob)

    def __call__(self, results: Dict) -> Dict:
        img = _require(results, 'img', 'RandomFlip2D', 'add LoadImage before it')
        flip = bool(np.random.rand() < self.prob)
        results['flip'] = flip
        if not flip:
            return results
        w = img.shape[1]
        results['img'] = np.ascontiguousarray(img[:, ::-1])
        if 'gt_bboxes' in results:
            boxes = results['gt_bboxes'].copy()  # (K, 4)
            boxes[:, 0], boxes[:, 2] = w - results['gt_bboxes'][:, 2], w - results['gt_bboxes'][:, 0]
            results['gt_bboxes'] = boxes
        if 'gt_masks' in results:
            results['gt_masks'] = np.ascontiguousarray(results['gt_masks'][:, :, ::-1])
        if 'gt_seg_map' in results:
            results['gt_seg_map'] = np.ascontiguousarray(results['gt_seg_map'][:, ::-1])
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(prob={self.prob})'


@TRANSFORMS.register_module()
class Pack2DInputs:
    """Pack a sample into the 2D data contract's item.

    Output: ``dict(inputs=uint8 Tensor (3, h, w) RGB, data_samples=dict(img_path, img_id (if
    present), ori_shape, img_shape, scale_factor (default (1.0, 1.0)), flip (default False), the
    other ``meta_keys`` present, and the GT present: gt_bboxes float32 (K, 4), gt_labels int64 (K,),
    gt_masks uint8 (K, h, w), gt_seg_map int64 (h, w)))``; tuples of ints for the shapes.

    Args:
        meta_keys: sample keys copied into ``data_samples`` (when present).
    """

    def __init__(self, meta_keys: Sequence[str] = DEFAULT_META_KEYS):
        self.meta_keys = tuple(meta_keys)

    def __call__(self, results: Dict) -> Dict:
        img = _require(results, 'img', 'Pack2DInputs', 'add LoadImage before it')
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f'Pack2DInputs: img must be (H, W, 3) uint8, got {img.shape} {img.dtype}')
        inputs = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))  # (3, h, w)
        samples: Dict = dict(scale_factor=(1.0, 1.0), flip=False)
        for key in self.meta_keys:
            if key in results:
                samples[key] = results[key]
        samples['img_shape'] = tuple(int(v) for v in results.get('img_shape', img.shape[:2]))
        samples['ori_shape'] = tuple(int(v) for v in results.get('ori_shape', img.shape[:2]))
        samples['scale_factor'] = tuple(float(v) for v in samples['scale_factor'])
        if 'img_id' in samples:
            samples['img_id'] = int(samples['img_id'])
        dtypes = dict(gt_bboxes=torch.float32, gt_labels=torch.int64, gt_masks=torch.uint8, gt_seg_map=torch.int64)
        for key in GT_KEYS:
            if key in results:
                samples[key] = torch.as_tensor(np.ascontiguousarray(results[key]), dtype=dtypes[key])
        return dict(inputs=inputs, data_samples=samples)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(meta_keys={self.meta_keys})'
