from .checkpoint import load_local_checkpoint, register_checkpoint_loader
from .config import load_run_config, metrics_of_test_evaluator
from .dist import cleanup_distributed, setup_cpu_distributed
from .optim_wrapper import Bf16OptimWrapper
from .seeding import EpochSeedHook, seed_everything, seed_worker

# mmengine's stock local loader cannot read its own checkpoints on torch >= 2.6;
# every entry point that imports sf3d.engine (tools, the registry's lazy imports) gets the fix.
register_checkpoint_loader()

__all__ = ['Bf16OptimWrapper', 'EpochSeedHook', 'cleanup_distributed', 'load_local_checkpoint',
           'load_run_config',
           'register_checkpoint_loader', 'seed_everything', 'seed_worker',
           'setup_cpu_distributed', 'metrics_of_test_evaluator']
