"""Multi-view transforms, each checked against an independent numpy computation on the synthetic set.

One synthetic nuScenes (10 mini scenes x 2 samples, 400x225) and its info files are written per
module. Geometry is checked with a plain numpy pinhole (``K @ lidar2cam``) and numpy pixel
affines built from the recorded augmentation parameters, never with MultiViewCameras' own
projection; pixel moves are checked on the real rendered images.
"""
import copy
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sf3d.datasets.nuscenes_dataset import NuScenesMultiViewDataset

from sf3d.datasets.transforms import (GlobalRotScaleTrans, GridMask, LoadMultiViewImages, NormalizeMultiviewImage,
                                      ObjectNameFilter, ObjectRangeFilter, Pack3DDetInputs, PadMultiViewImage,
                                      PhotoMetricDistortionMultiView, RandomFlip3D, ResizeCropFlipMultiView,
                                      multiview_collate, read_rgb)
from sf3d.registry import FUNCTIONS, TRANSFORMS
from sf3d.structures import LiDARBoxes

FINAL = (128, 352)


@pytest.fixture(scope='module')
def dataset(nuscenes_root):
    return NuScenesMultiViewDataset('nuscenes_infos_train.pkl', data_root=str(nuscenes_root))


def loaded(dataset, idx=0, to_float32=False):
    return LoadMultiViewImages(to_float32=to_float32)(dataset.get_data_info(idx))


# ---------------------------------------------------------------------------- numpy references

def np_cams(cameras):
    return cameras.cam2img.double().numpy(), cameras.lidar2cam.double().numpy()


def np_project(cam2img, lidar2cam, pts):
    """(N, 3, 3), (N, 4, 4), (P, 3) -> uv (N, P, 2), depth (N, P); a plain pinhole."""
    cam = np.einsum('nij,pj->npi', lidar2cam[:, :3, :3], pts) + lidar2cam[:, None, :3, 3]
    img = np.einsum('nij,npj->npi', cam2img, cam)
    return img[..., :2] / img[..., 2:3], cam[..., 2]


def np_corners(boxes):
    """(N, 9) bottom-centre boxes -> (N, 8, 3) corners, written independently of LiDARBoxes."""
    out = []
    for x, y, z, l, w, h, yaw, *_ in np.asarray(boxes, dtype=np.float64):
        c, s = math.cos(yaw), math.sin(yaw)
        local = np.array([[sx * l / 2, sy * w / 2, sz * h] for sx in (1, -1) for sy in (1, -1) for sz in (0, 1)])
        out.append(local @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]) + [x, y, z])
    return np.stack(out) if out else np.zeros((0, 8, 3))


def np_affine(p, final=FINAL):
    """3x3 pixel affine (old -> new) from recorded ResizeCropFlip parameters (u right, v down)."""
    fh, fw = final
    (sx, sy), (x0, y0) = p['scale'], p['crop']
    m = np.array([[sx, 0, -x0], [0, sy, -y0], [0, 0, 1.0]])
    if p['flip']:
        m = np.array([[-1, 0, fw], [0, 1, 0], [0, 0, 1.0]]) @ m
    if p['rotate']:
        a = math.radians(p['rotate'])  # counter-clockwise as displayed: a point right of the centre moves up
        c, s = math.cos(a), math.sin(a)
        shift = np.array([[1, 0, fw / 2], [0, 1, fh / 2], [0, 0, 1.0]])
        m = shift @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]]) @ np.linalg.inv(shift) @ m
    return m


def apply_affine(m, uv):
    return uv @ m[:2, :2].T + m[:2, 2]


# ---------------------------------------------------------------------------- loading

def test_load_images_and_cameras(dataset):
    info = dataset.get_data_info(0)
    expect_k = [c['cam2img'] for c in info['images'].values()]
    expect_l2c = [c['lidar2cam'] for c in info['images'].values()]
    paths = [c['img_path'] for c in info['images'].values()]
    res = LoadMultiViewImages()(info)
    for img, path in zip(res['img'], paths):
        assert img.dtype == np.uint8 and img.shape == (225, 400, 3)
        np.testing.assert_array_equal(img, cv2.imread(path)[..., ::-1])  # RGB
    k, l2c = np_cams(res['cameras'])
    np.testing.assert_allclose(k, expect_k)
    np.testing.assert_allclose(l2c, expect_l2c)
    np.testing.assert_array_equal(res['cameras'].image_size.numpy(), [[225, 400]] * 6)
    assert res['cam_names'] == list(dataset.metainfo['cameras'])
    for cam in res['images'].values():  # the only camera parameters now live in res['cameras']
        assert not {'cam2img', 'lidar2cam', 'lidar2img'} & set(cam)
        assert {'img_path', 'sample_data_token', 'timestamp'} <= set(cam)
    assert LoadMultiViewImages(to_float32=True)(dataset.get_data_info(0))['img'][0].dtype == np.float32


def test_load_missing_or_corrupt_image_names_the_file(dataset, tmp_path):
    info = dataset.get_data_info(0)
    missing = str(tmp_path / 'nope.jpg')
    info['images']['CAM_BACK']['img_path'] = missing
    with pytest.raises(FileNotFoundError, match='nope.jpg'):
        LoadMultiViewImages()(info)
    info = dataset.get_data_info(0)
    good = Path(info['images']['CAM_FRONT']['img_path']).read_bytes()
    bad = tmp_path / 'truncated.jpg'
    bad.write_bytes(good[:len(good) // 3])
    info['images']['CAM_FRONT_LEFT']['img_path'] = str(bad)
    with pytest.raises(OSError, match='truncated.jpg'):
        LoadMultiViewImages()(info)


# ---------------------------------------------------------------------------- ResizeCropFlip

@pytest.mark.parametrize('rot_lim', [(0.0, 0.0), (-10.0, 10.0)])
def test_resize_crop_flip_moves_projections_like_pixels(dataset, rot_lim):
    np.random.seed(3)
    res = loaded(dataset)
    k0, l2c0 = np_cams(res['cameras'])
    imgs0 = [img.copy() for img in res['img']]
    pts = np.concatenate([np_corners(res['gt_bboxes_3d'].tensor), res['gt_bboxes_3d'].gravity_center.numpy()[:, None]],
                         axis=1).reshape(-1, 3)
    aug = ResizeCropFlipMultiView(FINAL, resize_lim=(0.85, 1.25), bot_pct_lim=(0.0, 0.2), rand_flip=True,
                                  rot_lim=rot_lim, is_train=True)
    flips, mismatches = [], np.zeros(2)
    for _ in range(4):  # enough draws that some cameras flip and some do not
        out = aug(copy.deepcopy(res))
        flips += [p['flip'] for p in out['img_aug_params']]
        k1, l2c1 = np_cams(out['cameras'])
        np.testing.assert_allclose(l2c1, l2c0)  # an image op never touches extrinsics
        uv0, d0 = np_project(k0, l2c0, pts)
        uv1, d1 = np_project(k1, l2c1, pts)
        front = d0 > 0.5
        for n, p in enumerate(out['img_aug_params']):
            assert out['img'][n].shape == FINAL + (3,) and out['img'][n].dtype == np.uint8
            expected = apply_affine(np_affine(p), uv0[n])
            np.testing.assert_allclose(uv1[n][front[n]], expected[front[n]], atol=1e-6)
            bad_ok, bad_wrong = _check_pixels(imgs0[n], out['img'][n], p)
            mismatches += np.array([bad_ok, bad_wrong])
        np.testing.assert_array_equal(out['cameras'].image_size.numpy(), [FINAL] * 6)
        assert out['img_shape'] == [FINAL] * 6
    assert any(flips) and not all(flips)
    assert mismatches[1] > 10 * max(mismatches[0], 100)  # the pixel check does see a wrong affine
    # the colour at the projected centre of visible boxes is the same before and after
    checked = 0
    centres = res['gt_bboxes_3d'].gravity_center.numpy()
    uvc0, dc0 = np_project(k0, l2c0, centres)
    uvc1, _ = np_project(*np_cams(out['cameras']), centres)
    for n in range(6):
        for b in range(len(centres)):
            (u0, v0), (u1, v1) = uvc0[n, b], uvc1[n, b]
            inside = 3 <= u0 < 397 and 3 <= v0 < 222 and 3 <= u1 < FINAL[1] - 3 and 3 <= v1 < FINAL[0] - 3
            if dc0[n, b] < 1 or not inside:
                continue
            patch = imgs0[n][int(v0) - 2:int(v0) + 3, int(u0) - 2:int(u0) + 3].astype(float)
            if np.ptp(patch, axis=(0, 1)).max() > 6:  # on an edge: interpolation may mix colours
                continue
            np.testing.assert_allclose(out['img'][n][int(v1), int(u1)], patch.mean((0, 1)), atol=12)
            checked += 1
    assert checked >= 3


def _check_pixels(img0, img1, p):
    """Every output pixel whose source neighbourhood is uniform has the source colour. Returns the
    number of mismatching pixels with the affine of ``p`` and with a wrong flip added.
    The rotation comes after the crop, so output pixels rotated in from outside the crop window
    are black by design and skipped."""
    fh, fw = img1.shape[:2]
    m = np_affine(p)
    jj, ii = np.meshgrid(np.arange(fw), np.arange(fh))
    uv_new = np.stack([jj + 0.5, ii + 0.5], -1).reshape(-1, 2)
    uv_crop = apply_affine(np.linalg.inv(m @ np.linalg.inv(np_affine(dict(p, rotate=0.0)))), uv_new)
    in_crop = (uv_crop[:, 0] > 1) & (uv_crop[:, 1] > 1) & (uv_crop[:, 0] < fw - 1) & (uv_crop[:, 1] < fh - 1)
    uv_new = uv_new[in_crop]

    def mismatch(mat):
        uv_old = apply_affine(np.linalg.inv(mat), uv_new)
        col, row = np.floor(uv_old[:, 0]).astype(int), np.floor(uv_old[:, 1]).astype(int)
        inside = (col >= 3) & (row >= 3) & (col < img0.shape[1] - 3) & (row < img0.shape[0] - 3)
        col, row, idx = col[inside], row[inside], np.flatnonzero(inside)
        stack = np.stack([img0[row + dr, col + dc].astype(int) for dr in (-2, 0, 2) for dc in (-2, 0, 2)])
        uniform = np.ptp(stack, axis=0).max(-1) <= 4
        new = img1.reshape(-1, 3)[np.flatnonzero(in_crop)[idx[uniform]]].astype(int)
        return np.abs(new - img0[row[uniform], col[uniform]].astype(int)).max(-1)

    diff = mismatch(m)
    assert diff.size > 1000
    assert np.median(diff) <= 2 and np.mean(diff > 12) < 0.01
    wrong = mismatch(np.array([[-1, 0, fw], [0, 1, 0], [0, 0, 1.0]]) @ m)
    return int((diff > 12).sum()), int((wrong > 12).sum())


def test_resize_crop_flip_test_mode_is_fixed(dataset):
    res = loaded(dataset)
    k0, _ = np_cams(res['cameras'])
    aug = ResizeCropFlipMultiView(FINAL, resize_lim=(0.8, 1.2), bot_pct_lim=(0.0, 0.2), is_train=False)
    out = aug(copy.deepcopy(res))
    s, new_h = 352 / 400, round(225 * 352 / 400)  # fit the width: 400x225 -> 352x198
    y0 = int((1 - 0.1) * new_h) - FINAL[0]  # crop the top so the mean bottom fraction is cut
    for p in out['img_aug_params']:
        assert p == dict(scale=(s, new_h / 225), crop=(0, y0), flip=False, rotate=0.0)
    expected = np.array([[s, 0, 0], [0, new_h / 225, -y0], [0, 0, 1]]) @ k0
    np.testing.assert_allclose(np_cams(out['cameras'])[0], expected)
    ref = cv2.resize(res['img'][0], (352, new_h), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out['img'][0], ref[y0:y0 + FINAL[0]])


def test_resize_crop_flip_rejects_bad_arguments():
    with pytest.raises(ValueError, match='final_size'):
        ResizeCropFlipMultiView((0, 10))
    with pytest.raises(ValueError, match='resize_lim'):
        ResizeCropFlipMultiView(FINAL, resize_lim=(1.2, 0.8))
    with pytest.raises(ValueError, match='bot_pct_lim'):
        ResizeCropFlipMultiView(FINAL, bot_pct_lim=(0.0, 1.0))
    with pytest.raises(KeyError, match='LoadMultiViewImages'):
        ResizeCropFlipMultiView(FINAL)({})


# ---------------------------------------------------------------------------- BEV augmentation

def _rot(a):
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def test_global_rot_scale_trans_keeps_projections(dataset):
    np.random.seed(0)
    res = loaded(dataset)
    old = res['gt_bboxes_3d'].tensor.numpy().copy()
    k0, l2c0 = np_cams(res['cameras'])
    aug = GlobalRotScaleTrans(rot_range=(-1.0, 1.0), scale_ratio_range=(0.8, 1.2), translation_std=(1.0, 1.0, 0.5))
    out = aug(res)
    a, s, t = out['pcd_rotation_angle'], out['pcd_scale_factor'], out['pcd_trans']
    assert abs(a) > 0.05 and abs(s - 1) > 0.005 and np.abs(t).min() > 0
    new = out['gt_bboxes_3d'].tensor.numpy()
    np.testing.assert_allclose(new[:, :2], s * old[:, :2] @ _rot(a).T + t[:2], atol=1e-9)
    np.testing.assert_allclose(new[:, 2], s * old[:, 2] + t[2], atol=1e-9)
    np.testing.assert_allclose(new[:, 3:6], s * old[:, 3:6])
    np.testing.assert_allclose(new[:, 6], old[:, 6] + a)
    np.testing.assert_allclose(new[:, 7:9], s * old[:, 7:9] @ _rot(a).T, atol=1e-12)
    k1, l2c1 = np_cams(out['cameras'])
    np.testing.assert_allclose(k1, k0)
    for pts0, pts1 in ((np_corners(old), np_corners(new)), (old[:, None, :3], new[:, None, :3])):
        uv0, d0 = np_project(k0, l2c0, pts0.reshape(-1, 3))
        uv1, d1 = np_project(k1, l2c1, pts1.reshape(-1, 3))
        front = d0 > 0.5
        np.testing.assert_allclose(uv1[front], uv0[front], atol=1e-6)
        np.testing.assert_allclose(d1, d0, atol=1e-9)  # depth of the un-scaled scene
    np.testing.assert_allclose(out['bev_aug_matrix'][:2, :2], s * _rot(a))
    np.testing.assert_allclose(out['bev_aug_matrix'][:3, 3], t)


@pytest.mark.parametrize('direction', ['horizontal', 'vertical', 'both'])
def test_random_flip3d_keeps_projections(dataset, direction):
    res = loaded(dataset)
    old = res['gt_bboxes_3d'].tensor.numpy().copy()
    k0, l2c0 = np_cams(res['cameras'])
    h, v = direction in ('horizontal', 'both'), direction in ('vertical', 'both')
    out = RandomFlip3D(flip_ratio_bev_horizontal=float(h), flip_ratio_bev_vertical=float(v))(res)
    assert (out['pcd_horizontal_flip'], out['pcd_vertical_flip']) == (h, v)
    new = out['gt_bboxes_3d'].tensor.numpy()
    sx, sy = (-1 if v else 1), (-1 if h else 1)
    yaw = -old[:, 6] if h else old[:, 6]
    yaw = np.pi - yaw if v else yaw
    np.testing.assert_allclose(new[:, [0, 1, 7, 8]], old[:, [0, 1, 7, 8]] * [sx, sy, sx, sy])
    np.testing.assert_allclose(new[:, [2, 3, 4, 5]], old[:, [2, 3, 4, 5]])
    np.testing.assert_allclose(np.cos(new[:, 6]), np.cos(yaw), atol=1e-12)
    np.testing.assert_allclose(np.sin(new[:, 6]), np.sin(yaw), atol=1e-12)
    k1, l2c1 = np_cams(out['cameras'])
    assert np.all(np.linalg.det(l2c1[:, :3, :3]) < 0) == (h != v)  # a single mirror is a reflection
    # the flipped boxes' corners are the mirrored corners (as a set) and project to the same pixels
    mirrored = np_corners(old) * [sx, sy, 1]
    corners = np_corners(new)
    for a_box, b_box in zip(mirrored, corners):
        dist = np.linalg.norm(a_box[:, None] - b_box[None], axis=-1)
        assert np.allclose(dist.min(1), 0, atol=1e-9)
    uv0, d0 = np_project(k0, l2c0, np_corners(old).reshape(-1, 3))
    uv1, _ = np_project(k1, l2c1, mirrored.reshape(-1, 3))
    front = d0 > 0.5
    np.testing.assert_allclose(uv1[front], uv0[front], atol=1e-6)


def test_random_flip3d_probability_zero_changes_nothing(dataset):
    res = loaded(dataset)
    before = res['gt_bboxes_3d'].tensor.clone()
    out = RandomFlip3D()(res)
    assert torch.equal(out['gt_bboxes_3d'].tensor, before) and 'bev_aug_matrix' not in out
    with pytest.raises(ValueError, match='flip_ratio_bev_vertical'):
        RandomFlip3D(flip_ratio_bev_vertical=1.5)


# ---------------------------------------------------------------------------- photometric, GridMask

def test_photometric_distortion_changes_pixels_not_cameras(dataset):
    np.random.seed(1)
    res = loaded(dataset, to_float32=True)
    cams = res['cameras'].clone()
    imgs = [img.copy() for img in res['img']]
    out = PhotoMetricDistortionMultiView()(copy.deepcopy(res))
    assert torch.equal(out['cameras'].cam2img, cams.cam2img) and torch.equal(out['cameras'].lidar2cam, cams.lidar2cam)
    assert all(o.shape == i.shape and o.dtype == np.float32 for o, i in zip(out['img'], imgs))
    assert sum(not np.allclose(o, i, atol=1) for o, i in zip(out['img'], imgs)) >= 4
    assert all(o.min() >= 0 and o.max() <= 255 for o in out['img'])
    # brightness only: each image moves by its own constant (independent draws per camera)
    np.random.seed(2)
    bright = PhotoMetricDistortionMultiView(brightness_delta=30, contrast_range=(1, 1), saturation_range=(1, 1),
                                            hue_delta=0, channel_swap=False)(copy.deepcopy(res))
    offsets = []
    for o, i in zip(bright['img'], imgs):
        unclipped = (i > 35) & (i < 220)
        delta = (o - i)[unclipped]
        assert np.ptp(delta) < 0.05  # one constant per image (up to the HSV round trip)
        offsets.append(delta.mean())
    assert len({round(x, 2) for x in offsets}) >= 3
    # everything off: the HSV round trip returns the image
    ident = PhotoMetricDistortionMultiView(0, (1, 1), (1, 1), 0, channel_swap=False)(copy.deepcopy(res))
    for o, i in zip(ident['img'], imgs):
        np.testing.assert_allclose(o, i, atol=0.05)


def _runs(flags):
    """(start, length) of the True runs of a 1D bool array that touch neither end."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(int), [0]])))
    runs = [(s, e - s) for s, e in zip(edges[::2], edges[1::2])]
    return [(s, n) for s, n in runs if s > 0 and s + n < len(flags)]


@pytest.mark.parametrize('mode', [1, 0])
def test_grid_mask_structure_and_rate(mode):
    np.random.seed(4)
    h, w, ratio, prob = 60, 90, 0.5, 0.7
    gm = GridMask(use_h=True, use_w=True, rotate=1, ratio=ratio, mode=mode, prob=prob)
    cams = object()
    res = dict(img=[np.full((h, w, 3), 7.0, np.float32) for _ in range(300)], cameras=cams)
    out = gm(res)
    assert out['cameras'] is cams
    fractions, periods = [], 0
    for img in out['img']:
        zero = img[..., 0] == 0
        assert np.array_equal(zero, (img == 0).all(-1)) and set(np.unique(img)) <= {0.0, 7.0}
        if not zero.any():
            continue
        fractions.append(zero.mean())
        # mode 1 zeroes the cells between the stripes (rows AND columns off-stripe), mode 0 the stripes
        off_rows, off_cols = (zero.all(1), zero.all(0)) if mode == 0 else (zero.any(1), zero.any(0))
        cells = np.outer(~off_rows, ~off_cols) if mode == 0 else np.outer(off_rows, off_cols)
        assert np.array_equal(zero if mode == 1 else ~zero, cells)
        stripes = ~off_rows if mode == 1 else off_rows  # rows inside a stripe
        runs = _runs(stripes)
        if len(runs) >= 2:  # stripes of width l every d rows, l = clip(int(d * ratio + 0.5), 1, d - 1)
            d = runs[1][0] - runs[0][0]
            assert all(b[0] - a[0] == d for a, b in zip(runs, runs[1:]))
            assert all(n == min(max(int(d * ratio + 0.5), 1), d - 1) for _, n in runs)
            periods += 1
    assert abs(len(fractions) / 300 - prob) < 0.08
    assert periods > 50
    mean = float(np.mean(fractions))
    # cells are ~(1 - ratio)^2 of the image, stripes ~1 - (1 - ratio)^2 (edge periods shift it a little)
    assert 0.15 < mean < 0.35 if mode == 1 else 0.6 < mean < 0.85


def test_grid_mask_offset_fills_noise():
    np.random.seed(5)
    out = GridMask(prob=1.0, offset=True)(dict(img=[np.full((40, 50, 3), 9.0, np.float32)]))
    img = out['img'][0]
    noisy = img[..., 0] != 9.0
    assert noisy.any() and np.all(np.abs(img[noisy]) <= 1)
    assert np.allclose(img[noisy][:, 0], img[noisy][:, 1])  # one noise value per pixel, as DETR3D
    rotated = GridMask(prob=1.0, rotate=45)(dict(img=[np.full((40, 50, 3), 9.0, np.float32)] * 20))['img']
    assert all(set(np.unique(r)) <= {0.0, 9.0} for r in rotated) and any((r == 0).any() for r in rotated)


# ---------------------------------------------------------------------------- filters

def _gt(rows, names):
    boxes = np.zeros((len(rows), 9))
    boxes[:, 3:6] = 1.0
    boxes[:, [0, 1, 6]] = rows
    labels = np.array([['car', 'truck', 'pedestrian', 'barrier'].index(n) for n in names], dtype=np.int64)
    return dict(gt_bboxes_3d=LiDARBoxes(boxes), gt_labels_3d=labels, gt_names_3d=np.array(names))


def test_object_range_filter_hand_cases():
    pcr = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]
    rows = [[51.1, 0, 0.5], [51.2, 0, 0], [-51.3, 0, 0], [0, -51.2, 0], [10, -51.19, 3.5], [-3, 4, -np.pi],
            [0, 0, 7.0]]
    names = ['car', 'truck', 'pedestrian', 'barrier', 'car', 'pedestrian', 'truck']
    out = ObjectRangeFilter(pcr)(_gt(rows, names))
    kept = [0, 4, 5, 6]  # boundary (== 51.2) and outside are dropped; z is ignored
    np.testing.assert_allclose(out['gt_bboxes_3d'].tensor[:, :2].numpy(), np.array(rows)[kept, :2])
    np.testing.assert_allclose(out['gt_bboxes_3d'].tensor[:, 6].numpy(),
                               [0.5, 3.5 - 2 * np.pi, -np.pi, 7.0 - 2 * np.pi])  # wrapped into [-pi, pi)
    assert list(out['gt_names_3d']) == [names[i] for i in kept]
    np.testing.assert_array_equal(out['gt_labels_3d'], [0, 0, 2, 1])
    with pytest.raises(ValueError, match='point_cloud_range'):
        ObjectRangeFilter([0, 0, 0, 1, 1])


def test_object_name_filter_hand_cases():
    out = ObjectNameFilter(['car', 'barrier'])(_gt([[1, 2, 0], [3, 4, 0], [5, 6, 0], [7, 8, 0]],
                                                   ['truck', 'car', 'barrier', 'pedestrian']))
    assert list(out['gt_names_3d']) == ['car', 'barrier']
    np.testing.assert_array_equal(out['gt_labels_3d'], [0, 3])
    np.testing.assert_allclose(out['gt_bboxes_3d'].tensor[:, 0].numpy(), [3, 5])
    empty = ObjectNameFilter(['bus'])(_gt([[1, 2, 0]], ['car']))
    assert len(empty['gt_bboxes_3d']) == 0 and empty['gt_labels_3d'].shape == (0,)


# ---------------------------------------------------------------------------- normalise, pad, pack

def test_normalize_and_pad(dataset):
    res = loaded(dataset)
    raw = [img.astype(np.float32) for img in res['img']]
    mean, std = [120.0, 110.0, 100.0], [50.0, 60.0, 70.0]
    out = NormalizeMultiviewImage(mean, std)(copy.deepcopy(res))
    np.testing.assert_allclose(out['img'][2][10, 20], (raw[2][10, 20] - mean) / std, rtol=1e-6)
    bgr = NormalizeMultiviewImage(mean, std, to_rgb=False)(copy.deepcopy(res))
    np.testing.assert_allclose(bgr['img'][2][10, 20], (raw[2][10, 20][::-1] - mean) / std, rtol=1e-6)
    k0 = res['cameras'].cam2img.clone()
    padded = PadMultiViewImage(size_divisor=32)(out)
    assert padded['pad_shape'] == (256, 416) and padded['img_shape'] == [(225, 400)] * 6
    assert all(img.shape == (256, 416, 3) for img in padded['img'])
    np.testing.assert_allclose(padded['img'][1][:225, :400], (raw[1] - mean) / std, rtol=1e-6)
    assert np.all(padded['img'][1][225:] == 0) and np.all(padded['img'][1][:, 400:] == 0)
    assert torch.equal(padded['cameras'].cam2img, k0)
    np.testing.assert_array_equal(padded['cameras'].image_size.numpy(), [[225, 400]] * 6)
    fixed = PadMultiViewImage(size_divisor=None, size=(230, 410))(loaded(dataset))
    assert fixed['pad_shape'] == (230, 410) and fixed['img'][0].dtype == np.uint8
    with pytest.raises(ValueError, match='larger'):
        PadMultiViewImage(size_divisor=None, size=(100, 100))(loaded(dataset))


def test_pack_and_collate(dataset):
    samples = []
    for i, final in ((0, (96, 160)), (1, (64, 192))):
        res = ResizeCropFlipMultiView(final)(loaded(dataset, i))
        res = PadMultiViewImage(size_divisor=32)(NormalizeMultiviewImage([0, 0, 0], [1, 1, 1])(res))
        samples.append(TRANSFORMS.build(dict(type='Pack3DDetInputs'))(res))
    s0 = samples[0]
    assert s0['inputs']['img'].shape == (6, 3, 96, 160) and s0['inputs']['img'].dtype == torch.float32
    ds0 = s0['data_samples']
    assert ds0['cameras'].dtype == torch.float32 and ds0['cameras'].cam2img.shape == (6, 3, 3)
    assert ds0['gt_bboxes_3d'].dtype == torch.float32 and ds0['gt_labels_3d'].dtype == torch.long
    assert len(ds0['gt_labels_3d']) == len(ds0['gt_bboxes_3d']) > 0
    assert ds0['img_shape'] == [(96, 160)] * 6 and ds0['pad_shape'] == (96, 160) and len(ds0['img_path']) == 6
    assert ds0['token'] == dataset.get_data_info(0)['token']
    collate = FUNCTIONS.get('multiview_collate')
    assert collate is multiview_collate
    batch = collate(samples)
    img = batch['inputs']['img']
    assert img.shape == (2, 6, 3, 96, 192)
    assert torch.equal(img[0, :, :, :, :160], samples[0]['inputs']['img']) and (img[0, ..., 160:] == 0).all()
    assert torch.equal(img[1, :, :, :64], samples[1]['inputs']['img']) and (img[1, :, :, 64:] == 0).all()
    cams = batch['data_samples']['cameras']
    assert cams.cam2img.shape == (2, 6, 3, 3) and cams.lidar2cam.shape == (2, 6, 4, 4)
    assert torch.equal(cams.cam2img[1], samples[1]['data_samples']['cameras'].cam2img)
    np.testing.assert_array_equal(cams.image_size[1].numpy(), [[64, 192]] * 6)  # valid size, not the padding
    assert batch['data_samples']['token'] == [s['data_samples']['token'] for s in samples]
    assert isinstance(batch['data_samples']['gt_bboxes_3d'], list) and len(batch['data_samples']['gt_labels_3d']) == 2
    assert batch['data_samples']['pad_shape'] == [(96, 192)] * 2
    with pytest.raises(ValueError, match='PadMultiViewImage'):
        res = loaded(dataset)
        res['img'][0] = res['img'][0][:100]
        Pack3DDetInputs()(res)
    test_sample = Pack3DDetInputs()(ResizeCropFlipMultiView((64, 96))(LoadMultiViewImages()(
        {k: v for k, v in dataset.get_data_info(0).items() if not k.startswith('gt_')})))
    assert 'gt_bboxes_3d' not in test_sample['data_samples']


# ---------------------------------------------------------------------------- uint8 fast path

def test_resize_crop_flip_bilinear_uint8_same_geometry(dataset):
    res = loaded(dataset)
    kwargs = dict(resize_lim=(0.85, 1.25), bot_pct_lim=(0.0, 0.2), rand_flip=True, is_train=True)
    np.random.seed(5)
    area = ResizeCropFlipMultiView(FINAL, **kwargs)(copy.deepcopy(res))
    np.random.seed(5)
    bilinear = ResizeCropFlipMultiView(FINAL, interpolation='bilinear', **kwargs)(copy.deepcopy(res))
    assert bilinear['img_aug_params'] == area['img_aug_params']  # the same draws
    assert torch.equal(bilinear['cameras'].cam2img, area['cameras'].cam2img)  # the same affine
    assert torch.equal(bilinear['cameras'].lidar2cam, area['cameras'].lidar2cam)
    k0, l2c0 = np_cams(res['cameras'])
    k1, l2c1 = np_cams(bilinear['cameras'])
    pts = np_corners(res['gt_bboxes_3d'].tensor).reshape(-1, 3)
    uv0, d0 = np_project(k0, l2c0, pts)
    uv1, _ = np_project(k1, l2c1, pts)
    for n, p in enumerate(bilinear['img_aug_params']):
        img = bilinear['img'][n]
        assert img.dtype == np.uint8 and img.shape == FINAL + (3,)
        front = d0[n] > 0.5
        np.testing.assert_allclose(uv1[n][front], apply_affine(np_affine(p), uv0[n])[front], atol=1e-6)
        _check_pixels(res['img'][n], img, p)  # uniform regions keep their colour at the affine's place
        diff = np.abs(img.astype(int) - area['img'][n].astype(int))
        assert np.median(diff) <= 2  # differs from INTER_AREA only at edges
    assert 'bilinear' in repr(ResizeCropFlipMultiView(FINAL, interpolation='bilinear'))
    with pytest.raises(ValueError, match='interpolation'):
        ResizeCropFlipMultiView(FINAL, interpolation='cubic')


def test_uint8_pad_pack_collate_keep_uint8(dataset):
    samples = []
    for i in range(2):
        res = ResizeCropFlipMultiView((100, 160), interpolation='bilinear')(loaded(dataset, i))
        res = PadMultiViewImage(size_divisor=32)(res)
        assert all(img.dtype == np.uint8 and img.shape == (128, 160, 3) for img in res['img'])
        packed = Pack3DDetInputs()(res)
        img = packed['inputs']['img']
        assert img.dtype == torch.uint8 and img.shape == (6, 3, 128, 160)
        np.testing.assert_array_equal(img.numpy(), np.stack(res['img']).transpose(0, 3, 1, 2))
        samples.append(packed)
    batch = multiview_collate(samples)
    assert batch['inputs']['img'].dtype == torch.uint8 and batch['inputs']['img'].shape == (2, 6, 3, 128, 160)
    mixed = loaded(dataset)
    mixed['img'][0] = mixed['img'][0].astype(np.float32)  # any float view: float32 as before
    assert Pack3DDetInputs()(mixed)['inputs']['img'].dtype == torch.float32


def test_load_reduced_decode_scales_cameras_and_pixels(dataset, tmp_path):
    full = loaded(dataset)
    half = LoadMultiViewImages(decode_scale=2)(dataset.get_data_info(0))
    assert half['ori_shape'] == [(225, 400)] * 6 and half['img_shape'] == [(113, 200)] * 6
    np.testing.assert_array_equal(half['cameras'].image_size.numpy(), [[113, 200]] * 6)
    pts = np_corners(full['gt_bboxes_3d'].tensor).reshape(-1, 3)
    uv_full, depth = np_project(*np_cams(full['cameras']), pts)
    uv_half, _ = np_project(*np_cams(half['cameras']), pts)
    np.testing.assert_allclose(uv_half[depth > 0.5], uv_full[depth > 0.5] / 2, atol=1e-9)  # u -> u / 2
    for img_full, img_half in zip(full['img'], half['img']):
        assert img_half.dtype == np.uint8 and img_half.shape == (113, 200, 3)
        block_mean = img_full[:224].reshape(112, 2, 200, 2, 3).mean((1, 3))  # 2x2 block means
        diff = np.abs(img_half[:112].astype(float) - block_mean)
        assert np.median(diff) <= 2 and diff.mean() < 3
    png = tmp_path / 'cam.png'  # not a JPEG: full decode, then 2x2 block means
    cv2.imwrite(str(png), full['img'][0][..., ::-1])
    reduced = read_rgb(str(png), decode_scale=2)
    assert reduced.shape == (113, 200, 3)
    np.testing.assert_allclose(reduced[:112], full['img'][0][:224].reshape(112, 2, 200, 2, 3).mean((1, 3)), atol=0.51)
    with pytest.raises(ValueError, match='decode_scale'):
        LoadMultiViewImages(decode_scale=3)
