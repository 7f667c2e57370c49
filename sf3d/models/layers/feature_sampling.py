"""Sample multi-view, multi-level image features at projected 3D reference points (DETR3D).

DETR3D (Wang et al., CoRL 2021) projects each query's 3D reference point into every camera
with ``lidar2img`` and bilinearly samples every FPN level there. Differences from DETR3D's
``feature_sampling``: u/v are normalised with the pixel-centre convention of
:mod:`sf3d.structures.cameras` (``x = 2u / W - 1`` for ``grid_sample(align_corners=False)``),
and samples of masked points are exactly zero.

Axis names: B batch, Q queries, N cameras (N_cam), C channels, L FPN levels, H x W a map.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['project_points', 'sample_features', 'weighted_features']


def project_points(ref_points: Tensor, lidar2img: Tensor, img_shape: Sequence[int],
                   eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Project LiDAR points into every camera and normalise to ``grid_sample`` coordinates.

    Args:
        ref_points: (B, Q, 3) points in the LiDAR frame (metres).
        lidar2img: (B, N, 4, 4) homogeneous LiDAR -> image (pixels) transforms.
        img_shape: (H, W) of the (padded) network input in pixels.
        eps: points with camera depth <= eps are behind the camera.
    Returns:
        grid (B, N, Q, 2) in [-1, 1] for points inside the image (x from u, y from v),
        mask (B, N, Q) bool: depth > eps and the point lies strictly inside (-1, 1)^2.
    """
    if ref_points.dim() != 3 or ref_points.shape[-1] != 3:
        raise ValueError(f'project_points: ref_points must be (B, Q, 3), got {tuple(ref_points.shape)}')
    B = ref_points.shape[0]
    if lidar2img.dim() != 4 or lidar2img.shape[0] != B or lidar2img.shape[-2:] != (4, 4):
        raise ValueError(f'project_points: lidar2img must be (B={B}, N_cam, 4, 4), got {tuple(lidar2img.shape)}')
    if len(img_shape) != 2:
        raise ValueError(f'project_points: img_shape must be (H, W), got {img_shape}')
    H, W = float(img_shape[0]), float(img_shape[1])
    pts = ref_points.float()
    l2i = lidar2img.to(pts)
    with torch.autocast(pts.device.type, enabled=False):  # pixels in float32 under bf16 training
        cam = torch.einsum('bnij,bqj->bnqi', l2i[..., :3, :3], pts) + l2i[..., None, :3, 3]  # (B, N, Q, 3)
    depth = cam[..., 2]  # (B, N, Q)
    uv = cam[..., :2] / depth.clamp(min=eps).unsqueeze(-1)  # (B, N, Q, 2) pixels
    scale = uv.new_tensor([2.0 / W, 2.0 / H])
    grid = uv * scale - 1.0  # (B, N, Q, 2)
    mask = (depth > eps) & (grid > -1.0).all(-1) & (grid < 1.0).all(-1)  # (B, N, Q)
    return grid, mask


def _most_seen(mask: Tensor) -> int:
    """The largest number of points one view sees in mask (B, N, Q), at least 1; Q where the mask has
    shapes but no values (fake or meta tensors, as FLOP counting uses), so that every point is sampled."""
    try:
        return max(int(mask.sum(-1).max()), 1)
    except RuntimeError:  # FakeTensorMode's DataDependentOutputException, meta's item(): both RuntimeErrors
        return mask.shape[-1]


def _sample_grid(feats: Sequence[Tensor], ref_points: Tensor, lidar2img: Tensor, img_shape: Sequence[int],
                 eps: float, caller: str) -> tuple[Tensor, Tensor]:
    """:func:`project_points` -> grid (B*N, Q, 1, 2) for ``grid_sample``, with masked points (behind the
    camera, or off the image) moved far off it so that their samples are exactly zero; mask (B, N, Q)."""
    if len(feats) == 0:
        raise ValueError(f'{caller}: feats is empty; expected a list of (B, N_cam, C, H, W) levels')
    grid, mask = project_points(ref_points, lidar2img, img_shape, eps)
    B, N, Q, _ = grid.shape
    for lvl, feat in enumerate(feats):
        if feat.dim() != 5 or feat.shape[:2] != (B, N):
            raise ValueError(f'{caller}: feats[{lvl}] must be (B={B}, N_cam={N}, C, H, W), '
                             f'got {tuple(feat.shape)}')
    return torch.where(mask[..., None], grid, grid.new_tensor(-2.0)).view(B * N, Q, 1, 2), mask


def _sample_level(feat: Tensor, grid: Tensor) -> Tensor:
    """One level (B, N, C, H_l, W_l) at grid (B*N, Q, 1, 2) -> (B, N, C, Q) float32 (bfloat16 grid
    coordinates would be off by pixels at nuScenes resolution)."""
    B, N, C = feat.shape[:3]
    s = F.grid_sample(feat.flatten(0, 1).float(), grid, mode='bilinear', padding_mode='zeros',
                      align_corners=False)  # (B*N, C, Q, 1)
    return s.view(B, N, C, -1)


def sample_features(feats: Sequence[Tensor], ref_points: Tensor, lidar2img: Tensor,
                    img_shape: Sequence[int], eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Bilinearly sample every camera and FPN level at the projections of the reference points.

    Args:
        feats: L tensors (B, N, C, H_l, W_l), level l covering the whole padded input.
        ref_points: (B, Q, 3) LiDAR-frame points (metres).
        lidar2img: (B, N, 4, 4).
        img_shape: (H, W) of the padded input.
    Returns:
        sampled (B, C, Q, N, L) float32 features (zero where the mask is False),
        mask (B, Q, N) bool: in front of the camera and inside the image.
    """
    grid, mask = _sample_grid(feats, ref_points, lidar2img, img_shape, eps, 'sample_features')
    sampled = [_sample_level(feat, grid).permute(0, 2, 3, 1) for feat in feats]  # L x (B, C, Q, N)
    return torch.stack(sampled, dim=-1), mask.transpose(1, 2)  # (B, C, Q, N, L), (B, Q, N)


def weighted_features(feats: Sequence[Tensor], ref_points: Tensor, lidar2img: Tensor, img_shape: Sequence[int],
                      weights: Tensor, eps: float = 1e-5) -> Tensor:
    """The samples of :func:`sample_features` summed over cameras and levels with ``weights``
    (B, Q, N, L) -> (B, Q, C) float32 (DETR3D's weighted sum), without building the (B, C, Q, N, L)
    samples.

    A point is usually seen by one or two of the N cameras, and the others' samples are zeros. So
    each camera samples only the points it sees: they are gathered to the front (padded to the
    largest count M over the B x N views), sampled, weighted and scattered back, one product per
    level. The sampling, forward and backward, costs M instead of Q points per view."""
    grid, mask = _sample_grid(feats, ref_points, lidar2img, img_shape, eps, 'weighted_features')
    B, N, Q = mask.shape
    if weights.shape[:3] != (B, Q, N) or weights.shape[3] != len(feats):
        raise ValueError(f'weighted_features: weights must be (B={B}, Q={Q}, N={N}, L={len(feats)}), '
                         f'got {tuple(weights.shape)} (L={weights.shape[-1]})')
    M = _most_seen(mask)
    seen_first = torch.argsort((~mask).to(torch.uint8), dim=-1, stable=True)[..., :M]  # (B, N, M) point indices
    # padding indices are points this view does not see: _sample_grid moved them off the map, so they read zeros
    grid = torch.gather(grid.view(B, N, Q, 2), 2, seen_first[..., None].expand(B, N, M, 2)).view(B * N, M, 1, 2)
    w = torch.gather(weights.float().permute(0, 2, 3, 1), 3, seen_first[:, :, None].expand(B, N, len(feats), M))
    contrib = sum(_sample_level(feat, grid) * w[:, :, None, lvl] for lvl, feat in enumerate(feats))  # (B, N, C, M)
    C = contrib.shape[2]
    index = seen_first[:, None].expand(B, C, N, M).reshape(B, C, N * M)
    out = contrib.new_zeros(B, C, Q).scatter_add(2, index, contrib.transpose(1, 2).reshape(B, C, N * M))  # (B, C, Q)
    return out.transpose(1, 2)  # (B, Q, C)
