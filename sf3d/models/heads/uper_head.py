"""UPerNet decode head and the FCN auxiliary head for semantic segmentation.

Paper: Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018 (UPerNet).
This is mmsegmentation's ``UPerHead`` / ``FCNHead`` as its UperNet configs use them (Swin, PVT,
ConvNeXt on ADE20K): a pyramid pooling module (PPM, pool scales 1, 2, 3, 6) on the last level,
FPN fusion of all levels, a 3 x 3 fuse conv, dropout 0.1 and a 1 x 1 classifier; the auxiliary
FCN head takes the third level (one 3 x 3 conv, 256 channels, loss weight 0.4).

What differs from mmseg:
* plain ``Conv2d + BatchNorm2d + ReLU`` blocks (no mmcv ConvModule); the runner's
  ``sync_bn='torch'`` turns them into SyncBN for multi-GPU training. As in mmseg, training needs
  at least 2 images per BN group (pool scale 1 leaves one value per channel per image).
* The cross-entropy is averaged over the NON-ignored pixels (mmseg's ``avg_non_ignore=True``;
  its default also counts ignored pixels in the denominator), weighted by the optional class
  weights as ``F.cross_entropy`` does.
* Heads are built in plain Python by :class:`~sf3d.models.segmentors.EncoderDecoder2D` through
  ``from_backbone`` (channels read from the backbone), not through a registry.

Every head here has the interface the segmentor uses: ``forward(features, spatial_tokens=None)``
-> logits (B, K, H_0, W_0) at the first used level; ``loss(features, spatial_tokens, gt_seg)``
-> dict of scalars; ``predict_scores(features, spatial_tokens, size)`` -> per-class
probabilities (B, K, H, W) at ``size``.

Axis names: B batch, C channels, K classes, H x W a feature or image grid.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ['conv_bn_relu', 'resize', 'seg_cross_entropy', 'BaseDecodeHead', 'PPM', 'UPerHead', 'FCNHead']

IGNORE_INDEX = 255


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """``Conv2d(bias=False) -> BatchNorm2d -> ReLU`` with 'same' padding (mmcv's ConvModule default)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True))


def resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of (B, C, H, W) to ``size`` (align_corners=False); identity when equal."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False)  # (B, C, *size)


def seg_cross_entropy(logits: Tensor, gt_seg: Tensor, *, class_weight: Tensor | None = None,
                      ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-pixel cross-entropy of logits (B, K, h, w), bilinearly resized to ``gt_seg`` (B, H, W)
    int64, averaged over the pixels whose label is not ``ignore_index`` (class-weighted mean
    with ``class_weight`` (K,)). Returns 0 (with a graph) when every pixel is ignored."""
    logits = resize(logits, gt_seg.shape[-2:]).float()  # (B, K, H, W)
    if not bool((gt_seg != ignore_index).any()):
        return logits.sum() * 0.
    return F.cross_entropy(logits, gt_seg, weight=class_weight, ignore_index=ignore_index)


class BaseDecodeHead(nn.Module):
    """Shared part of the pixel-classifier heads: dropout, 1 x 1 classifier, loss, scores.

    Subclasses implement ``_fuse(features) -> (B, channels, H_0, W_0)``.

    Args:
        channels: channels of the fused map fed to the classifier.
        num_classes: K.
        dropout: ``Dropout2d`` rate before the classifier.
        class_weight: optional (K,) weights of the cross-entropy.
        loss_weight: factor on the loss.
        ignore_index: label excluded from the loss and the accuracy.
    """

    def __init__(self, *, channels: int, num_classes: int, dropout: float = 0.1,
                 class_weight: Sequence[float] | None = None, loss_weight: float = 1.0,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f'{type(self).__name__}: num_classes must be >= 1, got {num_classes}')
        if class_weight is not None and len(class_weight) != num_classes:
            raise ValueError(f'{type(self).__name__}: class_weight has {len(class_weight)} values, '
                             f'expected num_classes={num_classes}')
        self.num_classes = num_classes
        self.loss_weight = float(loss_weight)
        self.ignore_index = ignore_index
        self.register_buffer('class_weight', None if class_weight is None else
                             torch.tensor(class_weight, dtype=torch.float32), persistent=False)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def _init_weights(self) -> None:
        """mmcv ConvModule init (Kaiming normal, fan_out, ReLU), classifier N(0, 0.01)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def _fuse(self, features: Sequence[Tensor]) -> Tensor:
        raise NotImplementedError

    def forward(self, features: Sequence[Tensor], spatial_tokens: Tensor | None = None) -> Tensor:
        """features: backbone maps [(B, C_i, H_i, W_i)] -> logits (B, K, H_0, W_0)."""
        return self.conv_seg(self.dropout(self._fuse(features)))

    def loss(self, features: Sequence[Tensor], spatial_tokens: Tensor | None, gt_seg: Tensor) -> dict[str, Tensor]:
        """gt_seg (B, H, W) int64 at the input size -> ``dict(loss_ce, acc_seg)``; ``acc_seg`` is the
        pixel accuracy in percent over non-ignored pixels (logged, not optimised)."""
        logits = self(features, spatial_tokens)  # (B, K, h, w)
        loss = seg_cross_entropy(logits, gt_seg, class_weight=self.class_weight, ignore_index=self.ignore_index)
        with torch.no_grad():
            pred = resize(logits, gt_seg.shape[-2:]).argmax(1)  # (B, H, W)
            valid = gt_seg != self.ignore_index
            acc = (pred[valid] == gt_seg[valid]).float().mean() * 100 if valid.any() else logits.new_zeros(())
        return dict(loss_ce=self.loss_weight * loss, acc_seg=acc)

    def predict_scores(self, features: Sequence[Tensor], spatial_tokens: Tensor | None,
                       size: Sequence[int]) -> Tensor:
        """Softmax class probabilities (B, K, *size), logits bilinearly resized first."""
        return resize(self(features, spatial_tokens), size).float().softmax(dim=1)


class PPM(nn.Module):
    """Pyramid pooling: ``x`` (B, C_in, H, W) -> ``[x] + [up(conv1x1(avgpool_s(x)))]`` concatenated
    -> (B, C_in + len(pool_scales) * channels, H, W)."""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int]):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn_relu(in_channels, channels, 1)) for s in pool_scales)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x] + [resize(stage(x), x.shape[-2:]) for stage in self.stages], dim=1)


class UPerHead(BaseDecodeHead):
    """UPerNet head: PPM on the last level, FPN fusion of all levels, fuse conv, classifier.

    Args:
        in_channels: channels of every input level (finest first), e.g. the backbone's
            ``out_channels``.
        channels: width of every conv (512 in mmseg's UperNet configs).
        pool_scales: PPM output sizes.
        num_classes, dropout, class_weight, loss_weight, ignore_index: :class:`BaseDecodeHead`.

    ``forward(features)``: len(in_channels) maps (B, in_channels[i], H_i, W_i), any sizes.
    Returns logits (B, K, H_0, W_0) at the first level's size.
    """

    def __init__(self, *, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1,
                 class_weight: Sequence[float] | None = None, loss_weight: float = 1.0,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__(channels=channels, num_classes=num_classes, dropout=dropout, class_weight=class_weight,
                         loss_weight=loss_weight, ignore_index=ignore_index)
        self.in_channels = [int(c) for c in in_channels]
        if len(self.in_channels) < 1:
            raise ValueError('UPerHead: in_channels must list at least one level')
        last = self.in_channels[-1]
        self.psp = PPM(last, channels, pool_scales)
        self.psp_bottleneck = conv_bn_relu(last + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in self.in_channels[:-1])
        self.fpn_convs = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in self.in_channels[:-1])
        self.fpn_bottleneck = conv_bn_relu(len(self.in_channels) * channels, channels, 3)
        self._init_weights()

    @classmethod
    def from_backbone(cls, backbone: nn.Module, **kwargs) -> UPerHead:
        """Build on all of ``backbone.out_channels``."""
        return cls(in_channels=kwargs.pop('in_channels', backbone.out_channels), **kwargs)

    def _fuse(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) != len(self.in_channels):
            raise ValueError(f'UPerHead: got {len(features)} feature maps, expected {len(self.in_channels)} '
                             f'(in_channels={self.in_channels})')
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features[:-1])]  # (B, C, H_i, W_i) each
        laterals.append(self.psp_bottleneck(self.psp(features[-1])))
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        return self.fpn_bottleneck(torch.cat([resize(x, size) for x in outs], dim=1))  # (B, C, H_0, W_0)


class FCNHead(BaseDecodeHead):
    """FCN head on one level (mmseg's auxiliary head of UperNet: ``in_index=2``, 256 channels,
    one conv, loss weight 0.4, no input concat).

    Args:
        in_channels: channels of the chosen level.
        in_index: which of the backbone's feature maps to use.
        channels: width of the convs.
        num_convs: number of 3 x 3 ``conv_bn_relu`` blocks (>= 1).
        num_classes, dropout, class_weight, loss_weight, ignore_index: :class:`BaseDecodeHead`.
    """

    def __init__(self, *, in_channels: int, num_classes: int, in_index: int = 2, channels: int = 256,
                 num_convs: int = 1, dropout: float = 0.1, class_weight: Sequence[float] | None = None,
                 loss_weight: float = 0.4, ignore_index: int = IGNORE_INDEX):
        super().__init__(channels=channels, num_classes=num_classes, dropout=dropout, class_weight=class_weight,
                         loss_weight=loss_weight, ignore_index=ignore_index)
        if num_convs < 1:
            raise ValueError(f'FCNHead: num_convs must be >= 1, got {num_convs}')
        self.in_index = in_index
        self.convs = nn.Sequential(*[conv_bn_relu(in_channels if i == 0 else channels, channels, 3)
                                     for i in range(num_convs)])
        self._init_weights()

    @classmethod
    def from_backbone(cls, backbone: nn.Module, **kwargs) -> FCNHead:
        """Build on ``backbone.out_channels[in_index]``."""
        in_index = kwargs.pop('in_index', 2)
        n = len(backbone.out_channels)
        if not -n <= in_index < n:
            raise ValueError(f'FCNHead: in_index={in_index} but the backbone returns {n} feature maps')
        return cls(in_channels=kwargs.pop('in_channels', backbone.out_channels[in_index]), in_index=in_index,
                   **kwargs)

    def _fuse(self, features: Sequence[Tensor]) -> Tensor:
        return self.convs(features[self.in_index])  # (B, C, H_i, W_i)
