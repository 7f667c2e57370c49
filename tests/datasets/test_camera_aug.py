"""CameraRigAug (sf3d/datasets/transforms/camera_aug.py), checked against independent numpy.

A nuScenes-like six-camera rig (nuScenes intrinsics scaled to 176x96, principal points off the image
centre, cameras 1.5 m up looking out at the nuScenes yaws) with one GT box in front of every camera.

* The recorded homography equals numpy's A K R K^-1 (R from scipy's intrinsic ZXY Euler angles,
  A the zoom about (cx, cy) plus the shift); cam2img' = A K, lidar2cam' = diag(R, 1) lidar2cam.
* GT box corners projected with the NEW cameras (plain numpy pinhole) equal the OLD projections
  mapped through H; the sign conventions are those of perturb.camera_delta.
* The image moves with the cameras: a bright dot at a point's old pixel peaks at its new projection.
* Identity parameters (and prob=0) change nothing; pure zoom / shift agree with FocalScale /
  PrincipalPointShift; rays behind the old camera (large turns) are black.
* Two frames: one draw per physical camera, repeated in both frames.
* np.random seeding reproduces the draws; bad arguments and normalised images are clear errors.
"""
import copy
import math

import numpy as np
import pytest
from mmengine.registry import DefaultScope
from scipy.spatial.transform import Rotation

from sf3d.datasets.transforms import CameraRigAug
from sf3d.datasets.transforms.camera_aug import warp_homography
from sf3d.datasets.transforms.perturb import FocalScale, PrincipalPointShift
from sf3d.registry import TRANSFORMS
from sf3d.structures import MultiViewCameras

H, W = 96, 176
CAMS = ['CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT', 'CAM_BACK_RIGHT']
YAWS = [0.0, -55.0, 55.0, 180.0, 110.0, -110.0]  # degrees, LiDAR x forward, y left, z up
AUG = dict(zoom=(0.9, 1.1), shift=(8.0, 4.0), rot_deg=(2.0, 3.0, 2.0))


# ---------------------------------------------------------------------------- rig, boxes, numpy references

def _rig():
    """Intrinsics (6, 3, 3) and LiDAR -> camera (6, 4, 4) of a nuScenes-like rig (ground at LiDAR z = 0)."""
    k, l2c = [], []
    for i, yaw in enumerate(YAWS):
        f = (809.0 if i == 3 else 1266.0) * 0.11 + i  # the back camera is wider, as in nuScenes
        k.append([[f, 0.0, 90.0 + 1.7 * i], [0.0, f + 0.5, 53.0 - 1.1 * i], [0.0, 0.0, 1.0]])
        a = math.radians(yaw)
        fwd, right, down = np.array([math.cos(a), math.sin(a), 0.0]), np.array([math.sin(a), -math.cos(a), 0.0]), \
            np.array([0.0, 0.0, -1.0])
        rot = np.stack([right, down, fwd])  # (3, 3) rows: camera x, y, z axes in the LiDAR frame
        centre = np.array([1.0 * math.cos(a) + 0.5, 0.8 * math.sin(a), 1.5])
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = rot, -rot @ centre
        l2c.append(m)
    return np.array(k), np.array(l2c)


def _boxes() -> np.ndarray:
    """(6, 7) bottom-centre boxes x, y, z, l, w, h, yaw: one 9-14 m in front of each camera, on the ground."""
    out = []
    for i, yaw in enumerate(YAWS):
        a, dist = math.radians(yaw + 4.0), 9.0 + i
        out.append([dist * math.cos(a), dist * math.sin(a), 0.0, 4.2, 1.8, 1.6, 0.3 * i])
    return np.array(out)


def _corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 7) boxes -> (N, 8, 3) corners."""
    out = []
    for x, y, z, l, w, h, yaw in boxes:
        c, s = math.cos(yaw), math.sin(yaw)
        local = np.array([[sx * l / 2, sy * w / 2, sz * h] for sx in (1, -1) for sy in (1, -1) for sz in (0, 1)])
        out.append(local @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]) + [x, y, z])
    return np.stack(out)


def _project(k: np.ndarray, l2c: np.ndarray, pts: np.ndarray):
    """(3, 3), (4, 4), (P, 3) -> uv (P, 2), depth (P,): a plain pinhole."""
    cam = pts @ l2c[:3, :3].T + l2c[:3, 3]  # (P, 3)
    img = cam @ k.T
    return img[:, :2] / img[:, 2:3], cam[:, 2]


def _apply_h(h: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """(3, 3) homography on (P, 2) pixels."""
    x = np.concatenate([uv, np.ones((len(uv), 1))], 1) @ h.T  # (P, 3)
    return x[:, :2] / x[:, 2:3]


def _np_rotation(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Rz(roll) Rx(pitch) Ry(yaw), degrees: scipy's intrinsic ZXY Euler angles."""
    return Rotation.from_euler('ZXY', [roll, pitch, yaw], degrees=True).as_matrix()


def _np_affine(s: float, du: float, dv: float, k: np.ndarray) -> np.ndarray:
    """Zoom by s about (cx, cy), then move by (du, dv)."""
    cx, cy = k[0, 2], k[1, 2]
    return np.array([[s, 0.0, cx * (1 - s) + du], [0.0, s, cy * (1 - s) + dv], [0.0, 0.0, 1.0]])


def _images(dtype=np.uint8, n=6):
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (H, W, 3)).astype(dtype) for _ in range(n)]


def _results(dtype=np.uint8) -> dict:
    k, l2c = _rig()
    return dict(img=_images(dtype), cameras=MultiViewCameras(k, l2c, (H, W)), cam_names=list(CAMS),
                sample_idx=0, gt_bboxes_3d=_boxes())


def _two_frame_results() -> dict:
    """12 frame-major views: the rig now, then 0.5 s earlier seen from the current LiDAR frame."""
    k, l2c = _rig()
    motion = np.eye(4)  # current LiDAR -> previous LiDAR
    motion[:3, :3] = Rotation.from_euler('z', 3.0, degrees=True).as_matrix()
    motion[:3, 3] = [3.0, 0.2, 0.0]
    cams = MultiViewCameras(np.concatenate([k, k]), np.concatenate([l2c, l2c @ motion]), (H, W))
    return dict(img=_images(n=12), cameras=cams, cam_names=CAMS + [f'{c}@prev' for c in CAMS], sample_idx=0,
                num_frames=2)


def _np_cams(cams: MultiViewCameras):
    return cams.cam2img.double().numpy().copy(), cams.lidar2cam.double().numpy().copy()


def _run(aug: CameraRigAug, res: dict, seed: int = 0) -> dict:
    np.random.seed(seed)
    return aug(res)


# ---------------------------------------------------------------------------- geometry

@pytest.mark.parametrize('kwargs', [dict(rot_deg=(2.0, 3.0, 2.0)), AUG])
def test_homography_is_a_k_r_k_inverse(kwargs):
    res = _results()
    k0, l0 = _np_cams(res['cameras'])
    out = _run(CameraRigAug(**kwargs), res, seed=1)
    rec = out['camera_aug']
    assert rec['applied'] and rec['zoom'].shape == (6,) and rec['shift'].shape == (6, 2)
    assert rec['rot_deg'].shape == (6, 3) and rec['homography'].shape == (6, 3, 3)
    k1, l1 = _np_cams(out['cameras'])
    for c in range(6):
        s, (du, dv), angles = rec['zoom'][c], rec['shift'][c], rec['rot_deg'][c]
        lo, hi = kwargs.get('zoom', (1.0, 1.0))
        assert lo <= s <= hi and abs(du) <= kwargs.get('shift', (0, 0))[0] and abs(dv) <= kwargs.get('shift', (0, 0))[1]
        assert (np.abs(angles) <= np.asarray(kwargs['rot_deg'])).all() and np.abs(angles).min() > 0
        r, a = _np_rotation(*angles), _np_affine(s, du, dv, k0[c])
        np.testing.assert_allclose(rec['homography'][c], a @ k0[c] @ r @ np.linalg.inv(k0[c]), atol=1e-10)
        np.testing.assert_allclose(k1[c], a @ k0[c], atol=1e-10)
        e = np.eye(4)
        e[:3, :3] = r
        np.testing.assert_allclose(l1[c], e @ l0[c], atol=1e-12)
    if 'zoom' not in kwargs:  # a pure rotation keeps the intrinsics
        np.testing.assert_array_equal(k1, k0)
    np.testing.assert_array_equal(out['cameras'].image_size.numpy(), np.full((6, 2), [H, W]))
    assert all(img.shape == (H, W, 3) and img.dtype == np.uint8 for img in out['img'])


def test_gt_corners_project_through_the_homography():
    res = _results()
    k0, l0 = _np_cams(res['cameras'])
    corners = _corners(res['gt_bboxes_3d']).reshape(-1, 3)  # (48, 3)
    out = _run(CameraRigAug(**AUG), res, seed=2)
    k1, l1 = _np_cams(out['cameras'])
    checked = 0
    for c in range(6):
        uv0, d0 = _project(k0[c], l0[c], corners)
        uv1, d1 = _project(k1[c], l1[c], corners)
        front = (d0 > 0.5) & (d1 > 0.5)
        assert front.sum() >= 8  # at least this camera's own box
        np.testing.assert_allclose(uv1[front], _apply_h(out['camera_aug']['homography'][c], uv0[front]), atol=1e-4)
        checked += front.sum()
    assert checked >= 48
    # the GT itself is untouched: the cameras carry the augmentation
    np.testing.assert_array_equal(out['gt_bboxes_3d'], _boxes())


def test_rotation_signs_follow_camera_delta():
    """Positive pitch looks further down (a point straight ahead moves up); positive yaw looks further
    left (it moves right); positive roll (about the optical axis) moves a point right of the principal
    point down, i.e. turns the image clockwise as displayed."""
    k, l2c = _rig()
    ahead = (np.linalg.inv(l2c[0]) @ np.array([0.0, 0.0, 10.0, 1.0]))[None, :3]  # on CAM_FRONT's axis
    right = (np.linalg.inv(l2c[0]) @ np.array([2.0, 0.0, 10.0, 1.0]))[None, :3]
    uv_ahead, uv_right = _project(k[0], l2c[0], ahead)[0][0], _project(k[0], l2c[0], right)[0][0]
    # (axis of rot_deg, the point, the pixel coordinate that moves, its direction for a positive angle)
    for axis, point, uv0, coord, direction in [(0, right, uv_right, 1, 1.0), (1, ahead, uv_ahead, 1, -1.0),
                                               (2, ahead, uv_ahead, 0, 1.0)]:
        rot = [0.0, 0.0, 0.0]
        rot[axis] = 5.0
        for seed in range(20):  # a draw of at least 1 degree, either sign
            out = _run(CameraRigAug(rot_deg=tuple(rot)), _results(), seed=seed)
            angle = out['camera_aug']['rot_deg'][0, axis]
            if abs(angle) > 1:
                break
        assert abs(angle) > 1 and np.count_nonzero(out['camera_aug']['rot_deg']) == 6
        k1, l1 = _np_cams(out['cameras'])
        move = _project(k1[0], l1[0], point)[0][0] - uv0
        assert move[coord] * np.sign(angle) * direction > 0.1 * abs(angle)  # > ~0.1 px per degree
        if axis:  # pitch / yaw move the axis point by f tan(angle)
            np.testing.assert_allclose(abs(move[coord]), k[0][coord, coord] * math.tan(math.radians(abs(angle))),
                                       rtol=1e-9)


def _dot_image(uv: np.ndarray, dtype) -> np.ndarray:
    """(H, W, 3) black image with a Gaussian dot (sigma 1.2 px, peak 250) centred at pixel uv."""
    u = np.arange(W) + 0.5
    v = np.arange(H) + 0.5
    g = 250.0 * np.exp(-((u[None, :] - uv[0]) ** 2 + (v[:, None] - uv[1]) ** 2) / (2 * 1.2 ** 2))  # (H, W)
    return np.repeat(g[..., None], 3, axis=2).astype(dtype)


def _peak(img: np.ndarray) -> np.ndarray:
    """Intensity-weighted centre (u, v) of the 5x5 window around the brightest pixel."""
    g = img[..., 0].astype(np.float64)
    i, j = np.unravel_index(np.argmax(g), g.shape)
    win = g[i - 2:i + 3, j - 2:j + 3]
    vv, uu = np.mgrid[i - 2:i + 3, j - 2:j + 3] + 0.5
    return np.array([(win * uu).sum() / win.sum(), (win * vv).sum() / win.sum()]), np.array([j + 0.5, i + 0.5])


@pytest.mark.parametrize('dtype', [np.uint8, np.float32])
def test_image_moves_with_the_cameras(dtype):
    res = _results()
    k0, l0 = _np_cams(res['cameras'])
    centres = res['gt_bboxes_3d'][:, :3] + [0.0, 0.0, 0.8]  # (6, 3) box centres
    old = [_project(k0[c], l0[c], centres[c:c + 1])[0][0] for c in range(6)]
    res['img'] = [_dot_image(uv, dtype) for uv in old]
    out = _run(CameraRigAug(**AUG), res, seed=3)
    k1, l1 = _np_cams(out['cameras'])
    for c in range(6):
        new = _project(k1[c], l1[c], centres[c:c + 1])[0][0]
        assert 4 < new[0] < W - 4 and 4 < new[1] < H - 4
        assert np.abs(new - old[c]).max() > 1.0  # it did move
        centroid, brightest = _peak(out['img'][c])
        assert out['img'][c].dtype == dtype
        assert np.abs(brightest - new).max() <= 1.0
        assert np.abs(centroid - new).max() < 0.3


def test_rays_behind_the_old_camera_are_black():
    k = np.array([[30.0, 0.0, W / 2], [0.0, 30.0, H / 2], [0.0, 0.0, 1.0]])  # about 142 degrees wide
    r = _np_rotation(0.0, 0.0, 80.0)
    h = k @ r @ np.linalg.inv(k)
    out = warp_homography(np.full((H, W, 3), 200, np.uint8), h)
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)  # (H, W) new pixel centres
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(k).T @ r  # (H, W, 3) old camera: R^T r'
    behind = rays[..., 2] <= 0
    old_uv = _apply_h(np.linalg.inv(h), np.stack([u, v], -1).reshape(-1, 2)).reshape(H, W, 2)
    inside = ~behind & (old_uv[..., 0] > 1) & (old_uv[..., 0] < W - 1) & (old_uv[..., 1] > 1) & \
        (old_uv[..., 1] < H - 1)
    assert behind.sum() > 100 and inside.sum() > 100
    assert (out[behind] == 0).all() and (out[inside] == 200).all()


# ---------------------------------------------------------------------------- identity and cross-checks

@pytest.mark.parametrize('dtype', [np.uint8, np.float32])
def test_identity_changes_nothing(dtype):
    for aug in (CameraRigAug(), CameraRigAug(zoom=(0.5, 2.0), shift=40, rot_deg=20, prob=0.0)):
        res = _results(dtype)
        imgs0 = copy.deepcopy(res['img'])
        k0, l0 = _np_cams(res['cameras'])
        out = _run(aug, res)
        for a, b in zip(out['img'], imgs0):
            assert a.dtype == dtype and np.array_equal(a, b)
        k1, l1 = _np_cams(out['cameras'])
        np.testing.assert_array_equal(k1, k0)
        np.testing.assert_array_equal(l1, l0)
        rec = out['camera_aug']
        assert rec['applied'] == (aug.prob > 0)
        np.testing.assert_array_equal(rec['homography'], np.tile(np.eye(3), (6, 1, 1)))
        np.testing.assert_array_equal(rec['zoom'], np.ones(6))


def test_pure_zoom_and_shift_agree_with_focal_scale_and_principal_point_shift():
    res = _results()
    focal = FocalScale(1.2)(copy.deepcopy(res))
    out = CameraRigAug(zoom=(1.2, 1.2))(copy.deepcopy(res))
    np.testing.assert_allclose(_np_cams(out['cameras'])[0], _np_cams(focal['cameras'])[0], atol=1e-12)
    for a, b in zip(out['img'], focal['img']):  # warpPerspective against warpAffine: rounding only
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    # random shifts: (cx, cy) move by the recorded (du, dv), as PrincipalPointShift(du, dv) moves them
    out = _run(CameraRigAug(shift=(6.0, 3.0)), copy.deepcopy(res), seed=5)
    k1 = _np_cams(out['cameras'])[0]
    for c, (du, dv) in enumerate(out['camera_aug']['shift']):
        moved = PrincipalPointShift(du, dv)(copy.deepcopy(res))
        np.testing.assert_allclose(k1[c], _np_cams(moved['cameras'])[0][c], atol=1e-12)
    # a whole-pixel shift moves the content by exactly (du, dv) = (3, -2) pixels
    img = res['img'][0]
    moved = warp_homography(img, np.array([[1.0, 0.0, 3.0], [0.0, 1.0, -2.0], [0.0, 0.0, 1.0]]))
    np.testing.assert_array_equal(moved[:H - 2, 3:], img[2:, :W - 3])
    assert not moved[:, :3].any() and not moved[H - 2:].any()  # black where nothing came from


# ---------------------------------------------------------------------------- frames, randomness

def test_two_frames_share_the_draw_of_each_physical_camera():
    res = _two_frame_results()
    before = res['cameras']
    k0, l0 = _np_cams(before)
    out = _run(CameraRigAug(**AUG), res, seed=4)
    k1, l1 = _np_cams(out['cameras'])
    rot = l1[:, :3, :3] @ np.linalg.inv(l0[:, :3, :3])  # (12, 3, 3) the R of each view
    np.testing.assert_allclose(k1[6:], k1[:6], atol=1e-12)  # same K in both frames, same zoom and shift
    np.testing.assert_allclose(rot[6:], rot[:6], atol=1e-12)
    np.testing.assert_allclose(l1[:, :3, 3], np.einsum('nij,nj->ni', rot, l0[:, :3, 3]), atol=1e-12)
    rec = out['camera_aug']
    for key in ('zoom', 'shift', 'rot_deg', 'homography'):
        np.testing.assert_array_equal(rec[key][6:], rec[key][:6])
    assert min(np.abs(k1[i] - k1[j]).max() for i in range(6) for j in range(i)) > 1e-3  # cameras differ
    assert min(np.abs(rot[i] - rot[j]).max() for i in range(6) for j in range(i)) > 1e-4
    # the first frame gets the draws a single-frame sample gets from the same seed
    one = _run(CameraRigAug(**AUG), _results(), seed=4)
    np.testing.assert_allclose(_np_cams(one['cameras'])[0], k1[:6], atol=1e-12)
    np.testing.assert_allclose(_np_cams(one['cameras'])[1], l1[:6], atol=1e-12)
    bad = _two_frame_results()
    bad['num_frames'] = 5
    with pytest.raises(ValueError, match="num_frames'] = 5 must be an integer >= 1 that divides the 12 views"):
        CameraRigAug(**AUG)(bad)


def test_np_random_seed_reproduces_the_augmentation():
    a = _run(CameraRigAug(**AUG, prob=0.5), _results(), seed=11)
    b = _run(CameraRigAug(**AUG, prob=0.5), _results(), seed=11)
    for x, y in zip(a['img'], b['img']):
        assert np.array_equal(x, y)
    for key in ('zoom', 'shift', 'rot_deg', 'homography'):
        np.testing.assert_array_equal(a['camera_aug'][key], b['camera_aug'][key])
    np.testing.assert_array_equal(a['cameras'].lidar2cam.numpy(), b['cameras'].lidar2cam.numpy())
    c = _run(CameraRigAug(**AUG), _results(), seed=12)
    assert np.abs(c['camera_aug']['rot_deg'] - _run(CameraRigAug(**AUG), _results(), seed=11)['camera_aug']
                  ['rot_deg']).max() > 1e-3
    applied = [_run(CameraRigAug(**AUG, prob=0.5), _results(), seed=s)['camera_aug']['applied'] for s in range(40)]
    assert 8 < sum(applied) < 32


# ---------------------------------------------------------------------------- building, errors

def test_builds_from_the_registry():
    with DefaultScope.overwrite_default_scope('sf3d'):
        aug = TRANSFORMS.build(dict(type='CameraRigAug', zoom=(0.9, 1.1), shift=(16, 8), rot_deg=(1.0, 2.0, 1.0)))
    assert isinstance(aug, CameraRigAug)
    assert aug.zoom == (0.9, 1.1) and aug.shift == (16.0, 8.0) and aug.rot_deg == (1.0, 2.0, 1.0)
    assert repr(aug) == 'CameraRigAug(zoom=(0.9, 1.1), shift=(16.0, 8.0), rot_deg=(1.0, 2.0, 1.0), prob=1.0)'
    assert CameraRigAug(shift=5, rot_deg=2).rot_deg == (2.0, 2.0, 2.0)


@pytest.mark.parametrize('kwargs, match', [
    (dict(zoom=(1.1, 0.9)), r'zoom must be \(low, high\) with 0 < low <= high'),
    (dict(zoom=(0.0, 1.0)), 'zoom must be'),
    (dict(zoom=(float('nan'), 1.0)), 'zoom must be'),
    (dict(zoom=1.1), 'zoom must be'),
    (dict(zoom='big'), 'zoom must be'),
    (dict(shift=-1.0), r'shift \(du, dv\) must be one number or two numbers, finite and >= 0'),
    (dict(shift=(1.0, 2.0, 3.0)), 'shift'),
    (dict(shift=(1.0, float('inf'))), 'shift'),
    (dict(rot_deg=(1.0, 2.0)), r'rot_deg \(roll, pitch, yaw\) must be one number or three numbers'),
    (dict(rot_deg=-1.0), 'rot_deg .* >= 0'),
    (dict(prob=1.5), r'prob must be a number in \[0, 1\]'),
    (dict(prob=float('nan')), 'prob must be'),
])
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CameraRigAug(**kwargs)


def test_keyword_only_and_misuse():
    with pytest.raises(TypeError):
        CameraRigAug((0.9, 1.1))
    res = _results()
    res['img_norm_cfg'] = dict(mean=[0, 0, 0], std=[1, 1, 1], to_rgb=True)
    with pytest.raises(ValueError, match='CameraRigAug acts on raw 0..255 pixels.*before NormalizeMultiviewImage'):
        CameraRigAug(**AUG)(res)
    with pytest.raises(KeyError, match='run LoadMultiViewImages first'):
        CameraRigAug()(dict(img=[np.zeros((2, 2, 3))]))
    res = _results()
    res['img'] = res['img'][:5]
    with pytest.raises(ValueError, match='has 5 views but cameras has 6'):
        CameraRigAug(**AUG)(res)
    res = _results()
    res['cameras'] = MultiViewCameras.stack([res['cameras']])
    with pytest.raises(ValueError, match='no batch dims'):
        CameraRigAug(**AUG)(res)
