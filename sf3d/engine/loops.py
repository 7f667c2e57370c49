"""Training loops that resume mid-epoch exactly where a preempted run stopped.

mmengine's ``EpochBasedTrainLoop`` restarts the whole epoch after resuming from an iteration
checkpoint, and neither of its loops restores the random state. Here, on resume:

1. the epoch starts as usual (``before_train_epoch``: ``EpochSeedHook`` reseeds, the sampler
   takes its epoch, the DataLoader iterator draws its worker base seed);
2. the batches already trained in it are fetched and discarded, as mmengine's
   ``IterBasedTrainLoop`` does, so the DataLoader workers' random streams advance exactly as
   in the uninterrupted run;
3. the main-process RNG states that :class:`~sf3d.engine.preemption.PreemptionHook` saved
   (python, numpy, torch CPU and CUDA: the transforms with ``num_workers=0``, the data
   preprocessor's photometric/GridMask draws, dropout, MixUp) are restored before the next
   batch is fetched.

Training then continues bit-identically. The hook hands the saved states to the loop
(:attr:`ResumeRngMixin.pending_rng_states`). ``tools/train.py`` puts these loops in place of
mmengine's (:func:`~sf3d.engine.preemption.enable_preemption`).

Limits: an iteration-based run must use ``InfiniteSampler`` (a DataLoader restarted during the
skip would draw its worker seed from the wrong state), and one preempted right after an
iteration that validates resumes without that validation.
"""
import logging
import random
from typing import Iterator, List, Optional

import numpy as np
import torch
from mmengine.dist import get_rank, get_world_size
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

from sf3d.registry import LOOPS


def get_rng_state() -> dict:
    """This process's python, numpy, torch CPU and (when available) current CUDA device RNG states."""
    state = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned (CUDA only if saved and available)."""
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])


class _RestoreRngAt:
    """Iterate ``batches``; just before fetching item ``index`` (0-based), restore ``rng_state``."""

    def __init__(self, batches: Iterator, index: int, rng_state: dict):
        self._batches, self._index, self._rng_state, self._fetched = batches, index, rng_state, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self._fetched == self._index:
            set_rng_state(self._rng_state)
        self._fetched += 1
        return next(self._batches)


class ResumeRngMixin:
    """Holds the per-rank RNG states of the checkpoint being resumed until the loop uses them."""

    pending_rng_states: Optional[List[dict]] = None

    def _take_rng_state(self) -> Optional[dict]:
        """This rank's pending state (then cleared); None, with a warning, if the world size changed."""
        states, self.pending_rng_states = self.pending_rng_states, None
        if states is None:
            return None
        if len(states) != get_world_size():
            print_log(f'the checkpoint holds RNG states of {len(states)} processes, this run has '
                      f'{get_world_size()}: the random draws will not repeat the interrupted run\'s',
                      logger='current', level=logging.WARNING)
            return None
        return states[get_rank()]


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(ResumeRngMixin, EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` that resumes an iteration checkpoint mid-epoch (module docstring)."""

    def run_epoch(self) -> None:
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        done = self._iter - self._epoch * len(self.dataloader)  # > 0 only right after a resume
        if not 0 <= done <= len(self.dataloader):
            raise RuntimeError(f'resumed at iteration {self._iter} of epoch {self._epoch + 1}, which cannot '
                               f'be: an epoch has {len(self.dataloader)} iterations (did the dataset, batch '
                               'size or number of processes change?)')
        batches = iter(self.dataloader)
        rng_state = self._take_rng_state()
        if done:
            print_log(f'skipping the {done} batches of epoch {self._epoch + 1} trained before the resume',
                      logger='current')
            if rng_state is not None:
                batches = _RestoreRngAt(batches, done, rng_state)
            for _ in range(done):
                next(batches)
        for idx, data_batch in enumerate(batches, start=done):
            self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1


@LOOPS.register_module()
class ResumableIterBasedTrainLoop(ResumeRngMixin, IterBasedTrainLoop):
    """``IterBasedTrainLoop`` that also restores the RNG states after its resume skip (module docstring)."""

    def run(self) -> None:
        rng_state = self._take_rng_state()
        if rng_state is not None and self._iter > 0:
            self.dataloader_iterator = _RestoreRngAt(self.dataloader_iterator, self._iter, rng_state)
        return super().run()
