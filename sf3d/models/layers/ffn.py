"""Feed-forward network (two Linear layers with GELU) on tokens (B, N, C)."""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

__all__ = ['Mlp']


class Mlp(nn.Module):
    """``fc1 -> GELU -> dropout -> fc2 -> dropout``; (B, N, C_in) -> (B, N, C_out)."""

    def __init__(
            self,
            in_features: int,
            hidden_features: int | None = None,
            out_features: int | None = None,
            *,
            act_layer: type[nn.Module] = nn.GELU,
            drop: float = 0.,
    ):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.act(self.fc1(x)))  # (B, N, C_hidden)
        return self.drop(self.fc2(x))  # (B, N, C_out)
