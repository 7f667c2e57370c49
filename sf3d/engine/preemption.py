"""Preemption-safe training: on SIGTERM or SIGUSR1, checkpoint the iteration and stop.

A cluster scheduler signals a job before it kills it (slurm: SIGTERM on preemption, or the
signal of ``--signal``). :func:`preemption_signals` installs handlers that only record the
signal; :class:`PreemptionHook` checks the record after every training iteration (all-reduced
with MAX across ranks, so that every rank stops after the same iteration), saves
``work_dir/iter_<N>.pth`` with every rank's RNG states, points ``work_dir/last_checkpoint`` at
it and raises :class:`TrainingPreempted`. ``tools/train.py`` then exits with
:data:`PREEMPTED_EXIT_STATUS`, which ``tools/slurm_train.sh`` answers with a requeue; ``--resume``
continues from the checkpoint, bit-identically with the resumable loops of
:mod:`sf3d.engine.loops`.
"""
import os.path as osp
import signal
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import torch
from mmengine.config import Config
from mmengine.dist import all_gather_object, all_reduce, barrier, is_main_process
from mmengine.hooks import Hook

from sf3d.registry import HOOKS

from .checkpoint import write_last_checkpoint
from .loops import ResumeRngMixin, get_rng_state

PREEMPTED_EXIT_STATUS = 75  # EX_TEMPFAIL: "try again later"; tools/slurm_train.sh requeues on it
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
RESUMABLE_LOOPS = {'EpochBasedTrainLoop': 'ResumableEpochBasedTrainLoop',
                   'IterBasedTrainLoop': 'ResumableIterBasedTrainLoop'}

_received: Optional[int] = None  # the last preemption signal received, or None


class TrainingPreempted(Exception):
    """Training stopped on a preemption signal after saving ``checkpoint``."""

    def __init__(self, checkpoint: str):
        super().__init__(f'training preempted; resume from {checkpoint}')
        self.checkpoint = checkpoint


def _record(signum: int, frame) -> None:
    global _received
    _received = signum


@contextmanager
def preemption_signals(signals: Sequence[int] = PREEMPTION_SIGNALS) -> Iterator[None]:
    """Within the block, ``signals`` are recorded for :class:`PreemptionHook` instead of killing
    the process; the previous handlers come back on exit. Enter it before the DataLoader workers
    fork: they inherit the handler, so a signal sent to the whole process group (slurm does) does
    not kill them under the training process."""
    global _received
    _received = None
    previous = {s: signal.signal(s, _record) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@HOOKS.register_module()
class PreemptionHook(Hook):
    """After each training iteration, if a preemption signal was received (on any rank), save
    ``iter_<N>.pth`` and raise :class:`TrainingPreempted`; on resume, hand the saved RNG states
    to the train loop. Lowest priority: the other hooks (parameter schedulers, logging, periodic
    checkpoints) have finished the iteration when it saves."""

    priority = 'LOWEST'

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        requested = torch.tensor(int(_received is not None))
        all_reduce(requested, op='max')  # a no-op without a process group
        if not requested.item():
            return
        filename = f'iter_{runner.iter + 1}.pth'
        checkpoint = osp.join(runner.work_dir, filename)
        source = signal.Signals(_received).name if _received is not None else 'a signal on another rank'
        runner.logger.warning(f'preemption ({source}) after iteration {runner.iter + 1}: saving {checkpoint} '
                              'and stopping')
        rng_states = all_gather_object(get_rng_state())
        runner.save_checkpoint(runner.work_dir, filename, by_epoch=False, meta=dict(rng_states=rng_states))
        if is_main_process():
            write_last_checkpoint(runner.work_dir, checkpoint)
        barrier()  # no rank exits (and gets the step killed) before the checkpoint is complete
        raise TrainingPreempted(checkpoint)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        states = checkpoint.get('meta', {}).get('rng_states')
        if states is None:
            return
        if isinstance(runner.train_loop, ResumeRngMixin):
            runner.train_loop.pending_rng_states = states
        else:
            runner.logger.warning(f'{type(runner.train_loop).__name__} cannot restore the RNG states of a '
                                  f'preemption checkpoint; use one of {sorted(RESUMABLE_LOOPS.values())}')


def enable_preemption(cfg: Config) -> None:
    """Add :class:`PreemptionHook` to ``cfg.custom_hooks`` (once) and replace mmengine's epoch-
    or iteration-based train loop by its resumable version (custom loops are left alone)."""
    hooks = list(cfg.get('custom_hooks', []))
    if not any(h.get('type') in ('PreemptionHook', 'sf3d.PreemptionHook') for h in hooks):
        cfg.custom_hooks = [*hooks, dict(type='PreemptionHook')]
    train_cfg = cfg.get('train_cfg')
    if not train_cfg:
        return
    if 'by_epoch' in train_cfg:
        train_cfg.type = 'EpochBasedTrainLoop' if train_cfg.pop('by_epoch') else 'IterBasedTrainLoop'
    if train_cfg.get('type') in RESUMABLE_LOOPS:
        train_cfg.type = RESUMABLE_LOOPS[train_cfg.type]
