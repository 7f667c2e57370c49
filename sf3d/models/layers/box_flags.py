"""Binary properties of each decoded box, one classifier per decoder layer: the base of the heading
direction (:class:`~sf3d.models.layers.heading.HeadingDirection`: does the box face the other way)
and :class:`MovingState` (does the box move).

DETR3D regresses every box property with one L1. Some are binary decisions that a regression
handles badly: where the image cannot settle them, the L1 averages two answers. A flag is a
two-layer MLP per decoder layer to one logit, trained with a binary cross-entropy on the queries
matched to a GT (Hungarian matches and denoising positives), and applied to the box codes at
prediction (:meth:`BoxFlag.apply_to_codes`). The regression then learns what is left once the flag
has decided (:meth:`BoxFlag.regression_targets`).

:class:`MovingState` (a hurdle model of the velocity): on a class of which half stands still, the
L1 regression of (vx, vy) falls to the median, zero, for every box. Measured on the 60-minute
token model after 320 iterations: the median predicted speed was 0.01 m/s and no box was faster
than 0.2 m/s, so the attribute rule of camera detectors (mmdet3d's,
:func:`sf3d.evaluation.nuscenes_metric.assign_attribute`: faster than 0.2 m/s is "moving") called
every box static. With the flag, the velocity L1 sees only the GT that move, so the regression
learns the speed of movers, and a box the flag calls static predicts velocity 0 (its attribute is
then the static one by the same rule). Measured at the demo budget (README, "Convergence", part
6; 3 seeds): the token model's NDS 0.194 -> 0.199 at 640 iterations (every seed gains), mAAE about
0.51 -> 0.44; the learned queries gain at 320 iterations, not at 640.

Axis names: D decoder layers, B batch, Q queries, C channels, M matched queries.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ['BoxFlag', 'MovingState']


class BoxFlag(nn.Module):
    """One binary classifier per decoder layer and its loss; subclasses set ``key`` (the head's outputs
    ``all_{key}_logits`` and losses ``loss_{key}``) and define :meth:`targets`, :meth:`apply_to_codes`
    and :meth:`regression_targets`.

    Args:
        embed_dims: C of the decoder's hidden states.
        num_layers: D, one branch per decoder layer.
        loss_weight: weight of the binary cross-entropy, summed over matched queries and divided by
            the head's normaliser (the number of GT), like the head's L1.
    """
    key = ''

    def __init__(self, *, embed_dims: int = 256, num_layers: int = 6, loss_weight: float = 0.25):
        super().__init__()
        if loss_weight < 0:
            raise ValueError(f'{type(self).__name__}: loss_weight must be >= 0, got {loss_weight}')
        self.loss_weight = float(loss_weight)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Linear(embed_dims, embed_dims), nn.ReLU(inplace=True), nn.Linear(embed_dims, 1))
            for _ in range(num_layers))

    def logits_key(self, queries: str = 'all') -> str:
        """The key of this flag's (D, B, Q) logits in the head's outputs: ``all_{key}_logits``, and
        ``dn_{key}_logits`` for the denoising queries (``queries='dn'``)."""
        return f'{queries}_{self.key}_logits'

    def forward(self, hidden_states: Tensor) -> Tensor:
        """(D, B, Q, C) decoder hidden states -> (D, B, Q) logits."""
        return torch.stack([branch(h)[..., 0] for branch, h in zip(self.branches, hidden_states)])

    def targets(self, boxes: Tensor) -> Tensor:
        """(M, 9) GT boxes ``[x, y, z_bottom, l, w, h, yaw, vx, vy]`` -> (M,) targets in {0, 1}, NaN where
        the box does not say."""
        raise NotImplementedError

    def apply_to_codes(self, codes: Tensor, logits: Tensor) -> Tensor:
        """Box codes (..., 10) and their logits (...) -> the codes the flag's decision gives."""
        raise NotImplementedError

    def regression_targets(self, boxes: Tensor) -> Tensor:
        """(M, 9) GT boxes -> the boxes the regression learns once the flag has decided (NaN: no loss)."""
        raise NotImplementedError

    def loss(self, logits: Tensor, targets: Tensor, normaliser: float) -> Tensor:
        """Weighted binary cross-entropy of logits (M,) against targets (M,) (NaN: no loss), summed,
        / normaliser."""
        known = torch.isfinite(targets)
        bce = nn.functional.binary_cross_entropy_with_logits(logits.float()[known], targets.float()[known],
                                                             reduction='sum')
        return self.loss_weight * bce / normaliser


class MovingState(BoxFlag):
    """Whether a box moves faster than ``speed`` m/s; a box classified static predicts velocity 0, and
    the velocity regression learns from the moving GT only (module docstring).

    Args:
        speed: the GT speed (m/s, ground plane) above which a box is "moving"; 0.2 is the attribute
            rule's threshold (module docstring).
        embed_dims, num_layers, loss_weight: as :class:`BoxFlag`.
    """
    key = 'moving'

    def __init__(self, *, speed: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        if not speed >= 0:
            raise ValueError(f'MovingState: speed must be >= 0 m/s, got {speed}')
        self.speed = float(speed)

    def targets(self, boxes: Tensor) -> Tensor:
        speed = boxes[..., 7:9].norm(dim=-1)  # (M,) NaN where the GT has no velocity
        return torch.where(torch.isfinite(speed), (speed > self.speed).to(boxes.dtype), speed)

    def apply_to_codes(self, codes: Tensor, logits: Tensor) -> Tensor:
        moving = (logits > 0).to(codes.dtype)[..., None]  # (..., 1)
        return torch.cat([codes[..., :8], codes[..., 8:] * moving], -1)

    def regression_targets(self, boxes: Tensor) -> Tensor:
        """The velocity of static GT set to NaN: the velocity L1 learns from the moving GT only."""
        static = (self.targets(boxes) == 0)[..., None]  # (M, 1)
        return torch.cat([boxes[..., :7], boxes[..., 7:].masked_fill(static, float('nan'))], -1)
