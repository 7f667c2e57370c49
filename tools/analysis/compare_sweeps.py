"""Camera-ablation sweeps of several models side by side (``tools/camera_ablation.py`` outputs).

    python tools/analysis/compare_sweeps.py "spatial tokens=work_dirs/sweeps/tokens" \
        "learned queries=work_dirs/sweeps/learned" --out docs/ablations --name sweeps

Each ``LABEL=DIR`` is one model: DIR holds the ``<sweep>.csv`` files that ``camera_ablation.py
--out DIR`` wrote. ``LABEL=DIR1,DIR2,...`` is one model trained several times (e.g. three training
seeds): the runs of all its folders are pooled, each drop taken against its own folder's clean run,
so the ± std covers the training seeds (and the perturbation seeds of random sweeps); a sweep must
then be in every one of the label's folders.

For every sweep found in any DIR, writes one markdown table (a row per severity, per model the
metric's mean ± std over seeds and its relative drop against that model's clean run) into
``OUT/<name>.md``, and one panel per sweep into ``OUT/<name>_<metric>.png`` (relative drop in
percent against severity, one line or bar group per model; 0 at the sweep's neutral severity,
where the clean run sits). Relative drops make models with different clean scores comparable.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import math
import os
import os.path as osp
import sys
from typing import Dict, List, Sequence, Tuple


DROP_METRICS = ('NDS', 'mAP')  # camera_ablation.DROP_METRICS, for the --metrics choices
CLEAN = 'clean'


def _ablation_tool():
    """tools/camera_ablation.py as a module (its SWEEPS: order, units, neutral severities)."""
    name = 'sf3d_camera_ablation_tool'
    if name not in sys.modules:
        path = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'camera_ablation.py')
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def parse_entry(text: str) -> Tuple[str, List[str]]:
    """``LABEL=DIR[,DIR...]`` -> (label, dirs); raises ValueError / FileNotFoundError naming the entry."""
    label, sep, folders = text.rpartition('=')
    dirs = folders.split(',') if folders else []
    if not sep or not label or not dirs or not all(dirs):
        raise ValueError(f'{text!r}: expected LABEL=DIR or LABEL=DIR1,DIR2,... (a model label and the '
                         'camera_ablation.py --out folder of each of its trained runs)')
    for folder in dirs:
        if not osp.isdir(folder):
            raise FileNotFoundError(f'{text!r}: {folder} is not a folder')
    if len(set(dirs)) != len(dirs):
        raise ValueError(f'{text!r}: a folder is repeated')
    return label, dirs


def read_sweep(path: str) -> List[dict]:
    """Rows of one ``<sweep>.csv``: severity (str), seed and the metric / drop columns as floats (NaN if empty)."""
    tool = _ablation_tool()
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    needed = {'severity', 'seed', *tool.METRICS, *[f'{m}_rel_drop_pct' for m in tool.DROP_METRICS]}
    if not rows or not needed <= set(rows[0]):
        raise ValueError(f'{path}: expected a camera_ablation.py CSV with columns {sorted(needed)}, got '
                         f'{sorted(rows[0]) if rows else "no rows"}')
    if not any(r['severity'] == CLEAN for r in rows):
        raise ValueError(f'{path}: no clean run (severity "{CLEAN}")')
    out = []
    for r in rows:
        entry = dict(severity=r['severity'], seed=int(r['seed']))
        for key in needed - {'severity', 'seed'}:
            entry[key] = float(r[key]) if r[key] != '' else math.nan
        out.append(entry)
    return out


def summarise(rows: Sequence[dict]) -> Dict[str, dict]:
    """{severity: camera_ablation.py's summary entry} (``runs``, every metric and drop with its ``_std``
    over seeds)."""
    return {entry['severity']: entry for entry in _ablation_tool().summarise(rows)}


def collect(entries: Sequence[Tuple[str, Sequence[str]]]) -> Dict[str, Dict[str, List[dict]]]:
    """{sweep: {label: rows}} for every ``<sweep>.csv`` (sweeps in camera_ablation.py's order); a label's
    rows pool those of its folders. Raises FileNotFoundError when a label has a sweep in some of its
    folders only."""
    sweeps = _ablation_tool().SWEEPS
    found: Dict[str, Dict[str, List[dict]]] = {}
    for name in sweeps:
        for label, folders in entries:
            paths = [osp.join(folder, f'{name}.csv') for folder in folders]
            present = [osp.isfile(path) for path in paths]
            if any(present) and not all(present):
                missing = [path for path, ok in zip(paths, present) if not ok]
                raise FileNotFoundError(f'{label}: {missing} missing; every folder of a label needs the same sweeps')
            if all(present):
                found.setdefault(name, {})[label] = [row for path in paths for row in read_sweep(path)]
    if not found:
        raise FileNotFoundError(f'no <sweep>.csv of {", ".join(sweeps)} in {[f for _, fs in entries for f in fs]}')
    return found


def _cell(mean: float, std: float, n: int, pct: bool) -> str:
    if math.isnan(mean):
        return 'n/a'
    text = f'{mean:+.1f}%' if pct else f'{mean:.4f}'
    if n > 1:
        text += f' ± {std:.1f}' if pct else f' ± {std:.4f}'
    return text


def markdown(found: Dict[str, Dict[str, List[dict]]], metrics: Sequence[str]) -> str:
    sweeps = _ablation_tool().SWEEPS
    lines = ['Relative drop = (clean - perturbed) / clean of each model (positive = worse); mean ± std over '
             'seeds where a severity has several runs.', '']
    for name, per_label in found.items():
        sweep = sweeps[name]
        labels = list(per_label)
        lines += [f'### {name}', '', f'{sweep.description[0].upper()}{sweep.description[1:]}.', '']
        header = [f'severity ({sweep.unit})']
        for label in labels:
            for m in metrics:
                header += [f'{label} {m}', f'{label} {m} drop']
        lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
        stats = {label: summarise(per_label[label]) for label in labels}
        severities = list(dict.fromkeys(s for rows in per_label.values() for s in (r['severity'] for r in rows)))
        for severity in severities:
            cells = [severity]
            for label in labels:
                e = stats[label].get(severity)
                for m in metrics:
                    if e is None:
                        cells += ['', '']
                        continue
                    drop = f'{m}_rel_drop_pct'
                    cells += [_cell(e[m], e[f'{m}_std'], e['runs'], False),
                              '-' if severity == CLEAN else _cell(e[drop], e[f'{drop}_std'], e['runs'], True)]
            lines.append('| ' + ' | '.join(cells) + ' |')
        lines.append('')
    return '\n'.join(lines)


def plot(found: Dict[str, Dict[str, List[dict]]], metric: str, path: str) -> None:
    """One panel per sweep: the relative drop of ``metric`` against severity, one series per model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    sweeps = _ablation_tool().SWEEPS
    cols = min(3, len(found))
    rows_n = math.ceil(len(found) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.8 * rows_n))
    FigureCanvasAgg(fig)
    colour = {label: f'C{i}' for i, label in enumerate(dict.fromkeys(l for p in found.values() for l in p))}
    drop = f'{metric}_rel_drop_pct'
    for k, (name, per_label) in enumerate(found.items()):
        ax = fig.add_subplot(rows_n, cols, k + 1)
        sweep = sweeps[name]
        labels = list(per_label)
        if sweep.neutral is None:
            severities = list(dict.fromkeys(r['severity'] for rows in per_label.values() for r in rows
                                            if r['severity'] != CLEAN))
            width = 0.8 / len(labels)
            for j, label in enumerate(labels):
                stats = summarise(per_label[label])
                xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(severities))]
                ys = [stats[s][drop] if s in stats else math.nan for s in severities]
                errs = [stats[s][f'{drop}_std'] if s in stats else 0.0 for s in severities]
                ax.bar(xs, ys, width=width, yerr=errs, label=label, color=colour[label])
            ax.set_xticks(range(len(severities)), severities, rotation=30, ha='right', fontsize=7)
        else:
            for label in labels:
                stats = summarise(per_label[label])
                points = sorted([(float(sweep.neutral), 0.0, 0.0)] +
                                [(float(s), e[drop], e[f'{drop}_std']) for s, e in stats.items() if s != CLEAN])
                ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                            marker='o', capsize=3, label=label, color=colour[label])
            ax.set_xlabel(sweep.unit)
        ax.axhline(0.0, color='grey', linewidth=0.8)
        ax.set_ylabel(f'{metric} drop (%)')
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc='best')
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Compare camera-ablation sweeps of several models')
    parser.add_argument('entries', nargs='+', metavar='LABEL=DIR[,DIR...]',
                        help='model label and the --out folder of its camera_ablation.py runs (several, comma-'
                             'separated: one per trained run, pooled)')
    parser.add_argument('--metrics', nargs='+', default=list(DROP_METRICS), choices=DROP_METRICS)
    parser.add_argument('--out', required=True, help='folder for NAME.md and NAME_<metric>.png')
    parser.add_argument('--name', default='sweeps', help='output file stem (default sweeps)')
    return parser.parse_args(argv)


def main(argv=None) -> Dict[str, str]:
    args = parse_args(argv)
    entries = [parse_entry(e) for e in args.entries]
    labels = [label for label, _ in entries]
    if len(set(labels)) != len(labels):
        raise ValueError(f'repeated labels in {labels}')
    found = collect(entries)
    os.makedirs(args.out, exist_ok=True)
    paths = dict(md=osp.join(args.out, f'{args.name}.md'))
    text = markdown(found, args.metrics)
    with open(paths['md'], 'w') as f:
        f.write(text + '\n')
    for m in args.metrics:
        paths[m] = osp.join(args.out, f'{args.name}_{m}.png')
        plot(found, m, paths[m])
    print(text)
    print('written: ' + ', '.join(paths.values()))
    return paths


if __name__ == '__main__':
    main()
