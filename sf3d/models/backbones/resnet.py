"""ResNet-50/101 backbone for the DETR3D baselines (He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016), wrapping torchvision's implementation.

What differs from torchvision's ``resnet50`` / ``resnet101``: no classifier (``avgpool`` /
``fc`` are dropped), the stage outputs ``out_indices`` are returned in SpatialFormer's backbone
contract (``dict(features=[...], spatial_tokens=None)``, declared ``out_channels`` /
``out_strides``), and mmdetection's fine-tuning options are provided (``frozen_stages``,
``norm_eval``). The torchvision module names are kept, so torchvision state dicts load
as they are.

Pretrained weights are NOT downloaded here. Save them once on a machine with internet::

    import torch, torchvision
    w = torchvision.models.ResNet50_Weights.IMAGENET1K_V2   # or ResNet101_Weights.IMAGENET1K_V2
    torch.save(w.get_state_dict(progress=True), 'checkpoints/resnet50_tv.pth')

and pass ``pretrained='checkpoints/resnet50_tv.pth'``. (DETR3D's published R101 numbers use
deformable convs in the last stages, which need mmcv's compiled ops; this wrapper has none.)

Axis names: B batch, C channels, H x W image size.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch.nn as nn
from torch import Tensor
from torchvision.models.resnet import resnet50, resnet101

from sf3d.registry import MODELS
from sf3d.utils.checkpoint import load_state_dict_strict, read_checkpoint

__all__ = ['ResNet', 'load_resnet_checkpoint']

_BUILDERS = {50: resnet50, 101: resnet101}


@MODELS.register_module()
class ResNet(nn.Module):
    """torchvision ResNet-50/101 returning stage features.

    Args:
        depth: 50 or 101.
        out_indices: stages (0..3 = C2..C5, strides 4, 8, 16, 32) to return, e.g. (1, 2, 3)
            for C3-C5 (DETR3D) or (0, 1, 2, 3).
        frozen_stages: -1 trains everything; 0 freezes the stem (conv1, bn1); k >= 1 also
            freezes stages 1..k (``layer1`` .. ``layerk``): no gradients, BN kept in eval mode.
        norm_eval: keep every BatchNorm in eval mode (running statistics frozen) during training.
        pretrained: path of a local torchvision-style state dict (see the module docstring),
            loaded with a strict key and shape check; None keeps the random initialisation.

    ``forward(images)``: images (B, 3, H, W). Returns ``dict(features=[(B, out_channels[i],
    ceil(H / s_i), ceil(W / s_i)) for each out index], spatial_tokens=None)``.
    """

    stage_channels = (256, 512, 1024, 2048)
    strides = (4, 8, 16, 32)

    def __init__(self, *, depth: int = 50, out_indices: Sequence[int] = (1, 2, 3), frozen_stages: int = 1,
                 norm_eval: bool = True, pretrained: str | os.PathLike | None = None):
        super().__init__()
        if depth not in _BUILDERS:
            raise ValueError(f'ResNet: depth must be one of {sorted(_BUILDERS)}, got {depth}')
        self.out_indices = tuple(out_indices)
        if not self.out_indices or any(i not in range(4) for i in self.out_indices):
            raise ValueError(f'ResNet: out_indices must be a non-empty subset of 0..3, got {out_indices}')
        if frozen_stages not in range(-1, 5):
            raise ValueError(f'ResNet: frozen_stages must be in -1..4, got {frozen_stages}')
        self.depth = depth
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.out_channels = [self.stage_channels[i] for i in self.out_indices]
        self.out_strides = [self.strides[i] for i in self.out_indices]

        net = _BUILDERS[depth](weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if pretrained is not None:
            load_resnet_checkpoint(self, pretrained)
        self._freeze_stages()

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1] + [getattr(self, f'layer{i}') for i in range(1, self.frozen_stages + 1)]

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> 'ResNet':
        """Switch mode, keeping frozen stages (and with ``norm_eval`` every BatchNorm) in eval mode."""
        super().train(mode)
        if mode:
            for m in self._frozen_modules():
                m.eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    def forward(self, images: Tensor) -> dict[str, list[Tensor] | None]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f'ResNet expects images (B, 3, H, W), got shape {tuple(images.shape)}')
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))  # (B, 64, H / 4, W / 4)
        features = []
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            x = layer(x)  # (B, stage_channels[i], H / strides[i], W / strides[i])
            if i in self.out_indices:
                features.append(x)
        return dict(features=features, spatial_tokens=None)


def load_resnet_checkpoint(model: ResNet, checkpoint: str | os.PathLike | Mapping[str, Tensor]) -> None:
    """Load a torchvision-style state dict (file or mapping) into ``model`` with a strict check.

    Unwraps ``{'state_dict': ...}`` / ``{'model': ...}``, strips ``module.`` / ``backbone.``
    prefixes and drops the classifier (``fc.``). Raises FileNotFoundError for a missing file,
    KeyError naming missing / unexpected keys, ValueError naming keys whose shapes differ.
    """
    state, source = read_checkpoint(
        checkpoint, name='ResNet', weights_only=True,
        hint=f'Download torchvision weights beforehand, e.g. torch.save(torchvision.models.ResNet{model.depth}'
             f'_Weights.IMAGENET1K_V2.get_state_dict(), PATH), or use pretrained=None for random weights.')
    for wrapper in ('state_dict', 'model'):
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    cleaned = {}
    for k, v in state.items():
        for prefix in ('module.', 'backbone.'):
            k = k[len(prefix):] if k.startswith(prefix) else k
        if not k.startswith('fc.'):
            cleaned[k] = v
    load_state_dict_strict(model, cleaned, source=source, name=f'ResNet-{model.depth}')
