"""DETR-style 2D detection head: multi-scale memory, decoder with iterative box refinement,
Hungarian matching, focal + L1 + GIoU set-prediction losses, top-k decoding.

DETR: End-to-End Object Detection with Transformers (Carion et al., ECCV 2020); the box
refinement, focal classification and matching costs follow Deformable DETR (Zhu et al., ICLR
2021) and DINO (Zhang et al., ICLR 2023): cost = 2 focal class + 5 L1 (cxcywh) + 2 GIoU, the same
weights on the losses, a loss at every decoder layer. As in DAB-DETR (Liu et al., ICLR 2022) every
query carries a reference BOX; its positional query is an MLP of the box's sine code, recomputed
at each layer from the refined box, and each layer predicts a delta in inverse-sigmoid space.

Cross-attention is Deformable DETR's multi-scale deformable attention around the reference box
(:class:`sf3d.models.layers.BoxDeformableAttention`, plain PyTorch ``grid_sample``: no compiled
ops). An earlier design with global attention over every FPN pixel never got past 0.017 bbox mAP
in the tiny-set trials of ``docs/tiny_2d.md``. Training may add DN-DETR's denoising queries
(``dn_groups``). The memory is the flattened FPN levels; the optional encoder
(``num_encoder_layers=0`` by default: the backbone already is a transformer) is global
self-attention over it, with a fixed sin-cos position (the SAME normalised-coordinate basis the
SpatialFormer spatial tokens use, :func:`sf3d.models.layers.sincos_2d`) plus a learned level
embedding and the padded pixels masked.

Coordinates: boxes are (cx, cy, w, h) normalised by each image's ``img_shape`` (the resized image
before padding; DETR's convention, so the loss does not depend on how much a batch pads); the
sampling maps them onto each padded level map, and the memory pixels that start in the padding
hold zero values.

Axis names: B batch, Q queries, C channels, L FPN levels, N memory tokens (all levels), D decoder
layers, K classes, G ground-truth boxes.

Blocks: ``DETR2DEncoderLayer``, ``DETR2DDecoderLayer``; matcher:
``HungarianMatcher2D``; head: ``DETR2DHead``.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from sf3d.models.heads.assigner import focal_cost
from sf3d.models.heads.box_coder import inverse_sigmoid
from sf3d.models.layers import Attention, BoxDeformableAttention, Mlp, avg_num_targets, sincos_2d

__all__ = ['HungarianMatcher2D', 'DETR2DEncoderLayer', 'DETR2DDecoderLayer', 'DETR2DHead',
           'box_sine_embed', 'memory_positions', 'memory_valid']


def box_sine_embed(boxes: Tensor, dim: int) -> Tensor:
    """(..., 4) normalised (cx, cy, w, h) -> (..., 2 * dim): sin-cos codes of the centre (y, x) and of
    the size (h, w), each :func:`sincos_2d` with ``dim`` channels."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.cat([sincos_2d(torch.stack([cy, cx], -1), dim), sincos_2d(torch.stack([h, w], -1), dim)], -1)


def memory_valid(sizes: Sequence[tuple[int, int]], strides: Sequence[int], img_shapes: Tensor) -> Tensor:
    """(B, N) bool padding mask of flattened feature levels of sizes (h_l, w_l) at ``strides``: False
    where the feature pixel starts in the padding (``i s >= h`` or ``j s >= w``, img_shapes (B, 2) (h, w))."""
    valid = []
    for (h_l, w_l), s in zip(sizes, strides):
        rows = torch.arange(h_l, device=img_shapes.device) * s < img_shapes[:, 0, None]  # (B, h_l)
        cols = torch.arange(w_l, device=img_shapes.device) * s < img_shapes[:, 1, None]  # (B, w_l)
        valid.append((rows[:, :, None] & cols[:, None, :]).flatten(1))  # (B, h_l * w_l)
    return torch.cat(valid, 1)


def memory_positions(sizes: Sequence[tuple[int, int]], strides: Sequence[int], img_shapes: Tensor,
                     dim: int) -> tuple[Tensor, Tensor]:
    """Positions and padding mask of flattened feature levels.

    Args:
        sizes: (h_l, w_l) of each level; strides: their strides in input pixels.
        img_shapes: (B, 2) float (h, w) of each image before padding.
    Returns:
        pos (B, N, dim): :func:`sincos_2d` of the pixel centres ``((i + 0.5) s / h, (j + 0.5) s / w)``;
        valid (B, N) bool: :func:`memory_valid`.
    """
    pos = []
    for (h_l, w_l), s in zip(sizes, strides):
        ys = (torch.arange(h_l, device=img_shapes.device, dtype=torch.float32) + 0.5) * s  # (h_l,)
        xs = (torch.arange(w_l, device=img_shapes.device, dtype=torch.float32) + 0.5) * s  # (w_l,)
        yx = torch.stack(torch.meshgrid(ys, xs, indexing='ij'), -1).flatten(0, 1)  # (h_l * w_l, 2) pixels
        pos.append(sincos_2d(yx / img_shapes[:, None, :], dim))  # (B, h_l * w_l, dim)
    return torch.cat(pos, 1), memory_valid(sizes, strides, img_shapes)


class HungarianMatcher2D:
    """One-to-one matching of Q predictions to G boxes by minimum total cost (scipy).

    cost = ``cls_weight`` * focal class cost (:func:`sf3d.models.heads.assigner.focal_cost`)
    + ``l1_weight`` * L1 between normalised (cx, cy, w, h) boxes - ``giou_weight`` * GIoU
    (Deformable DETR / DINO: 2, 5, 2).
    """

    def __init__(self, *, cls_weight: float = 2.0, l1_weight: float = 5.0, giou_weight: float = 2.0,
                 alpha: float = 0.25, gamma: float = 2.0):
        self.cls_weight, self.l1_weight, self.giou_weight = cls_weight, l1_weight, giou_weight
        self.alpha, self.gamma = alpha, gamma

    @torch.no_grad()
    def cost(self, cls_logits: Tensor, boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor) -> Tensor:
        """(Q, K) logits, (Q, 4) and (G, 4) normalised cxcywh boxes, (G,) labels -> (Q, G) cost."""
        cost = self.cls_weight * focal_cost(cls_logits.float(), gt_labels, self.alpha, self.gamma)
        cost = cost + self.l1_weight * torch.cdist(boxes.float(), gt_boxes.float(), p=1)
        giou = generalized_box_iou(box_convert(boxes.float(), 'cxcywh', 'xyxy'),
                                   box_convert(gt_boxes.float(), 'cxcywh', 'xyxy'))  # (Q, G)
        return cost - self.giou_weight * giou

    @torch.no_grad()
    def assign(self, cls_logits: Tensor, boxes: Tensor, gt_labels: Tensor,
               gt_boxes: Tensor) -> tuple[Tensor, Tensor]:
        """-> (pred_idx (M,), gt_idx (M,)) int64 on the input device, M = min(Q, G); empty when G == 0."""
        Q, K = cls_logits.shape
        G = gt_labels.shape[0]
        if boxes.shape != (Q, 4) or gt_boxes.shape != (G, 4):
            raise ValueError(f'HungarianMatcher2D: expected boxes (Q={Q}, 4) and gt_boxes (G={G}, 4), '
                             f'got {tuple(boxes.shape)} and {tuple(gt_boxes.shape)}')
        if G and (int(gt_labels.min()) < 0 or int(gt_labels.max()) >= K):
            raise ValueError(f'HungarianMatcher2D: gt_labels must be in [0, {K}), got {gt_labels.tolist()}')
        empty = torch.zeros(0, dtype=torch.long, device=cls_logits.device)
        if G == 0 or Q == 0:
            return empty, empty.clone()
        rows, cols = linear_sum_assignment(self.cost(cls_logits, boxes, gt_labels, gt_boxes).cpu().numpy())
        dev = cls_logits.device
        return torch.as_tensor(rows, dtype=torch.long, device=dev), torch.as_tensor(cols, dtype=torch.long, device=dev)


def _key_mask(key_valid: Tensor | None) -> Tensor | None:
    """(B, L) bool valid keys -> an attention mask (B, 1, 1, L) for :class:`Attention`."""
    return None if key_valid is None else key_valid[:, None, None, :]  # (B, 1, 1, L)


class DETR2DEncoderLayer(nn.Module):
    """Post-norm encoder layer over the memory: masked self-attention (position on queries and keys), FFN.

    ``forward(x (B, N, C), pos (B, N, C), valid (B, N))`` -> (B, N, C).
    """

    def __init__(self, *, embed_dims: int = 256, num_heads: int = 8, ffn_dims: int = 1024, dropout: float = 0.1):
        super().__init__()
        self.self_attn = Attention(embed_dims, num_heads, attn_drop=dropout, proj_drop=dropout)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.ffn = Mlp(embed_dims, ffn_dims, act_layer=nn.ReLU, drop=dropout)
        self.norm2 = nn.LayerNorm(embed_dims)

    def forward(self, x: Tensor, pos: Tensor, valid: Tensor) -> Tensor:
        qk = x + pos
        x = self.norm1(x + self.self_attn(qk, qk, x, attn_mask=_key_mask(valid)))  # (B, N, C)
        return self.norm2(x + self.ffn(x))  # (B, N, C)


class DETR2DDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention over queries -> deformable cross-attention around each
    reference box (:class:`BoxDeformableAttention`) -> FFN.

    ``forward(query (B, Q, C), query_pos (B, Q, C), ref_boxes (B, Q, 4), memory (B, N, C), valid (B, N),
    shapes [(h_l, w_l)], scales (B, L, 2), self_mask (B, 1, Q, Q) bool or None)`` -> (B, Q, C). The
    position is added to the query of both attentions, not to values; ``self_mask`` (True: may
    attend) keeps denoising groups apart (:meth:`DETR2DHead.denoising_queries`).
    """

    def __init__(self, *, embed_dims: int = 256, num_heads: int = 8, ffn_dims: int = 1024, dropout: float = 0.1,
                 num_levels: int = 3, num_points: int = 4):
        super().__init__()
        self.self_attn = Attention(embed_dims, num_heads, attn_drop=dropout, proj_drop=dropout)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.cross_attn = BoxDeformableAttention(embed_dims, num_heads, num_levels, num_points)
        self.cross_drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.ffn = Mlp(embed_dims, ffn_dims, act_layer=nn.ReLU, drop=dropout)
        self.norm3 = nn.LayerNorm(embed_dims)

    def forward(self, query: Tensor, query_pos: Tensor, ref_boxes: Tensor, memory: Tensor, valid: Tensor,
                shapes: Sequence[tuple[int, int]], scales: Tensor, self_mask: Tensor | None = None) -> Tensor:
        qk = query + query_pos
        x = self.norm1(query + self.self_attn(qk, qk, query, attn_mask=self_mask))  # (B, Q, C)
        attended = self.cross_attn(x + query_pos, ref_boxes, memory, valid, shapes, scales)  # (B, Q, C)
        x = self.norm2(x + self.cross_drop(attended))  # (B, Q, C)
        return self.norm3(x + self.ffn(x))  # (B, Q, C)


def _box_branch(dims: int) -> nn.Sequential:
    """3-layer MLP -> 4 box deltas; the last layer is zero-initialised (Deformable DETR), so each
    layer starts by keeping its reference box."""
    last = nn.Linear(dims, 4)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Linear(dims, dims), nn.ReLU(inplace=True), nn.Linear(dims, dims), nn.ReLU(inplace=True),
                         last)


def _cls_branch(dims: int, num_classes: int) -> nn.Linear:
    fc = nn.Linear(dims, num_classes)
    nn.init.constant_(fc.bias, -math.log((1 - 0.01) / 0.01))  # prior probability 0.01
    return fc


def _box_loss_terms(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Paired (M, 4) normalised cxcywh boxes -> unweighted sums of L1 and of (1 - GIoU) over the M pairs."""
    giou = generalized_box_iou(box_convert(pred, 'cxcywh', 'xyxy'), box_convert(target, 'cxcywh', 'xyxy')).diagonal()
    return (pred - target).abs().sum(), (1 - giou).sum()


class DETR2DHead(nn.Module):
    """Memory, decoder with iterative box refinement, per-layer branches, set-prediction losses.

    Args:
        num_classes: K.
        embed_dims, num_heads, ffn_dims, dropout: transformer sizes (256, 8, 1024, 0.1).
        num_decoder_layers: D (6).
        num_encoder_layers: optional encoder layers over the memory (0).
        num_levels: L FPN levels in the memory.
        cls_weight, l1_weight, giou_weight: loss AND matching-cost weights (2, 5, 2).
        alpha, gamma: focal loss parameters (0.25, 2).
        num_points: sampling points per head and level of the deformable cross-attention (4).
        dn_groups: denoising groups in training (DN-DETR; 0 = none): :meth:`denoising_queries`.
        dn_box_noise: box noise scale lambda (centre moved up to lambda / 2 of the size, each size
            scaled by up to 1 +- lambda); dn_label_noise: probability that a group's label is replaced
            by a random class.
        max_per_img: detections kept by :meth:`predict` (top-k over queries x classes, 100).
    """

    def __init__(self, *, num_classes: int, embed_dims: int = 256, num_heads: int = 8, ffn_dims: int = 1024,
                 dropout: float = 0.1, num_decoder_layers: int = 6, num_encoder_layers: int = 0,
                 num_levels: int = 3, cls_weight: float = 2.0, l1_weight: float = 5.0, giou_weight: float = 2.0,
                 alpha: float = 0.25, gamma: float = 2.0, num_points: int = 4, dn_groups: int = 0,
                 dn_box_noise: float = 0.4, dn_label_noise: float = 0.2, max_per_img: int = 100):
        super().__init__()
        if num_classes < 1 or num_decoder_layers < 1 or num_encoder_layers < 0 or num_levels < 1:
            raise ValueError(f'DETR2DHead: need num_classes, num_decoder_layers, num_levels >= 1 and '
                             f'num_encoder_layers >= 0, got {num_classes}, {num_decoder_layers}, {num_levels}, '
                             f'{num_encoder_layers}')
        if dn_groups < 0 or dn_box_noise < 0 or not 0 <= dn_label_noise <= 1:
            raise ValueError(f'DETR2DHead: need dn_groups >= 0, dn_box_noise >= 0 and dn_label_noise in [0, 1], got '
                             f'{dn_groups}, {dn_box_noise}, {dn_label_noise}')
        if embed_dims % 4:
            raise ValueError(f'DETR2DHead: embed_dims must be a multiple of 4 (sin-cos positions), got {embed_dims}')
        self.num_classes, self.embed_dims, self.num_levels = num_classes, embed_dims, num_levels
        self.cls_weight, self.l1_weight, self.giou_weight = cls_weight, l1_weight, giou_weight
        self.alpha, self.gamma, self.max_per_img = alpha, gamma, max_per_img
        self.dn_groups, self.dn_box_noise, self.dn_label_noise = dn_groups, dn_box_noise, dn_label_noise
        self.label_embed = nn.Embedding(num_classes, embed_dims) if dn_groups else None  # content of DN queries
        layer_kw = dict(embed_dims=embed_dims, num_heads=num_heads, ffn_dims=ffn_dims, dropout=dropout)
        # the encoder's level embedding (the decoder samples each level on its own: no parameter left
        # without a gradient, which DDP would need find_unused_parameters for)
        self.level_embed = nn.Parameter(torch.randn(num_levels, embed_dims)) if num_encoder_layers else None  # (L, C)
        self.encoder = nn.ModuleList(DETR2DEncoderLayer(**layer_kw) for _ in range(num_encoder_layers))
        self.decoder = nn.ModuleList(DETR2DDecoderLayer(**layer_kw, num_levels=num_levels, num_points=num_points)
                                     for _ in range(num_decoder_layers))
        # box sine code -> positional query (DAB-DETR), shared by the layers
        self.ref_pos_mlp = Mlp(2 * embed_dims, embed_dims, embed_dims, act_layer=nn.ReLU)
        self.cls_branches = nn.ModuleList(_cls_branch(embed_dims, num_classes) for _ in range(num_decoder_layers))
        box = _box_branch(embed_dims)
        self.reg_branches = nn.ModuleList(copy.deepcopy(box) for _ in range(num_decoder_layers))
        self.matcher = HungarianMatcher2D(cls_weight=cls_weight, l1_weight=l1_weight, giou_weight=giou_weight,
                                          alpha=alpha, gamma=gamma)

    def memory(self, feats: Sequence[Tensor], strides: Sequence[int], img_shapes: Tensor) -> tuple[Tensor, ...]:
        """FPN levels [L x (B, C, h_l, w_l)] -> memory (B, N, C) after the optional encoder and valid
        (B, N) (False at pixels in the padding, :func:`memory_valid`)."""
        if len(feats) != self.num_levels or len(strides) != self.num_levels:
            raise ValueError(f'DETR2DHead: built for {self.num_levels} levels, got {len(feats)} feature maps '
                             f'and {len(strides)} strides')
        memory = torch.cat([f.flatten(2).transpose(1, 2) for f in feats], 1)  # (B, N, C)
        sizes = [tuple(f.shape[-2:]) for f in feats]
        if not len(self.encoder):  # the decoder needs the mask only: skip the sin-cos positions
            return memory, memory_valid(sizes, strides, img_shapes)
        pos, valid = memory_positions(sizes, strides, img_shapes, self.embed_dims)
        level = torch.cat([self.level_embed[lvl].expand(f.shape[-2] * f.shape[-1], -1)
                           for lvl, f in enumerate(feats)])  # (N, C)
        pos = pos.to(memory.dtype) + level  # (B, N, C)
        for layer in self.encoder:
            memory = layer(memory, pos, valid)  # (B, N, C)
        return memory, valid

    def denoising_queries(self, gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor]) -> dict | None:
        """Denoising queries for one training batch (DN-DETR, Li et al., CVPR 2022), or None
        (``dn_groups == 0``, or no GT box in the batch).

        Each of the ``dn_groups`` groups holds one query per GT slot (G = the batch's largest GT
        count; slots past an image's own count are padding): its reference box is the GT box with
        noise, its content ``label_embed`` of the GT label (replaced by a random class with
        probability ``dn_label_noise``). The decoder learns to reconstruct the GT from them, a
        matching-free signal that speeds up training; they never reach :meth:`predict`.

        Args:
            gt_boxes: B (G_b, 4) normalised cxcywh; gt_labels: B (G_b,) int64.
        Returns:
            dict(query (B, P, C) content, ref (B, P, 4) noised boxes, boxes (B, P, 4) and labels (B, P)
            targets, valid (B, P) bool (False on padding), per_group G), P = dn_groups * G, query
            ``g * G + j`` holding GT slot j.
        """
        G = max((len(lab) for lab in gt_labels), default=0)
        if not self.dn_groups or G == 0:
            return None
        B, device = len(gt_labels), self.label_embed.weight.device
        boxes = torch.full((B, G, 4), 0.5, device=device)  # padding: a harmless box, never in a loss
        labels = torch.zeros(B, G, dtype=torch.long, device=device)
        valid = torch.zeros(B, G, dtype=torch.bool, device=device)
        for b, (box, lab) in enumerate(zip(gt_boxes, gt_labels)):
            boxes[b, :len(lab)], labels[b, :len(lab)], valid[b, :len(lab)] = box.float(), lab, True
        boxes = boxes.repeat(1, self.dn_groups, 1)  # (B, P, 4)
        labels, valid = labels.repeat(1, self.dn_groups), valid.repeat(1, self.dn_groups)  # (B, P) each
        wh = boxes[..., 2:]  # (B, P, 2)
        lam = self.dn_box_noise
        centre = boxes[..., :2] + (torch.rand_like(wh) * 2 - 1) * wh * lam / 2
        size = wh * (1 + (torch.rand_like(wh) * 2 - 1) * lam)
        ref = torch.cat([centre, size], -1).clamp(1e-3, 1 - 1e-3)  # (B, P, 4)
        flip = torch.rand(labels.shape, device=device) < self.dn_label_noise
        noisy = torch.where(flip, torch.randint_like(labels, self.num_classes), labels)
        query = self.label_embed(noisy)  # (B, P, C): learned, the only tensor here with a gradient
        return dict(query=query, ref=ref, boxes=boxes, labels=labels, valid=valid, per_group=G)

    def _self_attention_mask(self, dn: dict, num_queries: int) -> Tensor:
        """(B, 1, P + Q, P + Q) bool, True where a row may attend to a column; order [DN groups, matching].

        Matching queries see only matching queries (they must not learn from the GT the DN queries
        carry); a DN query sees its own group's valid slots and the matching queries."""
        valid = dn['valid']  # (B, P)
        B, P = valid.shape
        G, Q = dn['per_group'], num_queries
        group = torch.arange(P, device=valid.device) // G  # (P,)
        mask = torch.zeros(B, P + Q, P + Q, dtype=torch.bool, device=valid.device)
        mask[:, P:, P:] = True
        mask[:, :P, P:] = True
        mask[:, :P, :P] = (group[:, None] == group[None, :]) & valid[:, None, :]  # (B, P, P)
        return mask[:, None]  # (B, 1, P + Q, P + Q)

    def forward(self, query: Tensor, ref_boxes: Tensor, feats: Sequence[Tensor], strides: Sequence[int],
                img_shapes: Tensor, dn: dict | None = None) -> dict:
        """query (B, Q, C) content; ref_boxes (B, Q, 4) initial reference boxes, normalised cxcywh in
        (0, 1); feats [L x (B, C, h_l, w_l)] at ``strides``; img_shapes (B, 2) (h, w) before padding;
        dn: :meth:`denoising_queries`' dict (training) or None.

        Returns dict(all_cls_scores (D, B, Q, K) logits, all_bbox_preds (D, B, Q, 4) normalised cxcywh)
        and, with ``dn``, ``dn_cls_scores`` (D, B, P, K), ``dn_bbox_preds`` (D, B, P, 4) and ``dn``.
        Layer d refines its reference box r: ``box_d = sigmoid(delta_d + logit(r))``; ``box_d``,
        detached, is layer d + 1's reference (the initial boxes are not detached, so whatever
        produced them learns through layer 0).
        """
        if query.dim() != 3 or query.shape[-1] != self.embed_dims or ref_boxes.shape != query.shape[:2] + (4,):
            raise ValueError(f'DETR2DHead: query must be (B, Q, {self.embed_dims}) and ref_boxes (B, Q, 4), got '
                             f'{tuple(query.shape)} and {tuple(ref_boxes.shape)}')
        img_shapes = img_shapes.to(query.device, torch.float32)
        memory, valid = self.memory(feats, strides, img_shapes)
        shapes = [tuple(f.shape[-2:]) for f in feats]
        pad_sizes = torch.tensor([[w * s, h * s] for (h, w), s in zip(shapes, strides)], device=query.device)  # (L, 2)
        scales = img_shapes.flip(-1)[:, None, :] / pad_sizes  # (B, L, 2) (x, y): image -> padded level map
        P, self_mask, ref = 0, None, ref_boxes
        if dn is not None:
            P, self_mask = dn['ref'].shape[1], self._self_attention_mask(dn, query.shape[1])
            query = torch.cat([dn['query'].to(query.dtype), query], 1)  # (B, P + Q, C)
            ref = torch.cat([dn['ref'].to(ref.dtype), ref], 1)  # (B, P + Q, 4)
        all_cls, all_box = [], []
        for layer, cls_branch, reg_branch in zip(self.decoder, self.cls_branches, self.reg_branches):
            query_pos = self.ref_pos_mlp(box_sine_embed(ref.float(), self.embed_dims).to(query.dtype))  # (B, P + Q, C)
            query = layer(query, query_pos, ref, memory, valid, shapes, scales, self_mask)  # (B, P + Q, C)
            box = (reg_branch(query).float() + inverse_sigmoid(ref.float())).sigmoid()  # (B, P + Q, 4)
            all_cls.append(cls_branch(query))  # (B, P + Q, K)
            all_box.append(box)
            ref = box.detach()
        cls, box = torch.stack(all_cls), torch.stack(all_box)  # (D, B, P + Q, K), (D, B, P + Q, 4)
        out = dict(all_cls_scores=cls[:, :, P:], all_bbox_preds=box[:, :, P:])
        if dn is not None:
            out.update(dn_cls_scores=cls[:, :, :P], dn_bbox_preds=box[:, :, :P], dn=dn)
        return out

    # ---------------------------------------------------------------- losses
    def loss(self, outputs: dict, gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor]) -> dict:
        """Hungarian-matched focal + L1 + GIoU losses at every decoder layer.

        Args:
            outputs: :meth:`forward`'s dict.
            gt_boxes: B (G_b, 4) normalised cxcywh; gt_labels: B (G_b,) int64 in [0, K).
        Returns:
            ``loss_cls``, ``loss_bbox``, ``loss_giou`` (last layer) and ``d{i}.loss_*`` for the earlier
            layers, each weighted and divided by the number of GT boxes (averaged over ranks, >= 1).
            With denoising queries in ``outputs`` also ``loss_dn_cls``, ``loss_dn_bbox``,
            ``loss_dn_giou`` (and ``d{i}.`` versions): the same terms between each valid DN query and
            the GT it was made from, divided by ``num_gt * dn_groups``.
        """
        all_cls, all_box = outputs['all_cls_scores'], outputs['all_bbox_preds']
        D, B = all_cls.shape[:2]
        if len(gt_boxes) != B or len(gt_labels) != B:
            raise ValueError(f'DETR2DHead.loss: batch has {B} images but got {len(gt_boxes)} gt_boxes and '
                             f'{len(gt_labels)} gt_labels')
        num_gt = avg_num_targets(sum(len(lab) for lab in gt_labels), all_cls.device)
        losses = {}
        for lid in range(D):
            cls_l, box_l = all_cls[lid].float(), all_box[lid].float()  # (B, Q, K), (B, Q, 4)
            cls_t = torch.zeros_like(cls_l)
            l1, giou = cls_l.new_zeros(()), cls_l.new_zeros(())
            for b in range(B):
                p, g = self.matcher.assign(cls_l[b].detach(), box_l[b].detach(), gt_labels[b], gt_boxes[b])
                cls_t[b, p, gt_labels[b][g]] = 1.0
                pair_l1, pair_giou = _box_loss_terms(box_l[b, p], gt_boxes[b][g].float())
                l1, giou = l1 + pair_l1, giou + pair_giou
            loss_cls = sigmoid_focal_loss(cls_l, cls_t, alpha=self.alpha, gamma=self.gamma, reduction='sum')
            prefix = '' if lid == D - 1 else f'd{lid}.'
            losses[f'{prefix}loss_cls'] = self.cls_weight * loss_cls / num_gt
            losses[f'{prefix}loss_bbox'] = self.l1_weight * l1 / num_gt
            losses[f'{prefix}loss_giou'] = self.giou_weight * giou / num_gt
            if 'dn' in outputs:
                dn_losses = self._dn_loss(outputs['dn_cls_scores'][lid], outputs['dn_bbox_preds'][lid], outputs['dn'])
                for name, value in dn_losses.items():
                    losses[f'{prefix}{name}'] = value / (num_gt * self.dn_groups)
        return losses

    def _dn_loss(self, cls: Tensor, boxes: Tensor, dn: dict) -> dict:
        """Unnormalised weighted DN losses of one layer: cls (B, P, K) logits, boxes (B, P, 4)."""
        valid = dn['valid']  # (B, P)
        target = F.one_hot(dn['labels'], self.num_classes).float()  # (B, P, K)
        loss_cls = sigmoid_focal_loss(cls.float()[valid], target[valid], alpha=self.alpha, gamma=self.gamma,
                                      reduction='sum')
        l1, giou = _box_loss_terms(boxes.float()[valid], dn['boxes'][valid])
        return dict(loss_dn_cls=self.cls_weight * loss_cls, loss_dn_bbox=self.l1_weight * l1,
                    loss_dn_giou=self.giou_weight * giou)

    @torch.no_grad()
    def predict(self, outputs: dict) -> list[dict]:
        """Last layer -> B dicts ``boxes (k, 4) normalised cxcywh, scores (k,), labels (k,) int64``:
        the top k = min(max_per_img, Q * K) sigmoid scores over queries x classes (Deformable DETR)."""
        logits, boxes = outputs['all_cls_scores'][-1].float(), outputs['all_bbox_preds'][-1].float()
        B, Q, K = logits.shape
        scores, idx = logits.sigmoid().flatten(1).topk(min(self.max_per_img, Q * K), dim=1)  # (B, k) each
        query = torch.div(idx, K, rounding_mode='floor')  # (B, k)
        return [dict(boxes=boxes[b, query[b]], scores=scores[b], labels=idx[b] % K) for b in range(B)]
