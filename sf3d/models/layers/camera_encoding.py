"""Camera conditioning of SpatialFormer's spatial tokens (the 3D extension, DESIGN.md).

Each spatial token of a view sits at the image position of its grid cell centre,
``u = (j + 0.5) / gw * W``, ``v = (i + 0.5) / gh * H`` (``MultiViewCameras.pixel_grid``). With
the view's ``cam2img`` and ``lidar2cam`` that position is a ray. :class:`CameraConditioning`
encodes the ray and modulates the tokens before the first BCA block:

    geometry (per variant) -> Fourier features -> MLP -> (scale, shift)
    tokens * (1 + scale) + shift

The MLP's last Linear is zero-initialised, so at init the output equals the input exactly
and an ImageNet-pretrained backbone starts unchanged.

Variants (for the camera-parameter ablations):

* ``'none'``: identity, no parameters.
* ``'intrinsics'``: the unit ray direction in the CAMERA frame, ``K^-1 (u, v, 1)`` normalised
  (origin 0, so the Plücker moment vanishes and only the direction is encoded). Invariant
  to ``lidar2cam``.
* ``'extrinsics'``: a canonical pinhole ``fx = fy = W``, principal point ``(W / 2, H / 2)``
  for every view, with the TRUE ``lidar2cam``; Plücker coordinates ``(d, o x d)`` in the
  LiDAR frame. Invariant to ``cam2img``.
* ``'ray'``: the full ray in the LiDAR frame (true ``cam2img`` and ``lidar2cam``) as Plücker
  coordinates ``(d, o x d)``.
* ``'frustum'``: PETR-style 3D points on the ray at camera depths (camera z) ``depths``,
  in the LiDAR frame, normalised to ``[-1, 1]`` over ``pc_range`` (not clipped).

Fourier features of a vector ``x``: ``[x, sin(2^k pi x), cos(2^k pi x)]`` for
``k = 0 .. num_freqs - 1``. Plücker directions are unit vectors; moments are in metres
(``|o x d|`` is the distance of the ray's line from the LiDAR origin, ~1-2 m on nuScenes).

Axis names: B batch, N number of cameras (views), M = gh * gw spatial tokens per view,
C token channels, D frustum depths.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from sf3d.structures.cameras import MultiViewCameras

__all__ = ['CameraConditioning', 'fourier_features']

VARIANTS = ('none', 'intrinsics', 'extrinsics', 'ray', 'frustum')
DEFAULT_DEPTHS = (2.0, 5.0, 10.0, 20.0, 35.0, 50.0)
DEFAULT_PC_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)


def fourier_features(x: Tensor, num_freqs: int) -> Tensor:
    """(..., F) -> (..., F * (1 + 2 * num_freqs)): ``[x, sin(2^k pi x), cos(2^k pi x)]``."""
    freqs = (2.0 ** torch.arange(num_freqs, dtype=x.dtype, device=x.device)) * math.pi  # (K,)
    angles = (x.unsqueeze(-1) * freqs).flatten(-2)  # (..., F * K)
    return torch.cat([x, angles.sin(), angles.cos()], dim=-1)


def _plucker(origins: Tensor, dirs: Tensor) -> Tensor:
    """Plücker coordinates (..., 6) = (d, o x d) of rays with unit directions."""
    return torch.cat([dirs, torch.linalg.cross(origins, dirs, dim=-1)], dim=-1)


class CameraConditioning(nn.Module):
    """Zero-initialised scale/shift modulation of spatial tokens by their camera rays.

    Args:
        variant: one of ``'none'``, ``'intrinsics'``, ``'extrinsics'``, ``'ray'``, ``'frustum'``
            (see the module docstring).
        embed_dim: token channels C (SpatialFormer's ``embed_dims[0]``).
        num_freqs: Fourier octaves per geometric coordinate.
        depths: camera depths (metres, camera z) of the frustum points (``'frustum'`` only).
        pc_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` in the LiDAR frame used to
            normalise frustum points (``'frustum'`` only).

    ``forward(tokens, cameras, grid_hw, image_size=None)``: ``tokens`` (B * N, M, C) (views
    flattened in camera order, as the backbone sees them) or (B, N, M, C); ``cameras`` a
    :class:`MultiViewCameras` with batch shape (B,) and N views (or no batch dims for B = 1);
    ``grid_hw`` the (gh, gw) spatial grid with gh * gw = M; ``image_size`` (H, W) of the image
    the backbone sees, or None for ``cameras.image_size``. Returns a tensor of the same shape.
    """

    def __init__(self, variant: str = 'ray', embed_dim: int = 64, *, num_freqs: int = 8,
                 depths: Sequence[float] = DEFAULT_DEPTHS, pc_range: Sequence[float] = DEFAULT_PC_RANGE):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f'CameraConditioning: unknown variant {variant!r}; valid variants: {list(VARIANTS)}')
        if num_freqs < 0 or int(num_freqs) != num_freqs:
            raise ValueError(f'CameraConditioning: num_freqs must be a non-negative int, got {num_freqs}')
        if len(depths) == 0 or any(d <= 0 for d in depths):
            raise ValueError(f'CameraConditioning: depths must be a non-empty list of positive depths, got {depths}')
        if len(pc_range) != 6 or any(pc_range[i + 3] <= pc_range[i] for i in range(3)):
            raise ValueError(f'CameraConditioning: pc_range must be (x_min, y_min, z_min, x_max, y_max, z_max) '
                             f'with max > min, got {pc_range}')
        self.variant = variant
        self.embed_dim = embed_dim
        self.num_freqs = int(num_freqs)
        self.register_buffer('depths', torch.tensor([float(d) for d in depths]), persistent=False)  # (D,)
        self.register_buffer('pc_range', torch.tensor([float(p) for p in pc_range]), persistent=False)  # (6,)
        if variant == 'none':
            self.encoder = None
            return
        geo_dim = {'intrinsics': 3, 'extrinsics': 6, 'ray': 6, 'frustum': 3 * len(depths)}[variant]
        in_dim = geo_dim * (1 + 2 * self.num_freqs)
        self.encoder = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, 2 * embed_dim))
        nn.init.zeros_(self.encoder[-1].weight)
        nn.init.zeros_(self.encoder[-1].bias)

    def extra_repr(self) -> str:
        return f'variant={self.variant!r}, embed_dim={self.embed_dim}, num_freqs={self.num_freqs}'

    # ------------------------------------------------------------------ geometry
    @staticmethod
    def _image_hw(cameras: MultiViewCameras, image_size: Sequence[float] | Tensor | None) -> Tensor:
        """(..., N, 2) image (H, W) per view from the argument or ``cameras.image_size``."""
        if image_size is None:
            if cameras.image_size is None:
                raise ValueError('CameraConditioning: pass image_size=(H, W) or build MultiViewCameras with image_size')
            return cameras.image_size
        hw = torch.as_tensor(image_size, dtype=cameras.dtype, device=cameras.device)
        return hw.expand(*cameras.batch_shape, cameras.num_cams, 2)

    def rays_for_grid(self, cameras: MultiViewCameras, grid_hw: Sequence[int],
                      image_size: Sequence[float] | Tensor | None = None) -> tuple[Tensor, Tensor]:
        """LiDAR-frame rays through the token centres (true ``cam2img`` and ``lidar2cam``).

        Returns origins (..., N, M, 3) (the camera centres) and unit directions (..., N, M, 3),
        token ``i * gw + j`` at pixel ``((j + 0.5) / gw * W, (i + 0.5) / gh * H)``.
        """
        return cameras.pixel_grid_rays(tuple(grid_hw), self._image_hw(cameras, image_size))

    def frustum_points(self, cameras: MultiViewCameras, grid_hw: Sequence[int],
                       image_size: Sequence[float] | Tensor | None = None) -> Tensor:
        """(..., N, M, D, 3) LiDAR-frame points on each token's ray at camera depths ``self.depths``."""
        uv = cameras.pixel_grid(tuple(grid_hw), self._image_hw(cameras, image_size))  # (..., N, M, 2)
        D, M = self.depths.numel(), uv.shape[-2]
        depths = self.depths.to(uv)  # (D,)
        uv_d = uv.unsqueeze(-2).expand(*uv.shape[:-1], D, 2).flatten(-3, -2)  # (..., N, M * D, 2)
        z = depths.repeat(M).expand(uv_d.shape[:-1])  # (..., N, M * D)
        points = cameras.unproject(uv_d, z)  # (..., N, M * D, 3)
        return points.unflatten(-2, (M, D))  # (..., N, M, D, 3)

    def _geometry(self, cameras: MultiViewCameras, grid_hw: tuple[int, int],
                  image_size: Sequence[float] | Tensor | None) -> Tensor:
        """(..., N, M, geo_dim) geometric description of each token, per variant."""
        hw = self._image_hw(cameras, image_size)  # (..., N, 2)
        if self.variant == 'intrinsics':
            return cameras.cam_rays(cameras.pixel_grid(grid_hw, hw))  # (..., N, M, 3)
        if self.variant == 'ray':
            return _plucker(*cameras.pixel_grid_rays(grid_hw, hw))  # (..., N, M, 6)
        if self.variant == 'extrinsics':
            H, W = hw[..., 0], hw[..., 1]
            canonical = torch.zeros_like(cameras.cam2img)  # (..., N, 3, 3)
            canonical[..., 0, 0], canonical[..., 1, 1] = W, W
            canonical[..., 0, 2], canonical[..., 1, 2], canonical[..., 2, 2] = W / 2, H / 2, 1
            cams = MultiViewCameras(canonical, cameras.lidar2cam, validate=False)
            return _plucker(*cams.pixel_grid_rays(grid_hw, hw))  # (..., N, M, 6)
        points = self.frustum_points(cameras, grid_hw, hw)  # (..., N, M, D, 3)
        lo, hi = self.pc_range[:3].to(points), self.pc_range[3:].to(points)
        return (2 * (points - lo) / (hi - lo) - 1).flatten(-2)  # (..., N, M, D * 3)

    # ------------------------------------------------------------------ forward
    def forward(self, tokens: Tensor, cameras: MultiViewCameras, grid_hw: Sequence[int],
                image_size: Sequence[float] | Tensor | None = None) -> Tensor:
        if self.encoder is None:
            return tokens
        grid_hw = (int(grid_hw[0]), int(grid_hw[1]))
        num_views = math.prod(cameras.batch_shape) * cameras.num_cams
        M = grid_hw[0] * grid_hw[1]
        if tokens.dim() == 4:
            expected = (math.prod(cameras.batch_shape), cameras.num_cams, M, self.embed_dim)
        else:
            expected = (num_views, M, self.embed_dim)
        if tuple(tokens.shape) != expected:
            raise ValueError(f'CameraConditioning: tokens must have shape (B * N, M, C) or (B, N, M, C) = {expected} '
                             f'for cameras {cameras} and grid {grid_hw}, got {tuple(tokens.shape)}')
        with torch.no_grad():
            geo = self._geometry(cameras, grid_hw, image_size)  # (..., N, M, geo_dim)
        geo = geo.reshape(num_views, M, -1).to(tokens.dtype)  # (B * N, M, geo_dim)
        scale, shift = self.encoder(fourier_features(geo, self.num_freqs)).chunk(2, dim=-1)  # (B * N, M, C) each
        out = tokens.reshape(num_views, M, self.embed_dim) * (1 + scale) + shift  # (B * N, M, C)
        return out.reshape(tokens.shape)
