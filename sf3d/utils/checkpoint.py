"""Reading checkpoints and strict state-dict loading, with errors that name the checkpoint and
the offending keys."""
import os
from collections.abc import Mapping

import torch
import torch.nn as nn
from torch import Tensor


def read_checkpoint(checkpoint, *, name: str, hint: str, weights_only: bool) -> tuple:
    """``checkpoint`` is a path or an already loaded mapping; return ``(mapping, source)`` where
    ``source`` names it in messages. A missing file raises FileNotFoundError with ``hint``."""
    if isinstance(checkpoint, Mapping):
        return checkpoint, 'the given state dict'
    source = os.fspath(checkpoint)
    if not os.path.isfile(source):
        raise FileNotFoundError(f'{name} pretrained checkpoint not found: {source}. {hint}')
    return torch.load(source, map_location='cpu', weights_only=weights_only), source


def unwrap_state_dict(checkpoint: Mapping) -> dict:
    """A saved checkpoint -> its plain state dict: unwraps ``{'state_dict': ...}`` (mmengine) /
    ``{'model': ...}`` and strips DDP's ``module.`` prefix."""
    for wrapper in ('state_dict', 'model'):
        if wrapper in checkpoint and isinstance(checkpoint[wrapper], Mapping):
            checkpoint = checkpoint[wrapper]
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in checkpoint.items()}


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor], *, source: str, name: str) -> None:
    """Load ``state_dict`` into ``model``; raise KeyError naming missing / unexpected keys and
    ValueError naming keys whose shapes differ (``name`` and ``source`` lead the message)."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise KeyError(f'{name}: checkpoint {source} does not match the model: '
                       f'missing keys {missing}, unexpected keys {unexpected}')
    wrong = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
             for k, v in state_dict.items() if v.shape != own[k].shape]
    if wrong:
        raise ValueError(f'{name}: checkpoint {source} has shapes that differ from the model: {wrong}')
    model.load_state_dict(state_dict, strict=True)
