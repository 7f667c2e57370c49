"""A bf16 autocast optimizer wrapper that works on CPU and GPU (``--amp``).

mmengine's ``AmpOptimWrapper`` refuses CPU and carries a loss scaler that bf16 does not
need (bf16 has fp32's exponent range). This wrapper only enters
``mmengine.runner.amp.autocast(dtype=torch.bfloat16)`` around the forward pass.
"""
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmengine.runner.amp import autocast

from sf3d.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class Bf16OptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose ``optim_context`` runs the forward in bf16 autocast."""

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        with super().optim_context(model), autocast(dtype=torch.bfloat16):
            yield
