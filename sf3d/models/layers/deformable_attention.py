"""Multi-scale deformable cross-attention around reference boxes, in plain PyTorch (``grid_sample``).

Deformable DETR (Zhu et al., ICLR 2021), Sec. 4.1 and its box-reference form (Appendix A.4): each
query attends to ``num_points`` sampled locations per head and level, placed around its reference
box as ``centre + offset / num_points * size / 2``; the offsets and the softmax weights over
levels x points are linear functions of the query. Deformable DETR's init: offsets start on rays in
``num_heads`` directions, point p at (p + 1) steps out, and the weights start uniform.

What differs from the reference CUDA op: bilinear sampling is ``F.grid_sample`` per level (what
the op's PyTorch fallback does: no compiled extension), and coordinates are normalised by each
image's size before padding (``img_shape``, DETR's box convention), mapped to every padded level
map by ``img_size / (map_size * stride)``. Values of pixels that start in the padding are zeroed.

Axis names: B batch, Q queries, C channels, H heads, L levels, P points, N memory pixels (all levels).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ['BoxDeformableAttention']


class BoxDeformableAttention(nn.Module):
    """Deformable cross-attention of queries to a multi-level memory, around reference boxes.

    ``forward(query (B, Q, C), ref_boxes (B, Q, 4), memory (B, N, C), valid (B, N), shapes, scales)``
    -> (B, Q, C). ``ref_boxes``: normalised (cx, cy, w, h) of ``img_shape``; ``memory``: the L level
    maps flattened row-major and concatenated, of sizes ``shapes`` [(h_l, w_l)]; ``valid``: False at
    pixels in the padding; ``scales`` (B, L, 2): (x, y) factors from image-normalised coordinates to
    the level map's, ``(w, h) / (w_l s_l, h_l s_l)``.
    """

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int, num_points: int = 4):
        super().__init__()
        if embed_dims % num_heads or min(num_heads, num_levels, num_points) < 1:
            raise ValueError(f'BoxDeformableAttention: need embed_dims divisible by num_heads and num_heads, '
                             f'num_levels, num_points >= 1, got {embed_dims}, {num_heads}, {num_levels}, {num_points}')
        self.num_heads, self.num_levels, self.num_points = num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        rays = torch.stack([angles.cos(), angles.sin()], -1)  # (H, 2)
        rays = rays / rays.abs().max(-1, keepdim=True).values  # on the unit square's border
        steps = torch.arange(1, self.num_points + 1, dtype=torch.float32)  # (P,)
        grid = rays[:, None, None, :] * steps[None, None, :, None]  # (H, 1, P, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.expand(-1, self.num_levels, -1, -1).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def sampling_locations(self, query: Tensor, ref_boxes: Tensor) -> Tensor:
        """-> (B, Q, H, L, P, 2) normalised (x, y) of the image: ``centre + offset / P * size / 2``."""
        B, Q, _ = query.shape
        offsets = self.sampling_offsets(query).view(B, Q, self.num_heads, self.num_levels, self.num_points, 2)
        centre = ref_boxes[:, :, None, None, None, :2].to(offsets.dtype)  # (B, Q, 1, 1, 1, 2)
        size = ref_boxes[:, :, None, None, None, 2:].to(offsets.dtype)
        return centre + offsets / self.num_points * size * 0.5  # (B, Q, H, L, P, 2)

    def forward(self, query: Tensor, ref_boxes: Tensor, memory: Tensor, valid: Tensor,
                shapes: Sequence[tuple[int, int]], scales: Tensor) -> Tensor:
        B, Q, C = query.shape
        H, L, P = self.num_heads, self.num_levels, self.num_points
        if len(shapes) != L or scales.shape != (B, L, 2) or memory.shape[1] != sum(h * w for h, w in shapes):
            raise ValueError(f'BoxDeformableAttention: built for {L} levels; got shapes {list(shapes)}, scales '
                             f'{tuple(scales.shape)} and memory {tuple(memory.shape)}')
        value = self.value_proj(memory).masked_fill(~valid[..., None], 0.0)  # (B, N, C)
        loc = self.sampling_locations(query, ref_boxes)  # (B, Q, H, L, P, 2)
        weights = self.attention_weights(query).view(B, Q, H, L * P).softmax(-1).view(B, Q, H, L, P)
        out = query.new_zeros(B * H, C // H, Q)
        start = 0
        for lvl, (h, w) in enumerate(shapes):
            v = value[:, start:start + h * w].transpose(1, 2).reshape(B * H, C // H, h, w)  # (B H, C / H, h, w)
            start += h * w
            grid = loc[:, :, :, lvl] * scales[:, None, None, None, lvl].to(loc.dtype) * 2 - 1  # (B, Q, H, P, 2)
            grid = grid.transpose(1, 2).reshape(B * H, Q, P, 2)  # (B H, Q, P, 2)
            sampled = F.grid_sample(v, grid.to(v.dtype), mode='bilinear', padding_mode='zeros',
                                    align_corners=False)  # (B H, C / H, Q, P)
            wl = weights[:, :, :, lvl].transpose(1, 2).reshape(B * H, 1, Q, P).to(sampled.dtype)  # (B H, 1, Q, P)
            out = out + (sampled * wl).sum(-1)  # (B H, C / H, Q)
        out = out.view(B, H, C // H, Q).permute(0, 3, 1, 2).reshape(B, Q, C)  # (B, Q, C)
        return self.output_proj(out)
