"""Gather the nuScenes metrics of finished runs into one table (markdown + CSV), with model cost.

    python tools/analysis/collect_results.py WORK_DIR [WORK_DIR ...] [--last] [--out-md F] [--out-csv F]
        [--no-cost] [--skip-missing]

Per work dir (mmengine's, written by tools/train.py or tools/test.py):

* metrics (``NuScenes/NDS``, ``mAP``, ``mATE``, ``mASE``, ``mAOE``, ``mAVE``, ``mAAE``) from the newest
  run (``<timestamp>/`` folder) that has any:
  - a training run: the validation lines of ``<timestamp>/vis_data/scalars.json`` (training lines
    carry ``iter``; a validation line carries the metrics and ``step``, the epoch it followed); the
    line with the best NDS (the first of equals, as CheckpointHook's ``save_best``), or the last one
    with ``--last``. A run that resumed (``resume = True`` in its ``vis_data/config.py``) continues
    the previous training run's history: the validations before its first one count too.
  - a test run (mmengine's ``runner.test()``): ``<timestamp>/<timestamp>.json``, the single JSON
    object that LoggerHook writes after the test epoch.
* config: the one mmengine dumped into the work dir (``WORK_DIR/<config name>.py``); the table names
  the row after it. With several (a run resumed under another config name), the one whose text
  equals the chosen run's ``vis_data/config.py``, else the newest.
* cost (unless ``--no-cost``): the config's model built with random weights
  (benchmark_detector.build_detector), its parameters (M) and the GMACs of one 6-view sample
  (FLOPs / 2, ``sf3d.utils.flops.count_params_flops``, attention included) of
  ``model(inputs, data_samples, mode='tensor')`` in eval mode: backbone, FPN, queries and decoder,
  without the data preprocessor and the top-k decoding. The input size follows the pipeline of the
  evaluation (``val_dataloader`` for a validation, ``test_dataloader`` for a test):
  nuScenes' 1600 x 900 camera images, then ``ResizeCropFlipMultiView.final_size`` and
  ``PadMultiViewImage`` where the pipeline has them (sf_s.py: 928 x 1600; nuscenes_tiny.py:
  224 x 416); the cameras are the nuScenes rig at that size. The forward runs on fake tensors
  (``FakeTensorMode``: shapes only, no memory, seconds even at 928 x 1600); FlopCounterMode counts
  by shape, so the count equals a real forward's. A model whose forward fails there gets params
  only and the reason on stderr.

Prints the markdown table; ``--out-md`` / ``--out-csv`` also write it and the CSV. A work dir
without results is an error naming it and what is missing (``--skip-missing``: warn and leave it out).
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import os.path as osp
import re
import sys
from pathlib import Path
from typing import Optional

HERE = osp.dirname(osp.abspath(__file__))
if HERE not in sys.path:  # a script's folder is on sys.path; not when loaded by path (tests/tool_loader.py)
    sys.path.insert(0, HERE)
from bench_utils import markdown_lines  # noqa: E402

METRICS = ('NDS', 'mAP', 'mATE', 'mASE', 'mAOE', 'mAVE', 'mAAE')
PREFIX = 'NuScenes/'
NDS_KEY = PREFIX + 'NDS'
CSV_COLUMNS = ['config', *METRICS, 'params_M', 'GMACs', 'input', 'evaluated', 'work_dir']
NUSCENES_IMAGE_HW = (900, 1600)  # the nuScenes camera images the pipelines load
NUM_VIEWS = 6
RESUMED = re.compile(r'^resume\s*=\s*True\s*$', re.MULTILINE)


class ResultsError(ValueError):
    """A work dir that has no usable results (the message names it and what is missing)."""


# ---------------------------------------------------------------------------------------------- runs
def _read_json_lines(path: str) -> list[dict]:
    records = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ResultsError(f'{path}:{lineno}: not a JSON line ({e})') from None
    return records


def read_runs(work_dir: str) -> list[dict]:
    """The runs of a work dir, oldest first: ``dict(name=<timestamp>, val=[validation records with
    NDS, in file order], test=the test record or None, resumed=bool, config_text=str or None)``."""
    runs = []
    for folder in sorted(p for p in glob.glob(osp.join(work_dir, '*')) if osp.isdir(p)):
        name = osp.basename(folder)
        scalars = osp.join(folder, 'vis_data', 'scalars.json')
        config = osp.join(folder, 'vis_data', 'config.py')
        test_json = osp.join(folder, f'{name}.json')
        if not (osp.isfile(scalars) or osp.isfile(config) or osp.isfile(test_json)):
            continue  # not a run folder
        val = [r for r in _read_json_lines(scalars) if NDS_KEY in r] if osp.isfile(scalars) else []
        test = None
        if osp.isfile(test_json):
            with open(test_json) as f:
                try:
                    test = json.load(f)
                except json.JSONDecodeError as e:
                    raise ResultsError(f'{test_json}: not a JSON object ({e})') from None
            test = test if isinstance(test, dict) and NDS_KEY in test else None
        config_text = Path(config).read_text() if osp.isfile(config) else None
        runs.append(dict(name=name, val=val, test=test, config_text=config_text,
                         resumed=bool(config_text and RESUMED.search(config_text))))
    return runs


def select_record(work_dir: str, runs: list[dict], last: bool = False) -> tuple[dict, str, str, dict]:
    """(metrics record, 'val' or 'test', how it was chosen, its run) from the newest run with metrics
    (module docstring)."""
    with_metrics = [i for i, r in enumerate(runs) if r['val'] or r['test']]
    if not with_metrics:
        seen = ', '.join(r['name'] for r in runs) or 'none'
        raise ResultsError(f'{work_dir}: no evaluation results: no <timestamp>/vis_data/scalars.json line with '
                           f'{NDS_KEY} (a validation of tools/train.py) and no <timestamp>/<timestamp>.json with '
                           f'{NDS_KEY} (tools/test.py); runs found: {seen}')
    index = with_metrics[-1]
    run = runs[index]
    if run['test']:
        return run['test'], 'test', f"test {run['name']}", run
    history, current = list(run['val']), run
    for prev in reversed([r for r in runs[:index] if r['val']]):
        if not current['resumed']:
            break
        first = history[0].get('step', float('inf'))
        history = [r for r in prev['val'] if r.get('step', float('inf')) < first] + history
        current = prev
    if last:
        record, how = history[-1], 'last'
    else:
        best = max(r[NDS_KEY] for r in history)
        record, how = next(r for r in history if r[NDS_KEY] == best), 'best NDS'
    return record, 'val', f"val step {record.get('step', '?')} ({how} of {len(history)})", run


def find_config(work_dir: str, run: Optional[dict] = None) -> str:
    """The config mmengine dumped into ``work_dir`` (module docstring)."""
    found = sorted(glob.glob(osp.join(work_dir, '*.py')))
    if not found:
        raise ResultsError(f'{work_dir}: no config dumped in it (<work_dir>/<config name>.py, written by '
                           f"mmengine's Runner); is it an mmengine work dir?")
    if len(found) > 1 and run and run['config_text']:
        same = [p for p in found if Path(p).read_text().strip() == run['config_text'].strip()]
        if same:
            return same[0]
    return max(found, key=osp.getmtime)


# ---------------------------------------------------------------------------------------------- cost
def input_size(cfg, split: str = 'test') -> tuple[int, int]:
    """(H, W) of the images the model sees under the pipeline of ``cfg``'s ``{split}_dataloader``
    (module docstring)."""
    h, w = NUSCENES_IMAGE_HW
    for step in cfg[f'{split}_dataloader'].dataset.get('pipeline', []):
        if step['type'] == 'ResizeCropFlipMultiView':
            h, w = (int(v) for v in step['final_size'])
        elif step['type'] == 'PadMultiViewImage':
            if step.get('size') is not None:
                h, w = (int(v) for v in step['size'])
            else:
                div = int(step.get('size_divisor', 32))
                h, w = -(-h // div) * div, -(-w // div) * div
    return h, w


def model_cost(config: str, shape: tuple[int, int], fake: bool = True) -> dict:
    """``dict(params=int, flops=int or None, error=str or None)`` of ``config``'s model on one
    6-view sample of ``shape`` (H, W) (module docstring); ``fake=False`` runs on real zero tensors."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode  # shape-only tensors (as torch.compile uses)

    from benchmark_detector import build_detector, nuscenes_cameras
    from sf3d.utils.flops import count_params_flops

    model = build_detector(config).eval().requires_grad_(False)  # real parameters that need no grad mix with fakes
    params = sum(p.numel() for p in model.parameters())
    cameras = nuscenes_cameras(shape, 1)
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) if fake else torch.no_grad():
            img = torch.zeros(1, NUM_VIEWS, 3, *shape)  # (B, N, 3, H, W)
            counted = count_params_flops(model, dict(inputs=dict(img=img), data_samples=dict(cameras=cameras),
                                                     mode='tensor'))
    except Exception as e:  # noqa: BLE001 -- params are still worth reporting
        return dict(params=params, flops=None, error=f'{type(e).__name__}: {e}')
    return dict(params=params, flops=counted['flops'], error=None)


# ---------------------------------------------------------------------------------------------- rows
def collect(work_dir: str, last: bool = False, cost: bool = True) -> dict:
    """One table row (keys of CSV_COLUMNS, numbers as floats, None where not measured)."""
    if not osp.isdir(work_dir):
        raise ResultsError(f'{work_dir}: not a directory')
    runs = read_runs(work_dir)
    record, split, evaluated, run = select_record(work_dir, runs, last)
    missing = [PREFIX + m for m in METRICS if PREFIX + m not in record]
    if missing:
        raise ResultsError(f'{work_dir}: the chosen evaluation ({evaluated}) lacks {missing}')
    config = find_config(work_dir, run)
    row = dict(config=osp.splitext(osp.basename(config))[0], work_dir=work_dir, evaluated=evaluated,
               params_M=None, GMACs=None, input='', config_path=config)
    row.update({m: float(record[PREFIX + m]) for m in METRICS})
    if cost:
        from mmengine.config import Config
        shape = input_size(Config.fromfile(config), split)
        counted = model_cost(config, shape)
        row['params_M'] = counted['params'] / 1e6
        row['input'] = f'{NUM_VIEWS}x{shape[0]}x{shape[1]}'
        if counted['flops'] is None:
            print(f'{work_dir}: GMACs not counted, params only ({counted["error"]})', file=sys.stderr)
        else:
            row['GMACs'] = counted['flops'] / 2e9
    return row


def label_rows(rows: list[dict]) -> list[dict]:
    """Rows whose config names repeat are labelled ``<work dir name>/<config name>``."""
    names = [r['config'] for r in rows]
    for row in rows:
        if names.count(row['config']) > 1:
            row['config'] = f"{osp.basename(osp.normpath(row['work_dir']))}/{row['config']}"
    return rows


def _fmt(value: Optional[float], digits: int) -> str:
    return 'n/a' if value is None else f'{value:.{digits}f}'


def markdown(rows: list[dict]) -> str:
    columns = ['config', *METRICS, 'params (M)', 'GMACs', 'input (views x H x W)', 'evaluated']

    def cells(r: dict) -> list[str]:
        return [r['config'], *(f'{r[m]:.4f}' for m in METRICS), _fmt(r['params_M'], 2), _fmt(r['GMACs'], 2),
                r['input'] or 'n/a', r['evaluated']]

    lines = markdown_lines(columns, rows, cells, lambda r: [r['config']])
    lines.append('\nGMACs: one 6-view sample, backbone + FPN + queries + decoder (FlopCounterMode FLOPs / 2, '
                 'attention included).')
    return '\n'.join(lines)


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction='ignore')
        writer.writeheader()
        for row in rows:
            writer.writerow({k: '' if row[k] is None else row[k] for k in CSV_COLUMNS})


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('work_dirs', nargs='+', help='mmengine work dirs of finished runs')
    parser.add_argument('--last', action='store_true', help='the last validation instead of the best NDS')
    parser.add_argument('--out-md', help='write the markdown table here')
    parser.add_argument('--out-csv', help='write the CSV here')
    parser.add_argument('--no-cost', action='store_true', help='skip params and GMACs (no model is built)')
    parser.add_argument('--skip-missing', action='store_true',
                        help='leave out work dirs without results (with a warning) instead of failing')
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    from tqdm import tqdm

    rows, errors = [], []
    for work_dir in tqdm(args.work_dirs, desc='collect', unit='run', file=sys.stderr, disable=None):
        try:
            rows.append(collect(work_dir, last=args.last, cost=not args.no_cost))
        except ResultsError as e:
            errors.append(str(e))
    if errors and not args.skip_missing:
        raise SystemExit('collect_results: ' + '\n'.join(errors))
    for error in errors:
        print(f'skipped {error}', file=sys.stderr)
    if not rows:
        raise SystemExit('collect_results: no work dir has results')
    rows = label_rows(rows)
    table = markdown(rows)
    print(table)
    if args.out_md:
        os.makedirs(osp.dirname(osp.abspath(args.out_md)), exist_ok=True)
        with open(args.out_md, 'w') as f:
            f.write(table + '\n')
        print(f'wrote {args.out_md}', file=sys.stderr)
    if args.out_csv:
        os.makedirs(osp.dirname(osp.abspath(args.out_csv)), exist_ok=True)
        write_csv(rows, args.out_csv)
        print(f'wrote {args.out_csv}', file=sys.stderr)
    return rows


if __name__ == '__main__':
    main()
