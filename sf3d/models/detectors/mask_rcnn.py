"""Mask R-CNN (He et al., "Mask R-CNN", ICCV 2017) on a SpatialFormer + FPN backbone, assembled
from torchvision's Mask R-CNN pieces (anchor generator, RPN, multi-scale RoIAlign, box coder,
box and mask heads, losses, post-processing) instead of a re-implementation.

Paper setting (SpatialFormer supplementary Sec. 3, the PVT / Swin COCO protocol): ImageNet
backbone + FPN (256 channels, P2-P5 and a max-pooled P6), AdamW lr 1e-4, weight decay 0.05,
total batch 16; 1x = 12 epochs (lr x0.1 after epochs 8 and 11) at a 1333 x 800 single scale,
3x = 36 epochs (x0.1 after 27 and 33) with multi-scale training (shorter side 480-800, longer
side <= 1333).

Images arrive normalised and padded from ``ImageDataPreprocessor`` (sf3d's 2D data contract),
so torchvision's ``GeneralizedRCNNTransform`` (resize + normalise) is not used: the batch
becomes an ``ImageList(inputs, img_shapes)``, the FPN levels an ``OrderedDict('0'..'3',
'pool')``, and ``rpn`` / ``roi_heads`` run on them directly. Anchors cover the padded maps;
proposals and detections are clipped to each image's ``img_shape``.

Compared with mmdetection's ``mask_rcnn_r50_fpn`` (the reference of the paper's tables):
* same: anchors 8 x stride (32-512) at ratios 0.5 / 1 / 2 on P2-P6; RPN 0.7 / 0.3 IoU, 256
  anchors (1 / 2 positive), 2000 pre-NMS per level, NMS 0.7, 1000 proposals (torchvision's own
  default keeps 2000 in training); RoI 0.5 IoU, 512 RoIs (1 / 4 positive) with the GT boxes
  added; box coder weights (10, 10, 5, 5) = mmdet's target stds (0.1, 0.1, 0.2, 0.2) and the
  same log(1000 / 16) size clamp; FPN level of a RoI floor(4 + log2(sqrt(area) / 224)) =
  mmdet's finest_scale 56; box head 2 x FC-1024 (Shared2FCBBoxHead); mask head 4 x conv3x3-256,
  2x deconv, 1x1 per class (FCNMaskHead), 28 x 28 masks; test score > 0.05, per-class NMS 0.5,
  100 detections, mask threshold 0.5.
* different (torchvision's choices): RoIAlign with ``sampling_ratio=2`` and ``aligned=False``
  (mmdet: adaptive sampling, aligned=True); smooth-L1 (beta 1/9) box losses summed over the
  sampled anchors / RoIs and divided by their number (mmdet: L1, weight 1); soft RoIAligned mask
  targets (mmdet binarises them); RPN low-quality matches at any IoU (mmdet: >= 0.3); head
  initialisation (torchvision: default Linear init of the box head and predictor; mmdet: Xavier /
  normal(0.01) / normal(0.001)); masks are pasted with torchvision's ``paste_masks_in_image``
  (interpolate into a 1-pixel padded box) instead of mmdet's grid_sample paste.
* fixed here: anchor strides and RoIAlign scales come from the FPN's declared strides; torchvision
  infers them from ``padded size // feature size`` (wrong for P6 when the padded size is not a
  multiple of 64) and from the largest image size of the FIRST batch it sees.
* The backbone's final spatial tokens feed nothing here; their LayerNorm (``spatial_norm``) is
  frozen so that every trainable parameter gets a gradient (DDP needs no find_unused_parameters).

Labels: 0..C-1 outside, 1..C inside torchvision (0 is its background class).
Axis names: B batch, K GT objects of an image, N detections of an image, L FPN levels,
Hp x Wp padded batch size, h x w an image's ``img_shape``, H0 x W0 its ``ori_shape``.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Optional, Union

import torch
from mmengine.model import BaseModel
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, paste_masks_in_image
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import initLevelMapper

from sf3d.models.necks.fpn import FPN
from sf3d.registry import MODELS

__all__ = ['TVMaskRCNN', 'StrideAnchorGenerator', 'detections_to_original', 'RPN_DEFAULTS', 'ROI_DEFAULTS']

# keyword overrides of ``TVMaskRCNN(rpn=..., roi=...)``: torchvision MaskRCNN's ``rpn_*`` / ``box_*``
# arguments without the prefix, plus the head sizes; values follow mmdet's Mask R-CNN config.
RPN_DEFAULTS = dict(
    anchor_sizes=None,  # one tuple per FPN level; None: (8 * stride,) per level (32 ... 512)
    aspect_ratios=(0.5, 1.0, 2.0),
    pre_nms_top_n_train=2000, pre_nms_top_n_test=1000,  # per level
    post_nms_top_n_train=1000, post_nms_top_n_test=1000,  # per image
    nms_thresh=0.7, fg_iou_thresh=0.7, bg_iou_thresh=0.3,
    batch_size_per_image=256, positive_fraction=0.5, score_thresh=0.0,
)
ROI_DEFAULTS = dict(
    fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=512, positive_fraction=0.25,
    bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
    score_thresh=0.05, nms_thresh=0.5, detections_per_img=100,
    box_output_size=7, mask_output_size=14, sampling_ratio=2,
    representation_size=1024, mask_layers=(256, 256, 256, 256), mask_thresh=0.5,
)


def _merge(name: str, defaults: dict, overrides: Optional[Mapping]) -> dict:
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f'TVMaskRCNN: unknown {name} keys {unknown}; valid keys: {sorted(defaults)}')
    return {**defaults, **overrides}


class StrideAnchorGenerator(AnchorGenerator):
    """torchvision's ``AnchorGenerator`` with fixed per-level strides (the FPN's declared ones).

    torchvision divides the padded image size by each feature size instead, which gives 48 rather
    than 64 for P6 of a 96-pixel-high batch. ``forward(image_list, feature_maps)`` returns one
    (A, 4) xyxy tensor per image, A = sum over levels of H_l * W_l * anchors per location.
    """

    def __init__(self, sizes: Sequence[Sequence[int]], aspect_ratios: Sequence[Sequence[float]],
                 strides: Sequence[int]):
        super().__init__(tuple(tuple(s) for s in sizes), tuple(tuple(a) for a in aspect_ratios))
        if len(strides) != len(self.sizes):
            raise ValueError(f'StrideAnchorGenerator: {len(self.sizes)} anchor size tuples for '
                             f'{len(strides)} levels (strides {list(strides)}); give one per level')
        self.strides = tuple(int(s) for s in strides)

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ValueError(f'StrideAnchorGenerator: {len(feature_maps)} feature maps for {len(self.strides)} strides')
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        device = feature_maps[0].device
        strides = [[torch.tensor(s, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(feature_maps[0].dtype, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))  # (A, 4)
        return [anchors] * len(image_list.image_sizes)


def _roi_align(names: Sequence[str], strides: Sequence[int], output_size: int,
               sampling_ratio: int) -> MultiScaleRoIAlign:
    """torchvision's MultiScaleRoIAlign with scales and level mapper set from the strides (not inferred)."""
    pool = MultiScaleRoIAlign(featmap_names=list(names), output_size=output_size, sampling_ratio=sampling_ratio)
    pool.scales = [1.0 / s for s in strides]
    pool.map_levels = initLevelMapper(int(math.log2(strides[0])), int(math.log2(strides[-1])))
    return pool


def _build_rpn(channels: int, strides: Sequence[int], cfg: dict) -> RegionProposalNetwork:
    sizes = cfg['anchor_sizes'] or [(8 * s,) for s in strides]
    anchors = StrideAnchorGenerator(sizes, [cfg['aspect_ratios']] * len(sizes), strides)
    return RegionProposalNetwork(
        anchors, RPNHead(channels, anchors.num_anchors_per_location()[0]),
        cfg['fg_iou_thresh'], cfg['bg_iou_thresh'], cfg['batch_size_per_image'], cfg['positive_fraction'],
        dict(training=cfg['pre_nms_top_n_train'], testing=cfg['pre_nms_top_n_test']),
        dict(training=cfg['post_nms_top_n_train'], testing=cfg['post_nms_top_n_test']),
        cfg['nms_thresh'], score_thresh=cfg['score_thresh'])


def _build_roi_heads(channels: int, names: Sequence[str], strides: Sequence[int], num_classes: int,
                     with_mask: bool, cfg: dict) -> RoIHeads:
    """``num_classes`` includes torchvision's background class."""
    size, rep = cfg['box_output_size'], cfg['representation_size']
    heads = RoIHeads(
        _roi_align(names, strides, size, cfg['sampling_ratio']),
        TwoMLPHead(channels * size ** 2, rep), FastRCNNPredictor(rep, num_classes),
        cfg['fg_iou_thresh'], cfg['bg_iou_thresh'], cfg['batch_size_per_image'], cfg['positive_fraction'],
        tuple(cfg['bbox_reg_weights']), cfg['score_thresh'], cfg['nms_thresh'], cfg['detections_per_img'])
    if with_mask:
        layers = tuple(cfg['mask_layers'])
        heads.mask_roi_pool = _roi_align(names, strides, cfg['mask_output_size'], cfg['sampling_ratio'])
        heads.mask_head = MaskRCNNHeads(channels, layers, 1)
        heads.mask_predictor = MaskRCNNPredictor(layers[-1], layers[-1], num_classes)
    return heads


def detections_to_original(boxes: Tensor, scores: Tensor, labels: Tensor, masks: Optional[Tensor], *,
                           ori_shape: Sequence[int], scale_factor: Sequence[float], flip: bool = False,
                           mask_thresh: float = 0.5) -> dict[str, Tensor]:
    """One image's torchvision detections at ``img_shape`` pixels -> the contract's prediction at ``ori_shape``.

    Args:
        boxes: (N, 4) xyxy in resized-image pixels; scores (N,); labels (N,) in 1..C.
        masks: (N, 1, M, M) mask probabilities inside the boxes, or None.
        ori_shape: (H0, W0); scale_factor: (w / W0, h / H0); flip: the image was flipped horizontally.
    Returns ``dict(bboxes float32 (N, 4) xyxy clipped to (W0, H0), scores float32 (N,), labels int64
    (N,) in 0..C-1[, masks bool (N, H0, W0)])``.
    """
    H0, W0 = (int(v) for v in ori_shape)
    sx, sy = (float(v) for v in scale_factor)
    bboxes = boxes.float() / boxes.new_tensor([sx, sy, sx, sy], dtype=torch.float32)  # (N, 4)
    if flip:
        bboxes = torch.stack([W0 - bboxes[:, 2], bboxes[:, 1], W0 - bboxes[:, 0], bboxes[:, 3]], dim=1)  # (N, 4)
    bboxes[:, 0::2] = bboxes[:, 0::2].clamp(0, W0)
    bboxes[:, 1::2] = bboxes[:, 1::2].clamp(0, H0)
    out = dict(bboxes=bboxes, scores=scores.float(), labels=labels.long() - 1)
    if masks is not None:
        if flip:
            masks = masks.flip(-1)
        pasted = paste_masks_in_image(masks.float(), bboxes, (H0, W0))  # (N, 1, H0, W0)
        out['masks'] = pasted[:, 0] >= mask_thresh  # (N, H0, W0)
    return out


@MODELS.register_module()
class TVMaskRCNN(BaseModel):
    """Mask R-CNN (or Faster R-CNN with ``with_mask=False``) on a registered backbone + sf3d FPN.

    Args:
        backbone: config of a backbone returning ``dict(features=[...])`` and declaring
            ``out_channels`` / ``out_strides`` (``type='SpatialFormer'`` or ``'ResNet'``); ImageNet
            weights load through its ``init_cfg=dict(type='Pretrained', checkpoint=PATH)``.
        neck: keyword arguments of :meth:`FPN.from_backbone`; default 256 channels, 5 levels
            (P2-P5 + max-pooled P6), mmdet's Mask R-CNN FPN.
        num_classes: object classes C (without background).
        with_mask: add the mask branch (needs ``gt_masks`` in training).
        rpn / roi: overrides of :data:`RPN_DEFAULTS` / :data:`ROI_DEFAULTS` (torchvision MaskRCNN's
            ``rpn_*`` / ``box_*`` arguments without the prefix, e.g. ``rpn=dict(nms_thresh=0.7)``,
            ``roi=dict(detections_per_img=100, score_thresh=0.05)``).
        data_preprocessor: e.g. ``dict(type='ImageDataPreprocessor', ...)``.
        init_cfg: of the whole detector (e.g. a COCO checkpoint).

    ``forward(inputs, data_samples, mode)``: ``inputs`` (B, 3, Hp, Wp) normalised, zero-padded;
    ``data_samples`` a dict of B-long lists: ``img_shape`` (h, w) always (without it the whole
    padded size is used in 'tensor' mode); 'loss' also ``gt_bboxes`` float (K, 4) xyxy at
    ``img_shape``, ``gt_labels`` int64 (K,) in 0..C-1, ``gt_masks`` uint8 (K, h, w) with masks;
    'predict' also ``ori_shape`` (H0, W0), ``scale_factor`` (w / W0, h / H0), optional ``flip``
    and ``img_id``. Returns for 'loss' ``dict(loss_objectness, loss_rpn_box_reg, loss_classifier,
    loss_box_reg[, loss_mask])`` scalars; for 'predict' a list of B dicts ``img_id`` (None if not
    given), ``bboxes`` float (N, 4) xyxy, ``scores`` (N,), ``labels`` int64 (N,) in 0..C-1,
    ``masks`` bool (N, H0, W0) (with masks), all at ``ori_shape``; for 'tensor' ``dict(features=
    OrderedDict of L maps (B, C, Hp / s_l, Wp / s_l), proposals=[(P, 4)] * B, detections=[B
    torchvision dicts at img_shape pixels, labels 1..C, masks (N, 1, 28, 28) probabilities]``.
    'predict' and 'tensor' always use the test settings, 'loss' the training ones, whatever
    ``self.training`` is.
    """

    def __init__(self, *, backbone: dict, num_classes: int, neck: Optional[dict] = None, with_mask: bool = True,
                 rpn: Optional[dict] = None, roi: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f'TVMaskRCNN: num_classes must be a positive int, got {num_classes!r}')
        self.num_classes = int(num_classes)
        self.with_mask = with_mask
        self.backbone = MODELS.build(backbone)
        if hasattr(self.backbone, 'spatial_norm'):  # final spatial tokens are unused (module docstring)
            self.backbone.spatial_norm.requires_grad_(False)
        neck = dict(dict(out_channels=256, num_outs=5), **(neck or {}))
        self.neck, self.strides = FPN.from_backbone(self.backbone, **neck)
        n_used = self.neck.end_level - self.neck.start_level + 1
        n_extra = self.neck.num_outs - n_used
        self.level_names = [str(i) for i in range(n_used)] + ['pool' if j == 0 else f'pool{j}' for j in range(n_extra)]
        self.rpn_cfg = _merge('rpn', RPN_DEFAULTS, rpn)
        self.roi_cfg = _merge('roi', ROI_DEFAULTS, roi)
        channels = self.neck.out_channels
        self.rpn = _build_rpn(channels, self.strides, self.rpn_cfg)
        self.roi_heads = _build_roi_heads(channels, self.level_names[:n_used], self.strides[:n_used],
                                          self.num_classes + 1, with_mask, self.roi_cfg)

    # ------------------------------------------------------------------ forward
    def forward(self, inputs: Tensor, data_samples: Optional[dict] = None,
                mode: str = 'tensor') -> Union[dict[str, Tensor], list[dict]]:
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self._forward(inputs, data_samples)
        raise ValueError(f"TVMaskRCNN: mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def extract_feat(self, inputs: Tensor) -> OrderedDict[str, Tensor]:
        """(B, 3, Hp, Wp) -> OrderedDict of the FPN levels '0', '1', ..., 'pool': (B, C, Hp / s_l, Wp / s_l)."""
        if inputs.dim() != 4 or inputs.shape[1] != 3:
            raise ValueError(f'TVMaskRCNN: inputs must be (B, 3, Hp, Wp) normalised images, got {tuple(inputs.shape)}')
        return OrderedDict(zip(self.level_names, self.neck(self.backbone(inputs)['features'])))

    def loss(self, inputs: Tensor, data_samples: dict) -> dict[str, Tensor]:
        image_sizes = self._image_sizes(inputs, data_samples, required=True)
        targets = self._targets(inputs, data_samples, image_sizes)
        features = self.extract_feat(inputs)
        with self._heads_training(True):
            proposals, rpn_losses = self.rpn(ImageList(inputs, image_sizes), features, targets)
            _, roi_losses = self.roi_heads(features, proposals, image_sizes, targets)
        return {**rpn_losses, **roi_losses}

    def predict(self, inputs: Tensor, data_samples: dict) -> list[dict]:
        image_sizes = self._image_sizes(inputs, data_samples, required=True)
        B = len(image_sizes)
        ori_shapes, scale_factors = (self._field(data_samples, k, B) for k in ('ori_shape', 'scale_factor'))
        flips = data_samples.get('flip', [False] * B)
        img_ids = data_samples.get('img_id', [None] * B)
        detections = self._detect(self.extract_feat(inputs), inputs, image_sizes)[1]
        results = []
        for i, det in enumerate(detections):
            out = detections_to_original(det['boxes'], det['scores'], det['labels'], det.get('masks'),
                                         ori_shape=ori_shapes[i], scale_factor=scale_factors[i], flip=bool(flips[i]),
                                         mask_thresh=self.roi_cfg['mask_thresh'])
            results.append(dict(img_id=None if img_ids[i] is None else int(img_ids[i]), **out))
        return results

    def _forward(self, inputs: Tensor, data_samples: Optional[dict] = None) -> dict:
        image_sizes = self._image_sizes(inputs, data_samples, required=False)
        features = self.extract_feat(inputs)
        proposals, detections = self._detect(features, inputs, image_sizes)
        return dict(features=features, proposals=proposals, detections=detections)

    def _detect(self, features: OrderedDict, inputs: Tensor, image_sizes: list[tuple[int, int]]) -> tuple[list, list]:
        with self._heads_training(False):
            proposals, _ = self.rpn(ImageList(inputs, image_sizes), features)
            detections, _ = self.roi_heads(features, proposals, image_sizes)
        return proposals, detections

    @contextmanager
    def _heads_training(self, mode: bool):
        """torchvision picks train / test settings from ``.training``; set it for the heads only."""
        saved = self.rpn.training, self.roi_heads.training
        self.rpn.train(mode)
        self.roi_heads.train(mode)
        try:
            yield
        finally:
            self.rpn.train(saved[0])
            self.roi_heads.train(saved[1])

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _field(data_samples: Optional[dict], key: str, batch_size: int) -> list:
        if not isinstance(data_samples, Mapping) or key not in data_samples:
            have = sorted(data_samples) if isinstance(data_samples, Mapping) else type(data_samples).__name__
            raise ValueError(f"TVMaskRCNN: data_samples needs the key {key!r} (a list of {batch_size} values); "
                             f'got {have}')
        values = data_samples[key]
        if len(values) != batch_size:
            raise ValueError(f'TVMaskRCNN: data_samples[{key!r}] has {len(values)} entries for a batch of {batch_size}')
        return list(values)

    def _image_sizes(self, inputs: Tensor, data_samples: Optional[dict], required: bool) -> list[tuple[int, int]]:
        B, Hp, Wp = inputs.shape[0], inputs.shape[-2], inputs.shape[-1]
        if not required and not (isinstance(data_samples, Mapping) and 'img_shape' in data_samples):
            return [(int(Hp), int(Wp))] * B
        sizes = []
        for i, shape in enumerate(self._field(data_samples, 'img_shape', B)):
            h, w = (int(v) for v in shape[:2])
            if not (0 < h <= Hp and 0 < w <= Wp):
                raise ValueError(f'TVMaskRCNN: img_shape {(h, w)} of sample {i} does not fit the padded inputs '
                                 f'{(int(Hp), int(Wp))}')
            sizes.append((h, w))
        return sizes

    def _targets(self, inputs: Tensor, data_samples: dict, image_sizes: list[tuple[int, int]]) -> list[dict]:
        """torchvision targets: ``boxes`` float (K, 4), ``labels`` int64 (K,) in 1..C, ``masks`` uint8 (K, h, w)."""
        B, device = len(image_sizes), inputs.device
        keys = ('gt_bboxes', 'gt_labels') + (('gt_masks',) if self.with_mask else ())
        fields = {k: self._field(data_samples, k, B) for k in keys}
        paths = data_samples.get('img_path', [f'sample {i}' for i in range(B)])
        targets = []
        for i, (h, w) in enumerate(image_sizes):
            boxes = torch.as_tensor(fields['gt_bboxes'][i], dtype=torch.float32, device=device)
            labels = torch.as_tensor(fields['gt_labels'][i], device=device).long()
            if boxes.numel() == 0:
                boxes = boxes.reshape(0, 4)
            K = labels.numel()
            if boxes.shape != (K, 4) or labels.dim() != 1:
                raise ValueError(f'TVMaskRCNN: {paths[i]}: gt_bboxes must be (K, 4) and gt_labels (K,), got '
                                 f'{tuple(boxes.shape)} and {tuple(labels.shape)}')
            bad = (labels < 0) | (labels >= self.num_classes)
            if bad.any():
                raise ValueError(f'TVMaskRCNN: {paths[i]}: gt_labels must lie in 0..{self.num_classes - 1}, '
                                 f'got {labels[bad].tolist()}')
            degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
            if degenerate.any():
                raise ValueError(f'TVMaskRCNN: {paths[i]}: gt_bboxes need x2 > x1 and y2 > y1 (xyxy), got '
                                 f'{boxes[degenerate].tolist()}; filter such boxes in the pipeline')
            target = dict(boxes=boxes, labels=labels + 1)
            if self.with_mask:
                masks = torch.as_tensor(fields['gt_masks'][i], device=device)
                if masks.dim() != 3 or masks.shape[0] != K or masks.shape[1] < h or masks.shape[2] < w:
                    raise ValueError(f'TVMaskRCNN: {paths[i]}: gt_masks must be (K={K}, h, w) covering img_shape '
                                     f'{(h, w)}, got {tuple(masks.shape)}')
                target['masks'] = masks
            targets.append(target)
        return targets
