"""Evaluate one trained detector under perturbed cameras: sweeps over severities of test-time
perturbations (``sf3d/datasets/transforms/perturb.py``), plus the clean run.

    python tools/camera_ablation.py CONFIG CHECKPOINT --sweep NAME [NAME ...] --out DIR
        [--severities S ... | --severities NAME=S,S NAME=S ...] [--seeds N] [--data-root DIR]
        [--work-dir DIR] [--cfg-options k=v ...]

Several sweeps in one call share one clean evaluation (it is run once and each sweep's outputs
compare against it). With one sweep, ``--severities`` lists its values; with several, each entry is
``NAME=V1,V2,...`` for one of them (``rig=DIR1,DIR2``) and the sweeps not named use their defaults.

Sweeps (severity unit; default severities):

=================  ==================================================================  =================
focal_consistent   focal scale; image zoomed and intrinsics updated (a different lens)  0.8 0.9 1.1 1.2
focal_calib        focal scale; intrinsics only (a calibration error)                   0.8 0.9 1.1 1.2
focal_image        focal scale; image only (an unmodelled lens)                         0.8 0.9 1.1 1.2
principal_point    pixels at the network input scale; cx += s and cy += s               5 10 20 40
rot_noise          degrees; roll/pitch/yaw ~ N(0, s) per camera (calibration error)     0.5 1 2 4
trans_noise        cm; x/y/z shift ~ N(0, s) per camera (calibration error)             5 10 20 40
height             metres; every camera believed higher (calibration error)             -0.2 -0.1 0.1 0.2
pitch              degrees; every camera believed pitched down (calibration error)      -2 -1 1 2
cam_crash          number of cameras blacked out per sample (RoboBEV Cam Crash)         2 4 5
frame_lost         each camera blacked out with probability s / 6 (RoboBEV Frame Lost)  1 2 3 4 5
drop_camera        camera name(s) blacked out; join several with '+'                    each of the six
rig                dataroots re-rendered through another rig (see below)               (required)
=================  ==================================================================  =================

The perturbation goes into ``test_dataloader.dataset.pipeline`` after the loading and resize /
crop transforms, right before the first NormalizeMultiviewImage / PadMultiViewImage /
Pack3DDetInputs (it acts on the raw pixels of the network-size images). One Runner loads the
checkpoint once; each run swaps in a test dataloader with the perturbed pipeline and runs the test
loop. Random sweeps (rot_noise, trans_noise, cam_crash, frame_lost) run once per seed 0..N-1
(``--seeds``, a perturbation is a pure function of (seed, sample)); the others once.

``--data-root DIR`` evaluates on another dataroot with the same (relative) info file names, e.g. a
synthetic set re-rendered through another rig (``tools/make_synthetic_nuscenes.py --rig ...``
then ``tools/create_data.py``), so a true rig change can be set against the calibration-error sweeps.

``--sweep rig --severities DIR [DIR ...]`` does that comparison in one run. Each DIR is a synthetic
dataroot re-rendered from the same scenes through another rig (``make_synthetic_nuscenes.py --rig
focal=S,height=DZ,pitch=DEG`` records it in ``DIR/rig.json``); per DIR three runs, all measured
against the clean run on the base dataroot (the config's, or ``--data-root``):

- ``<rig>: calibrated``: DIR as it is (a different rig, correctly calibrated);
- ``<rig>: old calibration``: DIR's images with the base rig's calibration (the rig changed and
  nobody recalibrated: ``FocalScale`` 'calib' by 1/S and ``CameraHeightPitchOffset`` by -DZ, -DEG,
  which undo DIR's calibration exactly);
- ``<rig>: calibration error``: the base images with DIR's calibration (only the calibration is
  wrong: ``FocalScale`` 'calib' by S, ``CameraHeightPitchOffset`` by DZ, DEG).

Writes per sweep ``DIR/<sweep>.csv`` (one row per run: severity, seed, NDS, mAP, mATE, mASE, mAOE, mAVE,
mAAE and the relative drop of NDS and mAP against the clean run), ``DIR/<sweep>.md`` (per severity
the mean +- std over seeds of every metric and of the drops) and ``DIR/<sweep>.png`` (NDS against
severity). Relative drop = (clean - perturbed) / clean in percent (positive = worse; empty when
the clean value is 0).
"""
import argparse
import copy
import csv
import json
import math
import os
import os.path as osp
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

from sf3d.datasets.nuscenes_info import CAMERAS
from sf3d.engine import load_run_config, metrics_of_test_evaluator
from sf3d.registry import TRANSFORMS

METRICS = ('NDS', 'mAP', 'mATE', 'mASE', 'mAOE', 'mAVE', 'mAAE')
DROP_METRICS = ('NDS', 'mAP')  # higher is better: relative drop against the clean run
CLEAN = 'clean'
INSERT_BEFORE = ('NormalizeMultiviewImage', 'PadMultiViewImage', 'Pack3DDetInputs')
Severity = Union[float, int, str]


@dataclass(frozen=True)
class Sweep:
    """One sweep: ``make(severity, seed)`` is the perturbation's pipeline dict."""
    description: str
    unit: str  # the severity axis label
    defaults: Tuple[Severity, ...]
    make: Callable[[Severity, int], dict]
    kind: type = float  # how a --severities value is parsed: float, int or str (camera names)
    random: bool = False  # run once per seed
    neutral: Optional[float] = 0.0  # the severity that equals the clean run (plotted there), None: categorical


def _focal(mode: str) -> Callable[[Severity, int], dict]:
    return lambda s, seed: dict(type='FocalScale', scale=float(s), mode=mode)


SWEEPS: Dict[str, Sweep] = {
    'focal_consistent': Sweep('focal length scaled, image zoomed and intrinsics updated (a different lens, '
                              'correctly calibrated)', 'focal scale', (0.8, 0.9, 1.1, 1.2), _focal('consistent'),
                              neutral=1.0),
    'focal_calib': Sweep('focal length scaled in the intrinsics only (a calibration error)', 'focal scale',
                         (0.8, 0.9, 1.1, 1.2), _focal('calib'), neutral=1.0),
    'focal_image': Sweep('image zoomed, intrinsics unchanged (an unmodelled lens)', 'focal scale',
                         (0.8, 0.9, 1.1, 1.2), _focal('image'), neutral=1.0),
    'principal_point': Sweep('principal point shifted right and down by the severity (calibration error)',
                             'principal point shift (px)', (5.0, 10.0, 20.0, 40.0),
                             lambda s, seed: dict(type='PrincipalPointShift', du=float(s), dv=float(s))),
    'rot_noise': Sweep('random rotation of each camera, roll/pitch/yaw ~ N(0, severity) (calibration error)',
                       'rotation noise std (deg)', (0.5, 1.0, 2.0, 4.0),
                       lambda s, seed: dict(type='ExtrinsicNoise', rot_deg=float(s), trans_cm=0.0, seed=seed),
                       random=True),
    'trans_noise': Sweep('random shift of each camera, x/y/z ~ N(0, severity) (calibration error)',
                         'translation noise std (cm)', (5.0, 10.0, 20.0, 40.0),
                         lambda s, seed: dict(type='ExtrinsicNoise', rot_deg=0.0, trans_cm=float(s), seed=seed),
                         random=True),
    'height': Sweep('every camera believed higher by the severity (calibration error)', 'camera height offset (m)',
                    (-0.2, -0.1, 0.1, 0.2), lambda s, seed: dict(type='CameraHeightPitchOffset', height_m=float(s))),
    'pitch': Sweep('every camera believed pitched down by the severity (calibration error)',
                   'camera pitch offset (deg)',
                   (-2.0, -1.0, 1.0, 2.0), lambda s, seed: dict(type='CameraHeightPitchOffset', pitch_deg=float(s))),
    'cam_crash': Sweep('RoboBEV Cam Crash: the severity = number of cameras blacked out, chosen per sample',
                       'cameras blacked out', (2, 4, 5),
                       lambda s, seed: dict(type='CameraDropout', mode='crash', severity=int(s), seed=seed),
                       kind=int, random=True),
    'frame_lost': Sweep('RoboBEV Frame Lost: each camera blacked out with probability severity / 6',
                        'frame lost severity (p = s / 6)', (1.0, 2.0, 3.0, 4.0, 5.0),
                        lambda s, seed: dict(type='CameraDropout', mode='frame_lost', severity=float(s), seed=seed),
                        random=True),
    'drop_camera': Sweep('the named camera(s) blacked out in every sample', 'camera blacked out', CAMERAS,
                         lambda s, seed: dict(type='CameraDropout', mode='named', cameras=str(s).split('+')),
                         kind=str, neutral=None),
    'rig': Sweep('the same scenes rendered through another camera rig (calibrated, with the old calibration) '
                 'against the calibration error alone', 'camera rig', (), lambda s, seed: None, kind=str,
                 neutral=None),
}
RIG_RUNS = ('calibrated', 'old calibration', 'calibration error')


def rig_perturbations(rig, inverse: bool) -> List[dict]:
    """The calibration change from the base rig to ``rig`` (a ``RigSpec``), or back (``inverse``)."""
    if getattr(rig, 'roll', 0.0) != 0.0:
        raise ValueError(f'--sweep rig: a rig with roll ({rig}) has no calibration-error counterpart here '
                         '(CameraHeightPitchOffset moves height and pitch only); re-render it without roll')
    sign = -1.0 if inverse else 1.0
    out = []
    if rig.focal != 1.0:
        out.append(dict(type='FocalScale', scale=1.0 / rig.focal if inverse else rig.focal, mode='calib'))
    if rig.height != 0.0 or rig.pitch != 0.0:
        out.append(dict(type='CameraHeightPitchOffset', height_m=sign * rig.height, pitch_deg=sign * rig.pitch))
    return out


def _rig_label(rig) -> str:
    return ','.join(f'{k}={getattr(rig, k):g}' for k in ('focal', 'height', 'pitch')
                    if getattr(rig, k) != (1.0 if k == 'focal' else 0.0)) or 'nominal'


# ---------------------------------------------------------------------------- arguments

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Evaluate a detector under perturbed cameras (one or more sweeps '
                                                 'sharing one clean run)')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--sweep', required=True, nargs='+', help=f'one or more of {", ".join(SWEEPS)}')
    parser.add_argument('--severities', nargs='+', default=None,
                        help="severities (default: the sweep's, see the module docstring); camera names for "
                             "drop_camera; with several sweeps NAME=V1,V2,... per sweep")
    parser.add_argument('--seeds', type=int, default=3, help='seeds per severity for random sweeps (default 3)')
    parser.add_argument('--data-root', default=None,
                        help='evaluate on this dataroot instead (same relative info file names), '
                             'e.g. a re-rendered rig')
    parser.add_argument('--out', required=True, help='folder for <sweep>.csv, <sweep>.md and <sweep>.png')
    parser.add_argument('--work-dir', default=None, help='runner logs (default: OUT/work_dirs/<sweep>[+<sweep>...])')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    return parser.parse_args(argv)


def get_sweep(name: str) -> Sweep:
    if name not in SWEEPS:
        raise ValueError(f'unknown sweep {name!r}; choose one of {", ".join(SWEEPS)}')
    return SWEEPS[name]


def parse_severities(name: str, texts: Optional[Sequence[str]]) -> List[Severity]:
    """The sweep's severities from ``--severities`` (strings) or its defaults; each checked by
    building its perturbation. Raises ValueError naming the sweep and the bad value."""
    sweep = get_sweep(name)
    if name == 'rig':
        return _rig_roots(texts)
    if texts is None:
        values = list(sweep.defaults)
    else:
        values = []
        for text in texts:
            if sweep.kind is str:
                unknown = [c for c in str(text).split('+') if c not in CAMERAS]
                if unknown:
                    raise ValueError(f'--severities for {name}: unknown camera(s) {unknown} in {text!r}; '
                                     f'expected names from {CAMERAS}, several joined with +')
                values.append(str(text))
                continue
            try:
                value = sweep.kind(text)
            except ValueError:
                what = 'an integer' if sweep.kind is int else 'a number'
                raise ValueError(f'--severities for {name}: {text!r} is not {what} ({sweep.unit})') from None
            if not math.isfinite(value):
                raise ValueError(f'--severities for {name}: {text!r} must be finite')
            values.append(value)
    if not values:
        raise ValueError(f'--severities for {name}: give at least one severity')
    if len(set(values)) != len(values):
        raise ValueError(f'--severities for {name}: repeated values in {values}')
    with DefaultScope.overwrite_default_scope('sf3d'):
        for value in values:
            try:
                TRANSFORMS.build(sweep.make(value, 0))
            except ValueError as err:
                raise ValueError(f'--severities for {name}: severity {value!r} is invalid: {err}') from None
    return values


def parse_sweep_severities(names: Sequence[str], texts: Optional[Sequence[str]]) -> Dict[str, List[Severity]]:
    """Every sweep's severities (in ``names`` order) from ``--severities``: with one sweep its plain values,
    with several ``NAME=V1,V2,...`` entries (a sweep not named gets its defaults). Raises ValueError for
    unknown or repeated sweeps and for entries that do not name one of ``names``."""
    names = list(names)
    for name in names:
        get_sweep(name)
    if len(set(names)) != len(names):
        raise ValueError(f'--sweep: repeated sweeps in {names}')
    if len(names) == 1:
        return {names[0]: parse_severities(names[0], texts)}
    given: Dict[str, List[str]] = {}
    for text in texts or ():
        name, sep, values = str(text).partition('=')
        if not sep or name not in names or not values:
            raise ValueError(f'--severities {text!r}: with several sweeps ({", ".join(names)}) each entry must be '
                             'NAME=V1,V2,... for one of them')
        if name in given:
            raise ValueError(f'--severities: sweep {name!r} is given twice')
        given[name] = values.split(',')
    return {name: parse_severities(name, given.get(name)) for name in names}


def _rig_roots(texts: Optional[Sequence[str]]) -> List[str]:
    """The rig sweep's severities: re-rendered dataroots, each with a readable rig.json."""
    from sf3d.datasets.synthetic_nuscenes import read_rig
    if not texts:
        raise ValueError('--severities for rig: give the re-rendered dataroots (tools/make_synthetic_nuscenes.py '
                         '--rig ...), e.g. --severities data/synth_focal1.1 data/synth_height0.2')
    if len(set(texts)) != len(texts):
        raise ValueError(f'--severities for rig: repeated values in {list(texts)}')
    for root in texts:
        if not osp.isdir(root):
            raise FileNotFoundError(f'--severities for rig: {root} is not a folder')
        read_rig(root)
    return [str(t) for t in texts]


# ---------------------------------------------------------------------------- config

def _type_name(transform: dict) -> str:
    kind = transform.get('type')
    return kind.split('.')[-1] if isinstance(kind, str) else getattr(kind, '__name__', str(kind))


def insert_position(pipeline: Sequence[dict]) -> int:
    """Index of the first of INSERT_BEFORE in ``pipeline``, which must come after LoadMultiViewImages.
    Raises ValueError naming the pipeline's transforms otherwise."""
    names = [_type_name(t) for t in pipeline]
    positions = [i for i, n in enumerate(names) if n in INSERT_BEFORE]
    if 'LoadMultiViewImages' not in names or not positions or positions[0] < names.index('LoadMultiViewImages'):
        raise ValueError(f'test pipeline {names}: expected LoadMultiViewImages followed (later) by one of '
                         f'{INSERT_BEFORE}, before which the perturbation goes')
    return positions[0]


def insert_perturbation(pipeline: Sequence[dict], perturbation: Union[dict, Sequence[dict]]) -> List[dict]:
    """A copy of ``pipeline`` with ``perturbation`` (one transform dict or a list, applied in order) at
    ``insert_position``."""
    index = insert_position(pipeline)
    pipeline = [copy.deepcopy(t) for t in pipeline]
    added = [dict(perturbation)] if isinstance(perturbation, dict) else [dict(p) for p in perturbation]
    return pipeline[:index] + added + pipeline[index:]


def _test_dataset(cfg: Config) -> ConfigDict:
    dataset = cfg.get('test_dataloader', {}).get('dataset')
    if not isinstance(dataset, dict) or not isinstance(dataset.get('pipeline'), list):
        raise ValueError(f'test_dataloader.dataset must be a dataset dict with a pipeline list, got {dataset!r}')
    return dataset


def set_data_root(cfg: Config, data_root: str) -> None:
    """Point the test dataset and every test metric at ``data_root`` (relative ann_file names are
    then read there). Raises FileNotFoundError for a missing folder or info file."""
    if not osp.isdir(data_root):
        raise FileNotFoundError(f'--data-root {data_root} is not a folder')
    dataset = _test_dataset(cfg)
    metrics = metrics_of_test_evaluator(cfg)
    for owner, what in [(dataset, 'test_dataloader.dataset')] + [(m, 'test_evaluator') for m in metrics]:
        ann_file = owner.get('ann_file')
        if ann_file and osp.isabs(ann_file):
            raise ValueError(f'--data-root: {what}.ann_file {ann_file!r} is absolute; use a name relative to the '
                             'data root so that the other root\'s info file is read')
        if ann_file and not osp.isfile(osp.join(data_root, ann_file)):
            raise FileNotFoundError(f'--data-root: {osp.join(data_root, ann_file)} does not exist; write it with '
                                    f'`python tools/create_data.py nuscenes --root-path {data_root} ...`')
        owner.data_root = data_root


def build_config(args: argparse.Namespace) -> Config:
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint file not found: {args.checkpoint}')
    work_dir = args.work_dir or osp.join(args.out, 'work_dirs', '+'.join(args.sweep))
    cfg = load_run_config(args.config, cfg_options=args.cfg_options, work_dir=work_dir)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if args.data_root:
        set_data_root(cfg, args.data_root)
    insert_position(_test_dataset(cfg).pipeline)  # fails before any work if the perturbation cannot go in
    return cfg


# ---------------------------------------------------------------------------- running

def select_metrics(metrics: Dict[str, float]) -> Dict[str, float]:
    """NDS, mAP and the TP errors from the evaluator's output (keys ``<prefix>/NDS`` etc.)."""
    out = {}
    for name in METRICS:
        keys = [k for k in metrics if k.split('/')[-1] == name]
        if len(keys) != 1:
            raise KeyError(f'the test evaluator returned {sorted(metrics)}; expected exactly one {name!r} key '
                           '(a NuScenesMetric, e.g. NuScenes/NDS)')
        out[name] = float(metrics[keys[0]])
    return out


Run = Tuple[Severity, int, Union[None, dict, List[dict]], Optional[str]]  # severity, seed, perturbation, data root


def plan_runs(name: str, severities: Sequence[Severity], seeds: int) -> List[Run]:
    """(severity, seed, perturbation (None, a transform dict or a list of them), data root (None: the
    base one)) for the clean run and every perturbed run."""
    if seeds < 1:
        raise ValueError(f'--seeds must be >= 1, got {seeds}')
    sweep = get_sweep(name)
    runs: List[Run] = [(CLEAN, 0, None, None)]
    if name == 'rig':
        from sf3d.datasets.synthetic_nuscenes import read_rig
        labels = {}
        for root in severities:
            rig = read_rig(str(root))
            label = _rig_label(rig)
            if label in labels:
                raise ValueError(f'--severities for rig: {labels[label]} and {root} were rendered through the same '
                                 f'rig ({label})')
            labels[label] = root
            runs += [(f'{label}: {RIG_RUNS[0]}', 0, None, str(root)),
                     (f'{label}: {RIG_RUNS[1]}', 0, rig_perturbations(rig, inverse=True), str(root)),
                     (f'{label}: {RIG_RUNS[2]}', 0, rig_perturbations(rig, inverse=False), None)]
        return runs
    for severity in severities:
        for seed in (range(seeds) if sweep.random else [0]):
            runs.append((severity, seed, sweep.make(severity, seed), None))
    return runs


def plan_sweeps(plan: Dict[str, Sequence[Severity]], seeds: int) -> List[Tuple[str, Run]]:
    """(sweep, run) for one shared clean run (sweep ``clean``) and every sweep's perturbed runs
    (:func:`plan_runs`)."""
    runs: List[Tuple[str, Run]] = [(CLEAN, (CLEAN, 0, None, None))]
    for name, severities in plan.items():
        runs += [(name, run) for run in plan_runs(name, severities, seeds)[1:]]  # [0] is the clean run
    return runs


def run_sweeps(cfg: Config, runs: Sequence[Tuple[str, Run]], progress: bool = True) -> Dict[str, List[dict]]:
    """Run :func:`plan_sweeps`' runs with one Runner (the clean evaluation once). Returns per sweep its
    rows, the clean one first: one dict per run (sweep, severity, seed, perturbation, data_root, the
    METRICS and ``<metric>_rel_drop_pct`` against the shared clean run). A run on another data root
    gets that root's test dataset and a test evaluator built for it."""
    from tqdm import tqdm
    names = list(dict.fromkeys(name for name, _ in runs[1:]))
    runner = Runner.from_cfg(cfg)
    loop = runner.test_loop
    base_evaluator = loop.evaluator
    roots: Dict[Optional[str], Tuple[ConfigDict, object]] = {None: (copy.deepcopy(cfg.test_dataloader), None)}
    rows = []
    bar = tqdm(runs, desc=f'camera ablation {"+".join(names)}', unit='run', file=sys.stderr, disable=not progress)
    for name, (severity, seed, perturbation, data_root) in bar:
        if data_root not in roots:
            root_cfg = copy.deepcopy(cfg)
            set_data_root(root_cfg, data_root)
            roots[data_root] = (root_cfg.test_dataloader, root_cfg.test_evaluator)
        loader_cfg, evaluator_cfg = roots[data_root]
        loader = copy.deepcopy(loader_cfg)
        if perturbation is not None:
            loader.dataset.pipeline = insert_perturbation(loader.dataset.pipeline, perturbation)
        loop.dataloader = runner.build_dataloader(loader, seed=runner.seed)
        if evaluator_cfg is None:
            loop.evaluator = base_evaluator
        else:
            loop.evaluator = runner.build_evaluator(evaluator_cfg)
            loop.evaluator.dataset_meta = loop.dataloader.dataset.metainfo
        metrics = select_metrics(runner.test())
        rows.append(dict(sweep=name, severity=severity, seed=seed,
                         perturbation=json.dumps(perturbation) if perturbation else '',
                         data_root=data_root or '', **metrics))
        bar.set_postfix(sweep=name, severity=severity, seed=seed, NDS=f"{metrics['NDS']:.4f}")
    loop.evaluator = base_evaluator
    out = {}
    for name in names:
        out[name] = [dict(rows[0], sweep=name)] + [r for r in rows[1:] if r['sweep'] == name]
        add_relative_drops(out[name])
    return out


def add_relative_drops(rows: List[dict]) -> None:
    """``<m>_rel_drop_pct = 100 (clean - value) / clean`` for m in DROP_METRICS (NaN when clean is 0)."""
    clean = next(r for r in rows if r['severity'] == CLEAN)
    for row in rows:
        for m in DROP_METRICS:
            row[f'{m}_rel_drop_pct'] = 100.0 * (clean[m] - row[m]) / clean[m] if clean[m] > 0 else float('nan')


def summarise(rows: List[dict]) -> List[dict]:
    """Per severity (clean first, then in run order): n runs and mean / std (over seeds, ddof 1; 0 for one
    run) of every metric and drop."""
    order: List[Severity] = []
    for row in rows:
        if row['severity'] not in order:
            order.append(row['severity'])
    keys = list(METRICS) + [f'{m}_rel_drop_pct' for m in DROP_METRICS]
    out = []
    for severity in order:
        group = [r for r in rows if r['severity'] == severity]
        entry = dict(severity=severity, runs=len(group))
        for key in keys:
            values = np.array([r[key] for r in group], dtype=np.float64)
            entry[key] = float(values.mean())
            entry[f'{key}_std'] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out.append(entry)
    return out


# ---------------------------------------------------------------------------- outputs

def _fmt_severity(value: Severity) -> str:
    return f'{value:g}' if isinstance(value, (int, float)) else str(value)


def write_csv(rows: List[dict], path: str) -> None:
    fields = ['sweep', 'severity', 'seed', *METRICS, *[f'{m}_rel_drop_pct' for m in DROP_METRICS], 'perturbation',
              'data_root']
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            out = {k: row[k] for k in fields}
            out['severity'] = _fmt_severity(row['severity'])
            for k in fields[3:-2]:
                out[k] = '' if math.isnan(row[k]) else f'{row[k]:.6g}'
            writer.writerow(out)


def _cell(entry: dict, key: str, pct: bool = False) -> str:
    mean, std = entry[key], entry[f'{key}_std']
    if math.isnan(mean):
        return 'n/a'
    text = f'{mean:.1f}%' if pct else f'{mean:.4f}'
    if entry['runs'] > 1:
        text += f' ± {std:.1f}' if pct else f' ± {std:.4f}'
    return text


def write_markdown(summary: List[dict], path: str, name: str, info: Dict[str, str]) -> None:
    sweep = get_sweep(name)
    lines = [f'# Camera ablation: {name}', '', f'{sweep.description[0].upper()}{sweep.description[1:]}.', '']
    lines += [f'- {k}: `{v}`' for k, v in info.items()]
    lines += ['', 'Relative drop = (clean - perturbed) / clean (positive = worse); values are mean ± std '
              'over seeds where a severity has several runs.', '']
    header = [f'severity ({sweep.unit})', 'runs', 'NDS', 'NDS drop', 'mAP', 'mAP drop', *METRICS[2:]]
    lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for entry in summary:
        clean = entry['severity'] == CLEAN
        cells = [_fmt_severity(entry['severity']), str(entry['runs']), _cell(entry, 'NDS'),
                 '-' if clean else _cell(entry, 'NDS_rel_drop_pct', pct=True), _cell(entry, 'mAP'),
                 '-' if clean else _cell(entry, 'mAP_rel_drop_pct', pct=True),
                 *[_cell(entry, m) for m in METRICS[2:]]]
        lines.append('| ' + ' | '.join(cells) + ' |')
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def write_plot(summary: List[dict], path: str, name: str) -> None:
    """NDS (mean, error bars = std over seeds) against severity; the clean run as a dashed line (and
    as the point at the neutral severity); a bar chart for categorical sweeps (drop_camera)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    sweep = get_sweep(name)
    clean = next(e for e in summary if e['severity'] == CLEAN)
    perturbed = [e for e in summary if e['severity'] != CLEAN]
    fig = Figure(figsize=(6.0, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if sweep.neutral is None:
        labels = [CLEAN] + [_fmt_severity(e['severity']) for e in perturbed]
        entries = [clean] + perturbed
        ax.bar(range(len(entries)), [e['NDS'] for e in entries], yerr=[e['NDS_std'] for e in entries],
               color=['grey'] + ['C0'] * len(perturbed))
        ax.set_xticks(range(len(entries)), labels, rotation=30, ha='right')
    else:
        points = sorted([(sweep.neutral, clean)] + [(float(e['severity']), e) for e in perturbed], key=lambda p: p[0])
        ax.errorbar([p[0] for p in points], [p[1]['NDS'] for p in points], yerr=[p[1]['NDS_std'] for p in points],
                    marker='o', capsize=3, label='NDS (mean ± std over seeds)')
        ax.axhline(clean['NDS'], color='grey', linestyle='--', label=f"clean (NDS {clean['NDS']:.4f})")
        ax.legend(loc='best')
    ax.set_xlabel(sweep.unit)
    ax.set_ylabel('NDS')
    ax.set_title(f'{name}: NDS against severity')
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------------- main

def main(argv=None) -> Dict[str, object]:
    """Run the sweeps; returns ``dict(sweeps={name: dict(rows, summary, csv, md, png)})``, and with one
    sweep also that sweep's ``rows, summary, csv, md, png`` at the top level."""
    args = parse_args(argv)
    runs = plan_sweeps(parse_sweep_severities(args.sweep, args.severities), args.seeds)  # all checked before any work
    cfg = build_config(args)
    results = run_sweeps(cfg, runs, progress=not args.no_progress)
    os.makedirs(args.out, exist_ok=True)
    out = {}
    for name, rows in results.items():
        summary = summarise(rows)
        paths = {ext: osp.join(args.out, f'{name}.{ext}') for ext in ('csv', 'md', 'png')}
        write_csv(rows, paths['csv'])
        info = dict(config=args.config, checkpoint=args.checkpoint,
                    data_root=args.data_root or cfg.test_dataloader.dataset.get('data_root', ''),
                    seeds=str(args.seeds) if get_sweep(name).random else '1 (deterministic sweep)')
        write_markdown(summary, paths['md'], name, info)
        write_plot(summary, paths['png'], name)
        print(open(paths['md']).read())
        print('written: ' + ', '.join(paths.values()))
        out[name] = dict(rows=rows, summary=summary, **paths)
    return dict(sweeps=out, **(out[args.sweep[0]] if len(out) == 1 else {}))


if __name__ == '__main__':
    main()
