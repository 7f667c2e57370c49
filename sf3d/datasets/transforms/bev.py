"""BEV (LiDAR-frame) augmentation and GT filters of the multi-view pipeline.

A BEV augmentation moves the scene by a 4x4 ``T`` (old LiDAR -> new LiDAR): the GT boxes are
moved with ``LiDARBoxes.rotate/scale/translate/flip`` and the cameras follow with
``MultiViewCameras.bev_transform(T)`` (``lidar2cam' = lidar2cam @ T^-1``), so every box
projects to the same pixels as before and the images stay untouched. ``bev_aug_matrix``
(4x4 float64) accumulates the applied T's (``T_total = T_n @ ... @ T_1``), e.g. to map
predictions back to the original frame.
"""
from typing import Dict, Sequence, Union

import numpy as np
import torch

from sf3d.registry import TRANSFORMS
from sf3d.structures import bev_flip, bev_rotation, bev_scaling, bev_translation

GT_KEYS = ('gt_bboxes_3d', 'gt_labels_3d', 'gt_names_3d')


def _apply_bev(results: Dict, transform: torch.Tensor, boxes_fn) -> None:
    """Move the boxes (if any) with ``boxes_fn`` and the cameras with ``transform`` (4x4)."""
    if 'cameras' not in results:
        raise KeyError("BEV augmentation needs results['cameras'] (run LoadMultiViewImages first)")
    if 'gt_bboxes_3d' in results:
        results['gt_bboxes_3d'] = boxes_fn(results['gt_bboxes_3d'])
    results['cameras'] = results['cameras'].bev_transform(transform)
    previous = results.get('bev_aug_matrix', np.eye(4))
    results['bev_aug_matrix'] = transform.numpy() @ previous


def _filter_gt(results: Dict, keep: np.ndarray) -> None:
    """Keep the GT instances where ``keep`` (N,) bool is True, in every GT key present."""
    for key in GT_KEYS:
        if key in results:
            value = results[key]
            results[key] = value[torch.from_numpy(keep)] if key == 'gt_bboxes_3d' else value[keep]


@TRANSFORMS.register_module()
class GlobalRotScaleTrans:
    """Random global rotation about the LiDAR z axis, isotropic scaling and translation (in that
    order, as mmdet3d's ``GlobalRotScaleTrans``): ``angle ~ U(*rot_range)`` rad,
    ``scale ~ U(*scale_ratio_range)``, ``translation ~ N(0, translation_std)`` metres per axis.

    Boxes: positions, yaw, sizes and velocities follow; cameras: ``bev_transform(T)`` with
    ``T = translate @ scale @ rotate``. Records ``pcd_rotation_angle``, ``pcd_scale_factor``,
    ``pcd_trans`` (3,) and updates ``bev_aug_matrix``.
    """

    def __init__(self, rot_range: Sequence[float] = (-0.78539816, 0.78539816),
                 scale_ratio_range: Sequence[float] = (0.95, 1.05),
                 translation_std: Union[float, Sequence[float]] = (0.0, 0.0, 0.0)):
        self.rot_range = tuple(float(v) for v in rot_range)
        self.scale_ratio_range = tuple(float(v) for v in scale_ratio_range)
        std = np.broadcast_to(np.asarray(translation_std, dtype=np.float64), (3,))
        if len(self.rot_range) != 2 or len(self.scale_ratio_range) != 2 or self.scale_ratio_range[0] <= 0 \
                or (std < 0).any():
            raise ValueError(f'GlobalRotScaleTrans needs rot_range (2,), scale_ratio_range (2,) > 0 and '
                             f'translation_std >= 0; got {rot_range}, {scale_ratio_range}, {translation_std}')
        self.translation_std = tuple(std.tolist())

    def __call__(self, results: Dict) -> Dict:
        angle = float(np.random.uniform(*self.rot_range))
        scale = float(np.random.uniform(*self.scale_ratio_range))
        trans = np.random.normal(scale=self.translation_std, size=3) if any(self.translation_std) else np.zeros(3)
        transform = bev_translation(trans) @ bev_scaling(scale) @ bev_rotation(angle)
        _apply_bev(results, transform, lambda b: b.rotate(angle).scale(scale).translate(trans))
        results['pcd_rotation_angle'] = angle
        results['pcd_scale_factor'] = scale
        results['pcd_trans'] = trans
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(rot_range={self.rot_range}, scale_ratio_range={self.scale_ratio_range}, '
                f'translation_std={self.translation_std})')


@TRANSFORMS.register_module()
class RandomFlip3D:
    """Random BEV flips (mmdet3d's): 'horizontal' (``y -> -y``) with probability
    ``flip_ratio_bev_horizontal``, then 'vertical' (``x -> -x``) with ``flip_ratio_bev_vertical``.

    Boxes flip (``LiDARBoxes.flip``); cameras follow with ``bev_transform(bev_flip(...))`` (their
    ``lidar2cam`` becomes a reflection); images are unchanged. Records ``pcd_horizontal_flip``,
    ``pcd_vertical_flip`` and updates ``bev_aug_matrix``.
    """

    def __init__(self, flip_ratio_bev_horizontal: float = 0.0, flip_ratio_bev_vertical: float = 0.0):
        for name, p in (('flip_ratio_bev_horizontal', flip_ratio_bev_horizontal),
                        ('flip_ratio_bev_vertical', flip_ratio_bev_vertical)):
            if not 0 <= p <= 1:
                raise ValueError(f'RandomFlip3D: {name} must be in [0, 1], got {p}')
        self.flip_ratio_bev_horizontal = float(flip_ratio_bev_horizontal)
        self.flip_ratio_bev_vertical = float(flip_ratio_bev_vertical)

    def __call__(self, results: Dict) -> Dict:
        for direction, ratio in (('horizontal', self.flip_ratio_bev_horizontal),
                                 ('vertical', self.flip_ratio_bev_vertical)):
            flip = bool(np.random.rand() < ratio)
            if flip:
                _apply_bev(results, bev_flip(direction), lambda b, d=direction: b.flip(d))
            results[f'pcd_{direction}_flip'] = flip
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(flip_ratio_bev_horizontal={self.flip_ratio_bev_horizontal}, '
                f'flip_ratio_bev_vertical={self.flip_ratio_bev_vertical})')


@TRANSFORMS.register_module()
class ObjectRangeFilter:
    """Keep GT boxes whose BEV centre lies strictly inside the range (as mmdet3d), then wrap every
    yaw into [-pi, pi) (mmdet3d's ``limit_yaw(offset=0.5, period=2 pi)``).

    Args:
        point_cloud_range: ``[x_min, y_min, z_min, x_max, y_max, z_max]`` (only x, y are used).
    """

    def __init__(self, point_cloud_range: Sequence[float]):
        pcr = [float(v) for v in point_cloud_range]
        if len(pcr) != 6 or pcr[0] >= pcr[3] or pcr[1] >= pcr[4]:
            raise ValueError(f'ObjectRangeFilter: point_cloud_range must be [x_min, y_min, z_min, x_max, y_max, z_max] '
                             f'with min < max, got {point_cloud_range}')
        self.point_cloud_range = pcr

    def __call__(self, results: Dict) -> Dict:
        if 'gt_bboxes_3d' not in results:
            return results
        keep = results['gt_bboxes_3d'].in_range_bev(self.point_cloud_range).numpy()
        _filter_gt(results, keep)
        boxes = results['gt_bboxes_3d'].clone()
        yaw = boxes.tensor[:, 6]
        boxes.tensor[:, 6] = yaw - torch.floor(yaw / (2 * np.pi) + 0.5) * (2 * np.pi)
        results['gt_bboxes_3d'] = boxes
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(point_cloud_range={self.point_cloud_range})'


@TRANSFORMS.register_module()
class ObjectNameFilter:
    """Keep GT boxes whose class name (``gt_names_3d``) is one of ``classes``; labels stay the
    dataset's indices."""

    def __init__(self, classes: Sequence[str]):
        self.classes = tuple(classes)

    def __call__(self, results: Dict) -> Dict:
        if 'gt_bboxes_3d' not in results:
            return results
        if 'gt_names_3d' not in results:
            raise KeyError("ObjectNameFilter needs results['gt_names_3d'] (written by NuScenesMultiViewDataset)")
        keep = np.array([name in self.classes for name in results['gt_names_3d']], dtype=bool)
        _filter_gt(results, keep)
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(classes={self.classes})'
