"""Distributed set-up that also works without CUDA (torchrun + gloo on CPU).

mmengine's ``init_dist('pytorch')`` calls ``torch.cuda.set_device`` and its DDP wrapper
passes ``device_ids=[rank]``; both fail on a CPU-only machine. When CUDA is absent we
initialise the gloo process group ourselves (the Runner then skips its own
``init_dist``) and ask for ``MMDistributedDataParallel(device_ids=None)``.
"""
import gc
import os

import torch
import torch.distributed as dist
from mmengine.config import Config


def setup_cpu_distributed(cfg: Config, launcher: str) -> bool:
    """Prepare ``cfg`` for a CPU gloo run under torchrun; return True if it did so.

    On a CUDA machine, or with ``launcher='none'``, nothing is changed and mmengine's
    own NCCL set-up is used, one GPU per process: a process whose ``LOCAL_RANK`` has no GPU
    raises a RuntimeError here (mmengine would fail in ``torch.cuda.set_device``). To train
    on CPU over gloo on a CUDA machine, hide the GPUs (``CUDA_VISIBLE_DEVICES=``).
    """
    if launcher == 'none':
        return False
    if torch.cuda.is_available():
        local_rank, num_gpus = int(os.environ.get('LOCAL_RANK', 0)), torch.cuda.device_count()
        if launcher == 'pytorch' and local_rank >= num_gpus:
            raise RuntimeError(f'LOCAL_RANK={local_rank} but only {num_gpus} GPU(s) are visible: start at most '
                               f'{num_gpus} process(es) per node, or set CUDA_VISIBLE_DEVICES= to train on '
                               'CPU over gloo')
        return False
    if launcher != 'pytorch':
        raise ValueError(f"launcher '{launcher}' needs CUDA; on CPU use --launcher pytorch "
                         'with torchrun (tools/dist_train.sh)')
    for key in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        if key not in os.environ:
            raise RuntimeError(f'--launcher pytorch expects torchrun to set ${key}; '
                               'start with tools/dist_train.sh or torchrun')
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None,
                                 broadcast_buffers=False)
    return True


def cleanup_distributed() -> None:
    """Destroy the process group if one exists (call at exit of a launched tool).

    The Runner and its DDP wrapper live in reference cycles, so without a collection they outlive
    the group and are freed during interpreter shutdown, where a gloo rank could abort
    ("terminate called without an active exception", seen in about 1 of 4 two-rank tools/test.py
    runs under load): collect them first, while the group is still alive."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
