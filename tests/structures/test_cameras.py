"""MultiViewCameras against independent numpy / devkit computations."""
import copy

import numpy as np
import pytest
import torch
from nuscenes.utils.data_classes import Box
from nuscenes.utils.geometry_utils import view_points
from pyquaternion import Quaternion
from scipy.spatial.transform import Rotation

from sf3d.structures import (MultiViewCameras, bev_flip, bev_rotation, bev_scaling, bev_translation, img_crop,
                             img_hflip, img_resize, lidar2cam_from_poses, pose_matrix)

H, W = 900, 1600
YAWS = np.deg2rad([0, -55, 55, 180, 110, -110])  # a nuScenes-like 6-camera ring


def make_rig(seed=0, n=6):
    """numpy K (n, 3, 3) and lidar2cam (n, 4, 4): cameras looking outwards with small random tilts."""
    rng = np.random.default_rng(seed)
    ks, l2cs = [], []
    for a in YAWS[:n]:
        fwd, right, down = [np.cos(a), np.sin(a), 0], [np.sin(a), -np.cos(a), 0], [0, 0, -1]
        r_c2l = Rotation.from_rotvec(rng.normal(0, 0.05, 3)).as_matrix() @ np.array([right, down, fwd]).T
        c2l = np.eye(4)
        c2l[:3, :3], c2l[:3, 3] = r_c2l, rng.normal(0, 0.8, 3)
        l2cs.append(np.linalg.inv(c2l))
        f = 1260 + rng.normal(0, 20)
        ks.append(np.array([[f, 0.3, 800 + rng.normal(0, 5)], [0, f * 1.01, 450 + rng.normal(0, 5)], [0, 0, 1]]))
    return np.stack(ks), np.stack(l2cs)


def np_project(k, l2c, pts):
    """Plain pinhole: (n, 3, 3), (n, 4, 4), (P, 3) -> uv (n, P, 2), depth (n, P)."""
    uv, depth = [], []
    for kk, m in zip(k, l2c):
        pc = (m[:3, :3] @ pts.T).T + m[:3, 3]
        proj = (kk @ pc.T).T
        uv.append(proj[:, :2] / proj[:, 2:])
        depth.append(pc[:, 2])
    return np.stack(uv), np.stack(depth)


@pytest.fixture
def rig():
    k, l2c = make_rig()
    pts = np.random.default_rng(1).uniform([-40, -40, -2], [40, 40, 3], size=(200, 3))
    return k, l2c, pts, MultiViewCameras(k, l2c, image_size=(H, W))


def test_derived_matrices_match_numpy(rig):
    k, l2c, _, cams = rig
    k4 = np.tile(np.eye(4), (6, 1, 1))
    k4[:, :3, :3] = k
    np.testing.assert_allclose(cams.lidar2img.numpy(), k4 @ l2c, rtol=1e-12)
    np.testing.assert_allclose((cams.img2lidar @ cams.lidar2img).numpy(), np.tile(np.eye(4), (6, 1, 1)), atol=1e-9)
    np.testing.assert_allclose(cams.cam2lidar.numpy(), np.linalg.inv(l2c), atol=1e-12)
    centres = -np.einsum('nji,nj->ni', l2c[:, :3, :3], l2c[:, :3, 3])  # -R^T t
    np.testing.assert_allclose(cams.camera_centers.numpy(), centres, atol=1e-12)
    assert len(cams) == cams.num_cams == 6 and cams.batch_shape == ()
    assert cams.image_size.shape == (6, 2) and cams.image_size[3].tolist() == [H, W]


def test_project_matches_pinhole_and_batches(rig):
    k, l2c, pts, cams = rig
    uv, depth = cams.project(torch.from_numpy(pts))
    ref_uv, ref_depth = np_project(k, l2c, pts)
    assert uv.shape == (6, 200, 2) and depth.shape == (6, 200)
    np.testing.assert_allclose(depth.numpy(), ref_depth, atol=1e-9)
    front = ref_depth > 0.1
    np.testing.assert_allclose(uv.numpy()[front], ref_uv[front], rtol=1e-9, atol=1e-6)
    assert front.any() and (~front).any()
    # a batch of two different samples gives the per-sample answers
    k2, l2c2 = make_rig(seed=5)
    cams2 = MultiViewCameras(k2, l2c2, image_size=(H, W))
    pts2 = pts[::-1].copy() + 1.0
    uv_b, depth_b = MultiViewCameras.stack([cams, cams2]).project(torch.from_numpy(np.stack([pts, pts2])))
    assert uv_b.shape == (2, 6, 200, 2)
    np.testing.assert_allclose(depth_b[1].numpy(), np_project(k2, l2c2, pts2)[1], atol=1e-9)
    np.testing.assert_allclose(uv_b[0].numpy(), uv.numpy())
    # visibility mask against numpy
    vis = cams.in_image(uv, depth)
    ref_vis = front & (ref_uv[..., 0] >= 0) & (ref_uv[..., 0] < W) & (ref_uv[..., 1] >= 0) & (ref_uv[..., 1] < H)
    np.testing.assert_array_equal(vis.numpy(), ref_vis)
    assert ref_vis.sum() > 10


def test_unproject_inverts_project(rig):
    _, _, pts, cams = rig
    uv, depth = cams.project(torch.from_numpy(pts))
    back = cams.unproject(uv, depth)  # (6, P, 3)
    front = depth > 0.1
    np.testing.assert_allclose(back[front].numpy(), np.broadcast_to(pts, (6, 200, 3))[front.numpy()], atol=1e-8)


def test_rays_reproject_to_source_pixels(rig):
    k, l2c, _, cams = rig
    uv = torch.from_numpy(np.random.default_rng(2).uniform([0, 0], [W, H], size=(50, 2)))
    for q in (uv, uv.expand(6, 50, 2)):  # shared and per-camera pixels
        origins, dirs = cams.rays(q)
        assert origins.shape == dirs.shape == (6, 50, 3)
        np.testing.assert_allclose(dirs.norm(dim=-1).numpy(), 1.0, atol=1e-12)
        centres = np.broadcast_to(cams.camera_centers[:, None].numpy(), (6, 50, 3))
        np.testing.assert_allclose(origins.numpy(), centres)
        for t in (0.5, 7.0, 60.0):
            p = origins + t * dirs  # (6, P, 3): project each camera's points with all cameras
            for c in range(6):
                uv_c, d_c = cams.project(p[c])
                np.testing.assert_allclose(uv_c[c].numpy(), uv.numpy(), atol=1e-7)
                assert (d_c[c] > 0).all()
    # independent direction: R^T K^-1 (u, v, 1), normalised
    d_cam = np.einsum('nij,pj->npi', np.linalg.inv(k), np.concatenate([uv.numpy(), np.ones((50, 1))], 1))
    d_ref = np.einsum('nji,npj->npi', l2c[:, :3, :3], d_cam)
    d_ref /= np.linalg.norm(d_ref, axis=-1, keepdims=True)
    np.testing.assert_allclose(cams.rays(uv)[1].numpy(), d_ref, atol=1e-12)


def test_cam_rays_and_pixel_grid(rig):
    k, _, _, cams = rig
    uv = cams.pixel_grid((2, 3))
    assert uv.shape == (6, 6, 2)
    ref = [[u * W / 6, v * H / 4] for v in (1, 3) for u in (1, 3, 5)]
    np.testing.assert_allclose(uv[0].numpy(), ref)  # row-major token order
    np.testing.assert_allclose(cams.pixel_grid((2, 3), image_size=(450, 800))[4].numpy(), np.array(ref) / 2)
    d = cams.cam_rays(uv)
    d_ref = np.einsum('nij,npj->npi', np.linalg.inv(k), np.concatenate([uv.numpy(), np.ones((6, 6, 1))], -1))
    np.testing.assert_allclose(d.numpy(), d_ref / np.linalg.norm(d_ref, axis=-1, keepdims=True), atol=1e-12)
    o, r = cams.pixel_grid_rays((2, 3))
    o2, r2 = cams.rays(uv)
    assert torch.equal(o, o2) and torch.equal(r, r2)
    # camera rays depend on intrinsics only
    moved = cams.bev_transform(bev_rotation(0.7) @ bev_translation([3, 1, 0]))
    assert torch.allclose(moved.cam_rays(uv), d)
    with pytest.raises(ValueError, match='image_size is needed'):
        MultiViewCameras(k, make_rig()[1]).pixel_grid((2, 2))


def _image_ops():
    """(name, A, new (H, W), numpy pixel map old uv -> new uv)."""
    return [
        ('resize', img_resize(0.5, 0.4), (360, 800), lambda uv: uv * [0.5, 0.4]),
        ('crop', img_crop(100, 250), (500, 1200), lambda uv: uv - [100, 250]),
        ('flip', img_hflip(W), (H, W), lambda uv: np.stack([W - uv[..., 0], uv[..., 1]], -1)),
        ('all', img_hflip(704) @ img_crop(48, 140) @ img_resize(0.48, 0.48), (256, 704),
         lambda uv: np.stack([704 - (uv[..., 0] * 0.48 - 48), uv[..., 1] * 0.48 - 140], -1)),
    ]


@pytest.mark.parametrize('name,affine,size,fn', _image_ops())
def test_image_transforms_move_projections(rig, name, affine, size, fn):
    _, _, pts, cams = rig
    uv, depth = cams.project(torch.from_numpy(pts))
    new = cams.image_transform(affine, image_size=size)
    uv2, depth2 = new.project(torch.from_numpy(pts))
    front = depth.numpy() > 0.1
    np.testing.assert_allclose(uv2.numpy()[front], fn(uv.numpy())[front], atol=1e-6)
    np.testing.assert_allclose(depth2.numpy(), depth.numpy())
    assert new.image_size[0].tolist() == list(size)
    assert torch.equal(new.lidar2cam, cams.lidar2cam) and not torch.equal(new.cam2img, cams.cam2img)
    assert cams.image_size[0].tolist() == [H, W]  # the original is untouched


def test_per_camera_image_transform(rig):
    _, _, pts, cams = rig
    a = torch.stack([img_resize(0.5, 0.5) if i % 2 else img_hflip(W) for i in range(6)])
    sizes = torch.tensor([[450., 800.] if i % 2 else [H, W] for i in range(6)])
    new = cams.image_transform(a, image_size=sizes)
    uv, depth = cams.project(torch.from_numpy(pts))
    uv2, _ = new.project(torch.from_numpy(pts))
    front = depth > 0.1
    np.testing.assert_allclose(uv2[1][front[1]].numpy(), uv[1][front[1]].numpy() / 2, atol=1e-6)
    np.testing.assert_allclose(uv2[2, :, 0][front[2]].numpy(), W - uv[2, :, 0][front[2]].numpy(), atol=1e-6)
    assert new.image_size[:2].tolist() == [[H, W], [450, 800]]
    with pytest.raises(ValueError, match='pass the \\(H, W\\)'):
        cams.image_transform(img_hflip(W))


def test_image_ops_agree_with_tensor_ops():
    """A bright pixel where a point projects stays under the projection after torch.flip,
    a crop by slicing and a nearest x2 upsampling."""
    k = np.array([[20., 0, 8.3], [0, 20., 5.1], [0, 0, 1]])
    l2c = np.eye(4)
    cams = MultiViewCameras(k[None], l2c[None], image_size=(12, 16))
    pts = torch.tensor([[0.21, -0.13, 1.0], [-0.37, 0.22, 2.0], [0.05, 0.0, 1.5]], dtype=torch.float64)
    ops = [
        (img_hflip(16), (12, 16), lambda im: torch.flip(im, dims=[-1])),
        (img_crop(3, 2), (9, 11), lambda im: im[..., 2:11, 3:14]),
        (img_resize(2, 2), (24, 32), lambda im: torch.nn.functional.interpolate(im[None], scale_factor=2)[0]),
    ]
    for affine, size, op in ops:
        new = cams.image_transform(affine, image_size=size)
        for p in pts:
            uv, _ = cams.project(p[None])
            u, v = int(uv[0, 0, 0]), int(uv[0, 0, 1])
            img = torch.zeros(1, 12, 16)
            img[0, v, u] = 1.0
            out = op(img)
            uv2, _ = new.project(p[None])
            assert out[0, int(uv2[0, 0, 1]), int(uv2[0, 0, 0])] == 1.0
            # the pixel centre maps onto the centre of the moved pixel
            c2 = affine.numpy() @ np.array([u + 0.5, v + 0.5, 1.0])
            (vv, uu), = (out[0] == 1).nonzero().tolist()[:1]
            if affine[0, 0] != 2:  # upsampling spreads one pixel over 2x2; centres checked for the others
                np.testing.assert_allclose(c2[:2], [uu + 0.5, vv + 0.5])


@pytest.mark.parametrize('t', [
    bev_rotation(0.9), bev_scaling(1.07), bev_translation([2.0, -1.5, 0.3]), bev_flip('horizontal'), bev_flip('vertical'),
    bev_flip('horizontal') @ bev_translation([1, 2, 0]) @ bev_scaling(0.95) @ bev_rotation(-0.4)])
def test_bev_transform_keeps_pixels(rig, t):
    _, _, pts, cams = rig
    moved = pts @ t[:3, :3].numpy().T + t[:3, 3].numpy()
    new = cams.bev_transform(t)
    uv, depth = cams.project(torch.from_numpy(pts))
    uv2, depth2 = new.project(torch.from_numpy(moved))
    front = depth > 0.1
    np.testing.assert_allclose(uv2[front].numpy(), uv[front].numpy(), atol=1e-6)
    np.testing.assert_allclose(depth2.numpy(), depth.numpy(), atol=1e-9)
    assert torch.equal(new.cam2img, cams.cam2img)
    # camera centres move with the scene
    np.testing.assert_allclose(new.camera_centers.numpy(),
                               cams.camera_centers.numpy() @ t[:3, :3].numpy().T + t[:3, 3].numpy(), atol=1e-9)


def test_bev_transform_batched(rig):
    k, l2c, pts, cams = rig
    batch = MultiViewCameras.stack([cams, cams.clone()])
    t = torch.stack([bev_rotation(0.3), bev_scaling(1.1)])
    new = batch.bev_transform(t)
    np.testing.assert_allclose(new.lidar2cam[1].numpy(), cams.bev_transform(t[1]).lidar2cam.numpy())
    with pytest.raises(ValueError, match='must be \\(4, 4\\) or'):
        batch.bev_transform(torch.stack([t[0]] * 3))


def test_select_stack_to_clone(rig):
    k, l2c, _, cams = rig
    sel = cams.select([3, 0])
    np.testing.assert_array_equal(sel.lidar2cam.numpy(), l2c[[3, 0]])
    np.testing.assert_array_equal(sel.cam2img.numpy(), k[[3, 0]])
    assert len(sel) == 2 and sel.image_size.shape == (2, 2)
    batch = MultiViewCameras.stack([cams, sel.select(slice(0, 1)).select([0] * 6)])
    assert batch.batch_shape == (2,) and batch.lidar2cam.shape == (2, 6, 4, 4)
    assert batch.select([1]).cam2img.shape == (2, 1, 3, 3)
    for i, one in enumerate([cams, sel.select(slice(0, 1)).select([0] * 6)]):  # sample() undoes stack()
        item = batch.sample(i)
        for a, b in ((item.cam2img, one.cam2img), (item.lidar2cam, one.lidar2cam), (item.image_size, one.image_size)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match='batch dim'):
        cams.sample(0)
    f32 = batch.to(torch.float32)
    assert f32.cam2img.dtype == f32.lidar2cam.dtype == f32.image_size.dtype == torch.float32
    c = cams.clone()
    c.cam2img[0, 0, 0] = 1.0
    assert cams.cam2img[0, 0, 0] != 1.0
    with pytest.raises(ValueError, match='all or none'):
        MultiViewCameras.stack([cams, MultiViewCameras(k, l2c)])


def _random_record(rng, scale=1.0):
    return {'translation': (rng.normal(0, 1, 3) * scale).tolist(),
            'rotation': Rotation.random(random_state=rng.integers(1 << 30)).as_quat()[[3, 0, 1, 2]].tolist()}


def test_lidar2cam_from_poses_matches_devkit_chain():
    rng = np.random.default_rng(3)
    lidar_calib, ego_lidar = _random_record(rng), _random_record(rng, 100)
    ego_cams = [_random_record(rng, 100) for _ in range(2)]
    k = [[1000., 0, 640], [0, 1000, 360], [0, 0, 1]]
    cam_calibs = [dict(_random_record(rng), camera_intrinsic=k) for _ in range(2)]
    cams = MultiViewCameras.from_nuscenes(cam_calibs, lidar_calib, ego_lidar, ego_cams)

    def to_sensor(box, pose, calib):  # NuScenes.get_sample_data's steps
        box = copy.deepcopy(box)
        box.translate(-np.array(pose['translation']))
        box.rotate(Quaternion(pose['rotation']).inverse)
        box.translate(-np.array(calib['translation']))
        box.rotate(Quaternion(calib['rotation']).inverse)
        return box

    glob = Box(rng.normal(0, 50, 3), [2, 4, 1.5], Quaternion(axis=rng.normal(size=3), angle=1.2))
    in_lidar = to_sensor(glob, ego_lidar, lidar_calib)
    for c in range(2):
        in_cam = to_sensor(glob, ego_cams[c], cam_calibs[c])
        m = cams.lidar2cam[c].numpy()
        np.testing.assert_allclose(m[:3, :3] @ in_lidar.center + m[:3, 3], in_cam.center, atol=1e-9)
        np.testing.assert_allclose(m[:3, :3] @ in_lidar.rotation_matrix, in_cam.rotation_matrix, atol=1e-12)
        uv, depth = cams.select([c]).project(torch.from_numpy(in_lidar.center[None]))
        np.testing.assert_allclose(uv[0, 0].numpy(), view_points(in_cam.center[:, None], np.array(k), True)[:2, 0])
        np.testing.assert_allclose(depth[0, 0].item(), in_cam.center[2])
        # the helper alone, numpy and torch
        args = [pose_matrix(r['translation'], r['rotation']) for r in (lidar_calib, ego_lidar, ego_cams[c], cam_calibs[c])]
        np.testing.assert_allclose(lidar2cam_from_poses(*args), m, atol=1e-12)
        np.testing.assert_allclose(lidar2cam_from_poses(*map(torch.from_numpy, args)).numpy(), m, atol=1e-12)


def test_pose_matrix_matches_scipy():
    q_xyzw = np.array([0.1, -0.4, 0.3, 0.8])
    m = pose_matrix([1, 2, 3], 2.5 * q_xyzw[[3, 0, 1, 2]])  # unnormalised wxyz
    np.testing.assert_allclose(m[:3, :3], Rotation.from_quat(q_xyzw).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(m[:3, 3], [1, 2, 3])
    np.testing.assert_allclose(m[3], [0, 0, 0, 1])
    with pytest.raises(ValueError, match='quaternion'):
        pose_matrix([1, 2, 3], [0, 0, 0])


def test_constructor_and_update_errors():
    k, l2c = make_rig(n=2)
    good = MultiViewCameras(k, l2c)
    cases = [
        (dict(cam2img=k[:, :2], lidar2cam=l2c), 'cam2img must have shape'),
        (dict(cam2img=k[0], lidar2cam=l2c[0]), 'cam2img must have shape'),
        (dict(cam2img=k, lidar2cam=l2c[:, :3]), 'lidar2cam must have shape'),
        (dict(cam2img=k, lidar2cam=l2c[:1]), 'share the leading'),
        (dict(cam2img=np.where(np.eye(3) > 0, np.nan, k), lidar2cam=l2c), 'cam2img .* NaN'),
        (dict(cam2img=k * [[0], [1], [1]], lidar2cam=l2c), 'cam2img .* not invertible'),
        (dict(cam2img=k + [[0, 0, 0], [0, 0, 0], [0.1, 0, 0]], lidar2cam=l2c), 'cam2img .* last row'),
        (dict(cam2img=k, lidar2cam=l2c * [[1], [1], [0], [1]]), 'lidar2cam .* not invertible'),
        (dict(cam2img=torch.ones(2, 3, 3, dtype=torch.long), lidar2cam=l2c), 'floating point'),
        (dict(cam2img=torch.from_numpy(k).float(), lidar2cam=torch.from_numpy(l2c)), 'dtype and device'),
        (dict(cam2img=k, lidar2cam=l2c, image_size=(900, 0)), 'image_size must be finite and > 0'),
        (dict(cam2img=k, lidar2cam=l2c, image_size=np.ones((3, 2))), 'image_size must be'),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            MultiViewCameras(**kwargs)
    with pytest.raises(ValueError, match='affine .* last row'):
        good.image_transform(np.ones((3, 3)))
    with pytest.raises(ValueError, match='bev_transform matrix must have shape'):
        good.bev_transform(np.eye(3))
    with pytest.raises(ValueError, match='points must have shape'):
        good.project(torch.zeros(4, 2, dtype=torch.float64))
