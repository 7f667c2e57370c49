"""Single-image data preprocessor of the 2D models (COCO detection / instance segmentation, ADE20K).

Input: ``sf3d.image_collate``'s batch ``dict(inputs=uint8 (B, 3, Hp, Wp) RGB, data_samples=dict(key=[B
values]))``. Output: ``dict(inputs=float32 (B, 3, Hp, Wp) on the model's device, (x - mean) / std, with
the padding (beyond each sample's ``img_shape``) 0, data_samples=the same dict with every tensor, also
inside lists, moved to the device)``.
"""
from typing import Sequence

import torch
from mmengine.model import BaseDataPreprocessor
from torch import Tensor

from sf3d.registry import MODELS

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0-255 scale
IMAGENET_STD = (58.395, 57.12, 57.375)


def register_mean_std(module: torch.nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
    """Check ``mean`` / ``std`` (3 RGB values each, std > 0; ValueError naming the module otherwise) and
    register them as non-persistent (1, 3, 1, 1) buffers ``module.mean`` / ``module.std``."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32)
    std_t = torch.as_tensor(std, dtype=torch.float32)
    if mean_t.shape != (3,) or std_t.shape != (3,) or not bool((std_t > 0).all()):
        raise ValueError(f'{type(module).__name__}: mean and std need 3 values (std > 0), got {mean}, {std}')
    module.register_buffer('mean', mean_t.view(1, 3, 1, 1), persistent=False)  # (1, 3, 1, 1)
    module.register_buffer('std', std_t.view(1, 3, 1, 1), persistent=False)  # (1, 3, 1, 1)


@MODELS.register_module()
class ImageDataPreprocessor(BaseDataPreprocessor):
    """Normalise a padded image batch on the device (module docstring for inputs/outputs).

    Args:
        mean, std: per-channel RGB values on the 0-255 scale (ImageNet's by default).
        non_blocking: asynchronous host-to-device copies.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 non_blocking: bool = False):
        super().__init__(non_blocking=non_blocking)
        register_mean_std(self, mean, std)

    def forward(self, data: dict, training: bool = False) -> dict:
        if not isinstance(data, dict) or 'inputs' not in data:
            raise KeyError('ImageDataPreprocessor: data must be dict(inputs=(B, 3, Hp, Wp), data_samples=...) '
                           'as sf3d.image_collate returns')
        img = data['inputs']
        if not isinstance(img, Tensor) or img.dim() != 4 or img.shape[1] != 3:
            raise ValueError(f"ImageDataPreprocessor: inputs must be a Tensor (B, 3, Hp, Wp), got "
                             f"{tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__}")
        x = img.to(self._device, non_blocking=self._non_blocking).float()  # (B, 3, Hp, Wp)
        x = (x - self.mean) / self.std  # (B, 3, Hp, Wp)
        samples = data.get('data_samples')
        shapes = samples.get('img_shape') if isinstance(samples, dict) else None
        if shapes is not None:
            if len(shapes) != x.shape[0]:
                raise ValueError(f"ImageDataPreprocessor: {len(shapes)} img_shape values for {x.shape[0]} images")
            for i, (h, w) in enumerate(shapes):
                x[i, :, int(h):, :] = 0
                x[i, :, :, int(w):] = 0
        return dict(data, inputs=x, data_samples=self.cast_data(samples))
