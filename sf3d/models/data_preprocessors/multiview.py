"""Multi-view data preprocessor: the pixel-wise float work of the training pipeline, batched on the device.

The data-loader workers then only decode, resize/crop/flip (uint8) and pack; this module does, on
the model's device, what ``PhotoMetricDistortionMultiView``, ``NormalizeMultiviewImage`` and
``GridMask`` do per image in the pipeline (DETR3D likewise applies GridMask inside the model).

Axis names: B samples, N cameras (N_cam), M = B * N images, H, W pixels.

Differences from the pipeline transforms:
* random draws come from torch's generator on the device (per image, same distributions);
* hue/saturation use an exact RGB -> HSV -> RGB round trip written in torch (H in degrees, S in
  [0, 1], V = max(R, G, B): OpenCV's float HSV, as mmdet's ``PhotoMetricDistortion`` uses), so they
  approximate the OpenCV conversion up to float32 rounding; every image goes through the round
  trip (identity parameters when its saturation/hue step is not drawn);
* GridMask supports DETR3D's setting only: no rotation (``rotate=1``) and no noise offset.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from mmengine.model import BaseDataPreprocessor
from torch import Tensor

from sf3d.registry import MODELS
from sf3d.structures import LiDARBoxes, MultiViewCameras

from .image import register_mean_std

__all__ = ['BatchPhotometricDistortion', 'BatchGridMask', 'MultiViewDataPreprocessor']


def _uniform(lo: float, hi: float, m: int, device: torch.device) -> Tensor:
    """(M,) draws from U(lo, hi)."""
    return lo + (hi - lo) * torch.rand(m, device=device)


def _coin(m: int, device: torch.device, p: float = 0.5) -> Tensor:
    """(M,) bool, True with probability ``p``."""
    return torch.rand(m, device=device) < p


def rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(M, 3, H, W) RGB -> H (degrees in [0, 360)), S in [0, 1], V (same scale as x), each (M, H, W)."""
    r, g, b = x.unbind(1)  # (M, H, W) each
    v, argmax = x.max(dim=1)  # (M, H, W)
    c = v - x.min(dim=1).values  # (M, H, W) chroma
    safe_c = torch.where(c > 0, c, torch.ones_like(c))
    h = torch.where(argmax == 0, torch.remainder((g - b) / safe_c, 6.0),
                    torch.where(argmax == 1, (b - r) / safe_c + 2.0, (r - g) / safe_c + 4.0))
    h = torch.where(c > 0, h * 60.0, torch.zeros_like(h))
    s = torch.where(v > 0, c / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    return h, s, v


def hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """H (degrees), S, V, each (M, H, W) -> (M, 3, H, W) RGB: channel n of (R, G, B) is
    ``V - V S clamp(min(k, 4 - k), 0, 1)`` with ``k = (n' + H / 60) mod 6``, n' = 5, 3, 1."""
    n = torch.tensor([5.0, 3.0, 1.0], device=h.device, dtype=h.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + h.unsqueeze(1) / 60.0, 6.0)  # (M, 3, H, W)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)  # (M, 3, H, W)
    return v.unsqueeze(1) * (1.0 - s.unsqueeze(1) * ramp)  # (M, 3, H, W)


class BatchPhotometricDistortion:
    """mmdet's ``PhotoMetricDistortion`` (as ``PhotoMetricDistortionMultiView``) on a batch of
    (M, 3, H, W) float RGB images in [0, 255], every image with its own draws. Each step with
    probability 0.5: brightness ``+ U(-brightness_delta, brightness_delta)``; contrast ``* U(contrast_range)``
    (before the HSV steps or after them, chosen per image); saturation ``S * U(saturation_range)``;
    hue ``H + U(-hue_delta, hue_delta)`` degrees; random channel permutation (``channel_swap``).
    Values are clipped to [0, 255] after brightness/contrast and S to [0, 1], as in the pipeline transform.
    """

    def __init__(self, brightness_delta: float = 32, contrast_range: Sequence[float] = (0.5, 1.5),
                 saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: float = 18, channel_swap: bool = True):
        if brightness_delta < 0 or hue_delta < 0:
            raise ValueError(f'photometric: brightness_delta and hue_delta must be >= 0, '
                             f'got {brightness_delta}, {hue_delta}')
        for name, rng in (('contrast_range', contrast_range), ('saturation_range', saturation_range)):
            if len(rng) != 2 or rng[0] > rng[1]:
                raise ValueError(f'photometric: {name} must be (low, high) with low <= high, got {rng}')
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = (float(contrast_range[0]), float(contrast_range[1]))
        self.saturation_range = (float(saturation_range[0]), float(saturation_range[1]))
        self.hue_delta = float(hue_delta)
        self.channel_swap = channel_swap

    def __call__(self, x: Tensor) -> Tensor:
        """(M, 3, H, W) float in [0, 255] -> (M, 3, H, W) distorted (a new tensor)."""
        m, dev = x.shape[0], x.device
        per_image = (m, 1, 1, 1)

        def factor(lo: float, hi: float, identity: float) -> Tensor:  # (M,) drawn with prob 0.5, else identity
            return torch.where(_coin(m, dev), _uniform(lo, hi, m, dev), torch.full((m,), identity, device=dev))

        brightness = factor(-self.brightness_delta, self.brightness_delta, 0.0)
        contrast = factor(*self.contrast_range, 1.0)
        contrast_first = _coin(m, dev)  # mode 0: contrast before the HSV steps
        saturation = factor(*self.saturation_range, 1.0)
        hue = factor(-self.hue_delta, self.hue_delta, 0.0)

        x = (x + brightness.view(per_image)).clamp(0.0, 255.0)
        first = torch.where(contrast_first, contrast, torch.ones_like(contrast))
        x = (x * first.view(per_image)).clamp(0.0, 255.0)
        h, s, v = rgb_to_hsv(x)  # (M, H, W) each
        s = (s * saturation.view(m, 1, 1)).clamp(0.0, 1.0)
        h = torch.remainder(h + hue.view(m, 1, 1), 360.0)
        x = hsv_to_rgb(h, s, v)  # (M, 3, H, W)
        last = torch.where(contrast_first, torch.ones_like(contrast), contrast)
        x = (x * last.view(per_image)).clamp(0.0, 255.0)
        if self.channel_swap:
            perm = torch.rand(m, 3, device=dev).argsort(dim=1)  # (M, 3) a uniform random permutation
            perm = torch.where(_coin(m, dev)[:, None], perm, torch.arange(3, device=dev).expand(m, 3))
            x = torch.gather(x, 1, perm.view(m, 3, 1, 1).expand_as(x))  # (M, 3, H, W)
        return x

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(brightness_delta={self.brightness_delta}, '
                f'contrast_range={self.contrast_range}, saturation_range={self.saturation_range}, '
                f'hue_delta={self.hue_delta}, channel_swap={self.channel_swap})')


def grid_keep(h: int, w: int, d: Tensor, stripe: Tensor, st_h: Tensor, st_w: Tensor, use_h: bool, use_w: bool,
              mode: int) -> Tensor:
    """(M, h, w) bool keep-mask of M unrotated grids (``GridMask.mask`` with angle 0): on a
    (1.5 h, 1.5 w) canvas, rows ``st_h + k d + [0, stripe)`` (and columns likewise) for the
    ``canvas // d`` whole periods are stripes; the centre (h, w) window is kept. ``mode=1`` keeps
    the stripes, ``mode=0`` keeps the cells between them. d, stripe, st_h, st_w: (M,) integer tensors."""
    hh, ww = int(1.5 * h), int(1.5 * w)
    top, left = (hh - h) // 2, (ww - w) // 2

    def stripes(n: int, canvas: int, offset: int, start: Tensor, on: bool) -> Tensor:  # (M, n)
        idx = torch.arange(n, device=d.device) + offset - start[:, None]  # (M, n) canvas index - phase
        hit = (idx >= 0) & (idx < (canvas // d * d)[:, None]) & (torch.remainder(idx, d[:, None]) < stripe[:, None])
        return hit & on

    rows = stripes(h, hh, top, st_h, use_h)  # (M, h)
    cols = stripes(w, ww, left, st_w, use_w)  # (M, w)
    striped = rows[:, :, None] | cols[:, None, :]  # (M, h, w)
    return striped if mode == 1 else ~striped


class BatchGridMask:
    """GridMask with DETR3D's semantics (``GridMask`` transform, unrotated, no offset), one draw
    per image: with probability ``prob``, period ``d ~ randint(2, H)``, stripe width
    ``clip(int(d ratio + 0.5), 1, d - 1)``, phases ``randint(d)``; masked pixels become 0."""

    def __init__(self, use_h: bool = True, use_w: bool = True, ratio: float = 0.5, mode: int = 1, prob: float = 0.7):
        if mode not in (0, 1):
            raise ValueError(f'grid_mask: mode must be 0 or 1, got {mode}')
        if not 0 <= prob <= 1 or not 0 < ratio < 1:
            raise ValueError(f'grid_mask: needs 0 <= prob <= 1 and 0 < ratio < 1, got prob={prob}, ratio={ratio}')
        self.use_h, self.use_w, self.ratio, self.mode, self.prob = use_h, use_w, float(ratio), mode, float(prob)

    def __call__(self, x: Tensor) -> Tensor:
        """(M, C, H, W) -> (M, C, H, W) with the masks applied (a new tensor)."""
        m, _, h, w = x.shape
        dev = x.device
        d = 2 + (torch.rand(m, device=dev) * (max(h, 3) - 2)).long()  # (M,) in [2, max(h, 3))
        stripe = torch.minimum(torch.clamp((d * self.ratio + 0.5).long(), min=1), d - 1)  # (M,)
        st_h = (torch.rand(m, device=dev) * d).long()  # (M,) in [0, d)
        st_w = (torch.rand(m, device=dev) * d).long()
        keep = grid_keep(h, w, d, stripe, st_h, st_w, self.use_h, self.use_w, self.mode)  # (M, H, W)
        keep |= ~_coin(m, dev, self.prob)[:, None, None]  # images without a mask keep everything
        return x * keep.unsqueeze(1).to(x.dtype)  # (M, C, H, W)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(use_h={self.use_h}, use_w={self.use_w}, ratio={self.ratio}, '
                f'mode={self.mode}, prob={self.prob})')


def _to_device(value, device: torch.device, non_blocking: bool):
    """MultiViewCameras, LiDARBoxes and tensors (also inside lists) moved to ``device``; anything else as is."""
    if isinstance(value, (MultiViewCameras, LiDARBoxes, Tensor)):
        return value.to(device, non_blocking=non_blocking) if isinstance(value, Tensor) else value.to(device)
    if isinstance(value, list):
        return [_to_device(v, device, non_blocking) for v in value]
    return value


@MODELS.register_module()
class MultiViewDataPreprocessor(BaseDataPreprocessor):
    """Move a collated multi-view batch to the device; float32, photometric distortion
    (training), ``(x - mean) / std``, GridMask (training).

    Input (``sf3d.multiview_collate``'s output): ``dict(inputs=dict(img=(B, N_cam, 3, H, W) uint8
    or float RGB in [0, 255]), data_samples=dict(...))``.
    Output: the same structure with ``img`` (B, N_cam, 3, H, W) float32 on the device, normalised;
    in ``data_samples`` the ``MultiViewCameras``, ``LiDARBoxes`` and tensors (also in lists) are
    moved to the device, everything else is passed on as it is. The pipeline must then NOT
    normalise (no ``NormalizeMultiviewImage``), and neither photometric nor GridMask transforms
    should stay in it.

    Args:
        mean, std: per-channel RGB values (3 each, std > 0), in the 0..255 scale.
        photometric: keyword arguments of :class:`BatchPhotometricDistortion` (``{}`` for its
            defaults, DETR3D's), or None for none.
        grid_mask: keyword arguments of :class:`BatchGridMask` (``{}``: DETR3D's ratio 0.5, mode 1,
            prob 0.7), or None for none.
        non_blocking: as in mmengine's ``BaseDataPreprocessor``.
    """

    def __init__(self, mean: Sequence[float] = (123.675, 116.28, 103.53),
                 std: Sequence[float] = (58.395, 57.12, 57.375), photometric: Optional[dict] = None,
                 grid_mask: Optional[dict] = None, non_blocking: bool = False):
        super().__init__(non_blocking=non_blocking)
        register_mean_std(self, mean, std)
        self.photometric = None if photometric is None else BatchPhotometricDistortion(**photometric)
        self.grid_mask = None if grid_mask is None else BatchGridMask(**grid_mask)

    def forward(self, data: dict, training: bool = False) -> dict:
        if not isinstance(data, dict) or not isinstance(data.get('inputs'), dict) or 'img' not in data['inputs']:
            raise KeyError('MultiViewDataPreprocessor: data must be dict(inputs=dict(img=(B, N_cam, 3, H, W)), '
                           'data_samples=...) as sf3d.multiview_collate returns')
        img = data['inputs']['img']
        if not isinstance(img, Tensor) or img.dim() != 5 or img.shape[2] != 3:
            raise ValueError(f"MultiViewDataPreprocessor: inputs['img'] must be a Tensor (B, N_cam, 3, H, W), got "
                             f"{tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__}")
        B, N = img.shape[:2]
        x = img.to(self._device, non_blocking=self._non_blocking).flatten(0, 1).float()  # (M, 3, H, W)
        if training and self.photometric is not None:
            x = self.photometric(x)
        x = (x - self.mean) / self.std  # (M, 3, H, W)
        if training and self.grid_mask is not None:
            x = self.grid_mask(x)
        inputs = dict(data['inputs'], img=x.unflatten(0, (B, N)))  # (B, N, 3, H, W)
        samples = data.get('data_samples')
        if isinstance(samples, dict):
            samples = {k: _to_device(v, self._device, self._non_blocking) for k, v in samples.items()}
        return dict(data, inputs=inputs, data_samples=samples)
