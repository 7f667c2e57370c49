"""NuScenesMultiViewDataset on the synthetic set: sample dicts against the info file (numpy),
GT selection rules against hand selections, a train pipeline end to end through the runner's
dataloader builder; two-frame input (num_frames=2) against the previous samples and the devkit's
pose chain."""
import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.runner import Runner
from nuscenes import NuScenes
from pyquaternion import Quaternion

from sf3d.datasets.nuscenes_dataset import PREV_SUFFIX, NuScenesMultiViewDataset, prev_view_name
from sf3d.datasets.nuscenes_info import CAMERAS, CLASSES, load_nuscenes_infos
from sf3d.registry import DATASETS

PCR = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]
TRAIN_PIPELINE = [
    dict(type='LoadMultiViewImages', to_float32=True),
    dict(type='PhotoMetricDistortionMultiView'),
    dict(type='ResizeCropFlipMultiView', final_size=(128, 352), resize_lim=(0.9, 1.1), bot_pct_lim=(0.0, 0.1),
         rand_flip=True, is_train=True),
    dict(type='GlobalRotScaleTrans', rot_range=(-0.3925, 0.3925), scale_ratio_range=(0.95, 1.05),
         translation_std=(0.5, 0.5, 0.5)),
    dict(type='RandomFlip3D', flip_ratio_bev_horizontal=0.5, flip_ratio_bev_vertical=0.5),
    dict(type='ObjectRangeFilter', point_cloud_range=PCR),
    dict(type='ObjectNameFilter', classes=CLASSES),
    dict(type='NormalizeMultiviewImage', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]),
    dict(type='GridMask', prob=0.7),
    dict(type='PadMultiViewImage', size_divisor=32),
    dict(type='Pack3DDetInputs', keys=['img', 'gt_bboxes_3d', 'gt_labels_3d']),
]


@pytest.fixture(scope='module')
def root(nuscenes_root):
    return nuscenes_root


@pytest.fixture(scope='module')
def raw(root):
    return load_nuscenes_infos(str(root / 'nuscenes_infos_train.pkl'))


def write_infos(data, path):
    with open(path, 'wb') as f:
        pickle.dump(data, f)
    return str(path)


def test_sample_dict_against_info_file(root, raw):
    ds = NuScenesMultiViewDataset('nuscenes_infos_train.pkl', data_root=str(root))
    assert len(ds) == len(raw['data_list']) == 16
    assert ds.metainfo['classes'] == CLASSES and ds.metainfo['version'] == 'v1.0-mini'
    for idx in (0, 7):
        info, src = ds.get_data_info(idx), raw['data_list'][idx]
        assert {'token', 'timestamp', 'ego2global', 'lidar2ego', 'images', 'gt_bboxes_3d', 'gt_labels_3d'} <= set(info)
        assert info['token'] == src['token'] and info['timestamp'] == src['timestamp']
        np.testing.assert_array_equal(info['ego2global'], src['ego2global'])
        np.testing.assert_array_equal(info['lidar2ego'], src['lidar_points']['lidar2ego'])
        assert list(info['images']) == list(CAMERAS)
        for cam, c in info['images'].items():
            s = src['images'][cam]
            assert c['img_path'] == str(root / 'samples' / cam / s['img_path']) and Path(c['img_path']).is_file()
            assert c['cam2img'].shape == (3, 3) and c['cam2img'].dtype == np.float64
            assert c['lidar2cam'].shape == (4, 4) and c['lidar2img'].shape == (4, 4)
            np.testing.assert_array_equal(c['cam2img'], s['cam2img'])
            np.testing.assert_array_equal(c['lidar2cam'], s['lidar2cam'])
            k4 = np.eye(4)
            k4[:3, :3] = np.asarray(s['cam2img'])
            np.testing.assert_allclose(c['lidar2img'], k4 @ np.asarray(s['lidar2cam']), rtol=1e-12, atol=1e-9)
            assert c['sample_data_token'] == s['sample_data_token'] and c['timestamp'] == s['timestamp']
        # GT: num_lidar_pts > 0 and a detection class, gravity z -> bottom z, velocity carried over
        keep = [i for i in src['instances'] if i['num_lidar_pts'] > 0 and i['bbox_label_3d'] >= 0]
        boxes = info['gt_bboxes_3d'].tensor.numpy()
        assert boxes.shape == (len(keep), 9) and len(keep) > 5
        ref = np.array([i['bbox_3d'] for i in keep])
        np.testing.assert_allclose(boxes[:, [0, 1, 3, 4, 5, 6]], ref[:, [0, 1, 3, 4, 5, 6]])
        np.testing.assert_allclose(boxes[:, 2], ref[:, 2] - ref[:, 5] / 2)
        np.testing.assert_allclose(boxes[:, 7:], [i['velocity'] for i in keep])
        assert info['gt_labels_3d'].dtype == np.int64
        np.testing.assert_array_equal(info['gt_labels_3d'], [i['bbox_label_3d'] for i in keep])
        assert list(info['gt_names_3d']) == [CLASSES[i['bbox_label_3d']] for i in keep]


def test_gt_selection_rules(root, raw, tmp_path):
    data = copy.deepcopy(raw)
    inst = data['data_list'][0]['instances']
    inst[0].update(velocity=[float('nan'), float('nan')])
    inst[1].update(num_lidar_pts=0, num_radar_pts=3, bbox_3d_isvalid=True)  # radar only: valid, no lidar points
    inst[2].update(num_lidar_pts=0, num_radar_pts=0, bbox_3d_isvalid=False)  # no points at all
    inst[3].update(num_lidar_pts=4, num_radar_pts=0, bbox_3d_isvalid=True, bbox_label_3d=-1, bbox_label=-1)
    inst[4].update(bbox_3d_isvalid=False, num_lidar_pts=2)  # flag and count disagree on purpose
    inst[5].update(num_lidar_pts=5, bbox_label_3d=0, bbox_label=0)
    inst[5]['bbox_3d'][:2] = [60.0, 0.0]  # outside the point cloud range
    path = write_infos(data, tmp_path / 'edited.pkl')
    for use_valid_flag in (False, True):
        ds = NuScenesMultiViewDataset(path, data_root=str(root), use_valid_flag=use_valid_flag)
        if use_valid_flag:
            keep = [j for j, i in enumerate(inst) if i['bbox_3d_isvalid'] and i['bbox_label_3d'] >= 0]
        else:
            keep = [j for j, i in enumerate(inst) if i['num_lidar_pts'] > 0 and i['bbox_label_3d'] >= 0]
        assert (1 in keep) == use_valid_flag and (4 in keep) != use_valid_flag and 2 not in keep and 3 not in keep
        info = ds.get_data_info(0)
        np.testing.assert_allclose(info['gt_bboxes_3d'].tensor[:, 0].numpy(), [inst[j]['bbox_3d'][0] for j in keep])
        np.testing.assert_array_equal(info['gt_bboxes_3d'].tensor[0, 7:].numpy(), [0.0, 0.0])  # NaN velocity -> 0
    ranged = NuScenesMultiViewDataset(path, data_root=str(root), point_cloud_range=PCR).get_data_info(0)
    xs = ranged['gt_bboxes_3d'].tensor[:, 0].numpy()
    assert 60.0 not in xs and len(xs) == len(keep_lidar(inst)) - 1


def keep_lidar(inst):
    return [i for i in inst if i['num_lidar_pts'] > 0 and i['bbox_label_3d'] >= 0]


def test_class_subset_test_mode_interval_and_paths(root, raw, tmp_path):
    sub = NuScenesMultiViewDataset('nuscenes_infos_train.pkl', data_root=str(root), class_names=('pedestrian', 'car'))
    info = sub.get_data_info(0)
    src = keep_lidar(raw['data_list'][0]['instances'])
    names = [CLASSES[i['bbox_label_3d']] for i in src if CLASSES[i['bbox_label_3d']] in ('pedestrian', 'car')]
    assert list(info['gt_names_3d']) == names
    np.testing.assert_array_equal(info['gt_labels_3d'], [('pedestrian', 'car').index(n) for n in names])
    assert sub.metainfo['classes'] == ('pedestrian', 'car')

    test = NuScenesMultiViewDataset('nuscenes_infos_val.pkl', data_root=str(root), test_mode=True)
    assert len(test) == 4 and not any(k.startswith('gt_') for k in test.get_data_info(0))

    every = NuScenesMultiViewDataset('nuscenes_infos_train.pkl', data_root=str(root), load_interval=3, max_samples=4)
    assert [every.get_data_info(i)['token'] for i in range(len(every))] == \
        [s['token'] for s in raw['data_list'][::3][:4]]

    data = copy.deepcopy(raw)  # a path relative to the dataroot, and an absolute one
    cams = data['data_list'][0]['images']
    cams['CAM_BACK']['img_path'] = f'samples/CAM_BACK/{cams["CAM_BACK"]["img_path"]}'
    absolute = str(root / 'samples' / 'CAM_FRONT' / cams['CAM_FRONT']['img_path'])
    cams['CAM_FRONT']['img_path'] = absolute
    ds = NuScenesMultiViewDataset(write_infos(data, tmp_path / 'paths.pkl'), data_root=str(root),
                                  modality=dict(use_lidar=True))
    info = ds.get_data_info(0)
    assert info['images']['CAM_BACK']['img_path'] == str(root / cams['CAM_BACK']['img_path'])
    assert info['images']['CAM_FRONT']['img_path'] == absolute
    assert info['lidar_path'] == str(root / 'samples' / 'LIDAR_TOP' / raw['data_list'][0]['lidar_points']['lidar_path'])
    assert all(Path(c['img_path']).is_file() for c in info['images'].values())


def test_bad_arguments_and_files(root, raw, tmp_path):
    with pytest.raises(ValueError, match='class_names'):
        NuScenesMultiViewDataset('nuscenes_infos_train.pkl', data_root=str(root), class_names=('car', 'tram'))
    with pytest.raises(ValueError, match='use_camera'):
        NuScenesMultiViewDataset('nuscenes_infos_train.pkl', data_root=str(root), modality=dict(use_camera=False))
    with pytest.raises(FileNotFoundError, match='missing.pkl'):
        NuScenesMultiViewDataset('missing.pkl', data_root=str(root))
    data = copy.deepcopy(raw)
    data['data_list'][1]['images']['CAM_FRONT']['cam2img'] = np.ones((3, 4)).tolist()
    with pytest.raises(ValueError, match='CAM_FRONT'):
        NuScenesMultiViewDataset(write_infos(data, tmp_path / 'bad.pkl'), data_root=str(root))


def test_train_pipeline_end_to_end(root):
    np.random.seed(0)
    torch.manual_seed(0)
    loader = Runner.build_dataloader(dict(
        batch_size=2, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
        collate_fn=dict(type='sf3d.multiview_collate'),
        dataset=dict(type='sf3d.NuScenesMultiViewDataset', ann_file='nuscenes_infos_train.pkl', data_root=str(root),
                     pipeline=TRAIN_PIPELINE, max_samples=2)))
    assert isinstance(loader.dataset, DATASETS.get('NuScenesMultiViewDataset'))
    batches = list(loader)
    assert len(batches) == 1
    batch = batches[0]
    img, samples = batch['inputs']['img'], batch['data_samples']
    assert img.shape == (2, 6, 3, 128, 352) and img.dtype == torch.float32
    assert samples['cameras'].cam2img.shape == (2, 6, 3, 3) and samples['cameras'].dtype == torch.float32
    assert len(samples['token']) == 2 and len(samples['gt_bboxes_3d']) == 2
    for boxes, labels in zip(samples['gt_bboxes_3d'], samples['gt_labels_3d']):
        assert len(boxes) == len(labels) > 0 and labels.dtype == torch.long
        assert boxes.in_range_bev(PCR).all() and (boxes.yaw.abs() <= np.pi).all()
    # the packed cameras and boxes agree with the original sample through the recorded augmentation
    ds = NuScenesMultiViewDataset('nuscenes_infos_train.pkl', data_root=str(root), max_samples=2)
    for b in range(2):
        info = ds.get_data_info(b)
        aug = samples['bev_aug_matrix'][b]
        centres = info['gt_bboxes_3d'].gravity_center.numpy()
        moved = centres @ aug[:3, :3].T + aug[:3, 3]
        packed = samples['gt_bboxes_3d'][b].gravity_center.double().numpy()
        assert all(np.linalg.norm(moved - c, axis=1).min() < 1e-4 for c in packed)
        l2i = samples['cameras'].lidar2img[b].double().numpy()  # (6, 4, 4)
        for n, cam in enumerate(info['images'].values()):
            p = samples['img_aug_params'][b][n]
            m = np.array([[p['scale'][0], 0, -p['crop'][0]], [0, p['scale'][1], -p['crop'][1]], [0, 0, 1]])
            if p['flip']:
                m = np.array([[-1, 0, 352], [0, 1, 0], [0, 0, 1]]) @ m
            old = (cam['lidar2img'][:3, :3] @ centres.T).T + cam['lidar2img'][:3, 3]
            new = (l2i[n, :3, :3] @ moved.T).T + l2i[n, :3, 3]
            front = old[:, 2] > 1
            expect = (m[:2, :2] @ (old[front, :2] / old[front, 2:]).T).T + m[:2, 2]
            np.testing.assert_allclose(new[front, :2] / new[front, 2:], expect, rtol=2e-5, atol=1e-3)  # float32


# ------------------------------------------------------------------------------------------------ two frames
def _rigid(rotation, translation):
    """4x4 from a pyquaternion rotation and a translation (independent of sf3d.structures)."""
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = Quaternion(rotation).rotation_matrix, translation
    return m


def test_two_frames_previous_views_are_the_previous_sample(root, raw):
    """num_frames=2: the 6 current views exactly as num_frames=1, then the previous sample's 6 views
    ('@prev', same camera order); the first sample of a scene repeats its current views."""
    one = NuScenesMultiViewDataset('nuscenes_infos_train.pkl', data_root=str(root))
    two = NuScenesMultiViewDataset('nuscenes_infos_train.pkl', data_root=str(root), num_frames=2)
    assert PREV_SUFFIX == '@prev' and prev_view_name('CAM_FRONT') == 'CAM_FRONT@prev'
    valid = fallback = 0
    for idx in range(len(two)):
        info, cur, src = two.get_data_info(idx), one.get_data_info(idx), raw['data_list'][idx]
        assert not {'time_delta', 'prev_valid', 'num_frames'} & set(cur)
        assert list(info['images']) == list(CAMERAS) + [f'{cam}@prev' for cam in CAMERAS]
        assert info['num_frames'] == 2
        for cam in CAMERAS:  # the current views are unchanged
            for key in ('img_path', 'cam2img', 'lidar2cam', 'lidar2img', 'sample_data_token', 'timestamp'):
                np.testing.assert_array_equal(info['images'][cam][key], cur['images'][cam][key])
        first = idx == 0 or raw['data_list'][idx - 1]['scene_token'] != src['scene_token']
        before = cur if first else one.get_data_info(idx - 1)  # the previous key frame of the scene
        for cam in CAMERAS:
            p = info['images'][f'{cam}@prev']
            assert p['img_path'] == before['images'][cam]['img_path'] and Path(p['img_path']).is_file()
            assert p['sample_data_token'] == before['images'][cam]['sample_data_token']
            assert p['timestamp'] == before['images'][cam]['timestamp']
            np.testing.assert_array_equal(p['cam2img'], before['images'][cam]['cam2img'])
            k4 = np.eye(4)
            k4[:3, :3] = p['cam2img']
            np.testing.assert_allclose(p['lidar2img'], k4 @ p['lidar2cam'], rtol=1e-12, atol=1e-9)
        if first:
            assert info['prev_valid'] is False and info['time_delta'] == 0.0
            for cam in CAMERAS:
                np.testing.assert_array_equal(info['images'][f'{cam}@prev']['lidar2cam'],
                                              cur['images'][cam]['lidar2cam'])
            fallback += 1
        else:
            assert info['prev_valid'] is True and isinstance(info['time_delta'], float)
            assert info['time_delta'] == src['timestamp'] - raw['data_list'][idx - 1]['timestamp']
            assert abs(info['time_delta'] - 0.5) < 1e-3
            valid += 1
    assert valid == fallback == 8


def test_two_frames_previous_cameras_against_the_devkit(root, raw):
    """Points in the CURRENT LiDAR frame through the dataset's previous-view lidar2img land where the
    devkit chain puts them: current LiDAR -> ego (LiDAR time) -> global -> ego pose of the previous
    camera reading -> camera -> intrinsics. The previous sample's own lidar2cam (its LiDAR frame)
    would miss by pixels: the ego moves between the key frames."""
    nusc = NuScenes('v1.0-mini', str(root), verbose=False)
    two = NuScenesMultiViewDataset('nuscenes_infos_train.pkl', data_root=str(root), num_frames=2)
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.uniform([-50, -50, -2], [50, 50, 3], (400, 3)), np.ones((400, 1))], 1)
    checked, misses = 0, []
    for idx in range(len(two)):
        info = two.get_data_info(idx)
        if not info['prev_valid']:
            continue
        sample = nusc.get('sample', info['token'])
        prev_sample = nusc.get('sample', sample['prev'])
        lidar_sd = nusc.get('sample_data', sample['data']['LIDAR_TOP'])
        l_calib = nusc.get('calibrated_sensor', lidar_sd['calibrated_sensor_token'])
        l_pose = nusc.get('ego_pose', lidar_sd['ego_pose_token'])
        lidar2global = _rigid(l_pose['rotation'], l_pose['translation']) @ \
            _rigid(l_calib['rotation'], l_calib['translation'])
        for cam in CAMERAS:
            sd = nusc.get('sample_data', prev_sample['data'][cam])
            calib = nusc.get('calibrated_sensor', sd['calibrated_sensor_token'])
            pose = nusc.get('ego_pose', sd['ego_pose_token'])
            global2cam = np.linalg.inv(_rigid(pose['rotation'], pose['translation'])
                                       @ _rigid(calib['rotation'], calib['translation']))
            p_cam = (global2cam @ lidar2global @ points.T)[:3]
            front = p_cam[2] > 1.0
            expected = np.asarray(calib['camera_intrinsic']) @ p_cam[:, front]
            expected = expected[:2] / expected[2]
            view = info['images'][f'{cam}@prev']
            uvw = (view['lidar2img'] @ points[front].T)[:3]
            np.testing.assert_allclose(uvw[:2] / uvw[2], expected, rtol=1e-6, atol=1e-6)
            # the previous sample's stored lidar2cam starts from the previous LiDAR frame
            stale = np.asarray(calib['camera_intrinsic']) @ \
                (np.asarray(raw['data_list'][idx]['prev']['images'][cam]['lidar2cam']) @ points[front].T)[:3]
            misses.append(np.abs(stale[:2] / stale[2] - expected).max())
            checked += front.sum()
    assert checked > 1000 and max(misses) > 5.0


def test_two_frames_errors(root, raw, tmp_path):
    data = copy.deepcopy(raw)
    for info in data['data_list']:
        info.pop('prev')
    old = write_infos(data, tmp_path / 'no_prev.pkl')
    assert len(NuScenesMultiViewDataset(old, data_root=str(root))) == 16  # one frame: loads as before
    with pytest.raises(ValueError, match='no "prev" key') as err:
        NuScenesMultiViewDataset(old, data_root=str(root), num_frames=2)
    assert old in str(err.value) and 'python tools/create_data.py nuscenes --root-path' in str(err.value)
    assert '--version' in str(err.value)
    for bad in (0, 3, True, 2.5, '2'):
        with pytest.raises(ValueError, match='num_frames must be 1 .* or 2'):
            NuScenesMultiViewDataset('nuscenes_infos_train.pkl', data_root=str(root), num_frames=bad)


def test_two_frame_pipeline_end_to_end(root):
    """Load, resize/crop (test mode: the same for every view), pack, collate: (B, 12, 3, H, W) with
    12 cameras; sample 1's previous views are sample 0's current views, pixel for pixel."""
    loader = Runner.build_dataloader(dict(
        batch_size=2, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
        collate_fn=dict(type='sf3d.multiview_collate'),
        dataset=dict(type='sf3d.NuScenesMultiViewDataset', ann_file='nuscenes_infos_train.pkl', data_root=str(root),
                     num_frames=2, max_samples=2, pipeline=[
                         dict(type='LoadMultiViewImages'),
                         dict(type='ResizeCropFlipMultiView', final_size=(64, 160), bot_pct_lim=(0.0, 0.1)),
                         dict(type='Pack3DDetInputs', keys=['img', 'gt_bboxes_3d', 'gt_labels_3d'])])))
    (batch,) = list(loader)
    img, samples = batch['inputs']['img'], batch['data_samples']
    assert img.shape == (2, 12, 3, 64, 160) and img.dtype == torch.uint8
    cams = samples['cameras']
    assert cams.cam2img.shape == (2, 12, 3, 3) and cams.lidar2cam.shape == (2, 12, 4, 4)
    assert samples['num_frames'] == [2, 2] and samples['prev_valid'] == [False, True]
    ds = NuScenesMultiViewDataset('nuscenes_infos_train.pkl', data_root=str(root), num_frames=2, max_samples=2)
    assert samples['time_delta'] == [0.0, ds.get_data_info(1)['time_delta']] and samples['time_delta'][1] > 0.4
    assert samples['cam_names'][1] == list(CAMERAS) + [f'{c}@prev' for c in CAMERAS]
    assert len(samples['img_path'][1]) == 12 and samples['img_path'][1][6:] == samples['img_path'][0][:6]
    assert torch.equal(img[0, 6:], img[0, :6])  # fallback: the current views again
    assert torch.equal(img[1, 6:], img[0, :6])  # sample 1's previous frame is sample 0
    assert not torch.equal(img[1, 6:], img[1, :6])
    torch.testing.assert_close(cams.cam2img[1, 6:], cams.cam2img[0, :6])
    # each packed previous view projects a current-LiDAR point as the dataset's lidar2img + the resize
    info = ds.get_data_info(1)
    point = np.array([12.0, 3.0, 0.5, 1.0])
    for n, view in enumerate(info['images'].values()):
        p = samples['img_aug_params'][1][n]
        uvw = view['lidar2img'] @ point
        if uvw[2] < 1:
            continue
        uv = np.array(p['scale']) * uvw[:2] / uvw[2] - np.array(p['crop'])
        packed = cams.lidar2img[1, n].double().numpy() @ point
        np.testing.assert_allclose(packed[:2] / packed[2], uv, rtol=1e-4, atol=1e-3)  # float32 cameras
