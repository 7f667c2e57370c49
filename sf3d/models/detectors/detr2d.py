"""DETR-style 2D detector whose initial object queries are SpatialFormer's output spatial tokens.

Paper: SpatialFormer (supplementary Sec. 3, COCO): a transformer-decoder detector with
set-prediction loss and Hungarian matching whose initial object queries are the backbone's
output spatial tokens, compared with the same detector with learned queries.

Model: backbone -> FPN (default: strides 8 / 16 / 32) -> :class:`DETR2DHead` (flattened
multi-scale memory with sin-cos + level positions, decoder with iterative box refinement,
focal + L1 + GIoU losses at every layer, top-100 decoding). Two query modes, the model being the
same otherwise:

* ``query_mode='spatial_tokens'``: the M = gh * gw final spatial tokens (B, M, C_last) become the M
  queries. Content: ``Linear(C_last -> embed_dims)`` of the token. Initial reference box: the
  token's grid cell (SpatialFormer's token ``i * gw + j`` sits at cell (i, j) of the PADDED input
  it sees; the cell is clipped to the image and normalised by ``img_shape``), moved in
  inverse-sigmoid space by a small MLP of the token (``token_ref_refine``, zero-initialised, so
  training starts at the cells).
* ``query_mode='learned'`` (the DETR / DAB-DETR baseline): ``nn.Embedding(num_queries, C)``
  content and learned reference boxes ``sigmoid(nn.Embedding(num_queries, 4))``, centres
  initialised uniformly over the image and sizes to ``1 / sqrt(num_queries)`` (the cell size of a
  square token grid). ``num_queries`` defaults to M for a like-for-like comparison. The backbone's
  final ``spatial_norm`` then gets no gradient: DDP needs ``find_unused_parameters=True``.

What differs from DETR / Deformable DETR: deformable cross-attention around each reference box
written with ``grid_sample`` (no compiled ops, see :mod:`detr2d_head`), no encoder by default,
and the number of queries is the number of spatial tokens (pick the backbone's ``spatial_grid``
for the count, e.g. 10 x 10 = 100, DETR's).

Data contract (``sf3d.image_collate`` + ``ImageDataPreprocessor``): ``inputs`` (B, 3, Hp, Wp)
normalised, padded images; ``data_samples`` a dict of B-lists with ``img_shape`` (h, w),
``scale_factor`` (w / W0, h / H0), ``ori_shape`` (H0, W0), ``flip``, ``img_id`` and, for the loss,
``gt_bboxes`` (G, 4) xyxy in ``img_shape`` pixels and ``gt_labels`` (G,).

Axis names: B batch, Q queries, M = gh * gw spatial tokens, C channels, D decoder layers,
K classes, G ground-truth boxes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModel
from torch import Tensor
from torchvision.ops import box_convert

from sf3d.models.heads.box_coder import inverse_sigmoid
from sf3d.models.heads.detr2d_head import DETR2DHead
from sf3d.models.layers import Mlp
from sf3d.models.necks.fpn import FPN
from sf3d.registry import MODELS

__all__ = ['DETR2D', 'token_cell_boxes', 'to_original_boxes']

QUERY_MODES = ('spatial_tokens', 'learned')
MIN_BOX_SIZE = 1e-3  # normalised; keeps the logit of a cell clipped to nothing finite


def token_cell_boxes(grid: Sequence[int], pad_shape: Sequence[int], img_shapes: Tensor) -> Tensor:
    """Grid cells of the spatial tokens as reference boxes.

    Args:
        grid: (gh, gw); token ``i * gw + j`` covers rows [i Hp / gh, (i + 1) Hp / gh) and columns
            [j Wp / gw, (j + 1) Wp / gw) of the padded input ``pad_shape`` (Hp, Wp).
        img_shapes: (B, 2) (h, w) of each image before padding.
    Returns:
        (B, M, 4) normalised (cx, cy, w, h): each cell clipped to its image and divided by (w, h);
        sizes at least ``MIN_BOX_SIZE``.
    """
    gh, gw = grid
    Hp, Wp = pad_shape
    dev = img_shapes.device
    ys = torch.arange(gh + 1, device=dev, dtype=torch.float32) * (Hp / gh)  # (gh + 1,) cell edges
    xs = torch.arange(gw + 1, device=dev, dtype=torch.float32) * (Wp / gw)  # (gw + 1,)
    y0, x0 = torch.meshgrid(ys[:-1], xs[:-1], indexing='ij')  # (gh, gw) each
    y1, x1 = torch.meshgrid(ys[1:], xs[1:], indexing='ij')
    xyxy = torch.stack([x0, y0, x1, y1], -1).flatten(0, 1)  # (M, 4) pixels
    h, w = img_shapes.float().unbind(-1)  # (B,) each
    xyxy = (xyxy / torch.stack([w, h, w, h], -1)[:, None]).clamp(0, 1)  # (B, M, 4)
    cxcywh = box_convert(xyxy, 'xyxy', 'cxcywh')  # (B, M, 4)
    return torch.cat([cxcywh[..., :2], cxcywh[..., 2:].clamp(min=MIN_BOX_SIZE)], -1)


def to_original_boxes(boxes: Tensor, img_shape: Sequence[float], scale_factor: Sequence[float],
                      ori_shape: Sequence[int], flip: bool = False) -> Tensor:
    """(N, 4) normalised cxcywh -> (N, 4) xyxy in ORIGINAL image pixels.

    Scales by ``img_shape`` (h, w), clips to the image (drops the padding), undoes a horizontal flip
    in ``img_shape`` pixels, divides by ``scale_factor`` (sx, sy) and clips to ``ori_shape`` (H0, W0).
    """
    h, w = float(img_shape[0]), float(img_shape[1])
    sx, sy = float(scale_factor[0]), float(scale_factor[1])
    xyxy = box_convert(boxes.float(), 'cxcywh', 'xyxy') * boxes.new_tensor([w, h, w, h])  # (N, 4) img_shape pixels
    xyxy = torch.minimum(xyxy.clamp(min=0), boxes.new_tensor([w, h, w, h]))
    if flip:
        xyxy = torch.stack([w - xyxy[:, 2], xyxy[:, 1], w - xyxy[:, 0], xyxy[:, 3]], -1)  # (N, 4)
    xyxy = xyxy / boxes.new_tensor([sx, sy, sx, sy])
    H0, W0 = float(ori_shape[0]), float(ori_shape[1])
    return torch.minimum(xyxy, boxes.new_tensor([W0, H0, W0, H0]))


@MODELS.register_module()
class DETR2D(BaseModel):
    """Set-prediction 2D detector (see the module docstring).

    Args:
        backbone: config of a registered backbone (``type='SpatialFormer'``, may carry
            ``init_cfg=dict(type='Pretrained', checkpoint=PATH)``); it must declare ``out_channels`` /
            ``out_strides`` and return ``dict(features=[...], spatial_tokens=...)``.
        head: keyword arguments of :class:`DETR2DHead` (``num_classes`` required; ``embed_dims`` and
            ``num_levels`` are filled in).
        neck: keyword arguments of :meth:`FPN.from_backbone`; ``start_level`` defaults to the first
            backbone output at stride >= 8 (strides 8 / 16 / 32 for SpatialFormer); ``out_channels``
            must equal ``embed_dims``.
        query_mode: ``'spatial_tokens'`` (needs spatial tokens) or ``'learned'``.
        num_queries: learned queries (``'learned'`` only); None takes the backbone's M.
        token_ref_refine: in ``'spatial_tokens'`` mode, move each cell box by an MLP of its token.
        embed_dims: decoder width C.
        data_preprocessor, init_cfg: as in mmengine's ``BaseModel``.
    """

    def __init__(self, *, backbone: dict, head: dict, neck: Optional[dict] = None, query_mode: str = 'spatial_tokens',
                 num_queries: Optional[int] = None, token_ref_refine: bool = True, embed_dims: int = 256,
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if query_mode not in QUERY_MODES:
            raise ValueError(f'DETR2D: query_mode must be one of {QUERY_MODES}, got {query_mode!r}')
        self.query_mode = query_mode
        self.embed_dims = embed_dims
        self.backbone = MODELS.build(backbone)
        num_tokens = getattr(self.backbone, 'num_spatial_tokens', None)
        if query_mode == 'spatial_tokens' and (num_tokens is None or num_queries not in (None, num_tokens)):
            raise ValueError(f"DETR2D: query_mode='spatial_tokens' needs a backbone with spatial tokens and takes one query "
                             f'per token (num_queries None or {num_tokens}); got {type(self.backbone).__name__} '
                             f'and num_queries={num_queries}')
        self.num_queries = num_tokens if num_queries is None else int(num_queries)
        if query_mode == 'learned' and (self.num_queries or 0) < 1:
            raise ValueError(f'DETR2D: learned queries need num_queries >= 1 (or a backbone with spatial tokens '
                             f'to take M from), got num_queries={num_queries}')

        strides = list(getattr(self.backbone, 'out_strides', ()))
        first = next((i for i, s in enumerate(strides) if s >= 8), 0)  # default: the levels at strides >= 8
        neck = dict(dict(start_level=first, out_channels=embed_dims), **(neck or {}))
        if neck['out_channels'] != embed_dims:
            raise ValueError(f'DETR2D: neck out_channels ({neck["out_channels"]}) must equal embed_dims '
                             f'({embed_dims}); the memory is the FPN output')
        self.neck, self.feat_strides = FPN.from_backbone(self.backbone, **neck)
        head = dict(head)
        for key, value in (('embed_dims', embed_dims), ('num_levels', self.neck.num_outs)):
            if head.setdefault(key, value) != value:
                raise ValueError(f"DETR2D: head {key}={head[key]} differs from the detector's {value}")
        self.head = DETR2DHead(**head)

        if query_mode == 'spatial_tokens':
            c_last = self.backbone.embed_dims[-1]
            self.query_proj = nn.Linear(c_last, embed_dims)
            self.token_ref = Mlp(c_last, embed_dims, 4, act_layer=nn.ReLU) if token_ref_refine else None
            if self.token_ref is not None:
                nn.init.zeros_(self.token_ref.fc2.weight)
                nn.init.zeros_(self.token_ref.fc2.bias)
        else:
            self.query_embed = nn.Embedding(self.num_queries, embed_dims)
            self.ref_embed = nn.Embedding(self.num_queries, 4)  # logits of normalised (cx, cy, w, h)
            with torch.no_grad():
                self.ref_embed.weight[:, :2] = inverse_sigmoid(torch.rand(self.num_queries, 2))
                self.ref_embed.weight[:, 2:] = inverse_sigmoid(torch.tensor(1 / math.sqrt(self.num_queries)))

    # ------------------------------------------------------------------ queries and outputs
    def initial_queries(self, tokens: Optional[Tensor], img_shapes: Tensor,
                        pad_shape: Sequence[int]) -> tuple[Tensor, Tensor]:
        """-> query content (B, Q, C) and initial reference boxes (B, Q, 4) normalised cxcywh.

        ``tokens`` (B, M, C_last) final spatial tokens (unused in ``'learned'`` mode); ``img_shapes``
        (B, 2) (h, w); ``pad_shape`` (Hp, Wp) of the input."""
        B = img_shapes.shape[0]
        if self.query_mode == 'learned':
            # repeat, not expand: a no-grad view of a parameter breaks FlopCounterMode's module tracker
            return (self.query_embed.weight.repeat(B, 1, 1),
                    self.ref_embed.weight.sigmoid().repeat(B, 1, 1))  # (B, Q, C), (B, Q, 4)
        cells = token_cell_boxes(self.backbone.spatial_grid, pad_shape, img_shapes)  # (B, M, 4)
        ref = cells
        if self.token_ref is not None:
            ref = (inverse_sigmoid(cells) + self.token_ref(tokens).float()).sigmoid()  # (B, M, 4)
        return self.query_proj(tokens), ref

    def forward_outputs(self, inputs: Tensor, img_shapes: Tensor, dn: Optional[dict] = None) -> dict:
        """Backbone, FPN, queries, head -> :meth:`DETR2DHead.forward`'s dict + ``init_boxes`` (B, Q, 4);
        ``dn``: the head's denoising queries (training only)."""
        out = self.backbone(inputs)
        feats = self.neck(out['features'])  # L x (B, C, h_l, w_l)
        query, ref = self.initial_queries(out.get('spatial_tokens'), img_shapes, inputs.shape[-2:])
        outputs = self.head(query, ref, feats, self.feat_strides, img_shapes, dn=dn)
        outputs['init_boxes'] = ref
        return outputs

    # ------------------------------------------------------------------ mmengine interface
    def forward(self, inputs: Tensor, data_samples: Optional[dict] = None,
                mode: str = 'tensor') -> Union[dict, list]:
        """Run the detector.

        Args:
            inputs: (B, 3, Hp, Wp) normalised images, Hp and Wp multiples of 32.
            data_samples: the collated dict of B-lists (module docstring); ``img_shape`` defaults to
                (Hp, Wp) in ``'tensor'`` mode.
            mode: ``'loss'``, ``'predict'`` or ``'tensor'``.
        Returns:
            ``'loss'``: :meth:`DETR2DHead.loss`'s dict (``loss_cls``, ``loss_bbox``, ``loss_giou`` and
            ``d{i}.`` versions; ``loss_dn_*`` too when the head has ``dn_groups``: denoising queries
            made from the batch's GT run beside the object queries, masked from them).
            ``'predict'``: B dicts ``img_id`` (or None), ``bboxes`` (k, 4) xyxy float in ORIGINAL
            pixels, ``scores`` (k,), ``labels`` (k,) int64, k = min(100, Q * K).
            ``'tensor'``: ``all_cls_scores`` (D, B, Q, K) logits, ``all_bbox_preds`` (D, B, Q, 4) and
            ``init_boxes`` (B, Q, 4), boxes normalised cxcywh.
        """
        if mode not in ('loss', 'predict', 'tensor'):
            raise ValueError(f"DETR2D: mode must be 'loss', 'predict' or 'tensor', got {mode!r}")
        if not isinstance(inputs, Tensor) or inputs.dim() != 4 or inputs.shape[1] != 3:
            raise ValueError(f'DETR2D: inputs must be a float Tensor (B, 3, Hp, Wp), got '
                             f'{tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__}')
        B = inputs.shape[0]
        img_shapes = self._img_shapes(data_samples, B, tuple(inputs.shape[-2:]), mode, inputs.device)
        if mode == 'loss':
            boxes, labels = self._targets(data_samples, img_shapes, inputs.device)
            outputs = self.forward_outputs(inputs, img_shapes, self.head.denoising_queries(boxes, labels))
            return self.head.loss(outputs, boxes, labels)
        outputs = self.forward_outputs(inputs, img_shapes)
        if mode == 'tensor':
            return outputs
        return self.predict(outputs, data_samples)

    def _img_shapes(self, data_samples: Optional[dict], B: int, pad_shape: tuple[int, int], mode: str,
                    device: torch.device) -> Tensor:
        if not data_samples or 'img_shape' not in data_samples:
            if mode != 'tensor':
                raise KeyError(f"DETR2D: mode {mode!r} needs data_samples with 'img_shape' (collate with "
                               'sf3d.image_collate)')
            return torch.tensor([pad_shape] * B, dtype=torch.float32, device=device)
        shapes = torch.as_tensor([[float(s[0]), float(s[1])] for s in data_samples['img_shape']],
                                 dtype=torch.float32, device=device)  # (B, 2)
        if shapes.shape != (B, 2) or (shapes <= 0).any() or (shapes > shapes.new_tensor(pad_shape)).any():
            raise ValueError(f"DETR2D: data_samples['img_shape'] must hold B={B} positive (h, w) within the padded "
                             f'input {pad_shape}, got {data_samples["img_shape"]}')
        return shapes

    def _targets(self, data_samples: dict, img_shapes: Tensor, device: torch.device) -> tuple[list, list]:
        """``gt_bboxes`` (xyxy pixels of ``img_shape``) and ``gt_labels``, checked -> B (G, 4) normalised
        cxcywh boxes and B (G,) int64 labels."""
        missing = [k for k in ('gt_bboxes', 'gt_labels') if k not in data_samples]
        if missing:
            raise KeyError(f"DETR2D: mode 'loss' needs data_samples keys {missing} (Pack2DInputs)")
        B = img_shapes.shape[0]
        if len(data_samples['gt_bboxes']) != B or len(data_samples['gt_labels']) != B:
            raise ValueError(f"DETR2D: {B} images but {len(data_samples['gt_bboxes'])} gt_bboxes and "
                             f"{len(data_samples['gt_labels'])} gt_labels")
        boxes, labels = [], []
        for i, (b, lab, hw) in enumerate(zip(data_samples['gt_bboxes'], data_samples['gt_labels'], img_shapes)):
            b = torch.as_tensor(b, dtype=torch.float32, device=device)
            lab = torch.as_tensor(lab, device=device).long().reshape(-1)
            b = b.reshape(0, 4) if b.numel() == 0 else b
            if b.dim() != 2 or b.shape[1] != 4 or b.shape[0] != lab.shape[0]:
                raise ValueError(f'DETR2D: sample {i}: gt_bboxes must be (G, 4) xyxy with G gt_labels, got '
                                 f'{tuple(b.shape)} boxes and {lab.shape[0]} labels')
            if not torch.isfinite(b).all() or (b[:, 2:] < b[:, :2]).any():
                raise ValueError(f'DETR2D: sample {i}: gt_bboxes must be finite xyxy with x2 >= x1, y2 >= y1, '
                                 f'got {b.tolist()}')
            if lab.numel() and (lab.min() < 0 or lab.max() >= self.head.num_classes):
                raise ValueError(f'DETR2D: sample {i}: gt_labels must be in [0, {self.head.num_classes}), '
                                 f'got {lab.tolist()}')
            h, w = hw.tolist()
            boxes.append(box_convert(b / b.new_tensor([w, h, w, h]), 'xyxy', 'cxcywh'))  # (G, 4) normalised
            labels.append(lab)
        return boxes, labels

    def predict(self, outputs: dict, data_samples: dict) -> list[dict]:
        """Top-k detections of the last layer in ORIGINAL image pixels (see :meth:`forward`)."""
        missing = [k for k in ('img_shape', 'scale_factor', 'ori_shape') if k not in data_samples]
        if missing:
            raise KeyError(f"DETR2D: mode 'predict' needs data_samples keys {missing} (Pack2DInputs)")
        preds = self.head.predict(outputs)
        B = len(preds)
        img_ids = data_samples.get('img_id', [None] * B)
        flips = data_samples.get('flip', [False] * B)
        results = []
        for b, p in enumerate(preds):
            boxes = to_original_boxes(p['boxes'], data_samples['img_shape'][b], data_samples['scale_factor'][b],
                                      data_samples['ori_shape'][b], bool(flips[b]))
            img_id = img_ids[b]
            results.append(dict(img_id=None if img_id is None else int(img_id), bboxes=boxes,
                                scores=p['scores'], labels=p['labels']))
        return results
