"""NuScenesMetric against the unchanged nuscenes-devkit on a synthetic nuScenes.

One synthetic v1.0-mini (mini_val: 2 scenes x 2 samples, all ten classes) and one v1.0-test are
generated per module with tools/make_synthetic_nuscenes.py, and their info files with
tools/create_data.py (both called in-process).  The generator's attributes follow the
class-and-speed rule that the metric applies, so ground truth sent through the metric must score
NDS ~1, and known perturbations must move exactly the TP error they should.
"""
import json
import math
import os
import os.path as osp
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from sf3d.datasets.nuscenes_info import CLASSES, load_nuscenes_infos
from sf3d.evaluation import NuScenesMetric
from sf3d.evaluation import nuscenes_metric as nm
from sf3d.registry import METRICS
from sf3d.structures import LiDARBoxes, from_info_bbox3d
from tool_loader import load_tool


# class -> (attribute at <= 0.2 m/s, attribute above), mmdet3d's rule written out by hand
ATTRIBUTE_TABLE = {
    'car': ('vehicle.parked', 'vehicle.moving'), 'truck': ('vehicle.parked', 'vehicle.moving'),
    'trailer': ('vehicle.parked', 'vehicle.moving'), 'construction_vehicle': ('vehicle.parked', 'vehicle.moving'),
    'bus': ('vehicle.stopped', 'vehicle.moving'), 'pedestrian': ('pedestrian.standing', 'pedestrian.moving'),
    'bicycle': ('cycle.without_rider', 'cycle.with_rider'), 'motorcycle': ('cycle.without_rider', 'cycle.with_rider'),
    'traffic_cone': ('', ''), 'barrier': ('', ''),
}


@pytest.fixture(scope='module')
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp('nusc_metric')
    mini, test = str(base / 'mini'), str(base / 'test')
    make, create = load_tool('make_synthetic_nuscenes'), load_tool('create_data')
    for out, version in ((mini, 'v1.0-mini'), (test, 'v1.0-test')):
        assert make.main(['--out', out, '--version', version, '--samples-per-scene', '2', '--no-progress']) == 0
    for out, version in ((mini, 'v1.0-mini'), (test, 'v1.0-test')):
        assert create.main(['nuscenes', '--root-path', out, '--version', version, '--out-dir', out,
                            '--no-progress']) == 0
    return dict(mini=mini, test=test)


@pytest.fixture(scope='module')
def metric(roots):
    return NuScenesMetric(roots['mini'], 'nuscenes_infos_val.pkl', version='v1.0-mini')


@pytest.fixture(scope='module')
def val_infos(roots):
    return load_nuscenes_infos(osp.join(roots['mini'], 'nuscenes_infos_val.pkl'))['data_list']


def gt_samples(infos, modify=None):
    """GT of every sample as model outputs: (N, 9) LiDAR boxes, descending scores, labels."""
    out = []
    for info in infos:
        inst = [i for i in info['instances'] if i['bbox_label_3d'] >= 0]
        boxes = from_info_bbox3d([i['bbox_3d'] for i in inst], [i['velocity'] for i in inst]).tensor.float()
        boxes = modify(boxes.clone()) if modify else boxes
        out.append(dict(token=info['token'], pred_instances_3d=dict(
            bboxes_3d=boxes, scores_3d=torch.linspace(1.0, 0.5, len(inst)),
            labels_3d=torch.tensor([i['bbox_label_3d'] for i in inst]))))
    return out


def processed(metric, samples):
    """What process() keeps, without touching the shared metric's state."""
    metric.results = []
    metric.process(None, samples)
    results, metric.results = metric.results, []
    return results


def empty_sample(token):
    return dict(token=token, pred_instances_3d=dict(bboxes_3d=torch.zeros(0, 9), scores_3d=torch.zeros(0),
                                                    labels_3d=torch.zeros(0, dtype=torch.long)))


def car_sample(token, xy_list, scores):
    boxes = torch.tensor([[x, y, -1.8, 4.5, 1.9, 1.6, 0.3, 0.0, 0.0] for x, y in xy_list])
    return dict(token=token, pred_instances_3d=dict(bboxes_3d=boxes, scores_3d=torch.as_tensor(scores),
                                                    labels_3d=torch.zeros(len(xy_list), dtype=torch.long)))


# ---------------------------------------------------------------------------- the whole chain

def test_ground_truth_scores_nds_one(roots, val_infos, tmp_path):
    cfg = dict(type='NuScenesMetric', data_root=roots['mini'], ann_file='nuscenes_infos_val.pkl',
               version='v1.0-mini', jsonfile_prefix=str(tmp_path))
    metric = METRICS.build(cfg)
    assert metric.eval_set == 'mini_val' and len(metric.split_tokens) == len(val_infos) == 4
    metric.process(None, gt_samples(val_infos))
    out = metric.evaluate(size=len(val_infos))
    expected = ['NDS', 'mAP', 'mATE', 'mASE', 'mAOE', 'mAVE', 'mAAE'] + [f'{c}_AP' for c in CLASSES]
    assert sorted(out) == sorted(f'NuScenes/{k}' for k in expected)
    assert out['NuScenes/NDS'] >= 0.999
    assert min(out[f'NuScenes/{c}_AP'] for c in CLASSES) > 0.999
    for key, tol in (('mATE', 1e-3), ('mASE', 1e-3), ('mAOE', 1e-3), ('mAVE', 1e-2), ('mAAE', 1e-6)):
        assert out[f'NuScenes/{key}'] < tol, key
    # the submission and the devkit summary are kept in jsonfile_prefix
    with open(tmp_path / 'results_nusc.json') as f:
        sub = json.load(f)
    assert sub['meta'] == dict(use_camera=True, use_lidar=False, use_radar=False, use_map=False, use_external=False)
    assert list(sub['results']) == metric.split_tokens
    with open(tmp_path / 'metrics_summary.json') as f:
        assert abs(json.load(f)['nd_score'] - out['NuScenes/NDS']) < 1e-12
    assert not (tmp_path / 'plots').exists()


def test_lidar_boxes_input_equals_tensor_input(metric, val_infos):
    tensors = processed(metric, gt_samples(val_infos))
    samples = gt_samples(val_infos)
    for s in samples:
        s['pred_instances_3d']['bboxes_3d'] = LiDARBoxes(s['pred_instances_3d']['bboxes_3d'])
    for a, b in zip(tensors, processed(metric, samples)):
        assert a['token'] == b['token'] and np.array_equal(a['bboxes_3d'], b['bboxes_3d'])
        assert a['bboxes_3d'].dtype == np.float32 and a['labels_3d'].dtype == np.int64


def _yaw(boxes):
    boxes[:, 6] += 0.3
    return boxes


def _shift(boxes):
    boxes[:, :2] += torch.tensor([0.3, 0.4])  # 0.5 m in the LiDAR xy plane
    return boxes


def _swap_lw(boxes):
    boxes[:, [3, 4]] = boxes[:, [4, 3]]
    return boxes


@pytest.mark.parametrize('modify, error, value', [(_yaw, 'mAOE', 0.3), (_shift, 'mATE', 0.5)])
def test_perturbation_moves_its_tp_error(metric, val_infos, modify, error, value):
    out = metric.compute_metrics(processed(metric, gt_samples(val_infos, modify)))
    assert abs(out[error] - value) < 0.01
    for other in ('mATE', 'mASE', 'mAOE', 'mAAE'):
        if other != error:
            assert out[other] < 1e-3, other
    assert out['mAVE'] < 1e-2


def test_swapped_length_width_raises_scale_error(metric, val_infos, tmp_path):
    metric.jsonfile_prefix = str(tmp_path)  # keep metrics_summary.json for the per-class errors
    try:
        out = metric.compute_metrics(processed(metric, gt_samples(val_infos, _swap_lw)))
    finally:
        metric.jsonfile_prefix = None
    assert out['mATE'] < 1e-3 and out['mAOE'] < 1e-3 and out['mAP'] > 0.999
    # aligned boxes of sizes (l, w, h) and (w, l, h) with w < l: IoU = w / (2 l - w)
    cars = np.array([i['bbox_3d'] for info in val_infos for i in info['instances']
                     if i['bbox_label_3d'] == CLASSES.index('car')])
    short, long = np.minimum(cars[:, 3], cars[:, 4]), np.maximum(cars[:, 3], cars[:, 4])
    expected = np.mean(1 - short / (2 * long - short))
    with open(tmp_path / 'metrics_summary.json') as f:
        car_ase = json.load(f)['label_tp_errors']['car']['scale_err']
    assert expected > 0.3 and abs(car_ase - expected) < 0.02, (car_ase, expected)
    assert out['mASE'] > 0.2


# ---------------------------------------------------------------------------- formatting rules

@pytest.mark.parametrize('speed', [0.0, 0.2, 0.21, 5.0])
@pytest.mark.parametrize('name', CLASSES)
def test_attribute_rule_matches_hand_table(name, speed):
    angle = 2.0  # direction does not matter, only the speed
    assert nm.assign_attribute(name, (speed * math.cos(angle), speed * math.sin(angle))) == \
        ATTRIBUTE_TABLE[name][int(speed > 0.2)]


def test_attribute_rule_refuses_unknown_class():
    with pytest.raises(ValueError, match='unknown class'):
        nm.assign_attribute('van', (0.0, 0.0))


def test_range_filter_and_500_box_cap(metric, val_infos, tmp_path):
    token = val_infos[0]['token']
    rng = np.random.default_rng(0)
    xy = [(float(r * math.cos(a)), float(r * math.sin(a))) for r, a in zip(rng.uniform(3, 40, 600),
                                                                            rng.uniform(-np.pi, np.pi, 600))]
    scores = rng.permutation(600) / 600
    far = [(55.0, 0.0), (0.0, -70.0)]  # beyond the devkit's 50 m car range: dropped before the cap
    sample = car_sample(token, xy + far, np.concatenate([scores, [2.0, 3.0]]).astype(np.float32))
    path, n = metric.format_results(processed(metric, [sample]), str(tmp_path))
    with open(path) as f:
        results = json.load(f)['results']
    kept = results[token]
    assert n == len(kept) == 500
    np.testing.assert_allclose(sorted(b['detection_score'] for b in kept), np.sort(scores)[100:], atol=1e-6)
    assert all(results[t] == [] for t in metric.split_tokens if t != token)
    assert all(b['attribute_name'] == 'vehicle.parked' and b['detection_name'] == 'car' for b in kept)


def test_empty_submission_scores_zero_without_devkit(metric, monkeypatch):
    def no_devkit(*args, **kwargs):
        raise AssertionError('the devkit must not run on an empty submission')

    monkeypatch.setattr(nm, 'DetectionEval', no_devkit)
    out = metric.compute_metrics(processed(metric, [empty_sample(t) for t in metric.split_tokens]))
    assert out['NDS'] == 0 and out['mAP'] == 0
    assert all(out[k] == 1 for k in ('mATE', 'mASE', 'mAOE', 'mAVE', 'mAAE'))
    assert all(out[f'{c}_AP'] == 0 for c in CLASSES)


# detection_cvpr_2019's class_range (m from the ego vehicle), written out by hand
DEVKIT_CLASS_RANGE = dict(car=50, truck=50, bus=50, trailer=50, construction_vehicle=50, pedestrian=40,
                          motorcycle=40, bicycle=40, traffic_cone=30, barrier=30)


def evaluated_gt_per_class(info) -> Counter:
    """GT boxes of one sample that the devkit evaluates, per class: centre within the class range of the
    ego position, in the xy plane of the global frame (the synthetic set has no bicycle racks)."""
    lidar2ego, ego2global = np.array(info['lidar_points']['lidar2ego']), np.array(info['ego2global'])
    kept = Counter()
    for inst in info['instances']:
        name = CLASSES[inst['bbox_label_3d']] if inst['bbox_label_3d'] >= 0 else None
        centre = ego2global @ lidar2ego @ np.array([*inst['bbox_3d'][:3], 1.0])
        if name and np.hypot(*(centre[:2] - ego2global[:2, 3])) < DEVKIT_CLASS_RANGE[name]:
            kept[name] += 1
    return kept


def hand_ap(found: int, total: int) -> float:
    """The devkit's AP (same at every distance threshold) when ``found`` of ``total`` GT boxes are
    predicted exactly and nothing else is: precision is 1 up to recall found/total and 0 beyond on the
    101-point recall grid; drop the points at recall <= 0.1, subtract min_precision 0.1 (clamped at 0),
    average and divide by 0.9 -> (grid points k in 11..100 with k/100 <= found/total) / 90."""
    return max(0, math.floor(100 * Fraction(found, total)) - 10) / 90 if total else 0.0


def test_missing_samples_are_submitted_empty_with_a_warning(metric, val_infos, monkeypatch):
    logged = []
    monkeypatch.setattr(nm, 'print_log', lambda msg, *a, **k: logged.append(msg))
    out = metric.compute_metrics(processed(metric, gt_samples(val_infos[:2])))
    assert any('2 of the 4 mini_val samples have no prediction' in m for m in logged)
    # the other samples' objects count as missed: AP from the recall each class reaches
    assert all(i['num_lidar_pts'] + i['num_radar_pts'] > 0 for info in val_infos for i in info['instances'])
    found = sum(map(evaluated_gt_per_class, val_infos[:2]), Counter())
    total = sum(map(evaluated_gt_per_class, val_infos), Counter())
    assert total != found and set(total) == set(CLASSES)
    expected = {c: hand_ap(found[c], total[c]) for c in CLASSES}
    assert {c: out[f'{c}_AP'] for c in CLASSES} == pytest.approx(expected, abs=1e-6)
    assert out['mAP'] == pytest.approx(sum(expected.values()) / len(CLASSES), abs=1e-6)


# ---------------------------------------------------------------------------- leaderboard file

def test_format_only_writes_a_valid_test_submission(roots, tmp_path):
    metric = NuScenesMetric(roots['test'], 'nuscenes_infos_test.pkl', version='v1.0-test', format_only=True,
                            jsonfile_prefix=str(tmp_path / 'sub'))
    assert metric.eval_set == 'test'
    tokens = metric.split_tokens
    samples = [car_sample(t, [(5.0, 2.0), (-10.0, 3.0)], [0.9, 0.4]) for t in tokens[:-1]]
    samples.append(empty_sample(tokens[-1]))
    assert metric.compute_metrics(processed(metric, samples)) == {}
    path = tmp_path / 'sub' / 'results_nusc.json'
    nm.validate_submission(str(path), tokens)
    with open(path) as f:
        sub = json.load(f)
    assert sorted(sub['results']) == sorted(tokens) and len(sub['results'][tokens[0]]) == 2


def _valid_submission(tokens):
    box = dict(sample_token=tokens[0], translation=[1.0, 2.0, 0.5], size=[1.9, 4.5, 1.6], rotation=[1.0, 0, 0, 0],
               velocity=[0.0, 0.0], detection_name='car', detection_score=0.5, attribute_name='vehicle.parked')
    return dict(meta=dict(use_camera=True, use_lidar=False, use_radar=False, use_map=False, use_external=False),
                results={t: ([box] if t == tokens[0] else []) for t in tokens})


def _break(sub, what):
    t0 = next(iter(sub['results']))
    box = sub['results'][t0][0]
    if what == 'missing token':
        sub['results'].pop(list(sub['results'])[-1])
    elif what == 'extra token':
        sub['results']['not-a-token'] = []
    elif what == 'too many boxes':
        sub['results'][t0] = [dict(box) for _ in range(501)]
    elif what == 'nan translation':
        box['translation'] = [1.0, float('nan'), 0.0]
    elif what == 'bad class':
        box['detection_name'] = 'van'
    elif what == 'attribute of another class':
        box['attribute_name'] = 'cycle.with_rider'
    elif what == 'attribute on a barrier':
        box.update(detection_name='barrier', attribute_name='vehicle.parked')
    elif what == 'missing field':
        del box['velocity']
    elif what == 'not unit quaternion':
        box['rotation'] = [2.0, 0, 0, 0]
    elif what == 'wrong sample token':
        box['sample_token'] = 'elsewhere'
    elif what == 'bad meta':
        sub['meta'] = dict(use_camera=True)
    return sub


@pytest.mark.parametrize('what, message', [
    ('missing token', 'sample tokens are missing'), ('extra token', 'not in the split'),
    ('too many boxes', '501 boxes'), ('nan translation', 'translation'), ('bad class', "'van'"),
    ('attribute of another class', 'not valid for car'), ('attribute on a barrier', 'not valid for barrier'),
    ('missing field', "lacks \\['velocity'\\]"), ('not unit quaternion', 'unit quaternion'),
    ('wrong sample token', "sample_token 'elsewhere'"), ('bad meta', 'meta must map')])
def test_validator_refuses_broken_files(metric, tmp_path, what, message):
    tokens = metric.split_tokens
    nm.validate_submission(_valid_submission(tokens), tokens)
    path = tmp_path / 'broken.json'
    path.write_text(json.dumps(_break(_valid_submission(tokens), what)))
    with pytest.raises(ValueError, match=message) as err:
        nm.validate_submission(str(path), tokens)
    assert str(path) in str(err.value)


def test_write_is_atomic(metric, val_infos, tmp_path, monkeypatch):
    metric.jsonfile_prefix = str(tmp_path)
    try:
        metric.format_results(processed(metric, gt_samples(val_infos)), str(tmp_path))
        before = (tmp_path / 'results_nusc.json').read_bytes()

        def crash(*args, **kwargs):
            raise RuntimeError('disk full')

        monkeypatch.setattr(nm.json, 'dump', crash)
        with pytest.raises(RuntimeError, match='disk full'):
            metric.compute_metrics(processed(metric, gt_samples(val_infos[:1])))
    finally:
        metric.jsonfile_prefix = None
    assert sorted(os.listdir(tmp_path)) == ['results_nusc.json']  # no partial or temporary file
    assert (tmp_path / 'results_nusc.json').read_bytes() == before


# ---------------------------------------------------------------------------- clear errors

@pytest.mark.parametrize('kwargs, exc, message', [
    (dict(ann_file='nope.pkl'), FileNotFoundError, 'nope.pkl'),
    (dict(version='v1.0-full'), ValueError, 'version must be one of'),
    (dict(eval_set='val'), ValueError, "eval_set 'val' does not belong to v1.0-mini"),
    (dict(version='v1.0-trainval'), FileNotFoundError, "no folder 'v1.0-trainval'"),
    (dict(format_only=True), ValueError, 'needs jsonfile_prefix'),
    (dict(modality=dict(use_cam=True)), ValueError, "'use_cam'"),
    (dict(class_names=('car', 'van')), ValueError, "'van'"),
])
def test_constructor_errors(roots, kwargs, exc, message):
    args = dict(data_root=roots['mini'], ann_file='nuscenes_infos_val.pkl', version='v1.0-mini')
    args.update(kwargs)
    with pytest.raises(exc, match=message):
        NuScenesMetric(**args)


def test_test_split_needs_format_only(roots):
    with pytest.raises(ValueError, match='no annotations; use format_only=True'):
        NuScenesMetric(roots['test'], 'nuscenes_infos_test.pkl', version='v1.0-test')


def test_token_errors(roots, metric, val_infos):
    with pytest.raises(ValueError, match="'deadbeef' is not in ann_file"):
        metric.compute_metrics(processed(metric, [empty_sample('deadbeef')]))
    token = val_infos[0]['token']
    with pytest.raises(ValueError, match='predicted twice'):
        metric.compute_metrics(processed(metric, [empty_sample(token), empty_sample(token)]))
    # a train sample is in the train info file but not in the mini_val split
    train = NuScenesMetric(roots['mini'], 'nuscenes_infos_train.pkl', version='v1.0-mini')
    train_token = load_nuscenes_infos(train.ann_file)['data_list'][0]['token']
    with pytest.raises(ValueError, match=f'{train_token}.* is not in the mini_val split'):
        train.compute_metrics(processed(train, [empty_sample(train_token)]))


def test_process_errors(metric):
    good = car_sample('tok', [(1.0, 1.0)], [0.5])
    bad_shape = dict(good, pred_instances_3d=dict(good['pred_instances_3d'], bboxes_3d=torch.zeros(1, 7)))
    with pytest.raises(ValueError, match=r'bboxes_3d \(N, 9\)'):
        metric.process(None, [bad_shape])
    bad_label = dict(good, pred_instances_3d=dict(good['pred_instances_3d'], labels_3d=torch.tensor([10])))
    with pytest.raises(ValueError, match=r'labels_3d outside \[0, 10\)'):
        metric.process(None, [bad_label])
    bad_score = dict(good, pred_instances_3d=dict(good['pred_instances_3d'], scores_3d=torch.tensor([float('nan')])))
    with pytest.raises(ValueError, match='scores_3d contain NaN'):
        metric.process(None, [bad_score])
    with pytest.raises(KeyError, match='token and pred_instances_3d'):
        metric.process(None, [dict(pred_instances_3d=good['pred_instances_3d'])])
    metric.results = []


def test_class_names_must_match_the_dataset(metric):
    metric.dataset_meta = dict(classes=tuple(reversed(CLASSES)))
    try:
        with pytest.raises(ValueError, match='differ from class_names'):
            metric.compute_metrics([])
    finally:
        metric.dataset_meta = None



def test_validator_runs_the_devkit_loader(metric, tmp_path, monkeypatch):
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.detection.data_classes import DetectionBox

    tokens = metric.split_tokens
    sub = _valid_submission(tokens)
    # an extra field that the hand checks ignore but the devkit's DetectionBox asserts on (3 elements)
    sub['results'][tokens[0]][0]['ego_translation'] = [1.0, 2.0]
    path = tmp_path / 'devkit_refuses.json'
    path.write_text(json.dumps(sub))
    with pytest.raises(ValueError, match='devkit loader .*Translation must have 3 elements') as err:
        nm.validate_submission(str(path), tokens)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match=r'submission \(checked as a temporary JSON file\) is refused'):
        nm.validate_submission(sub, tokens)  # a dict goes through the same loader
    # the refusal is the devkit's: with a loader that accepts everything, the same file passes
    calls = []

    def accepting_loader(result_path, max_boxes, box_cls, verbose=False):
        calls.append((result_path, max_boxes, box_cls))
        loaded = EvalBoxes()
        for token, records in json.loads(Path(result_path).read_text())['results'].items():
            loaded.add_boxes(token, [DetectionBox(sample_token=token) for _ in records])
        return loaded, {}

    monkeypatch.setattr(nm, 'load_prediction', accepting_loader)
    nm.validate_submission(str(path), tokens)
    assert calls == [(str(path), nm.MAX_BOXES_PER_SAMPLE, DetectionBox)]
    # what the loader returns must hold every split token and every box
    monkeypatch.setattr(nm, 'load_prediction', lambda *args, **kwargs: (EvalBoxes(), {}))
    with pytest.raises(ValueError, match=f'read 0 samples and 0 boxes, expected all {len(tokens)} split tokens '
                                         'and 1 boxes') as err:
        nm.validate_submission(str(path), tokens)
    assert str(path) in str(err.value)
