"""Semantic-segmentation transforms (registered in ``sf3d.registry.TRANSFORMS``): mmseg's ADE20K
recipe -- load the label map, random resize, random crop with a category-ratio limit, photometric
distortion -- and the test-time resize.

Keys (the shared 2D contract): ``img`` (H, W, 3) uint8 RGB numpy array until ``Pack2DInputs``;
``gt_seg_map`` (H, W) int64 numpy array, 0..C-1 and 255 = ignore; ``ori_shape`` (H0, W0) of the
file; ``img_shape`` (h, w) after resize / crop; ``scale_factor`` (w / W0, h / H0) floats (every
resize multiplies it, so a chain of resizes keeps it true; crops leave it). Transforms that move
pixels move ``img`` and ``gt_seg_map`` together; ``ResizeSegTest`` moves the image only (the
metric compares at ``ori_shape``). Randomness comes from ``np.random`` (seeded per worker).

Pixel convention: pixel (row i, col j) has its centre at (j + 0.5, i + 0.5); a resize maps edges
to edges. Images use ``cv2.INTER_LINEAR`` (mmcv's 'bilinear'); label maps use nearest neighbour on
that SAME grid (source pixel ``floor((i + 0.5) * H / h)``, ``cv2.INTER_NEAREST_EXACT``), so labels
stay aligned with the bilinear image. mmcv's ``'nearest'`` (``cv2.INTER_NEAREST``, source pixel
``floor(i * H / h)``) shifts labels by up to one source pixel towards the top left; this is the one
deliberate difference from mmseg here.
"""
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

from sf3d.registry import TRANSFORMS

from .image import PhotoMetricDistortionMultiView

IGNORE_INDEX = 255


def _image(results: Dict, name: str) -> np.ndarray:
    img = results.get('img')
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        got = f'array of shape {img.shape}' if isinstance(img, np.ndarray) else type(img).__name__
        raise KeyError(f"{name} needs results['img'] = (H, W, 3) numpy array (load the image first), got {got} "
                       f"({results.get('img_path', 'unknown image')})")
    return img


def _seg(results: Dict, img: np.ndarray, name: str) -> Optional[np.ndarray]:
    """``results['gt_seg_map']`` (H, W) if present; its size must be the image's."""
    seg = results.get('gt_seg_map')
    if seg is not None and (not isinstance(seg, np.ndarray) or seg.shape != img.shape[:2]):
        got = seg.shape if isinstance(seg, np.ndarray) else type(seg).__name__
        raise ValueError(f"{name}: gt_seg_map {got} does not match the image size {img.shape[:2]} "
                         f"({results.get('img_path', 'unknown image')}, {results.get('seg_map_path')})")
    return seg


def _pair(value: Sequence, name: str, kind=int) -> Tuple:
    if len(value) != 2 or any(v <= 0 for v in value):
        raise ValueError(f'{name} must be two positive numbers, got {value}')
    return tuple(kind(v) for v in value)


def rescaled_size(size: Tuple[int, int], scale: Tuple[int, int], keep_ratio: bool) -> Tuple[int, int]:
    """(new_h, new_w) of an image of ``size`` = (h, w) resized to ``scale``, as mmcv does.

    keep_ratio: ``scale`` = (long, short) edge limits; the factor is ``min(max(scale) / max(h, w),
    min(scale) / min(h, w))`` and each side is ``int(side * factor + 0.5)``. Otherwise ``scale``
    is the output (w, h).
    """
    h, w = size
    if not keep_ratio:
        return int(scale[1]), int(scale[0])
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(int(h * factor + 0.5), 1), max(int(w * factor + 0.5), 1)


def resize_seg_map(seg: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map (any integer dtype) to ``size`` = (h, w): output
    pixel i takes source pixel ``floor((i + 0.5) * H / h)`` (pixel centres; module docstring), computed
    exactly in integers (a centre that falls on a source pixel edge takes the pixel below / right of it)."""
    rows = (2 * np.arange(size[0]) + 1) * seg.shape[0] // (2 * size[0])  # (h,)
    cols = (2 * np.arange(size[1]) + 1) * seg.shape[1] // (2 * size[1])  # (w,)
    return seg[rows[:, None], cols[None, :]]  # (h, w)


def _resize(results: Dict, size: Tuple[int, int], with_seg: bool, name: str) -> Dict:
    """Resize ``img`` (bilinear) and, with_seg, ``gt_seg_map`` (nearest) to ``size`` = (h, w);
    update ``img_shape`` and ``scale_factor``."""
    img = _image(results, name)
    seg = _seg(results, img, name) if with_seg else None
    h, w = img.shape[:2]
    new_h, new_w = size
    if (new_h, new_w) != (h, w):
        results['img'] = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        if seg is not None:
            results['gt_seg_map'] = resize_seg_map(seg, (new_h, new_w))
    sx, sy = results.get('scale_factor', (1.0, 1.0))
    results['scale_factor'] = (float(sx) * new_w / w, float(sy) * new_h / h)
    results['img_shape'] = (new_h, new_w)
    return results


# ---------------------------------------------------------------------------- loading

@TRANSFORMS.register_module()
class LoadSegAnnotation:
    """Read ``results['seg_map_path']`` (a single-channel PNG: mode L, P or I) into
    ``results['gt_seg_map']`` (H, W) int64.

    With reduce_zero_label (ADE20K), file value 0 ("other") becomes 255 (ignore) and v becomes
    v - 1; a file value 255 stays 255 (mmseg's rule). ``reduce_zero_label=None`` takes the
    sample's own ``reduce_zero_label`` (what ``ADE20KDataset`` stores; False when absent); an
    explicit value that contradicts the sample's is an error. The map must have the size of
    ``ori_shape`` when that is already set (image loaded first).
    """

    def __init__(self, reduce_zero_label: Optional[bool] = None):
        self.reduce_zero_label = reduce_zero_label

    def __call__(self, results: Dict) -> Dict:
        path = results.get('seg_map_path')
        if not path:
            raise KeyError(f"LoadSegAnnotation needs results['seg_map_path'] (a dataset with annotations), got "
                           f"{path!r} for {results.get('img_path', 'unknown image')}")
        reduce = results.get('reduce_zero_label', self.reduce_zero_label or False)
        if self.reduce_zero_label is not None and bool(self.reduce_zero_label) != bool(reduce):
            raise ValueError(f'LoadSegAnnotation(reduce_zero_label={self.reduce_zero_label}) contradicts the '
                             f"dataset's reduce_zero_label={reduce} for {path}")
        try:
            with Image.open(path) as f:
                if f.mode not in ('L', 'P', 'I', 'I;16'):
                    raise ValueError(f'mode {f.mode}: expected a single-channel label map (mode L, P or I)')
                seg = np.array(f, dtype=np.int64)  # (H, W)
        except (OSError, ValueError) as err:
            raise OSError(f'LoadSegAnnotation: cannot read label map {path}: {err}') from err
        ori_shape = results.get('ori_shape')
        if ori_shape is not None and tuple(ori_shape) != seg.shape:
            raise ValueError(f'LoadSegAnnotation: label map {path} is {seg.shape}, its image '
                             f"{results.get('img_path')} is {tuple(ori_shape)}")
        if reduce:
            ignore = (seg == 0) | (seg == IGNORE_INDEX)
            seg -= 1
            seg[ignore] = IGNORE_INDEX
        results['gt_seg_map'] = seg
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(reduce_zero_label={self.reduce_zero_label})'


# ---------------------------------------------------------------------------- geometric

@TRANSFORMS.register_module()
class RandomResizeSeg:
    """mmseg's ``RandomResize``: draw ``ratio ~ U(ratio_range)``, scale ``(int(scale[0] * ratio),
    int(scale[1] * ratio))``, and resize image (bilinear) and ``gt_seg_map`` (nearest) to it
    (``rescaled_size``: with keep_ratio the scale is (long, short) edge limits, else the output (w, h)).
    ``ratio_range=None`` resizes to ``scale`` itself. Updates ``img_shape`` and ``scale_factor``.
    """

    def __init__(self, scale: Sequence[int] = (2048, 512), ratio_range: Optional[Sequence[float]] = (0.5, 2.0),
                 keep_ratio: bool = True):
        self.scale = _pair(scale, 'RandomResizeSeg: scale')
        self.ratio_range = None if ratio_range is None else _pair(ratio_range, 'RandomResizeSeg: ratio_range', float)
        if self.ratio_range is not None and self.ratio_range[0] > self.ratio_range[1]:
            raise ValueError(f'RandomResizeSeg: ratio_range must be (low, high) with low <= high, got {ratio_range}')
        self.keep_ratio = keep_ratio

    def __call__(self, results: Dict) -> Dict:
        scale = self.scale
        if self.ratio_range is not None:
            lo, hi = self.ratio_range
            ratio = np.random.random_sample() * (hi - lo) + lo
            scale = (int(scale[0] * ratio), int(scale[1] * ratio))
        img = _image(results, type(self).__name__)
        return _resize(results, rescaled_size(img.shape[:2], scale, self.keep_ratio), True, type(self).__name__)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(scale={self.scale}, ratio_range={self.ratio_range}, '
                f'keep_ratio={self.keep_ratio})')


@TRANSFORMS.register_module()
class ResizeSegTest:
    """Test-time resize of the IMAGE only to ``scale`` (``rescaled_size``; default: long edge <= 2048,
    short edge <= 512, aspect kept); ``gt_seg_map`` stays at ``ori_shape`` for the metric.
    Updates ``img_shape`` and ``scale_factor`` (the model undoes the resize with them)."""

    def __init__(self, scale: Sequence[int] = (2048, 512), keep_ratio: bool = True):
        self.scale = _pair(scale, 'ResizeSegTest: scale')
        self.keep_ratio = keep_ratio

    def __call__(self, results: Dict) -> Dict:
        img = _image(results, type(self).__name__)
        return _resize(results, rescaled_size(img.shape[:2], self.scale, self.keep_ratio), False, type(self).__name__)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(scale={self.scale}, keep_ratio={self.keep_ratio})'


@TRANSFORMS.register_module()
class RandomCropSeg:
    """mmseg's ``RandomCrop``: a random ``crop_size`` = (h, w) window of ``img`` and ``gt_seg_map``
    (the whole side where the image is smaller; no padding -- the collate pads).

    With ``cat_max_ratio`` < 1 a window is redrawn, up to 10 times, while it holds fewer than two
    labels or one label covers at least ``cat_max_ratio`` of its non-ignored pixels (``ignore_index``
    not counted); after 10 redraws the last window is kept. Updates ``img_shape``.
    """

    def __init__(self, crop_size: Sequence[int] = (512, 512), cat_max_ratio: float = 1.0,
                 ignore_index: int = IGNORE_INDEX):
        self.crop_size = _pair(crop_size, 'RandomCropSeg: crop_size')
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f'RandomCropSeg: cat_max_ratio must be in (0, 1], got {cat_max_ratio}')
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = ignore_index

    def _window(self, shape: Tuple[int, int]) -> Tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of a random window in an image of ``shape`` (h, w)."""
        y0 = np.random.randint(0, max(shape[0] - self.crop_size[0], 0) + 1)
        x0 = np.random.randint(0, max(shape[1] - self.crop_size[1], 0) + 1)
        return y0, y0 + self.crop_size[0], x0, x0 + self.crop_size[1]

    def _balanced(self, seg: np.ndarray) -> bool:
        labels, counts = np.unique(seg, return_counts=True)
        counts = counts[labels != self.ignore_index]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def __call__(self, results: Dict) -> Dict:
        name = type(self).__name__
        img = _image(results, name)
        seg = _seg(results, img, name)
        y0, y1, x0, x1 = self._window(img.shape[:2])
        if self.cat_max_ratio < 1:
            if seg is None:
                raise KeyError(f"{name} with cat_max_ratio < 1 needs results['gt_seg_map'] "
                               f"({results.get('img_path', 'unknown image')}); load it first")
            for _ in range(10):
                if self._balanced(seg[y0:y1, x0:x1]):
                    break
                y0, y1, x0, x1 = self._window(img.shape[:2])
        results['img'] = np.ascontiguousarray(img[y0:y1, x0:x1])
        if seg is not None:
            results['gt_seg_map'] = np.ascontiguousarray(seg[y0:y1, x0:x1])
        results['img_shape'] = results['img'].shape[:2]
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(crop_size={self.crop_size}, cat_max_ratio={self.cat_max_ratio}, '
                f'ignore_index={self.ignore_index})')


# ---------------------------------------------------------------------------- photometric

@TRANSFORMS.register_module()
class PhotoMetricDistortionSeg(PhotoMetricDistortionMultiView):
    """mmseg's ``PhotoMetricDistortion`` on ``img`` (one image): brightness, contrast, saturation,
    hue and channel swap, each with probability 0.5 (the steps and arguments of
    ``PhotoMetricDistortionMultiView``); the result is rounded back to uint8. Labels are unchanged."""

    def __call__(self, results: Dict) -> Dict:
        out = self._distort(_image(results, type(self).__name__))
        results['img'] = np.clip(np.round(out), 0, 255).astype(np.uint8)
        return results
