"""nuScenes info files (create / load / legacy conversion) against the unchanged devkit.

One synthetic v1.0-mini set (10 scenes x 2 samples) and one v1.0-test set are generated per
module. Geometry is checked with the devkit's own functions (get_sample_data, view_points,
box_velocity) and pyquaternion, not with the code under test.
"""
import copy
import hashlib
import json
import math
import os
import os.path as osp
import pickle
from pathlib import Path

import numpy as np
import pytest
from nuscenes import NuScenes
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.utils import splits
from nuscenes.utils.geometry_utils import view_points
from pyquaternion import Quaternion

import sf3d.datasets.synthetic_nuscenes as gen
from sf3d.datasets.nuscenes_info import (CAMERAS, CLASSES, convert_legacy_infos, create_nuscenes_infos,
                                         detect_legacy_convention, load_nuscenes_infos, update_legacy_infos)
from sf3d.structures import from_info_bbox3d, to_nusc_boxes
from tool_loader import load_tool

SAMPLES = 2
CONVERT = 'python tools/create_data.py nuscenes --update-infos'


cli = load_tool('create_data')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp('nuscenes_info')
    mini, test, out = str(base / 'mini'), str(base / 'test'), str(base / 'infos')
    gen.generate(mini, seed=1, samples_per_scene=SAMPLES, progress=False)
    gen.generate(test, seed=1, samples_per_scene=SAMPLES, version='v1.0-test', progress=False)
    mini_paths = create_nuscenes_infos(mini, 'v1.0-mini', out, progress=False)
    test_paths = create_nuscenes_infos(test, 'v1.0-test', osp.join(out, 'test'), progress=False)
    return dict(base=base, mini=mini, test=test, out=out, mini_paths=mini_paths, test_paths=test_paths,
                nusc=NuScenes('v1.0-mini', mini, verbose=False))


@pytest.fixture(scope='module')
def infos(data):
    return {split: load_nuscenes_infos(osp.join(data['out'], f'nuscenes_infos_{split}.pkl'))
            for split in ('train', 'val')}


def _samples(infos):
    return infos['train']['data_list'] + infos['val']['data_list']


def _lidar_poses(nusc, sample):
    """(lidar2ego, ego2global) pyquaternion records of the sample's LiDAR reading."""
    sd = nusc.get('sample_data', sample['data']['LIDAR_TOP'])
    return (nusc.get('calibrated_sensor', sd['calibrated_sensor_token']), nusc.get('ego_pose', sd['ego_pose_token']))


def _yaw_diff(a, b):
    return np.abs((np.asarray(a) - np.asarray(b) + np.pi) % (2 * np.pi) - np.pi)


# ------------------------------------------------------------------------------------------------ create
def test_splits_counts_tokens_and_layout(data, infos):
    nusc = data['nusc']
    assert [osp.basename(p) for p in data['mini_paths']] == ['nuscenes_infos_train.pkl', 'nuscenes_infos_val.pkl']
    for split, scenes in (('train', splits.mini_train), ('val', splits.mini_val)):
        expected = {s['token'] for s in nusc.sample if nusc.get('scene', s['scene_token'])['name'] in scenes}
        data_list = infos[split]['data_list']
        assert len(data_list) == len(scenes) * SAMPLES == len(expected)
        assert {d['token'] for d in data_list} == expected
        assert [d['sample_idx'] for d in data_list] == list(range(len(data_list)))
        assert infos[split]['metainfo'] == {'categories': {c: i for i, c in enumerate(CLASSES)},
                                            'dataset': 'nuscenes', 'version': 'v1.0-mini', 'info_version': '1.1'}
    for info in _samples(infos):
        sample = nusc.get('sample', info['token'])
        assert info['timestamp'] == sample['timestamp'] / 1e6 and info['scene_token'] == sample['scene_token']
        assert list(info['images']) == list(CAMERAS)
        assert osp.isfile(osp.join(data['mini'], 'samples', 'LIDAR_TOP', info['lidar_points']['lidar_path']))
        assert info['lidar_points']['num_pts_feats'] == 5
        for cam, img in info['images'].items():
            sd = nusc.get('sample_data', sample['data'][cam])
            assert img['sample_data_token'] == sd['token'] and img['timestamp'] == sd['timestamp'] / 1e6
            assert osp.join('samples', cam, img['img_path']) == sd['filename']
            calib = nusc.get('calibrated_sensor', sd['calibrated_sensor_token'])
            assert img['cam2img'] == calib['camera_intrinsic']
            np.testing.assert_allclose(np.array(img['cam2ego'])[:3, :3], Quaternion(calib['rotation']).rotation_matrix)


def test_boxes_back_to_global_match_annotations(data, infos):
    nusc = data['nusc']
    n_checked = 0
    for info in _samples(infos):
        sample = nusc.get('sample', info['token'])
        assert len(info['instances']) == len(sample['anns'])
        inst = info['instances']
        boxes = from_info_bbox3d([i['bbox_3d'] for i in inst], [i['velocity'] for i in inst])
        for box, ann_token, i in zip(to_nusc_boxes(boxes, info['lidar_points']['lidar2ego'], info['ego2global']),
                                     sample['anns'], inst):
            ann = nusc.get('sample_annotation', ann_token)
            np.testing.assert_allclose(box.center, ann['translation'], atol=1e-6)
            np.testing.assert_allclose(box.wlh, ann['size'], atol=1e-9)
            # yaw is about the LiDAR z axis, which is tilted by the calibration: the global heading is
            # kept to second order in the tilt, not exactly
            heading = box.rotation_matrix[:, 0]
            assert _yaw_diff(math.atan2(heading[1], heading[0]), Quaternion(ann['rotation']).yaw_pitch_roll[0]) < 2e-3
            label = CLASSES.index(category_to_detection_name(ann['category_name']))
            assert i['bbox_label_3d'] == i['bbox_label'] == label
            assert (i['num_lidar_pts'], i['num_radar_pts']) == (ann['num_lidar_pts'], ann['num_radar_pts'])
            assert i['bbox_3d_isvalid'] is (ann['num_lidar_pts'] + ann['num_radar_pts'] > 0)
            n_checked += 1
        # against the devkit's LiDAR-frame boxes: z is the box centre, yaw the heading of the box x
        # axis; mmdet3d's yaw_pitch_roll[0] differs only to second order in the LiDAR tilt
        _, lidar_boxes, _ = nusc.get_sample_data(sample['data']['LIDAR_TOP'])
        by_token = {b.token: b for b in lidar_boxes}
        for ann_token, i in zip(sample['anns'], inst):
            b = by_token[ann_token]
            np.testing.assert_allclose(i['bbox_3d'][:6], [*b.center, b.wlh[1], b.wlh[0], b.wlh[2]], atol=1e-9)
            x_axis = b.rotation_matrix[:, 0]
            assert _yaw_diff(i['bbox_3d'][6], math.atan2(x_axis[1], x_axis[0])) < 1e-12
            assert _yaw_diff(i['bbox_3d'][6], b.orientation.yaw_pitch_roll[0]) < 1e-3
    assert n_checked > 400 and len({i['bbox_label_3d'] for d in _samples(infos) for i in d['instances']}) == 10


def test_lidar2cam_goes_through_both_ego_poses(data, infos):
    """Devkit LiDAR-frame corners through the stored lidar2cam/cam2img land on the devkit's
    view_points of its camera-frame boxes; a single-ego-pose chain would not."""
    nusc = data['nusc']
    errors, single_pose = [], []
    for info in infos['val']['data_list']:
        sample = nusc.get('sample', info['token'])
        _, lidar_boxes, _ = nusc.get_sample_data(sample['data']['LIDAR_TOP'])
        corners_lidar = {b.token: np.vstack([b.corners(), np.ones((1, 8))]) for b in lidar_boxes}
        for cam, img in info['images'].items():
            _, cam_boxes, intrinsic = nusc.get_sample_data(img['sample_data_token'])
            lidar2cam, cam2img = np.array(img['lidar2cam']), np.array(img['cam2img'])
            wrong = np.linalg.inv(np.array(img['cam2ego'])) @ np.array(info['lidar_points']['lidar2ego'])
            for box in cam_boxes:
                corners = box.corners()
                front = corners[2] > 0.5
                if not front.any():
                    continue
                expected = view_points(corners, intrinsic, normalize=True)[:2, front]
                for matrix, out in ((lidar2cam, errors), (wrong, single_pose)):
                    uv = view_points((matrix @ corners_lidar[box.token])[:3], cam2img, normalize=True)[:2, front]
                    out.append(np.abs(uv - expected).max())
    assert len(errors) > 50
    assert max(errors) < 1e-6
    assert max(single_pose) > 2.0


def _rigid(rotation, translation):
    """4x4 from a pyquaternion rotation and a translation (independent of sf3d.structures)."""
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = Quaternion(rotation).rotation_matrix, translation
    return m


def _rigid_inv(m):
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = m[:3, :3].T, -m[:3, :3].T @ m[:3, 3]
    return out


def _lidar2global(nusc, sample):
    calib, pose = _lidar_poses(nusc, sample)
    return _rigid(pose['rotation'], pose['translation']) @ _rigid(calib['rotation'], calib['translation'])


def test_prev_links_the_previous_key_frame_with_the_devkit_ego_motion(data, infos):
    """prev: None for a scene's first sample; else the devkit's sample['prev'] (token, timestamp),
    the previous entry's own images dict, and ego_motion = inv(lidar2global_prev) @ lidar2global
    composed here from the two LIDAR_TOP records with pyquaternion."""
    nusc = data['nusc']
    firsts, moves = 0, []
    for split in ('train', 'val'):
        data_list = infos[split]['data_list']
        for k, info in enumerate(data_list):
            sample = nusc.get('sample', info['token'])
            if not sample['prev']:
                assert info['prev'] is None
                firsts += 1
                continue
            prev = info['prev']
            prev_sample = nusc.get('sample', sample['prev'])
            assert set(prev) == {'token', 'timestamp', 'ego_motion', 'images'}
            assert prev['token'] == prev_sample['token'] == data_list[k - 1]['token']
            assert prev['timestamp'] == prev_sample['timestamp'] / 1e6
            assert abs(info['timestamp'] - prev['timestamp'] - 0.5) < 1e-3  # the generator's key-frame period
            assert prev['images'] is data_list[k - 1]['images']  # one object in the file
            for cam in CAMERAS:
                assert prev['images'][cam]['sample_data_token'] == prev_sample['data'][cam]
            expected = _rigid_inv(_lidar2global(nusc, prev_sample)) @ _lidar2global(nusc, sample)
            motion = np.array(prev['ego_motion'])
            assert motion.dtype == np.float64
            np.testing.assert_allclose(motion, expected, atol=1e-6)
            moves.append(np.linalg.norm(motion[:3, 3]))
    assert firsts == len(splits.mini_train) + len(splits.mini_val)
    assert len(moves) == firsts * (SAMPLES - 1) and max(moves) > 2.0  # the ego moves between key frames


def test_prev_adds_little_to_the_file(data):
    path = osp.join(data['out'], 'nuscenes_infos_train.pkl')
    with open(path, 'rb') as f:
        stored = pickle.load(f)
    for info in stored['data_list']:
        info.pop('prev')
    assert osp.getsize(path) < 1.1 * len(pickle.dumps(stored, protocol=pickle.HIGHEST_PROTOCOL))


def test_velocity_is_box_velocity_rotated_into_lidar(data, infos):
    nusc = data['nusc']
    speeds = []
    for info in _samples(infos):
        sample = nusc.get('sample', info['token'])
        calib, pose = _lidar_poses(nusc, sample)
        global2lidar = np.linalg.inv(Quaternion(pose['rotation']).rotation_matrix @
                                     Quaternion(calib['rotation']).rotation_matrix)
        for ann_token, inst in zip(sample['anns'], info['instances']):
            v = nusc.box_velocity(ann_token)
            expected = (global2lidar @ np.array([v[0], v[1], 0.0]))[:2]
            np.testing.assert_allclose(inst['velocity'], expected, atol=1e-9)
            speeds.append(np.hypot(*v[:2]))
    assert max(speeds) > 2.0  # moving objects are covered


def test_non_detection_category_and_nan_velocity(data, tmp_path, monkeypatch):
    """A category outside the detection classes gets label -1; a NaN devkit velocity stays NaN."""
    root = tmp_path / 'root'
    (root / 'v1.0-mini').mkdir(parents=True)
    for name in ('maps', 'samples'):
        os.symlink(osp.join(data['mini'], name), root / name)
    for table in os.listdir(osp.join(data['mini'], 'v1.0-mini')):
        os.symlink(osp.join(data['mini'], 'v1.0-mini', table), root / 'v1.0-mini' / table)
    categories = json.load(open(osp.join(data['mini'], 'v1.0-mini', 'category.json')))
    for c in categories:
        if c['name'] == 'movable_object.barrier':
            c['name'] = 'movable_object.debris'
    os.remove(root / 'v1.0-mini' / 'category.json')
    json.dump(categories, open(root / 'v1.0-mini' / 'category.json', 'w'))
    nan_token = data['nusc'].sample[0]['anns'][0]
    original = NuScenes.box_velocity
    monkeypatch.setattr(NuScenes, 'box_velocity', lambda self, token, *a, **k:
                        np.full(3, np.nan) if token == nan_token else original(self, token, *a, **k))
    paths = create_nuscenes_infos(str(root), 'v1.0-mini', str(tmp_path / 'out'), progress=False)
    samples = [d for p in paths for d in load_nuscenes_infos(p)['data_list']]
    labels = [i['bbox_label_3d'] for d in samples for i in d['instances']]
    assert CLASSES.index('barrier') not in labels and -1 in labels
    first = next(d for d in samples if d['token'] == data['nusc'].sample[0]['token'])
    assert np.isnan(first['instances'][0]['velocity']).all()


def test_test_version_has_no_instances(data):
    (path,) = data['test_paths']
    assert osp.basename(path) == 'nuscenes_infos_test.pkl'
    assert sorted(os.listdir(osp.dirname(path))) == ['nuscenes_infos_test.pkl']
    infos = load_nuscenes_infos(path)
    nusc = NuScenes('v1.0-test', data['test'], verbose=False)
    assert infos['metainfo']['version'] == 'v1.0-test'
    assert {d['token'] for d in infos['data_list']} == {s['token'] for s in nusc.sample}
    for d in infos['data_list']:
        assert d['instances'] == [] and list(d['images']) == list(CAMERAS)
        assert np.array(d['ego2global']).shape == (4, 4)


def test_cli_writes_tagged_files(data, tmp_path, capsys):
    out = tmp_path / 'cli'
    assert cli.main(['nuscenes', '--root-path', data['mini'], '--version', 'v1.0-mini', '--out-dir', str(out),
                     '--extra-tag', 'synth', '--no-progress']) == 0
    assert sorted(os.listdir(out)) == ['synth_infos_train.pkl', 'synth_infos_val.pkl']
    assert load_nuscenes_infos(str(out / 'synth_infos_val.pkl')) == \
        load_nuscenes_infos(osp.join(data['out'], 'nuscenes_infos_val.pkl'))
    assert cli.main(['nuscenes', '--root-path', data['mini'], '--version', 'v2.0', '--out-dir', str(out)]) == 2
    err = capsys.readouterr().err
    assert 'v2.0' in err and 'v1.0-trainval' in err and 'v1.0-mini' in err and 'v1.0-test' in err


# ------------------------------------------------------------------------------------------------ create: errors
def _fake_root(tmp_path, data, version, tables=None, scene_filter=None):
    """A dataroot whose `version` folder holds (links to) the tables of `tables` (default: the mini set)."""
    root = tmp_path / 'fake'
    (root / version).mkdir(parents=True)
    src = tables or osp.join(data['mini'], 'v1.0-mini')
    for name in ('maps', 'samples'):
        os.symlink(osp.join(data['mini'], name), root / name)
    for table in os.listdir(src):
        if scene_filter is not None and table == 'scene.json':
            scenes = [s for s in json.load(open(osp.join(src, table))) if scene_filter(s['name'])]
            json.dump(scenes, open(root / version / table, 'w'))
        else:
            os.symlink(osp.join(src, table), root / version / table)
    return str(root)


def test_error_unknown_version_and_missing_version_folder(data, tmp_path):
    with pytest.raises(ValueError, match=r"unknown nuScenes version 'v1\.0'.*v1\.0-trainval, v1\.0-mini, v1\.0-test"):
        create_nuscenes_infos(data['mini'], 'v1.0', str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        create_nuscenes_infos(data['mini'], 'v1.0-trainval', str(tmp_path))
    assert osp.join(data['mini'], 'v1.0-trainval') in str(err.value)
    assert 'versions present in' in str(err.value) and 'v1.0-mini' in str(err.value)
    with pytest.raises(FileNotFoundError, match='versions present in .*: none'):
        create_nuscenes_infos(str(tmp_path), 'v1.0-mini', str(tmp_path))


def test_error_root_is_the_version_folder(data, tmp_path):
    with pytest.raises(ValueError, match='not the dataroot'):
        create_nuscenes_infos(osp.join(data['mini'], 'v1.0-mini'), 'v1.0-mini', str(tmp_path))


def test_error_tables_of_another_version(data, tmp_path):
    root = _fake_root(tmp_path, data, 'v1.0-mini', tables=osp.join(data['test'], 'v1.0-test'))
    with pytest.raises(ValueError, match=r'version/root mismatch.*scene-0\d\d\d.*test') as err:
        create_nuscenes_infos(root, 'v1.0-mini', str(tmp_path / 'out'))
    assert 'v1.0-mini' in str(err.value)
    assert not (tmp_path / 'out').exists()


def test_error_split_without_scenes(data, tmp_path):
    """Tables named v1.0-trainval that hold no val scene: the error names the split and its scenes."""
    root = _fake_root(tmp_path, data, 'v1.0-trainval', scene_filter=lambda name: name in splits.train)
    with pytest.raises(ValueError, match=r"split 'val' \(val\) of v1\.0-trainval has none of its 150 scenes") as err:
        create_nuscenes_infos(root, 'v1.0-trainval', str(tmp_path / 'out'))
    assert splits.val[0] in str(err.value)


def test_error_missing_image_file(data, tmp_path):
    root = Path(_fake_root(tmp_path, data, 'v1.0-mini'))
    os.remove(root / 'samples')
    for channel in os.listdir(osp.join(data['mini'], 'samples')):
        (root / 'samples' / channel).mkdir(parents=True)
        for f in os.listdir(osp.join(data['mini'], 'samples', channel)):
            os.symlink(osp.join(data['mini'], 'samples', channel, f), root / 'samples' / channel / f)
    val_sample = next(s for s in data['nusc'].sample
                      if data['nusc'].get('scene', s['scene_token'])['name'] == splits.mini_val[-1])
    missing = data['nusc'].get('sample_data', val_sample['data']['CAM_BACK_LEFT'])['filename']
    os.remove(root / missing)
    with pytest.raises(FileNotFoundError, match='not found') as err:
        create_nuscenes_infos(str(root), 'v1.0-mini', str(tmp_path / 'out'), progress=False)
    assert str(root / missing) in str(err.value) and 'CAM_BACK_LEFT' in str(err.value)
    assert not (tmp_path / 'out').exists()  # no partial output (the train split was fine)


# ------------------------------------------------------------------------------------------------ load
def _dump(obj, path):
    with open(path, 'wb') as f:
        pickle.dump(obj, f)
    return str(path)


def _mmdet3d_entry(sample_idx, with_annotations=True):
    """One data_list entry key for key as mmdet3d 1.x's update_infos_to_v2 writes it (float32 lists,
    numpy scalars, lidar_sweeps with a dataroot-relative path, cam_instances, an ignored class)."""
    def m32(seed):
        rng = np.random.default_rng(seed)
        q = Quaternion(rng.normal(size=4)).normalised
        mat = np.eye(4)
        mat[:3, :3], mat[:3, 3] = q.rotation_matrix, rng.normal(size=3)
        return mat.astype(np.float32).tolist()

    images = {}
    for k, cam in enumerate(CAMERAS):
        images[cam] = {'img_path': f'n015-2018-07-24-11-22-45+0800__{cam}__15322965{k}0412460.jpg',
                       'cam2img': [[1266.417203046554, 0.0, 816.2670197447984],
                                   [0.0, 1266.417203046554, 491.50706579294757], [0.0, 0.0, 1.0]],
                       'cam2ego': m32(10 + k), 'sample_data_token': f'{k:032x}', 'timestamp': 1532402927.612460 + k,
                       'lidar2cam': m32(20 + k)}
    entry = {'sample_idx': sample_idx, 'token': f'{sample_idx + 100:032x}', 'timestamp': 1532402927.647951,
             'ego2global': m32(1), 'images': images,
             'lidar_points': {'num_pts_feats': 5,
                              'lidar_path': 'n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin',
                              'lidar2ego': m32(2)},
             'lidar_sweeps': [{'timestamp': 1532402927.598, 'ego2global': m32(3),
                               'lidar_points': {'lidar_path': 'data/nuscenes/sweeps/LIDAR_TOP/n015__1.pcd.bin',
                                                'lidar2ego': m32(2), 'lidar2sensor': m32(4)},
                               'sample_data_token': 'f' * 32}]}
    if not with_annotations:
        entry['instances'] = []
        return entry
    entry['instances'] = [
        {'bbox_label': 0, 'bbox_3d': [-8.4, 10.5, -1.1, 4.25, 1.64, 1.44, -1.6], 'bbox_3d_isvalid': np.bool_(True),
         'bbox_label_3d': 0, 'num_lidar_pts': np.int64(12), 'num_radar_pts': np.int64(3), 'velocity': [0.2, -3.1]},
        {'bbox_label': -1, 'bbox_3d': [2.0, -5.0, -1.5, 0.6, 0.5, 0.9, 0.3], 'bbox_3d_isvalid': np.bool_(False),
         'bbox_label_3d': -1, 'num_lidar_pts': np.int64(0), 'num_radar_pts': np.int64(0), 'velocity': [0.0, 0.0]}]
    entry['cam_instances'] = {cam: [] for cam in CAMERAS}
    entry['cam_instances']['CAM_FRONT'] = [
        {'bbox_label': 0, 'bbox_label_3d': 0, 'bbox': [512.1, 443.2, 622.8, 520.0], 'bbox_3d_isvalid': True,
         'bbox_3d': [-0.9, 1.2, 10.3, 4.25, 1.44, 1.64, 0.03], 'velocity': [0.1, 3.0],
         'center_2d': [560.3, 480.1], 'depth': 10.3, 'attr_label': 5}]
    return entry


def _mmdet3d_file(entries):
    categories = {c: i for i, c in enumerate(CLASSES)}
    categories['movable_object.debris'] = -1
    return {'metainfo': {'categories': categories, 'dataset': 'nuscenes', 'version': 'v1.0-trainval',
                         'info_version': '1.1'},
            'data_list': entries}


def test_mmdet3d_written_files_load_unchanged(tmp_path):
    original = _mmdet3d_file([_mmdet3d_entry(0), _mmdet3d_entry(1)])
    loaded = load_nuscenes_infos(_dump(original, tmp_path / 'nuscenes_infos_train.pkl'))
    assert loaded == original  # every key and value as stored, extras included
    test_file = _mmdet3d_file([_mmdet3d_entry(0, with_annotations=False)])
    assert load_nuscenes_infos(_dump(test_file, tmp_path / 'nuscenes_infos_test.pkl')) == test_file
    arrays = copy.deepcopy(original)  # some forks store numpy matrices and relative image paths
    for d in arrays['data_list']:
        d['ego2global'] = np.asarray(d['ego2global'], dtype=np.float32)
        d['images']['CAM_BACK']['cam2img'] = np.eye(4)
        d['images']['CAM_BACK']['img_path'] = 'samples/CAM_BACK/x.jpg'
    assert load_nuscenes_infos(_dump(arrays, tmp_path / 'arrays.pkl'))['data_list'][1]['ego2global'].shape == (4, 4)


def _prev(d):
    """Give data_list[1] a valid prev (data_list[0]; its images a copy, so that a mutation stays in prev)."""
    first, second = d['data_list'][0], d['data_list'][1]
    second['prev'] = {'token': first['token'], 'timestamp': first['timestamp'], 'ego_motion': np.eye(4).tolist(),
                      'images': copy.deepcopy(first['images'])}
    return second


def test_prev_is_optional_and_checked_when_present(tmp_path):
    """mmdet3d's files (no prev) load; prev None and a valid prev load unchanged."""
    entries = _mmdet3d_file([_mmdet3d_entry(0), _mmdet3d_entry(1)])
    entries['data_list'][0]['prev'] = None
    _prev(entries)
    assert load_nuscenes_infos(_dump(entries, tmp_path / 'with_prev.pkl')) == entries


@pytest.mark.parametrize('mutate, pattern', [
    (lambda d: d.pop('metainfo'), "missing top-level key 'metainfo'"),
    (lambda d: d.pop('data_list'), "missing top-level key 'data_list'"),
    (lambda d: d['data_list'][1].pop('token'), r"data_list\[1\]: key 'token' is missing"),
    (lambda d: d['data_list'][1]['images'].pop('CAM_BACK'),
     r"data_list\[1\] \(token .*\): 'images.CAM_BACK' is missing"),
    (lambda d: d['data_list'][0]['images']['CAM_FRONT'].pop('lidar2cam'), r"'images.CAM_FRONT.lidar2cam' is missing"),
    (lambda d: d['data_list'][0]['images']['CAM_FRONT'].pop('img_path'), r"'images.CAM_FRONT.img_path' is missing"),
    (lambda d: d['data_list'][0]['images']['CAM_FRONT'].update(cam2img=[[1, 0], [0, 1]]),
     r"'images.CAM_FRONT.cam2img' must be a 3x3 or 3x4 or 4x4 matrix, got shape \(2, 2\)"),
    (lambda d: d['data_list'][1]['lidar_points'].pop('lidar2ego'),
     r"data_list\[1\].*'lidar_points.lidar2ego' is missing"),
    (lambda d: d['data_list'][0].update(ego2global=[[1.0] * 4] * 3), r"'ego2global' must be a 4x4 matrix"),
    (lambda d: d['data_list'][1]['instances'][1].update(bbox_3d=[0.0] * 9),
     r"data_list\[1\].*'instances\[1\].bbox_3d' must have 7 values"),
    (lambda d: d['metainfo']['categories'].update(car=1, truck=0), 'differ from sf3d\'s class order'),
    (lambda d: _prev(d)['prev'].update(ego_motion=np.eye(3).tolist()),
     r"data_list\[1\] \(token .*\): 'prev.ego_motion' must be a 4x4 matrix, got shape \(3, 3\)"),
    (lambda d: _prev(d)['prev'].pop('timestamp'), r"data_list\[1\].*'prev.timestamp' is missing"),
    (lambda d: _prev(d)['prev'].update(timestamp='soon'), r"'prev.timestamp' must be a finite number"),
    (lambda d: _prev(d)['prev'].update(images={c: v for c, v in d['data_list'][0]['images'].items()
                                               if c != 'CAM_BACK'}),
     r"data_list\[1\].*'prev.images.CAM_BACK' is missing"),
    (lambda d: _prev(d)['prev']['images']['CAM_FRONT'].update(lidar2cam=np.eye(3)),
     r"'prev.images.CAM_FRONT.lidar2cam' must be a 4x4 matrix"),
    (lambda d: _prev(d)['prev']['images']['CAM_FRONT'].pop('img_path'),
     r"'prev.images.CAM_FRONT.img_path' is missing"),
    (lambda d: d['data_list'][1].update(prev='abc'), r"data_list\[1\].*'prev' must be None or a dict"),
])
def test_malformed_files_are_refused(tmp_path, mutate, pattern):
    bad = _mmdet3d_file([_mmdet3d_entry(0), _mmdet3d_entry(1)])
    mutate(bad)
    path = _dump(bad, tmp_path / 'bad_infos.pkl')
    with pytest.raises(ValueError, match=pattern) as err:
        load_nuscenes_infos(path)
    assert path in str(err.value)


def test_missing_file_names_it_and_the_command(tmp_path):
    path = str(tmp_path / 'nuscenes_infos_train.pkl')
    with pytest.raises(FileNotFoundError) as err:
        load_nuscenes_infos(path)
    assert path in str(err.value) and 'python tools/create_data.py nuscenes --root-path' in str(err.value)


# ------------------------------------------------------------------------------------------------ legacy files
def _to_legacy(v2, nusc, convention):
    """The inverse mapping: a 0.17 / 1.0rc-era file as mmdet3d's old converter wrote it, with the
    camera -> LiDAR transform composed independently from the devkit records."""
    def rot(q):
        return Quaternion(q).rotation_matrix

    infos = []
    for info in v2['data_list']:
        sample = nusc.get('sample', info['token'])
        l_calib, l_pose = _lidar_poses(nusc, sample)
        lidar_sd = nusc.get('sample_data', sample['data']['LIDAR_TOP'])
        cams = {}
        for cam in CAMERAS:
            sd = nusc.get('sample_data', sample['data'][cam])
            calib = nusc.get('calibrated_sensor', sd['calibrated_sensor_token'])
            pose = nusc.get('ego_pose', sd['ego_pose_token'])
            # camera point -> ego(cam time) -> global -> ego(lidar time) -> lidar
            r = rot(l_calib['rotation']).T @ rot(l_pose['rotation']).T @ rot(pose['rotation']) @ rot(calib['rotation'])
            t = rot(pose['rotation']) @ np.array(calib['translation']) + pose['translation']
            t = rot(l_pose['rotation']).T @ (t - l_pose['translation'])
            t = rot(l_calib['rotation']).T @ (t - l_calib['translation'])
            cams[cam] = {'data_path': f'./data/nuscenes/{sd["filename"]}', 'type': cam,
                         'sample_data_token': sd['token'],
                         'sensor2ego_translation': calib['translation'], 'sensor2ego_rotation': calib['rotation'],
                         'ego2global_translation': pose['translation'], 'ego2global_rotation': pose['rotation'],
                         'timestamp': sd['timestamp'], 'sensor2lidar_rotation': r, 'sensor2lidar_translation': t,
                         'cam_intrinsic': np.array(calib['camera_intrinsic'])}
        boxes = np.array([i['bbox_3d'] for i in info['instances']]).reshape(-1, 7)
        if convention == '0.17':
            boxes = np.concatenate([boxes[:, :3], boxes[:, [4, 3, 5]], -boxes[:, 6:] - np.pi / 2], axis=1)
        anns = [nusc.get('sample_annotation', t) for t in sample['anns']]
        infos.append({
            'lidar_path': f'./data/nuscenes/{lidar_sd["filename"]}', 'token': info['token'], 'sweeps': [], 'cams': cams,
            'lidar2ego_translation': l_calib['translation'], 'lidar2ego_rotation': l_calib['rotation'],
            'ego2global_translation': l_pose['translation'], 'ego2global_rotation': l_pose['rotation'],
            'timestamp': sample['timestamp'], 'gt_boxes': boxes,
            'gt_names': np.array([category_to_detection_name(a['category_name']) for a in anns]),
            'gt_velocity': np.array([i['velocity'] for i in info['instances']]).reshape(-1, 2),
            'num_lidar_pts': np.array([a['num_lidar_pts'] for a in anns]),
            'num_radar_pts': np.array([a['num_radar_pts'] for a in anns]),
            'valid_flag': np.array([a['num_lidar_pts'] + a['num_radar_pts'] > 0 for a in anns], dtype=bool)})
    return {'infos': infos, 'metadata': {'version': 'v1.0-mini'}}


def _assert_same_infos(converted, reference):
    assert converted['metainfo'] == reference['metainfo']
    assert len(converted['data_list']) == len(reference['data_list'])
    for a, b in zip(converted['data_list'], reference['data_list']):
        for key in ('sample_idx', 'token', 'timestamp', 'ego2global', 'lidar_points'):
            assert a[key] == b[key], key
        for cam in CAMERAS:
            ia, ib = a['images'][cam], b['images'][cam]
            for key in ('img_path', 'cam2img', 'sample_data_token', 'timestamp', 'cam2ego'):
                assert ia[key] == ib[key], (cam, key)
            np.testing.assert_allclose(ia['lidar2cam'], ib['lidar2cam'], atol=1e-9)
        assert len(a['instances']) == len(b['instances'])
        for ia, ib in zip(a['instances'], b['instances']):
            np.testing.assert_allclose(ia['bbox_3d'][:6], ib['bbox_3d'][:6], atol=1e-12)
            assert _yaw_diff(ia['bbox_3d'][6], ib['bbox_3d'][6]) < 1e-9
            for key in ('bbox_label_3d', 'bbox_label', 'velocity', 'num_lidar_pts', 'num_radar_pts', 'bbox_3d_isvalid'):
                assert ia[key] == ib[key], key


@pytest.fixture(scope='module')
def legacy(data, infos, tmp_path_factory):
    base = tmp_path_factory.mktemp('legacy')
    return {conv: _dump(_to_legacy(infos['val'], data['nusc'], conv), base / f'v{conv}_infos_val.pkl')
            for conv in ('0.17', '1.0')}


def test_legacy_file_is_refused_with_the_command(legacy):
    for path in legacy.values():
        with pytest.raises(ValueError) as err:
            load_nuscenes_infos(path)
        message = str(err.value)
        assert f'{CONVERT} {path}' in message and 'legacy' in message and 'yaw' in message


def test_update_legacy_017_reproduces_v2(legacy, infos, capsys):
    path = legacy['0.17']
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    with open(path, 'rb') as f:
        assert detect_legacy_convention(pickle.load(f)['infos']) == '0.17'
    out = update_legacy_infos(path)
    assert out == path[:-4] + '_v2.pkl' and 'box convention 0.17' in capsys.readouterr().out
    _assert_same_infos(load_nuscenes_infos(out), infos['val'])
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest
    with pytest.raises(ValueError, match='refusing to overwrite the input'):
        update_legacy_infos(path, path)


def test_update_legacy_10rc_is_detected(legacy, infos, tmp_path):
    with open(legacy['1.0'], 'rb') as f:
        assert detect_legacy_convention(pickle.load(f)['infos']) == '1.0'
    assert cli.main(['nuscenes', '--update-infos', legacy['1.0'], '--out', str(tmp_path / 'new.pkl'),
                     '--no-progress']) == 0
    _assert_same_infos(load_nuscenes_infos(str(tmp_path / 'new.pkl')), infos['val'])


def test_legacy_without_cars_needs_the_convention(legacy, infos, tmp_path, capsys):
    with open(legacy['0.17'], 'rb') as f:
        old = pickle.load(f)
    reference = copy.deepcopy(infos['val'])
    for info, ref in zip(old['infos'], reference['data_list']):
        keep = info['gt_names'] != 'car'
        for key in ('gt_boxes', 'gt_names', 'gt_velocity', 'num_lidar_pts', 'num_radar_pts', 'valid_flag'):
            info[key] = info[key][keep]
        ref['instances'] = [i for i, k in zip(ref['instances'], keep) if k]
    path = _dump(old, tmp_path / 'nocars.pkl')
    with pytest.raises(ValueError, match='no car boxes.*--legacy-convention 0.17'):
        update_legacy_infos(path)
    assert cli.main(['nuscenes', '--update-infos', path]) == 2
    assert '--legacy-convention' in capsys.readouterr().err
    assert not osp.exists(tmp_path / 'nocars_v2.pkl')
    assert cli.main(['nuscenes', '--update-infos', path, '--legacy-convention', '0.17', '--no-progress']) == 0
    _assert_same_infos(load_nuscenes_infos(str(tmp_path / 'nocars_v2.pkl')), reference)
    with pytest.raises(ValueError, match=r"infos\[0\].cams.CAM_FRONT is missing key 'sensor2lidar_rotation'"):
        del old['infos'][0]['cams']['CAM_FRONT']['sensor2lidar_rotation']
        convert_legacy_infos(old, '0.17', 'nocars.pkl')
