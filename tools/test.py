"""Evaluate a checkpoint with a config's test dataloader and evaluator.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options k=v ...]
        [--launcher none|pytorch|slurm]
"""
import argparse
import os
import os.path as osp
from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from sf3d.engine import cleanup_distributed, load_run_config, setup_cpu_distributed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test an sf3d model')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where logs and results go')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_config(args) -> Config:
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint file not found: {args.checkpoint}')
    cfg = load_run_config(args.config, cfg_options=args.cfg_options, launcher=args.launcher,
                          work_dir=args.work_dir)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = build_config(args)
    setup_cpu_distributed(cfg, args.launcher)
    try:
        return Runner.from_cfg(cfg).test()
    finally:
        cleanup_distributed()


if __name__ == '__main__':
    main()
