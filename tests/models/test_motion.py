"""Dense two-frame motion (sf3d.models.layers.motion, MultiViewDetector(motion=...)): the correlation
and the targets against numpy, the velocity read back from exact flow and scale maps, a learned shift,
and the detector's losses, predictions and errors."""
import math

import numpy as np
import pytest
import torch
from detector_utils import H, W, batched_cameras, build, camera, rig, samples_for, single_thread_fixture

from sf3d.models.detectors.multiview_detector import box_cover
from sf3d.models.layers.motion import (DenseMotion, correlation, displacement_grid, motion_targets, motion_velocity,
                                      static_flow)
from sf3d.structures import LiDARBoxes

one_thread = single_thread_fixture()

EGO = (-2.0, 0.3, 0.0)  # where the previous frame's cameras were, in the current LiDAR frame
YAWS = (0.0, math.radians(75))


def _rigs():
    cur = rig(*(camera(y) for y in YAWS))
    prev = rig(*(camera(y, centre=(0.5 + EGO[0], EGO[1], EGO[2])) for y in YAWS))
    return cur, prev


def _numpy_project(k, l2c, p):
    cam = l2c[:3, :3] @ p + l2c[:3, 3]
    return (k @ cam)[:2] / cam[2], cam[2]


def test_displacement_grid_and_correlation_against_numpy():
    grid = displacement_grid((1, 2)).numpy()
    assert grid.shape == (15, 2)
    np.testing.assert_array_equal(grid[:5], [[-2, -1], [-1, -1], [0, -1], [1, -1], [2, -1]])  # dy outer, dx inner
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(2, 4, 5, 7)), rng.normal(size=(2, 4, 5, 7))
    out = correlation(torch.as_tensor(q).float(), torch.as_tensor(k).float(), (1, 2)).numpy()
    assert out.shape == (2, 15, 5, 7)
    expected = np.zeros_like(out)
    for i, (dx, dy) in enumerate(grid.astype(int)):
        for y in range(5):
            for x in range(7):
                if 0 <= y + dy < 5 and 0 <= x + dx < 7:
                    expected[:, i, y, x] = (q[:, :, y, x] * k[:, :, y + dy, x + dx]).sum(1) / 2.0
    np.testing.assert_allclose(out, expected, atol=1e-5)
    with pytest.raises(ValueError, match='one shape'):
        correlation(torch.zeros(1, 4, 5, 7), torch.zeros(1, 4, 5, 6), (1, 1))
    # the previous features at the expected match: an integer displacement is a shift (zero off the map)
    disp = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1).expand(2, 2, 5, 7)
    warped = DenseMotion._warp(torch.as_tensor(k).float(), disp).numpy()
    shifted = np.zeros_like(k)
    shifted[:, :, 1:, :-2] = k[:, :, :-1, 2:]  # warped(y, x) = k(y - 1, x + 2)
    np.testing.assert_allclose(warped, shifted, atol=1e-5)


BOXES = np.array([[10.0, 1.0, -1.6, 4.0, 1.8, 1.5, 0.2, 3.0, -1.0],   # front, moving
                  [4.0, 9.0, -1.6, 0.8, 0.8, 1.8, 0.0, 0.0, 1.5]])    # left, walking


def test_motion_targets_against_numpy():
    (k1, m1), (k0, m0) = _rigs()
    cams = batched_cameras((np.concatenate([k1, k0]), np.concatenate([m1, m0]))).sample(0)
    cur, prev = cams.select(slice(0, 2)), cams.select(slice(2, None))
    boxes = torch.as_tensor(BOXES).float()
    centres = LiDARBoxes(boxes).gravity_center
    dt, stride = 0.5, 8.0
    cover, _ = box_cover(boxes, cur, (H // 8, W // 8), stride)
    flow, log_ratio, weight = motion_targets(centres, boxes[:, 7:9], cover, cur, prev, dt)
    assert flow.shape == (2, H // 8, W // 8, 2) and torch.equal(weight > 0, cover >= 0)
    assert (cover[0] >= 0).any() and (cover[1] >= 0).any()  # the car is seen in front, the pedestrian on the left
    for n in range(2):  # every box counts once per view
        for g in range(2):
            where = cover[n] == g
            if where.any():
                torch.testing.assert_close(weight[n][where], torch.full((int(where.sum()),), 1.0 / int(where.sum())))
    for n in range(2):
        for g in range(2):
            c = centres[g].double().numpy()
            before = c - np.r_[BOXES[g, 7:9] * dt, 0.0]
            uv1, z1 = _numpy_project(k1[n], m1[n], c)
            uv0, z0 = _numpy_project(k0[n], m0[n], before)
            where = cover[n] == g
            if not where.any():
                continue
            np.testing.assert_allclose(flow[n][where].numpy(), np.broadcast_to(uv0 - uv1, (int(where.sum()), 2)),
                                       atol=1e-3)
            np.testing.assert_allclose(log_ratio[n][where].numpy(), math.log(z0 / z1), atol=1e-5)
    # no previous frame: the same cameras and dt = 0 give zero flow and ratio
    flow, log_ratio, _ = motion_targets(centres, boxes[:, 7:9], cover, cur, cur, 0.0)
    assert flow.abs().max() < 1e-4 and log_ratio.abs().max() < 1e-6


def test_motion_velocity_reads_back_the_gt_velocity():
    """Maps holding one box's exact centre flow and log ratio everywhere give back its velocity,
    ego motion included; a box no view sees, and dt = 0, are flagged unseen."""
    (k1, m1), (k0, m0) = _rigs()
    both = (np.concatenate([k1, k0]), np.concatenate([m1, m0]))
    cams = batched_cameras(both, both)
    cur, prev = cams.select(slice(0, 2)), cams.select(slice(2, None))
    boxes = torch.as_tensor(BOXES).float()
    centres = LiDARBoxes(boxes).gravity_center
    dt = 0.5
    cover = torch.zeros(2, H // 8, W // 8, dtype=torch.long)
    for g in range(2):
        flow, log_ratio, _ = motion_targets(centres[g:g + 1], boxes[g:g + 1, 7:9], cover, cur.sample(0),
                                            prev.sample(0), dt)
        query = torch.stack([centres[g], torch.tensor([-30.0, 0.0, 0.0])])[None].expand(2, -1, -1)  # (2, 2, 3)
        vel, seen = motion_velocity(flow.movedim(-1, 1)[None].expand(2, -1, -1, -1, -1),
                                    log_ratio[None].expand(2, -1, -1, -1), query, cur, prev,
                                    torch.tensor([dt, 0.0]), (H, W))
        np.testing.assert_allclose(vel[0, 0].numpy(), BOXES[g, 7:9], atol=2e-3)
        assert seen.tolist() == [[True, False], [False, False]]  # behind every view / no previous frame
        assert torch.equal(vel[0, 1], torch.zeros(2)) and torch.isfinite(vel).all()


def test_dense_motion_learns_a_shift():
    """Previous features = current features moved 3 cells right and 1 up: after training on the
    targets, the flow is (+3, -1) cells at every pixel whose match stays on the map."""
    torch.manual_seed(0)
    cur = torch.randn(1, 2, 16, 10, 24)
    prev = torch.zeros_like(cur)
    prev[..., :-1, 3:] = cur[..., 1:, :-3]  # prev(y - 1, x + 3) = cur(y, x)
    motion = DenseMotion(embed_dims=16, match_dims=8, radius=(2, 5), hidden=16)
    target = torch.tensor([3.0, -1.0]) * 8.0
    flow_t = target.expand(1, 2, 10, 24, 2)
    valid = torch.zeros(1, 2, 10, 24, dtype=torch.bool)
    valid[..., 1:, :-3] = True
    opt = torch.optim.Adam(motion.parameters(), lr=1e-2)

    def errors():
        with torch.no_grad():
            out = motion(cur, prev, 8.0)
        return (out['flow'].movedim(2, -1)[valid] - target).abs().amax(-1) / 8.0  # (P,) cells

    before = errors().mean()
    for _ in range(150):
        losses = motion.loss(motion(cur, prev, 8.0), flow_t, torch.zeros(1, 2, 10, 24), valid.float(), 8.0)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    after = errors()
    assert after.mean() < 0.15 < before and after.quantile(0.9) < 0.3, (before, after.mean(), after.quantile(0.9))
    # targets outside the window (6 > r_x = 5 cells) or with |log ratio| > 1 are left out of every loss
    out = motion(cur, prev, 8.0)
    for flow, ratio in ((torch.tensor([6.0, 0.0]) * 8.0, 0.0), (target, 1.5)):
        losses = motion.loss(out, flow.expand(1, 2, 10, 24, 2), torch.full((1, 2, 10, 24), ratio), valid.float(), 8.0)
        assert all(v == 0 for v in losses.values()), losses


def _batch(dt=(0.5, 0.0)):
    (k1, m1), (k0, m0) = _rigs()
    both = (np.concatenate([k1, k0]), np.concatenate([m1, m0]))
    samples = samples_for(batched_cameras(both, both), [BOXES] * 2, [np.array([0, 7])] * 2)
    samples['time_delta'] = list(dt)
    return dict(img=torch.randn(2, 4, 3, H, W)), samples


def test_detector_with_motion_trains_and_reads_velocity_from_it():
    det = build(num_cams=2, num_frames=2, token_loss=dict(), pixel_loss=dict(), motion=dict(radius=(1, 3)))
    inputs, samples = _batch()
    det.train()
    losses = det(inputs, samples, mode='loss')
    assert {'motion.loss_match', 'motion.loss_flow', 'motion.loss_ratio'} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values()) and losses['motion.loss_flow'] > 0
    sum(losses.values()).backward()
    assert det.motion.proj.weight.grad.abs().sum() > 0 and det.motion.refine[-1].weight.grad.abs().sum() > 0
    det.eval()
    with torch.no_grad():
        out = det(inputs, samples, mode='tensor')
        read = det._motion_velocities(out, samples['cameras'], torch.tensor([0.5, 0.0]), (H, W))
        preds = det(inputs, samples, mode='predict')
    codes, new = out['all_bbox_preds'][-1], read['all_bbox_preds'][-1]  # (B, Q, 10)
    torch.testing.assert_close(new[..., :8], codes[..., :8])
    torch.testing.assert_close(read['all_bbox_preds'][:-1], out['all_bbox_preds'][:-1])
    assert not torch.allclose(new[0, :, 8:], codes[0, :, 8:])  # dt 0.5: read from the motion maps
    torch.testing.assert_close(new[1, :, 8:], codes[1, :, 8:])  # dt 0: the regressed velocity stays
    assert all(torch.isfinite(p['pred_instances_3d']['bboxes_3d'].tensor).all() for p in preds)
    for got, ref in zip(preds, det.head.predict(read)):  # predict reads the velocity from the motion
        torch.testing.assert_close(got['pred_instances_3d']['bboxes_3d'].tensor, ref['bboxes_3d'])
    # read_velocity=False: the motion is only a loss, the predictions keep the regressed velocity
    det.motion.read_velocity = False
    with torch.no_grad():
        kept = det(inputs, samples, mode='predict')
    expected = det.head.predict(out)
    for got, ref in zip(kept, expected):
        torch.testing.assert_close(got['pred_instances_3d']['bboxes_3d'].tensor, ref['bboxes_3d'])


def test_heading_from_motion_turns_only_boxes_driving_backwards():
    det = build(num_cams=2, num_frames=2, motion=dict(radius=(1, 3))).eval()
    inputs, samples = _batch(dt=(0.5, 0.5))
    with torch.no_grad():
        out = det(inputs, samples, mode='tensor')
        plain = det._motion_velocities(out, samples['cameras'], torch.tensor([0.5, 0.5]), (H, W))['all_bbox_preds'][-1]
        det.motion.heading_speed = 0.5
        turned = det._motion_velocities(out, samples['cameras'], torch.tensor([0.5, 0.5]), (H, W))['all_bbox_preds'][-1]
    torch.testing.assert_close(turned[..., [0, 1, 2, 3, 4, 5, 8, 9]], plain[..., [0, 1, 2, 3, 4, 5, 8, 9]])
    yaw = torch.atan2(plain[..., 6], plain[..., 7])
    along = torch.cos(yaw - torch.atan2(plain[..., 9], plain[..., 8]))  # (B, Q) heading . motion direction
    centres = plain[..., [0, 1, 4]]  # (B, Q, 3) gravity centres
    uv, depth = samples['cameras'].select(slice(0, 2)).project(centres)  # (B, 2, Q, 2), (B, 2, Q)
    seen = samples['cameras'].select(slice(0, 2)).in_image(uv, depth, (H, W)).any(1) & (depth > 0.1).any(1)
    back = (along < 0) & (plain[..., 8:].norm(dim=-1) > 0.5) & seen
    assert back.any() and (~back).any()
    torch.testing.assert_close(turned[..., 6:8][back], -plain[..., 6:8][back])
    torch.testing.assert_close(turned[..., 6:8][~back], plain[..., 6:8][~back])
    with pytest.raises(ValueError, match='heading_speed'):
        DenseMotion(embed_dims=8, heading_speed=-1.0)


def test_static_flow_against_numpy():
    """Each map pixel unprojected at its depth through the current camera and projected through
    the previous one (numpy), in cells."""
    (k1, m1), (k0, m0) = _rigs()
    both = (np.concatenate([k1, k0]), np.concatenate([m1, m0]))
    cams = batched_cameras(both)
    depth = torch.rand(1, 2, 4, 6) * 20 + 2
    got = static_flow(depth, cams.select(slice(0, 2)), cams.select(slice(2, None)), 16.0).numpy()
    assert got.shape == (1, 2, 2, 4, 6)
    for n in range(2):
        for i in range(4):
            for j in range(6):
                uv = np.array([(j + 0.5) * 16, (i + 0.5) * 16])
                z = float(depth[0, n, i, j])
                cam = np.linalg.inv(k1[n]) @ np.r_[uv, 1.0] * z
                point = np.linalg.inv(m1[n]) @ np.r_[cam, 1.0]
                before = m0[n] @ point
                uv0 = (k0[n] @ before[:3])[:2] / before[2]
                np.testing.assert_allclose(got[0, n, :, i, j], (uv0 - uv) / 16.0, atol=1e-3)


def test_static_warp_centres_the_window():
    """With static_warp the window is centred on the pixel-depth static flow: the match is scored
    relative to it and the flow includes it."""
    with pytest.raises(ValueError, match='static_warp=True needs pixel_loss'):
        build(num_cams=2, num_frames=2, motion=dict(static_warp=True))
    det = build(num_cams=2, num_frames=2, token_loss=dict(), pixel_loss=dict(),
                motion=dict(radius=(1, 2), static_warp=True))
    inputs, samples = _batch()
    det.train()
    losses = det(inputs, samples, mode='loss')
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert det.motion.proj.weight.grad.abs().sum() > 0
    det.eval()
    with torch.no_grad():
        out = det(inputs, samples, mode='tensor')['motion']
    assert out['centre'].abs().sum() > 0  # the ego moved 2.5 m: the static world moves in the image
    torch.manual_seed(0)
    motion = DenseMotion(embed_dims=8, match_dims=4, radius=(1, 2), hidden=4)
    cur, prev = torch.randn(1, 1, 8, 5, 7), torch.randn(1, 1, 8, 5, 7)
    shift = torch.tensor([2.0, 1.0]).view(1, 1, 2, 1, 1).expand(1, 1, 2, 5, 7)
    with torch.no_grad():
        plain, moved = motion(cur, prev, 16.0), motion(cur, prev, 16.0, shift)
        q = torch.nn.functional.normalize(motion.proj(cur[0]), dim=1)
        k = torch.nn.functional.normalize(motion.proj(prev[0]), dim=1)
    expected = correlation(q, DenseMotion._warp(k, shift[0]), (1, 2)) * motion.scale
    torch.testing.assert_close(moved['logits'][0], expected)
    assert not torch.allclose(moved['logits'], plain['logits'])
    # the refinement starts at zero: the flow is the centre plus the expected displacement, in pixels
    prob = expected.softmax(1)
    soft = torch.einsum('mkhw,kc->mchw', prob, motion.displacements)
    torch.testing.assert_close(moved['flow'][0], (shift[0] + soft) * 16.0)


def test_motion_errors():
    with pytest.raises(ValueError, match='motion needs num_frames=2'):
        build(num_cams=2, motion=dict())
    with pytest.raises(ValueError, match='motion needs num_frames=2 and a level below'):
        build(num_cams=2, num_frames=2, motion=dict(level=5))
    with pytest.raises(ValueError, match='radius must be'):
        DenseMotion(embed_dims=8, radius=(1, -2))
    with pytest.raises(ValueError, match='sigma'):
        DenseMotion(embed_dims=8, sigma=0.0)
