"""The normaliser of set-prediction losses: the number of targets averaged over ranks.

DETR (Carion et al., ECCV 2020) divides its losses by the number of GT boxes averaged over all
GPUs, so that every rank's loss is on one scale whatever its batch holds; DETR3D does the same
(``sync_cls_avg_factor=True`` and ``reduce_mean`` of ``num_total_pos``, then clamped at 1). The
DETR-style heads (:class:`~sf3d.models.heads.DETR2DHead`, ``DETR3DHead``) share this one function.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ['avg_num_targets']


def avg_num_targets(total: int, device: torch.device) -> float:
    """This rank's number of targets, averaged over the ranks when torch.distributed is initialised
    (one ``all_reduce`` every rank must reach), then clamped to at least 1 (after averaging, as DETR:
    counts (0, 1) on two ranks give 1, (0, 4) give 2).

    ``device``: where the count tensor lives for the collective (the loss's device: CUDA for NCCL,
    CPU for gloo).
    """
    n = torch.tensor(float(total), device=device)  # float32: exact for counts below 2^24
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return max(float(n), 1.0)
