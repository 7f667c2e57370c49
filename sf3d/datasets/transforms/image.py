"""Per-camera image transforms of the multi-view pipeline.

``results['img']`` is a list of N_cam (H, W, 3) arrays in camera order. A transform that moves
pixels (``ResizeCropFlipMultiView``) updates ``results['cameras']`` with the SAME 3x3 pixel
affine through ``MultiViewCameras.image_transform``; the others change pixel values only.
Pixel convention (``sf3d/structures/cameras.py``): pixel (row i, col j) has its centre at
``(u, v) = (j + 0.5, i + 0.5)``; a horizontal flip of width W maps ``u -> W - u``.
Randomness comes from ``np.random`` (seeded per worker by the runner). Every view gets its own draws,
also the previous frame's views of a two-frame sample (12 views): each view's camera follows its
own affine, so the geometry stays exact.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from PIL import Image

from sf3d.registry import TRANSFORMS
from sf3d.structures import img_crop, img_hflip, img_resize


def _images(results: Dict, name: str) -> List[np.ndarray]:
    imgs = results.get('img')
    if not isinstance(imgs, list) or not imgs:
        raise KeyError(f"{name} needs results['img'] = list of (H, W, 3) arrays (run LoadMultiViewImages first), "
                       f"got {type(imgs).__name__}")
    return imgs


def _check_range(value: Sequence[float], name: str) -> Tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise ValueError(f'{name} must be (low, high) with low <= high, got {tuple(value)}')
    return lo, hi


# ---------------------------------------------------------------------------- photometric

@TRANSFORMS.register_module()
class PhotoMetricDistortionMultiView:
    """Photometric distortion of every camera image, each with its own random draws.

    As mmdet's ``PhotoMetricDistortion`` (used by DETR3D), each step with probability 0.5:
    1. brightness: add ``U(-brightness_delta, brightness_delta)``;
    2. contrast (here in mode 0): multiply by ``U(*contrast_range)``;
    3. RGB -> HSV (float: H in degrees [0, 360), S in [0, 1]);
    4. saturation: multiply S by ``U(*saturation_range)``;
    5. hue: add ``U(-hue_delta, hue_delta)`` degrees to H (wrapped);
    6. HSV -> RGB;
    7. contrast (here in mode 1);
    8. random channel permutation (``channel_swap``).
    The mode (contrast second or second to last) is drawn per image. Output is float32; unlike
    mmdet, values are clipped to [0, 255] after the brightness/contrast steps, so the HSV
    conversion sees valid colours. Cameras are not changed.
    """

    def __init__(self, brightness_delta: float = 32, contrast_range: Sequence[float] = (0.5, 1.5),
                 saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: float = 18,
                 channel_swap: bool = True):
        if brightness_delta < 0 or hue_delta < 0:
            raise ValueError(f'brightness_delta and hue_delta must be >= 0, got {brightness_delta}, {hue_delta}')
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = _check_range(contrast_range, 'contrast_range')
        self.saturation_range = _check_range(saturation_range, 'saturation_range')
        self.hue_delta = float(hue_delta)
        self.channel_swap = channel_swap

    def _draw(self) -> Dict:
        """One image's random parameters (None: step skipped), drawn in the order in which the steps
        run (mmdet's), so a seed gives the same images as applying the steps one by one."""
        p: Dict = dict(brightness=None, contrast=None, saturation=None, hue=None, perm=None)
        if np.random.randint(2):
            p['brightness'] = np.random.uniform(-self.brightness_delta, self.brightness_delta)
        p['mode'] = np.random.randint(2)
        if p['mode'] == 0 and np.random.randint(2):
            p['contrast'] = np.random.uniform(*self.contrast_range)
        if np.random.randint(2):
            p['saturation'] = np.random.uniform(*self.saturation_range)
        if np.random.randint(2):
            p['hue'] = np.random.uniform(-self.hue_delta, self.hue_delta)
        if p['mode'] == 1 and np.random.randint(2):
            p['contrast'] = np.random.uniform(*self.contrast_range)
        if self.channel_swap and np.random.randint(2):
            p['perm'] = np.random.permutation(3)
        return p

    def _distort(self, img: np.ndarray) -> np.ndarray:
        p = self._draw()
        # every step writes into one float32 buffer (the input is never modified); each in-place
        # numpy call does the same float32 operation as the textbook expression in the docstring
        if img.dtype == np.float32:
            src, out = img, np.empty(img.shape, np.float32)
        else:
            src = out = img.astype(np.float32)
        if p['brightness'] is not None:
            np.add(src, p['brightness'], out=out)
            src = np.clip(out, 0, 255, out=out)
        if p['mode'] == 0 and p['contrast'] is not None:
            np.multiply(src, p['contrast'], out=out)
            src = np.clip(out, 0, 255, out=out)
        hsv = cv2.cvtColor(np.divide(src, 255.0, out=out), cv2.COLOR_RGB2HSV)  # (H, W, 3) H in degrees
        if p['saturation'] is not None:
            sat = hsv[..., 1]
            np.clip(np.multiply(sat, p['saturation'], out=sat), 0, 1, out=sat)
        if p['hue'] is not None:
            hue = hsv[..., 0]
            np.mod(np.add(hue, p['hue'], out=hue), 360.0, out=hue)
        perm = p['perm']
        reverse = perm is not None and perm.tolist() == [2, 1, 0]  # the swap is then free: HSV -> BGR
        cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR if reverse else cv2.COLOR_HSV2RGB, dst=out)
        np.multiply(out, 255.0, out=out)
        if p['mode'] == 1 and p['contrast'] is not None:  # per value: commutes with the channel swap
            np.clip(np.multiply(out, p['contrast'], out=out), 0, 255, out=out)
        if perm is not None and not reverse and perm.tolist() != [0, 1, 2]:
            swapped = np.empty_like(out)
            cv2.mixChannels([out], [swapped], [int(perm[0]), 0, int(perm[1]), 1, int(perm[2]), 2])
            out = swapped
        return out

    def __call__(self, results: Dict) -> Dict:
        results['img'] = [self._distort(img) for img in _images(results, type(self).__name__)]
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(brightness_delta={self.brightness_delta}, '
                f'contrast_range={self.contrast_range}, saturation_range={self.saturation_range}, '
                f'hue_delta={self.hue_delta}, channel_swap={self.channel_swap})')


# ---------------------------------------------------------------------------- geometric

INTERPOLATIONS = ('area', 'bilinear')


def img_rotation(degrees: float, center: Tuple[float, float]) -> torch.Tensor:
    """(3, 3) pixel affine rotating the image content by ``degrees`` counter-clockwise as displayed
    (PIL's ``Image.rotate`` direction; v points down) about ``center`` = (u, v)."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    cu, cv = center
    return torch.tensor([[c, s, cu - c * cu - s * cv], [-s, c, cv + s * cu - c * cv], [0., 0., 1.]],
                        dtype=torch.float64)


def _crop_pad(img: np.ndarray, x0: int, y0: int, size: Tuple[int, int]) -> np.ndarray:
    """Window of ``size`` = (H, W) whose top-left pixel is (col x0, row y0); outside is 0."""
    h, w = size
    out = np.zeros((h, w) + img.shape[2:], dtype=img.dtype)
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + h, img.shape[0]), min(x0 + w, img.shape[1])
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return out


def _cv2_matrix(affine: np.ndarray) -> np.ndarray:
    """(2, 3) for cv2.warpAffine, whose pixel (col j) has its centre at x = j, from a 3x3 affine in
    the centre-at-j+0.5 convention: shift by +0.5, apply, shift back."""
    shift = np.array([[1., 0., 0.5], [0., 1., 0.5], [0., 0., 1.]])
    return (np.linalg.inv(shift) @ affine @ shift)[:2]


@TRANSFORMS.register_module()
class ResizeCropFlipMultiView:
    """Resize, crop, flip (and optionally rotate) every camera image; update the cameras with the
    same affine (BEVDet's ``ImageAug3D`` recipe, parameters drawn per camera).

    Per camera of an (H, W) image, with ``(fH, fW) = final_size``:

    * scale ``s = fW / W * r``; training: ``r ~ U(*resize_lim)``, test: ``r = 1`` (fit the width).
      ``resize_lim`` is RELATIVE to the fit-the-width scale (unlike BEVFusion's absolute one), so
      a config works for any input resolution. The image becomes ``(round(H s), round(W s))`` and
      the affine uses the exact per-axis factors of that size.
    * crop to ``(fH, fW)``: top row ``int((1 - p) * newH) - fH`` (the bottom ``p`` of the image is cut;
      ``p ~ U(*bot_pct_lim)`` in training, its mean at test); left column ``U(0, max(0, newW - fW))``
      in training, centred at test. Outside the resized image is 0.
    * training only: horizontal flip with probability 0.5 if ``rand_flip``; rotation by
      ``U(*rot_lim)`` degrees (counter-clockwise as displayed) about the output centre.

    ``interpolation``: ``'area'`` (default) resizes with ``cv2.INTER_AREA`` when shrinking and
    ``cv2.INTER_LINEAR`` when enlarging; ``'bilinear'`` always uses ``cv2.INTER_LINEAR`` (about 3x
    cheaper when shrinking, slightly aliased). Both work on uint8 and float32 images without
    converting them and use the same affine, so the cameras do not depend on the choice.

    Updates ``img`` (same dtype), ``img_shape`` (every camera ``(fH, fW)``), ``cameras``
    (``image_transform(A, image_size=(fH, fW))`` with ``A = rotate @ flip @ crop @ resize``) and
    records ``img_aug_params``: per camera ``dict(scale=(sx, sy), crop=(x0, y0), flip, rotate)``.
    """

    def __init__(self, final_size: Sequence[int], resize_lim: Sequence[float] = (1.0, 1.0),
                 bot_pct_lim: Sequence[float] = (0.0, 0.0), rand_flip: bool = True,
                 rot_lim: Sequence[float] = (0.0, 0.0), is_train: bool = False, interpolation: str = 'area'):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f'ResizeCropFlipMultiView: interpolation must be one of {INTERPOLATIONS}, '
                             f'got {interpolation!r}')
        self.interpolation = interpolation
        fh, fw = (int(v) for v in final_size)
        if fh <= 0 or fw <= 0:
            raise ValueError(f'final_size must be positive (H, W), got {tuple(final_size)}')
        self.final_size = (fh, fw)
        self.resize_lim = _check_range(resize_lim, 'resize_lim')
        if self.resize_lim[0] <= 0:
            raise ValueError(f'resize_lim must be > 0, got {tuple(resize_lim)}')
        self.bot_pct_lim = _check_range(bot_pct_lim, 'bot_pct_lim')
        if not (0 <= self.bot_pct_lim[0] and self.bot_pct_lim[1] < 1):
            raise ValueError(f'bot_pct_lim must lie in [0, 1), got {tuple(bot_pct_lim)}')
        self.rand_flip = rand_flip
        self.rot_lim = _check_range(rot_lim, 'rot_lim')
        self.is_train = is_train

    def _sample(self, h: int, w: int) -> Dict:
        fh, fw = self.final_size
        ratio = np.random.uniform(*self.resize_lim) if self.is_train else 1.0
        scale = fw / w * ratio
        new_h, new_w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        bot = np.random.uniform(*self.bot_pct_lim) if self.is_train else float(np.mean(self.bot_pct_lim))
        y0 = int((1 - bot) * new_h) - fh
        x0 = int(np.random.uniform(0, max(0, new_w - fw))) if self.is_train else int(max(0, new_w - fw) / 2)
        flip = bool(self.is_train and self.rand_flip and np.random.randint(2))
        rotate = float(np.random.uniform(*self.rot_lim)) if self.is_train else 0.0
        return dict(resized=(new_h, new_w), scale=(new_w / w, new_h / h), crop=(x0, y0), flip=flip, rotate=rotate)

    def affine(self, p: Dict) -> torch.Tensor:
        """(3, 3) float64 old pixel -> new pixel affine of the parameters ``p``."""
        fh, fw = self.final_size
        a = img_crop(*p['crop']) @ img_resize(*p['scale'])
        if p['flip']:
            a = img_hflip(fw) @ a
        if p['rotate']:
            a = img_rotation(p['rotate'], (fw / 2, fh / 2)) @ a
        return a

    def _apply(self, img: np.ndarray, p: Dict) -> np.ndarray:
        fh, fw = self.final_size
        new_h, new_w = p['resized']
        area = self.interpolation == 'area' and new_w < img.shape[1]  # INTER_AREA only when shrinking
        out = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR)
        x0, y0 = p['crop']
        if 0 <= x0 and 0 <= y0 and x0 + fw <= new_w and y0 + fh <= new_h:  # window inside: no padding
            out = out[y0:y0 + fh, x0:x0 + fw]
            if p['flip']:
                out = cv2.flip(out, 1)  # one contiguous copy, = out[:, ::-1]
        else:
            out = _crop_pad(out, x0, y0, (fh, fw))
            if p['flip']:
                out = out[:, ::-1]
        if p['rotate']:
            rot = img_rotation(p['rotate'], (fw / 2, fh / 2)).numpy()
            out = cv2.warpAffine(np.ascontiguousarray(out), _cv2_matrix(rot), (fw, fh), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return np.ascontiguousarray(out)

    def __call__(self, results: Dict) -> Dict:
        imgs = _images(results, type(self).__name__)
        params = [self._sample(*img.shape[:2]) for img in imgs]
        results['img'] = [self._apply(img, p) for img, p in zip(imgs, params)]
        affines = torch.stack([self.affine(p) for p in params])  # (N_cam, 3, 3)
        results['cameras'] = results['cameras'].image_transform(affines, image_size=self.final_size)
        results['img_shape'] = [self.final_size] * len(imgs)
        results['img_aug_params'] = [{k: p[k] for k in ('scale', 'crop', 'flip', 'rotate')} for p in params]
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(final_size={self.final_size}, resize_lim={self.resize_lim}, '
                f'bot_pct_lim={self.bot_pct_lim}, rand_flip={self.rand_flip}, rot_lim={self.rot_lim}, '
                f'is_train={self.is_train}, interpolation={self.interpolation!r})')


# ---------------------------------------------------------------------------- GridMask

@TRANSFORMS.register_module()
class GridMask:
    """GridMask (Chen et al. 2020) with DETR3D's semantics, drawn for each camera image.

    With probability ``prob`` an image gets a mask: period ``d ~ randint(2, H)``, stripe width
    ``l = clip(int(d * ratio + 0.5), 1, d - 1)``, random phases; stripes of l rows (``use_h``)
    and l columns (``use_w``) every d pixels on a 1.5x canvas, rotated by ``randint(rotate)``
    degrees, centre-cropped to (H, W). ``mode=0`` zeroes the stripes; ``mode=1`` (DETR3D's
    setting) keeps the stripes and zeroes the cells between them (about ``(1 - ratio)^2`` of
    the image). Zeroed pixels become 0, or ``U(-1, 1)`` noise with ``offset``: place this after
    ``NormalizeMultiviewImage`` (0 = the mean colour), as DETR3D masks normalised images.
    Cameras are not changed. Output is float32.
    """

    def __init__(self, use_h: bool = True, use_w: bool = True, rotate: int = 1, offset: bool = False,
                 ratio: float = 0.5, mode: int = 1, prob: float = 0.7):
        if mode not in (0, 1):
            raise ValueError(f'GridMask mode must be 0 or 1, got {mode}')
        if not 0 <= prob <= 1 or not 0 < ratio < 1 or rotate < 1:
            raise ValueError(f'GridMask needs 0 <= prob <= 1, 0 < ratio < 1, rotate >= 1; '
                             f'got prob={prob}, ratio={ratio}, rotate={rotate}')
        self.use_h, self.use_w, self.rotate, self.offset = use_h, use_w, int(rotate), offset
        self.ratio, self.mode, self.prob = float(ratio), mode, float(prob)

    def mask(self, h: int, w: int) -> np.ndarray:
        """(h, w) float32 mask, 1 = keep, 0 = masked (one random draw)."""
        hh, ww = int(1.5 * h), int(1.5 * w)
        d = np.random.randint(2, max(h, 3))
        stripe = min(max(int(d * self.ratio + 0.5), 1), d - 1)
        st_h, st_w = np.random.randint(d), np.random.randint(d)
        angle = np.random.randint(self.rotate)
        top, left = (hh - h) // 2, (ww - w) // 2

        def stripes(n: int, start: int, on: bool) -> np.ndarray:  # (n,) bool: inside one of the n // d stripes
            idx = np.arange(n) - start
            return (idx >= 0) & (idx < (n // d) * d) & (idx % d < stripe) & on

        rows, cols = stripes(hh, st_h, self.use_h), stripes(ww, st_w, self.use_w)
        if angle:
            mask = np.ones((hh, ww), np.float32)
            mask[rows, :] = 0
            mask[:, cols] = 0
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8)).rotate(angle), dtype=np.float32)
            mask = mask[top:top + h, left:left + w]
            return 1 - mask if self.mode == 1 else mask
        # unrotated, the grid is separable: build only the (h, w) window, from one row and one column
        striped = rows[top:top + h, None] | cols[None, left:left + w]  # (h, w) on a row or column stripe
        return (striped if self.mode == 1 else ~striped).astype(np.float32)

    def _apply(self, img: np.ndarray) -> np.ndarray:
        img = np.ascontiguousarray(img, dtype=np.float32)  # no copy if it is one already: never modified in place
        if np.random.rand() > self.prob:
            return img
        mask = self.mask(*img.shape[:2])
        if self.offset:
            mask = mask[..., None]  # (H, W, 1)
            noise = (2 * (np.random.rand(*img.shape[:2]) - 0.5)).astype(np.float32)[..., None]
            return img * mask + noise * (1 - mask)
        return cv2.multiply(img, cv2.merge([mask] * img.shape[2]))  # = img * mask[..., None], faster

    def __call__(self, results: Dict) -> Dict:
        results['img'] = [self._apply(img) for img in _images(results, type(self).__name__)]
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(use_h={self.use_h}, use_w={self.use_w}, rotate={self.rotate}, '
                f'offset={self.offset}, ratio={self.ratio}, mode={self.mode}, prob={self.prob})')


# ---------------------------------------------------------------------------- normalise, pad

@TRANSFORMS.register_module()
class NormalizeMultiviewImage:
    """``(img - mean) / std`` per channel, float32.

    Images are RGB after ``LoadMultiViewImages``. ``to_rgb=True`` keeps RGB (``mean``/``std`` in
    RGB order); ``to_rgb=False`` outputs BGR (for caffe-style weights; ``mean``/``std`` in BGR
    order), which is what an mmdet config with ``to_rgb=False`` produces from its BGR loader.
    Adds ``img_norm_cfg``.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], to_rgb: bool = True):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        if self.mean.shape != (3,) or self.std.shape != (3,) or not (self.std > 0).all():
            raise ValueError(f'NormalizeMultiviewImage: mean and std need 3 values (std > 0), got {mean}, {std}')
        self.to_rgb = to_rgb
        self._tiles: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

    def _norm(self, img: np.ndarray) -> np.ndarray:
        img = img.astype(np.float32, copy=False)
        if not self.to_rgb:
            img = img[..., ::-1]
        h, w, c = img.shape
        # (H, W * 3) rows minus/over the per-channel values tiled along the row: the same float32
        # operations as (img - mean) / std, without numpy's slow length-3 broadcast loop
        rows = np.ascontiguousarray(img).reshape(h, w * c)
        mean, std = self._tiled(w)
        out = np.subtract(rows, mean)
        return np.divide(out, std, out=out).reshape(h, w, c)

    def _tiled(self, w: int) -> Tuple[np.ndarray, np.ndarray]:
        """``mean`` and ``std`` repeated for a row of ``w`` pixels, (w * 3,) each (cached per width)."""
        if w not in self._tiles:
            self._tiles[w] = (np.tile(self.mean, w), np.tile(self.std, w))
        return self._tiles[w]

    def __call__(self, results: Dict) -> Dict:
        results['img'] = [self._norm(img) for img in _images(results, type(self).__name__)]
        results['img_norm_cfg'] = dict(mean=self.mean.tolist(), std=self.std.tolist(), to_rgb=self.to_rgb)
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(mean={self.mean.tolist()}, std={self.std.tolist()}, to_rgb={self.to_rgb})'


@TRANSFORMS.register_module()
class PadMultiViewImage:
    """Pad every camera image at the bottom/right to one common size: ``size`` (H, W), or the
    largest image rounded up to a multiple of ``size_divisor``.

    Intrinsics do not change (padding is bottom/right) and ``cameras.image_size`` keeps the valid
    size. Adds ``pad_shape`` (H, W) (one for all cameras) and ``pad_size_divisor``.
    """

    def __init__(self, size_divisor: Optional[int] = 32, size: Optional[Sequence[int]] = None,
                 pad_val: float = 0.0):
        if (size is None) == (size_divisor is None):
            raise ValueError(f'PadMultiViewImage needs exactly one of size / size_divisor, got {size}, {size_divisor}')
        if size_divisor is not None and size_divisor < 1:
            raise ValueError(f'size_divisor must be >= 1, got {size_divisor}')
        self.size_divisor = size_divisor
        self.size = None if size is None else tuple(int(v) for v in size)
        self.pad_val = pad_val

    def __call__(self, results: Dict) -> Dict:
        imgs = _images(results, type(self).__name__)
        h = max(img.shape[0] for img in imgs)
        w = max(img.shape[1] for img in imgs)
        if self.size is not None:
            if h > self.size[0] or w > self.size[1]:
                raise ValueError(f'PadMultiViewImage: image ({h}, {w}) is larger than size {self.size}')
            h, w = self.size
        else:
            h = -(-h // self.size_divisor) * self.size_divisor
            w = -(-w // self.size_divisor) * self.size_divisor
        padded = []
        for img in imgs:
            if img.shape[:2] == (h, w):  # nothing to pad (arrays are never modified in place)
                padded.append(img)
                continue
            if img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3:  # one pass instead of fill + copy
                bottom, right = h - img.shape[0], w - img.shape[1]
                padded.append(cv2.copyMakeBorder(np.ascontiguousarray(img), 0, bottom, 0, right, cv2.BORDER_CONSTANT,
                                                 value=(self.pad_val,) * 3))
                continue
            out = np.full((h, w) + img.shape[2:], self.pad_val, dtype=img.dtype)
            out[:img.shape[0], :img.shape[1]] = img
            padded.append(out)
        results['img'] = padded
        results['pad_shape'] = (h, w)
        results['pad_size_divisor'] = self.size_divisor
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(size_divisor={self.size_divisor}, size={self.size}, '
                f'pad_val={self.pad_val})')
