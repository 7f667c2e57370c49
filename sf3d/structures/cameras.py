"""``MultiViewCameras``: the ONE structure holding the camera parameters of a sample (or batch).

Stored (nothing else):

* ``cam2img``   (..., N_cam, 3, 3) intrinsics AFTER image augmentation, in pixels of the
  augmented image (an affine matrix: last row ``[0, 0, 1]``).
* ``lidar2cam`` (..., N_cam, 4, 4) extrinsics AFTER BEV augmentation (last row ``[0, 0, 0, 1]``).
  Rigid for raw data; after a BEV scaling it carries the inverse scale and after a BEV
  flip it is a reflection (det < 0), so never turn it into a quaternion.
* ``image_size`` (..., N_cam, 2) optional ``(H, W)`` of the valid image content in pixels
  (batch padding at the bottom/right changes no intrinsics and is not counted). When set,
  every ``image_transform`` must say the new size, so it is never stale.

Leading dims ``...`` are batch dims: ``()`` per sample in the data pipeline (float64
recommended), ``(B,)`` in the model (float32). Everything else is derived on demand:
``lidar2img``, ``img2lidar``, ``cam2lidar``, ``camera_centers``, projections and rays.

Pixel convention: ``u`` to the right, ``v`` down, continuous coordinates in which pixel
``(row i, col j)`` covers ``[j, j+1) x [i, i+1)`` with its centre at ``(j + 0.5, i + 0.5)``.
This is the ``align_corners=False`` convention of ``F.interpolate``, ``F.grid_sample``
(normalised ``x = 2u / W - 1``), ``cv2.resize`` and PIL: a resize by ``s`` maps ``u -> s u`` and
a horizontal flip of width ``W`` maps ``u -> W - u`` (the centre of column j lands on the
centre of column ``W - 1 - j``, as ``torch.flip(img, [-1])`` moves pixels). The matrices for
these live in ``transforms.py`` (``img_resize``, ``img_crop``, ``img_hflip``).

Camera frame: x right, y down, z forward (nuScenes/OpenCV); ``depth`` is the camera z.
"""
import functools
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .transforms import pose_matrix

ArrayLike = Union[Tensor, np.ndarray, Sequence]
SizeLike = Union[Tensor, np.ndarray, Sequence[float]]


def lidar2cam_from_poses(lidar2ego, ego2global_lidar, ego2global_cam, cam2ego):
    """4x4 (numpy or torch, batched allowed) LiDAR -> camera through BOTH ego poses.

    ``inv(cam2ego) @ inv(ego2global_cam) @ ego2global_lidar @ lidar2ego``: a point is taken
    LiDAR -> ego (at the LiDAR timestamp) -> global -> ego (at the camera timestamp) -> camera.
    """
    inv = torch.linalg.inv if isinstance(cam2ego, Tensor) else np.linalg.inv
    return inv(cam2ego) @ inv(ego2global_cam) @ ego2global_lidar @ lidar2ego


def _to_tensor(x: ArrayLike, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if not x.is_floating_point():
        raise ValueError(f'MultiViewCameras.{name} must be a floating point tensor, got dtype {x.dtype}')
    return x


def _size_tensor(size: SizeLike) -> Tensor:
    return size if isinstance(size, Tensor) else torch.as_tensor(np.asarray(size, dtype=np.float64))


def _check_affine(m: Tensor, name: str, size: int) -> None:
    """Shape (..., size, size), finite, last row [0 .. 0 1], invertible."""
    if m.dim() < 2 or tuple(m.shape[-2:]) != (size, size):
        raise ValueError(f'{name} must have shape (..., {size}, {size}), got {tuple(m.shape)}')
    if not torch.isfinite(m).all():
        raise ValueError(f'{name} (shape {tuple(m.shape)}) contains NaN or inf')
    last = torch.zeros(size, dtype=m.dtype, device=m.device)
    last[-1] = 1
    if not torch.allclose(m[..., -1, :], last.expand_as(m[..., -1, :]), atol=1e-6):
        raise ValueError(f'{name} (shape {tuple(m.shape)}) must have last row {last.tolist()}, '
                         f'got e.g. {m[..., -1, :].reshape(-1, size)[0].tolist()}')
    det = torch.linalg.det(m[..., :size - 1, :size - 1].double())
    if (det.abs() < 1e-12).any():
        raise ValueError(f'{name} (shape {tuple(m.shape)}) is not invertible: its top-left '
                         f'{size - 1}x{size - 1} block has determinant {det.abs().min().item():.3g}')


def _pad44(k: Tensor) -> Tensor:
    """(..., 3, 3) -> (..., 4, 4) block diag(k, 1)."""
    out = torch.zeros(*k.shape[:-2], 4, 4, dtype=k.dtype, device=k.device)
    out[..., :3, :3] = k
    out[..., 3, 3] = 1
    return out


def _geometry(fn):
    """Run a camera computation outside autocast: projections and rays stay in the cameras' dtype
    (float32 at least) under bf16 training, where a bf16 matmul would move pixels by several px."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        with torch.autocast(self.cam2img.device.type, enabled=False):
            return fn(self, *args, **kwargs)
    return wrapper


class MultiViewCameras:
    """Camera parameters of N_cam views; see the module docstring for conventions.

    Args:
        cam2img: (..., N_cam, 3, 3) intrinsics in pixels of the (augmented) image.
        lidar2cam: (..., N_cam, 4, 4) LiDAR -> camera.
        image_size: optional (H, W) shared by all views, or (..., N_cam, 2).
        validate: check shapes, finiteness and invertibility (internal updates skip it).
    """

    def __init__(self, cam2img: ArrayLike, lidar2cam: ArrayLike, image_size: Optional[SizeLike] = None,
                 *, validate: bool = True):
        cam2img = _to_tensor(cam2img, 'cam2img')
        lidar2cam = _to_tensor(lidar2cam, 'lidar2cam')
        if image_size is not None:
            image_size = _size_tensor(image_size).to(cam2img)
            if image_size.shape == (2,) and cam2img.dim() >= 3:  # one (H, W) for every view
                image_size = image_size.expand(*cam2img.shape[:-2], 2).contiguous()
        if validate:
            self._validate(cam2img, lidar2cam, image_size)
        self.cam2img = cam2img
        self.lidar2cam = lidar2cam
        self.image_size = image_size

    @staticmethod
    def _validate(cam2img: Tensor, lidar2cam: Tensor, image_size: Optional[Tensor]) -> None:
        if cam2img.dim() < 3:
            raise ValueError(f'MultiViewCameras.cam2img must have shape (..., N_cam, 3, 3), got {tuple(cam2img.shape)}')
        _check_affine(cam2img, 'MultiViewCameras.cam2img', 3)
        _check_affine(lidar2cam, 'MultiViewCameras.lidar2cam', 4)
        if lidar2cam.shape[:-2] != cam2img.shape[:-2]:
            raise ValueError(f'MultiViewCameras: lidar2cam {tuple(lidar2cam.shape)} and cam2img {tuple(cam2img.shape)} '
                             f'must share the leading (..., N_cam) dims')
        if lidar2cam.dtype != cam2img.dtype or lidar2cam.device != cam2img.device:
            raise ValueError(f'MultiViewCameras: cam2img ({cam2img.dtype}, {cam2img.device}) and lidar2cam '
                             f'({lidar2cam.dtype}, {lidar2cam.device}) must share dtype and device')
        if image_size is not None:
            if tuple(image_size.shape) != tuple(cam2img.shape[:-2]) + (2,):
                raise ValueError(f'MultiViewCameras.image_size must be (H, W) or shape '
                                 f'{tuple(cam2img.shape[:-2]) + (2,)}, got {tuple(image_size.shape)}')
            if not (torch.isfinite(image_size).all() and (image_size > 0).all()):
                raise ValueError(f'MultiViewCameras.image_size must be finite and > 0, got {image_size.tolist()}')

    def _new(self, cam2img: Tensor, lidar2cam: Tensor, image_size: Optional[Tensor]) -> 'MultiViewCameras':
        return MultiViewCameras(cam2img, lidar2cam, image_size, validate=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_nuscenes(cls, cam_calibs: Sequence[Dict], lidar_calib: Dict, ego_pose_lidar: Dict,
                      ego_poses_cam: Sequence[Dict], image_size: Optional[SizeLike] = None) -> 'MultiViewCameras':
        """From devkit records: per camera a ``calibrated_sensor`` (translation, rotation,
        camera_intrinsic) and the ``ego_pose`` of that camera's sample_data; the LiDAR's
        ``calibrated_sensor`` and ``ego_pose``. float64, one sample (no batch dims)."""
        if len(cam_calibs) != len(ego_poses_cam):
            raise ValueError(f'from_nuscenes: {len(cam_calibs)} camera calibrations but {len(ego_poses_cam)} ego poses')
        lidar2ego = pose_matrix(lidar_calib['translation'], lidar_calib['rotation'])
        ego2global_lidar = pose_matrix(ego_pose_lidar['translation'], ego_pose_lidar['rotation'])
        cam2img, lidar2cam = [], []
        for calib, pose in zip(cam_calibs, ego_poses_cam):
            cam2img.append(np.asarray(calib['camera_intrinsic'], dtype=np.float64))
            lidar2cam.append(lidar2cam_from_poses(lidar2ego, ego2global_lidar,
                                                  pose_matrix(pose['translation'], pose['rotation']),
                                                  pose_matrix(calib['translation'], calib['rotation'])))
        return cls(np.stack(cam2img), np.stack(lidar2cam), image_size)

    @classmethod
    def stack(cls, cameras: Sequence['MultiViewCameras']) -> 'MultiViewCameras':
        """Batch samples along a new leading dim: (N_cam, ...) x B -> (B, N_cam, ...)."""
        if len(cameras) == 0:
            raise ValueError('MultiViewCameras.stack needs at least one MultiViewCameras')
        has_size = {c.image_size is not None for c in cameras}
        if len(has_size) != 1:
            raise ValueError('MultiViewCameras.stack: either all or none of the cameras must have image_size')
        sizes = torch.stack([c.image_size for c in cameras]) if has_size == {True} else None
        return cls(torch.stack([c.cam2img for c in cameras]), torch.stack([c.lidar2cam for c in cameras]), sizes)

    # ------------------------------------------------------------------ basics
    @property
    def num_cams(self) -> int:
        return self.cam2img.shape[-3]

    @property
    def batch_shape(self) -> torch.Size:
        return self.cam2img.shape[:-3]

    @property
    def dtype(self) -> torch.dtype:
        return self.cam2img.dtype

    @property
    def device(self) -> torch.device:
        return self.cam2img.device

    def __len__(self) -> int:
        return self.num_cams

    def __repr__(self) -> str:
        return (f'MultiViewCameras(batch_shape={tuple(self.batch_shape)}, num_cams={self.num_cams}, '
                f'dtype={self.dtype}, image_size={"set" if self.image_size is not None else None})')

    def to(self, *args, **kwargs) -> 'MultiViewCameras':
        size = self.image_size.to(*args, **kwargs) if self.image_size is not None else None
        return self._new(self.cam2img.to(*args, **kwargs), self.lidar2cam.to(*args, **kwargs), size)

    def clone(self) -> 'MultiViewCameras':
        size = self.image_size.clone() if self.image_size is not None else None
        return self._new(self.cam2img.clone(), self.lidar2cam.clone(), size)

    def select(self, cam_indices: Union[Sequence[int], Tensor, slice]) -> 'MultiViewCameras':
        """Keep the cameras ``cam_indices`` (in that order) along the N_cam dim."""
        if isinstance(cam_indices, int):
            cam_indices = [cam_indices]
        if not isinstance(cam_indices, slice):
            cam_indices = torch.as_tensor(cam_indices, dtype=torch.long, device=self.device)
        size = self.image_size[..., cam_indices, :] if self.image_size is not None else None
        return self._new(self.cam2img[..., cam_indices, :, :], self.lidar2cam[..., cam_indices, :, :], size)

    def sample(self, index: int) -> 'MultiViewCameras':
        """The cameras of batch element ``index``: (B, N_cam, ...) -> (N_cam, ...) (inverse of ``stack``)."""
        if len(self.batch_shape) == 0:
            raise ValueError('MultiViewCameras.sample needs a batch dim; these cameras have batch shape ()')
        size = self.image_size[index] if self.image_size is not None else None
        return self._new(self.cam2img[index], self.lidar2cam[index], size)

    # ------------------------------------------------------------------ derived matrices
    @property
    def lidar2img(self) -> Tensor:
        """(..., N_cam, 4, 4) ``diag(cam2img, 1) @ lidar2cam``: (x, y, z, 1) -> (u d, v d, d, 1)."""
        return _pad44(self.cam2img) @ self.lidar2cam

    @property
    def img2lidar(self) -> Tensor:
        """(..., N_cam, 4, 4) inverse of ``lidar2img``: (u d, v d, d, 1) -> (x, y, z, 1)."""
        return torch.linalg.inv(self.lidar2img)

    @property
    def cam2lidar(self) -> Tensor:
        """(..., N_cam, 4, 4) inverse of ``lidar2cam``."""
        return torch.linalg.inv(self.lidar2cam)

    @property
    def camera_centers(self) -> Tensor:
        """(..., N_cam, 3) camera origins in the LiDAR frame."""
        return self.cam2lidar[..., :3, 3]

    # ------------------------------------------------------------------ projection and rays
    @_geometry
    def project(self, points: Tensor, eps: float = 1e-5) -> Tuple[Tensor, Tensor]:
        """Project LiDAR points into every view.

        Args:
            points: (..., P, 3) in the LiDAR frame, shared by all views (``...`` = batch dims).
            eps: depths are clamped to >= eps before dividing (as DETR3D); mask with ``depth > eps``.
        Returns:
            uv (..., N_cam, P, 2) pixels, depth (..., N_cam, P) camera z (metric while lidar2cam
            is rigid; after a BEV scaling it is the depth of the un-scaled scene).
        """
        if points.shape[-1] != 3:
            raise ValueError(f'project: points must have shape (..., P, 3), got {tuple(points.shape)}')
        l2i = self.lidar2img.to(points.dtype)
        cam = points.unsqueeze(-3) @ l2i[..., :3, :3].transpose(-1, -2) + l2i[..., None, :3, 3]  # (..., N, P, 3)
        depth = cam[..., 2]
        uv = cam[..., :2] / depth.clamp(min=eps).unsqueeze(-1)
        return uv, depth

    @_geometry
    def unproject(self, uv: Tensor, depth: Tensor) -> Tensor:
        """Inverse of ``project``: uv (..., N_cam, P, 2), depth (..., N_cam, P) -> LiDAR points (..., N_cam, P, 3)."""
        hom = torch.cat([uv * depth.unsqueeze(-1), depth.unsqueeze(-1)], dim=-1)  # (..., N, P, 3)
        i2l = self.img2lidar.to(uv.dtype)
        return hom @ i2l[..., :3, :3].transpose(-1, -2) + i2l[..., None, :3, 3]

    def in_image(self, uv: Tensor, depth: Tensor, image_size: Optional[SizeLike] = None,
                 eps: float = 1e-5) -> Tensor:
        """(..., N_cam, P) bool: in front of the camera (depth > eps) and inside ``[0, W) x [0, H)``."""
        hw = self._size(image_size).to(uv)  # (..., N, 2)
        u, v = uv[..., 0], uv[..., 1]
        return (depth > eps) & (u >= 0) & (v >= 0) & (u < hw[..., 1, None]) & (v < hw[..., 0, None])

    @_geometry
    def cam_rays(self, uv: Tensor) -> Tensor:
        """Unit ray directions in each CAMERA frame (intrinsics only), ``K^-1 (u, v, 1)`` normalised.

        uv: (..., P, 2) shared by all views or (..., N_cam, P, 2). Returns (..., N_cam, P, 3).
        """
        uv = self._per_cam(uv)
        uv1 = torch.cat([uv, torch.ones_like(uv[..., :1])], dim=-1)  # (..., N, P, 3)
        d = uv1 @ torch.linalg.inv(self.cam2img).to(uv.dtype).transpose(-1, -2)
        return d / d.norm(dim=-1, keepdim=True)

    @_geometry
    def rays(self, uv: Tensor) -> Tuple[Tensor, Tensor]:
        """Rays through pixels in the LiDAR frame.

        uv: (..., P, 2) shared by all views or (..., N_cam, P, 2).
        Returns origins (..., N_cam, P, 3) (the camera centres) and unit directions (..., N_cam, P, 3).
        """
        c2l = self.cam2lidar.to(uv.dtype)
        d = self.cam_rays(uv) @ c2l[..., :3, :3].transpose(-1, -2)  # (..., N, P, 3)
        d = d / d.norm(dim=-1, keepdim=True)
        return c2l[..., None, :3, 3].expand_as(d), d

    def pixel_grid(self, grid_hw: Tuple[int, int], image_size: Optional[SizeLike] = None) -> Tensor:
        """Pixel centres of a gh x gw token grid: ``u = (j + 0.5) / gw * W``, ``v = (i + 0.5) / gh * H``.

        Returns uv (..., N_cam, gh * gw, 2), row-major (token ``i * gw + j``), the order of
        ``x.flatten(2).transpose(1, 2)`` for a (B, C, gh, gw) map.
        """
        gh, gw = grid_hw
        ys = (torch.arange(gh, dtype=self.dtype, device=self.device) + 0.5) / gh
        xs = (torch.arange(gw, dtype=self.dtype, device=self.device) + 0.5) / gw
        grid = torch.stack(torch.meshgrid(xs, ys, indexing='xy'), dim=-1).reshape(gh * gw, 2)  # (P, 2) as (x, y)
        wh = self._size(image_size).flip(-1)  # (..., N, 2) as (W, H)
        return grid * wh.unsqueeze(-2)

    def pixel_grid_rays(self, grid_hw: Tuple[int, int],
                        image_size: Optional[SizeLike] = None) -> Tuple[Tensor, Tensor]:
        """LiDAR-frame rays (origins, unit directions), each (..., N_cam, gh * gw, 3), through
        the token centres of ``pixel_grid``."""
        return self.rays(self.pixel_grid(grid_hw, image_size))

    def _per_cam(self, uv: Tensor) -> Tensor:
        if uv.shape[-1] != 2:
            raise ValueError(f'uv must have shape (..., P, 2) or (..., N_cam, P, 2), got {tuple(uv.shape)}')
        if uv.dim() == self.cam2img.dim() - 1:  # shared by all views
            uv = uv.unsqueeze(-3)
        return uv.expand(*self.batch_shape, self.num_cams, *uv.shape[-2:])

    def _size(self, image_size: Optional[SizeLike]) -> Tensor:
        """(..., N_cam, 2) (H, W) from the argument or the stored sizes."""
        if image_size is None:
            if self.image_size is None:
                raise ValueError('image_size is needed: pass (H, W) or build MultiViewCameras with image_size')
            return self.image_size
        return _size_tensor(image_size).to(self.cam2img).expand(*self.batch_shape, self.num_cams, 2)

    # ------------------------------------------------------------------ augmentation updates
    def image_transform(self, affine: ArrayLike, image_size: Optional[SizeLike] = None) -> 'MultiViewCameras':
        """Apply a pixel affine ``A`` (old pixels -> new pixels): ``cam2img' = A @ cam2img``.

        Args:
            affine: (3, 3) for all views or (..., N_cam, 3, 3); compose resize / crop / flip
                from ``transforms.img_*`` as ``A2 @ A1``.
            image_size: the new (H, W) (or (..., N_cam, 2)); required when sizes are tracked.
        """
        a = _to_tensor(affine, 'image_transform affine').to(self.cam2img)
        _check_affine(a, 'image_transform affine', 3)
        if self.image_size is not None and image_size is None:
            raise ValueError('image_transform: these cameras track image_size; pass the (H, W) after the transform')
        size = self._size(image_size).clone() if image_size is not None else None
        new = self._new(a @ self.cam2img, self.lidar2cam, size)
        if size is not None:
            self._validate(new.cam2img, new.lidar2cam, size)
        return new

    def bev_transform(self, transform: ArrayLike) -> 'MultiViewCameras':
        """Follow a BEV augmentation ``T`` (old LiDAR -> new LiDAR): ``lidar2cam' = lidar2cam @ T^-1``,
        so a point moved by T projects to the pixels of the original point.

        transform: (4, 4) or (*batch_shape, 4, 4) (one per sample), e.g. from ``transforms.bev_*``.
        """
        t = _to_tensor(transform, 'bev_transform matrix').to(self.lidar2cam)
        _check_affine(t, 'bev_transform matrix', 4)
        t_inv = torch.linalg.inv(t)
        if t.dim() > 2:
            if t.shape[:-2] != self.batch_shape:
                raise ValueError(f'bev_transform: matrix shape {tuple(t.shape)} must be (4, 4) or '
                                 f'{tuple(self.batch_shape) + (4, 4)}')
            t_inv = t_inv.unsqueeze(-3)  # (..., 1, 4, 4)
        return self._new(self.cam2img, self.lidar2cam @ t_inv, self.image_size)


__all__ = ['MultiViewCameras', 'lidar2cam_from_poses']
