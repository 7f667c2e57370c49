"""Parameter and FLOP counting with ``torch.utils.flop_counter.FlopCounterMode``.

FLOPs count a multiply-add as 2 (GMACs = FLOPs / 2, the unit of timm's and most papers'
tables). Attention is counted under ``sdpa_kernel(SDPBackend.MATH)``: FlopCounterMode has
no formula for the CPU flash kernel and would count attention as zero. Counting slows
later timings in the same process, so time models before counting them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['count_params_flops']


def count_params_flops(module: nn.Module, inputs: torch.Tensor | Sequence | Mapping) -> dict:
    """Count parameters and forward FLOPs of ``module(inputs)`` (no grad, current mode).

    ``inputs``: a tensor, a tuple of positional args or a dict of keyword args.
    Returns ``dict(params=int, flops=int, by_module={dotted_name: flops})`` where
    ``by_module`` has every submodule's inclusive FLOPs (names as in ``named_modules``;
    a module called several times accumulates).
    """
    args, kwargs = ((), dict(inputs)) if isinstance(inputs, Mapping) else \
        ((inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs), {})
    counter = FlopCounterMode(display=False, depth=None)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        module(*args, **kwargs)
    by_module = {}
    for name, ops in counter.get_flop_counts().items():
        if name == 'Global':
            continue
        _, _, dotted = name.partition('.')  # drop the root class name
        by_module[dotted] = int(sum(ops.values()))
    return dict(params=sum(p.numel() for p in module.parameters()), flops=int(counter.get_total_flops()),
                by_module=by_module)
