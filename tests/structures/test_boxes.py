"""LiDARBoxes and the box conversions against the nuScenes devkit, numpy and hand cases."""
import copy

import numpy as np
import pytest
import torch
from nuscenes.utils.data_classes import Box
from pyquaternion import Quaternion
from scipy.spatial.transform import Rotation

from sf3d.structures import (LiDARBoxes, MultiViewCameras, bev_flip, bev_rotation, bev_scaling, bev_translation,
                             from_info_bbox3d, from_nusc_boxes, to_gravity_array, to_nusc_boxes)


def random_boxes(n=12, seed=0):
    rng = np.random.default_rng(seed)
    arr = np.concatenate([rng.uniform(-50, 50, (n, 2)), rng.uniform(-3, 1, (n, 1)), rng.uniform(0.3, 12, (n, 3)),
                          rng.uniform(-np.pi, np.pi, (n, 1)), rng.normal(0, 5, (n, 2))], axis=1)
    return LiDARBoxes(arr)


def random_rigid(seed, scale):
    rng = np.random.default_rng(seed)
    m = np.eye(4)
    m[:3, :3] = Rotation.random(random_state=seed).as_matrix()
    m[:3, 3] = rng.normal(0, scale, 3)
    return m


def devkit_box(row):
    """Devkit Box in the LiDAR frame: gravity centre, size (w, l, h), yaw about z, velocity (vx, vy, 0)."""
    x, y, zb, l, w, h, yaw, vx, vy = row
    return Box([x, y, zb + h / 2], [w, l, h], Quaternion(axis=[0, 0, 1], radians=yaw), velocity=(vx, vy, 0.0))


def test_views_and_corners_match_devkit():
    boxes = random_boxes()
    t = boxes.tensor.numpy()
    np.testing.assert_allclose(boxes.gravity_center.numpy(), t[:, :3] + np.c_[0 * t[:, :2], t[:, 5] / 2])
    np.testing.assert_array_equal(boxes.bottom_center.numpy(), t[:, :3])
    np.testing.assert_array_equal(boxes.dims.numpy(), t[:, 3:6])
    np.testing.assert_array_equal(boxes.bev.numpy(), t[:, [0, 1, 3, 4, 6]])
    np.testing.assert_array_equal(boxes.velocity.numpy(), t[:, 7:9])
    corners = boxes.corners
    assert corners.shape == (12, 8, 3)
    for i, row in enumerate(t):
        np.testing.assert_allclose(corners[i].numpy(), devkit_box(row).corners().T, atol=1e-9)


def test_yaw_convention_hand_case():
    boxes = LiDARBoxes([[10.0, 5.0, -1.0, 4.0, 2.0, 1.5, np.pi / 2, 0, 0]])
    c = boxes.corners[0].numpy()
    np.testing.assert_allclose(c.max(0) - c.min(0), [2.0, 4.0, 1.5], atol=1e-12)  # l=4 runs along +y
    np.testing.assert_allclose(c.min(0), [9.0, 3.0, -1.0], atol=1e-12)
    np.testing.assert_allclose(c[:4].mean(0), [10.0, 7.0, -0.25], atol=1e-12)  # front face towards +y
    np.testing.assert_allclose(c[[0, 3]].mean(0)[:2], [9.0, 7.0], atol=1e-12)  # corners 0, 3: +w/2 = left of heading


def test_getitem_cat_to_clone_range():
    boxes = random_boxes()
    mask = boxes.in_range_bev([-20, -30, 20, 30])
    ref = (np.abs(boxes.tensor[:, 0].numpy()) < 20) & (np.abs(boxes.tensor[:, 1].numpy()) < 30)
    np.testing.assert_array_equal(mask.numpy(), ref)
    assert 0 < ref.sum() < 12
    np.testing.assert_array_equal(boxes.in_range_bev([-20, -30, -5, 20, 30, 3]).numpy(), ref)  # point cloud range
    edge = LiDARBoxes([[20.0, 0, 0, 1, 1, 1, 0, 0, 0], [19.99, 0, 0, 1, 1, 1, 0, 0, 0]])
    assert edge.in_range_bev([-20, -20, 20, 20]).tolist() == [False, True]  # strict, as mmdet3d
    assert len(boxes[mask]) == ref.sum() and len(boxes[3]) == 1 and len(boxes[2:5]) == 3
    assert torch.equal(LiDARBoxes.cat([boxes[:4], boxes[4:]]).tensor, boxes.tensor)
    assert boxes.to(torch.float32).dtype == torch.float32
    c = boxes.clone()
    c.tensor[0, 0] = 1e3
    assert boxes.tensor[0, 0] != 1e3
    with pytest.raises(ValueError, match='4 or 6 values'):
        boxes.in_range_bev([0, 1, 2])


def _heading(yaw):
    return np.stack([np.cos(yaw), np.sin(yaw)], -1)


@pytest.mark.parametrize('op,t,perm', [
    (lambda b: b.rotate(0.8), bev_rotation(0.8), list(range(8))),
    (lambda b: b.rotate(-2.9), bev_rotation(-2.9), list(range(8))),
    (lambda b: b.scale(1.05), bev_scaling(1.05), list(range(8))),
    (lambda b: b.translate([1.0, -2.0, 0.5]), bev_translation([1.0, -2.0, 0.5]), list(range(8))),
    (lambda b: b.flip('horizontal'), bev_flip('horizontal'), [1, 0, 3, 2, 5, 4, 7, 6]),
    (lambda b: b.flip('vertical'), bev_flip('vertical'), [1, 0, 3, 2, 5, 4, 7, 6]),  # mirrors swap the w sides
])
def test_bev_ops_match_their_matrix(op, t, perm):
    boxes = random_boxes()
    new = op(boxes)
    tn = t.numpy()
    moved = boxes.corners.numpy() @ tn[:3, :3].T + tn[:3, 3]
    np.testing.assert_allclose(new.corners.numpy()[:, perm], moved, atol=1e-9)
    vel3 = np.c_[boxes.velocity.numpy(), np.zeros(12)] @ tn[:3, :3].T
    np.testing.assert_allclose(new.velocity.numpy(), vel3[:, :2], atol=1e-12)
    head = _heading(boxes.yaw.numpy()) @ tn[:2, :2].T
    np.testing.assert_allclose(_heading(new.yaw.numpy()), head / np.linalg.norm(head, axis=1, keepdims=True), atol=1e-12)
    assert not torch.equal(new.tensor, boxes.tensor)


def test_bev_ops_numpy_reference():
    boxes = random_boxes()
    a = boxes.tensor.numpy()
    c, s = np.cos(0.5), np.sin(0.5)
    r = boxes.rotate(0.5).tensor.numpy()
    np.testing.assert_allclose(r[:, :2], a[:, :2] @ np.array([[c, -s], [s, c]]).T)
    np.testing.assert_allclose(r[:, 7:], a[:, 7:] @ np.array([[c, -s], [s, c]]).T)
    np.testing.assert_allclose(r[:, [2, 3, 4, 5]], a[:, [2, 3, 4, 5]])
    np.testing.assert_allclose(r[:, 6], a[:, 6] + 0.5)
    np.testing.assert_allclose(boxes.scale(2.0).tensor.numpy(), a * [2, 2, 2, 2, 2, 2, 1, 2, 2])
    h = boxes.flip('horizontal').tensor.numpy()
    np.testing.assert_allclose(h, a * [1, -1, 1, 1, 1, 1, -1, 1, -1])
    v = boxes.flip('vertical').tensor.numpy()
    np.testing.assert_allclose(v[:, 6], np.pi - a[:, 6])
    np.testing.assert_allclose(v[:, [0, 7]], -a[:, [0, 7]])
    with pytest.raises(ValueError, match='direction'):
        boxes.flip('diagonal')
    with pytest.raises(ValueError, match='factor must be > 0'):
        boxes.scale(0.0)


def test_boxes_and_cameras_stay_consistent_under_bev_aug():
    """Projected corners are unchanged when boxes and cameras follow the same augmentation."""
    boxes = LiDARBoxes([[0.0, 15.0, -1.0, 4.0, 2.0, 1.6, 0.3, 1.0, 0.0], [3.0, 25.0, -1.5, 1.0, 0.8, 1.8, -1.2, 0, 1]])
    l2c = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]])  # camera looking along +y
    cams = MultiViewCameras([[[1000, 0, 800], [0, 1000, 450], [0, 0, 1.0]]], l2c[None])
    t = bev_translation([0.5, -1, 0.2]) @ bev_scaling(0.97) @ bev_flip('vertical') @ bev_rotation(0.25)
    new_boxes = boxes.rotate(0.25).flip('vertical').scale(0.97).translate([0.5, -1, 0.2])
    uv, depth = cams.project(boxes.corners.reshape(-1, 3))
    uv2, _ = cams.bev_transform(t).project(new_boxes.corners.reshape(-1, 3))
    assert (depth > 1).all()
    perm = torch.tensor([1, 0, 3, 2, 5, 4, 7, 6])  # one mirror in the chain
    np.testing.assert_allclose(uv2.reshape(1, 2, 8, 2)[:, :, perm].numpy(), uv.reshape(1, 2, 8, 2).numpy(), atol=1e-7)


def test_to_nusc_boxes_matches_devkit_steps_and_round_trips():
    boxes = random_boxes(20, seed=4)
    lidar2ego, ego2global = random_rigid(1, 1.0), random_rigid(2, 300.0)
    out = to_nusc_boxes(boxes, lidar2ego, ego2global, labels=list(range(20)), scores=np.linspace(0, 1, 20),
                        names=['car'] * 20)
    assert len(out) == 20 and out[3].label == 3 and out[0].name == 'car' and out[19].score == 1.0
    for row, b in zip(boxes.tensor.numpy(), out):
        ref = devkit_box(row)  # mmdet3d's lidar -> ego -> global steps with the devkit's Box
        for m in (lidar2ego, ego2global):
            ref.rotate(Quaternion(matrix=m[:3, :3]))
            ref.translate(m[:3, 3])
        np.testing.assert_allclose(b.center, ref.center, atol=1e-9)
        np.testing.assert_allclose(b.wlh, ref.wlh)
        np.testing.assert_allclose(b.rotation_matrix, ref.rotation_matrix, atol=1e-12)
        np.testing.assert_allclose(b.velocity, ref.velocity, atol=1e-12)
        np.testing.assert_allclose(b.corners(), ref.corners(), atol=1e-9)
    back = from_nusc_boxes(out, lidar2ego, ego2global)
    diff = back.tensor.numpy() - boxes.tensor.numpy()
    diff[:, 6] = (diff[:, 6] + np.pi) % (2 * np.pi) - np.pi
    np.testing.assert_allclose(diff, 0, atol=1e-9)
    assert len(to_nusc_boxes(boxes[:0], lidar2ego, ego2global)) == 0
    assert len(from_nusc_boxes([], lidar2ego, ego2global)) == 0


def test_from_nusc_boxes_matches_devkit_steps():
    """A global devkit box (with NaN velocity) taken to the LiDAR frame as NuScenes.get_sample_data does."""
    lidar2ego, ego2global = random_rigid(5, 1.0), random_rigid(6, 300.0)
    m = ego2global @ lidar2ego
    yaw_in_lidar = 0.7
    q = Quaternion(matrix=m[:3, :3]) * Quaternion(axis=[0, 0, 1], radians=yaw_in_lidar)
    glob = Box(m[:3, 3] + [3, -4, 1], [1.9, 4.5, 1.6], q)  # velocity NaN, as boxes from the devkit's tables
    ref = copy.deepcopy(glob)
    for mm in (ego2global, lidar2ego):
        ref.translate(-mm[:3, 3])
        ref.rotate(Quaternion(matrix=mm[:3, :3]).inverse)
    b = from_nusc_boxes([glob], lidar2ego, ego2global).tensor[0].numpy()
    np.testing.assert_allclose(b[:3], ref.center - [0, 0, 0.8], atol=1e-9)
    np.testing.assert_allclose(b[3:6], [4.5, 1.9, 1.6])
    np.testing.assert_allclose(b[6], ref.orientation.yaw_pitch_roll[0], atol=1e-9)
    np.testing.assert_allclose(b[6], yaw_in_lidar, atol=1e-9)
    np.testing.assert_array_equal(b[7:], [0.0, 0.0])


def test_conversion_errors():
    boxes = random_boxes(2)
    with pytest.raises(ValueError, match='rigid'):
        to_nusc_boxes(boxes, np.diag([2.0, 2, 2, 1]), np.eye(4))
    with pytest.raises(ValueError, match='must be \\(4, 4\\)'):
        to_nusc_boxes(boxes, np.eye(3), np.eye(3))
    with pytest.raises(ValueError, match='labels has 1 entries for 2 boxes'):
        to_nusc_boxes(boxes, np.eye(4), np.eye(4), labels=[0])


def test_info_bbox3d_round_trip():
    g = np.array([[1.0, 2.0, 0.5, 4.0, 2.0, 1.6, 0.3], [-5.0, 7.0, -0.2, 1.0, 0.8, 1.8, -2.0]])
    vel = np.array([[1.0, np.nan], [0.5, -0.5]])
    boxes = from_info_bbox3d(g, vel)
    np.testing.assert_allclose(boxes.tensor[:, 2].numpy(), [0.5 - 0.8, -0.2 - 0.9])
    np.testing.assert_array_equal(boxes.velocity.numpy(), [[1.0, 0.0], [0.5, -0.5]])  # NaN -> 0 as mmdet3d
    np.testing.assert_allclose(boxes.gravity_center.numpy(), g[:, :3])
    arr = to_gravity_array(boxes)
    np.testing.assert_allclose(arr[:, :7], g)
    assert torch.equal(from_info_bbox3d(arr).tensor, boxes.tensor)  # (N, 9) input
    assert torch.equal(from_info_bbox3d(g).velocity, torch.zeros(2, 2, dtype=torch.float64))
    assert len(from_info_bbox3d([], [])) == 0
    with pytest.raises(ValueError, match='\\(N, 7\\) or \\(N, 9\\)'):
        from_info_bbox3d(np.zeros((2, 8)))
    with pytest.raises(ValueError, match='velocity was given too'):
        from_info_bbox3d(arr, vel)
    with pytest.raises(ValueError, match='2 boxes but velocity'):
        from_info_bbox3d(g, vel[:1])


def test_constructor_errors():
    good = random_boxes(3).tensor
    with pytest.raises(ValueError, match='shape \\(N, 9\\)'):
        LiDARBoxes(good[:, :7])
    bad = good.clone()
    bad[1, 4] = float('nan')
    with pytest.raises(ValueError, match='rows \\[1\\] contain NaN'):
        LiDARBoxes(bad)
    bad = good.clone()
    bad[2, 5] = 0.0
    with pytest.raises(ValueError, match='sizes .* rows \\[2\\]'):
        LiDARBoxes(bad)
    with pytest.raises(ValueError, match='floating point'):
        LiDARBoxes(torch.ones(2, 9, dtype=torch.long))
    assert LiDARBoxes(np.zeros((0,))).tensor.shape == (0, 9)
