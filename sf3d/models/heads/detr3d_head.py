"""DETR3D-style multi-view 3D detection head: decoder layers, decoder, head, losses.

DETR3D: 3D Object Detection from Multi-view Images via 3D-to-2D Queries (Wang et al., CoRL 2021).
Each query carries a 3D reference point; cross-attention projects it into every camera and
FPN level, weighs the samples with sigmoid weights over cameras x levels
(:func:`sf3d.models.layers.feature_sampling.weighted_features`), and adds an MLP encoding of the
reference point.
Every layer has its own classification / regression branches (iterative box refinement; the
refined reference point is detached before the next layer) and a loss.

What differs from DETR3D: plain PyTorch (no mmcv), self-attention through SDPA; reference
points come in metres (the detector derives them from camera rays) and are normalised to the
point-cloud range here; box codes keep the mmdet3d >= 1.0 yaw convention; one sampling point
per camera and level (DETR3D's num_points = 1) unless ``keypoints`` asks for several
(:mod:`sf3d.models.layers.keypoints`).

Axis names: B batch, Q queries, C channels, N cameras (N_cam), L FPN levels, D decoder layers,
K classes, G ground-truth boxes.

Blocks: ``DETR3DCrossAttention``, ``DETR3DDecoderLayer``; stack: ``DETR3DDecoder``; head: ``DETR3DHead``
(Hungarian ``loss``; ``dn_loss`` for the denoising queries of
:class:`sf3d.models.layers.denoising.DenoisingQueries`, run first in the same decoder under
``forward``'s ``attn_mask``).
"""
from __future__ import annotations

import copy
import math
from typing import Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from sf3d.models.heads.assigner import HungarianAssigner3D
from sf3d.models.heads.box_coder import (CODE_SIZE, PC_RANGE, POST_CENTER_RANGE, NMSFreeDecoder,
                                         denormalize_points, encode_boxes, inverse_sigmoid,
                                         normalize_points)
from sf3d.models.layers.attention import Attention
from sf3d.models.layers.box_flags import BoxFlag, MovingState
from sf3d.models.layers.feature_sampling import sample_features, weighted_features
from sf3d.models.layers.heading import HeadingDirection
from sf3d.models.layers.keypoints import QueryKeypoints
from sf3d.models.layers.loss_normalizer import avg_num_targets
from sf3d.models.layers.one_to_many import OneToManyLayers
from sf3d.models.layers.quality import LocalizationQuality
from sf3d.models.layers.temporal import VelocityMatching, frame_references, matching_loss
from sf3d.structures import LiDARBoxes

__all__ = ['DETR3DCrossAttention', 'DETR3DDecoderLayer', 'DETR3DDecoder', 'DETR3DHead']


class DETR3DCrossAttention(nn.Module):
    """3D-to-2D cross-attention (DETR3D's ``Detr3DCrossAtten``) with its own residual.

    ``forward(query (B, Q, C), query_pos (B, Q, C), ref_norm (B, Q, 3) in [0, 1] of pc_range,
    feats [L x (B, F * N, C, H_l, W_l)], lidar2img (B, F * N, 4, 4), img_shape (H, W),
    velocity (B, Q, 2) m/s or None, frame_dt (B, F) seconds or None) -> ((B, Q, C), None or the
    match: (velocity (B, Q, 2), log-weights (B, Q, K), hypotheses (B, Q, K, 2)))``.

    With F = ``num_frames`` = 2 (two-frame input, :mod:`sf3d.models.layers.temporal`) the views are
    frame-major and every frame has its own sigmoid weights over cameras x levels. The previous
    frame's key map is sampled where the object was under a grid of velocity hypotheses around
    ``velocity`` (averaged over the cameras that see the point) and matched against the current
    frame (:class:`~sf3d.models.layers.temporal.VelocityMatching`, built from ``velocity_matching``);
    the previous frame's features are then sampled once, at ``ref - matched * dt``. The frames'
    samples are concatenated before the output projection, so the query sees what each frame shows
    rather than their sum.

    With ``keypoints`` (keyword arguments of :class:`~sf3d.models.layers.keypoints.QueryKeypoints`)
    each query samples P points about its reference point, offsets predicted from the query; every
    sample has its own weight and the P weighted sums are averaged. None (default): one point, as DETR3D.
    """

    def __init__(self, *, embed_dims: int = 256, num_cams: int = 6, num_levels: int = 4,
                 num_frames: int = 1, velocity_matching: dict | None = None, keypoints: dict | None = None,
                 dropout: float = 0.1, pc_range: Sequence[float] = PC_RANGE):
        super().__init__()
        if num_frames not in (1, 2) or (velocity_matching is not None and num_frames == 1):
            raise ValueError(f'DETR3DCrossAttention: num_frames must be 1 or 2 (velocity_matching only with 2), '
                             f'got num_frames={num_frames}, velocity_matching={velocity_matching}')
        self.num_cams = num_cams
        self.num_levels = num_levels
        self.num_frames = int(num_frames)
        self.pc_range = tuple(pc_range)
        self.keypoints = QueryKeypoints(embed_dims=embed_dims, **keypoints) if keypoints is not None else None
        self.num_points = self.keypoints.num_points if self.keypoints is not None else 1
        self.attention_weights = nn.Linear(embed_dims, self.num_frames * num_cams * num_levels * self.num_points)
        self.output_proj = nn.Linear(self.num_frames * embed_dims, embed_dims)
        self.dropout = nn.Dropout(dropout)
        self.position_encoder = nn.Sequential(
            nn.Linear(3, embed_dims), nn.LayerNorm(embed_dims), nn.ReLU(inplace=True),
            nn.Linear(embed_dims, embed_dims), nn.LayerNorm(embed_dims), nn.ReLU(inplace=True))
        self.velocity_matching = (VelocityMatching(embed_dims=embed_dims, **(velocity_matching or {}))
                                  if self.num_frames == 2 else None)
        if self.velocity_matching is not None and not 0 <= self.velocity_matching.level < num_levels:
            raise ValueError(f'DETR3DCrossAttention: velocity_matching level {self.velocity_matching.level} is not '
                             f'one of the {num_levels} FPN levels')
        self.init_weights()

    def init_weights(self) -> None:
        """DETR3D's ``Detr3DCrossAtten.init_weight``: zero attention weights (weight and bias: every
        sample starts at sigmoid(0) = 0.5), Xavier-uniform output projection with zero bias; the
        keypoints' own (:meth:`QueryKeypoints.init_weights`)."""
        if self.keypoints is not None:
            self.keypoints.init_weights()
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def _sample(self, feats: Sequence[Tensor], points: Tensor, lidar2img: Tensor, img_shape: Sequence[int],
                weights: Tensor, frame: int) -> Tensor:
        """Frame ``frame``'s views sampled at points (B, Q, P, 3) metres, summed over cameras x levels
        with weights (B, Q, P, N, L) and averaged over the P points -> (B, Q, C) float32. Samples of
        cameras that do not see a point are zero (:func:`sample_features`), so their weights get no
        gradient either."""
        B, Q, P = points.shape[:3]
        views = slice(frame * self.num_cams, (frame + 1) * self.num_cams)
        out = weighted_features([x[:, views] for x in feats], points.flatten(1, 2), lidar2img[:, views], img_shape,
                                weights.flatten(1, 2))  # (B, Q * P, C)
        return out.view(B, Q, P, -1).mean(2)  # (B, Q, C)

    @staticmethod
    def _camera_mean(keys: Tensor, points: Tensor, lidar2img: Tensor, img_shape: Sequence[int]) -> Tensor:
        """A key map (B, N, C_m, h, w) sampled at points (B, P, 3) metres -> (B, P, C_m): the mean over
        the cameras that see each point."""
        sampled, mask = sample_features([keys], points, lidar2img, img_shape)  # (B, C_m, P, N, 1), (B, P, N)
        seen = mask.sum(-1).clamp(min=1).to(sampled.dtype)  # (B, P)
        return sampled[..., 0].sum(-1).transpose(1, 2) / seen[..., None]

    def forward(self, query: Tensor, query_pos: Tensor, ref_norm: Tensor, feats: Sequence[Tensor],
                lidar2img: Tensor, img_shape: Sequence[int], velocity: Tensor | None = None,
                frame_dt: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        B, Q, C = query.shape
        F, N, L = self.num_frames, self.num_cams, self.num_levels
        if len(feats) != L or lidar2img.shape[1] != F * N:
            raise ValueError(f'DETR3DCrossAttention: built for {L} levels and {F} frame(s) x {N} cameras, got '
                             f'{len(feats)} levels and lidar2img {tuple(lidar2img.shape)}')
        if F > 1 and (velocity is None or frame_dt is None or velocity.shape != (B, Q, 2)
                      or frame_dt.shape != (B, F)):
            raise ValueError(f'DETR3DCrossAttention: {F} frames need velocity (B={B}, Q={Q}, 2) and frame_dt '
                             f'(B, {F}), got {None if velocity is None else tuple(velocity.shape)} and '
                             f'{None if frame_dt is None else tuple(frame_dt.shape)}')
        ref_metric = denormalize_points(ref_norm, self.pc_range)  # (B, Q, 3)
        P = self.num_points
        offsets = (self.keypoints(query + query_pos) if self.keypoints is not None
                   else ref_metric.new_zeros(B, Q, 1, 3))  # (B, Q, P, 3) metres
        weights = self.attention_weights(query + query_pos).sigmoid()  # (B, Q, F*N*L*P)
        weights = weights.view(B, Q, F, N, L, P).permute(0, 1, 2, 5, 3, 4)  # (B, Q, F, P, N, L)
        out = [self._sample(feats, ref_metric[:, :, None] + offsets, lidar2img, img_shape, weights[:, :, 0], 0)]
        matched = None
        if F == 2:
            match = self.velocity_matching
            keys = match.keys(feats[match.level][:, N:])  # (B, N, C_m, h, w)
            matched = match(out[0], ref_metric, velocity, frame_dt[:, 1],
                            lambda points: self._camera_mean(keys, points, lidar2img[:, N:], img_shape))
            was = frame_references(ref_metric, matched[0].detach(), frame_dt)[:, 1]  # (B, Q, 3) where the object was
            out.append(self._sample(feats, was[:, :, None] + offsets, lidar2img, img_shape, weights[:, :, 1], 1))
        out = self.output_proj(torch.cat(out, -1).to(query.dtype))  # (B, Q, C)
        pos_feat = self.position_encoder(inverse_sigmoid(ref_norm).to(query.dtype))  # (B, Q, C)
        return self.dropout(out) + query + pos_feat, matched


class DETR3DDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention -> norm -> 3D cross-attention -> norm -> FFN -> norm.

    ``forward`` takes the arguments of :class:`DETR3DCrossAttention`, an optional self-attention
    ``attn_mask`` (bool, broadcastable to (B, heads, Q, Q), True = may attend) and the cross-attention's
    ``velocity`` and ``frame_dt``; returns (B, Q, C) and the cross-attention's match (or None).
    """

    def __init__(self, *, embed_dims: int = 256, num_heads: int = 8, ffn_dims: int = 1024,
                 dropout: float = 0.1, num_cams: int = 6, num_levels: int = 4, num_frames: int = 1,
                 velocity_matching: dict | None = None, keypoints: dict | None = None,
                 pc_range: Sequence[float] = PC_RANGE):
        super().__init__()
        self.self_attn = Attention(embed_dims, num_heads, attn_drop=dropout)
        self.drop1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.cross_attn = DETR3DCrossAttention(embed_dims=embed_dims, num_cams=num_cams, num_levels=num_levels,
                                               num_frames=num_frames, velocity_matching=velocity_matching,
                                               keypoints=keypoints, dropout=dropout, pc_range=pc_range)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.ffn = nn.Sequential(nn.Linear(embed_dims, ffn_dims), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(ffn_dims, embed_dims), nn.Dropout(dropout))
        self.norm3 = nn.LayerNorm(embed_dims)

    def forward(self, query: Tensor, query_pos: Tensor, ref_norm: Tensor, feats: Sequence[Tensor],
                lidar2img: Tensor, img_shape: Sequence[int], attn_mask: Tensor | None = None,
                velocity: Tensor | None = None, frame_dt: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        qk = query + query_pos
        x = self.norm1(query + self.drop1(self.self_attn(qk, qk, query, attn_mask=attn_mask)))  # (B, Q, C)
        x, matched = self.cross_attn(x, query_pos, ref_norm, feats, lidar2img, img_shape, velocity, frame_dt)
        x = self.norm2(x)  # (B, Q, C)
        return self.norm3(x + self.ffn(x)), matched  # (B, Q, C), match or None


class DETR3DDecoder(nn.Module):
    """A stack of decoder layers with iterative reference-point refinement.

    ``forward(query, query_pos, ref_norm (B, Q, 3), feats, lidar2img, img_shape, reg_branches=None,
    attn_mask=None, frame_dt=None)`` (``attn_mask``: every layer's self-attention mask, see
    :class:`DETR3DDecoderLayer`) returns ``dict(hidden_states (D, B, Q, C), references (D, B, Q, 3)
    the normalised reference point each layer used, reg_outputs (D, B, Q, 10) raw regression
    outputs or None, match None or (log-weights (D, B, Q, K), hypotheses (D, B, Q, K, 2)) of the
    velocity matching)``. With ``reg_branches`` (one per layer), layer d's output refines the
    reference in inverse-sigmoid space (code dims 0, 1, 4 = cx, cy, cz) and the result, detached,
    feeds layer d + 1. With two-frame input, ``frame_dt`` (B, F) seconds back to each frame: layer
    d matches the previous frame around the velocity that layer d - 1 regressed (code dims 8, 9,
    detached; zero for the first layer), and its own velocity code is the matched velocity plus the
    regressed residual.
    """

    def __init__(self, *, num_layers: int = 6, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(DETR3DDecoderLayer(**layer_kwargs) for _ in range(num_layers))

    def forward(self, query: Tensor, query_pos: Tensor, ref_norm: Tensor, feats: Sequence[Tensor],
                lidar2img: Tensor, img_shape: Sequence[int], reg_branches: nn.ModuleList | None = None,
                attn_mask: Tensor | None = None, frame_dt: Tensor | None = None) -> dict:
        hidden, refs, regs, matches = [], [], [], []
        velocity = None if frame_dt is None else ref_norm.new_zeros(ref_norm.shape[:2] + (2,))  # (B, Q, 2) m/s
        for lid, layer in enumerate(self.layers):
            query, matched = layer(query, query_pos, ref_norm, feats, lidar2img, img_shape, attn_mask, velocity,
                                   frame_dt)
            hidden.append(query)
            refs.append(ref_norm)
            if reg_branches is not None:
                reg = reg_branches[lid](query)  # (B, Q, 10)
                if matched is not None:  # velocity = matched + regressed residual
                    reg = torch.cat([reg[..., :8], reg[..., 8:] + matched[0].to(reg.dtype)], -1)  # (B, Q, 10)
                    matches.append(matched[1:])
                regs.append(reg)
                ref_norm = (reg[..., [0, 1, 4]] + inverse_sigmoid(ref_norm)).sigmoid().detach()  # (B, Q, 3)
                if velocity is not None:
                    velocity = reg[..., 8:10].detach().float()  # (B, Q, 2)
        return dict(hidden_states=torch.stack(hidden), references=torch.stack(refs),
                    reg_outputs=torch.stack(regs) if regs else None,
                    match=tuple(torch.stack(m) for m in zip(*matches)) if matches else None)


PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)  # classifier bias of prior probability 0.01 (focal loss)


def _cls_branch(dims: int, num_classes: int, num_fcs: int = 2) -> nn.Sequential:
    layers = []
    for _ in range(num_fcs):
        layers += [nn.Linear(dims, dims), nn.LayerNorm(dims), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Linear(dims, num_classes))


def _reg_branch(dims: int, num_fcs: int = 2) -> nn.Sequential:
    layers = []
    for _ in range(num_fcs):
        layers += [nn.Linear(dims, dims), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Linear(dims, CODE_SIZE))


class DETR3DHead(nn.Module):
    """DETR3D head: decoder, per-layer cls / reg branches, Hungarian losses, NMS-free prediction.

    Args:
        num_classes: K (10 nuScenes detection classes).
        embed_dims, num_heads, ffn_dims, dropout, num_layers: decoder sizes (256, 8, 1024, 0.1, 6).
        num_cams, num_levels: N cameras (per frame) and L feature levels the cross-attention expects.
        num_frames: F frames of the input (2: the previous key frame's N views follow the current
            ones; :mod:`sf3d.models.layers.temporal`); 1 (default) is single-frame DETR3D.
        velocity_matching: keyword arguments of :class:`~sf3d.models.layers.temporal.VelocityMatching`
            (``grid``, ``step``, ``match_dims``, ``level``) with two frames, and ``loss_weight`` of its
            direct supervision (:func:`~sf3d.models.layers.temporal.matching_loss`; default 0.0, off:
            at the demo budget it cost 0.016 NDS and did not lower mAVE, README "Temporal input").
        direction: keyword arguments of :class:`~sf3d.models.layers.heading.HeadingDirection`
            (``offset``, ``loss_weight``): the (sin, cos) code regresses the yaw folded into a
            half-plane and a classifier per layer says whether the box faces the other way
            (FCOS3D's direction bins); None (default) regresses the full yaw, as DETR3D.
        moving: keyword arguments of :class:`~sf3d.models.layers.box_flags.MovingState` (``speed``,
            ``loss_weight``): a classifier per layer says whether the box moves, a box it calls static
            predicts velocity 0, and the velocity L1 sees only the moving GT; None (default) regresses
            every velocity, as DETR3D.
        keypoints: keyword arguments of :class:`~sf3d.models.layers.keypoints.QueryKeypoints`
            (``num_points``, ``spread``): every cross-attention samples P points about each reference
            point, offsets predicted from the query (Sparse4D's keypoints); None (default) samples the
            reference point alone, as DETR3D.
        one_to_many: keyword arguments of :class:`~sf3d.models.layers.one_to_many.OneToManyLayers`
            (``k``, ``num_layers``): the first decoder layers match each GT ``k`` times (H-DETR's hybrid
            layer scheme), the last one-to-one; None (default) matches one-to-one everywhere, as DETR3D.
        quality: keyword arguments of :class:`~sf3d.models.layers.quality.LocalizationQuality`
            (``thresholds``, ``alpha``, ``gamma``): a positive's class target is the fraction of the
            metric's distance thresholds its centre is within, under the varifocal loss; None (default)
            trains one-hot targets with the focal loss, as DETR3D.
        pc_range: ``[x0, y0, z0, x1, y1, z1]`` that reference points are normalised to.
        post_center_range, max_num: NMS-free decoding (see :class:`NMSFreeDecoder`).
        code_weights: per-dim L1 weights (``[1] * 8 + [0.2, 0.2]``).
        cls_weight, reg_weight, alpha, gamma: focal loss weight / params and L1 weight, also the
            matching costs.
    """

    def __init__(self, *, num_classes: int = 10, embed_dims: int = 256, num_heads: int = 8,
                 ffn_dims: int = 1024, dropout: float = 0.1, num_layers: int = 6, num_cams: int = 6,
                 num_levels: int = 4, num_frames: int = 1, velocity_matching: dict | None = None,
                 direction: dict | None = None, moving: dict | None = None, keypoints: dict | None = None,
                 one_to_many: dict | None = None, quality: dict | None = None, pc_range: Sequence[float] = PC_RANGE,
                 post_center_range: Sequence[float] = POST_CENTER_RANGE, max_num: int = 300,
                 code_weights: Sequence[float] = (1.0,) * 8 + (0.2, 0.2), cls_weight: float = 2.0,
                 reg_weight: float = 0.25, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        if len(pc_range) != 6 or len(code_weights) != CODE_SIZE:
            raise ValueError(f'DETR3DHead: pc_range needs 6 values and code_weights {CODE_SIZE}, '
                             f'got {pc_range} and {code_weights}')
        self.num_classes = num_classes
        self.pc_range = tuple(float(v) for v in pc_range)
        self.cls_weight, self.reg_weight, self.alpha, self.gamma = cls_weight, reg_weight, alpha, gamma
        self.register_buffer('code_weights', torch.tensor(code_weights, dtype=torch.float32), persistent=False)
        velocity_matching = dict(velocity_matching or {})
        self.match_weight = float(velocity_matching.pop('loss_weight', 0.0))
        self.decoder = DETR3DDecoder(num_layers=num_layers, embed_dims=embed_dims, num_heads=num_heads,
                                     ffn_dims=ffn_dims, dropout=dropout, num_cams=num_cams,
                                     num_levels=num_levels, num_frames=num_frames,
                                     velocity_matching=velocity_matching or None, keypoints=keypoints,
                                     pc_range=pc_range)
        self.num_frames = num_frames
        cls, reg = _cls_branch(embed_dims, num_classes), _reg_branch(embed_dims)
        self.cls_branches = nn.ModuleList(copy.deepcopy(cls) for _ in range(num_layers))
        self.reg_branches = nn.ModuleList(copy.deepcopy(reg) for _ in range(num_layers))
        self.direction = (HeadingDirection(embed_dims=embed_dims, num_layers=num_layers, **direction)
                          if direction is not None else None)
        self.moving = (MovingState(embed_dims=embed_dims, num_layers=num_layers, **moving)
                       if moving is not None else None)
        self.one_to_many = (OneToManyLayers(decoder_layers=num_layers, **one_to_many)
                            if one_to_many is not None else None)
        self.quality = LocalizationQuality(**quality) if quality is not None else None
        self.assigner = HungarianAssigner3D(cls_weight=cls_weight, reg_weight=reg_weight, alpha=alpha, gamma=gamma)
        self.bbox_decoder = NMSFreeDecoder(num_classes=num_classes, max_num=max_num,
                                           post_center_range=post_center_range)
        self.init_weights()

    def init_weights(self) -> None:
        """DETR3D's initialisation (``Detr3DTransformer.init_weights`` + ``Detr3DHead.init_weights``).

        * ``xavier_uniform_`` on every parameter of the decoder with more than one dimension;
        * each self-attention as the ``nn.MultiheadAttention`` DETR3D uses: q, k and v drawn as ONE
          Xavier-uniform (3C, C) in-projection (bound ``sqrt(6 / (C + 3C))``), zero biases;
        * each cross-attention re-initialised by :meth:`DETR3DCrossAttention.init_weights` (zero
          attention weights, Xavier output projection with zero bias);
        * every classifier's last bias at the prior probability 0.01.

        The cls / reg branches otherwise keep PyTorch's ``nn.Linear`` initialisation, as in DETR3D
        (they are outside its transformer). Called by ``__init__``; mmengine's ``BaseModule.init_weights``
        of the detector calls it again, which draws anew from the same laws.
        """
        for p in self.decoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.decoder.modules():
            if isinstance(m, Attention):
                c = m.q.in_features
                bound = math.sqrt(6.0 / (c + 3 * c))  # xavier_uniform_ of a (3C, C) in_proj_weight
                for lin in (m.q, m.k, m.v):
                    nn.init.uniform_(lin.weight, -bound, bound)
                for lin in (m.q, m.k, m.v, m.proj):
                    if lin.bias is not None:
                        nn.init.zeros_(lin.bias)
            elif isinstance(m, DETR3DCrossAttention):
                m.init_weights()
        for branch in self.cls_branches:
            nn.init.constant_(branch[-1].bias, PRIOR_BIAS)

    def flags(self) -> list[BoxFlag]:
        """The box flags this head classifies (direction, moving), in that order."""
        return [f for f in (self.direction, self.moving) if f is not None]

    def forward(self, query: Tensor, query_pos: Tensor, ref_points: Tensor, feats: Sequence[Tensor],
                lidar2img: Tensor, img_shape: Sequence[int], attn_mask: Tensor | None = None,
                frame_dt: Tensor | None = None) -> dict:
        """query, query_pos (B, Q, C); ref_points (B, Q, 3) metres (LiDAR frame), inside ``pc_range``
        (a point outside is clamped onto its faces, where inverse_sigmoid saturates: no gradient); feats
        [L x (B, F * N, C, H_l, W_l)]; lidar2img (B, F * N, 4, 4) (views frame-major, all from the
        current LiDAR frame); img_shape (H, W) of the padded input; frame_dt (B, F) seconds back to
        each frame, needed with ``num_frames`` > 1 (:class:`DETR3DDecoder`);
        attn_mask: optional self-attention mask of every layer, bool, broadcastable to (B, heads, Q, Q),
        True = may attend (e.g. :meth:`sf3d.models.layers.denoising.DNLayout.attn_mask` with the
        denoising queries first); None attends everywhere.

        Returns dict(all_cls_scores (D, B, Q, K) logits, all_bbox_preds (D, B, Q, 10) box codes
        with absolute centres in metres; + with ``direction``: all_dir_logits (D, B, Q), and the codes'
        yaw is folded; + with ``moving``: all_moving_logits (D, B, Q); :meth:`final_codes` applies them).
        """
        if query.shape != query_pos.shape or ref_points.shape != query.shape[:2] + (3,):
            raise ValueError(f'DETR3DHead: query {tuple(query.shape)}, query_pos {tuple(query_pos.shape)} and '
                             f'ref_points {tuple(ref_points.shape)} must be (B, Q, C), (B, Q, C), (B, Q, 3)')
        # The references must lie inside pc_range (normalised in (0, 1)) to stay where the caller put
        # them: MultiViewDetector keeps each token's reference on its ray inside the range, learned
        # ones are sigmoids. The clamp only catches what cannot be (a ray that never crosses the range).
        if (frame_dt is None) != (self.num_frames == 1) or (frame_dt is not None and frame_dt.shape != (
                query.shape[0], self.num_frames)):
            raise ValueError(f'DETR3DHead: built for {self.num_frames} frame(s): frame_dt must be '
                             + ('None' if self.num_frames == 1 else f'(B, {self.num_frames}) seconds')
                             + f', got {None if frame_dt is None else tuple(frame_dt.shape)}')
        ref_norm = normalize_points(ref_points.float(), self.pc_range).clamp(0, 1)  # (B, Q, 3)
        dec = self.decoder(query, query_pos, ref_norm, feats, lidar2img, img_shape, self.reg_branches, attn_mask,
                           frame_dt)
        all_cls, all_box = [], []
        for lid, (h, ref, reg) in enumerate(zip(dec['hidden_states'], dec['references'], dec['reg_outputs'])):
            all_cls.append(self.cls_branches[lid](h))  # (B, Q, K)
            reg = reg.float()  # absolute centres in metres need float32
            centre = denormalize_points((reg[..., [0, 1, 4]] + inverse_sigmoid(ref)).sigmoid(), self.pc_range)
            all_box.append(torch.cat([centre[..., :2], reg[..., 2:4], centre[..., 2:], reg[..., 5:]], -1))  # (B, Q, 10)
        out = dict(all_cls_scores=torch.stack(all_cls), all_bbox_preds=torch.stack(all_box))
        for flag in self.flags():
            out[flag.logits_key()] = flag(dec['hidden_states'])  # (D, B, Q)
        if dec['match'] is not None:
            out['all_match'] = dec['match']  # (D, B, Q, K), (D, B, Q, K, 2)
        return out

    # ---------------------------------------------------------------- losses
    def _targets(self, cls_logits: Tensor, bbox_preds: Tensor, gt_codes: Tensor, gt_labels: Tensor,
                 fixed: tuple[Tensor, Tensor] | None = None):
        """One sample: (Q, K), (Q, 10), (G, 10), (G,) -> one-hot cls targets (Q, K), bbox targets
        (Q, 10), bbox weights (Q, 10), the assignment (query indices (M,), GT indices (M,))."""
        pred_idx, gt_idx = self.assigner.assign(cls_logits, bbox_preds, gt_labels, gt_codes, fixed)
        cls_t = torch.zeros_like(cls_logits)
        cls_t[pred_idx, gt_labels[gt_idx]] = 1.0
        box_t = torch.zeros_like(bbox_preds)
        box_w = torch.zeros_like(bbox_preds)
        box_t[pred_idx], box_w[pred_idx] = self._weighted_codes(gt_codes[gt_idx].to(bbox_preds.dtype))
        return cls_t, box_t, box_w, (pred_idx, gt_idx)

    def _weighted_codes(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        """Target codes (M, 10) -> (codes with NaN set to 0, per-dim L1 weights ``code_weights``, 0 where
        the target is NaN: NaN velocities, as in mmdet3d infos, carry no loss)."""
        return codes.nan_to_num(0.0, 0.0, 0.0), torch.isfinite(codes).to(codes.dtype) * self.code_weights.to(codes.dtype)

    def _layer_losses(self, losses: dict, prefix: str, cls_l: Tensor, cls_t: Tensor, box_l: Tensor, box_t: Tensor,
                      box_w: Tensor, num_targets: Tensor, positives: Tensor) -> None:
        """Add ``{prefix}loss_cls`` (focal, or varifocal against :attr:`quality` targets; summed) and
        ``{prefix}loss_bbox`` (weighted L1, summed), both weighted and divided by ``num_targets``, to
        ``losses``. ``positives`` (bool, ``cls_l.shape[:-1]``) marks the M rows of ``cls_l`` whose (M, 10)
        box codes are ``box_l`` / ``box_t`` / ``box_w``."""
        if self.quality is None:
            loss_cls = sigmoid_focal_loss(cls_l, cls_t, alpha=self.alpha, gamma=self.gamma, reduction='sum')
        else:
            quality = cls_l.new_zeros(cls_l.shape[:-1])  # (...) 0 for background
            quality[positives] = self.quality.targets(box_l[:, :2], box_t[:, :2])
            loss_cls = self.quality.loss(cls_l, cls_t, quality)
        losses[f'{prefix}loss_cls'] = self.cls_weight * loss_cls / num_targets
        losses[f'{prefix}loss_bbox'] = self.reg_weight * ((box_l - box_t).abs() * box_w).sum() / num_targets

    def _match_loss(self, losses: dict, prefix: str, match: tuple[Tensor, Tensor] | None, rows: Tensor,
                    velocity: Tensor, num_targets: Tensor) -> None:
        """With velocity matching, add ``{prefix}loss_match``: :func:`matching_loss` of the queries
        ``rows`` (a bool mask over the match's leading dims) against their GT velocities (M, 2), summed,
        weighted and divided by ``num_targets``; sigma is half the hypotheses' step."""
        if match is None or self.match_weight == 0:
            return
        log_w, hyp = match
        sigma = 0.5 * self.decoder.layers[0].cross_attn.velocity_matching.step
        loss = matching_loss(log_w[rows], hyp[rows], velocity, sigma).sum()
        losses[f'{prefix}loss_match'] = self.match_weight * loss / num_targets

    def _encode(self, boxes: Tensor) -> tuple[Tensor, dict]:
        """(M, 9) GT boxes -> (M, 10) target codes (each flag's :meth:`BoxFlag.regression_targets`: the yaw
        folded with ``direction``, static velocities NaN with ``moving``) and each flag's (M,) targets by key."""
        targets = {flag.key: flag.targets(boxes) for flag in self.flags()}
        for flag in self.flags():
            boxes = flag.regression_targets(boxes)
        return encode_boxes(boxes), targets

    def _gt(self, gt_boxes, gt_labels, device) -> tuple[list[Tensor], list[Tensor], list[dict]]:
        codes, labels, flag_targets = [], [], []
        for i, (boxes, lab) in enumerate(zip(gt_boxes, gt_labels)):
            t = boxes.tensor if isinstance(boxes, LiDARBoxes) else torch.as_tensor(boxes)
            t = t.reshape(-1, 9) if t.numel() == 0 else t
            lab = torch.as_tensor(lab, dtype=torch.long, device=device).reshape(-1)
            if t.dim() != 2 or t.shape[1] != 9 or t.shape[0] != lab.shape[0]:
                raise ValueError(f'DETR3DHead.loss: sample {i}: gt_boxes must be (G, 9) with G labels, got '
                                 f'{tuple(t.shape)} boxes and {lab.shape[0]} labels')
            code, targets = self._encode(t.to(device=device, dtype=torch.float32))
            codes.append(code)
            labels.append(lab)
            flag_targets.append(targets)
        return codes, labels, flag_targets

    def loss(self, outputs: dict, gt_boxes: Sequence[Union[LiDARBoxes, Tensor]],
             gt_labels: Sequence[Tensor], fixed_assign: Sequence[tuple[Tensor, Tensor]] | None = None) -> dict:
        """Hungarian-matched focal + L1 losses at every decoder layer.

        Args:
            outputs: :meth:`forward`'s dict.
            gt_boxes: B LiDARBoxes or (G_b, 9) tensors ``[x, y, z_bottom, l, w, h, yaw, vx, vy]``.
            gt_labels: B (G_b,) class indices in [0, K).
            fixed_assign: optional B pairs (query indices, GT indices) matched before the Hungarian
                step at every layer (the rest is matched by cost).
        Returns:
            dict with ``loss_cls``, ``loss_bbox`` (last layer) and ``d{i}.loss_cls``,
            ``d{i}.loss_bbox`` for the earlier layers (+ ``loss_match`` / ``d{i}.loss_match`` of the
            matched queries with a GT velocity, with a matching ``loss_weight``; + ``loss_dir`` /
            ``d{i}.loss_dir`` and ``loss_moving`` / ``d{i}.loss_moving`` of the matched queries with
            ``direction`` and ``moving``); all normalised by the batch's
            #GT averaged over the ranks, at least 1 (times ``k`` on the layers that match one-to-many)
            (:func:`~sf3d.models.layers.loss_normalizer.avg_num_targets`; DETR3D's
            ``sync_cls_avg_factor``). Under torch.distributed every rank must call it.
        """
        all_cls, all_box = outputs['all_cls_scores'], outputs['all_bbox_preds']
        D, B = all_cls.shape[:2]
        if len(gt_boxes) != B or len(gt_labels) != B:
            raise ValueError(f'DETR3DHead.loss: batch has {B} samples but got {len(gt_boxes)} gt_boxes and '
                             f'{len(gt_labels)} gt_labels')
        codes, labels, flag_targets = self._gt(gt_boxes, gt_labels, all_cls.device)
        num_gt = avg_num_targets(sum(len(lab) for lab in labels), all_cls.device)  # DETR3D's reduce_mean
        losses, match = {}, outputs.get('all_match')
        for lid in range(D):
            k = 1 if self.one_to_many is None else self.one_to_many.repeats(lid)
            gt = [OneToManyLayers.expand(k, *t) for t in zip(codes, labels, flag_targets)]  # B (k G, ...)
            num_targets = num_gt * k
            cls_l, box_l = all_cls[lid].float(), all_box[lid].float()  # (B, Q, K), (B, Q, 10)
            targets = [self._targets(cls_l[b].detach(), box_l[b].detach(), gt[b][0], gt[b][1],
                                     None if fixed_assign is None else fixed_assign[b]) for b in range(B)]
            cls_t, box_t, box_w, assigned = zip(*targets)
            cls_t, box_t, box_w = (torch.stack(t) for t in (cls_t, box_t, box_w))  # (B, Q, K), (B, Q, 10) x 2
            prefix = '' if lid == D - 1 else f'd{lid}.'
            matched = cls_t.amax(-1) > 0  # (B, Q) the matched queries (a one-hot row each)
            self._layer_losses(losses, prefix, cls_l, cls_t, box_l[matched], box_t[matched], box_w[matched],
                               num_targets, positives=matched)
            for flag in self.flags():  # the matched queries against their GT's flags
                flag_l = outputs[flag.logits_key()][lid]  # (B, Q)
                logits = torch.cat([flag_l[b][q] for b, (q, _) in enumerate(assigned)])  # (M,)
                flag_t = torch.cat([gt[b][2][flag.key][g] for b, (_, g) in enumerate(assigned)])  # (M,)
                losses[f'{prefix}loss_{flag.key}'] = flag.loss(logits, flag_t, num_targets)
            rows = box_w[..., 8] > 0  # (B, Q) matched, with a GT velocity
            self._match_loss(losses, prefix, None if match is None else tuple(m[lid] for m in match), rows,
                             box_t[..., 8:10][rows], num_targets)
        return losses

    def dn_loss(self, all_cls: Tensor, all_box: Tensor, labels: Tensor, boxes: Tensor,
                match: tuple[Tensor, Tensor] | None = None, flag_logits: dict | None = None) -> dict:
        """Denoising losses at every decoder layer (no matching: each DN query's target is fixed).

        Args:
            all_cls: (D, B, Qd, K) logits and all_box: (D, B, Qd, 10) box codes of the DN queries
                (the first Qd queries of :meth:`forward`'s outputs).
            labels: (B, Qd) int64: the target class of a positive, -1 for background (a ray
                negative), -2 for padding (no loss).
            boxes: (B, Qd, 9) GT boxes ``[x, y, z_bottom, l, w, h, yaw, vx, vy]`` of the positives
                (other rows are ignored).
            match: the DN queries' velocity matching ((D, B, Qd, K) log-weights, (D, B, Qd, K, 2)
                hypotheses; :meth:`forward`'s ``all_match``), or None.
            flag_logits: the DN queries' (D, B, Qd) logits of each of the head's :meth:`flags` by key
                (``dict(dir=..., moving=...)`` from ``all_dir_logits`` / ``all_moving_logits``).
        Returns:
            dict with ``dn.loss_cls``, ``dn.loss_bbox`` (last layer) and ``dn.d{i}.loss_cls``,
            ``dn.d{i}.loss_bbox`` (+ ``dn.loss_match`` / ``dn.d{i}.loss_match`` of the positives with a
            GT velocity, with ``match``; + ``dn.loss_{key}`` / ``dn.d{i}.loss_{key}`` of each flag):
            focal loss over positives and negatives (an all-zero one-hot), L1 of weighted box codes
            over positives (NaN targets carry no loss), each normalised by
            the number of positive DN queries averaged over the ranks, at least 1. Under
            torch.distributed every rank must call it.
        """
        D, B, Qd, K = all_cls.shape
        if all_box.shape != (D, B, Qd, CODE_SIZE) or labels.shape != (B, Qd) or boxes.shape != (B, Qd, 9):
            raise ValueError(f'DETR3DHead.dn_loss: expected all_cls (D, B, Qd, K), all_box (D, B, Qd, {CODE_SIZE}), '
                             f'labels (B, Qd), boxes (B, Qd, 9), got {tuple(all_cls.shape)}, {tuple(all_box.shape)}, '
                             f'{tuple(labels.shape)}, {tuple(boxes.shape)}')
        pos, scored = labels >= 0, labels >= -1  # (B, Qd) each
        cls_t = torch.zeros(B, Qd, K, device=all_cls.device)  # (B, Qd, K)
        cls_t[pos] = nn.functional.one_hot(labels[pos], K).float()
        cls_t = cls_t[scored]  # (S, K)
        flag_logits = dict(flag_logits or {})
        keys = [flag.key for flag in self.flags()]
        if sorted(flag_logits) != sorted(keys) or any(v.shape != (D, B, Qd) for v in flag_logits.values()):
            raise ValueError(f'DETR3DHead.dn_loss: flag_logits must hold (D, B, Qd) = {(D, B, Qd)} logits for '
                             f'exactly the head\'s flags {keys}, got '
                             f'{ {k: tuple(v.shape) for k, v in flag_logits.items()} }')
        codes, flag_t = self._encode(boxes[pos].float())  # (P, 10), {key: (P,)}
        tgt, box_w = self._weighted_codes(codes)  # (P, 10) each
        num_pos = avg_num_targets(int(pos.sum()), all_cls.device)
        losses = {}
        moving = pos.clone()
        moving[pos] = box_w[:, 8] > 0  # (B, Qd) positives with a GT velocity
        for lid in range(D):
            prefix = 'dn.' if lid == D - 1 else f'dn.d{lid}.'
            self._layer_losses(losses, prefix, all_cls[lid][scored].float(), cls_t, all_box[lid][pos].float(), tgt,
                               box_w, num_pos, positives=pos[scored])  # (S,) the scored rows that are positives
            self._match_loss(losses, prefix, None if match is None else tuple(m[lid] for m in match), moving,
                             tgt[box_w[:, 8] > 0, 8:10], num_pos)
            for flag in self.flags():
                losses[f'{prefix}loss_{flag.key}'] = flag.loss(flag_logits[flag.key][lid][pos], flag_t[flag.key],
                                                               num_pos)
        return losses

    def final_codes(self, outputs: dict) -> Tensor:
        """The last layer's box codes (B, Q, 10) float32 with each flag applied where :meth:`forward`
        gave its logits: the full yaw (``all_dir_logits``), velocity 0 where static (``all_moving_logits``)."""
        codes = outputs['all_bbox_preds'][-1].float()
        for flag in self.flags():
            if flag.logits_key() in outputs:
                codes = flag.apply_to_codes(codes, outputs[flag.logits_key()][-1])
        return codes

    @torch.no_grad()
    def predict(self, outputs: dict) -> list[dict]:
        """Last layer -> B dicts ``bboxes_3d (K, 9), scores_3d (K,), labels_3d (K,)`` (NuScenesMetric format)."""
        return self.bbox_decoder.decode(outputs['all_cls_scores'][-1].float(), self.final_codes(outputs))
