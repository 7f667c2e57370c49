"""Encoder-decoder semantic segmentor: a backbone + a decode head (+ an auxiliary FCN head).

mmsegmentation's ``EncoderDecoder`` (UperNet: Xiao et al., ECCV 2018; the mask-transformer head:
Mask2Former, Cheng et al., CVPR 2022, with spatial-token queries, SpatialFormer supplementary
Sec. 3), on sf3d's 2D data contract:

* ``forward(inputs (B, 3, Hp, Wp) normalised and zero-padded, data_samples=dict of lists,
  mode)``: 'loss' needs ``gt_seg_map`` [B x (Hp, Wp) int64] (labels 0..K-1, 255 ignored; the
  collate pads it with 255); 'predict' needs ``img_path``, ``ori_shape`` (H0, W0), ``img_shape``
  (h, w) and returns B dicts ``dict(img_path, pred_sem_seg=(H0, W0) int64)``; 'tensor' returns the
  per-class scores (B, K, Hp, Wp) of one whole-image pass.
* Inference undoes the padding (crops to ``img_shape``) and the resize (bilinear to
  ``ori_shape``) on the per-class scores, then takes the argmax. The scores are softmax
  probabilities (UPerHead) or Mask2Former's semantic scores (MaskTransformerHead), so averaging
  them over windows / scales / flips is meaningful (mmseg's TTA averages softmax outputs too).
* ``test_cfg``: ``mode='whole'`` (one pass) or ``mode='slide'`` with ``crop_size`` / ``stride``
  (overlapping windows, scores averaged where they overlap, as mmseg); ``aug=dict(scales=(0.5,
  0.75, 1.0, 1.25, 1.5, 1.75), flip=True)`` adds multi-scale + flip testing: the unpadded image
  is resized by each factor (bilinear, on the normalised image), padded to the backbone's size
  multiple, run (and run flipped, the scores flipped back), and the scores resized to
  ``ori_shape`` are averaged. Difference from mmseg's TTA: the factors apply to the test
  pipeline's resized image, not to the file (mmseg re-reads it at each ratio of its test scale);
  with the usual keep-ratio test resize this is the same set of sizes up to rounding.

Heads are built in plain Python from ``dict(type=..., **kwargs)`` with one of :data:`SEG_HEADS`;
channels and spatial-token geometry are read from the backbone. The auxiliary head (mmseg's
UperNet: ``dict(type='FCNHead', in_index=2, channels=256, loss_weight=0.4)``) is used only in
training. Loss keys are prefixed ``decode.`` and ``aux.``.

Axis names: B batch, K classes, Hp x Wp the padded batch, h x w an image before padding,
H0 x W0 the original image.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import Tensor

from sf3d.models.heads.mask_transformer_head import MaskTransformerHead
from sf3d.models.heads.uper_head import IGNORE_INDEX, FCNHead, UPerHead, resize
from sf3d.registry import MODELS

__all__ = ['SEG_HEADS', 'EncoderDecoder2D']

SEG_HEADS = {'UPerHead': UPerHead, 'FCNHead': FCNHead, 'MaskTransformerHead': MaskTransformerHead}
TEST_MODES = ('whole', 'slide')


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    if not isinstance(value, Sequence) or len(value) != 2 or any(int(v) != v or v < 1 for v in value):
        raise ValueError(f'EncoderDecoder2D: test_cfg.{name} must be a positive int or (h, w), got {value!r}')
    return int(value[0]), int(value[1])


def _pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad (B, C, h, w) at the bottom / right to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, math.ceil(w / multiple) * multiple - w, 0, math.ceil(h / multiple) * multiple - h))


@MODELS.register_module()
class EncoderDecoder2D(BaseModel):
    """Args:
        backbone: config of a registered backbone returning ``dict(features=[...],
            spatial_tokens=...)`` and declaring ``out_channels`` (SpatialFormer, ResNet), e.g.
            with ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` for ImageNet weights.
        decode_head: ``dict(type='UPerHead' | 'MaskTransformerHead', num_classes=K, ...)``, the
            head's keyword arguments (``in_channels`` and token geometry come from the backbone).
        auxiliary_head: None or ``dict(type='FCNHead', num_classes=K, in_index=2, ...)``.
        test_cfg: ``dict(mode='whole' | 'slide', crop_size=(h, w), stride=(h, w), aug=None |
            dict(scales=(...), flip=bool))`` (module docstring).
        data_preprocessor, init_cfg: as in mmengine's ``BaseModel``.
    """

    def __init__(self, *, backbone: dict, decode_head: dict, auxiliary_head: Optional[dict] = None,
                 test_cfg: Optional[dict] = None, data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.decode_head = self._build_head(decode_head, 'decode_head')
        self.auxiliary_head = None if auxiliary_head is None else self._build_head(auxiliary_head, 'auxiliary_head')
        self.num_classes = self.decode_head.num_classes
        if self.auxiliary_head is not None and self.auxiliary_head.num_classes != self.num_classes:
            raise ValueError(f'EncoderDecoder2D: auxiliary_head num_classes={self.auxiliary_head.num_classes} '
                             f'differs from decode_head num_classes={self.num_classes}')
        self.size_divisor = int(getattr(self.backbone, 'size_multiple', 32))
        self.test_cfg = self._check_test_cfg(test_cfg or {})

    def _build_head(self, cfg: Mapping, role: str):
        if not isinstance(cfg, Mapping) or cfg.get('type') not in SEG_HEADS:
            got = cfg.get('type') if isinstance(cfg, Mapping) else cfg
            raise ValueError(f'EncoderDecoder2D: {role} must be a dict with type one of {sorted(SEG_HEADS)}, '
                             f'got {got!r}')
        kwargs = {k: v for k, v in cfg.items() if k != 'type'}
        return SEG_HEADS[cfg['type']].from_backbone(self.backbone, **kwargs)

    def _check_test_cfg(self, cfg: Mapping) -> dict:
        unknown = set(cfg) - {'mode', 'crop_size', 'stride', 'aug'}
        mode = cfg.get('mode', 'whole')
        if unknown or mode not in TEST_MODES:
            raise ValueError(f'EncoderDecoder2D: test_cfg takes mode in {TEST_MODES}, crop_size, stride, aug; '
                             f'got {dict(cfg)}')
        out = dict(mode=mode, aug=None)
        if mode == 'slide':
            if 'crop_size' not in cfg or 'stride' not in cfg:
                raise ValueError(f"EncoderDecoder2D: test_cfg mode='slide' needs crop_size and stride, got {dict(cfg)}")
            out['crop_size'], out['stride'] = _pair(cfg['crop_size'], 'crop_size'), _pair(cfg['stride'], 'stride')
            if any(c % self.size_divisor for c in out['crop_size']):
                raise ValueError(f'EncoderDecoder2D: test_cfg.crop_size {out["crop_size"]} must be multiples of the '
                                 f"backbone's size multiple {self.size_divisor}")
        aug = cfg.get('aug')
        if aug is not None:
            scales = aug.get('scales', (1.0,)) if isinstance(aug, Mapping) else None
            if (scales is None or set(aug) - {'scales', 'flip'} or not len(scales)
                    or any(not float(s) > 0 for s in scales)):
                raise ValueError(f'EncoderDecoder2D: test_cfg.aug must be dict(scales=(positive floats), '
                                 f'flip=bool), got {aug!r}')
            out['aug'] = dict(scales=tuple(float(s) for s in scales), flip=bool(aug.get('flip', False)))
        return out

    # ------------------------------------------------------------------ forward
    def extract_feat(self, inputs: Tensor) -> tuple[list[Tensor], Optional[Tensor]]:
        """inputs (B, 3, Hp, Wp) -> (features [(B, C_i, H_i, W_i)], spatial tokens (B, M, C) or None)."""
        out = self.backbone(inputs)
        return out['features'], out.get('spatial_tokens')

    def encode_decode(self, inputs: Tensor) -> Tensor:
        """One pass: inputs (B, 3, Hp, Wp) -> per-class scores (B, K, Hp, Wp)."""
        features, tokens = self.extract_feat(inputs)
        return self.decode_head.predict_scores(features, tokens, inputs.shape[-2:])

    def forward(self, inputs: Tensor, data_samples: Optional[dict] = None,
                mode: str = 'tensor') -> Union[dict[str, Tensor], list[dict], Tensor]:
        if mode == 'tensor':
            return self.encode_decode(inputs)
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        raise ValueError(f"EncoderDecoder2D: mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    # ------------------------------------------------------------------ training
    def _gt_seg(self, inputs: Tensor, data_samples: Optional[dict]) -> Tensor:
        """Stack and check ``gt_seg_map`` -> (B, Hp, Wp) int64 on the inputs' device."""
        B, size = inputs.shape[0], tuple(inputs.shape[-2:])
        maps = (data_samples or {}).get('gt_seg_map')
        if maps is None or len(maps) != B:
            raise KeyError(f"EncoderDecoder2D: mode='loss' needs data_samples['gt_seg_map'], a list of {B} label "
                           f'maps (Hp, Wp); got {None if maps is None else len(maps)} entries')
        paths = data_samples.get('img_path', [f'#{i}' for i in range(B)])
        for path, seg in zip(paths, maps):
            if tuple(seg.shape) != size:
                raise ValueError(f'EncoderDecoder2D: gt_seg_map of {path} has shape {tuple(seg.shape)}, expected '
                                 f'the padded batch size {size}: resize it with the image in the train pipeline '
                                 'and collate with sf3d.image_collate (pads it with 255)')
        gt = torch.stack([torch.as_tensor(s) for s in maps]).to(device=inputs.device, dtype=torch.long)
        bad = (gt != IGNORE_INDEX) & ((gt < 0) | (gt >= self.num_classes))
        if bad.any():
            i = int(bad.flatten(1).any(1).nonzero()[0])
            raise ValueError(f'EncoderDecoder2D: gt_seg_map of {paths[i]} has labels {gt[i][bad[i]].unique().tolist()} '
                             f'outside 0..{self.num_classes - 1} (and {IGNORE_INDEX} = ignore)')
        return gt

    def loss(self, inputs: Tensor, data_samples: Optional[dict]) -> dict[str, Tensor]:
        """-> ``decode.*`` losses of the decode head and ``aux.*`` of the auxiliary head."""
        gt = self._gt_seg(inputs, data_samples)
        features, tokens = self.extract_feat(inputs)
        losses = {f'decode.{k}': v for k, v in self.decode_head.loss(features, tokens, gt).items()}
        if self.auxiliary_head is not None:
            losses.update({f'aux.{k}': v for k, v in self.auxiliary_head.loss(features, tokens, gt).items()})
        return losses

    # ------------------------------------------------------------------ inference
    def slide_inference(self, inputs: Tensor) -> Tensor:
        """Overlapping ``crop_size`` windows every ``stride`` (the last one flush with the border) ->
        scores (B, K, Hp, Wp) averaged over the windows covering each pixel."""
        (h_crop, w_crop), (h_stride, w_stride) = self.test_cfg['crop_size'], self.test_cfg['stride']
        B, _, H, W = inputs.shape
        h_grids = max(H - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(W - w_crop + w_stride - 1, 0) // w_stride + 1
        scores = inputs.new_zeros(B, self.num_classes, H, W)
        count = inputs.new_zeros(1, 1, H, W)
        for i in range(h_grids):
            for j in range(w_grids):
                y2, x2 = min(i * h_stride + h_crop, H), min(j * w_stride + w_crop, W)
                y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
                scores[:, :, y1:y2, x1:x2] += self.encode_decode(inputs[:, :, y1:y2, x1:x2])
                count[:, :, y1:y2, x1:x2] += 1
        return scores / count

    def inference(self, inputs: Tensor) -> Tensor:
        """Whole-image or sliding-window scores (B, K, Hp, Wp) of padded inputs (B, 3, Hp, Wp)."""
        if self.test_cfg['mode'] == 'slide':
            return self.slide_inference(inputs)
        return self.encode_decode(inputs)

    def aug_scores(self, image: Tensor, ori_shape: Sequence[int]) -> Tensor:
        """Multi-scale (+ flip) scores of ONE unpadded image (1, 3, h, w) -> (K, H0, W0), the mean over
        every scale (and flip) of the scores cropped to the scaled image and resized to ``ori_shape``."""
        aug = self.test_cfg['aug']
        h, w = image.shape[-2:]
        total, n = 0., 0
        for scale in aug['scales']:
            size = (max(int(h * scale + 0.5), 1), max(int(w * scale + 0.5), 1))
            x = resize(image, size)  # (1, 3, h_s, w_s)
            if aug['flip']:
                x = torch.cat([x, x.flip(-1)])  # (2, 3, h_s, w_s)
            scores = self.inference(_pad_to_multiple(x, self.size_divisor))[..., :size[0], :size[1]]
            if aug['flip']:
                scores = torch.stack([scores[0], scores[1].flip(-1)])  # (2, K, h_s, w_s)
            total = total + resize(scores, ori_shape).sum(0)  # (K, H0, W0)
            n += scores.shape[0]
        return total / n

    def predict_scores(self, inputs: Tensor, data_samples: Optional[dict]) -> list[Tensor]:
        """-> per image the class scores (K, H0, W0) in original image pixels."""
        B = inputs.shape[0]
        missing = [k for k in ('ori_shape', 'img_shape') if not data_samples or len(data_samples.get(k) or ()) != B]
        if missing:
            raise KeyError(f"EncoderDecoder2D: mode='predict' needs data_samples with {missing} for each of the "
                           f'{B} images')
        shapes = [(tuple(int(v) for v in o), tuple(int(v) for v in s))
                  for o, s in zip(data_samples['ori_shape'], data_samples['img_shape'])]
        if self.test_cfg['aug'] is None:
            scores = self.inference(inputs)  # (B, K, Hp, Wp)
            out = [resize(scores[b:b + 1, :, :h, :w], ori)[0] for b, (ori, (h, w)) in enumerate(shapes)]
        else:
            out = [self.aug_scores(inputs[b:b + 1, :, :h, :w], ori) for b, (ori, (h, w)) in enumerate(shapes)]
        flips = data_samples.get('flip')
        flips = [False] * B if flips is None else [bool(f) for f in flips]
        return [s.flip(-1) if f else s for s, f in zip(out, flips)]  # back to the file's orientation

    def predict(self, inputs: Tensor, data_samples: Optional[dict]) -> list[dict]:
        """-> B dicts ``dict(img_path, pred_sem_seg=(H0, W0) int64)``."""
        scores = self.predict_scores(inputs, data_samples)
        paths = data_samples.get('img_path')
        paths = [None] * len(scores) if paths is None else paths
        return [dict(img_path=p, pred_sem_seg=s.argmax(0)) for p, s in zip(paths, scores)]
