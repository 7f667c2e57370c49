"""Small 4x4 / 3x3 matrix builders shared by the camera and box structures.

* Poses: ``pose_matrix(translation, rotation_wxyz)`` turns a nuScenes record
  (``calibrated_sensor`` or ``ego_pose``) into the 4x4 matrix mapping sensor
  (or ego) coordinates to its parent frame (ego or global).
* BEV augmentation: the 4x4 ``T`` (float64) that maps OLD LiDAR coordinates to
  NEW ones for the same operation as ``LiDARBoxes.rotate/scale/translate/flip``;
  hand it to ``MultiViewCameras.bev_transform(T)`` so cameras stay consistent.
  Compose several ops as ``T2 @ T1`` (``T1`` applied first).
* Image augmentation: the 3x3 affine ``A`` mapping OLD pixel coordinates to NEW
  ones for resize / crop / horizontal flip; hand it to
  ``MultiViewCameras.image_transform(A, image_size)``. Pixel convention (see
  ``cameras.py``): pixel ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)``, its
  centre is ``(j + 0.5, i + 0.5)``.
"""
from typing import Sequence, Union

import numpy as np
import torch
from pyquaternion import Quaternion

Number = Union[float, int]


def pose_matrix(translation: Sequence[float], rotation_wxyz: Sequence[float]) -> np.ndarray:
    """(4, 4) float64 rigid transform from a translation (3,) and a quaternion (w, x, y, z).

    The quaternion is normalised (as the devkit's pyquaternion does).
    """
    t = np.asarray(translation, dtype=np.float64)
    q = np.asarray(rotation_wxyz, dtype=np.float64)
    if t.shape != (3,) or q.shape != (4,) or not (np.isfinite(t).all() and np.isfinite(q).all()):
        raise ValueError(f'pose_matrix expects a finite translation (3,) and quaternion (w, x, y, z) (4,), '
                         f'got shapes {t.shape} and {q.shape}: {t.tolist()} {q.tolist()}')
    if np.linalg.norm(q) < 1e-8:
        raise ValueError(f'pose_matrix: quaternion {q.tolist()} has zero norm')
    m = np.eye(4)
    m[:3, :3] = Quaternion(q).rotation_matrix
    m[:3, 3] = t
    return m


# ----------------------------------------------------------------------------- BEV (LiDAR frame)

def bev_rotation(angle: Number) -> torch.Tensor:
    """(4, 4) rotation by ``angle`` rad about the LiDAR z axis (counter-clockwise, from +x towards +y)."""
    c, s = float(np.cos(angle)), float(np.sin(angle))
    return torch.tensor([[c, -s, 0., 0.], [s, c, 0., 0.], [0., 0., 1., 0.], [0., 0., 0., 1.]],
                        dtype=torch.float64)


def bev_scaling(scale: Number) -> torch.Tensor:
    """(4, 4) isotropic scaling about the LiDAR origin (``scale`` > 0)."""
    if not scale > 0:
        raise ValueError(f'bev_scaling: scale must be > 0, got {scale}')
    return torch.diag(torch.tensor([scale, scale, scale, 1.], dtype=torch.float64))


def bev_translation(translation: Sequence[float]) -> torch.Tensor:
    """(4, 4) translation by ``translation`` (3,) metres."""
    t = torch.as_tensor(np.asarray(translation, dtype=np.float64))
    if t.shape != (3,):
        raise ValueError(f'bev_translation: translation must have shape (3,), got {tuple(t.shape)}')
    m = torch.eye(4, dtype=torch.float64)
    m[:3, 3] = t
    return m


def bev_flip(direction: str = 'horizontal') -> torch.Tensor:
    """(4, 4) mirror of mmdet3d's BEV flips: 'horizontal' negates y, 'vertical' negates x."""
    if direction not in ('horizontal', 'vertical'):
        raise ValueError(f"bev_flip: direction must be 'horizontal' or 'vertical', got {direction!r}")
    diag = [1., -1., 1., 1.] if direction == 'horizontal' else [-1., 1., 1., 1.]
    return torch.diag(torch.tensor(diag, dtype=torch.float64))


# ----------------------------------------------------------------------------- image (pixels)

def img_resize(scale_x: Number, scale_y: Number) -> torch.Tensor:
    """(3, 3) ``u' = sx * u, v' = sy * v``: an image resized from (H, W) to (sy*H, sx*W).

    With pixel centres at ``i + 0.5`` this is exactly what ``F.interpolate(...,
    align_corners=False)``, ``cv2.resize`` and PIL do (edges 0 and W map to 0 and sx*W).
    """
    if not (scale_x > 0 and scale_y > 0):
        raise ValueError(f'img_resize: scales must be > 0, got ({scale_x}, {scale_y})')
    return torch.diag(torch.tensor([scale_x, scale_y, 1.], dtype=torch.float64))


def img_crop(x0: Number, y0: Number) -> torch.Tensor:
    """(3, 3) ``u' = u - x0, v' = v - y0``: crop whose top-left pixel was (col x0, row y0).

    Negative offsets describe padding on the left/top.
    """
    return torch.tensor([[1., 0., -x0], [0., 1., -y0], [0., 0., 1.]], dtype=torch.float64)


def img_hflip(width: Number) -> torch.Tensor:
    """(3, 3) ``u' = W - u``: the centre of column j (u = j + 0.5) goes to the centre of column
    W - 1 - j, i.e. exactly where ``torch.flip(img, dims=[-1])`` moves that pixel."""
    return torch.tensor([[-1., 0., float(width)], [0., 1., 0.], [0., 0., 1.]], dtype=torch.float64)
