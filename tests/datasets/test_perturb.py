"""Test-time camera perturbations (sf3d/datasets/transforms/perturb.py), each against an
independent numpy computation: what moves (pixels, intrinsics, extrinsics) moves exactly as stated,
and nothing else changes.

* FocalScale 'consistent': a 3D point projected with the new cameras lands on the zoomed image's
  pixel that shows what the original image showed at the original projection (unique colour per
  pixel block); 'calib' changes only fx, fy (as the synthetic generator's focal rig); 'image' only pixels.
* PrincipalPointShift: only cx, cy; every projection moves by (du, dv).
* ExtrinsicNoise: lidar2cam' @ inv(lidar2cam) is the drawn roll/pitch/yaw rotation (scipy's
  intrinsic ZXY Euler angles) and the drawn centre shift; deterministic per (seed, sample), different
  across seeds and samples; the spread follows the requested std / max.
* CameraHeightPitchOffset: camera centres move by exactly the height along the up axis, rotation
  about camera x by the pitch (positive looks down); equals the calibration the synthetic generator
  writes for `--rig height=H,pitch=P`.
* CameraDropout: exactly k black views for crash, the named ones for named, the others and the
  cameras unchanged; frame_lost frequency ~ severity / 6.
* Two frames (num_frames=2, 12 frame-major views): ExtrinsicNoise gives camera i and view i + 6 the
  same error (and the one-frame draws for the first six); crash / named drop a camera in both frames;
  frame_lost draws each view.
* Bad arguments and misplaced transforms raise clear errors.
"""
import copy

import numpy as np
import pytest
import torch
from mmengine.registry import DefaultScope
from scipy.spatial.transform import Rotation

from sf3d.datasets.synthetic_nuscenes import LIDAR, RigSpec, build_calibration
from sf3d.datasets.transforms.perturb import (CameraDropout, CameraHeightPitchOffset, ExtrinsicNoise, FocalScale,
                                              PrincipalPointShift, axis_rotation, warp_image, zoom_affine)
from sf3d.registry import TRANSFORMS
from sf3d.structures import MultiViewCameras, pose_matrix

CAMS = ['CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT', 'CAM_BACK_RIGHT']
H, W, BLOCK = 48, 64, 4


def _block_image(cam: int) -> np.ndarray:
    """(H, W, 3) uint8, one colour per BLOCK x BLOCK pixel block, unique within the image (channels 0, 1)."""
    rows, cols = np.meshgrid(np.arange(H) // BLOCK, np.arange(W) // BLOCK, indexing='ij')  # (H, W) block row, col
    return np.stack([rows * 16 + 9, cols * 15 + 7, np.full_like(rows, 20 * cam + 7)], -1).astype(np.uint8)


def _rig(n: int = 6):
    """Intrinsics (n, 3, 3) with principal points far off the image centre and extrinsics (n, 4, 4) of cameras
    1.6 m up, looking outwards at yaw 60 i degrees (camera x right, y down, z forward)."""
    k, l2c = [], []
    for i in range(n):
        k.append([[40.0 + i, 0.0, W / 2 + 12.3 + 0.4 * i], [0.0, 41.0 + i, H / 2 - 9.7 + 0.3 * i], [0.0, 0.0, 1.0]])
        a = np.deg2rad(60.0 * i)
        fwd, right, down = np.array([np.cos(a), np.sin(a), 0.0]), np.array([np.sin(a), -np.cos(a), 0.0]), \
            np.array([0.0, 0.0, -1.0])
        rot = np.stack([right, down, fwd])  # LiDAR -> camera
        centre = np.array([0.5 * np.cos(a), 0.5 * np.sin(a), 1.6])
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = rot, -rot @ centre
        l2c.append(m)
    return np.array(k), np.array(l2c)


def _results(dtype=np.uint8, sample_idx=0, n=6) -> dict:
    k, l2c = _rig(n)
    return dict(img=[_block_image(i).astype(dtype) for i in range(n)],
                cameras=MultiViewCameras(k, l2c, (H, W)), cam_names=CAMS[:n], sample_idx=sample_idx,
                token=f'tok{sample_idx}')


def _np_cams(cams: MultiViewCameras):
    return cams.cam2img.numpy().copy(), cams.lidar2cam.numpy().copy(), cams.image_size.numpy().copy()


def _project(k: np.ndarray, l2c: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(2,) pixel of LiDAR point p (3,) for one camera (numpy pinhole)."""
    cam = l2c[:3, :3] @ p + l2c[:3, 3]
    uvw = k @ cam
    return uvw[:2] / uvw[2]


def _unproject(k: np.ndarray, l2c: np.ndarray, uv: np.ndarray, depth: float) -> np.ndarray:
    cam = depth * np.linalg.solve(k, np.array([uv[0], uv[1], 1.0]))
    return np.linalg.solve(l2c[:3, :3], cam - l2c[:3, 3])


def _centres(l2c: np.ndarray) -> np.ndarray:
    return np.linalg.inv(l2c)[:, :3, 3]  # (N, 3)


def _assert_same_images(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and np.array_equal(x, y)


# ---------------------------------------------------------------------------- focal

def _zoom_matches(imgs1, imgs0, cams0, cams1) -> int:
    """Count of block centres whose 3D point, projected with ``cams1``, lands on a pixel of ``imgs1``
    showing the colour that ``imgs0`` has at its projection with ``cams0``; -1 on any mismatch."""
    (k0, l0, _), (k1, l1, _) = _np_cams(cams0), _np_cams(cams1)
    checked = 0
    for c in range(len(imgs0)):
        for bi in range(H // BLOCK):
            for bj in range(W // BLOCK):
                uv0 = np.array([BLOCK * bj + BLOCK / 2, BLOCK * bi + BLOCK / 2])  # a block centre
                uv1 = _project(k1[c], l1[c], _unproject(k0[c], l0[c], uv0, depth=3.0 + bi + 0.5 * bj))
                col, row = np.floor(uv1).astype(int)
                if not (0 <= col < W and 0 <= row < H):
                    continue
                if not np.array_equal(imgs1[c][row, col], imgs0[c][int(uv0[1]), int(uv0[0])]):
                    return -1
                checked += 1
    return checked


@pytest.mark.parametrize('scale', [0.8, 1.25])
@pytest.mark.parametrize('dtype', [np.uint8, np.float32])
def test_consistent_focal_scale_keeps_projections_on_the_zoomed_pixels(scale, dtype):
    res = _results(dtype)
    cams0 = res['cameras'].clone()
    k0, l0, size0 = _np_cams(cams0)
    imgs0 = copy.deepcopy(res['img'])
    out = FocalScale(scale, 'consistent')(res)
    k1, l1, size1 = _np_cams(out['cameras'])
    expect = k0.copy()
    expect[:, :2, :2] *= scale  # fx, fy (and the zero skew); the principal point stays
    np.testing.assert_allclose(k1, expect, atol=1e-12)
    np.testing.assert_array_equal(l1, l0)
    np.testing.assert_array_equal(size1, size0)
    assert all(img.shape == (H, W, 3) and img.dtype == dtype for img in out['img'])
    checked = _zoom_matches(out['img'], imgs0, cams0, out['cameras'])
    assert checked >= 6 * 192 * (0.4 if scale > 1 else 1)  # a zoom in pushes the outer blocks out
    # the check is sharp: the same zoom about the image centre (not the principal point) fails it
    about_centre = [warp_image(img, zoom_affine(scale, (W / 2, H / 2)).numpy()) for img in imgs0]
    assert _zoom_matches(about_centre, imgs0, cams0, out['cameras']) == -1
    if scale < 1:  # zoom out: the border comes from outside the image and is black
        assert all((img[0, 0] == 0).all() and (img[-1, -1] == 0).all() for img in out['img'])
    assert out['perturbations'] == [dict(type='FocalScale', scale=scale, mode='consistent')]


def test_calib_focal_scale_changes_intrinsics_only_as_the_generator_rig():
    res = _results()
    k0, l0, size0 = _np_cams(res['cameras'])
    imgs0 = copy.deepcopy(res['img'])
    out = FocalScale(1.1, 'calib')(res)
    k1, l1, size1 = _np_cams(out['cameras'])
    expect = k0.copy()
    expect[:, 0, 0] *= 1.1
    expect[:, 1, 1] *= 1.1
    np.testing.assert_allclose(k1, expect, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(l1, l0)
    np.testing.assert_array_equal(size1, size0)
    _assert_same_images(out['img'], imgs0)
    # the synthetic generator's focal rig writes exactly these intrinsics
    nominal, rig = build_calibration(0.25), build_calibration(0.25, RigSpec(focal=1.1))
    cams = [c for c in nominal if c != LIDAR]
    k_nom = np.array([nominal[c]['camera_intrinsic'] for c in cams])
    res = dict(img=[np.zeros((4, 4, 3), np.uint8)] * len(cams),
               cameras=MultiViewCameras(k_nom, np.tile(np.eye(4), (len(cams), 1, 1)), (225, 400)))
    np.testing.assert_allclose(FocalScale(1.1, 'calib')(res)['cameras'].cam2img.numpy(),
                               np.array([rig[c]['camera_intrinsic'] for c in cams]), atol=1e-9)


def test_image_focal_scale_changes_pixels_only():
    res = _results()
    k0, l0, size0 = _np_cams(res['cameras'])
    zoomed = FocalScale(1.2, 'consistent')(_results())['img']
    out = FocalScale(1.2, 'image')(res)
    k1, l1, size1 = _np_cams(out['cameras'])
    np.testing.assert_array_equal(k1, k0)
    np.testing.assert_array_equal(l1, l0)
    np.testing.assert_array_equal(size1, size0)
    _assert_same_images(out['img'], zoomed)
    assert not np.array_equal(out['img'][0], _block_image(0))


# ---------------------------------------------------------------------------- principal point

def test_principal_point_shift_moves_projections_by_exactly_du_dv():
    res = _results()
    k0, l0, _ = _np_cams(res['cameras'])
    imgs0 = copy.deepcopy(res['img'])
    out = PrincipalPointShift(7.5, -3.0)(res)
    k1, l1, _ = _np_cams(out['cameras'])
    expect = k0.copy()
    expect[:, 0, 2] += 7.5
    expect[:, 1, 2] -= 3.0
    np.testing.assert_allclose(k1, expect, atol=1e-12)
    np.testing.assert_array_equal(l1, l0)
    _assert_same_images(out['img'], imgs0)
    p = _unproject(k0[2], l0[2], np.array([20.0, 30.0]), 6.0)
    np.testing.assert_allclose(_project(k1[2], l1[2], p), [27.5, 27.0], atol=1e-9)
    assert out['perturbations'] == [dict(type='PrincipalPointShift', du=7.5, dv=-3.0)]


# ---------------------------------------------------------------------------- extrinsics

def test_extrinsic_noise_is_the_drawn_rotation_and_translation():
    res = _results()
    k0, l0, _ = _np_cams(res['cameras'])
    imgs0 = copy.deepcopy(res['img'])
    out = ExtrinsicNoise(rot_deg=(1.0, 2.0, 3.0), trans_cm=10.0, seed=3)(res)
    k1, l1, _ = _np_cams(out['cameras'])
    rec = out['perturbations'][0]
    assert rec['type'] == 'ExtrinsicNoise' and rec['seed'] == 3
    angles, trans = rec['rot_deg'], rec['trans_m']  # (6, 3) roll/pitch/yaw deg, (6, 3) m
    assert angles.shape == trans.shape == (6, 3) and np.abs(angles).max() > 0 and np.abs(trans).max() > 0
    np.testing.assert_array_equal(k1, k0)
    _assert_same_images(out['img'], imgs0)
    for c in range(6):
        rel = l1[c][:3, :3] @ np.linalg.inv(l0[c][:3, :3])  # rotation in the camera frame
        ref = Rotation.from_euler('ZXY', angles[c], degrees=True)  # intrinsic: Rz(roll) Rx(pitch) Ry(yaw)
        np.testing.assert_allclose(rel, ref.as_matrix(), atol=1e-12)
        angle = np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1, 1)))
        np.testing.assert_allclose(angle, np.degrees(ref.magnitude()), atol=1e-6)
        # the believed centre moved by the drawn translation, expressed in the original camera frame
        shift = _centres(l1)[c] - _centres(l0)[c]
        np.testing.assert_allclose(l0[c][:3, :3] @ shift, trans[c], atol=1e-12)
    # one axis at a time: the angle is exactly the drawn one, about that camera axis
    out = ExtrinsicNoise(rot_deg=(0.0, 2.0, 0.0), seed=1)(_results())
    pitch = out['perturbations'][0]['rot_deg'][:, 1]
    for c in range(6):
        rel = out['cameras'].lidar2cam.numpy()[c][:3, :3] @ l0[c][:3, :3].T
        rotvec = Rotation.from_matrix(rel).as_rotvec(degrees=True)
        np.testing.assert_allclose(rotvec, [pitch[c], 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(_centres(out['cameras'].lidar2cam.numpy()), _centres(l0), atol=1e-12)


def test_extrinsic_noise_is_seeded_per_seed_and_sample():
    def lidar2cam(seed, idx):
        return ExtrinsicNoise(rot_deg=1.0, trans_cm=5.0, seed=seed)(_results(sample_idx=idx))['cameras'].lidar2cam
    assert torch.equal(lidar2cam(0, 4), lidar2cam(0, 4))
    assert not torch.allclose(lidar2cam(0, 4), lidar2cam(1, 4))
    assert not torch.allclose(lidar2cam(0, 4), lidar2cam(0, 5))
    # without a sample index the token seeds it
    res = _results()
    del res['sample_idx']
    again = _results()
    del again['sample_idx']
    noise = ExtrinsicNoise(rot_deg=1.0, seed=0)
    assert torch.equal(noise(res)['cameras'].lidar2cam, noise(again)['cameras'].lidar2cam)


@pytest.mark.parametrize('distribution', ['normal', 'uniform'])
def test_extrinsic_noise_spread(distribution):
    noise = ExtrinsicNoise(rot_deg=(0.5, 1.0, 2.0), trans_cm=(10.0, 20.0, 40.0), distribution=distribution, seed=0)
    angles, trans = [], []
    for idx in range(300):
        rec = noise(_results(sample_idx=idx, n=2))['perturbations'][0]
        angles.append(rec['rot_deg'])
        trans.append(rec['trans_m'])
    angles, trans = np.concatenate(angles), np.concatenate(trans)  # (600, 3)
    if distribution == 'normal':
        np.testing.assert_allclose(angles.std(0), [0.5, 1.0, 2.0], rtol=0.1)
        np.testing.assert_allclose(trans.std(0), [0.1, 0.2, 0.4], rtol=0.1)
    else:
        assert (np.abs(angles) <= [0.5, 1.0, 2.0]).all() and (np.abs(angles).max(0) > [0.45, 0.9, 1.8]).all()
        assert (np.abs(trans) <= [0.1, 0.2, 0.4]).all()
    np.testing.assert_allclose(angles.mean(0), 0.0, atol=0.25)


# ---------------------------------------------------------------------------- height / pitch

def test_height_pitch_offset_moves_centres_by_height_and_rotates_by_pitch():
    res = _results()
    k0, l0, _ = _np_cams(res['cameras'])
    imgs0 = copy.deepcopy(res['img'])
    out = CameraHeightPitchOffset(height_m=0.3, pitch_deg=2.0)(res)
    k1, l1, _ = _np_cams(out['cameras'])
    np.testing.assert_array_equal(k1, k0)
    _assert_same_images(out['img'], imgs0)
    np.testing.assert_allclose(_centres(l1) - _centres(l0), np.tile([0.0, 0.0, 0.3], (6, 1)), atol=1e-12)
    for c in range(6):
        rotvec = Rotation.from_matrix(l1[c][:3, :3] @ l0[c][:3, :3].T).as_rotvec(degrees=True)
        np.testing.assert_allclose(rotvec, [2.0, 0.0, 0.0], atol=1e-9)  # about the camera's own x axis
    # positive pitch = the believed camera looks down: a point straight ahead now appears higher (v < cy)
    h0 = CameraHeightPitchOffset(0.0, 2.0)(_results())['cameras']
    p = _unproject(k0[0], l0[0], k0[0, :2, 2], 10.0)
    assert _project(h0.cam2img.numpy()[0], h0.lidar2cam.numpy()[0], p)[1] < k0[0, 1, 2] - 1.0


@pytest.mark.parametrize('height, pitch', [(0.2, 0.0), (0.0, -2.0), (-0.1, 1.5)])
def test_height_pitch_offset_equals_the_generator_rig_calibration(height, pitch):
    """The generator's nominal rig with a tilted LiDAR: the offset gives exactly the lidar2cam of the
    rig re-rendered with --rig height=H,pitch=P (height along the ego up axis, from lidar2ego)."""
    nominal, rig = build_calibration(0.25), build_calibration(0.25, RigSpec(height=height, pitch=pitch))
    cams = [c for c in nominal if c != LIDAR]
    lidar2ego = pose_matrix(nominal[LIDAR]['translation'], nominal[LIDAR]['rotation'])

    def lidar2cam(calib):
        return np.stack([np.linalg.inv(pose_matrix(calib[c]['translation'], calib[c]['rotation'])) @ lidar2ego
                         for c in cams])
    k = np.array([nominal[c]['camera_intrinsic'] for c in cams])
    res = dict(img=[np.zeros((4, 4, 3), np.uint8)] * len(cams), cameras=MultiViewCameras(k, lidar2cam(nominal)),
               lidar2ego=lidar2ego)
    out = CameraHeightPitchOffset(height, pitch)(res)
    np.testing.assert_allclose(out['cameras'].lidar2cam.numpy(), lidar2cam(rig), atol=1e-9)
    np.testing.assert_allclose(out['perturbations'][0]['up'], lidar2ego[:3, :3].T @ [0, 0, 1], atol=1e-12)


# ---------------------------------------------------------------------------- dropout

@pytest.mark.parametrize('severity', [2, 4, 5])
def test_cam_crash_blacks_out_exactly_k_cameras(severity):
    chosen = set()
    for idx in range(8):
        res = _results(sample_idx=idx)
        k0, l0, _ = _np_cams(res['cameras'])
        imgs0 = copy.deepcopy(res['img'])
        out = CameraDropout('crash', severity, seed=0)(res)
        black = [c for c, img in enumerate(out['img']) if not img.any()]
        assert len(black) == severity
        for c, img in enumerate(out['img']):
            assert img.shape == imgs0[c].shape and img.dtype == imgs0[c].dtype
            if c not in black:
                assert np.array_equal(img, imgs0[c])
        k1, l1, _ = _np_cams(out['cameras'])
        np.testing.assert_array_equal(k1, k0)
        np.testing.assert_array_equal(l1, l0)
        rec = out['perturbations'][0]
        assert rec['dropped_idx'] == black and rec['dropped'] == [CAMS[c] for c in black]
        chosen.add(tuple(black))
    assert len(chosen) > 1  # chosen per sample

    def dropped(seed, idx):
        return CameraDropout('crash', severity, seed=seed)(_results(sample_idx=idx))['perturbations'][0]['dropped_idx']
    assert dropped(0, 3) == dropped(0, 3)
    assert [dropped(0, i) for i in range(8)] != [dropped(1, i) for i in range(8)]


def test_named_dropout_blacks_out_the_named_cameras():
    res = _results(np.float32)
    imgs0 = copy.deepcopy(res['img'])
    out = CameraDropout('named', cameras=['CAM_BACK', 'CAM_FRONT'])(res)
    for c, img in enumerate(out['img']):
        if CAMS[c] in ('CAM_BACK', 'CAM_FRONT'):
            assert img.dtype == np.float32 and not img.any()
        else:
            assert np.array_equal(img, imgs0[c])
    assert out['perturbations'][0]['dropped'] == ['CAM_FRONT', 'CAM_BACK']
    with pytest.raises(ValueError, match=r"\['CAM_TOP'\] are not in this sample's cameras"):
        CameraDropout('named', cameras='CAM_TOP')(_results())


@pytest.mark.parametrize('severity', [1, 3, 5])
def test_frame_lost_frequency_is_severity_over_six(severity):
    drop = CameraDropout('frame_lost', severity, seed=2)
    n = 400
    lost = 0
    for idx in range(n):
        res = dict(img=[np.ones((2, 2, 3), np.uint8)] * 6, cameras=_results()['cameras'], cam_names=CAMS,
                   sample_idx=idx)
        out = drop(res)
        black = sum(not img.any() for img in out['img'])
        assert black == len(out['perturbations'][0]['dropped_idx'])
        lost += black
    p = severity / 6
    assert abs(lost / (6 * n) - p) < 4 * np.sqrt(p * (1 - p) / (6 * n))
    assert drop(dict(_results(sample_idx=7)))['perturbations'][0] == drop(_results(sample_idx=7))['perturbations'][0]


# ---------------------------------------------------------------------------- two frames

def _two_frame_results(sample_idx=0) -> dict:
    """12 frame-major views as NuScenesMultiViewDataset(num_frames=2) gives them: the rig now, then the
    same rig 0.5 s earlier seen from the current LiDAR frame (lidar2cam @ ego motion)."""
    k, l2c = _rig(6)
    motion = np.eye(4)  # current LiDAR -> previous LiDAR: 3 m behind, turned by 0.05 rad
    motion[:3, :3] = axis_rotation('z', np.degrees(0.05))
    motion[:3, 3] = [3.0, 0.2, 0.0]
    cams = MultiViewCameras(np.concatenate([k, k]), np.concatenate([l2c, l2c @ motion]), (H, W))
    return dict(img=[_block_image(i) for i in range(12)], cameras=cams, cam_names=CAMS + [f'{c}@prev' for c in CAMS],
                sample_idx=sample_idx, token=f'tok{sample_idx}', num_frames=2)


def _deltas(before: MultiViewCameras, after: MultiViewCameras) -> np.ndarray:
    """(N, 4, 4) E with lidar2cam' = E @ lidar2cam, per view."""
    return after.lidar2cam.numpy() @ np.linalg.inv(before.lidar2cam.numpy())


def test_extrinsic_noise_two_frames_is_one_error_per_physical_camera():
    for idx in range(3):
        res = _two_frame_results(idx)
        before = res['cameras']
        out = ExtrinsicNoise(rot_deg=2.0, trans_cm=10.0, seed=4)(res)
        e = _deltas(before, out['cameras'])
        np.testing.assert_allclose(e[6:], e[:6], atol=1e-9)  # camera i and view i + 6: the same E
        assert min(np.abs(e[i] - e[j]).max() for i in range(6) for j in range(i)) > 1e-3  # cameras differ
        assert np.abs(e[:, :3, :3] - np.eye(3)).max() > 1e-3
        rec = out['perturbations'][0]
        assert rec['rot_deg'].shape == rec['trans_m'].shape == (12, 3) and rec['delta'].shape == (12, 4, 4)
        np.testing.assert_allclose(rec['delta'], e, atol=1e-9)
        # the draws of a single frame are unchanged: the first six views get the one-frame error
        single = _results(sample_idx=idx)
        one = ExtrinsicNoise(rot_deg=2.0, trans_cm=10.0, seed=4)(copy.deepcopy(single))
        np.testing.assert_allclose(_deltas(single['cameras'], one['cameras']), e[:6], atol=1e-9)


def _black(out) -> list:
    return [c for c, img in enumerate(out['img']) if not img.any()]


def test_camera_dropout_two_frames_drops_physical_cameras():
    res = _two_frame_results()
    imgs0 = copy.deepcopy(res['img'])
    out = CameraDropout('named', cameras=['CAM_FRONT', 'CAM_BACK_LEFT@prev'])(res)
    assert _black(out) == [0, 6, 10]  # CAM_FRONT in both frames, CAM_BACK_LEFT only where named
    for c in set(range(12)) - {0, 6, 10}:
        assert np.array_equal(out['img'][c], imgs0[c])
    rec = out['perturbations'][0]
    assert rec['dropped'] == ['CAM_FRONT', 'CAM_FRONT@prev', 'CAM_BACK_LEFT@prev'] and rec['dropped_idx'] == [0, 6, 10]

    chosen = set()
    for idx in range(8):
        out = CameraDropout('crash', 2, seed=0)(_two_frame_results(idx))
        black = _black(out)
        cams = sorted({c % 6 for c in black})
        assert len(cams) == 2 and black == cams + [c + 6 for c in cams]
        assert out['perturbations'][0]['dropped_idx'] == black
        assert out['perturbations'][0]['dropped'] == [(CAMS + [f'{c}@prev' for c in CAMS])[c] for c in black]
        chosen.add(tuple(cams))
    assert len(chosen) > 1
    assert _black(CameraDropout('crash', 6)(_two_frame_results())) == list(range(12))
    with pytest.raises(ValueError, match='exceeds the 6 cameras'):
        CameraDropout('crash', 7)(_two_frame_results())
    bad = _two_frame_results()
    bad['num_frames'] = 5
    with pytest.raises(ValueError, match="num_frames'] = 5 must be an integer >= 1 that divides the 12 views"):
        CameraDropout('crash', 1)(bad)


def test_frame_lost_two_frames_draws_every_view():
    drop = CameraDropout('frame_lost', 3, seed=1)
    n, lost, one_frame_only = 300, 0, 0
    for idx in range(n):
        black = set(_black(drop(_two_frame_results(idx))))
        lost += len(black)
        one_frame_only += sum((c in black) != (c + 6 in black) for c in range(6))
    p = 0.5
    assert abs(lost / (12 * n) - p) < 4 * np.sqrt(p * (1 - p) / (12 * n))
    # independent views: a camera is lost in exactly one of the two frames with probability 2 p (1 - p)
    assert abs(one_frame_only / (6 * n) - 2 * p * (1 - p)) < 4 * np.sqrt(0.25 / (6 * n))


# ---------------------------------------------------------------------------- building, errors

def test_transforms_build_from_the_registry():
    cfgs = [dict(type='FocalScale', scale=0.9, mode='image'), dict(type='PrincipalPointShift', du=5, dv=5),
            dict(type='ExtrinsicNoise', rot_deg=1.0, seed=2), dict(type='CameraHeightPitchOffset', height_m=0.1),
            dict(type='CameraDropout', mode='frame_lost', severity=2, seed=1)]
    with DefaultScope.overwrite_default_scope('sf3d'):
        built = [TRANSFORMS.build(cfg) for cfg in cfgs]
    res = _results()
    for t in built:
        res = t(res)
    assert [p['type'] for p in res['perturbations']] == [c['type'] for c in cfgs]


@pytest.mark.parametrize('make, match', [
    (lambda: FocalScale(0.0), 'scale must be a finite number > 0'),
    (lambda: FocalScale(float('nan')), 'scale must be a finite number > 0'),
    (lambda: FocalScale('1.1'), 'scale must be a finite number > 0'),
    (lambda: FocalScale(1.1, 'zoom'), "mode must be one of .*'zoom'"),
    (lambda: PrincipalPointShift(float('inf')), 'du and dv must be finite'),
    (lambda: ExtrinsicNoise(rot_deg=(1.0, 2.0)), 'rot_deg .* three numbers'),
    (lambda: ExtrinsicNoise(trans_cm=-1.0), 'trans_cm .* >= 0'),
    (lambda: ExtrinsicNoise(rot_deg='big'), 'rot_deg'),
    (lambda: ExtrinsicNoise(distribution='cauchy'), "distribution must be one of .*'cauchy'"),
    (lambda: ExtrinsicNoise(seed=-1), 'seed must be an integer >= 0'),
    (lambda: CameraHeightPitchOffset(pitch_deg=90.0), r'pitch_deg must lie in \(-90, 90\)'),
    (lambda: CameraDropout('blur', 2), "mode must be one of .*'blur'"),
    (lambda: CameraDropout('crash', 2.5), "'crash' needs severity = number of cameras"),
    (lambda: CameraDropout('crash', None), "'crash' needs severity"),
    (lambda: CameraDropout('frame_lost', 7), r"'frame_lost' needs severity in \[0, 6\]"),
    (lambda: CameraDropout('named'), "'named' needs cameras"),
    (lambda: CameraDropout('named', 2, cameras=['CAM_BACK']), "'named' takes cameras, not severity"),
    (lambda: CameraDropout('crash', 2, cameras=['CAM_BACK']), "'crash' takes severity, not cameras"),
])
def test_bad_arguments_are_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_misuse_is_a_clear_error():
    res = _results()
    res['img_norm_cfg'] = dict(mean=[0, 0, 0], std=[1, 1, 1], to_rgb=True)
    with pytest.raises(ValueError, match='place it before NormalizeMultiviewImage'):
        FocalScale(1.1)(res)
    with pytest.raises(KeyError, match='run LoadMultiViewImages first'):
        PrincipalPointShift(1.0)(dict(img=[np.zeros((2, 2, 3))]))
    with pytest.raises(ValueError, match='exceeds the 6 cameras'):
        CameraDropout('crash', 7)(_results())
    res = _results()
    del res['sample_idx'], res['token']
    with pytest.raises(KeyError, match="'sample_idx' or 'token'"):
        ExtrinsicNoise(rot_deg=1.0)(res)
    res = _results()
    res['img'] = res['img'][:5]
    with pytest.raises(ValueError, match='has 5 views but cameras has 6'):
        FocalScale(1.1, 'image')(res)
