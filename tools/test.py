"""Evaluate a checkpoint with a config's test dataloader and evaluator, or write the nuScenes
leaderboard submission.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options k=v ...]
        [--launcher none|pytorch|slurm]
    python tools/test.py CONFIG CHECKPOINT --format-only [--work-dir DIR]
    python tools/test.py CONFIG CHECKPOINT --test-split test [--work-dir DIR]

``--format-only`` runs inference and only writes the submission: every NuScenesMetric of
``test_evaluator`` gets ``format_only=True`` and, unless the config sets one, ``jsonfile_prefix``
= the work dir (``--work-dir`` or ``work_dirs/<config name>``). The metric writes
``results_nusc.json`` and validates it (every sample token of the split, the devkit's own
``load_prediction`` accepts it) before the tool prints its path. Other metrics are refused.

``--test-split test`` points the config at the nuScenes test split and implies ``--format-only``
(the test split has no annotations): ``test_dataloader.dataset.ann_file`` becomes
``{tag}_infos_test.pkl`` in the folder of the configured one (``{tag}`` from the configured
``{tag}_infos_{split}.pkl``, else ``nuscenes``), ``test_mode=True``, and each NuScenesMetric gets
that ``ann_file``, ``version='v1.0-test'`` and ``eval_set='test'``. The v1.0-test tables live
in the same dataroot as v1.0-trainval; write the info file with
``python tools/create_data.py nuscenes --root-path ROOT --version v1.0-test``.

Multi-GPU: ``tools/dist_test.sh CONFIG CHECKPOINT NUM_GPUS [any of the options above]``.
"""
import argparse
import os
import os.path as osp
import re
from typing import List

from mmengine.config import Config, ConfigDict, DictAction
from mmengine.dist import is_main_process
from mmengine.runner import Runner

from sf3d.engine import cleanup_distributed, load_run_config, metrics_of_test_evaluator, setup_cpu_distributed
from sf3d.evaluation.nuscenes_metric import RESULT_FILE, NuScenesMetric
from sf3d.registry import METRICS

TEST_VERSION = 'v1.0-test'
INFO_NAME = re.compile(r'^(?P<tag>.+)_infos_[^_]+\.pkl$')  # create_nuscenes_infos: {tag}_infos_{split}.pkl


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test an sf3d model')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where logs and results go (default: ./work_dirs/<config name>)')
    parser.add_argument('--format-only', action='store_true',
                        help='only write and validate the nuScenes submission results_nusc.json '
                             '(in the evaluator\'s jsonfile_prefix, default the work dir); no evaluation')
    parser.add_argument('--test-split', choices=['test'],
                        help='run on the nuScenes test split ({tag}_infos_test.pkl beside the configured info '
                             'file, v1.0-test tables) instead of the configured split; implies --format-only')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def _check_nuscenes_metrics(cfg: Config, option: str) -> List[ConfigDict]:
    """The test metrics, after checking that each one is a NuScenesMetric (or a subclass)."""
    metrics = metrics_of_test_evaluator(cfg)
    for metric in metrics:
        kind = metric.get('type')
        cls = METRICS.get(kind) if isinstance(kind, str) else kind
        if not (isinstance(cls, type) and issubclass(cls, NuScenesMetric)):
            raise ValueError(f'{option}: test_evaluator type {kind!r} does not support format_only; it applies '
                             'to NuScenesMetric, which writes the nuScenes submission file '
                             f'({RESULT_FILE}). Remove {option} or set test_evaluator to a NuScenesMetric.')
    return metrics


def set_format_only(cfg: Config) -> List[str]:
    """Switch every test metric to ``format_only`` (``jsonfile_prefix`` defaults to ``cfg.work_dir``);
    returns the paths of the results_nusc.json files they will write."""
    paths = []
    for metric in _check_nuscenes_metrics(cfg, '--format-only'):
        metric.format_only = True
        if not metric.get('jsonfile_prefix'):
            metric.jsonfile_prefix = cfg.work_dir
        paths.append(osp.abspath(osp.join(metric.jsonfile_prefix, RESULT_FILE)))
    return paths


def info_file_for_test_split(ann_file: str) -> str:
    """The test-split info file that ``create_nuscenes_infos`` writes beside ``ann_file``:
    ``{tag}_infos_test.pkl`` in the same folder, ``{tag}`` read from ``ann_file``'s name."""
    folder, name = osp.split(ann_file)
    match = INFO_NAME.match(name)
    return osp.join(folder, f'{match["tag"] if match else "nuscenes"}_infos_test.pkl')


def use_test_split(cfg: Config) -> str:
    """Point ``test_dataloader`` and the NuScenesMetrics of ``test_evaluator`` at the nuScenes test
    split (see the module docstring); returns the test info file's path. Raises
    FileNotFoundError naming the path and the command that writes it when it does not exist."""
    metrics = _check_nuscenes_metrics(cfg, '--test-split')
    dataset = cfg.get('test_dataloader', {}).get('dataset')
    if not isinstance(dataset, dict) or not dataset.get('ann_file'):
        raise ValueError(f'--test-split: test_dataloader.dataset must be a dataset dict with an ann_file '
                         f'(a NuScenesMultiViewDataset), got {dataset!r}')
    data_root = dataset.get('data_root') or ''
    ann_file = info_file_for_test_split(dataset.ann_file)
    path = ann_file if osp.isabs(ann_file) else osp.join(data_root, ann_file)
    if not osp.isfile(path):
        root = data_root.rstrip('/') or 'ROOT'
        out_dir = osp.dirname(path)
        extra = '' if osp.normpath(out_dir or '.') == osp.normpath(root) else f' --out-dir {out_dir}'
        raise FileNotFoundError(
            f'--test-split test: the test info file {path} does not exist (expected beside the configured '
            f'{dataset.ann_file!r}); write it from the {TEST_VERSION} tables with '
            f'`python tools/create_data.py nuscenes --root-path {root} --version {TEST_VERSION}{extra}`')
    dataset.ann_file = ann_file
    dataset.test_mode = True
    for metric in metrics:
        metric.ann_file = path
        metric.version = TEST_VERSION
        metric.eval_set = 'test'
    return path


def build_config(args) -> Config:
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint file not found: {args.checkpoint}')
    cfg = load_run_config(args.config, cfg_options=args.cfg_options, launcher=args.launcher,
                          work_dir=args.work_dir)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if args.test_split == 'test':
        use_test_split(cfg)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = build_config(args)
    result_files = set_format_only(cfg) if args.format_only or args.test_split == 'test' else []
    setup_cpu_distributed(cfg, args.launcher)
    try:
        metrics = Runner.from_cfg(cfg).test()
        if is_main_process():
            for path in result_files:
                print(f'nuScenes submission written and validated: {path}')
        return metrics
    finally:
        cleanup_distributed()


if __name__ == '__main__':
    main()
