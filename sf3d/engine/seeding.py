"""Deterministic, per-epoch random streams that survive resume.

mmengine seeds the process once at start-up, and its default DataLoader
``worker_init_fn`` seeds every worker with ``seed + worker_id`` -- the same numbers in
every epoch, so non-persistent workers replay identical augmentations each epoch, and a
run resumed at an epoch boundary draws different numbers than an uninterrupted one.

``EpochSeedHook`` reseeds python/numpy/torch at the start of each training epoch from
``(seed, epoch, rank)``, and ``seed_worker`` derives each worker's numpy/python seeds from
the torch seed that the DataLoader draws per iterator (itself from the epoch's stream).
Together: augmentation differs per epoch and rank, and resume is bit-identical.
"""
import random

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook

from sf3d.registry import FUNCTIONS, HOOKS


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@HOOKS.register_module()
class EpochSeedHook(Hook):
    """Reseed all RNGs before each training epoch from ``(runner.seed, epoch, rank)``."""

    priority = 'VERY_HIGH'

    def before_train_epoch(self, runner) -> None:
        base = runner.seed if runner.seed is not None else 0
        state = np.random.SeedSequence([base, runner.epoch, get_rank()]).generate_state(1)
        seed_everything(int(state[0]))


@FUNCTIONS.register_module()
def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: numpy/python seeds from this worker's torch seed."""
    seed_everything(torch.initial_seed() % 2**32)
