from .checkpoint import (CorruptCheckpointError, find_resumable_checkpoint, load_local_checkpoint,
                         make_checkpoint_writes_atomic, register_checkpoint_loader, verify_checkpoint)
from .config import load_run_config, metrics_of_test_evaluator
from .dist import cleanup_distributed, setup_cpu_distributed
from .loops import ResumableEpochBasedTrainLoop, ResumableIterBasedTrainLoop
from .optim_wrapper import Bf16OptimWrapper
from .preemption import (PREEMPTED_EXIT_STATUS, PreemptionHook, TrainingPreempted, enable_preemption,
                         preemption_signals)
from .seeding import EpochSeedHook, seed_everything, seed_worker

# mmengine's stock local loader cannot read its own checkpoints on torch >= 2.6, and its writes
# are not atomic: every entry point that imports sf3d.engine (tools, the registry's lazy imports)
# gets both fixes.
register_checkpoint_loader()
make_checkpoint_writes_atomic()

__all__ = ['Bf16OptimWrapper', 'CorruptCheckpointError', 'EpochSeedHook', 'PREEMPTED_EXIT_STATUS',
           'PreemptionHook', 'ResumableEpochBasedTrainLoop', 'ResumableIterBasedTrainLoop',
           'TrainingPreempted', 'cleanup_distributed', 'enable_preemption', 'find_resumable_checkpoint',
           'load_local_checkpoint', 'load_run_config', 'make_checkpoint_writes_atomic',
           'metrics_of_test_evaluator', 'preemption_signals', 'register_checkpoint_loader',
           'seed_everything', 'seed_worker', 'setup_cpu_distributed', 'verify_checkpoint']
