"""Several sampling points per query about its reference point (Sparse4D's keypoints).

DETR3D's cross-attention samples every camera and FPN level at one point per query, the
projection of its reference point: the decoder sees the pixel of the object's centre and
nothing of its extent or its edges. Sparse4D (Lin et al., 2022) samples a set of keypoints
spread over the box instead. Here each query predicts P offsets in metres (LiDAR frame) from its
content with one linear layer whose weight starts at zero and whose bias is a fixed pattern: the
centre and the centres of the six faces of a box of half-extents ``spread`` (x, y, z). At
initialisation every query samples that pattern about its reference point; the offsets then
learn to follow the object. Sparse4D's keypoints are fixed ones on the predicted box plus
learned ones; these are all learned and start as a box of one size.

The cross-attention (:class:`~sf3d.models.heads.detr3d_head.DETR3DCrossAttention`) weighs every
sample (cameras x levels x points) and averages over the points, so that P = 1 is DETR3D.

Axis names: B batch, Q queries, C channels, P keypoints.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ['QueryKeypoints']

# the centre, then the face centres of the unit box: +x, -x, +y, -y, +z, -z
_PATTERN = ((0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))


class QueryKeypoints(nn.Module):
    """Per-query sampling offsets: ``forward(query (B, Q, C)) -> (B, Q, P, 3)`` metres.

    Args:
        embed_dims: C of the queries.
        num_points: P, 1-7: the first P points of (centre, +x, -x, +y, -y, +z, -z).
        spread: (x, y, z) half-extents in metres of the initial pattern.
    """

    def __init__(self, *, embed_dims: int = 256, num_points: int = 7, spread: Sequence[float] = (1.0, 1.0, 0.5)):
        super().__init__()
        if not 1 <= int(num_points) <= len(_PATTERN) or int(num_points) != num_points:
            raise ValueError(f'QueryKeypoints: num_points must be an integer in 1..{len(_PATTERN)}, got {num_points}')
        if len(spread) != 3 or any(s <= 0 for s in spread):
            raise ValueError(f'QueryKeypoints: spread must be three positive half-extents (x, y, z) in metres, '
                             f'got {tuple(spread)}')
        self.num_points = int(num_points)
        pattern = torch.tensor(_PATTERN[:self.num_points], dtype=torch.float32) * torch.tensor(spread)  # (P, 3)
        self.register_buffer('pattern', pattern, persistent=False)
        self.offsets = nn.Linear(embed_dims, self.num_points * 3)
        self.init_weights()

    def init_weights(self) -> None:
        """Zero weight, the pattern as bias: every query starts with the same keypoints."""
        nn.init.zeros_(self.offsets.weight)
        with torch.no_grad():
            self.offsets.bias.copy_(self.pattern.flatten())

    def forward(self, query: Tensor) -> Tensor:
        B, Q, _ = query.shape
        return self.offsets(query).float().view(B, Q, self.num_points, 3)  # (B, Q, P, 3)
