"""Test-only hook: a training run sends itself a real signal during a chosen iteration.

Configs name it after ``custom_imports = dict(imports=['signal_hook'])``: tests/ is on sys.path in
pytest (tests/conftest.py) and on PYTHONPATH in the tests' subprocesses."""
import os
import signal

from mmengine.dist import get_rank
from mmengine.hooks import Hook

from sf3d.registry import HOOKS


@HOOKS.register_module()
class SendSignalHook(Hook):
    """Send ``signum`` (a name, e.g. 'SIGTERM') to this process when training iteration ``at_iter``
    (1-based) starts, on rank ``rank`` only: the signal arrives while that iteration runs. With
    ``process_group``, to its whole process group instead (its DataLoader workers too, as slurm
    signals every process of a job step); only for a run started in its own session."""

    def __init__(self, at_iter: int, signum: str = 'SIGTERM', rank: int = 0, process_group: bool = False):
        self.at_iter, self.signum, self.rank, self.process_group = at_iter, signal.Signals[signum], rank, process_group

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if runner.iter + 1 == self.at_iter and get_rank() == self.rank:
            if self.process_group:
                os.killpg(os.getpgrp(), self.signum)
            else:
                os.kill(os.getpid(), self.signum)
