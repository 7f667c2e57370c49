"""Position encodings for token grids of any size.

* :func:`sincos_2d` / :func:`grid_sincos_encoding`: a fixed 2D sin-cos encoding of
  NORMALISED (y, x) coordinates in [0, 1]. Because the coordinates are normalised, the
  same position gets the same code on every grid (8 x 8 spatial tokens, 56 x 56 image
  tokens, a 10 x 15 grid after a config change), which lets tokens of different grids
  share one positional basis.
* :class:`PosConv`: Twins' positional encoding generator (PEG), a residual 3 x 3
  depthwise convolution over the token grid.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ['sincos_2d', 'grid_sincos_encoding', 'PosConv', 'conv2d_channels_last']

MIN_CYCLES = 0.5  # lowest frequency: half a period over the image, so every position has a unique code
MAX_CYCLES = 64.0  # highest frequency: a period of ~3.5 tokens on a 224-token axis


def sincos_2d(yx: Tensor, dim: int) -> Tensor:
    """Encode normalised coordinates ``yx`` (..., 2) = (y, x) in [0, 1] as (..., dim).

    Channels are ``[sin(y w), cos(y w), sin(x w), cos(x w)]`` with dim / 4 angular
    frequencies ``w = 2 pi c``, ``c`` spaced geometrically from ``MIN_CYCLES`` to
    ``MAX_CYCLES`` cycles per image. ``dim`` must be a multiple of 4.
    """
    if dim % 4 or dim <= 0:
        raise ValueError(f'sincos_2d: dim must be a positive multiple of 4, got {dim}')
    if yx.shape[-1] != 2:
        raise ValueError(f'sincos_2d: expected coordinates (..., 2) as (y, x), got shape {tuple(yx.shape)}')
    num_freqs = dim // 4
    exponent = torch.arange(num_freqs, dtype=torch.float64, device=yx.device) / max(num_freqs - 1, 1)
    omega = 2 * math.pi * MIN_CYCLES * (MAX_CYCLES / MIN_CYCLES) ** exponent  # (F,)
    angles = yx.double().unsqueeze(-1) * omega  # (..., 2, F)
    y, x = angles.unbind(-2)  # (..., F) each
    return torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=-1).to(yx.dtype)  # (..., dim)


@functools.lru_cache(maxsize=64)
def grid_sincos_encoding(height: int, width: int, dim: int, device: torch.device | None = None,
                         dtype: torch.dtype | None = None) -> Tensor:
    """:func:`sincos_2d` of the cell centres ``((i + 0.5) / H, (j + 0.5) / W)`` of an H x W grid.

    Returns (H * W, dim) in row-major order (the order of ``x.flatten(2)`` for (B, C, H, W)).
    Cached per (H, W, dim, device, dtype); the cached tensor is a constant, never modify it.
    """
    # A normal (non-inference) tensor even when first called under torch.inference_mode,
    # so the cached value can later enter autograd graphs.
    with torch.inference_mode(False), torch.no_grad():
        ys = (torch.arange(height, dtype=torch.float64, device=device) + 0.5) / height
        xs = (torch.arange(width, dtype=torch.float64, device=device) + 0.5) / width
        yx = torch.stack(torch.meshgrid(ys, xs, indexing='ij'), dim=-1).flatten(0, 1)  # (H*W, 2)
        return sincos_2d(yx, dim).to(dtype or torch.get_default_dtype())  # (H*W, dim)


def conv2d_channels_last(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Apply ``conv`` with input and weight in channels-last memory format.

    Token tensors (B, H*W, C) viewed as (B, C, H, W) already are channels-last, and the
    output's ``flatten(2).transpose(1, 2)`` is then a (B, H*W, C) view with no copy. On
    CPU (oneDNN) this is also 5-20x faster than NCHW for the depthwise and patch convs
    here. The weight conversion is a no-op when the weight already is channels-last.
    """
    cl = torch.channels_last
    return F.conv2d(x.contiguous(memory_format=cl), conv.weight.to(memory_format=cl), conv.bias,
                    conv.stride, conv.padding, conv.dilation, conv.groups)  # (B, C_out, H', W'), channels-last


class PosConv(nn.Module):
    """Twins' positional encoding generator: ``x + dwconv3x3(x)`` on tokens (B, H*W, C) of an H x W grid."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        B, N, C = x.shape
        grid = x.transpose(1, 2).reshape(B, C, hw[0], hw[1])  # (B, C, H, W), a channels-last view
        return x + conv2d_channels_last(self.proj, grid).flatten(2).transpose(1, 2)  # (B, N, C)
