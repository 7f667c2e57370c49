"""Image-classification head for SpatialFormer pretraining.

Pools the last stage's image tokens together with the spatial tokens (every token of the
final stage, so the spatial tokens are trained by ImageNet pretraining too), then a linear
classifier. Built in plain Python by :class:`~sf3d.models.detectors.ImageClassifier`.
"""
from typing import Optional

import torch
import torch.nn as nn
from torch.nn.init import trunc_normal_


class ClsHead(nn.Module):

    def __init__(self, *, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f'num_classes must be >= 2, got {num_classes}')
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)
        trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, feature: torch.Tensor, spatial_tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """feature (B, C, H, W), spatial_tokens (B, N_s, C) -> logits (B, num_classes)."""
        tokens = feature.flatten(2).transpose(1, 2)  # (B, H*W, C)
        if spatial_tokens is not None:
            tokens = torch.cat([tokens, spatial_tokens], dim=1)  # (B, H*W + N_s, C)
        return self.fc(self.dropout(tokens.mean(dim=1)))
