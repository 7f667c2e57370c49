"""Train a model from an sf3d config with mmengine's Runner.

    python tools/train.py configs/imagenet/sf_s.py [--work-dir DIR] [--resume [CKPT]]
        [--amp] [--auto-scale-lr] [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

Multi-GPU: tools/dist_train.sh CONFIG NUM_GPUS; slurm: tools/slurm_train.sh. On a machine
without CUDA, `--launcher pytorch` under torchrun trains with DDP over gloo.

Preemption: on SIGTERM or SIGUSR1 the run saves work_dir/iter_<N>.pth after the current
iteration and exits with status 75 (sf3d.engine.PREEMPTED_EXIT_STATUS); `--resume` continues from
it, bit-identically (sf3d/engine/preemption.py, loops.py). Auto-resume skips, naming them,
checkpoints that are truncated or corrupt and takes the newest intact one.
"""
import argparse
import os
import sys

from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner

from sf3d.engine import (PREEMPTED_EXIT_STATUS, TrainingPreempted, cleanup_distributed, enable_preemption,
                         find_resumable_checkpoint, load_run_config, preemption_signals, setup_cpu_distributed,
                         verify_checkpoint)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train an sf3d model')
    parser.add_argument('config', help='config file')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', const='auto', default=None, metavar='CKPT',
                        help='resume from CKPT, or from the newest intact checkpoint in the work dir '
                             'when no path is given (none there: start from scratch)')
    parser.add_argument('--amp', action='store_true', help='bf16 autocast (CPU and GPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help="scale the lr by (total batch / auto_scale_lr.base_batch_size)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config keys, e.g. train_cfg.max_epochs=2')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_config(args) -> Config:
    cfg = load_run_config(args.config, cfg_options=args.cfg_options, launcher=args.launcher,
                          work_dir=args.work_dir)
    if args.amp:
        cfg.optim_wrapper.type = 'Bf16OptimWrapper'
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise KeyError(f'--auto-scale-lr needs `auto_scale_lr = dict(base_batch_size=...)` '
                           f'in {args.config}')
        cfg.auto_scale_lr.enable = True
    enable_preemption(cfg)
    if args.resume == 'auto':
        cfg.load_from = find_resumable_checkpoint(cfg.work_dir)
        cfg.resume = cfg.load_from is not None
        if not cfg.resume:
            print_log(f'--resume: no checkpoint in {cfg.work_dir}, starting from scratch', logger='current')
    elif args.resume is not None:
        if os.path.isfile(args.resume):  # a remote or missing one is left to mmengine's loaders
            verify_checkpoint(args.resume)
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main(argv=None):
    """Train; return the Runner. Raises TrainingPreempted after saving a preemption checkpoint."""
    args = parse_args(argv)
    cfg = build_config(args)
    with preemption_signals():  # before the Runner forks DataLoader workers: they inherit it
        setup_cpu_distributed(cfg, args.launcher)
        try:
            runner = Runner.from_cfg(cfg)
            runner.train()
            return runner
        finally:
            cleanup_distributed()


if __name__ == '__main__':
    try:
        main()
    except TrainingPreempted:
        sys.exit(PREEMPTED_EXIT_STATUS)
