"""``LiDARBoxes`` and the ONE place where boxes change frame or convention.

In memory a box is ``[x, y, z_bottom, l, w, h, yaw, vx, vy]`` in the LiDAR frame (mmdet3d >= 1.0):
``(x, y, z_bottom)`` is the centre of the bottom face, ``l`` runs along the heading, ``w``
across it, ``yaw`` is measured from +x towards +y (counter-clockwise seen from above), and
``(vx, vy)`` is the velocity in m/s in the LiDAR frame. Exactly 9 columns are required (a
missing velocity is an error here; ``from_info_bbox3d`` fills it explicitly).

Corner order (``corners``, (N, 8, 3)) is the nuScenes devkit's ``Box.corners()`` order, in
box coordinates (x along l, y along w, z up; sign of +-l/2, +-w/2, top/bottom)::

    0 (+, +, top)  1 (+, -, top)  2 (+, -, bottom)  3 (+, +, bottom)     <- front face (+l/2)
    4 (-, +, top)  5 (-, -, top)  6 (-, -, bottom)  7 (-, +, bottom)     <- rear face

Conversions: ``to_nusc_boxes`` / ``from_nusc_boxes`` (LiDAR <-> nuScenes global ``Box`` with
size ``(w, l, h)`` and gravity-centre ``center``), ``from_info_bbox3d`` / ``to_gravity_array``
(mmdet3d 1.x info files, which store the gravity-centre z).
"""
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from nuscenes.utils.data_classes import Box
from pyquaternion import Quaternion
from torch import Tensor

# corner signs in box coordinates: x (l), y (w), z (0 = bottom, 1 = top); devkit order
_CORNER_SIGNS = torch.tensor([[1, 1, 1], [1, -1, 1], [1, -1, 0], [1, 1, 0],
                              [-1, 1, 1], [-1, -1, 1], [-1, -1, 0], [-1, 1, 0]], dtype=torch.float64)


class LiDARBoxes:
    """N boxes ``[x, y, z_bottom, l, w, h, yaw, vx, vy]`` in the LiDAR frame.

    Args:
        tensor: (N, 9) float tensor or array (arrays become float64). An empty input is (0, 9).
        validate: check the shape, finiteness and positive sizes.
    """

    def __init__(self, tensor: Union[Tensor, np.ndarray, Sequence], *, validate: bool = True):
        if not isinstance(tensor, Tensor):
            tensor = torch.as_tensor(np.asarray(tensor, dtype=np.float64))
        if tensor.numel() == 0:
            tensor = tensor.reshape(0, 9)
        if validate:
            if not tensor.is_floating_point():
                raise ValueError(f'LiDARBoxes: tensor must be floating point, got {tensor.dtype}')
            if tensor.dim() != 2 or tensor.shape[1] != 9:
                raise ValueError(f'LiDARBoxes: tensor must have shape (N, 9) = [x, y, z_bottom, l, w, h, yaw, vx, vy], '
                                 f'got {tuple(tensor.shape)} (use from_info_bbox3d for (N, 7) + velocity)')
            if not torch.isfinite(tensor).all():
                bad = (~torch.isfinite(tensor)).any(dim=1).nonzero()[:, 0].tolist()
                raise ValueError(f'LiDARBoxes: rows {bad[:10]} contain NaN or inf')
            if not (tensor[:, 3:6] > 0).all():
                bad = (tensor[:, 3:6] <= 0).any(dim=1).nonzero()[:, 0].tolist()
                raise ValueError(f'LiDARBoxes: sizes (l, w, h) must be > 0; rows {bad[:10]} are not')
        self.tensor = tensor

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, item) -> 'LiDARBoxes':
        """Index rows (int, slice, index tensor or bool mask); always returns LiDARBoxes."""
        t = self.tensor[item]
        return LiDARBoxes(t.reshape(-1, 9), validate=False)

    def __repr__(self) -> str:
        return f'LiDARBoxes(n={len(self)}, dtype={self.tensor.dtype})'

    @property
    def dtype(self) -> torch.dtype:
        return self.tensor.dtype

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def to(self, *args, **kwargs) -> 'LiDARBoxes':
        return LiDARBoxes(self.tensor.to(*args, **kwargs), validate=False)

    def clone(self) -> 'LiDARBoxes':
        return LiDARBoxes(self.tensor.clone(), validate=False)

    @classmethod
    def cat(cls, boxes: Sequence['LiDARBoxes']) -> 'LiDARBoxes':
        return cls(torch.cat([b.tensor for b in boxes]), validate=False)

    # ------------------------------------------------------------------ views
    @property
    def bottom_center(self) -> Tensor:
        """(N, 3) centre of the bottom face."""
        return self.tensor[:, :3]

    @property
    def gravity_center(self) -> Tensor:
        """(N, 3) box centre (bottom z + h / 2)."""
        return torch.cat([self.tensor[:, :2], self.tensor[:, 2:3] + self.tensor[:, 5:6] / 2], dim=1)

    @property
    def dims(self) -> Tensor:
        """(N, 3) (l, w, h)."""
        return self.tensor[:, 3:6]

    @property
    def yaw(self) -> Tensor:
        """(N,) heading in rad from +x towards +y."""
        return self.tensor[:, 6]

    @property
    def velocity(self) -> Tensor:
        """(N, 2) (vx, vy) in m/s, LiDAR frame."""
        return self.tensor[:, 7:9]

    @property
    def bev(self) -> Tensor:
        """(N, 5) (x, y, l, w, yaw)."""
        return self.tensor[:, [0, 1, 3, 4, 6]]

    @property
    def corners(self) -> Tensor:
        """(N, 8, 3) corners in the devkit order (module docstring)."""
        signs = _CORNER_SIGNS.to(self.tensor)
        local = signs * self.dims[:, None, :] * signs.new_tensor([0.5, 0.5, 1.0])  # (N, 8, 3), z from the bottom
        c, s = torch.cos(self.yaw)[:, None], torch.sin(self.yaw)[:, None]  # (N, 1)
        x = c * local[..., 0] - s * local[..., 1]
        y = s * local[..., 0] + c * local[..., 1]
        return torch.stack([x, y, local[..., 2]], dim=-1) + self.bottom_center[:, None, :]

    def in_range_bev(self, box_range: Sequence[float]) -> Tensor:
        """(N,) bool: centre strictly inside ``[x_min, y_min, x_max, y_max]`` (a 6-value point cloud
        range ``[x_min, y_min, z_min, x_max, y_max, z_max]`` is accepted too), as mmdet3d."""
        r = [float(v) for v in box_range]
        if len(r) == 6:
            r = [r[0], r[1], r[3], r[4]]
        if len(r) != 4:
            raise ValueError(f'in_range_bev: range must have 4 or 6 values, got {box_range}')
        x, y = self.tensor[:, 0], self.tensor[:, 1]
        return (x > r[0]) & (y > r[1]) & (x < r[2]) & (y < r[3])

    # ------------------------------------------------------------------ BEV augmentation (new boxes)
    # each matches a 4x4 from transforms.py: bev_rotation, bev_scaling, bev_translation, bev_flip
    def rotate(self, angle: float) -> 'LiDARBoxes':
        """Rotate by ``angle`` rad about the LiDAR z axis (from +x towards +y): positions,
        velocities and yaw (``yaw + angle``, not wrapped)."""
        c, s = float(np.cos(angle)), float(np.sin(angle))
        t = self.tensor.clone()
        t[:, 0], t[:, 1] = c * self.tensor[:, 0] - s * self.tensor[:, 1], s * self.tensor[:, 0] + c * self.tensor[:, 1]
        t[:, 7], t[:, 8] = c * self.tensor[:, 7] - s * self.tensor[:, 8], s * self.tensor[:, 7] + c * self.tensor[:, 8]
        t[:, 6] = self.tensor[:, 6] + angle
        return LiDARBoxes(t, validate=False)

    def scale(self, factor: float) -> 'LiDARBoxes':
        """Scale about the LiDAR origin: positions, sizes and velocities times ``factor`` (> 0)."""
        if not factor > 0:
            raise ValueError(f'LiDARBoxes.scale: factor must be > 0, got {factor}')
        t = self.tensor.clone()
        t[:, [0, 1, 2, 3, 4, 5, 7, 8]] *= factor
        return LiDARBoxes(t, validate=False)

    def translate(self, translation: Sequence[float]) -> 'LiDARBoxes':
        """Move by ``translation`` (3,) metres."""
        tr = torch.as_tensor(np.asarray(translation, dtype=np.float64)).to(self.tensor)
        if tr.shape != (3,):
            raise ValueError(f'LiDARBoxes.translate: translation must have shape (3,), got {tuple(tr.shape)}')
        t = self.tensor.clone()
        t[:, :3] += tr
        return LiDARBoxes(t, validate=False)

    def flip(self, direction: str = 'horizontal') -> 'LiDARBoxes':
        """mmdet3d BEV flip: 'horizontal' negates y, vy and yaw; 'vertical' negates x, vx and
        maps yaw to ``pi - yaw``."""
        t = self.tensor.clone()
        if direction == 'horizontal':
            t[:, [1, 8]] *= -1
            t[:, 6] = -t[:, 6]
        elif direction == 'vertical':
            t[:, [0, 7]] *= -1
            t[:, 6] = np.pi - t[:, 6]
        else:
            raise ValueError(f"LiDARBoxes.flip: direction must be 'horizontal' or 'vertical', got {direction!r}")
        return LiDARBoxes(t, validate=False)


# ---------------------------------------------------------------------------- conversions

def _lidar2global(lidar2ego, ego2global) -> np.ndarray:
    l2e, e2g = np.asarray(lidar2ego, dtype=np.float64), np.asarray(ego2global, dtype=np.float64)
    if l2e.shape != (4, 4) or e2g.shape != (4, 4):
        raise ValueError(f'lidar2ego and ego2global must be (4, 4), got {l2e.shape} and {e2g.shape}')
    m = e2g @ l2e
    r = m[:3, :3]
    if not (np.allclose(r @ r.T, np.eye(3), atol=1e-6) and np.linalg.det(r) > 0):
        raise ValueError('lidar2ego and ego2global must be rigid (rotation + translation); '
                         f'their product has rotation block {r.tolist()}')
    return m


def to_nusc_boxes(boxes: LiDARBoxes, lidar2ego, ego2global, labels: Optional[Sequence[int]] = None,
                  scores: Optional[Sequence[float]] = None, names: Optional[Sequence[str]] = None) -> List[Box]:
    """LiDAR-frame boxes -> devkit ``Box`` list in the nuScenes GLOBAL frame.

    ``center`` = gravity centre, ``wlh`` = (w, l, h), ``orientation`` = lidar2global rotation
    composed with the yaw about the LiDAR z axis, ``velocity`` = (vx, vy, 0) rotated (not
    translated) to global (its small z part is kept, so ``from_nusc_boxes`` inverts it; the
    devkit evaluates only x, y). ``lidar2ego`` / ``ego2global``: (4, 4) at the LiDAR timestamp.
    ``labels`` / ``scores`` / ``names``: optional per-box fields of ``Box``.
    """
    m = _lidar2global(lidar2ego, ego2global)
    arr = boxes.tensor.detach().cpu().double().numpy()
    n = arr.shape[0]
    for field, values in (('labels', labels), ('scores', scores), ('names', names)):
        if values is not None and len(values) != n:
            raise ValueError(f'to_nusc_boxes: {field} has {len(values)} entries for {n} boxes')
    gravity = arr[:, :3] + np.stack([np.zeros(n), np.zeros(n), arr[:, 5] / 2], axis=1)
    centers = gravity @ m[:3, :3].T + m[:3, 3]
    vels = np.concatenate([arr[:, 7:9], np.zeros((n, 1))], axis=1) @ m[:3, :3].T
    q_pose = Quaternion(matrix=m[:3, :3], atol=1e-6)
    out = []
    for i in range(n):
        out.append(Box(centers[i], [arr[i, 4], arr[i, 3], arr[i, 5]],
                       q_pose * Quaternion(axis=[0.0, 0.0, 1.0], radians=arr[i, 6]),
                       label=np.nan if labels is None else int(labels[i]),
                       score=np.nan if scores is None else float(scores[i]),
                       velocity=tuple(vels[i]), name=None if names is None else names[i]))
    return out


def from_nusc_boxes(nusc_boxes: Sequence[Box], lidar2ego, ego2global,
                    dtype: torch.dtype = torch.float64) -> LiDARBoxes:
    """Devkit ``Box`` list in the GLOBAL frame -> ``LiDARBoxes`` (inverse of ``to_nusc_boxes``).

    yaw = heading of the box x axis in the LiDAR xy plane; the full 3D velocity is rotated back
    and its x, y kept; NaN velocity components (devkit boxes without velocity) become 0, as in
    mmdet3d's loader.
    """
    g2l = np.linalg.inv(_lidar2global(lidar2ego, ego2global))
    rows = []
    for b in nusc_boxes:
        center = g2l[:3, :3] @ b.center + g2l[:3, 3]
        rot = g2l[:3, :3] @ b.rotation_matrix
        vel = g2l[:3, :3] @ np.nan_to_num(np.asarray(b.velocity, dtype=np.float64), nan=0.0)
        w, l, h = b.wlh
        rows.append([center[0], center[1], center[2] - h / 2, l, w, h, np.arctan2(rot[1, 0], rot[0, 0]),
                     vel[0], vel[1]])
    return LiDARBoxes(torch.tensor(np.asarray(rows, dtype=np.float64).reshape(-1, 9), dtype=dtype))


def from_info_bbox3d(bbox_3d, velocity=None, dtype: torch.dtype = torch.float64) -> LiDARBoxes:
    """mmdet3d 1.x info ``bbox_3d`` (N, 7) ``[x, y, z_gravity, l, w, h, yaw]`` (+ ``velocity`` (N, 2))
    or (N, 9) with velocity included -> ``LiDARBoxes`` (z converted to the bottom).

    ``velocity=None`` with 7 columns means zero velocity; NaN velocities become 0 (mmdet3d does the same).
    """
    arr = np.asarray(bbox_3d, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, 7)
    if arr.ndim != 2 or arr.shape[1] not in (7, 9):
        raise ValueError(f'from_info_bbox3d: bbox_3d must be (N, 7) or (N, 9), got {arr.shape}')
    if arr.shape[1] == 9:
        if velocity is not None:
            raise ValueError('from_info_bbox3d: bbox_3d has 9 columns (velocity included) and velocity was given too')
        arr, velocity = arr[:, :7], arr[:, 7:]
    vel = np.zeros((arr.shape[0], 2)) if velocity is None else np.asarray(velocity, dtype=np.float64).reshape(-1, 2)
    if vel.shape[0] != arr.shape[0]:
        raise ValueError(f'from_info_bbox3d: {arr.shape[0]} boxes but velocity has shape {vel.shape}')
    out = np.concatenate([arr, np.nan_to_num(vel, nan=0.0)], axis=1)
    out[:, 2] -= out[:, 5] / 2
    return LiDARBoxes(torch.tensor(out, dtype=dtype))


def to_gravity_array(boxes: LiDARBoxes) -> np.ndarray:
    """(N, 9) float64 ``[x, y, z_gravity, l, w, h, yaw, vx, vy]`` (the info-file z convention)."""
    out = boxes.tensor.detach().cpu().double().numpy().copy()
    out[:, 2] += out[:, 5] / 2
    return out
