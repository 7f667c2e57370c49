"""Where a detector's NDS is lost: the devkit's NDS with one prediction attribute at a time replaced
by the ground truth's (an oracle), on the detections the model already makes.

    python tools/analysis/nds_oracle.py RESULTS_JSON --data-root DIR [--version v1.0-mini]
        [--eval-set mini_val] [--oracles velocity orientation_flip ...] [--out TABLE.md]

RESULTS_JSON is a nuScenes submission (``tools/test.py ... --cfg-options
test_evaluator.jsonfile_prefix=DIR`` writes ``DIR/results_nusc.json``). Each predicted box is paired
with the nearest ground-truth box of its class within ``--radius`` metres (centre distance in the
ground plane; the devkit's TP errors use 2 m), and an oracle changes only that attribute of the
paired boxes (unpaired boxes stay as predicted):

==================  ====================================================================
velocity            the GT velocity; the attribute follows it by the metric's own rule
                    (``sf3d.evaluation.nuscenes_metric.assign_attribute``, mmdet3d's)
zero_velocity       velocity 0 for every box (no oracle: what predicting "static" scores)
moving_state        velocity 0 where the GT stands still (speed <= 0.2 m/s), the predicted velocity
                    where it moves; the attribute follows (what a perfect ``head.moving`` flag gives)
attribute           the GT attribute
orientation_flip    the yaw turned by 180 degrees where that is closer to the GT yaw (the
                    front/back ambiguity alone)
orientation         the GT yaw
size                the GT size
translation         the GT centre (this also changes which boxes are true positives: mAP)
==================  ====================================================================

Every variant is scored by the devkit (``DetectionEval``, detection_cvpr_2019) on the same split; the
table lists NDS, mAP, the TP errors and the NDS gained over the submission as it is. The TP errors are
clipped at 1 in NDS (``NDS = (5 mAP + sum(1 - min(1, err))) / 10``), so an error above 1 gains
nothing until it drops below 1.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import os.path as osp
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

import numpy as np

ORACLES = ('velocity', 'zero_velocity', 'moving_state', 'attribute', 'orientation_flip', 'orientation', 'size',
           'translation')
DEFAULT_ORACLES = ('velocity', 'zero_velocity', 'moving_state', 'orientation_flip', 'orientation', 'size',
                   'translation')
TP_KEYS = (('mATE', 'trans_err'), ('mASE', 'scale_err'), ('mAOE', 'orient_err'), ('mAVE', 'vel_err'),
           ('mAAE', 'attr_err'))


def _yaw(quaternion: Sequence[float]) -> float:
    """Yaw (rad) of a (w, x, y, z) rotation, as the devkit's yaw_diff reads it."""
    from nuscenes.eval.common.utils import quaternion_yaw
    from pyquaternion import Quaternion
    return float(quaternion_yaw(Quaternion(quaternion)))


def _yaw_quaternion(yaw: float) -> List[float]:
    """(w, x, y, z) of a rotation by ``yaw`` (rad) about z."""
    from pyquaternion import Quaternion
    return [float(v) for v in Quaternion(axis=[0.0, 0.0, 1.0], angle=yaw).elements]


def pair_with_gt(boxes: Sequence[dict], gt: Sequence, radius: float) -> List[Optional[object]]:
    """For each predicted box (submission dict) the nearest GT ``DetectionBox`` of its class with a centre
    (x, y) closer than ``radius`` metres, or None."""
    out = []
    for box in boxes:
        best, best_dist = None, radius
        for g in gt:
            if g.detection_name != box['detection_name']:
                continue
            dist = math.hypot(g.translation[0] - box['translation'][0], g.translation[1] - box['translation'][1])
            if dist < best_dist:
                best, best_dist = g, dist
        out.append(best)
    return out


def apply_oracle(box: dict, gt, oracle: str) -> dict:
    """A copy of the submission ``box`` with ``oracle`` applied from its paired GT box (None: unpaired,
    unchanged except for ``zero_velocity``, which needs no GT)."""
    from sf3d.evaluation.nuscenes_metric import MOVING_SPEED, assign_attribute
    if oracle not in ORACLES:
        raise ValueError(f'unknown oracle {oracle!r}; choose from {ORACLES}')
    box = copy.deepcopy(box)
    if oracle == 'zero_velocity':
        box['velocity'] = [0.0, 0.0]
        box['attribute_name'] = assign_attribute(box['detection_name'], box['velocity'])
        return box
    if gt is None:
        return box
    if oracle == 'velocity':
        box['velocity'] = [float(v) for v in gt.velocity]
        box['attribute_name'] = assign_attribute(box['detection_name'], box['velocity'])
    elif oracle == 'moving_state':
        if math.hypot(*gt.velocity[:2]) <= MOVING_SPEED:
            box['velocity'] = [0.0, 0.0]
        box['attribute_name'] = assign_attribute(box['detection_name'], box['velocity'])
    elif oracle == 'attribute':
        box['attribute_name'] = gt.attribute_name
    elif oracle == 'orientation':
        box['rotation'] = [float(v) for v in gt.rotation]
    elif oracle == 'orientation_flip':
        diff = (_yaw(box['rotation']) - _yaw(gt.rotation) + math.pi) % (2 * math.pi) - math.pi
        if abs(diff) > math.pi / 2:
            box['rotation'] = _yaw_quaternion(_yaw(box['rotation']) + math.pi)
    elif oracle == 'size':
        box['size'] = [float(v) for v in gt.size]
    elif oracle == 'translation':
        box['translation'] = [float(v) for v in gt.translation]
    return box


def _evaluate(nusc, submission: dict, eval_set: str, work_dir: str, name: str) -> Dict[str, float]:
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval
    path = osp.join(work_dir, f'{name}.json')
    with open(path, 'w') as f:
        json.dump(submission, f)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        summary = DetectionEval(nusc, config=config_factory('detection_cvpr_2019'), result_path=path,
                                eval_set=eval_set, output_dir=osp.join(work_dir, name), verbose=False
                                ).evaluate()[0].serialize()
    out = dict(NDS=float(summary['nd_score']), mAP=float(summary['mean_ap']))
    out.update({name: float(summary['tp_errors'][key]) for name, key in TP_KEYS})
    return out


def measure(results: str, data_root: str, version: str = 'v1.0-mini', eval_set: Optional[str] = None,
            oracles: Sequence[str] = DEFAULT_ORACLES, radius: float = 2.0, progress: bool = True) -> List[dict]:
    """Rows ``dict(variant, NDS, mAP, mATE, mASE, mAOE, mAVE, mAAE, dNDS)``: the submission as it is,
    then one per oracle."""
    from nuscenes import NuScenes
    from nuscenes.eval.common.loaders import load_gt
    from nuscenes.eval.detection.data_classes import DetectionBox

    from sf3d.evaluation.nuscenes_metric import VERSION_SPLITS
    bad = [o for o in oracles if o not in ORACLES]
    if bad:
        raise ValueError(f'--oracles: unknown {bad}; choose from {ORACLES}')
    if not radius > 0:
        raise ValueError(f'--radius must be > 0 metres, got {radius}')
    if version not in VERSION_SPLITS:
        raise ValueError(f'--version must be one of {sorted(VERSION_SPLITS)}, got {version!r}')
    eval_set = eval_set or VERSION_SPLITS[version][0]
    if not osp.isfile(results):
        raise FileNotFoundError(f'{results} does not exist (write it with tools/test.py ... --cfg-options '
                                'test_evaluator.jsonfile_prefix=DIR)')
    with open(results) as f:
        submission = json.load(f)
    if not isinstance(submission, dict) or not isinstance(submission.get('results'), dict):
        raise ValueError(f"{results}: expected a nuScenes submission {{'meta': ..., 'results': {{token: [box, ...]}}}}")
    nusc = NuScenes(version=version, dataroot=data_root, verbose=False)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = load_gt(nusc, eval_set, DetectionBox, verbose=False)
    missing = [t for t in gt.sample_tokens if t not in submission['results']]
    if missing:
        raise ValueError(f'{results} has no entry for {len(missing)} of the {len(gt.sample_tokens)} {eval_set} '
                         f'samples of {data_root} (e.g. {missing[0]}): is it a submission for this split?')
    pairs = {tok: pair_with_gt(submission['results'][tok], gt[tok], radius) for tok in gt.sample_tokens}
    rows = []
    with tempfile.TemporaryDirectory() as work_dir:
        for variant in ('as submitted',) + tuple(oracles):
            if progress:
                print(f'scoring {variant} ...', file=sys.stderr, flush=True)
            if variant == 'as submitted':
                current = submission
            else:
                current = dict(submission, results={tok: [apply_oracle(b, g, variant) for b, g in
                                                          zip(submission['results'][tok], pairs[tok])]
                                                    for tok in gt.sample_tokens})
            rows.append(dict(variant=variant, **_evaluate(nusc, current, eval_set, work_dir, str(len(rows)))))
    for row in rows:
        row['dNDS'] = row['NDS'] - rows[0]['NDS']
    return rows


def table(rows: Sequence[dict]) -> str:
    """Markdown: one row per variant."""
    keys = ('NDS', 'mAP', 'mATE', 'mASE', 'mAOE', 'mAVE', 'mAAE')
    lines = ['| variant | ' + ' | '.join(keys) + ' | NDS gained |', '|---|' + '---|' * (len(keys) + 1)]
    for row in rows:
        gained = '-' if row['variant'] == 'as submitted' else f"{row['dNDS']:+.4f}"
        lines.append(f"| {row['variant']} | " + ' | '.join(f'{row[k]:.4f}' for k in keys) + f' | {gained} |')
    return '\n'.join(lines) + '\n'


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='NDS with one attribute at a time taken from the ground truth '
                                                 '(module docstring)')
    parser.add_argument('results', help='results_nusc.json (a nuScenes submission)')
    parser.add_argument('--data-root', required=True, help='nuScenes dataroot with the annotations')
    parser.add_argument('--version', default='v1.0-mini')
    parser.add_argument('--eval-set', default=None, help="the devkit split (default: the version's val split)")
    parser.add_argument('--oracles', nargs='+', default=list(DEFAULT_ORACLES), help=f'from {", ".join(ORACLES)}')
    parser.add_argument('--radius', type=float, default=2.0, help='metres: how far the paired GT centre may be')
    parser.add_argument('--out', default=None, help='also write the table to this markdown file')
    return parser.parse_args(argv)


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    rows = measure(args.results, args.data_root, args.version, args.eval_set, args.oracles, args.radius)
    text = table(rows)
    print(text)
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            f.write(text)
    return rows


if __name__ == '__main__':
    main()
