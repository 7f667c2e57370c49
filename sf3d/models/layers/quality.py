"""Localisation-quality class targets (VarifocalNet, Zhang et al., CVPR 2021; RT-DETR's ``loss_vfl``)
for :class:`~sf3d.models.heads.detr3d_head.DETR3DHead`, with the nuScenes metric's own quality.

With one-hot targets every positive query is trained to the same score, however far its box is
from its GT. The devkit then ranks the boxes by that score, and a box more than 0.5 / 1 / 2 / 4 m
from its GT (BEV centre distance) is a false positive at that AP threshold. Here a positive's
target is the fraction of those thresholds its predicted centre is within (the share of the four
APs in which it would be a true positive), so the score ranks boxes as the metric counts them.

The loss is the varifocal loss: binary cross-entropy against the soft target ``q`` on the GT class,
weighted by ``q`` there, and by ``alpha * p**gamma`` on every negative entry (focal down-weighting
of easy negatives). A positive whose centre is outside every threshold (``q = 0``) carries no class
loss on its GT class: it is neither pushed up nor trained as background.

What differs from VarifocalNet / RT-DETR: the quality is the devkit's distance-threshold fraction,
not a 2D IoU; the Hungarian matching cost stays the focal cost, as in RT-DETR.

Axis names: K classes, M positives.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ['LocalizationQuality']


class LocalizationQuality:
    """Soft class targets from the BEV centre distance, and the varifocal loss against them.

    Args:
        thresholds: BEV centre distances (m) of the metric's APs (the devkit's detection_cvpr_2019:
            0.5, 1, 2, 4), increasing and > 0.
        alpha: weight of the negative entries (RT-DETR's 0.75).
        gamma: focal exponent of the negative entries (2).
    """

    def __init__(self, *, thresholds: Sequence[float] = (0.5, 1.0, 2.0, 4.0), alpha: float = 0.75,
                 gamma: float = 2.0):
        thresholds = tuple(float(t) for t in thresholds)
        if not thresholds or any(t <= 0 for t in thresholds) or list(thresholds) != sorted(set(thresholds)):
            raise ValueError(f'LocalizationQuality: thresholds must be increasing distances > 0 (m), got {thresholds}')
        if not alpha > 0 or gamma < 0:
            raise ValueError(f'LocalizationQuality: alpha must be > 0 and gamma >= 0, got alpha={alpha}, gamma={gamma}')
        self.thresholds, self.alpha, self.gamma = thresholds, float(alpha), float(gamma)

    def targets(self, pred_xy: Tensor, gt_xy: Tensor) -> Tensor:
        """(..., 2) predicted and GT BEV centres (m) -> (...,) the fraction of ``thresholds`` that their
        distance is below (no gradient)."""
        if pred_xy.shape != gt_xy.shape or pred_xy.shape[-1] != 2:
            raise ValueError(f'LocalizationQuality.targets: expected two (..., 2) centres of one shape, got '
                             f'{tuple(pred_xy.shape)} and {tuple(gt_xy.shape)}')
        dist = (pred_xy.detach().float() - gt_xy.float()).norm(dim=-1)  # (...)
        limits = dist.new_tensor(self.thresholds)  # (T,)
        return (dist[..., None] < limits).float().mean(-1)

    def loss(self, logits: Tensor, onehot: Tensor, quality: Tensor) -> Tensor:
        """Summed varifocal loss of class ``logits`` (..., K) against ``onehot`` (..., K) GT classes (all
        zero for background) whose positives have ``quality`` (...,) in [0, 1]."""
        if logits.shape != onehot.shape or quality.shape != logits.shape[:-1]:
            raise ValueError(f'LocalizationQuality.loss: expected logits and onehot (..., K) and quality (...), '
                             f'got {tuple(logits.shape)}, {tuple(onehot.shape)}, {tuple(quality.shape)}')
        target = onehot * quality[..., None]  # (..., K)
        weight = self.alpha * logits.detach().sigmoid().pow(self.gamma) * (1 - onehot) + target
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction='none')
        return (bce * weight).sum()
