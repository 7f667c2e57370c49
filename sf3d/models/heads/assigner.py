"""One-to-one Hungarian matching of DETR3D queries to ground-truth boxes.

As DETR3D's ``HungarianAssigner3D``: cost = focal classification cost + L1 on the first
8 box-code dims (centre, log sizes, sin/cos yaw; velocity excluded), solved with
``scipy.optimize.linear_sum_assignment``. Predictions and targets are both box codes
(:func:`sf3d.models.heads.box_coder.encode_boxes`) with centres in metres.

Axis names: Q queries, C classes, G ground-truth boxes.
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = ['focal_cost', 'HungarianAssigner3D']


def focal_cost(cls_logits: Tensor, gt_labels: Tensor, alpha: float = 0.25, gamma: float = 2.0,
               eps: float = 1e-12) -> Tensor:
    """Focal classification cost (mmdet's ``FocalLossCost``): (Q, C) logits, (G,) labels -> (Q, G)."""
    p = cls_logits.sigmoid()
    neg = -(1 - p + eps).log() * (1 - alpha) * p.pow(gamma)
    pos = -(p + eps).log() * alpha * (1 - p).pow(gamma)
    return pos[:, gt_labels] - neg[:, gt_labels]


class HungarianAssigner3D:
    """Match predictions to GT boxes by minimum total cost.

    Args:
        cls_weight: weight of the focal classification cost.
        reg_weight: weight of the L1 cost on code dims 0..7.
        alpha, gamma: focal cost parameters.
    """

    def __init__(self, *, cls_weight: float = 2.0, reg_weight: float = 0.25,
                 alpha: float = 0.25, gamma: float = 2.0):
        self.cls_weight = cls_weight
        self.reg_weight = reg_weight
        self.alpha = alpha
        self.gamma = gamma

    @torch.no_grad()
    def assign(self, cls_logits: Tensor, bbox_preds: Tensor, gt_labels: Tensor,
               gt_codes: Tensor, fixed: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """cls_logits (Q, C), bbox_preds (Q, 10), gt_labels (G,) int, gt_codes (G, 10) ->
        (pred_idx (M,), gt_idx (M,)) int64 on the input device, M = min(Q, G); empty when G == 0.

        ``fixed``: (pred_idx (F,), gt_idx (F,)) pairs decided beforehand (each prediction and GT at
        most once); only the remaining predictions and GTs are matched by cost."""
        if fixed is not None and fixed[0].numel() > 0:
            return self._assign_rest(cls_logits, bbox_preds, gt_labels, gt_codes, fixed)
        Q, G = cls_logits.shape[0], gt_labels.shape[0]
        if gt_codes.shape[0] != G or bbox_preds.shape[0] != Q:
            raise ValueError(f'HungarianAssigner3D: {Q} predictions with {bbox_preds.shape[0]} boxes, '
                             f'{G} GT labels with {gt_codes.shape[0]} GT boxes')
        if G > 0 and (gt_labels.min() < 0 or gt_labels.max() >= cls_logits.shape[1]):
            raise ValueError(f'HungarianAssigner3D: gt_labels must be in [0, {cls_logits.shape[1]}), '
                             f'got {gt_labels.tolist()}')
        empty = torch.zeros(0, dtype=torch.long, device=cls_logits.device)
        if G == 0 or Q == 0:
            return empty, empty.clone()
        cost = self.cls_weight * focal_cost(cls_logits.float(), gt_labels, self.alpha, self.gamma)
        cost = cost + self.reg_weight * torch.cdist(bbox_preds[:, :8].float(),
                                                     gt_codes[:, :8].float().nan_to_num(), p=1)  # (Q, G)
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        dev = cls_logits.device
        return torch.as_tensor(rows, dtype=torch.long, device=dev), torch.as_tensor(cols, dtype=torch.long, device=dev)

    def _assign_rest(self, cls_logits: Tensor, bbox_preds: Tensor, gt_labels: Tensor, gt_codes: Tensor,
                     fixed: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        fixed_pred, fixed_gt = (f.to(device=cls_logits.device, dtype=torch.long) for f in fixed)
        if fixed_pred.unique().numel() != fixed_pred.numel() or fixed_gt.unique().numel() != fixed_gt.numel():
            raise ValueError('HungarianAssigner3D: fixed pairs must use each prediction and each GT at most once')
        free_q = torch.ones(cls_logits.shape[0], dtype=torch.bool, device=cls_logits.device)
        free_g = torch.ones(gt_labels.shape[0], dtype=torch.bool, device=cls_logits.device)
        free_q[fixed_pred] = False
        free_g[fixed_gt] = False
        q_idx, g_idx = free_q.nonzero()[:, 0], free_g.nonzero()[:, 0]
        rows, cols = self.assign(cls_logits[q_idx], bbox_preds[q_idx], gt_labels[g_idx], gt_codes[g_idx])
        return torch.cat([fixed_pred, q_idx[rows]]), torch.cat([fixed_gt, g_idx[cols]])
