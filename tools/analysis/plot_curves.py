"""Learning curves of several runs side by side: a validation metric against training iterations.

    python tools/analysis/plot_curves.py work_dirs/long_sf work_dirs/long_learned \
        --labels "spatial tokens" "learned queries" --key NuScenes/NDS NuScenes/mAP --out curves.png

Runs given the same label are seeds of one setting: the table and the plot show their mean ± std
(the sample std over seeds, ddof 1, as ``tools/camera_ablation.py``) at each validation (the runs
of a label must validate at the same iterations). ``--reach V [V ...]`` adds, for each value, key
and label, the first validation iteration at which the mean reaches it.

Reads each work dir's newest ``<timestamp>/vis_data/scalars.json`` (mmengine's LocalVisBackend),
preceded by the runs it resumed (``tools/train.py --resume`` starts a new timestamp whose first
training line lies past the previous one's): their validations before the resume point come first.
A rerun from scratch in the same work dir starts where the previous run did, and replaces it.
Epoch-based loops: training lines carry ``epoch`` and ``iter``, validation lines the metrics with
``step`` = the epoch they followed, which becomes the last LOGGED training iteration of that epoch
(up to ``logger.interval - 1`` before the epoch's end).
Iteration-based loops (training lines without ``epoch``, e.g. the ADE20K configs, whose logger
hook sets ``log_metric_by_epoch=False``): ``step`` already is the iteration.
Prints a markdown table (one row per validation, one column per label and key) and saves one
panel per key as a PNG (mean line, ± std band).
"""
import argparse
import glob
import json
import os.path as osp
import statistics
import sys
from typing import Dict, List, Optional, Sequence, Tuple


def scalars_files(work_dir: str) -> List[str]:
    """Every ``<work_dir>/<timestamp>/vis_data/scalars.json``, oldest first."""
    found = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not found:
        raise FileNotFoundError(f'{work_dir}: no <timestamp>/vis_data/scalars.json (is it an mmengine work dir '
                                f'with LocalVisBackend?)')
    return found


def find_scalars(work_dir: str) -> str:
    """The newest ``<work_dir>/<timestamp>/vis_data/scalars.json``."""
    return scalars_files(work_dir)[-1]


def first_iteration(path: str) -> Optional[int]:
    """The iteration of the first training line of one scalars.json (None without training lines)."""
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # read_curves names the line
            if 'iter' in rec:
                return rec['iter']
    return None


def read_work_dir(work_dir: str, keys: Sequence[str]) -> Dict[str, List[Tuple[int, float]]]:
    """:func:`read_curves` of a work dir's newest run, preceded by the runs it resumed: each earlier
    scalars.json whose first training iteration is below its successor's contributes its validations
    before the successor's first iteration."""
    paths = scalars_files(work_dir)
    firsts = [first_iteration(p) for p in paths]
    start = len(paths) - 1
    while start > 0 and None not in firsts[start - 1:start + 1] and firsts[start] > firsts[start - 1]:
        start -= 1  # paths[start] resumed paths[start - 1]
    curves: Dict[str, List[Tuple[int, float]]] = {k: [] for k in keys}
    for i in range(start, len(paths)):
        end = firsts[i + 1] if i + 1 < len(paths) else None
        for k, points in read_curves(paths[i], keys, require=False).items():
            curves[k] += [(it, v) for it, v in points if end is None or it < end]
    missing = [k for k, v in curves.items() if not v]
    if missing:
        raise KeyError(f'{work_dir}: no validation line has {missing}')
    return curves


def read_curves(path: str, keys: Sequence[str], require: bool = True) -> Dict[str, List[Tuple[int, float]]]:
    """{key: [(iteration, value), ...]} of the validation lines of one scalars.json; with ``require``
    a key that no validation line has raises."""
    last_iter: Dict[int, int] = {}
    vals = []
    iter_based = False
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f'{path}:{lineno}: not a JSON line ({e})') from None
            if 'iter' in rec and 'epoch' in rec:
                last_iter[rec['epoch']] = max(last_iter.get(rec['epoch'], 0), rec['iter'])
            elif 'iter' in rec:
                iter_based = True
            elif any(k in rec for k in keys):
                vals.append(rec)
    curves: Dict[str, List[Tuple[int, float]]] = {k: [] for k in keys}
    if iter_based and last_iter:
        raise ValueError(f'{path}: training lines with and without an epoch (two runs in one file?)')
    for rec in vals:
        step = rec['step']
        if iter_based and step == 0:
            raise ValueError(f'{path}: an iteration-based run logged a validation at step 0; set '
                             "default_hooks.logger.log_metric_by_epoch=False so that step is the iteration")
        if not iter_based and step not in last_iter:
            raise ValueError(f'{path}: a validation after epoch {step} but no training line of that epoch')
        for k in keys:
            if k in rec:
                curves[k].append((step if iter_based else last_iter[step], float(rec[k])))
    missing = [k for k, v in curves.items() if not v]
    if missing and require:
        raise KeyError(f'{path}: no validation line has {missing}')
    return curves


Curve = List[Tuple[int, float]]  # (iteration, value) per validation
Stats = List[Tuple[int, float, float, int]]  # (iteration, mean, std, number of runs)


def aggregate(curves: Sequence[Curve], what: str = 'runs') -> Stats:
    """Mean and sample std (ddof 1; 0 for one run) over runs at each iteration; the runs must share
    their iterations."""
    iters = [tuple(i for i, _ in c) for c in curves]
    if any(it != iters[0] for it in iters[1:]):
        raise ValueError(f'{what}: runs with one label must validate at the same iterations, got '
                         f'{[list(it) for it in iters]}')
    stats = []
    for j, it in enumerate(iters[0]):
        vals = [c[j][1] for c in curves]
        stats.append((it, statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)))
    return stats


def first_reach(stats: Stats, value: float) -> Optional[int]:
    """The first iteration whose mean is >= ``value`` (None if never)."""
    return next((it for it, mean, _, _ in stats if mean >= value), None)


def _cell(mean: float, std: float, n: int) -> str:
    return f'{mean:.4f}' if n == 1 else f'{mean:.4f} ± {std:.4f}'


def markdown(runs: Dict[str, Dict[str, Stats]], keys: Sequence[str]) -> str:
    iters = sorted({s[0] for stats in runs.values() for k in keys for s in stats[k]})
    cols = [f'{label} {k}' + (f' (n={stats[k][0][3]})' if stats[k][0][3] > 1 else '')
            for label, stats in runs.items() for k in keys]
    lines = ['| iteration | ' + ' | '.join(cols) + ' |', '|---' * (len(cols) + 1) + '|']
    rows = {(label, k): {s[0]: s for s in stats[k]} for label, stats in runs.items() for k in keys}
    for it in iters:
        cells = []
        for label in runs:
            for k in keys:
                row = rows[label, k].get(it)
                cells.append('' if row is None else _cell(*row[1:]))
        lines.append(f'| {it} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def reach_table(runs: Dict[str, Dict[str, Stats]], keys: Sequence[str], value: float) -> str:
    lines = [f'| first iteration with mean >= {value:g} | ' + ' | '.join(keys) + ' |', '|---' * (len(keys) + 1) + '|']
    for label, stats in runs.items():
        reached = [first_reach(stats[k], value) for k in keys]
        cells = ['not reached' if it is None else str(it) for it in reached]
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot(runs: Dict[str, Dict[str, Stats]], keys: Sequence[str], out: str, reach: Sequence[float] = ()) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        for label, stats in runs.items():
            xs, means, stds, ns = zip(*stats[k])
            line, = ax.plot(xs, means, marker='o', label=label if ns[0] == 1 else f'{label} (mean of {ns[0]})')
            if ns[0] > 1:
                ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                                color=line.get_color(), alpha=0.2)
        for value in reach:
            ax.axhline(value, color='gray', ls='--', lw=1)
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
    parser.add_argument('--labels', nargs='+',
                        help='one label per work dir (default: the folder names); runs sharing a label are averaged')
    parser.add_argument('--key', nargs='+', default=['NuScenes/NDS', 'NuScenes/mAP'], help='metrics to plot')
    parser.add_argument('--reach', type=float, nargs='+', default=[],
                        help='also print the first iteration at which each label reaches each of these values')
    parser.add_argument('--out', default='curves.png', help='PNG to write')
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.work_dirs):
        parser.error(f'--labels needs one label per work dir ({len(args.work_dirs)}), got {len(args.labels)}')
    return args


def main(argv=None) -> Dict[str, Dict[str, Stats]]:
    """-> {label: {key: [(iteration, mean, std, n), ...]}}, labels in first-seen order."""
    args = parse_args(argv)
    labels = args.labels or [osp.basename(osp.normpath(d)) for d in args.work_dirs]
    grouped: Dict[str, List[Dict[str, Curve]]] = {}
    for label, d in zip(labels, args.work_dirs):
        grouped.setdefault(label, []).append(read_work_dir(d, args.key))
    runs = {label: {k: aggregate([c[k] for c in curves], f'{label} {k}') for k in args.key}
            for label, curves in grouped.items()}
    print(markdown(runs, args.key))
    for value in args.reach:
        print()
        print(reach_table(runs, args.key, value))
    plot(runs, args.key, args.out, args.reach)
    print(f'saved {args.out}', file=sys.stderr)
    return runs


if __name__ == '__main__':
    main()
