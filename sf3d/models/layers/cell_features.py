"""FPN evidence for the spatial tokens: each token gets the mean of the first FPN level over its
image cell, projected and added, before the token heads (class, depth bins, in-cell offsets) and the
query projection read it.

Why: the SpatialFormer's spatial tokens exchange information with the image tokens only in the
first stages (the paper's design); their last-stage vectors summarise the image coarsely. The first
FPN level (stride 8, with the top-down path of the deeper stages) is the map the pixel supervision
trains for class and depth per pixel. Measured on the part-4 demo model: the in-cell offsets' loss only
fell from 0.47 to 0.36 cell sizes, and the decoder moved the references little (README,
"Convergence"). The projection is zero-initialised, so training starts from the detector without it.
Measured at the demo budget (README, "Convergence", part 7): mATE falls, NDS and mAP do not rise
yet; off by default.

Axis names: B batch, N cameras, M = gh * gw tokens per view, C channels.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ['CellFeatures']


class CellFeatures(nn.Module):
    """tokens (B, N, M, C_tok) + FPN level (B, N, C_fpn, h, w) -> tokens + Linear(cell mean).

    Args:
        fpn_dims: C_fpn of the FPN level.
        token_dims: C_tok of the final spatial tokens.
        grid: (gh, gw) token grid; M = gh * gw, row-major as the backbone orders its tokens.
    """

    def __init__(self, *, fpn_dims: int, token_dims: int, grid: tuple[int, int]):
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.norm = nn.LayerNorm(fpn_dims)
        self.proj = nn.Linear(fpn_dims, token_dims)
        nn.init.zeros_(self.proj.weight)  # starts as the identity on the tokens
        nn.init.zeros_(self.proj.bias)

    def cell_means(self, feat: Tensor) -> Tensor:
        """FPN level (B, N, C, h, w) -> its mean over each token's cell (B, N, M, C), token ``i * gw + j``
        the cell of rows [floor(i h / gh), ceil((i + 1) h / gh)) and columns likewise (adaptive average
        pooling: exact cells where gh divides h and gw divides w), the order of ``pixel_grid``'s token
        centres."""
        gh, gw = self.grid
        if feat.dim() != 5 or feat.shape[-2] < gh or feat.shape[-1] < gw:
            raise ValueError(f'CellFeatures: the FPN level must be (B, N, C, h >= {gh}, w >= {gw}), '
                             f'got {tuple(feat.shape)}')
        cells = F.adaptive_avg_pool2d(feat.flatten(0, 1), (gh, gw))  # (B * N, C, gh, gw)
        return cells.flatten(2).transpose(1, 2).unflatten(0, feat.shape[:2])  # (B, N, M, C)

    def forward(self, tokens: Tensor, feat: Tensor) -> Tensor:
        """tokens (B, N, M, C_tok), FPN level (B, N, C_fpn, h, w) -> tokens + proj(norm(cell means))."""
        gh, gw = self.grid
        if tokens.dim() != 4 or tokens.shape[2] != gh * gw or feat.shape[:2] != tokens.shape[:2]:
            raise ValueError(f'CellFeatures: tokens must be (B, N, {gh} x {gw}, C) with the FPN level\'s B, N, '
                             f'got {tuple(tokens.shape)} and {tuple(feat.shape)}')
        return tokens + self.proj(self.norm(self.cell_means(feat))).to(tokens.dtype)
