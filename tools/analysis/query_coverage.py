"""How close a multi-view detector's queries start to the objects, and how close its predictions end.

    python tools/analysis/query_coverage.py "360 tokens=work_dirs/sel/select_s0" \
        "360 learned=work_dirs/sel/learned360_s0/epoch_8.pth" --out docs/convergence/coverage.md

Each ``LABEL=RUN`` is one trained model: RUN is a ``tools/train.py`` work dir (its dumped config, the
one ``*.py`` in it, and the checkpoint its ``last_checkpoint`` names) or a checkpoint file in such a
dir. On the validation split (``--split``), for every GT box the training pipeline keeps (the
config's ``ObjectRangeFilter`` / ``ObjectNameFilter``), the tool measures the bird's-eye-view
distance from the GT centre to

* the nearest INITIAL reference point (the decoder's input: selected token hypotheses, learned
  queries' references), i.e. whether some query starts near the object;
* the nearest FINAL predicted centre of any query (last decoder layer);
* the nearest final centre among the ``--top`` queries of highest score,

and prints one markdown table (a row per model; per measure the percentage of GT within each of
``--thresholds`` metres), also written to ``--out``. The images go through the config's TEST
pipeline, so the geometry is the evaluation's.
"""
from __future__ import annotations

import argparse
import copy
import os
import os.path as osp
import sys
from typing import List, Optional, Sequence, Tuple

import torch

GT_FILTERS = ('ObjectRangeFilter', 'ObjectNameFilter')


def parse_entry(text: str) -> Tuple[str, str, str]:
    """``LABEL=RUN`` -> (label, config path, checkpoint path); raises ValueError / FileNotFoundError
    naming the entry and what is missing."""
    label, sep, run = text.rpartition('=')
    if not sep or not label or not run:
        raise ValueError(f'{text!r}: expected LABEL=RUN (a tools/train.py work dir or a checkpoint in one)')
    if osp.isfile(run):
        work_dir, checkpoint = osp.dirname(run) or '.', run
    elif osp.isdir(run):
        work_dir, pointer = run, osp.join(run, 'last_checkpoint')
        if not osp.isfile(pointer):
            raise FileNotFoundError(f'{text!r}: {run} has no last_checkpoint file (did training save a checkpoint?); '
                                    'name the checkpoint file instead')
        with open(pointer) as f:
            checkpoint = f.read().strip()
        if not osp.isfile(checkpoint):  # written with the path at training time; try it inside the dir
            checkpoint = osp.join(run, osp.basename(checkpoint))
        if not osp.isfile(checkpoint):
            raise FileNotFoundError(f'{text!r}: last_checkpoint names {checkpoint}, which does not exist')
    else:
        raise FileNotFoundError(f'{text!r}: {run} is neither a work dir nor a checkpoint file')
    configs = sorted(f for f in os.listdir(work_dir) if f.endswith('.py'))
    if len(configs) != 1:
        raise ValueError(f'{text!r}: expected exactly one dumped config (*.py) in {work_dir}, found {configs}')
    return label, osp.join(work_dir, configs[0]), checkpoint


def nearest_distances(gt_xy: torch.Tensor, points_xy: torch.Tensor) -> torch.Tensor:
    """(G, 2) GT centres, (P, 2) points -> (G,) BEV distance from each GT to its nearest point
    (inf when there is no point)."""
    if points_xy.shape[0] == 0:
        return torch.full((gt_xy.shape[0],), float('inf'))
    return torch.cdist(gt_xy.double(), points_xy.double()).amin(1)


def fractions(distances: torch.Tensor, thresholds: Sequence[float]) -> List[float]:
    """Fraction of distances strictly below each threshold (nan without distances)."""
    if distances.numel() == 0:
        return [float('nan')] * len(thresholds)
    return [float((distances < t).double().mean()) for t in thresholds]


def coverage_dataset_cfg(cfg, split: str):
    """The ``split`` dataset of ``cfg`` with GT: its test pipeline, the training pipeline's GT filters
    inserted before the packing step, which packs the GT too."""
    dataset = copy.deepcopy(cfg[f'{split}_dataloader'].dataset)
    dataset.test_mode = False
    filters = [copy.deepcopy(t) for t in cfg.train_dataloader.dataset.pipeline if t['type'] in GT_FILTERS]
    pipeline = []
    for t in dataset.pipeline:
        if t['type'] == 'Pack3DDetInputs':
            pipeline += filters
            t = dict(t, keys=('img', 'gt_bboxes_3d', 'gt_labels_3d'))
        pipeline.append(t)
    if not any(t['type'] == 'Pack3DDetInputs' for t in pipeline):
        raise ValueError(f'{split}_dataloader pipeline has no Pack3DDetInputs step: {[t["type"] for t in pipeline]}')
    dataset.pipeline = pipeline
    return dataset


@torch.no_grad()
def measure(config: str, checkpoint: str, split: str = 'val', top: int = 100, progress: bool = True) -> dict:
    """Per-GT distances (initial reference, any final centre, top-``top`` final centre) of one model."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from tqdm import tqdm

    from sf3d.datasets.transforms.formatting import multiview_collate
    from sf3d.registry import DATASETS, MODELS
    from sf3d.utils.checkpoint import load_state_dict_strict, unwrap_state_dict

    cfg = Config.fromfile(config)
    with DefaultScope.overwrite_default_scope('sf3d'):
        model = MODELS.build(cfg.model).eval()
        dataset = DATASETS.build(dict(coverage_dataset_cfg(cfg, split), serialize_data=False))
    state = unwrap_state_dict(torch.load(checkpoint, map_location='cpu', weights_only=False))
    load_state_dict_strict(model, state, source=checkpoint, name=f'query_coverage ({config})')
    out = dict(ref=[], final=[], top=[])
    for i in tqdm(range(len(dataset)), desc=osp.basename(osp.dirname(checkpoint)) or 'coverage', unit='sample',
                  file=sys.stderr, disable=not progress):
        data = model.data_preprocessor(multiview_collate([dataset[i]]), False)
        img, samples = data['inputs']['img'], data['data_samples']
        cameras = model._cameras(samples, img.shape[0], img.shape[1], img.device)
        outputs = model.forward_outputs(img, cameras)
        boxes, _ = model._ground_truth(samples, img.device)
        gt_xy = boxes[0][:, :2]
        if gt_xy.shape[0] == 0:
            continue
        centres = outputs['all_bbox_preds'][-1, 0, :, :2]  # (Q, 2) metres
        scores = outputs['all_cls_scores'][-1, 0].sigmoid().amax(-1)  # (Q,)
        best = scores.topk(min(top, scores.numel())).indices
        out['ref'].append(nearest_distances(gt_xy, outputs['ref_points'][0, :, :2]))
        out['final'].append(nearest_distances(gt_xy, centres))
        out['top'].append(nearest_distances(gt_xy, centres[best]))
    return {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.float64) for k, v in out.items()}


def table(rows: Sequence[Tuple[str, dict]], thresholds: Sequence[float], top: int) -> str:
    """Markdown: a row per model, per measure the % of GT within each threshold."""
    within = ' / '.join(f'{t:g}' for t in thresholds)
    head = (f'| model | GT | initial reference within {within} m | any final centre within {within} m '
            f'| top-{top} final centre within {within} m |')
    lines = [head, '|---|---|---|---|---|']
    for label, d in rows:
        cells = [' / '.join(f'{100 * f:.0f}' for f in fractions(d[k], thresholds)) for k in ('ref', 'final', 'top')]
        lines.append(f'| {label} | {d["ref"].numel()} | ' + ' | '.join(f'{c} %' for c in cells) + ' |')
    return '\n'.join(lines) + '\n'


def runs_parser(description: str) -> argparse.ArgumentParser:
    """The arguments of a tool that measures trained runs: ``LABEL=RUN`` entries, --split, --out,
    --no-progress."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('runs', nargs='+', help='LABEL=WORK_DIR or LABEL=CHECKPOINT (a checkpoint in a work dir)')
    parser.add_argument('--split', default='val', choices=('val', 'test'), help='dataloader whose dataset is used')
    parser.add_argument('--out', default=None, help='also write the table to this markdown file')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bars')
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = runs_parser('Query coverage of trained multi-view detectors (module docstring)')
    parser.add_argument('--thresholds', type=float, nargs='+', default=(1.0, 2.0, 4.0), help='metres (BEV)')
    parser.add_argument('--top', type=int, default=100, help='final centres of the N highest-scoring queries')
    args = parser.parse_args(argv)
    if args.top < 1 or any(t <= 0 for t in args.thresholds):
        parser.error(f'--top must be >= 1 and --thresholds > 0, got {args.top} and {args.thresholds}')
    return args


def emit(text: str, out: Optional[str]) -> str:
    """Print a table and, with ``out``, also write it there (folders created); returns it."""
    print(text, end='')
    if out:
        os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
        with open(out, 'w') as f:
            f.write(text)
    return text


def main(argv=None) -> str:
    args = parse_args(argv)
    entries = [parse_entry(text) for text in args.runs]  # every entry checked before the first model runs
    rows = [(label, measure(config, checkpoint, args.split, args.top, not args.no_progress))
            for label, config, checkpoint in entries]
    return emit(table(rows, args.thresholds, args.top), args.out)


if __name__ == '__main__':
    main()
