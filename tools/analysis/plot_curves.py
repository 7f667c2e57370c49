"""Learning curves of several runs side by side: a validation metric against training iterations.

    python tools/analysis/plot_curves.py work_dirs/long_sf work_dirs/long_learned \
        --labels "spatial tokens" "learned queries" --key NuScenes/NDS NuScenes/mAP --out curves.png

Reads each work dir's newest ``<timestamp>/vis_data/scalars.json`` (mmengine's LocalVisBackend):
training lines carry ``epoch`` and ``iter``; validation lines carry the metrics with ``step`` =
the epoch they followed (epoch-based loops), which becomes the last training iteration of that
epoch. Prints a markdown table (one row per validation, one column per run and key) and saves
one panel per key as a PNG.
"""
import argparse
import glob
import json
import os.path as osp
import sys
from typing import Dict, List, Sequence, Tuple


def find_scalars(work_dir: str) -> str:
    """The newest ``<work_dir>/<timestamp>/vis_data/scalars.json``."""
    found = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not found:
        raise FileNotFoundError(f'{work_dir}: no <timestamp>/vis_data/scalars.json (is it an mmengine work dir '
                                f'with LocalVisBackend?)')
    return found[-1]


def read_curves(path: str, keys: Sequence[str]) -> Dict[str, List[Tuple[int, float]]]:
    """{key: [(iteration, value), ...]} of the validation lines of one scalars.json."""
    last_iter: Dict[int, int] = {}
    vals = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f'{path}:{lineno}: not a JSON line ({e})') from None
            if 'iter' in rec and 'epoch' in rec:
                last_iter[rec['epoch']] = max(last_iter.get(rec['epoch'], 0), rec['iter'])
            elif any(k in rec for k in keys):
                vals.append(rec)
    curves: Dict[str, List[Tuple[int, float]]] = {k: [] for k in keys}
    for rec in vals:
        epoch = rec['step']
        if epoch not in last_iter:
            raise ValueError(f'{path}: a validation after epoch {epoch} but no training line of that epoch')
        for k in keys:
            if k in rec:
                curves[k].append((last_iter[epoch], float(rec[k])))
    missing = [k for k, v in curves.items() if not v]
    if missing:
        raise KeyError(f'{path}: no validation line has {missing}')
    return curves


def markdown(runs: Dict[str, Dict[str, List[Tuple[int, float]]]], keys: Sequence[str]) -> str:
    iters = sorted({i for curves in runs.values() for k in keys for i, _ in curves[k]})
    cols = [f'{label} {k}' for label in runs for k in keys]
    lines = ['| iteration | ' + ' | '.join(cols) + ' |', '|---' * (len(cols) + 1) + '|']
    for it in iters:
        cells = []
        for curves in runs.values():
            for k in keys:
                v = dict(curves[k]).get(it)
                cells.append('' if v is None else f'{v:.4f}')
        lines.append(f'| {it} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot(runs: Dict[str, Dict[str, List[Tuple[int, float]]]], keys: Sequence[str], out: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        for label, curves in runs.items():
            xs, ys = zip(*curves[k])
            ax.plot(xs, ys, marker='o', label=label)
        ax.set_xlabel('training iteration')
        ax.set_ylabel(k)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Validation metrics of several runs against iterations')
    parser.add_argument('work_dirs', nargs='+', help='mmengine work dirs')
    parser.add_argument('--labels', nargs='+', help='one label per work dir (default: the folder names)')
    parser.add_argument('--key', nargs='+', default=['NuScenes/NDS', 'NuScenes/mAP'], help='metrics to plot')
    parser.add_argument('--out', default='curves.png', help='PNG to write')
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.work_dirs):
        parser.error(f'--labels needs one label per work dir ({len(args.work_dirs)}), got {len(args.labels)}')
    return args


def main(argv=None) -> Dict[str, Dict[str, List[Tuple[int, float]]]]:
    args = parse_args(argv)
    labels = args.labels or [osp.basename(osp.normpath(d)) for d in args.work_dirs]
    runs = {label: read_curves(find_scalars(d), args.key) for label, d in zip(labels, args.work_dirs)}
    print(markdown(runs, args.key))
    plot(runs, args.key, args.out)
    print(f'saved {args.out}', file=sys.stderr)
    return runs


if __name__ == '__main__':
    main()
