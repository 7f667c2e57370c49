"""Synthetic nuScenes generator, checked against the unchanged nuscenes-devkit.

One small dataset (10 mini scenes x 2 samples at 400x225) is generated per module; a second run
with the same arguments, one through another rig, a multi-rig set (a rig per scene, twice) and a
small v1.0-test set are generated next to it.  Geometry is checked with the devkit's own functions
(get_sample_data, view_points, points_in_box, box_velocity, DetectionEval), not with the generator's code.
"""
import filecmp
import importlib.util
import json
import math
import os
import os.path as osp
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nuscenes import NuScenes
from nuscenes.eval.detection.config import config_factory
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.utils import splits
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import BoxVisibility, points_in_box, view_points
from pyquaternion import Quaternion
from shapely.geometry import Polygon

ROOT = Path(__file__).resolve().parents[2]
SEED = 3
SAMPLES = 2
SCALE = 0.25
RIG = 'focal=1.2,height=0.3,pitch=5'
RANGES = 'focal=0.9:1.1,height=-0.2:0.2,pitch=-2:2,roll=-1:1'


def _load(name: str, path: Path):
    """Import a module from its file, without importing its package (sf3d.datasets pulls torch)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gen = _load('sf3d.datasets.synthetic_nuscenes', ROOT / 'sf3d' / 'datasets' / 'synthetic_nuscenes.py')
cli = _load('make_synthetic_nuscenes_cli', ROOT / 'tools' / 'make_synthetic_nuscenes.py')


@pytest.fixture(scope='module')
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp('synthetic_nuscenes')
    paths = {name: str(base / name) for name in ('a', 'again', 'rig', 'test', 'multi', 'multi_again')}
    kwargs = dict(seed=SEED, samples_per_scene=SAMPLES, image_scale=SCALE, progress=False)
    gen.generate(paths['a'], **kwargs)
    gen.generate(paths['again'], workers=1, **kwargs)  # the output must not depend on workers
    gen.generate(paths['rig'], rig=gen.parse_rig(RIG), **kwargs)
    gen.generate(paths['multi'], rig_ranges=gen.parse_rig_ranges(RANGES), **kwargs)
    assert cli.main(['--out', paths['multi_again'], '--seed', str(SEED), '--samples-per-scene', str(SAMPLES),
                     '--rig-ranges', RANGES, '--no-progress']) == 0
    paths['preview'] = str(base / 'preview.png')
    assert cli.main(['--out', paths['test'], '--version', 'v1.0-test', '--seed', str(SEED),
                     '--samples-per-scene', str(SAMPLES), '--no-progress', '--preview', paths['preview']]) == 0
    return paths


@pytest.fixture(scope='module')
def nusc(roots):
    return NuScenes(version='v1.0-mini', dataroot=roots['a'], verbose=False)


@pytest.fixture(scope='module')
def nusc_rig(roots):
    return NuScenes(version='v1.0-mini', dataroot=roots['rig'], verbose=False)


@pytest.fixture(scope='module')
def nusc_multi(roots):
    return NuScenes(version='v1.0-mini', dataroot=roots['multi'], verbose=False)


def _table(root, name, version='v1.0-mini'):
    with open(osp.join(root, version, f'{name}.json')) as f:
        return json.load(f)


def _class_of(box) -> str:
    return category_to_detection_name(box.name)


# ------------------------------------------------------------------------------------------------
# Structure, splits, determinism
# ------------------------------------------------------------------------------------------------
def test_devkit_loads_with_real_mini_splits(nusc, roots):
    names = {s['name'] for s in nusc.scene}
    assert names == set(splits.mini_train) | set(splits.mini_val)
    val = [s for s in nusc.sample if nusc.get('scene', s['scene_token'])['name'] in splits.mini_val]
    assert len(val) == len(splits.mini_val) * SAMPLES
    assert len(nusc.sample) == 10 * SAMPLES
    for sample in nusc.sample:
        assert set(sample['data']) == set(gen.CAMERAS) | {'LIDAR_TOP'}
        lidar = nusc.get('sample_data', sample['data']['LIDAR_TOP'])
        assert lidar['timestamp'] == sample['timestamp']
        pose_tokens = set()
        for ch in gen.CAMERAS:
            cam = nusc.get('sample_data', sample['data'][ch])
            assert 0 < cam['timestamp'] - sample['timestamp'] <= 45_000  # cameras fire after the LiDAR
            pose = nusc.get('ego_pose', cam['ego_pose_token'])
            assert pose['timestamp'] == cam['timestamp']
            pose_tokens.add(pose['token'])
        assert len(pose_tokens) == 6  # every sensor reading has its own ego pose
    for scene in nusc.scene:  # samples 0.5 s apart, linked
        first = nusc.get('sample', scene['first_sample_token'])
        second = nusc.get('sample', first['next'])
        assert second['timestamp'] - first['timestamp'] == 500_000 and second['prev'] == first['token']
    for record in nusc.map:
        assert osp.exists(osp.join(roots['a'], record['filename']))
    assert {log['token'] for log in nusc.log} == {t for m in nusc.map for t in m['log_tokens']}


def test_same_arguments_give_byte_identical_output(roots):
    def files(root):
        return sorted(str(p.relative_to(root)) for p in Path(root).rglob('*') if p.is_file())

    files_a = files(roots['a'])
    assert files_a == files(roots['again']) and len(files_a) > 100
    match, mismatch, errors = filecmp.cmpfiles(roots['a'], roots['again'], files_a, shallow=False)
    assert mismatch == [] and errors == []


def test_other_rig_keeps_tokens_and_annotations_changes_images_and_calibration(roots):
    for name in ('sample', 'sample_annotation', 'instance', 'scene', 'ego_pose', 'sample_data', 'log'):
        assert _table(roots['a'], name) == _table(roots['rig'], name), name
    nominal = {c['token']: c for c in _table(roots['a'], 'calibrated_sensor')}
    changed = {c['token']: c for c in _table(roots['rig'], 'calibrated_sensor')}
    assert nominal.keys() == changed.keys()
    for token, a in nominal.items():
        b = changed[token]
        if not a['camera_intrinsic']:  # the LiDAR is not part of the camera rig
            assert a == b
            continue
        ka, kb = np.array(a['camera_intrinsic']), np.array(b['camera_intrinsic'])
        np.testing.assert_allclose(kb[[0, 1], [0, 1]], 1.2 * ka[[0, 1], [0, 1]])
        np.testing.assert_allclose(kb[:2, 2], ka[:2, 2])
        np.testing.assert_allclose(np.array(b['translation']) - a['translation'], [0, 0, 0.3], atol=1e-12)
        # Pitch: the rotation differs by 5 degrees about the camera's own x axis, looking down.
        delta = Quaternion(a['rotation']).inverse * Quaternion(b['rotation'])
        assert math.degrees(delta.angle) == pytest.approx(5.0, abs=1e-6)
        np.testing.assert_allclose(np.abs(delta.axis), [1, 0, 0], atol=1e-9)
        ahead_ego = np.array(a['translation']) + Quaternion(a['rotation']).rotate([0, 0, 50.0])
        ahead_ego[2] = a['translation'][2]  # a point 50 m along the view, at camera height
        rows = []
        for rec, k in ((a, ka), (b, kb)):
            p_cam = Quaternion(rec['rotation']).inverse.rotate(ahead_ego - np.array(rec['translation']))
            rows.append(view_points(p_cam[:, None], k, normalize=True)[1, 0])
        assert rows[1] < rows[0] - 5  # looking down moves the horizon up in the image
    img = 'samples/CAM_FRONT/' + sorted(os.listdir(osp.join(roots['a'], 'samples', 'CAM_FRONT')))[0]
    assert not filecmp.cmp(osp.join(roots['a'], img), osp.join(roots['rig'], img), shallow=False)


def test_test_version_from_cli_has_no_annotations(roots):
    test = NuScenes(version='v1.0-test', dataroot=roots['test'], verbose=False)
    assert [s['name'] for s in test.scene] == list(splits.test[:gen.NUM_TEST_SCENES])
    assert test.sample_annotation == [] and test.instance == []
    assert len(test.sample) == gen.NUM_TEST_SCENES * SAMPLES
    path, boxes, _ = test.get_sample_data(test.sample[0]['data']['CAM_FRONT'])
    assert osp.exists(path) and boxes == []
    with Image.open(roots['preview']) as im:  # the human-facing preview of one sample
        assert im.size == (1800, 700)


# ------------------------------------------------------------------------------------------------
# Geometry against the devkit
# ------------------------------------------------------------------------------------------------
def test_intrinsics_match_image_size(nusc, roots):
    for sd in nusc.sample_data:
        if sd['channel'] == 'LIDAR_TOP':
            continue
        cs = nusc.get('calibrated_sensor', sd['calibrated_sensor_token'])
        k = np.array(cs['camera_intrinsic'])
        with Image.open(osp.join(roots['a'], sd['filename'])) as im:
            assert im.size == (sd['width'], sd['height']) == (400, 225)
        assert abs(k[0, 2] - 200) < 20 and abs(k[1, 2] - 112.5) < 15
        focal = 809.22 if sd['channel'] == 'CAM_BACK' else 1266.4
        assert k[0, 0] == pytest.approx(focal * SCALE, rel=0.01) and k[1, 1] == k[0, 0]


def _chroma(rgb) -> np.ndarray:
    rgb = np.asarray(rgb, float)
    return rgb / rgb.sum(-1, keepdims=True)


def _unoccluded(box, others, k, pixels) -> bool:
    """No other box on the rays of ``pixels`` ((u, v) pairs) up to the depth of the box centre."""
    depth = box.center[2]
    # Only boxes whose bounding sphere comes near the segment to the centre can occlude.
    t = np.clip([np.dot(o.center, box.center) / np.dot(box.center, box.center) for o in others], 0, 1)
    others = [o for o, ti in zip(others, t)
              if np.linalg.norm(o.center - ti * box.center) < np.linalg.norm(o.wlh) / 2 + 0.5]
    for u, v in pixels:
        end = depth * np.linalg.solve(k, [u, v, 1.0])
        pts = np.outer(end, np.linspace(0.0, 1.0, int(np.linalg.norm(end) / 0.05) + 2))
        if any(points_in_box(o, pts).any() for o in others):
            return False
    return True


@pytest.mark.parametrize('which', ['nusc', 'nusc_rig', 'nusc_multi'])
def test_projected_box_centres_land_on_their_class_colour(which, request):
    db = request.getfixturevalue(which)  # nusc_multi: every scene through its own rig
    palette = {name: _chroma(rgb) for name, rgb in gen.CLASS_COLOURS.items()}
    checked, wrong = 0, []
    for sample in db.sample:
        for ch in gen.CAMERAS:
            path, boxes, k = db.get_sample_data(sample['data'][ch])
            # Occluders may have no corner in view (a bus beside the camera): take all boxes.
            everything = db.get_sample_data(sample['data'][ch], box_vis_level=BoxVisibility.NONE)[1]
            image = np.asarray(Image.open(path))
            h, w = image.shape[:2]
            for box in sorted(boxes, key=lambda b: np.linalg.norm(b.center))[:6]:  # nearest ones
                if box.center[2] < 1.0 or (box.corners()[2] < 0.5).any():
                    continue
                u, v = view_points(box.center[:, None], k, normalize=True)[:2, 0]
                corners = view_points(box.corners(), k, normalize=True)[:2]
                if not (3 <= u < w - 3 and 3 <= v < h - 3) or np.ptp(corners, 1).min() < 8:
                    continue
                ui, vi = int(round(u)), int(round(v))
                patch = [(ui + du, vi + dv) for du in (-1, 0, 1) for dv in (-1, 0, 1)]
                if not _unoccluded(box, [b for b in everything if b.token != box.token], k, patch):
                    continue
                rgb = np.median(image[vi - 1:vi + 2, ui - 1:ui + 2].reshape(-1, 3), 0)
                got = min(palette, key=lambda c: np.abs(palette[c] - _chroma(rgb)).sum())
                checked += 1
                if got != _class_of(box):
                    wrong.append((ch, _class_of(box), got, rgb))
    assert checked >= 30
    assert wrong == []


def test_num_lidar_pts_equal_devkit_points_in_box(nusc, roots):
    for sample in nusc.sample:
        sd = nusc.get('sample_data', sample['data']['LIDAR_TOP'])
        raw = np.fromfile(osp.join(roots['a'], sd['filename']), dtype=np.float32)
        assert raw.size % 5 == 0
        ring = raw.reshape(-1, 5)[:, 4]
        assert ring.min() >= 0 and ring.max() <= 31 and np.all(ring == np.round(ring))
        path, boxes, _ = nusc.get_sample_data(sd['token'])
        cloud = LidarPointCloud.from_file(path)
        assert cloud.points.shape[1] > 5000
        for box in boxes:
            ann = nusc.get('sample_annotation', box.token)
            count = int(points_in_box(box, cloud.points[:3]).sum())
            assert count == ann['num_lidar_pts'] >= 1
            assert ann['num_radar_pts'] == 0


def test_box_velocity_and_poses_match_the_generator(nusc):
    moving_seen = 0
    for scene in nusc.scene:
        plan = gen.plan_scene(SEED, 'v1.0-mini', scene['name'], SAMPLES)
        token = scene['first_sample_token']
        while token:
            sample = nusc.get('sample', token)
            xy, yaw, vel = plan.object_states(plan.tau(sample['timestamp']))
            anns = {a: nusc.get('sample_annotation', a) for a in sample['anns']}
            by_instance = {a['instance_token']: a for a in anns.values()}
            assert len(by_instance) == len(xy)
            for k in range(len(xy)):
                ann = by_instance[plan.token('instance', k)]
                np.testing.assert_allclose(ann['translation'][:2], xy[k], atol=1e-9)
                ann_yaw = Quaternion(ann['rotation']).yaw_pitch_roll[0]
                assert abs(math.sin(ann_yaw - yaw[k])) < 1e-9 and math.cos(ann_yaw - yaw[k]) > 0
                est = nusc.box_velocity(ann['token'])[:2]
                speed = np.linalg.norm(vel[k])
                if speed == 0:
                    np.testing.assert_array_equal(est, 0.0)
                    assert ann['attribute_tokens'] == [] or nusc.get(
                        'attribute', ann['attribute_tokens'][0])['name'] not in ('vehicle.moving',
                                                                                 'pedestrian.moving')
                    continue
                moving_seen += 1
                # A forward difference over 0.5 s on a path of yaw rate w errs by <= |v| w / 4.
                yaw_rate = speed * abs(plan.curvature[k])
                assert np.linalg.norm(est - vel[k]) <= speed * yaw_rate / 4 + 1e-4
                assert np.dot(vel[k], [math.cos(yaw[k]), math.sin(yaw[k])]) == pytest.approx(speed)
            token = sample['next']
    assert moving_seen >= 50


def test_scene_layout_is_plausible(nusc):
    per_class_val = set()
    for sample in nusc.sample:
        lidar = nusc.get('sample_data', sample['data']['LIDAR_TOP'])
        pose = nusc.get('ego_pose', lidar['ego_pose_token'])
        ego_q, ego_t = Quaternion(pose['rotation']), np.array(pose['translation'])
        ego = Polygon([ego_t[:2] + ego_q.rotate([x, y, 0])[:2] for x, y in
                       ((-1.0, -1.0), (3.6, -1.0), (3.6, 1.0), (-1.0, 1.0))])
        boxes = [nusc.get_box(a) for a in sample['anns']]
        footprints = [Polygon(b.bottom_corners()[:2].T) for b in boxes]
        near = sum(np.linalg.norm(b.center[:2] - ego_t[:2]) <= 45 for b in boxes)
        assert 15 <= near <= 40
        for i, fp in enumerate(footprints):
            assert not fp.intersects(ego)
            assert not any(fp.intersects(other) for other in footprints[i + 1:])
        scene = nusc.get('scene', sample['scene_token'])['name']
        if scene in splits.mini_val:
            per_class_val |= {_class_of(b) for b in boxes}
        for box in boxes:
            w, l, h = box.wlh
            mean_w, mean_l, mean_h = gen.CLASS_SIZES_WLH[_class_of(box)]
            assert 0.8 < w / mean_w < 1.2 and 0.8 < l / mean_l < 1.2 and 0.8 < h / mean_h < 1.2
            assert box.center[2] == pytest.approx(h / 2)  # standing on the ground
    assert per_class_val == set(gen.CLASSES)


def test_ground_truth_scores_nds_one(nusc, tmp_path):
    attributes = {a['token']: a['name'] for a in nusc.attribute}
    results = {}
    for sample in nusc.sample:
        if nusc.get('scene', sample['scene_token'])['name'] not in splits.mini_val:
            continue
        results[sample['token']] = []
        for i, token in enumerate(sample['anns']):
            ann = nusc.get('sample_annotation', token)
            vx, vy = nusc.box_velocity(token)[:2]
            results[sample['token']].append(dict(
                sample_token=sample['token'], translation=ann['translation'], size=ann['size'],
                rotation=ann['rotation'], velocity=[float(vx), float(vy)],
                detection_name=category_to_detection_name(ann['category_name']),
                detection_score=1.0 - 0.01 * (i % 50),
                attribute_name=attributes[ann['attribute_tokens'][0]] if ann['attribute_tokens'] else ''))
    path = tmp_path / 'results_nusc.json'
    meta = dict(use_camera=True, use_lidar=False, use_radar=False, use_map=False, use_external=False)
    path.write_text(json.dumps(dict(meta=meta, results=results)))
    evaluator = DetectionEval(nusc, config_factory('detection_cvpr_2019'), str(path), 'mini_val',
                              str(tmp_path / 'eval'), verbose=False)
    metrics, _ = evaluator.evaluate()
    assert metrics.nd_score >= 0.999
    assert metrics.mean_ap >= 0.999
    assert set(metrics.mean_dist_aps) == set(gen.CLASSES) and min(metrics.mean_dist_aps.values()) >= 0.999


# ------------------------------------------------------------------------------------------------
# Multi-rig sets (a rig per scene) and roll
# ------------------------------------------------------------------------------------------------
def _rot_x(deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_z(deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _quat_to_matrix(q):
    w, x, y, z = np.asarray(q, float) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _expected_camera(nominal: dict, rig: dict):
    """The nominal calibrated_sensor record changed by ``rig`` (plain numpy): K, R (cam -> ego), t."""
    k = np.array(nominal['camera_intrinsic'])
    k[0, 0] *= rig['focal']
    k[1, 1] *= rig['focal']
    rot = _quat_to_matrix(nominal['rotation']) @ _rot_x(-rig['pitch']) @ _rot_z(-rig['roll'])
    return k, rot, np.array(nominal['translation']) + [0.0, 0.0, rig['height']]


def _scene_rigs(root):
    with open(osp.join(root, gen.RIG_FILE)) as f:
        return json.load(f)['scene_rigs']


def test_multi_rig_calibrations_are_the_scenes_own_rigs(roots, nusc_multi):
    """Every scene's calibrated_sensor (through the devkit) is the nominal one changed by the scene's
    recorded rig, computed here with numpy; the draws differ between scenes, lie within the ranges and
    are what scene_rig gives; the LiDAR is unchanged."""
    rigs = _scene_rigs(roots['multi'])
    ranges = gen.parse_rig_ranges(RANGES)
    assert set(rigs) == {s['name'] for s in nusc_multi.scene}
    for name, rig in rigs.items():
        assert gen.RigSpec(**rig) == gen.scene_rig(SEED, 'v1.0-mini', name, ranges)
        for key, (lo, hi) in ranges.items():
            assert lo <= rig[key] <= hi
    for key in gen.RIG_KEYS:  # every key varies across the ten scenes
        assert len({round(r[key], 9) for r in rigs.values()}) == len(rigs)
    nominal = {c['token']: c for c in _table(roots['a'], 'calibrated_sensor')}
    checked = set()
    for sd in nusc_multi.sample_data:
        cs = nusc_multi.get('calibrated_sensor', sd['calibrated_sensor_token'])
        scene = nusc_multi.get('scene', nusc_multi.get('sample', sd['sample_token'])['scene_token'])['name']
        base = nominal[cs['token']]  # same token as in the single-rig set
        if sd['channel'] == 'LIDAR_TOP':
            assert cs == base
            continue
        k, rot, t = _expected_camera(base, rigs[scene])
        np.testing.assert_allclose(cs['camera_intrinsic'], k, rtol=0, atol=1e-6)
        np.testing.assert_allclose(_quat_to_matrix(cs['rotation']), rot, rtol=0, atol=1e-6)
        np.testing.assert_allclose(cs['translation'], t, rtol=0, atol=1e-6)
        checked.add((scene, sd['channel']))
    assert len(checked) == 10 * 6
    front = [nusc_multi.get('calibrated_sensor', nusc_multi.get('sample_data', nusc_multi.get(
        'sample', s['first_sample_token'])['data']['CAM_FRONT'])['calibrated_sensor_token']) for s in nusc_multi.scene]
    assert front[0]['camera_intrinsic'] != front[1]['camera_intrinsic'] and front[0]['rotation'] != front[1]['rotation']


def test_multi_rig_keeps_tokens_and_annotations_and_is_deterministic(roots):
    for name in ('sample', 'sample_annotation', 'instance', 'scene', 'ego_pose', 'sample_data', 'log'):
        assert _table(roots['a'], name) == _table(roots['multi'], name), name
    assert ({c['token'] for c in _table(roots['a'], 'calibrated_sensor')}
            == {c['token'] for c in _table(roots['multi'], 'calibrated_sensor')})
    # Same arguments (API with a parsed mapping, CLI with the text, different workers): same bytes.
    files = sorted(str(p.relative_to(roots['multi'])) for p in Path(roots['multi']).rglob('*') if p.is_file())
    assert files == sorted(str(p.relative_to(roots['multi_again']))
                           for p in Path(roots['multi_again']).rglob('*') if p.is_file())
    match, mismatch, errors = filecmp.cmpfiles(roots['multi'], roots['multi_again'], files, shallow=False)
    assert mismatch == [] and errors == []


def test_rig_json_and_readers(roots, tmp_path):
    with open(osp.join(roots['multi'], gen.RIG_FILE)) as f:
        record = json.load(f)
    assert record['rig_ranges'] == {k: list(v) for k, v in gen.parse_rig_ranges(RANGES).items()}
    assert record['rig'] == dict(focal=1.0, height=0.0, pitch=0.0, roll=0.0)
    assert not set(gen.RIG_KEYS) & set(record)  # no top-level rig: a one-rig reader cannot misread it
    with pytest.raises(ValueError, match='is a multi-rig dataroot'):
        gen.read_rig(roots['multi'])
    assert gen.is_multi_rig(roots['multi']) and not gen.is_multi_rig(roots['rig'])
    assert gen.read_scene_rigs(roots['multi']) == {n: gen.RigSpec(**r) for n, r in record['scene_rigs'].items()}
    assert gen.read_rig(roots['rig']) == gen.parse_rig(RIG)
    assert set(gen.read_scene_rigs(roots['rig']).values()) == {gen.parse_rig(RIG)}
    assert len(gen.read_scene_rigs(roots['rig'])) == 10
    (tmp_path / gen.RIG_FILE).write_text(json.dumps(dict(focal=1.1, height=0.2, pitch=-1.0, image_scale=0.25)))
    assert gen.read_rig(str(tmp_path)) == gen.RigSpec(focal=1.1, height=0.2, pitch=-1.0, roll=0.0)  # pre-roll file


@pytest.mark.parametrize('roll', [3.0, -3.0, 20.0])
def test_roll_turns_the_image_about_the_principal_point(roll):
    """Positive roll: the image content turns clockwise (a point right of the principal point moves
    down), as camera_delta's roll; the optical axis stays put; K and t unchanged."""
    nominal, rolled = gen.build_calibration(1.0), gen.build_calibration(1.0, gen.RigSpec(roll=roll))
    for ch in gen.CAMERAS:
        a, b = nominal[ch], rolled[ch]
        assert a['camera_intrinsic'] == b['camera_intrinsic'] and a['translation'] == b['translation']
        k = np.array(a['camera_intrinsic'])
        r_a, r_b, t = _quat_to_matrix(a['rotation']), _quat_to_matrix(b['rotation']), np.array(a['translation'])
        on_axis, right = t + r_a @ [0.0, 0.0, 20.0], t + r_a @ [5.0, 0.0, 20.0]  # ego frame

        def pixel(p_ego):
            return view_points((r_b.T @ (p_ego - t))[:, None], k, normalize=True)[:2, 0]
        np.testing.assert_allclose(pixel(on_axis), k[:2, 2], atol=1e-6)
        du, dv = pixel(right) - k[:2, 2]
        assert np.sign(dv) == np.sign(roll)  # positive roll: moves down (v increases)
        assert math.degrees(math.atan2(dv, du)) == pytest.approx(roll, abs=1e-6)
        # the turn of perturb.camera_delta(roll, 0, 0) (Rz(roll) on camera coordinates), as CameraRigAug's
        np.testing.assert_allclose(r_b.T, _rot_z(roll) @ r_a.T, atol=1e-12)
    assert gen.parse_rig('roll=-2.5') == gen.RigSpec(roll=-2.5)
    # Roll is about the pitched camera's own optical axis: the pitched optical axis stays put.
    both = gen.build_calibration(1.0, gen.RigSpec(pitch=4.0, roll=roll))['CAM_FRONT']
    pitched = gen.build_calibration(1.0, gen.RigSpec(pitch=4.0))['CAM_FRONT']
    np.testing.assert_allclose(_quat_to_matrix(both['rotation'])[:, 2], _quat_to_matrix(pitched['rotation'])[:, 2],
                               atol=1e-12)


def test_scene_rig_composes_with_the_fixed_rig():
    full = gen.scene_rig(SEED, 'v1.0-mini', 'scene-0061', gen.parse_rig_ranges(RANGES))
    only_roll = gen.scene_rig(SEED, 'v1.0-mini', 'scene-0061', {'roll': (-1, 1)}, gen.RigSpec(focal=1.2, height=0.3))
    assert only_roll == gen.RigSpec(focal=1.2, height=0.3, pitch=0.0, roll=full.roll)  # draws are per key
    assert gen.scene_rig(SEED, 'v1.0-mini', 'scene-0061', {'pitch': (1.5, 1.5)}).pitch == 1.5
    assert gen.scene_rig(SEED + 1, 'v1.0-mini', 'scene-0061', gen.parse_rig_ranges(RANGES)) != full


@pytest.mark.parametrize('text, message', [
    ('focal=1.1:0.9', 'focal=1.1:0.9 has lo > hi'), ('focal=a:1', "focal='a:1'.*not a number"),
    ('zoom=1:2', "bad item 'zoom=1:2'"), ('focal=0:1', 'focal=0 must be > 0'), ('focal=-1:1', 'focal=-1 must be > 0'),
    ('pitch=1', "pitch='1' is not a range"), ('roll=-50:0', r'roll=-50 degrees is outside \[-45, 45\]'),
    ('height=0:nan', 'height=nan must be finite'), ('roll=0:1,roll=1:2', "'roll' given twice"),
    ('', 'non-empty'),
])
def test_bad_rig_ranges(text, message):
    with pytest.raises(ValueError, match=message):
        gen.parse_rig_ranges(text)


def test_bad_rig_ranges_in_generate_and_cli(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['zoom'\]"):
        gen.check_rig_ranges({'zoom': (1, 2)})
    with pytest.raises(ValueError, match=r"focal=\(1, 'x'\) is not a pair of numbers"):
        gen.check_rig_ranges({'focal': (1, 'x')})
    with pytest.raises(ValueError, match='--rig sets focal=1.2 and --rig-ranges draws focal'):
        gen.generate(str(tmp_path), rig=gen.RigSpec(focal=1.2), rig_ranges='focal=0.9:1.1', progress=False)
    assert not (tmp_path / 'v1.0-mini').exists()
    with pytest.raises(SystemExit) as exc:
        cli.main(['--out', str(tmp_path), '--rig-ranges', 'pitch=2:-2'])
    assert exc.value.code == 2 and 'pitch=2:-2 has lo > hi' in capsys.readouterr().err
    assert cli.main(['--out', str(tmp_path), '--rig', 'height=0.3', '--rig-ranges', 'height=0:0.5',
                     '--no-progress']) == 2
    assert 'give each key in only one of them' in capsys.readouterr().err
    assert not (tmp_path / 'v1.0-mini').exists()


def test_infos_of_a_multi_rig_root_carry_the_scene_cameras(roots, nusc_multi, tmp_path):
    """tools/create_data.py's info writer reads every sample's cameras from calibrated_sensor."""
    from sf3d.datasets.nuscenes_info import create_nuscenes_infos, load_nuscenes_infos
    create_nuscenes_infos(roots['multi'], 'v1.0-mini', str(tmp_path), progress=False)
    rigs = _scene_rigs(roots['multi'])
    nominal = {c['token']: c for c in _table(roots['a'], 'calibrated_sensor')}
    seen = set()
    for split in ('train', 'val'):
        for info in load_nuscenes_infos(str(tmp_path / f'nuscenes_infos_{split}.pkl'))['data_list']:
            scene = nusc_multi.get('scene', info['scene_token'])['name']
            sample = nusc_multi.get('sample', info['token'])
            for ch, cam in info['images'].items():
                base = nominal[nusc_multi.get('sample_data', sample['data'][ch])['calibrated_sensor_token']]
                k, rot, t = _expected_camera(base, rigs[scene])
                np.testing.assert_allclose(cam['cam2img'], k, atol=1e-6)
                np.testing.assert_allclose(np.array(cam['cam2ego'])[:3, :3], rot, atol=1e-6)
                np.testing.assert_allclose(np.array(cam['cam2ego'])[:3, 3], t, atol=1e-6)
            seen.add(scene)
    assert seen == set(rigs)


# ------------------------------------------------------------------------------------------------
# Renderer unit checks
# ------------------------------------------------------------------------------------------------
def _forward_camera(size=(64, 48)):
    """A camera at (1000, 1000, 1.5) looking along global +x, and its cam -> global pose."""
    w, h = size
    camera = gen.Camera([[40.0, 0, w / 2], [0, 40.0, h / 2], [0, 0, 1]], w, h)
    cam2global = np.eye(4)
    cam2global[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float)  # x right, y down, z fwd
    cam2global[:3, 3] = [1000.0, 1000.0, 1.5]
    return camera, cam2global


def _boxes(*specs):
    """specs: (x, y, l, w, h) with the box on the ground, yaw 0."""
    specs = np.array(specs, float)
    centre = np.stack([specs[:, 0], specs[:, 1], specs[:, 4] / 2], 1)
    return gen.Boxes(centre, specs[:, [3, 2, 4]], np.zeros(len(specs)))


def test_renderer_occlusion_and_near_plane():
    camera, cam2global = _forward_camera()
    road = gen.Road((900.0, 1000.0), 0.0, 0.0)
    colours = np.array([gen.CLASS_COLOURS['car'], gen.CLASS_COLOURS['bus']], np.float32)
    # A small box 10 m ahead in front of a large one 20 m ahead: the centre pixel is the near box.
    boxes = _boxes((1010.0, 1000.0, 1.0, 1.0, 3.0), (1020.0, 1000.0, 2.0, 8.0, 3.0))
    image, ids, own = gen.render_camera(camera, cam2global, road, boxes, colours)
    assert ids[24, 32] == 0 and (ids == 1).any() and own[1] > (ids == 1).sum()
    # A box entirely behind the camera must not appear (no wrap-around through the image).
    behind = _boxes((995.0, 1000.0, 2.0, 2.0, 2.0))
    _, ids, own = gen.render_camera(camera, cam2global, road, behind, colours[:1])
    assert (ids == -1).all() and own[0] == 0
    # A long box beside the camera, from 5 m behind to 5 m ahead on its left: only the left
    # half of the image may show it.
    beside = _boxes((1000.0, 1002.0, 10.0, 1.0, 3.0))
    _, ids, _ = gen.render_camera(camera, cam2global, road, beside, colours[:1])
    cols = np.nonzero((ids == 0).any(0))[0]
    assert len(cols) > 0 and cols.max() < 32


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('text, message', [
    ('focal=abc', 'not a number'), ('zoom=2', "bad item 'zoom=2'"), ('focal', "bad item 'focal'"),
    ('focal=0', 'must be > 0'), ('pitch=90', 'outside [-45, 45]'), ('focal=1,focal=2', 'given twice'),
])
def test_bad_rig_strings(text, message):
    with pytest.raises(ValueError, match=message.replace('[', r'\[').replace(']', r'\]')):
        gen.parse_rig(text)


def test_parse_rig_accepts_subsets():
    assert gen.parse_rig('') == gen.RigSpec()
    assert gen.parse_rig('pitch=-3, focal=0.9') == gen.RigSpec(focal=0.9, height=0.0, pitch=-3.0)


@pytest.mark.parametrize('kwargs, message', [
    (dict(version='v1.0-trainval'), "version 'v1.0-trainval' is not supported"),
    (dict(samples_per_scene=1), 'samples_per_scene=1'),
    (dict(image_scale=0.0), 'image_scale=0.0'),
    (dict(seed=-1), 'seed=-1'),
])
def test_bad_generate_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        gen.generate(str(tmp_path), progress=False, **kwargs)
    assert not (tmp_path / 'v1.0-mini').exists()


def test_refuses_to_overwrite_a_dataset_it_did_not_write(tmp_path):
    (tmp_path / 'v1.0-mini').mkdir()
    (tmp_path / 'v1.0-mini' / 'scene.json').write_text(json.dumps([dict(name='scene-0061', description='real')]))
    with pytest.raises(ValueError, match='not a synthetic dataset'):
        gen.generate(str(tmp_path), samples_per_scene=2, progress=False)
    assert (tmp_path / 'v1.0-mini' / 'scene.json').exists()


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(['--out', str(tmp_path), '--version', 'v2.0'])
    assert exc.value.code == 2 and "invalid choice: 'v2.0'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(['--out', str(tmp_path), '--rig', 'focal=x'])
    assert exc.value.code == 2 and "focal='x' is not a number" in capsys.readouterr().err
    assert cli.main(['--out', str(tmp_path), '--samples-per-scene', '0', '--no-progress']) == 2
    assert 'samples_per_scene=0' in capsys.readouterr().err
