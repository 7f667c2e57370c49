"""nuScenes detection metric (NDS, mAP, TP errors) computed by the official nuscenes-devkit.

Pipeline of :class:`NuScenesMetric` (an mmengine ``BaseMetric``, so mmengine gathers the
per-sample results of every rank before ``compute_metrics`` runs on rank 0):

1. ``process`` keeps each sample's predictions as small CPU numpy arrays.
2. ``compute_metrics`` reads the info file once (the LiDAR and ego poses per sample token),
   converts the LiDAR-frame boxes to the global frame with :func:`sf3d.structures.to_nusc_boxes`
   (the one conversion), drops boxes beyond the devkit's class range (the devkit ignores them:
   same distance, same strict ``<``), keeps the 500 highest-scoring boxes per sample, assigns
   attributes by class and speed as mmdet3d does, and writes ``results_nusc.json`` atomically.
3. It then runs ``DetectionEval(...).evaluate()`` (no curve rendering) on the split and returns
   NDS, mAP, the five TP errors and the per-class AP (mean over the distance thresholds).

Devkit facts handled here: the result keys must equal the split's sample tokens (missing ones
are filled with empty lists and a warning, so their ground truth counts as missed); an all-empty
submission crashes the devkit (``Invalid box type: None``), so it is scored NDS 0 / mAP 0 / TP
errors 1 without calling it; the test split has no annotations, so it only supports
``format_only=True``, which writes and validates the leaderboard file (:func:`validate_submission`).
"""
import contextlib
import io
import json
import logging
import math
import os
import os.path as osp
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from nuscenes import NuScenes
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.common.loaders import load_prediction
from nuscenes.eval.detection.data_classes import DetectionBox
from nuscenes.eval.detection.constants import DETECTION_NAMES
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.eval.detection.utils import detection_name_to_rel_attributes
from nuscenes.utils import splits

from sf3d.datasets.nuscenes_info import CLASSES, load_nuscenes_infos
from sf3d.engine.checkpoint import atomic_write
from sf3d.registry import METRICS
from sf3d.structures import LiDARBoxes, to_nusc_boxes

# version -> (default eval set, eval sets the version holds)
VERSION_SPLITS = {'v1.0-trainval': ('val', ('train', 'val')),
                  'v1.0-mini': ('mini_val', ('mini_train', 'mini_val')),
                  'v1.0-test': ('test', ('test',))}
MODALITY_KEYS = ('use_camera', 'use_lidar', 'use_radar', 'use_map', 'use_external')
EVAL_CONFIG = 'detection_cvpr_2019'
MAX_BOXES_PER_SAMPLE = 500
MOVING_SPEED = 0.2  # m/s; above it a box gets its class's "moving" attribute (mmdet3d's rule)
DEFAULT_ATTRIBUTE = {
    'car': 'vehicle.parked', 'truck': 'vehicle.parked', 'trailer': 'vehicle.parked',
    'construction_vehicle': 'vehicle.parked', 'bus': 'vehicle.moving', 'pedestrian': 'pedestrian.moving',
    'bicycle': 'cycle.without_rider', 'motorcycle': 'cycle.without_rider', 'traffic_cone': '', 'barrier': '',
}
RESULT_FILE = 'results_nusc.json'
SUMMARY_FILE = 'metrics_summary.json'
# devkit TP metric -> reported name
TP_NAMES = {'trans_err': 'mATE', 'scale_err': 'mASE', 'orient_err': 'mAOE', 'vel_err': 'mAVE', 'attr_err': 'mAAE'}


def assign_attribute(name: str, velocity_xy: Sequence[float]) -> str:
    """mmdet3d's attribute for a predicted box of class ``name`` moving at ``velocity_xy`` (m/s).

    Faster than 0.2 m/s: vehicles ``vehicle.moving``, bicycle/motorcycle ``cycle.with_rider``, others
    their default. Otherwise: pedestrian ``pedestrian.standing``, bus ``vehicle.stopped``, others their
    default (:data:`DEFAULT_ATTRIBUTE`; '' for barrier and traffic_cone).
    """
    if name not in DEFAULT_ATTRIBUTE:
        raise ValueError(f'assign_attribute: unknown class {name!r}, expected one of {sorted(DEFAULT_ATTRIBUTE)}')
    if math.hypot(float(velocity_xy[0]), float(velocity_xy[1])) > MOVING_SPEED:
        if name in ('car', 'construction_vehicle', 'bus', 'truck', 'trailer'):
            return 'vehicle.moving'
        if name in ('bicycle', 'motorcycle'):
            return 'cycle.with_rider'
    elif name == 'pedestrian':
        return 'pedestrian.standing'
    elif name == 'bus':
        return 'vehicle.stopped'
    return DEFAULT_ATTRIBUTE[name]


def split_sample_tokens(nusc: NuScenes, eval_set: str) -> List[str]:
    """Sample tokens of the devkit's predefined split ``eval_set`` (the devkit's own scene lists)."""
    scene_names = set(splits.create_splits_scenes()[eval_set])
    return [s['token'] for s in nusc.sample if nusc.get('scene', s['scene_token'])['name'] in scene_names]


def _finite_list(value, length: int) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == length
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def _box_problems(box, token: str) -> List[str]:
    """What is wrong with one submitted box (empty list: nothing)."""
    if not isinstance(box, dict):
        return [f'a box is a {type(box).__name__}, not a dict']
    missing = [k for k in ('sample_token', 'translation', 'size', 'rotation', 'velocity', 'detection_name',
                           'detection_score', 'attribute_name') if k not in box]
    if missing:
        return [f'a box lacks {missing}']
    problems = []
    if box['sample_token'] != token:
        problems.append(f"a box has sample_token {box['sample_token']!r}")
    for key, length in (('translation', 3), ('size', 3), ('rotation', 4), ('velocity', 2)):
        if not _finite_list(box[key], length):
            problems.append(f'{key} {box[key]!r} is not {length} finite numbers')
    if _finite_list(box['size'], 3) and min(box['size']) <= 0:
        problems.append(f"size {box['size']} is not positive")
    if _finite_list(box['rotation'], 4) and abs(math.sqrt(sum(v * v for v in box['rotation'])) - 1) > 1e-3:
        problems.append(f"rotation {box['rotation']} is not a unit quaternion")
    score = box['detection_score']
    if not (isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score)):
        problems.append(f'detection_score {score!r} is not a finite number')
    name, attr = box['detection_name'], box['attribute_name']
    if name not in DETECTION_NAMES:
        problems.append(f'detection_name {name!r} is not one of {DETECTION_NAMES}')
    else:
        allowed = detection_name_to_rel_attributes(name) or ['']
        if attr not in allowed:
            problems.append(f'attribute_name {attr!r} is not valid for {name} (allowed: {allowed})')
    return problems


def validate_submission(submission, sample_tokens: Sequence[str],
                        max_boxes_per_sample: int = MAX_BOXES_PER_SAMPLE) -> None:
    """Check a nuScenes detection submission against the leaderboard rules; raise ValueError if broken.

    Args:
        submission: path of a ``results_nusc.json`` or its loaded dict
            ``{'meta': {use_camera, use_lidar, use_radar, use_map, use_external: bool},
            'results': {sample_token: [box dict, ...]}}``.
        sample_tokens: the split's sample tokens; ``results`` must hold exactly these keys.
        max_boxes_per_sample: at most this many boxes per sample (the devkit's 500).

    Each box needs ``sample_token`` (its key), finite ``translation`` (3), ``size`` (3, > 0),
    ``rotation`` (unit quaternion, 4), ``velocity`` (2), a finite ``detection_score``, a
    ``detection_name`` among the 10 classes and an ``attribute_name`` valid for that class per
    the devkit (``detection_name_to_rel_attributes``; '' for barrier and traffic_cone).
    The error names the file and lists the first problems found.

    When these checks pass, the file is loaded with the devkit's own loader
    (``nuscenes.eval.common.loaders.load_prediction`` with ``DetectionBox``, what the evaluation
    server runs first), which must accept it and hold every split token and every box; anything it
    refuses (e.g. an extra ``ego_translation`` field of the wrong length) raises a ValueError naming
    the file. A dict is written to a temporary JSON file for that step, so a dict and its file are
    checked alike.
    """
    where = submission if isinstance(submission, str) else 'submission'
    if isinstance(submission, str):
        with open(submission) as f:
            submission = json.load(f)
    problems = []
    if not isinstance(submission, dict) or set(submission) != {'meta', 'results'}:
        keys = sorted(submission) if isinstance(submission, dict) else type(submission).__name__
        raise ValueError(f'{where}: expected a dict with keys meta and results, got {keys}')
    meta, results = submission['meta'], submission['results']
    if not isinstance(meta, dict) or set(meta) != set(MODALITY_KEYS) or \
            not all(isinstance(v, bool) for v in meta.values()):
        problems.append(f'meta must map exactly {MODALITY_KEYS} to booleans, got {meta!r}')
    if not isinstance(results, dict):
        raise ValueError(f'{where}: results must be a dict sample_token -> list of boxes, '
                         f'got {type(results).__name__}')
    expected = set(sample_tokens)
    missing = [t for t in sample_tokens if t not in results]
    extra = [t for t in results if t not in expected]
    if missing:
        problems.append(f'{len(missing)} of the split\'s {len(expected)} sample tokens are missing '
                        f'(e.g. {missing[0]!r})')
    if extra:
        problems.append(f'{len(extra)} sample tokens are not in the split (e.g. {extra[0]!r})')
    for token, boxes in results.items():
        if not isinstance(boxes, list):
            problems.append(f'sample {token}: expected a list of boxes, got {type(boxes).__name__}')
            continue
        if len(boxes) > max_boxes_per_sample:
            problems.append(f'sample {token}: {len(boxes)} boxes, at most {max_boxes_per_sample} allowed')
        for i, box in enumerate(boxes):
            problems += [f'sample {token} box {i}: {p}' for p in _box_problems(box, token)]
        if len(problems) > 20:
            break
    if problems:
        raise ValueError(f'{where} is not a valid nuScenes detection submission; '
                         f'{len(problems)} problem(s) found (first ones):\n  ' + '\n  '.join(problems[:10]))
    num_boxes = sum(len(boxes) for boxes in results.values())
    if where != 'submission':
        _devkit_check(where, where, sample_tokens, num_boxes, max_boxes_per_sample)
        return
    with tempfile.TemporaryDirectory(prefix='sf3d_submission_') as tmp:
        path = osp.join(tmp, RESULT_FILE)
        with open(path, 'w') as f:
            json.dump(submission, f)
        _devkit_check(path, 'submission (checked as a temporary JSON file)', sample_tokens, num_boxes,
                      max_boxes_per_sample)


def _devkit_check(path: str, where: str, sample_tokens: Sequence[str], num_boxes: int,
                  max_boxes_per_sample: int) -> None:
    """Load ``path`` with the devkit's ``load_prediction``; it must hold ``sample_tokens`` and ``num_boxes``."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            loaded, _ = load_prediction(path, max_boxes_per_sample, DetectionBox, verbose=False)
    except Exception as err:  # the devkit asserts (AssertionError) or fails on a field (ValueError, TypeError...)
        raise ValueError(f'{where} is refused by the nuScenes devkit loader (load_prediction): '
                         f'{type(err).__name__}: {err}') from err
    missing = [t for t in sample_tokens if t not in loaded.boxes]
    count = sum(len(boxes) for boxes in loaded.boxes.values())
    if missing or count != num_boxes:
        raise ValueError(f'{where}: the nuScenes devkit loader read {len(loaded.boxes)} samples and {count} boxes, '
                         f'expected all {len(sample_tokens)} split tokens and {num_boxes} boxes'
                         + (f' (e.g. {missing[0]!r} is missing)' if missing else ''))


def _atomic_write_json(obj, path: str) -> None:
    """Write ``obj`` as JSON to ``path`` through :func:`~sf3d.engine.checkpoint.atomic_write`: a crash
    leaves either the old file or the complete new one, never a partial file."""
    with atomic_write(path, 'w', encoding='utf-8') as f:
        json.dump(obj, f)


@METRICS.register_module()
class NuScenesMetric(BaseMetric):
    """nuScenes detection score through the official devkit (see the module docstring).

    ``process`` takes the model's ``data_samples``: dicts with ``token`` (the sample token) and
    ``pred_instances_3d = {'bboxes_3d': Tensor (N, 9) [x, y, z_bottom, l, w, h, yaw, vx, vy] in
    the LiDAR frame or LiDARBoxes, 'scores_3d': (N,), 'labels_3d': (N,) indices into class_names}``.
    ``compute_metrics`` returns ``NDS, mAP, mATE, mASE, mAOE, mAVE, mAAE`` and ``{class}_AP`` for
    the ten devkit classes (keys prefixed ``NuScenes/`` under mmengine's Evaluator), or ``{}``
    with ``format_only``.

    Args:
        data_root: nuScenes root holding the ``version`` folder of tables.
        ann_file: the info file (mmdet3d 1.x v2 format) of the evaluated split, as given or
            relative to data_root; only the per-sample poses are read from it.
        version: 'v1.0-trainval', 'v1.0-mini' or 'v1.0-test'.
        eval_set: devkit split; None means val / mini_val / test for the three versions.
        modality: the submission's ``meta``; unspecified keys are False.
        jsonfile_prefix: folder for results_nusc.json and metrics_summary.json (kept); None: a
            temporary folder, removed after evaluation. Required with format_only.
        format_only: only write and validate the submission (e.g. the test split), return {}.
        class_names: label index -> devkit class name.
        collect_device: where results are gathered across ranks, 'cpu' or 'gpu'.
        prefix: key prefix; None uses ``default_prefix`` ('NuScenes').
    """
    default_prefix: Optional[str] = 'NuScenes'

    def __init__(self, data_root: str, ann_file: str, version: str = 'v1.0-trainval',
                 eval_set: Optional[str] = None, modality: Optional[dict] = None,
                 jsonfile_prefix: Optional[str] = None, format_only: bool = False,
                 class_names: Sequence[str] = CLASSES, collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if version not in VERSION_SPLITS:
            raise ValueError(f'NuScenesMetric: version must be one of {sorted(VERSION_SPLITS)}, got {version!r}')
        default_set, sets = VERSION_SPLITS[version]
        eval_set = default_set if eval_set is None else eval_set
        if eval_set not in sets:
            raise ValueError(f'NuScenesMetric: eval_set {eval_set!r} does not belong to {version} '
                             f'(its splits: {sets})')
        if eval_set == 'test' and not format_only:
            raise ValueError('NuScenesMetric: the v1.0-test split has no annotations; use format_only=True '
                             'with a jsonfile_prefix to write the leaderboard submission')
        if format_only and not jsonfile_prefix:
            raise ValueError('NuScenesMetric: format_only=True needs jsonfile_prefix (the folder that receives '
                             f'{RESULT_FILE})')
        if not osp.isdir(osp.join(data_root, version)):
            raise FileNotFoundError(f'NuScenesMetric: data_root {data_root!r} has no folder {version!r} '
                                    f'(expected the nuScenes tables in {osp.join(data_root, version)})')
        self.ann_file = self._resolve(data_root, ann_file)
        unknown = [k for k in (modality or {}) if k not in MODALITY_KEYS]
        if unknown:
            raise ValueError(f'NuScenesMetric: modality keys {unknown} unknown, expected some of {MODALITY_KEYS}')
        self.meta = {k: False for k in MODALITY_KEYS}
        self.meta.update({k: bool(v) for k, v in (modality or dict(use_camera=True)).items()})
        bad = [n for n in class_names if n not in DETECTION_NAMES]
        if bad or not class_names:
            raise ValueError(f'NuScenesMetric: class_names {bad or class_names!r} are not devkit detection '
                             f'classes {DETECTION_NAMES}')
        self.data_root, self.version, self.eval_set = data_root, version, eval_set
        self.jsonfile_prefix, self.format_only = jsonfile_prefix, format_only
        self.class_names = tuple(class_names)
        self.eval_config = config_factory(EVAL_CONFIG)
        self._nusc: Optional[NuScenes] = None
        self._poses: Optional[Dict[str, Tuple[np.ndarray, np.ndarray]]] = None
        self._split: Optional[List[str]] = None

    @staticmethod
    def _resolve(data_root: str, ann_file: str) -> str:
        for path in (ann_file, osp.join(data_root, ann_file)):
            if osp.isfile(path):
                return path
        raise FileNotFoundError(f'NuScenesMetric: ann_file {ann_file!r} not found (also tried '
                                f'{osp.join(data_root, ann_file)!r}); create it with '
                                f'`python tools/create_data.py nuscenes --root-path {data_root} ...`')

    # ------------------------------------------------------------------ lazily cached inputs
    @property
    def nusc(self) -> NuScenes:
        """The devkit's NuScenes tables (built once per metric)."""
        if self._nusc is None:
            self._nusc = NuScenes(version=self.version, dataroot=self.data_root, verbose=False)
        return self._nusc

    @property
    def split_tokens(self) -> List[str]:
        """Sample tokens of ``eval_set``, in table order."""
        if self._split is None:
            self._split = split_sample_tokens(self.nusc, self.eval_set)
        return self._split

    @property
    def poses(self) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """sample token -> (lidar2ego, ego2global), both (4, 4), read once from the info file."""
        if self._poses is None:
            infos = load_nuscenes_infos(self.ann_file)
            self._poses = {info['token']: (np.asarray(info['lidar_points']['lidar2ego'], dtype=np.float64),
                                           np.asarray(info['ego2global'], dtype=np.float64))
                           for info in infos['data_list']}
        return self._poses

    # ------------------------------------------------------------------ mmengine API
    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Keep each sample's token and predictions as CPU numpy arrays (boxes (N, 9) float32,
        scores (N,) float32, labels (N,) int64)."""
        for i, sample in enumerate(data_samples):
            if 'token' not in sample or 'pred_instances_3d' not in sample:
                raise KeyError(f'data_samples[{i}] needs keys token and pred_instances_3d, got {sorted(sample)}')
            token, pred = sample['token'], sample['pred_instances_3d']
            boxes = pred['bboxes_3d']
            boxes = boxes.tensor if isinstance(boxes, LiDARBoxes) else torch.as_tensor(boxes)
            boxes = boxes.detach().float().cpu().numpy()
            scores = torch.as_tensor(pred['scores_3d']).detach().float().cpu().numpy()
            labels = torch.as_tensor(pred['labels_3d']).detach().cpu().numpy()
            n = boxes.shape[0] if boxes.ndim == 2 else -1
            if boxes.ndim != 2 or boxes.shape[1] != 9 or scores.shape != (n,) or labels.shape != (n,):
                raise ValueError(f'sample {token}: expected bboxes_3d (N, 9), scores_3d (N,), labels_3d (N,), got '
                                 f'{boxes.shape}, {scores.shape}, {labels.shape}')
            if not np.isfinite(scores).all():
                raise ValueError(f'sample {token}: scores_3d contain NaN or inf')
            if n and (labels.min() < 0 or labels.max() >= len(self.class_names)):
                raise ValueError(f'sample {token}: labels_3d outside [0, {len(self.class_names)}): '
                                 f'{sorted(set(labels.tolist()))}')
            self.results.append(dict(token=str(token), bboxes_3d=boxes, scores_3d=scores,
                                     labels_3d=labels.astype(np.int64)))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        """Write results_nusc.json, then evaluate it with the devkit (or validate it, format_only)."""
        classes = (self.dataset_meta or {}).get('classes')
        if classes is not None and tuple(classes) != self.class_names:
            raise ValueError(f'NuScenesMetric: the dataset classes {tuple(classes)} differ from class_names '
                             f'{self.class_names}; labels would be mapped to the wrong names')
        if self.jsonfile_prefix:
            os.makedirs(self.jsonfile_prefix, exist_ok=True)
            return self._run(results, self.jsonfile_prefix)
        with tempfile.TemporaryDirectory(prefix='sf3d_nusc_') as tmp:
            return self._run(results, tmp)

    def _run(self, results: List[dict], out_dir: str) -> Dict[str, float]:
        result_path, num_boxes = self.format_results(results, out_dir)
        if self.format_only:
            validate_submission(result_path, self.split_tokens)
            print_log(f'NuScenesMetric: wrote and validated {result_path} ({len(self.split_tokens)} samples, '
                      f'{num_boxes} boxes)', logger='current')
            return {}
        if num_boxes == 0:
            print_log('NuScenesMetric: no box to evaluate (all predictions empty or out of range); '
                      'scoring NDS 0, mAP 0, TP errors 1 without the devkit', logger='current', level=logging.WARNING)
            return self._empty_metrics()
        return self._evaluate(result_path, out_dir)

    # ------------------------------------------------------------------ steps
    def format_results(self, results: List[dict], out_dir: str) -> Tuple[str, int]:
        """Convert ``process``'s results to the submission format and write ``out_dir/results_nusc.json``.

        Returns the file's path and the number of boxes in it. Raises ValueError on a token that is
        predicted twice, is not in the info file, or is not in ``eval_set``; split tokens without a
        prediction get an empty list (and a warning).
        """
        split = self.split_tokens
        split_set = set(split)
        records: Dict[str, List[dict]] = {}
        for r in results:
            token = r['token']
            if token in records:
                raise ValueError(f'NuScenesMetric: sample token {token!r} was predicted twice')
            if token not in self.poses:
                raise ValueError(f'NuScenesMetric: predicted sample token {token!r} is not in ann_file '
                                 f'{self.ann_file} ({len(self.poses)} samples)')
            if token not in split_set:
                raise ValueError(f'NuScenesMetric: predicted sample token {token!r} is not in the '
                                 f'{self.eval_set} split of {self.version}')
            records[token] = self._sample_records(token, r)
        missing = [t for t in split if t not in records]
        if missing:
            print_log(f'NuScenesMetric: {len(missing)} of the {len(split)} {self.eval_set} samples have no prediction '
                      f'(e.g. {missing[0]}); they are submitted empty, so their objects count as missed',
                      logger='current', level=logging.WARNING)
        submission = dict(meta=dict(self.meta), results={t: records.get(t, []) for t in split})
        path = osp.join(out_dir, RESULT_FILE)
        _atomic_write_json(submission, path)
        return path, sum(len(v) for v in records.values())

    def _sample_records(self, token: str, result: dict) -> List[dict]:
        """One sample's boxes as devkit box dicts in the global frame: in range, <= 500, by score."""
        lidar2ego, ego2global = self.poses[token]
        try:
            boxes = LiDARBoxes(torch.from_numpy(result['bboxes_3d']).double())
        except ValueError as e:
            raise ValueError(f'sample {token}: invalid predicted boxes: {e}') from None
        scores, labels = result['scores_3d'], result['labels_3d']
        names = [self.class_names[k] for k in labels]
        nusc_boxes = to_nusc_boxes(boxes, lidar2ego, ego2global, scores=scores, names=names)
        ranges = self.eval_config.class_range
        # the devkit's own filter: xy distance to the ego position of the LiDAR key frame, strict <
        keep = [i for i, b in enumerate(nusc_boxes)
                if np.hypot(*(b.center[:2] - ego2global[:2, 3])) < ranges[b.name]]
        keep = sorted(keep, key=lambda i: -float(scores[i]))[:MAX_BOXES_PER_SAMPLE]
        out = []
        for i in keep:
            b = nusc_boxes[i]
            out.append(dict(sample_token=token, translation=b.center.tolist(), size=b.wlh.tolist(),
                            rotation=b.orientation.elements.tolist(), velocity=b.velocity[:2].tolist(),
                            detection_name=b.name, detection_score=float(b.score),
                            attribute_name=assign_attribute(b.name, b.velocity[:2])))
        return out

    def _evaluate(self, result_path: str, out_dir: str) -> Dict[str, float]:
        """Run the devkit on ``result_path``; write metrics_summary.json; log a table."""
        devkit_output = io.StringIO()  # the devkit prints progress bars even with verbose=False
        with contextlib.redirect_stdout(devkit_output), contextlib.redirect_stderr(devkit_output):
            evaluator = DetectionEval(self.nusc, config=self.eval_config, result_path=result_path,
                                      eval_set=self.eval_set, output_dir=out_dir, verbose=False)
            summary = evaluator.evaluate()[0].serialize()
        if devkit_output.getvalue().strip():
            print_log(devkit_output.getvalue(), logger='current', level=logging.DEBUG)
        with contextlib.suppress(OSError):
            os.rmdir(osp.join(out_dir, 'plots'))  # made (empty) by DetectionEval; no curves are rendered
        _atomic_write_json(summary, osp.join(out_dir, SUMMARY_FILE))
        metrics = dict(NDS=summary['nd_score'], mAP=summary['mean_ap'])
        metrics.update({TP_NAMES[k]: summary['tp_errors'][k] for k in TP_NAMES})
        metrics.update({f'{c}_AP': summary['mean_dist_aps'][c] for c in CLASSES})
        metrics = {k: float(v) for k, v in metrics.items()}
        print_log(self._table(metrics, summary['label_tp_errors']), logger='current')
        return metrics

    @staticmethod
    def _empty_metrics() -> Dict[str, float]:
        """The devkit's convention for classes without a detection: AP 0 and TP error 1."""
        metrics = dict(NDS=0.0, mAP=0.0)
        metrics.update({name: 1.0 for name in TP_NAMES.values()})
        metrics.update({f'{c}_AP': 0.0 for c in CLASSES})
        return metrics

    @staticmethod
    def _table(metrics: Dict[str, float], label_tp_errors: Dict[str, Dict[str, float]]) -> str:
        """A markdown table: per-class AP and TP errors, then the means and NDS."""
        header = '| class | AP | ' + ' | '.join(n[1:] for n in TP_NAMES.values()) + ' |'
        rows = [header, '|' + '---|' * (len(TP_NAMES) + 2)]
        for c in CLASSES:
            errs = ' | '.join(f'{label_tp_errors[c][k]:.3f}' for k in TP_NAMES)
            rows.append(f'| {c} | {metrics[f"{c}_AP"]:.3f} | {errs} |')
        rows.append(f'| mean | {metrics["mAP"]:.3f} | ' + ' | '.join(f'{metrics[n]:.3f}' for n in TP_NAMES.values())
                    + ' |')
        return 'nuScenes detection (official devkit)\n' + '\n'.join(rows) + f'\nNDS {metrics["NDS"]:.4f}'
