"""Feature Pyramid Network (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017).

The same computation and argument names as mmdetection's ``FPN`` (lateral 1 x 1 convs,
top-down nearest upsampling and addition, 3 x 3 output convs, extra levels by stride-2
max pooling or stride-2 3 x 3 convs), so DETR3D / mmdet3d configs translate one to one.
Differences: plain ``nn.Conv2d`` (no mmcv ConvModule, no norm options); the top-down path
upsamples to the lateral's exact size, so odd feature sizes work; and, detectron2 style,
the neck can be built from what a backbone declares (:meth:`FPN.from_backbone` reads its
``out_channels`` / ``out_strides`` and returns the output strides).

Axis names: B batch, C channels, H x W feature grid of a level.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from sf3d.registry import MODELS

__all__ = ['FPN']

EXTRA_CONV_SOURCES = ('on_input', 'on_lateral', 'on_output')


@MODELS.register_module()
class FPN(nn.Module):
    """Feature pyramid over backbone levels ``start_level .. end_level``.

    Args:
        in_channels: channels of every backbone feature passed to ``forward``.
        out_channels: channels of every output level.
        num_outs: number of output levels (>= the number of used input levels); the extra
            ones are produced at strides x2, x4, ... of the coarsest used level.
        start_level: first input level used.
        end_level: last input level used (inclusive); -1 for the last one.
        add_extra_convs: False: extra levels by ``max_pool2d(kernel 1, stride 2)`` of the last
            output (Faster R-CNN); True or 'on_input' / 'on_lateral' / 'on_output': by stride-2
            3 x 3 convs, the first one applied to the last used input / lateral / output (RetinaNet,
            DETR3D: 'on_output').
        relu_before_extra_convs: ReLU before every extra conv after the first.
        in_strides: optional strides of the inputs; when given, :attr:`out_strides` lists the
            output strides (consecutive used inputs must differ by a factor 2).

    ``forward(features)``: a sequence of len(in_channels) maps (B, in_channels[i], H_i, W_i).
    Returns a tuple of ``num_outs`` maps (B, out_channels, H_i, W_i), finest first.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 5, *,
                 start_level: int = 0, end_level: int = -1, add_extra_convs: bool | str = False,
                 relu_before_extra_convs: bool = False, in_strides: Sequence[int] | None = None):
        super().__init__()
        self.in_channels = [int(c) for c in in_channels]
        n_in = len(self.in_channels)
        end = n_in - 1 if end_level == -1 else end_level
        if not 0 <= start_level <= end < n_in:
            raise ValueError(f'FPN: need 0 <= start_level <= end_level < len(in_channels) = {n_in}, '
                             f'got start_level={start_level}, end_level={end_level}')
        n_used = end - start_level + 1
        if num_outs < n_used:
            raise ValueError(f'FPN: num_outs={num_outs} is fewer than the {n_used} input levels used '
                             f'({start_level}..{end}); raise num_outs or end_level')
        if add_extra_convs is True:
            add_extra_convs = 'on_input'
        if add_extra_convs not in (False, *EXTRA_CONV_SOURCES):
            raise ValueError(f'FPN: add_extra_convs must be False, True or one of {EXTRA_CONV_SOURCES}, '
                             f'got {add_extra_convs!r}')
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.start_level, self.end_level = start_level, end
        self.add_extra_convs = add_extra_convs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.out_strides = self._output_strides(in_strides) if in_strides is not None else None

        used = self.in_channels[start_level:end + 1]
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in used)
        self.fpn_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in used)
        self.extra_convs = nn.ModuleList()
        if add_extra_convs:
            for i in range(num_outs - n_used):
                c_in = self.in_channels[end] if i == 0 and add_extra_convs == 'on_input' else out_channels
                self.extra_convs.append(nn.Conv2d(c_in, out_channels, 3, stride=2, padding=1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # mmdet's ConvModule default: Xavier uniform, zero bias
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def _output_strides(self, in_strides: Sequence[int]) -> list[int]:
        if len(in_strides) != len(self.in_channels):
            raise ValueError(f'FPN: in_strides {list(in_strides)} must have one stride per input '
                             f'({len(self.in_channels)} in_channels {self.in_channels})')
        used = [int(s) for s in in_strides[self.start_level:self.end_level + 1]]
        if any(b != 2 * a for a, b in zip(used, used[1:])):
            raise ValueError(f'FPN: consecutive input strides must double, got {used}')
        return used + [used[-1] * 2 ** (i + 1) for i in range(self.num_outs - len(used))]

    @classmethod
    def from_backbone(cls, backbone: nn.Module, out_channels: int = 256, num_outs: int | None = None,
                      **kwargs) -> tuple['FPN', list[int]]:
        """Build an FPN on what ``backbone`` declares (``out_channels``, ``out_strides``).

        ``num_outs`` defaults to the number of backbone outputs used. Returns
        ``(fpn, out_strides)``, the stride of each FPN output level.
        """
        for attr in ('out_channels', 'out_strides'):
            if not hasattr(backbone, attr):
                raise ValueError(f'FPN.from_backbone: {type(backbone).__name__} does not declare {attr!r}; '
                                 f'a backbone must list out_channels and out_strides per output')
        if num_outs is None:
            end = kwargs.get('end_level', -1)
            end = len(backbone.out_channels) - 1 if end == -1 else end
            num_outs = end - kwargs.get('start_level', 0) + 1
        fpn = cls(backbone.out_channels, out_channels, num_outs, in_strides=backbone.out_strides, **kwargs)
        return fpn, list(fpn.out_strides)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, ...]:
        if len(features) != len(self.in_channels):
            raise ValueError(f'FPN: expected {len(self.in_channels)} feature maps, got {len(features)}')
        for i, (f, c) in enumerate(zip(features, self.in_channels)):
            if f.dim() != 4 or f.shape[1] != c:
                raise ValueError(f'FPN: feature {i} must have shape (B, {c}, H, W), got {tuple(f.shape)}')
        inputs = features[self.start_level:self.end_level + 1]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]  # (B, C, H_i, W_i) each
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode='nearest')
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]  # (B, C, H_i, W_i) each
        if not self.add_extra_convs:
            while len(outs) < self.num_outs:
                outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))  # (B, C, ceil(H / 2), ceil(W / 2))
            return tuple(outs)
        source = {'on_input': inputs[-1], 'on_lateral': laterals[-1], 'on_output': outs[-1]}[self.add_extra_convs]
        for i, conv in enumerate(self.extra_convs):
            x = source if i == 0 else outs[-1]
            if i > 0 and self.relu_before_extra_convs:
                x = F.relu(x)
            outs.append(conv(x))  # (B, C, ceil(H / 2), ceil(W / 2))
        return tuple(outs)
