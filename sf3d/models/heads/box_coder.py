"""Box code of the DETR3D-style head and its NMS-free decoder.

Box code (10 values, DETR3D's ``normalize_bbox``): ``(cx, cy, log l, log w, cz, log h,
sin yaw, cos yaw, vx, vy)`` with the gravity centre ``cz = z_bottom + h / 2``, from LiDAR
boxes ``[x, y, z_bottom, l, w, h, yaw, vx, vy]`` (:class:`sf3d.structures.LiDARBoxes`).
Centres stay in metres; reference points are normalised to the point-cloud range
(``normalize_points``) and refined in inverse-sigmoid space.

Axis names: B batch, Q queries, K kept detections, G ground-truth boxes.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ['CODE_SIZE', 'encode_boxes', 'decode_boxes', 'inverse_sigmoid', 'normalize_points',
           'denormalize_points', 'NMSFreeDecoder']

CODE_SIZE = 10
PC_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
POST_CENTER_RANGE = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)


def encode_boxes(boxes: Tensor) -> Tensor:
    """(..., 9) ``[x, y, z_bottom, l, w, h, yaw, vx, vy]`` -> (..., 10) box code."""
    if boxes.shape[-1] != 9:
        raise ValueError(f'encode_boxes: expected (..., 9) [x, y, z_bottom, l, w, h, yaw, vx, vy], '
                         f'got {tuple(boxes.shape)}')
    x, y, z, l, w, h, yaw, vx, vy = boxes.unbind(-1)
    return torch.stack([x, y, l.log(), w.log(), z + 0.5 * h, h.log(), yaw.sin(), yaw.cos(), vx, vy], dim=-1)


def decode_boxes(code: Tensor) -> Tensor:
    """(..., 10) box code -> (..., 9) ``[x, y, z_bottom, l, w, h, yaw, vx, vy]`` (yaw in (-pi, pi])."""
    if code.shape[-1] != CODE_SIZE:
        raise ValueError(f'decode_boxes: expected (..., {CODE_SIZE}) box codes, got {tuple(code.shape)}')
    cx, cy, log_l, log_w, cz, log_h, s, c, vx, vy = code.unbind(-1)
    l, w, h = log_l.exp(), log_w.exp(), log_h.exp()
    return torch.stack([cx, cy, cz - 0.5 * h, l, w, h, torch.atan2(s, c), vx, vy], dim=-1)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x) with x clamped to [0, 1] and both x and 1 - x to >= eps (DETR3D)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def normalize_points(points: Tensor, pc_range: Sequence[float] = PC_RANGE) -> Tensor:
    """(..., 3) metres -> (..., 3) fractions of the point-cloud range ``[x0, y0, z0, x1, y1, z1]``."""
    r = points.new_tensor(pc_range)
    return (points - r[:3]) / (r[3:] - r[:3])


def denormalize_points(points: Tensor, pc_range: Sequence[float] = PC_RANGE) -> Tensor:
    """Inverse of :func:`normalize_points`."""
    r = points.new_tensor(pc_range)
    return points * (r[3:] - r[:3]) + r[:3]


class NMSFreeDecoder:
    """Top-k over queries x classes of sigmoid scores, then a centre-range filter (DETR3D).

    Args:
        num_classes: number of classes C.
        max_num: k, the number of (query, class) pairs kept before the range filter.
        post_center_range: ``[x0, y0, z0, x1, y1, z1]``; gravity centres outside are dropped.
        score_threshold: optional minimum score.
    """

    def __init__(self, *, num_classes: int = 10, max_num: int = 300,
                 post_center_range: Sequence[float] = POST_CENTER_RANGE,
                 score_threshold: Optional[float] = None):
        if len(post_center_range) != 6:
            raise ValueError(f'NMSFreeDecoder: post_center_range must have 6 values, got {post_center_range}')
        self.num_classes = num_classes
        self.max_num = max_num
        self.post_center_range = tuple(float(v) for v in post_center_range)
        self.score_threshold = score_threshold

    def decode_single(self, cls_logits: Tensor, bbox_preds: Tensor) -> dict:
        """cls_logits (Q, C), bbox_preds (Q, 10) box codes -> dict(bboxes_3d (K, 9), scores_3d (K,),
        labels_3d (K,) int64), sorted by descending score."""
        Q, C = cls_logits.shape
        if C != self.num_classes or bbox_preds.shape != (Q, CODE_SIZE):
            raise ValueError(f'NMSFreeDecoder: expected cls_logits (Q, {self.num_classes}) and bbox_preds '
                             f'(Q, {CODE_SIZE}), got {tuple(cls_logits.shape)} and {tuple(bbox_preds.shape)}')
        scores, idx = cls_logits.sigmoid().flatten().topk(min(self.max_num, Q * C))  # (k,)
        labels = idx % C
        boxes = bbox_preds[idx // C]  # (k, 10)
        centres = boxes[:, [0, 1, 4]]  # (k, 3) gravity centres
        r = centres.new_tensor(self.post_center_range)
        keep = ((centres >= r[:3]) & (centres <= r[3:])).all(-1)
        if self.score_threshold is not None:
            keep &= scores > self.score_threshold
        return dict(bboxes_3d=decode_boxes(boxes[keep]), scores_3d=scores[keep], labels_3d=labels[keep])

    def decode(self, cls_logits: Tensor, bbox_preds: Tensor) -> list[dict]:
        """cls_logits (B, Q, C), bbox_preds (B, Q, 10) -> B dicts as in :meth:`decode_single`."""
        return [self.decode_single(c, b) for c, b in zip(cls_logits, bbox_preds)]
