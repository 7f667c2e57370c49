"""ImageNet classifier: a backbone (SpatialFormer or any backbone returning
``dict(features=[...], spatial_tokens=...)``) + :class:`ClsHead`.

Training follows DeiT/timm: MixUp/CutMix with soft targets through ``timm.data.Mixup``
(label smoothing folded into the soft targets), plain label-smoothed cross-entropy
without it.
"""
from typing import Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from sf3d.models.heads import ClsHead
from sf3d.registry import MODELS


@MODELS.register_module()
class ImageClassifier(BaseModel):
    """Args:
        backbone: config of a registered backbone (``type='SpatialFormer'``, ...).
        head: keyword arguments of :class:`ClsHead` except ``in_channels``
            (read from ``backbone.out_channels[-1]``), e.g. ``dict(num_classes=1000)``.
        mixup: keyword arguments of ``timm.data.Mixup`` (``mixup_alpha``, ``cutmix_alpha``,
            ...); ``num_classes`` and ``label_smoothing`` are filled in. None disables it.
        label_smoothing: applied to the targets with or without MixUp.
    """

    def __init__(self, *, backbone: dict, head: dict, mixup: Optional[dict] = None,
                 label_smoothing: float = 0.0, data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.head = ClsHead(in_channels=self.backbone.out_channels[-1], **head)
        self.num_classes = head['num_classes']
        self.label_smoothing = label_smoothing
        self.mixup = (Mixup(**mixup, label_smoothing=label_smoothing, num_classes=self.num_classes)
                      if mixup else None)

    def extract_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        out = self.backbone(inputs)
        return self.head(out['features'][-1], out['spatial_tokens'])  # (B, num_classes)

    def forward(self, inputs: torch.Tensor, data_samples: Optional[dict] = None,
                mode: str = 'tensor') -> Union[Dict[str, torch.Tensor], List[dict], torch.Tensor]:
        """Args:
            inputs: (B, 3, H, W) normalised images.
            data_samples: ``dict(gt_label=LongTensor (B,), ...)`` as collated by
                ``default_collate`` from :class:`~sf3d.datasets.ImageNetFolder`.
            mode: ``'loss'`` -> ``dict(loss=...)``; ``'predict'`` -> a list of B dicts with
                ``pred_score`` (num_classes,) softmax and ``gt_label``; ``'tensor'`` -> logits.
        """
        if mode == 'tensor':
            return self.extract_logits(inputs)
        if data_samples is None or 'gt_label' not in data_samples:
            raise ValueError(f"mode '{mode}' needs data_samples with a 'gt_label' key")
        labels = torch.as_tensor(data_samples['gt_label'], device=inputs.device).long()
        if mode == 'loss':
            return dict(loss=self.loss(inputs, labels))
        if mode == 'predict':
            scores = self.extract_logits(inputs).float().softmax(dim=-1)
            return [dict(pred_score=s, gt_label=int(y)) for s, y in zip(scores, labels)]
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got '{mode}'")

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.mixup is None:
            return F.cross_entropy(self.extract_logits(inputs).float(), labels,
                                   label_smoothing=self.label_smoothing)
        if inputs.shape[0] % 2:
            raise ValueError(f'MixUp/CutMix needs an even batch, got {inputs.shape[0]}: set '
                             'train_dataloader.batch_size even and drop_last=True')
        inputs, soft_targets = self.mixup(inputs, labels)
        return SoftTargetCrossEntropy()(self.extract_logits(inputs).float(), soft_targets)
