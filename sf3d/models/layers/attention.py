"""Multi-head attention through ``F.scaled_dot_product_attention`` and PVT-style key/value reduction.

Axis names used throughout: B batch, N query tokens, L key/value tokens, C channels,
h heads, d = C / h channels per head, H x W a token grid.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .pos_encoding import conv2d_channels_last

__all__ = ['Attention', 'SpatialReduction']


class Attention(nn.Module):
    """Multi-head (self- or cross-) attention; every product goes through SDPA.

    ``forward(query, key=None, value=None, attn_mask=None)``: ``query`` (B, N, C); ``key`` and
    ``value`` (B, L, C) default to ``query`` (self-attention) and to ``key`` respectively;
    ``attn_mask`` (bool, broadcastable to (B, heads, N, L)) is True where a query may attend to a
    key (e.g. ``key_valid[:, None, None, :]`` for padded keys; every query needs one True key).
    Position encodings are added by the caller to the tensors passed as query / key
    (values carry content only, as in DETR), so the caller may pass
    ``key=x + pos, value=x``. Returns (B, N, C).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            *,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'Attention: dim {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _split_heads(self, x: Tensor) -> Tensor:
        B, L, C = x.shape
        return x.view(B, L, self.num_heads, C // self.num_heads).transpose(1, 2)  # (B, h, L, d)

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                attn_mask: Tensor | None = None) -> Tensor:
        key = query if key is None else key
        value = key if value is None else value
        B, N, C = query.shape
        q = self._split_heads(self.q(query))  # (B, h, N, d)
        k = self._split_heads(self.k(key))  # (B, h, L, d)
        v = self._split_heads(self.v(value))  # (B, h, L, d)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.attn_drop if self.training else 0.)
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj_drop(self.proj(x))


class SpatialReduction(nn.Module):
    """PVT key/value spatial reduction: a conv with kernel = stride = ``ratio`` then LayerNorm.

    ``forward(x, hw)``: ``x`` (B, H*W, C) tokens of an H x W grid -> (B, H/r * W/r, C).
    H and W must be divisible by the ratio (the caller checks the image size).
    """

    def __init__(self, dim: int, ratio: int):
        super().__init__()
        self.ratio = ratio
        self.conv = nn.Conv2d(dim, dim, kernel_size=ratio, stride=ratio)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        B, N, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, hw[0], hw[1])  # (B, C, H, W), a channels-last view
        x = conv2d_channels_last(self.conv, x).flatten(2).transpose(1, 2)  # (B, H/r * W/r, C)
        return self.norm(x)

