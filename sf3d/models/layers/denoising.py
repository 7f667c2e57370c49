"""Denoising (DN) queries for a DETR-style 3D head, with optional ray denoising negatives.

DN-DETR: Accelerate DETR Training by Introducing Query DeNoising (Li et al., CVPR 2022) and DINO
(Zhang et al., ICLR 2023): during training, extra queries are built from noised ground truth and
the decoder learns to reconstruct the GT from them, which needs no bipartite matching (each DN
query's target is known) and stabilises early training. Several noised copies (groups) of the GT
run at once; an attention mask stops the matching queries from seeing any DN query (so they cannot
read the answer) and each group from seeing the others.

RayDN: Ray Denoising: Depth-aware Hard Negative Sampling for Multi-view 3D Object Detection
(Liu et al., ECCV 2024): besides the positives, hard negatives are placed on the ray from the
camera through each GT, in front of and behind it, and must be classified as background; this
targets the depth-duplicate false positives of camera detectors.

What differs here:

* Positives: the reference point is the GT gravity centre plus uniform noise in
  ``[-1, 1] * centre_noise * (l / 2, w / 2, h / 2)`` along (x, y, z) -- DN-DETR's box-size-scaled
  centre noise, with the half sizes taken along the LiDAR axes (the yaw is ignored: simple, and
  the noise stays inside the box whenever ``centre_noise <= 1`` and yaw = 0). Box sizes are not
  noised (the query carries only a point and a label here). Label noise: with probability
  ``label_noise`` the content label is replaced by a class drawn uniformly from all K (it may draw
  the true class, so the label changes with probability ``label_noise * (K - 1) / K``, as DN-DETR).
  The target is always the true box and class.
* Ray negatives: on the ray from the LiDAR origin (0, 0, 0) through the GT gravity centre (one
  ray shared by all cameras instead of RayDN's per-camera rays), at the centre's distance plus or
  minus an offset drawn uniformly in ``ray_offset`` metres (random sign; the + side when the - side
  would pass behind the origin). Their content is the embedding of the TRUE label, so only the
  position tells them apart; their target is background (an all-zero one-hot).
* Content is a learned label embedding (no DN-DETR indicator bit); ``query_pos`` is an MLP of the
  reference point in inverse-sigmoid space. References are clipped inside ``pc_range``.
* Padded GT slots (samples with fewer GT than the batch's G_max) are masked out of attention as
  keys and carry no loss.

Query order: group-major; inside a group, the G_max positives (one per GT slot), then R blocks of
G_max ray negatives (block r holds slot j's r-th negative at ``G_max * (1 + r) + j``). The matching
queries come after all DN queries (the mask assumes the DN queries FIRST).

Axis names: B batch, G GT slots (G_max after padding), R ray negatives per slot, Qd DN queries,
C channels, K classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from sf3d.models.heads.box_coder import inverse_sigmoid, normalize_points
from sf3d.structures import LiDARBoxes

__all__ = ['DenoisingQueries', 'DNLayout', 'BACKGROUND', 'PADDING']

BACKGROUND = -1  # target label of a ray negative
PADDING = -2  # target label of a padded GT slot (no loss)


@dataclass(frozen=True)
class DNLayout:
    """Where the DN queries of one batch sit: ``num_groups`` groups of ``group_size`` queries each,
    ``valid`` (B, Qd) False on padded slots."""
    num_groups: int
    group_size: int
    valid: Tensor

    def attn_mask(self, num_match: int, device: torch.device | str | None = None) -> Tensor:
        """Self-attention mask (B, 1, Qd + num_match, Qd + num_match) bool, True = may attend, for
        the DN queries FIRST and then ``num_match`` matching queries: a matching query sees only
        matching queries; a DN query sees its own group's valid queries and all matching queries;
        padded DN queries are hidden as keys. The diagonal is always True (every row attends)."""
        if num_match < 0:
            raise ValueError(f'DNLayout.attn_mask: num_match must be >= 0, got {num_match}')
        device = self.valid.device if device is None else device
        qd = self.num_groups * self.group_size
        total = qd + num_match
        group = torch.arange(total, device=device) // self.group_size  # (T,)
        group[qd:] = self.num_groups  # the matching queries form one more "group"
        allowed = (group[:, None] == group[None, :]) | (group[None, :] == self.num_groups)  # (T, T)
        key_valid = torch.cat([self.valid.to(device),
                               self.valid.new_ones(self.valid.shape[0], num_match, device=device)], 1)  # (B, T)
        eye = torch.eye(total, dtype=torch.bool, device=device)  # (T, T)
        return ((allowed[None] & key_valid[:, None, :]) | eye)[:, None]  # (B, 1, T, T)


class DenoisingQueries(nn.Module):
    """Builds DN positives (and RayDN negatives) from the ground truth of a training batch.

    Args:
        embed_dims: C.
        num_classes: K; GT labels must lie in [0, K).
        pc_range: ``[x0, y0, z0, x1, y1, z1]``; references are clipped inside it.
        num_groups: noised copies of the GT per batch (fewer when they would exceed ``max_queries``).
        centre_noise: centre noise scale, in half box sizes (>= 0).
        label_noise: probability of redrawing a positive's content label (in [0, 1]).
        ray_negatives: R ray negatives per GT slot and group (>= 0).
        ray_offset: ``(a, b)``, 0 <= a < b: a ray negative lies a uniform U(a, b) metres from its GT
            centre along the ray.
        max_queries: the most DN queries per sample; a batch whose one group exceeds it gets none.

    ``forward(gt_boxes [B x (G_b, 9)], gt_labels [B x (G_b,)])`` returns None when the batch holds
    no GT (or one group would exceed ``max_queries``), else a dict:

    * ``query``, ``query_pos`` (B, Qd, C); ``ref_points`` (B, Qd, 3) metres;
    * ``labels`` (B, Qd) int64: the true class of a positive, ``BACKGROUND`` (-1) for a ray
      negative, ``PADDING`` (-2) for a padded slot;
    * ``boxes`` (B, Qd, 9): a positive's GT box ``[x, y, z_bottom, l, w, h, yaw, vx, vy]``, zeros elsewhere;
    * ``attn_mask``: :meth:`DNLayout.attn_mask`, ``(num_match, device) -> (B, 1, Qd + num_match, Qd + num_match)``.
    """

    def __init__(self, *, embed_dims: int, num_classes: int, pc_range: Sequence[float], num_groups: int = 5,
                 centre_noise: float = 0.5, label_noise: float = 0.2, ray_negatives: int = 0,
                 ray_offset: tuple[float, float] = (2.0, 6.0), max_queries: int = 1000):
        super().__init__()
        _check(embed_dims >= 1, 'embed_dims', embed_dims, '>= 1')
        _check(num_classes >= 1, 'num_classes', num_classes, '>= 1')
        _check(len(pc_range) == 6 and all(pc_range[i] < pc_range[i + 3] for i in range(3)),
               'pc_range', pc_range, '[x0, y0, z0, x1, y1, z1] with x0 < x1, y0 < y1, z0 < z1')
        _check(num_groups >= 1, 'num_groups', num_groups, '>= 1')
        _check(centre_noise >= 0, 'centre_noise', centre_noise, '>= 0')
        _check(0 <= label_noise <= 1, 'label_noise', label_noise, 'in [0, 1]')
        _check(ray_negatives >= 0, 'ray_negatives', ray_negatives, '>= 0')
        _check(len(ray_offset) == 2 and 0 <= ray_offset[0] < ray_offset[1], 'ray_offset', ray_offset,
               '(a, b) with 0 <= a < b')
        _check(max_queries >= 1, 'max_queries', max_queries, '>= 1')
        self.num_classes, self.num_groups, self.max_queries = num_classes, num_groups, max_queries
        self.pc_range = tuple(float(v) for v in pc_range)
        self.centre_noise, self.label_noise = float(centre_noise), float(label_noise)
        self.ray_negatives, self.ray_offset = ray_negatives, (float(ray_offset[0]), float(ray_offset[1]))
        self.label_embed = nn.Embedding(num_classes, embed_dims)
        self.pos_mlp = nn.Sequential(nn.Linear(3, embed_dims), nn.ReLU(inplace=True), nn.Linear(embed_dims, embed_dims))

    def forward(self, gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor]) -> dict | None:
        boxes, labels, valid = self._pad(gt_boxes, gt_labels)  # (B, G, 9), (B, G), (B, G)
        B, G = labels.shape
        R = self.ray_negatives
        num_groups = min(self.num_groups, self.max_queries // (G * (1 + R))) if G else 0
        if num_groups == 0:
            return None
        centre = LiDARBoxes(boxes.flatten(0, 1), validate=False).gravity_center.view(B, G, 3)  # (B, G, 3)
        pos_ref, pos_lab = self._positives(centre, boxes[..., 3:6] / 2, labels, num_groups)  # (B, NG, G, 3), (B, NG, G)
        neg_ref = self._ray_negatives(centre, num_groups)  # (B, NG, R, G, 3)
        ref = torch.cat([pos_ref[:, :, None], neg_ref], 2).clamp(*self._range(centre))  # (B, NG, 1+R, G, 3)
        ref = ref.reshape(B, -1, 3)  # (B, Qd, 3)
        neg_lab = labels[:, None, None].expand(B, num_groups, R, G)  # (B, NG, R, G): negatives embed the true label
        content = torch.cat([pos_lab[:, :, None], neg_lab], 2).reshape(B, -1)  # (B, Qd)
        kind = torch.cat([labels[:, None], labels.new_full((B, R, G), BACKGROUND)], 1)  # (B, 1+R, G)
        target = kind[:, None].expand(B, num_groups, 1 + R, G).reshape(B, -1)  # (B, Qd)
        slot_valid = valid[:, None, None].expand(B, num_groups, 1 + R, G).reshape(B, -1)  # (B, Qd)
        target = target.masked_fill(~slot_valid, PADDING)
        box_t = boxes[:, None, None].expand(B, num_groups, 1 + R, G, 9).reshape(B, -1, 9)  # (B, Qd, 9)
        box_t = torch.where((target >= 0)[..., None], box_t, torch.zeros_like(box_t))  # NaN vel. only on positives
        query = self.label_embed(content)  # (B, Qd, C)
        query_pos = self.pos_mlp(inverse_sigmoid(normalize_points(ref.float(), self.pc_range)))  # (B, Qd, C)
        layout = DNLayout(num_groups=num_groups, group_size=(1 + R) * G, valid=slot_valid)
        return dict(query=query, query_pos=query_pos, ref_points=ref, labels=target, boxes=box_t,
                    attn_mask=layout.attn_mask)

    def _pad(self, gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """B x (G_b, 9), B x (G_b,) -> boxes (B, G_max, 9) float32, labels (B, G_max) int64 (0 on padding),
        valid (B, G_max) bool."""
        if len(gt_boxes) != len(gt_labels):
            raise ValueError(f'DenoisingQueries: gt_boxes has {len(gt_boxes)} samples but gt_labels {len(gt_labels)}')
        for i, (b, lab) in enumerate(zip(gt_boxes, gt_labels)):
            if b.dim() != 2 or b.shape[1] != 9 or lab.shape != (b.shape[0],):
                raise ValueError(f'DenoisingQueries: sample {i}: gt_boxes must be (G, 9) with (G,) gt_labels, '
                                 f'got {tuple(b.shape)} and {tuple(lab.shape)}')
            if lab.numel() and (lab.min() < 0 or lab.max() >= self.num_classes):
                raise ValueError(f'DenoisingQueries: sample {i}: gt_labels must lie in [0, {self.num_classes}), '
                                 f'got {lab.tolist()}')
        B = len(gt_boxes)
        G = max((len(lab) for lab in gt_labels), default=0)
        device = gt_boxes[0].device if B else None
        boxes = torch.zeros(B, G, 9, device=device)
        labels = torch.zeros(B, G, dtype=torch.long, device=device)
        valid = torch.zeros(B, G, dtype=torch.bool, device=device)
        for i, (b, lab) in enumerate(zip(gt_boxes, gt_labels)):
            boxes[i, :len(lab)] = b
            labels[i, :len(lab)] = lab
            valid[i, :len(lab)] = True
        return boxes, labels, valid

    def _range(self, like: Tensor) -> tuple[Tensor, Tensor]:
        r = like.new_tensor(self.pc_range)
        return r[:3], r[3:]

    def _positives(self, centre: Tensor, half: Tensor, labels: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
        """centre, half sizes (B, G, 3), labels (B, G) -> noised references (B, NG, G, 3) and
        content labels (B, NG, G), redrawn with probability ``label_noise``."""
        B, G = labels.shape
        unit = torch.rand(B, num_groups, G, 3, device=centre.device) * 2 - 1  # (B, NG, G, 3) in [-1, 1]
        ref = centre[:, None] + unit * self.centre_noise * half[:, None]  # (B, NG, G, 3)
        redraw = torch.rand(B, num_groups, G, device=labels.device) < self.label_noise  # (B, NG, G)
        drawn = torch.randint(0, self.num_classes, (B, num_groups, G), device=labels.device)
        return ref, torch.where(redraw, drawn, labels[:, None])

    def _ray_negatives(self, centre: Tensor, num_groups: int) -> Tensor:
        """centre (B, G, 3) -> (B, NG, R, G, 3) points on the ray origin -> centre, |offset| in ray_offset."""
        B, G, _ = centre.shape
        shape = (B, num_groups, self.ray_negatives, G, 1)
        dist = centre.norm(dim=-1, keepdim=True)  # (B, G, 1)
        x_axis = centre.new_tensor([1.0, 0.0, 0.0])
        direction = torch.where(dist > 1e-6, centre / dist.clamp(min=1e-6), x_axis)  # (B, G, 3); +x at the origin
        a, b = self.ray_offset
        offset = torch.rand(shape, device=centre.device) * (b - a) + a  # (B, NG, R, G, 1)
        nearer = (torch.rand(shape, device=centre.device) < 0.5) & (offset <= dist[:, None, None])
        depth = dist[:, None, None] + torch.where(nearer, -offset, offset)  # (B, NG, R, G, 1)
        return direction[:, None, None] * depth  # (B, NG, R, G, 3)


def _check(ok: bool, name: str, value, rule: str) -> None:
    if not ok:
        raise ValueError(f'DenoisingQueries: {name} must be {rule}, got {value!r}')
