"""SpatialFormer: a pyramid vision transformer whose image tokens exchange information with a
small grid of spatial tokens.

Paper: SpatialFormer (sizes T / S / B from its supplementary Table 1):

|              | T              | S              | B              |
|--------------|----------------|----------------|----------------|
| stage dims   | 64,128,256,320 | 64,128,320,448 | 64,128,320,512 |
| heads        | 2,4,8,10       | 2,4,10,14      | 2,4,10,16      |
| depths       | BCA2,BCA2,SA6,SA2 | BCA3,BCA4,SA6,SA3 | BCA3,BCA6,SA18,SA3 |

Structure: patch embedding (4 x 4 conv, stride 4), then patch merging (2 x 2 conv, stride
2) at each later stage: image features at strides 4, 8, 16, 32. A grid of spatial tokens
(default 8 x 8; any size, independent of the image size) starts as a fixed 2D sin-cos code
of each token's normalised image position plus a learnable embedding, and is carried
through every stage (projected at each merge). Stages 1-2 use Bilateral Cross-Attention
(BCA) blocks: the spatial tokens attend to the image tokens, then the image tokens attend
to the updated spatial tokens; the cost is linear in the number of image tokens. Stages 3-4
use global self-attention over [spatial tokens; image tokens]. The backbone returns the
multi-scale features and the final spatial tokens.

Choices made here where the paper is silent, and deviations:
* Position of image tokens (``image_pos``): the SAME normalised-coordinate sin-cos code as
  the spatial tokens' fixed part is added to image tokens wherever they act as query or
  key, and a Twins PEG (residual depthwise 3 x 3 conv) runs once per stage after its first
  block. See :class:`SpatialFormerStage` for why.
* MLP ratios (2, 2, 4, 8) for every size (the paper's table does not list them). With
  ratio 4 everywhere SpatialFormer-S has 17.5 M params / 4.53 GMACs at 224 here (the 64
  spatial tokens join the 196 and 49 image tokens of stages 3-4), below PVTv2-b2's
  25.4 M and already near its 4.0 GMACs. Ratio 8 in stage 4 (the fewest tokens, so the
  cheapest parameters) and ratio 2 in the BCA stages (the highest resolutions, the
  latency risk) give S 21.7 M / 4.70 GMACs at 224 and 32.2 GMACs at 448 x 800, within
  20% of PVTv2-b2 in both (tools/analysis/get_flops.py and benchmark.py measure it).
* The final spatial tokens get their own LayerNorm (``spatial_norm``).
* ``stage3_sr_ratio > 1`` (off by default) is a DEVIATION from the paper: PVT-style
  key/value spatial reduction of the image tokens in stage 3, for high-resolution
  configs where stage-3 global attention dominates the cost.
* Every attention goes through ``F.scaled_dot_product_attention`` (fused kernels).

File layout (top-down, like timm's ``pvt_v2.py``): blocks, stage, model, checkpoint
filter / loading, size variants. Axis names: B batch, C channels, H x W image-token grid,
N = H * W image tokens, M = gh * gw spatial tokens.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from timm.layers import DropPath, trunc_normal_
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from sf3d.models.layers import (Attention, Mlp, PosConv, SpatialReduction, conv2d_channels_last,
                               grid_sincos_encoding)
from sf3d.registry import MODELS
from sf3d.utils.checkpoint import load_state_dict_strict, read_checkpoint, unwrap_state_dict

__all__ = [
    'BilateralCrossAttentionBlock', 'SelfAttentionBlock', 'SpatialFormerStage', 'SpatialFormer',
    'checkpoint_filter_fn', 'load_pretrained', 'spatialformer_t', 'spatialformer_s', 'spatialformer_b',
]

IMAGE_POS_OPTIONS = ('peg', 'sine')


def _drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0. else nn.Identity()


class BilateralCrossAttentionBlock(nn.Module):
    """Pre-norm Bilateral Cross-Attention block; cost linear in the number of image tokens.

    (a) spatial tokens attend to the image tokens, then an FFN on the spatial tokens;
    (b) image tokens attend to the updated spatial tokens, then an FFN on the image tokens.
    ``forward(x, s, pos)``: image tokens ``x`` (B, N, C), spatial tokens ``s`` (B, M, C),
    ``pos`` (1, N, C) or None, added to the image tokens where they are keys (a) and
    queries (b). Returns the updated ``(x, s)``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, qkv_bias: bool = True,
                 drop_path: float = 0.):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.x_norm1 = nn.LayerNorm(dim)  # image tokens: keys/values in (a), queries in (b)
        self.s_norm1 = nn.LayerNorm(dim)
        self.s_attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.s_norm2 = nn.LayerNorm(dim)
        self.s_mlp = Mlp(dim, hidden)
        self.s_norm3 = nn.LayerNorm(dim)  # updated spatial tokens: keys/values in (b)
        self.x_attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.x_norm2 = nn.LayerNorm(dim)
        self.x_mlp = Mlp(dim, hidden)
        self.drop_path = _drop_path(drop_path)

    def forward(self, x: Tensor, s: Tensor, pos: Tensor | None) -> tuple[Tensor, Tensor]:
        x_n = self.x_norm1(x)  # (B, N, C); x does not change in (a), so (a) and (b) share this norm
        x_p = x_n if pos is None else x_n + pos  # (B, N, C)
        s = s + self.drop_path(self.s_attn(self.s_norm1(s), key=x_p, value=x_n))  # (B, M, C)
        s = s + self.drop_path(self.s_mlp(self.s_norm2(s)))
        s_n = self.s_norm3(s)
        x = x + self.drop_path(self.x_attn(x_p, key=s_n, value=s_n))  # (B, N, C)
        x = x + self.drop_path(self.x_mlp(self.x_norm2(x)))
        return x, s


class SelfAttentionBlock(nn.Module):
    """Pre-norm global self-attention block over the tokens [spatial; image] (B, M + N, C).

    ``forward(t, hw, num_spatial, pos, kv_pos)``: ``t`` (B, M + N, C) with the M spatial
    tokens first and the image tokens of an H x W = ``hw`` grid after them; ``pos``
    (1, M + N, C) or None is added to queries and keys (zeros on the spatial part).
    With ``sr_ratio > 1`` the IMAGE tokens among the keys/values are reduced by a PVT
    spatial reduction (the spatial tokens stay unreduced) and ``kv_pos`` (1, M + N / r^2, C)
    or None is added to the reduced keys. Returns (B, M + N, C).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, qkv_bias: bool = True,
                 drop_path: float = 0., sr_ratio: int = 1):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.sr = SpatialReduction(dim, sr_ratio) if sr_ratio > 1 else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = _drop_path(drop_path)

    def forward(self, t: Tensor, hw: tuple[int, int], num_spatial: int, pos: Tensor | None,
                kv_pos: Tensor | None) -> Tensor:
        t_n = self.norm1(t)  # (B, M + N, C)
        qk = t_n if pos is None else t_n + pos
        if self.sr is None:
            attn = self.attn(qk, key=qk, value=t_n)
        else:
            s_n, x_n = t_n.split([num_spatial, t_n.shape[1] - num_spatial], dim=1)  # (B, M, C), (B, N, C)
            kv = torch.cat([s_n, self.sr(x_n, hw)], dim=1)  # (B, M + N / r^2, C)
            attn = self.attn(qk, key=kv if kv_pos is None else kv + kv_pos, value=kv)
        t = t + self.drop_path(attn)
        return t + self.drop_path(self.mlp(self.norm2(t)))


class SpatialFormerStage(nn.Module):
    """One pyramid stage: downsample, spatial-token projection, blocks, PEG, output norm.

    ``forward(x, s)``: image features ``x`` (B, C_in, H_in, W_in) (the images for stage 0),
    spatial tokens ``s`` (B, M, C_in). Returns features (B, C, H, W) after the output
    LayerNorm and spatial tokens (B, M, C) (not normalised; the next stage's projection
    and the model's ``spatial_norm`` start with a LayerNorm).

    Why image tokens get position this way (``image_pos``):
    * 'sine': the image tokens' query/key inputs get the same normalised-coordinate
      sin-cos code that forms the spatial tokens' fixed initial part, so in cross-attention
      spatial-token queries and image-token keys share one positional basis from
      initialisation, at any resolution and for any spatial grid; it costs one add per block.
    * 'peg': in BCA stages image tokens never attend to each other, so a PEG (Twins'
      residual 3 x 3 depthwise conv) after the first block is the only local mixing they
      get; it also gives zero-padding-based absolute position. One depthwise conv per
      stage instead of one per block (PVTv2's conv FFN) keeps the stride-4/8 stages cheap.
    Measured cost for SpatialFormer-S (1 CPU thread, fp32): the sine adds take ~0.4 ms at
    224 x 224 and ~2 ms at 448 x 800, the four PEGs ~0.7 ms and 1-9 ms; whole-model CPU
    time with both vs neither: 154 vs 141 ms at 224, 1015 vs 989 ms at 448 x 800 (run to
    run noise ~3%; ``benchmark.py --threads 1 --clock cpu --models "sf_s:image_pos=()"``).
    """

    def __init__(
            self,
            in_dim: int,
            dim: int,
            depth: int,
            num_heads: int,
            mlp_ratio: float,
            *,
            patch_size: int,
            block_type: str,
            drop_path: Sequence[float],
            qkv_bias: bool = True,
            image_pos: Sequence[str] = IMAGE_POS_OPTIONS,
            sr_ratio: int = 1,
            project_spatial: bool = True,
            with_cp: bool = False,
    ):
        super().__init__()
        if block_type not in ('bca', 'sa'):
            raise ValueError(f"SpatialFormerStage: block_type must be 'bca' or 'sa', got {block_type!r}")
        self.block_type = block_type
        self.with_cp = with_cp
        self.use_sine = 'sine' in image_pos
        self.downsample = nn.Conv2d(in_dim, dim, kernel_size=patch_size, stride=patch_size)
        self.downsample_norm = nn.LayerNorm(dim)
        self.spatial_proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, dim)) if project_spatial else None
        self.peg = PosConv(dim) if 'peg' in image_pos else None
        if block_type == 'bca':
            self.blocks = nn.ModuleList([
                BilateralCrossAttentionBlock(dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=drop_path[i])
                for i in range(depth)])
        else:
            self.blocks = nn.ModuleList([
                SelfAttentionBlock(dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=drop_path[i],
                                   sr_ratio=sr_ratio)
                for i in range(depth)])
        self.sr_ratio = sr_ratio
        self.norm = nn.LayerNorm(dim)

    def _run(self, block: nn.Module, *args):
        if self.with_cp and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _sine(self, hw: tuple[int, int], ref: Tensor) -> Tensor:
        return grid_sincos_encoding(hw[0], hw[1], ref.shape[-1], ref.device, ref.dtype).unsqueeze(0)  # (1, N, C)

    def forward(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        x = conv2d_channels_last(self.downsample, x)  # (B, C, H, W), channels-last
        B, C, H, W = x.shape
        hw = (H, W)
        x = self.downsample_norm(x.flatten(2).transpose(1, 2))  # (B, N, C), a view of the channels-last map
        if self.spatial_proj is not None:
            s = self.spatial_proj(s)  # (B, M, C)
        if self.block_type == 'bca':
            pos = self._sine(hw, x) if self.use_sine else None  # (1, N, C)
            for i, block in enumerate(self.blocks):
                x, s = self._run(block, x, s, pos)
                if i == 0 and self.peg is not None:
                    x = self.peg(x, hw)
        else:
            x, s = self._forward_self_attention(x, s, hw)
        x = self.norm(x).transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W), a channels-last view
        return x, s

    def _forward_self_attention(self, x: Tensor, s: Tensor, hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        M = s.shape[1]
        pos = kv_pos = None
        if self.use_sine:
            zeros = x.new_zeros(1, M, x.shape[-1])  # spatial tokens carry their position in their content
            pos = torch.cat([zeros, self._sine(hw, x)], dim=1)  # (1, M + N, C)
            if self.sr_ratio > 1:
                kv_pos = torch.cat([zeros, self._sine((hw[0] // self.sr_ratio, hw[1] // self.sr_ratio), x)],
                                   dim=1)  # (1, M + N / r^2, C)
        t = torch.cat([s, x], dim=1)  # (B, M + N, C)
        for i, block in enumerate(self.blocks):
            t = self._run(block, t, hw, M, pos, kv_pos)
            if i == 0 and self.peg is not None:
                s, x = t.split([M, t.shape[1] - M], dim=1)  # (B, M, C), (B, N, C)
                t = torch.cat([s, self.peg(x, hw)], dim=1)  # (B, M + N, C)
        s, x = t.split([M, t.shape[1] - M], dim=1)  # (B, M, C), (B, N, C)
        return x, s


@MODELS.register_module()
class SpatialFormer(BaseModule):
    """SpatialFormer backbone (sizes 't', 's', 'b' or a custom ``arch`` dict).

    Args:
        arch: 't', 's', 'b', or a dict with keys ``dims``, ``heads``, ``depths`` (4 each)
            and optionally ``mlp_ratios``, e.g. ``dict(dims=(16, 32, 64, 64),
            heads=(1, 2, 4, 4), depths=(1, 1, 1, 1))``. Stages 1-2 are BCA, 3-4 SA.
        in_chans: image channels.
        spatial_grid: (gh, gw) grid of spatial tokens; M = gh * gw.
        out_indices: stages whose features are returned.
        mlp_ratios: per-stage FFN ratios; None takes the arch's (default (2, 2, 4, 8)).
        drop_path_rate: stochastic depth, increasing linearly over all blocks to this rate.
        qkv_bias: bias in the query/key/value projections.
        image_pos: any of 'peg', 'sine' (see :class:`SpatialFormerStage`).
        stage3_sr_ratio: > 1 reduces the stage-3 image keys/values (deviation from the
            paper, off by default; images must then be multiples of 16 * ratio).
        with_cp: gradient checkpointing per block.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads weights in
            :meth:`init_weights` with a strict key check (:func:`load_pretrained`).

    ``forward(images, spatial_tokens=None)``: ``images`` (B, in_chans, H, W) with H and W
    multiples of 32 (pad them; other sizes are refused with a ValueError);
    ``spatial_tokens`` (B, M, dims[0]) replaces the default initial spatial tokens (e.g.
    camera-conditioned ones). Returns ``dict(features=[(B, out_channels[i], H / s_i,
    W / s_i) for each out index], spatial_tokens=(B, M, dims[3]))``; the feature maps are
    channels-last views of the token tensors (no copy; ``.contiguous()`` gives NCHW memory).
    """

    arch_zoo = {
        't': dict(dims=(64, 128, 256, 320), heads=(2, 4, 8, 10), depths=(2, 2, 6, 2), mlp_ratios=(2, 2, 4, 8)),
        's': dict(dims=(64, 128, 320, 448), heads=(2, 4, 10, 14), depths=(3, 4, 6, 3), mlp_ratios=(2, 2, 4, 8)),
        'b': dict(dims=(64, 128, 320, 512), heads=(2, 4, 10, 16), depths=(3, 6, 18, 3), mlp_ratios=(2, 2, 4, 8)),
    }
    block_types = ('bca', 'bca', 'sa', 'sa')
    strides = (4, 8, 16, 32)

    def __init__(
            self,
            *,
            arch: str | Mapping = 's',
            in_chans: int = 3,
            spatial_grid: Sequence[int] = (8, 8),
            out_indices: Sequence[int] = (0, 1, 2, 3),
            mlp_ratios: Sequence[float] | None = None,
            drop_path_rate: float = 0.1,
            qkv_bias: bool = True,
            image_pos: Sequence[str] = IMAGE_POS_OPTIONS,
            stage3_sr_ratio: int = 1,
            with_cp: bool = False,
            init_cfg: dict | None = None,
    ):
        super().__init__(init_cfg=init_cfg)
        cfg = self._resolve_arch(arch, mlp_ratios)
        self.embed_dims = tuple(cfg['dims'])
        self.spatial_grid = self._check_grid(spatial_grid)
        self.num_spatial_tokens = self.spatial_grid[0] * self.spatial_grid[1]
        self.out_indices = tuple(out_indices)
        if not self.out_indices or any(i not in range(4) for i in self.out_indices):
            raise ValueError(f'SpatialFormer: out_indices must be a non-empty subset of 0..3, got {out_indices}')
        unknown = [p for p in image_pos if p not in IMAGE_POS_OPTIONS]
        if unknown:
            raise ValueError(f'SpatialFormer: unknown image_pos {unknown}; choose from {IMAGE_POS_OPTIONS}')
        if int(stage3_sr_ratio) != stage3_sr_ratio or stage3_sr_ratio < 1:
            raise ValueError(f'SpatialFormer: stage3_sr_ratio must be a positive integer, got {stage3_sr_ratio}')
        self.in_chans = in_chans
        self.stage3_sr_ratio = int(stage3_sr_ratio)
        self.size_multiple = math.lcm(32, 16 * self.stage3_sr_ratio)
        self.out_channels = [self.embed_dims[i] for i in self.out_indices]
        self.out_strides = [self.strides[i] for i in self.out_indices]

        # Spatial tokens: fixed sin-cos code of the cell centres + a learnable embedding.
        gh, gw = self.spatial_grid
        self.register_buffer('spatial_pos', grid_sincos_encoding(gh, gw, self.embed_dims[0]).clone().unsqueeze(0),
                             persistent=False)  # (1, M, C0)
        self.spatial_embed = nn.Parameter(torch.zeros(1, self.num_spatial_tokens, self.embed_dims[0]))  # (1, M, C0)

        dpr = torch.linspace(0, drop_path_rate, sum(cfg['depths'])).tolist()
        stages, in_dim, start = [], in_chans, 0
        for i in range(4):
            depth = cfg['depths'][i]
            stages.append(SpatialFormerStage(
                in_dim, self.embed_dims[i], depth, cfg['heads'][i], cfg['mlp_ratios'][i],
                patch_size=4 if i == 0 else 2,
                block_type=self.block_types[i],
                drop_path=dpr[start:start + depth],
                qkv_bias=qkv_bias,
                image_pos=tuple(image_pos),
                sr_ratio=self.stage3_sr_ratio if i == 2 else 1,
                project_spatial=i > 0,
                with_cp=with_cp,
            ))
            in_dim, start = self.embed_dims[i], start + depth
        self.stages = nn.ModuleList(stages)
        self.spatial_norm = nn.LayerNorm(self.embed_dims[-1])

        self.apply(self._init_module)
        trunc_normal_(self.spatial_embed, std=.02)

    @classmethod
    def _resolve_arch(cls, arch: str | Mapping, mlp_ratios: Sequence[float] | None) -> dict:
        if isinstance(arch, str):
            if arch.lower() not in cls.arch_zoo:
                raise ValueError(f'SpatialFormer: unknown arch {arch!r}; valid: {sorted(cls.arch_zoo)} '
                                 'or a dict(dims=..., heads=..., depths=...)')
            cfg = dict(cls.arch_zoo[arch.lower()])
        else:
            missing = {'dims', 'heads', 'depths'} - set(arch)
            extra = set(arch) - {'dims', 'heads', 'depths', 'mlp_ratios'}
            if missing or extra:
                raise ValueError(f'SpatialFormer: arch dict needs keys dims, heads, depths (+ optional mlp_ratios); '
                                 f'missing {sorted(missing)}, unknown {sorted(extra)}')
            cfg = dict(mlp_ratios=(2, 2, 4, 8), **arch)
        if mlp_ratios is not None:
            cfg['mlp_ratios'] = tuple(mlp_ratios)
        for key in ('dims', 'heads', 'depths', 'mlp_ratios'):
            if len(cfg[key]) != 4:
                raise ValueError(f'SpatialFormer: {key} needs 4 values (one per stage), got {cfg[key]}')
        for dim, heads in zip(cfg['dims'], cfg['heads']):
            if dim % heads or dim % 4:
                raise ValueError(f'SpatialFormer: each dim must be divisible by 4 and by its heads; '
                                 f'got dims {cfg["dims"]}, heads {cfg["heads"]}')
        return cfg

    @staticmethod
    def _check_grid(grid: Sequence[int]) -> tuple[int, int]:
        if len(grid) != 2 or any(int(g) != g or g < 1 for g in grid):
            raise ValueError(f'SpatialFormer: spatial_grid must be two positive ints (gh, gw), got {grid}')
        return int(grid[0]), int(grid[1])

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def init_weights(self) -> None:
        """Load ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` strictly; otherwise mmengine's default."""
        if self.init_cfg is not None and self.init_cfg.get('type') == 'Pretrained':
            load_pretrained(self, self.init_cfg['checkpoint'], drop_head=True)
            self._is_init = True
        else:
            super().init_weights()

    def no_weight_decay(self) -> set[str]:
        return {'spatial_embed'}

    def _check_images(self, images: Tensor) -> None:
        shape = tuple(images.shape)
        if images.dim() != 4 or shape[1] != self.in_chans:
            raise ValueError(f'SpatialFormer expects images (B, {self.in_chans}, H, W), got shape {shape}')
        H, W = shape[-2:]
        m = self.size_multiple
        if H % m or W % m:
            raise ValueError(f'SpatialFormer needs H and W divisible by {m}, got {H}x{W} (input shape {shape}); '
                             f'pad the image to a multiple of {m}, e.g. {math.ceil(H / m) * m}x{math.ceil(W / m) * m}')

    def initial_spatial_tokens(self, batch_size: int) -> Tensor:
        """Default initial spatial tokens (batch_size, M, dims[0]): fixed sin-cos code + learnable embedding."""
        return (self.spatial_pos + self.spatial_embed).expand(batch_size, -1, -1)

    def forward(self, images: Tensor, spatial_tokens: Tensor | None = None) -> dict[str, Tensor | list[Tensor]]:
        self._check_images(images)
        B = images.shape[0]
        if spatial_tokens is None:
            s = self.initial_spatial_tokens(B)  # (B, M, C0)
        else:
            expected = (B, self.num_spatial_tokens, self.embed_dims[0])
            if tuple(spatial_tokens.shape) != expected:
                raise ValueError(f'SpatialFormer: spatial_tokens must have shape (B, M, C0) = {expected}, '
                                 f'got {tuple(spatial_tokens.shape)}')
            s = spatial_tokens
        x = images
        features = []
        for i, stage in enumerate(self.stages):
            x, s = stage(x, s)  # (B, C_i, H / s_i, W / s_i), (B, M, C_i)
            if i in self.out_indices:
                features.append(x)
        return dict(features=features, spatial_tokens=self.spatial_norm(s))


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: SpatialFormer, drop_head: bool = True,
                         pretrained_grid: Sequence[int] | None = None) -> dict[str, Tensor]:
    """Turn a saved state dict into one that ``model`` loads.

    Unwraps ``{'state_dict': ...}`` / ``{'model': ...}``, strips ``module.`` (DDP) and
    ``backbone.`` prefixes (mmengine classifier / detector checkpoints), drops
    ``data_preprocessor.`` buffers, and with ``drop_head`` the other non-backbone keys
    (``head.``, ``neck.`` ...) of such checkpoints. A ``spatial_embed`` of another grid
    is resized by bicubic interpolation (align_corners=False) over the (gh, gw) grid; the
    saved grid is ``pretrained_grid`` or, if None, inferred as square.
    """
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith('backbone.') for k in state_dict):
        out = {}
        for k, v in state_dict.items():
            if k.startswith('backbone.'):
                out[k[len('backbone.'):]] = v
            elif not (drop_head or k.startswith('data_preprocessor.')):
                out[k] = v  # kept so that the strict key check reports it
        state_dict = out
    elif drop_head:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith('head.')}

    embed = state_dict.get('spatial_embed')
    if embed is not None and embed.shape != model.spatial_embed.shape:
        state_dict = dict(state_dict)
        state_dict['spatial_embed'] = resize_spatial_embed(embed, model.spatial_grid, pretrained_grid)
    return state_dict


def resize_spatial_embed(embed: Tensor, new_grid: Sequence[int], old_grid: Sequence[int] | None = None) -> Tensor:
    """Bicubically resize a learnable spatial embedding (1, gh * gw, C) to ``new_grid`` -> (1, gh' * gw', C)."""
    _, M, C = embed.shape
    if old_grid is None:
        side = math.isqrt(M)
        if side * side != M:
            raise ValueError(f'spatial_embed has {M} tokens, not a square grid; pass pretrained_grid=(gh, gw)')
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != M:
        raise ValueError(f'pretrained_grid {tuple(old_grid)} does not match spatial_embed with {M} tokens')
    grid = embed.float().reshape(1, old_grid[0], old_grid[1], C).permute(0, 3, 1, 2)  # (1, C, gh, gw)
    grid = F.interpolate(grid, size=tuple(new_grid), mode='bicubic', align_corners=False)  # (1, C, gh', gw')
    return grid.flatten(2).transpose(1, 2).to(embed.dtype)  # (1, gh' * gw', C)


def load_pretrained(model: SpatialFormer, checkpoint: str | os.PathLike | Mapping[str, Tensor],
                    drop_head: bool = True, pretrained_grid: Sequence[int] | None = None) -> None:
    """Load a checkpoint file or state dict into ``model`` with a strict key and shape check.

    Raises FileNotFoundError for a missing file, KeyError naming missing / unexpected keys,
    ValueError naming keys whose shapes differ.
    """
    checkpoint, source = read_checkpoint(
        checkpoint, name='SpatialFormer', weights_only=False,
        hint='Pretrain one with tools/train.py and an ImageNet config under configs/imagenet/, or point '
             'init_cfg=dict(type="Pretrained", checkpoint=...) at an existing file (use init_cfg=None to start '
             'from random weights).')
    state_dict = checkpoint_filter_fn(checkpoint, model, drop_head=drop_head, pretrained_grid=pretrained_grid)
    load_state_dict_strict(model, state_dict, source=source, name='SpatialFormer')


def spatialformer_t(**kwargs) -> SpatialFormer:
    """SpatialFormer-T: dims 64/128/256/320, depths BCA2 BCA2 SA6 SA2."""
    return SpatialFormer(arch='t', **kwargs)


def spatialformer_s(**kwargs) -> SpatialFormer:
    """SpatialFormer-S: dims 64/128/320/448, depths BCA3 BCA4 SA6 SA3."""
    return SpatialFormer(arch='s', **kwargs)


def spatialformer_b(**kwargs) -> SpatialFormer:
    """SpatialFormer-B: dims 64/128/320/512, depths BCA3 BCA6 SA18 SA3."""
    return SpatialFormer(arch='b', **kwargs)
