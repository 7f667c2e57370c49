"""A bf16 autocast optimizer wrapper that works on CPU and GPU (``--amp``).

mmengine's ``AmpOptimWrapper`` refuses CPU and carries a loss scaler that bf16 does not
need (bf16 has fp32's exponent range). This wrapper only enters
``mmengine.runner.amp.autocast(device_type=..., dtype=torch.bfloat16)`` around the forward
pass, on the device type of the model's parameters: mmengine's default (``cuda`` whenever
CUDA is available) would leave a CPU model in fp32 on a GPU machine.
"""
from contextlib import contextmanager

import torch
from mmengine.device import get_device
from mmengine.optim import OptimWrapper
from mmengine.runner.amp import autocast

from sf3d.registry import OPTIM_WRAPPERS


def model_device_type(model: torch.nn.Module) -> str:
    """``'cpu'``, ``'cuda'``, ... of the model's first parameter; mmengine's device without parameters."""
    param = next(model.parameters(), None)
    return get_device() if param is None else param.device.type


@OPTIM_WRAPPERS.register_module()
class Bf16OptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose ``optim_context`` runs the forward in bf16 autocast on the model's device.

    A GPU that lacks bf16 (before Ampere) raises mmengine's RuntimeError on entry.
    """

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        with super().optim_context(model), autocast(device_type=model_device_type(model), dtype=torch.bfloat16):
            yield
