"""Mask-transformer decode head (Mask2Former-style) whose object queries can come from the spatial tokens.

Papers: SpatialFormer, supplementary Sec. 3 (ADE20K): the backbone's final 8 x 8 spatial tokens are
replicated to 256 candidates, the top 100 become the object queries of a 9-layer mask-transformer
decoder trained with a set-prediction loss (mask and class terms). Cheng et al., "Masked-attention
Mask Transformer for Universal Image Segmentation" (Mask2Former), CVPR 2022, for the decoder and loss.

Structure:
* Pixel decoder (:class:`LightPixelDecoder`): lateral 1 x 1 conv + GroupNorm per backbone level,
  bilinear top-down addition, 3 x 3 conv + GN + ReLU per level; the stride-4 output is projected
  (1 x 1) to the mask features, the coarser outputs (strides 32, 16, 8) form the multi-scale
  memory, coarse first.
* Queries, ``query_mode='spatial_tokens'``: the M = gh x gw final spatial tokens are projected to
  the decoder width and replicated R = num_candidates / M times; candidate ``r * M + m`` is
  replica r of token m, its content ``Linear(token_m) + replica_content[r]`` and its position
  ``sincos(cell centre of token m) + replica_pos[r]`` (learnable per-replica embeddings so that
  replicas differ). The shared class head (``decoder_norm`` -> ``class_embed``) scores every
  candidate by its highest non-void class probability and the top ``num_queries`` are gathered as
  object queries. The selection itself has no gradient; the class head and the spatial tokens are
  trained through the layer-0 predictions of the gathered queries, which enter the loss like every
  layer's (DINO-style two-stage selection). ``candidate_loss=True`` (off by default, as in the
  paper) also supervises the predictions of all N_c candidates, two-stage DETRs' encoder loss, so
  that the scores the selection ranks by are trained on the unselected candidates too.
  ``query_mode='learned'`` is the Mask2Former baseline: ``nn.Embedding(num_queries, C)`` content
  and position.
* Decoder (:class:`MaskedDecoderLayer`, post-norm as Mask2Former): masked cross-attention to one
  memory level (round-robin coarse -> fine), self-attention, FFN. Before the first layer and after
  each one, ``decoder_norm`` -> class logits (K + 1, the last is "no object") and a 3-layer MLP
  whose output is dotted with the mask features -> mask logits at stride 4; the next layer attends
  only where its query's mask (resized to that level) has sigmoid >= 0.5 (everywhere if nowhere).
* Loss per prediction set (layer 0 and every layer, keys ``d{i}.`` for all but the last): per-class
  GT masks from ``gt_seg`` (one mask per class present; ignore label excluded), Hungarian matching
  (scipy) with cost 2 * (-p_class) + 5 * mask BCE + 5 * dice on ``num_points`` uniform points;
  cross-entropy with class weight 0.1 for "no object" (x 2.0), sigmoid BCE (x 5.0) and dice (x 5.0)
  of the matched masks on ``num_points`` importance-sampled points (oversample 3, 75% most
  uncertain), averaged over the matched masks of all ranks.
* Semantic inference: ``einsum(softmax(cls)[..., :-1], sigmoid(mask))`` -> per-class scores.

What differs from Mask2Former:
* No multi-scale deformable-attention encoder in the pixel decoder (an FPN only, plain PyTorch,
  no custom ops, cheap on CPU).
* Ignored pixels (label 255, also the collate's padding) are excluded everywhere: they have no
  GT mask, the matcher drops points that fall on them and the mask losses weight them 0
  (Mask2Former counts them as background of every mask). GT labels at points are read from the
  nearest pixel of the label map (hard targets, no bilinear GT sampling).
* When ``num_points`` >= the number of mask-logit pixels (small inputs), matcher and loss use
  every pixel centre of the stride-4 grid instead of random points (exact and deterministic).

Axis names: B batch, C decoder channels, K classes (K + 1 with "no object"), M spatial tokens,
R replicas, N_c = R * M candidates, Q queries, G GT masks of an image, N matched masks of the
batch, P points, L memory tokens of a level, H x W a grid.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.dist import all_reduce
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from sf3d.models.layers import Attention, Mlp, grid_sincos_encoding

from .uper_head import IGNORE_INDEX, resize

__all__ = ['point_sample', 'labels_at', 'pixel_centre_points', 'uncertain_points', 'mask_bce_cost',
           'mask_dice_cost', 'sigmoid_bce_loss', 'dice_loss', 'MaskHungarianMatcher',
           'MaskedDecoderLayer', 'LightPixelDecoder', 'MaskTransformerHead']

QUERY_MODES = ('spatial_tokens', 'learned')


# ---------------------------------------------------------------------------------------------- points
def point_sample(x: Tensor, coords: Tensor) -> Tensor:
    """Bilinearly sample maps ``x`` (N, C, H, W) at ``coords`` (N, P, 2) = (x, y) in [0, 1] over the
    map (align_corners=False, detectron2's convention) -> (N, C, P)."""
    grid = (2.0 * coords - 1.0).unsqueeze(2)  # (N, P, 1, 2) in [-1, 1]
    return F.grid_sample(x, grid.to(x.dtype), mode='bilinear', align_corners=False).squeeze(3)  # (N, C, P)


def labels_at(gt_seg: Tensor, batch_idx: Tensor, coords: Tensor) -> Tensor:
    """Labels of the pixels under ``coords`` (N, P, 2) = (x, y) in [0, 1]: image ``batch_idx`` (N,)
    of ``gt_seg`` (B, H, W) -> (N, P) int64 (the pixel containing the point)."""
    H, W = gt_seg.shape[-2:]
    cols = (coords[..., 0] * W).long().clamp_(0, W - 1)  # (N, P)
    rows = (coords[..., 1] * H).long().clamp_(0, H - 1)  # (N, P)
    return gt_seg[batch_idx[:, None], rows, cols]  # (N, P)


def pixel_centre_points(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """Pixel centres of an H x W grid as (H * W, 2) = (x, y) in [0, 1], row-major."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    yy, xx = torch.meshgrid(ys, xs, indexing='ij')
    return torch.stack([xx, yy], dim=-1).flatten(0, 1)  # (H * W, 2)


@torch.no_grad()
def uncertain_points(mask_logits: Tensor, num_points: int, oversample_ratio: float,
                     importance_sample_ratio: float) -> Tensor:
    """Mask2Former's importance sampling: of ``oversample_ratio * num_points`` uniform points per map
    keep the ``importance_sample_ratio`` fraction whose logits are nearest 0, fill up with uniform
    points. mask_logits (N, 1, H, W) -> coords (N, num_points, 2) in [0, 1]."""
    N = mask_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(N, num_sampled, 2, device=mask_logits.device)  # (N, S, 2)
    uncertainty = -point_sample(mask_logits.float(), coords)[:, 0].abs()  # (N, S)
    num_uncertain = int(importance_sample_ratio * num_points)
    idx = uncertainty.topk(num_uncertain, dim=1).indices  # (N, num_uncertain)
    picked = coords.gather(1, idx[..., None].expand(-1, -1, 2))  # (N, num_uncertain, 2)
    rand = torch.rand(N, num_points - num_uncertain, 2, device=mask_logits.device)
    return torch.cat([picked, rand], dim=1)  # (N, num_points, 2)


# ---------------------------------------------------------------------------------------------- costs and losses
def mask_bce_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean sigmoid BCE of every prediction (Q, P) against every binary target (G, P) -> (Q, G)."""
    pos = F.softplus(-logits)  # BCE against 1
    neg = F.softplus(logits)  # BCE against 0
    return (pos @ targets.T + neg @ (1 - targets).T) / max(logits.shape[1], 1)


def mask_dice_cost(logits: Tensor, targets: Tensor, eps: float = 1.0) -> Tensor:
    """Dice cost ``1 - (2 p.t + eps) / (sum p + sum t + eps)`` of (Q, P) logits vs (G, P) targets -> (Q, G)."""
    p = logits.sigmoid()
    numerator = 2 * p @ targets.T  # (Q, G)
    denominator = p.sum(-1)[:, None] + targets.sum(-1)[None, :]  # (Q, G)
    return 1 - (numerator + eps) / (denominator + eps)


def sigmoid_bce_loss(logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """Per-mask sigmoid BCE averaged over points of weight 1: logits, targets, weights (N, P) -> (N,)."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction='none')  # (N, P)
    return (loss * weights).sum(-1) / weights.sum(-1).clamp(min=1)


def dice_loss(logits: Tensor, targets: Tensor, weights: Tensor, eps: float = 1.0) -> Tensor:
    """Per-mask dice loss (mmdet's naive dice, eps 1) over points of weight 1: (N, P) each -> (N,)."""
    p = logits.sigmoid() * weights
    t = targets * weights
    return 1 - (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)


class MaskHungarianMatcher:
    """One-to-one matching of Q mask predictions to G GT masks of one image by minimum total cost
    ``cls_weight * (-softmax prob of the GT class) + mask_weight * BCE + dice_weight * dice``
    (Mask2Former's), solved with ``scipy.optimize.linear_sum_assignment``."""

    def __init__(self, *, cls_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0):
        self.cls_weight = cls_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight

    @torch.no_grad()
    def cost(self, cls_logits: Tensor, mask_logits: Tensor, gt_labels: Tensor, gt_masks: Tensor) -> Tensor:
        """cls_logits (Q, K + 1), mask_logits (Q, P), gt_labels (G,), gt_masks (G, P) in {0, 1} -> (Q, G)."""
        prob = cls_logits.float().softmax(-1)  # (Q, K + 1)
        mask_logits, gt_masks = mask_logits.float(), gt_masks.float()
        return (-self.cls_weight * prob[:, gt_labels] + self.mask_weight * mask_bce_cost(mask_logits, gt_masks)
                + self.dice_weight * mask_dice_cost(mask_logits, gt_masks))

    def assign(self, cls_logits: Tensor, mask_logits: Tensor, gt_labels: Tensor,
               gt_masks: Tensor) -> tuple[Tensor, Tensor]:
        """As :meth:`cost` -> (pred_idx (n,), gt_idx (n,)) int64 on the input device, n = min(Q, G)."""
        cost = self.cost(cls_logits, mask_logits, gt_labels, gt_masks)
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        dev = cls_logits.device
        return torch.as_tensor(rows, dtype=torch.long, device=dev), torch.as_tensor(cols, dtype=torch.long, device=dev)


# ---------------------------------------------------------------------------------------------- blocks
class MaskedDecoderLayer(nn.Module):
    """Post-norm Mask2Former decoder layer: masked cross-attention, self-attention, FFN (ReLU).

    ``forward(query, query_pos, memory, memory_pos, attn_mask)``: query / query_pos (B, Q, C),
    memory (B, L, C), memory_pos (1 or B, L, C), attn_mask (B, 1, Q, L) bool or None -> (B, Q, C).
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int):
        super().__init__()
        self.cross_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = Mlp(dim, ffn_dim, act_layer=nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, query: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                attn_mask: Tensor | None) -> Tensor:
        query = self.norm1(query + self.cross_attn(query + query_pos, key=memory + memory_pos, value=memory,
                                                   attn_mask=attn_mask))
        qk = query + query_pos
        query = self.norm2(query + self.self_attn(qk, key=qk, value=query))
        return self.norm3(query + self.ffn(query))  # (B, Q, C)


def _conv_gn(in_channels: int, out_channels: int, kernel_size: int, relu: bool) -> nn.Sequential:
    """Conv (no bias) + GroupNorm [+ ReLU], detectron2's c2_xavier_fill init. 32 groups as Mask2Former
    (fewer for narrow tests), at least 2 channels each so that a 1 x 1 map still normalises."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    layers = [conv, nn.GroupNorm(math.gcd(32, out_channels // 2), out_channels)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class LightPixelDecoder(nn.Module):
    """FPN pixel decoder: ``forward(features)`` with maps (B, in_channels[i], H_i, W_i), finest first
    -> (mask features (B, mask_dim, H_0, W_0), memory [(B, dim, H_i, W_i) for i = last .. 1], coarse first)."""

    def __init__(self, in_channels: Sequence[int], dim: int, mask_dim: int):
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f'LightPixelDecoder: needs >= 2 feature levels, got in_channels={list(in_channels)}')
        self.lateral_convs = nn.ModuleList(_conv_gn(c, dim, 1, relu=False) for c in in_channels)
        self.output_convs = nn.ModuleList(_conv_gn(dim, dim, 3, relu=True) for _ in in_channels)
        self.mask_proj = nn.Conv2d(dim, mask_dim, 1)
        nn.init.kaiming_uniform_(self.mask_proj.weight, a=1)
        nn.init.zeros_(self.mask_proj.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        if len(features) != len(self.lateral_convs):
            raise ValueError(f'LightPixelDecoder: got {len(features)} feature maps, expected {len(self.lateral_convs)}')
        outs, y = [], None
        for i in range(len(features) - 1, -1, -1):  # coarse -> fine
            x = self.lateral_convs[i](features[i])  # (B, C, H_i, W_i)
            y = self.output_convs[i](x if y is None else x + resize(y, x.shape[-2:]))  # (B, C, H_i, W_i)
            outs.append(y)
        return self.mask_proj(outs[-1]), outs[:-1]


# ---------------------------------------------------------------------------------------------- head
class MaskTransformerHead(nn.Module):
    """Mask2Former-style semantic segmentation head with spatial-token or learned queries (module docstring).

    Args:
        in_channels: channels of the backbone levels (finest first; >= 2 levels, stride 4 first).
        num_classes: K.
        query_mode: 'spatial_tokens' (the backbone's final spatial tokens) or 'learned'.
        token_channels, spatial_grid: channels and (gh, gw) grid of the spatial tokens
            ('spatial_tokens' mode; :meth:`from_backbone` reads them from the backbone).
        num_queries: object queries Q (100).
        num_candidates: replicated spatial tokens N_c (256; a multiple of gh * gw, >= num_queries).
        embed_dims: decoder / pixel-decoder width C; mask_dims: width of the mask embeddings.
        num_heads, ffn_dims, num_layers: decoder attention heads, FFN width, layers (9).
        num_points, oversample_ratio, importance_sample_ratio: point sampling of matcher and loss.
        cls_weight, mask_weight, dice_weight: weights of the loss terms and of the matching costs.
        no_object_weight: cross-entropy class weight of "no object".
        candidate_loss: also supervise the predictions of all N_c candidates ('spatial_tokens'
            mode; Deformable DETR / DINO's two-stage encoder loss, ``enc.loss_*``), so that the
            scores the selection ranks by are trained on every candidate, not only the selected.
        ignore_index: label excluded from targets and losses.
    """

    def __init__(self, *, in_channels: Sequence[int], num_classes: int, query_mode: str = 'spatial_tokens',
                 token_channels: int | None = None, spatial_grid: Sequence[int] | None = None,
                 num_queries: int = 100, num_candidates: int = 256, embed_dims: int = 256, mask_dims: int = 256,
                 num_heads: int = 8, ffn_dims: int = 2048, num_layers: int = 9, num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75, cls_weight: float = 2.0,
                 mask_weight: float = 5.0, dice_weight: float = 5.0, no_object_weight: float = 0.1,
                 candidate_loss: bool = False,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        if query_mode not in QUERY_MODES:
            raise ValueError(f'MaskTransformerHead: query_mode must be one of {QUERY_MODES}, got {query_mode!r}')
        if num_classes < 1 or num_queries < 1 or num_layers < 1 or num_points < 1 or embed_dims % 4:
            raise ValueError(f'MaskTransformerHead: need num_classes, num_queries, num_layers, num_points >= 1 and '
                             f'embed_dims a multiple of 4; got {num_classes}, {num_queries}, {num_layers}, '
                             f'{num_points}, {embed_dims}')
        self.num_classes = num_classes
        self.query_mode = query_mode
        self.num_queries = num_queries
        self.embed_dims = embed_dims
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.loss_weights = dict(cls=cls_weight, mask=mask_weight, dice=dice_weight)
        self.ignore_index = ignore_index
        self.candidate_loss = candidate_loss
        self.matcher = MaskHungarianMatcher(cls_weight=cls_weight, mask_weight=mask_weight, dice_weight=dice_weight)
        self.register_buffer('ce_class_weight', torch.tensor([1.0] * num_classes + [no_object_weight]),
                             persistent=False)  # (K + 1,)

        self.pixel_decoder = LightPixelDecoder(in_channels, embed_dims, mask_dims)
        self.num_levels = len(in_channels) - 1
        self.level_embed = nn.Embedding(self.num_levels, embed_dims)
        self.layers = nn.ModuleList(MaskedDecoderLayer(embed_dims, num_heads, ffn_dims) for _ in range(num_layers))
        self.decoder_norm = nn.LayerNorm(embed_dims)
        self.class_embed = nn.Linear(embed_dims, num_classes + 1)
        self.mask_embed = nn.Sequential(nn.Linear(embed_dims, embed_dims), nn.ReLU(inplace=True),
                                        nn.Linear(embed_dims, embed_dims), nn.ReLU(inplace=True),
                                        nn.Linear(embed_dims, mask_dims))

        if query_mode == 'learned':
            if candidate_loss:
                raise ValueError("MaskTransformerHead: candidate_loss needs query_mode='spatial_tokens' (there are "
                                 "no candidates to select from with learned queries)")
            self.query_feat = nn.Embedding(num_queries, embed_dims)
            self.query_pos = nn.Embedding(num_queries, embed_dims)
            return
        if token_channels is None or spatial_grid is None or len(spatial_grid) != 2:
            raise ValueError("MaskTransformerHead: query_mode='spatial_tokens' needs token_channels and "
                             f'spatial_grid=(gh, gw); got {token_channels}, {spatial_grid}')
        self.spatial_grid = (int(spatial_grid[0]), int(spatial_grid[1]))
        self.num_tokens = self.spatial_grid[0] * self.spatial_grid[1]
        if num_candidates % self.num_tokens or not num_queries <= num_candidates:
            raise ValueError(f'MaskTransformerHead: num_candidates ({num_candidates}) must be a multiple of the '
                             f'{self.num_tokens} spatial tokens ({self.spatial_grid}) and >= num_queries '
                             f'({num_queries})')
        self.token_channels = int(token_channels)
        self.num_replicas = num_candidates // self.num_tokens
        self.token_proj = nn.Linear(self.token_channels, embed_dims)
        self.replica_content = nn.Embedding(self.num_replicas, embed_dims)
        self.replica_pos = nn.Embedding(self.num_replicas, embed_dims)
        self.register_buffer('token_pos', grid_sincos_encoding(*self.spatial_grid, embed_dims).clone(),
                             persistent=False)  # (M, C): the same code as the memory's, at the token's cell centre

    @classmethod
    def from_backbone(cls, backbone: nn.Module, **kwargs) -> MaskTransformerHead:
        """Read ``in_channels`` (``backbone.out_channels``) and, for spatial-token queries,
        ``token_channels`` / ``spatial_grid`` from the backbone."""
        kwargs.setdefault('in_channels', backbone.out_channels)
        if kwargs.get('query_mode', 'spatial_tokens') == 'spatial_tokens':
            if not hasattr(backbone, 'spatial_grid'):
                raise ValueError(f"MaskTransformerHead: query_mode='spatial_tokens' needs a backbone with spatial "
                                 f"tokens (SpatialFormer), got {type(backbone).__name__}; use query_mode='learned'")
            kwargs.setdefault('token_channels', backbone.embed_dims[-1])
            kwargs.setdefault('spatial_grid', backbone.spatial_grid)
        return cls(**kwargs)

    # ------------------------------------------------------------------ queries
    def candidate_queries(self, spatial_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Final spatial tokens (B, M, C_tok) -> candidate content and position (B, N_c, C) each;
        candidate ``r * M + m`` is replica r of token m."""
        expected = (self.num_tokens, self.token_channels)
        if spatial_tokens is None or spatial_tokens.dim() != 3 or tuple(spatial_tokens.shape[1:]) != expected:
            got = None if spatial_tokens is None else tuple(spatial_tokens.shape)
            raise ValueError(f'MaskTransformerHead: spatial_tokens must be (B, M, C_tok) = (B, {expected[0]}, '
                             f'{expected[1]}) for grid {self.spatial_grid}, got {got}')
        B, M, _ = spatial_tokens.shape
        R = self.num_replicas
        content = self.token_proj(spatial_tokens).repeat(1, R, 1)  # (B, R * M, C)
        content = content + self.replica_content.weight.repeat_interleave(M, dim=0)  # (B, N_c, C)
        pos = self.token_pos.to(content.dtype).repeat(R, 1) + self.replica_pos.weight.repeat_interleave(M, dim=0)
        return content, pos.unsqueeze(0).expand(B, -1, -1)  # (B, N_c, C) each

    def select_queries(self, spatial_tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Top ``num_queries`` candidates by max non-void class probability of the shared class head
        -> (query (B, Q, C), query_pos (B, Q, C), index (B, Q) into the N_c candidates, best first)."""
        return self._gather_top(*self.candidate_queries(spatial_tokens))

    def _gather_top(self, content: Tensor, pos: Tensor,
                    cls_logits: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Candidates (B, N_c, C) each -> the top ``num_queries`` (query, query_pos, index), best first;
        ``cls_logits`` (B, N_c, K + 1): the candidates' class logits when already computed."""
        with torch.no_grad():
            if cls_logits is None:
                cls_logits = self.class_embed(self.decoder_norm(content))  # (B, N_c, K + 1)
            scores = cls_logits.float().softmax(-1)[..., :-1].amax(-1)  # (B, N_c)
            index = scores.topk(self.num_queries, dim=1).indices  # (B, Q)
        gather = index[..., None].expand(-1, -1, content.shape[-1])  # (B, Q, C)
        return content.gather(1, gather), pos.gather(1, gather), index

    # ------------------------------------------------------------------ forward
    def _predict(self, query: Tensor, mask_features: Tensor,
                 attn_size: Sequence[int] | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """query (B, Q, C) -> class logits (B, Q, K + 1), mask logits (B, Q, H_0, W_0) and the next
        layer's attention mask (B, 1, Q, H_l * W_l) at ``attn_size`` (None: not needed)."""
        x = self.decoder_norm(query)
        cls_logits = self.class_embed(x)  # (B, Q, K + 1)
        masks = torch.einsum('bqc,bchw->bqhw', self.mask_embed(x), mask_features)  # (B, Q, H_0, W_0)
        if attn_size is None:
            return cls_logits, masks, None
        with torch.no_grad():
            allowed = resize(masks, attn_size).sigmoid().flatten(2) >= 0.5  # (B, Q, L)
            allowed = allowed | ~allowed.any(-1, keepdim=True)  # a query whose mask is empty attends everywhere
        return cls_logits, masks, allowed.unsqueeze(1)  # (B, 1, Q, L)

    def forward(self, features: Sequence[Tensor], spatial_tokens: Tensor | None = None,
                with_candidates: bool = False) -> dict:
        """features [(B, C_i, H_i, W_i)] finest (stride 4) first; spatial_tokens (B, M, C_tok)
        ('spatial_tokens' mode). Returns ``dict(cls_logits=[(B, Q, K + 1)] * (num_layers + 1),
        mask_logits=[(B, Q, H_0, W_0)] * (num_layers + 1), query_index=(B, Q) or None)``,
        layer 0 (the initial queries) first; with ``with_candidates`` in 'spatial_tokens' mode also
        ``candidate_cls`` (B, N_c, K + 1) and ``candidate_masks`` (B, N_c, H_0, W_0), the predictions
        of every candidate (the candidate loss)."""
        mask_features, memory = self.pixel_decoder(features)  # (B, C_m, H_0, W_0), [(B, C, H_l, W_l)]
        sizes = [tuple(m.shape[-2:]) for m in memory]
        mem, mem_pos = [], []
        for lvl, m in enumerate(memory):
            mem.append(m.flatten(2).transpose(1, 2) + self.level_embed.weight[lvl])  # (B, L, C)
            mem_pos.append(grid_sincos_encoding(*sizes[lvl], self.embed_dims, m.device, m.dtype).unsqueeze(0))
        extra = {}
        if self.query_mode == 'spatial_tokens':
            content, pos = self.candidate_queries(spatial_tokens)  # (B, N_c, C) each
            if with_candidates:  # the selection ranks by these class logits too
                extra['candidate_cls'], extra['candidate_masks'], _ = self._predict(content, mask_features, None)
            query, query_pos, index = self._gather_top(content, pos, extra.get('candidate_cls'))  # (B, Q, C) x2, (B, Q)
        else:
            # repeat, not expand: a no-grad view of a parameter breaks FlopCounterMode's module tracker
            B = mask_features.shape[0]
            query = self.query_feat.weight.unsqueeze(0).repeat(B, 1, 1)  # (B, Q, C)
            query_pos, index = self.query_pos.weight.unsqueeze(0).repeat(B, 1, 1), None
        cls_logits, masks, attn_mask = self._predict(query, mask_features, sizes[0])
        all_cls, all_masks = [cls_logits], [masks]
        for i, layer in enumerate(self.layers):
            lvl = i % self.num_levels
            query = layer(query, query_pos, mem[lvl], mem_pos[lvl], attn_mask)  # (B, Q, C)
            last = i == len(self.layers) - 1
            cls_logits, masks, attn_mask = self._predict(query, mask_features,
                                                         None if last else sizes[(i + 1) % self.num_levels])
            all_cls.append(cls_logits)
            all_masks.append(masks)
        return dict(cls_logits=all_cls, mask_logits=all_masks, query_index=index, **extra)

    def predict_scores(self, features: Sequence[Tensor], spatial_tokens: Tensor | None,
                       size: Sequence[int]) -> Tensor:
        """Per-class scores (B, K, *size): ``einsum(softmax(cls)[..., :-1], sigmoid(mask))`` of the
        last layer, mask logits bilinearly resized to ``size`` first."""
        out = self(features, spatial_tokens)
        probs = out['cls_logits'][-1].float().softmax(-1)[..., :-1]  # (B, Q, K)
        masks = resize(out['mask_logits'][-1].float(), size).sigmoid()  # (B, Q, H, W)
        return torch.einsum('bqk,bqhw->bkhw', probs, masks)

    # ------------------------------------------------------------------ loss
    def gt_labels(self, gt_seg: Tensor) -> list[Tensor]:
        """gt_seg (B, H, W) -> per image the classes present (G,) int64, ascending, ignore excluded."""
        labels = []
        for seg in gt_seg:
            present = seg.unique()
            labels.append(present[present != self.ignore_index])
        return labels

    def _points(self, height: int, width: int, mask_logits: Tensor | None, device: torch.device) -> Tensor:
        """Points over a mask-logit grid H x W: every pixel centre when ``num_points`` >= H * W;
        else uniform (matcher, ``mask_logits`` None) -> (1, P, 2), or importance sampled on
        ``mask_logits`` (N, 1, H, W) -> (N, P, 2)."""
        if self.num_points >= height * width:
            pts = pixel_centre_points(height, width, device).unsqueeze(0)  # (1, H * W, 2)
            return pts if mask_logits is None else pts.expand(mask_logits.shape[0], -1, -1)
        if mask_logits is None:
            return torch.rand(1, self.num_points, 2, device=device)
        return uncertain_points(mask_logits, self.num_points, self.oversample_ratio, self.importance_sample_ratio)

    def match(self, cls_logits: Tensor, mask_logits: Tensor, gt_seg: Tensor,
              gt_labels: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Hungarian matching of one prediction set. cls_logits (B, Q, K + 1), mask_logits
        (B, Q, h, w), gt_seg (B, H, W) -> (batch_idx, query_idx, label) (N,) int64 each."""
        B, Q = cls_logits.shape[:2]
        h, w = mask_logits.shape[-2:]
        dev = cls_logits.device
        out = [[], [], []]
        for b in range(B):
            labels = gt_labels[b]
            if labels.numel() == 0:
                continue
            batch_idx = torch.full((1,), b, dtype=torch.long, device=dev)
            coords = self._points(h, w, None, dev)  # (1, P, 2)
            point_labels = labels_at(gt_seg, batch_idx, coords)[0]  # (P,)
            valid = point_labels != self.ignore_index
            coords, point_labels = coords[:, valid], point_labels[valid]  # ignored points are dropped
            targets = (point_labels[None] == labels[:, None]).float()  # (G, P)
            preds = point_sample(mask_logits[b:b + 1].detach().float(), coords)[0]  # (Q, P)
            rows, cols = self.matcher.assign(cls_logits[b].detach(), preds, labels, targets)
            out[0].append(torch.full_like(rows, b))
            out[1].append(rows)
            out[2].append(labels[cols])
        if not out[0]:
            empty = torch.zeros(0, dtype=torch.long, device=dev)
            return empty, empty.clone(), empty.clone()
        return torch.cat(out[0]), torch.cat(out[1]), torch.cat(out[2])

    def loss_single(self, cls_logits: Tensor, mask_logits: Tensor, gt_seg: Tensor,
                    gt_labels: Sequence[Tensor]) -> dict[str, Tensor]:
        """Set-prediction loss of one prediction set -> ``dict(loss_cls, loss_mask, loss_dice)`` (weighted)."""
        batch_idx, query_idx, labels = self.match(cls_logits, mask_logits, gt_seg, gt_labels)
        cls_target = torch.full(cls_logits.shape[:2], self.num_classes, dtype=torch.long, device=cls_logits.device)
        cls_target[batch_idx, query_idx] = labels  # (B, Q); unmatched queries: "no object"
        loss_cls = F.cross_entropy(cls_logits.float().transpose(1, 2), cls_target, weight=self.ce_class_weight)

        num_masks = cls_logits.new_tensor(float(labels.numel()))
        all_reduce(num_masks, op='mean')  # average over ranks, as Mask2Former
        num_masks = num_masks.clamp(min=1.0)
        if labels.numel() == 0:
            loss_mask = loss_dice = mask_logits.sum() * 0.
        else:
            src = mask_logits[batch_idx, query_idx].float().unsqueeze(1)  # (N, 1, h, w)
            coords = self._points(*src.shape[-2:], src, src.device)  # (N, P, 2)
            point_labels = labels_at(gt_seg, batch_idx, coords)  # (N, P)
            targets = (point_labels == labels[:, None]).float()  # (N, P)
            weights = (point_labels != self.ignore_index).float()  # (N, P)
            preds = point_sample(src, coords)[:, 0]  # (N, P)
            loss_mask = sigmoid_bce_loss(preds, targets, weights).sum() / num_masks
            loss_dice = dice_loss(preds, targets, weights).sum() / num_masks
        w = self.loss_weights
        return dict(loss_cls=w['cls'] * loss_cls, loss_mask=w['mask'] * loss_mask, loss_dice=w['dice'] * loss_dice)

    def loss(self, features: Sequence[Tensor], spatial_tokens: Tensor | None, gt_seg: Tensor) -> dict[str, Tensor]:
        """gt_seg (B, H, W) int64 at the input size (labels 0..K-1, ``ignore_index``) -> losses of the
        last layer (``loss_cls``, ``loss_mask``, ``loss_dice``) and of the earlier prediction sets
        (``d{i}.loss_*``, i = 0 for the initial queries); with ``candidate_loss`` in 'spatial_tokens'
        mode also of all N_c candidates (``enc.loss_*``)."""
        out = self(features, spatial_tokens, with_candidates=self.candidate_loss)
        gt_labels = self.gt_labels(gt_seg)
        losses = {}
        n = len(out['cls_logits'])
        for i, (cls_logits, mask_logits) in enumerate(zip(out['cls_logits'], out['mask_logits'])):
            prefix = '' if i == n - 1 else f'd{i}.'
            for key, value in self.loss_single(cls_logits, mask_logits, gt_seg, gt_labels).items():
                losses[prefix + key] = value
        if self.candidate_loss:
            for key, value in self.loss_single(out['candidate_cls'], out['candidate_masks'], gt_seg,
                                               gt_labels).items():
                losses['enc.' + key] = value
        return losses
