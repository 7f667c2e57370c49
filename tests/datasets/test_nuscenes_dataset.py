"""NuScenesMultiViewDataset on the synthetic set: sample dicts against the info file (numpy),
GT selection rules against hand selections, a train pipeline end to end through the runner's
dataloader builder."""
import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.runner import Runner

from sf3d.datasets.nuscenes_dataset import NuScenesMultiViewDataset
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
