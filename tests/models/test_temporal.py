"""Two-frame input of the multi-view detector (sf3d.models.layers.temporal, DETR3DCrossAttention with
num_frames=2, MultiViewDetector(num_frames=2)): where the previous frame is sampled, against numpy;
what reaches the model; errors; and an overfit on two samples that only the previous frame tells apart."""
import math

import numpy as np
import pytest
import torch
from detector_utils import batched_cameras, build, camera, fit, rig, samples_for, single_thread_fixture
from test_detector_training import OVERFIT_GRID, OVERFIT_PC_RANGE, TOKEN_LOSS, render, unmatched

import sf3d.models.heads.detr3d_head as detr3d_head
import sf3d.models.layers.feature_sampling as feature_sampling
from sf3d.models.heads.box_coder import denormalize_points
from sf3d.models.heads.detr3d_head import DETR3DCrossAttention
from sf3d.models.layers.temporal import (VelocityMatching, frame_references, frame_time_deltas, matching_loss,
                                         velocity_grid)
from sf3d.structures import MultiViewCameras

one_thread = single_thread_fixture()


def test_frame_references_against_numpy():
    rng = np.random.default_rng(0)
    ref, vel, dt = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 2)), np.array([[0.0, 0.5], [0.0, 0.25]])
    out = frame_references(*(torch.as_tensor(a, dtype=torch.float32) for a in (ref, vel, dt))).numpy()
    assert out.shape == (2, 2, 5, 3)
    for b in range(2):
        for f in range(2):
            expected = ref[b] - dt[b, f] * np.c_[vel[b], np.zeros(5)]
            np.testing.assert_allclose(out[b, f], expected, atol=1e-6)
    with pytest.raises(ValueError, match='frame_dt'):
        frame_references(torch.zeros(2, 5, 3), torch.zeros(2, 5, 2), torch.zeros(3, 2))


def test_frame_time_deltas_and_errors():
    dt = frame_time_deltas(dict(time_delta=[0.5, 0.0]), 2, 2, torch.device('cpu'))
    assert dt.tolist() == [[0.0, 0.5], [0.0, 0.0]]
    with pytest.raises(KeyError, match="time_delta"):
        frame_time_deltas(dict(cameras=None), 2, 2, torch.device('cpu'))
    with pytest.raises(KeyError, match='1 values for a batch of 2'):
        frame_time_deltas(dict(time_delta=[0.5]), 2, 2, torch.device('cpu'))
    with pytest.raises(ValueError, match='finite and >= 0'):
        frame_time_deltas(dict(time_delta=[0.5, -0.5]), 2, 2, torch.device('cpu'))
    with pytest.raises(ValueError, match='num_frames=2'):
        frame_time_deltas(dict(time_delta=[0.5]), 1, 3, torch.device('cpu'))


def test_matching_loss_against_numpy():
    rng = np.random.default_rng(2)
    logits, hyp, target = rng.normal(size=(4, 9)), rng.normal(size=(4, 9, 2)) * 3, rng.normal(size=(4, 2)) * 3
    log_w = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    soft = np.exp(-((hyp - target[:, None]) ** 2).sum(-1) / (2 * 1.5 ** 2))
    soft /= soft.sum(-1, keepdims=True)
    got = matching_loss(*(torch.as_tensor(a, dtype=torch.float32) for a in (log_w, hyp, target)), sigma=1.5)
    np.testing.assert_allclose(got.numpy(), -(soft * log_w).sum(-1), rtol=1e-5)
    # lowest when the weight sits on the hypothesis nearest the target
    near = np.full((4, 9), -20.0)
    near[np.arange(4), ((hyp - target[:, None]) ** 2).sum(-1).argmin(-1)] = 0.0
    near = torch.as_tensor(near, dtype=torch.float32).log_softmax(-1)
    assert (matching_loss(near, torch.as_tensor(hyp).float(), torch.as_tensor(target).float(), 0.1) < 0.1).all()


def _feats(B, views, C, sizes=((8, 12), (4, 6))):
    return [torch.randn(B, views, C, h, w) for h, w in sizes]


def test_velocity_grid():
    grid = velocity_grid(3, 2.0).numpy()
    expected = np.array([[x, y] for x in (-2.0, 0.0, 2.0) for y in (-2.0, 0.0, 2.0)])
    np.testing.assert_array_equal(grid, expected)
    for bad in ((4, 1.0), (0, 1.0), (3, 0.0)):
        with pytest.raises(ValueError, match='odd integer'):
            velocity_grid(*bad)


def test_cross_attention_samples_the_previous_frame_at_every_hypothesis(monkeypatch):
    """Frame 0 is sampled at the reference with its views; the previous frame's key map (one level)
    with its views at ref - (v + dv_k) * dt for every hypothesis k, and its features at
    ref - matched * dt, against numpy."""
    torch.manual_seed(0)
    B, Q, C, N = 2, 7, 16, 3
    attn = DETR3DCrossAttention(embed_dims=C, num_cams=N, num_levels=2, num_frames=2, dropout=0.0,
                                velocity_matching=dict(grid=3, step=2.0, match_dims=4, level=1))
    feats = _feats(B, 2 * N, C)
    lidar2img = torch.randn(B, 2 * N, 4, 4)
    ref_norm, velocity = torch.rand(B, Q, 3), torch.randn(B, Q, 2) * 3
    frame_dt = torch.tensor([[0.0, 0.5], [0.0, 0.25]])
    calls = []

    def spy(real):
        def sample(f, ref, l2i, shape, *args):
            calls.append((f, ref, l2i))
            return real(f, ref, l2i, shape, *args)
        return sample

    for name in ('sample_features', 'weighted_features'):  # the key map / the frames' weighted samples
        monkeypatch.setattr(detr3d_head, name, spy(getattr(detr3d_head, name)))
    out, (matched, log_w, hyp) = attn(torch.randn(B, Q, C), torch.randn(B, Q, C), ref_norm, feats, lidar2img,
                                      (64, 96), velocity, frame_dt)
    assert out.shape == (B, Q, C) and matched.shape == (B, Q, 2) and len(calls) == 3
    torch.testing.assert_close(hyp, velocity[:, :, None] + torch.as_tensor(
        [[x, y] for x in (-2.0, 0.0, 2.0) for y in (-2.0, 0.0, 2.0)], dtype=torch.float32))
    torch.testing.assert_close((log_w.exp()[..., None] * hyp).sum(2), matched)
    (cur_f, cur_ref, cur_l2i), (key_f, key_pts, key_l2i), (prev_f, prev_ref, prev_l2i) = calls
    ref = denormalize_points(ref_norm, attn.pc_range).numpy()
    torch.testing.assert_close(cur_ref, torch.as_tensor(ref))
    offsets = np.array([[x, y] for x in (-2.0, 0.0, 2.0) for y in (-2.0, 0.0, 2.0)])
    points = key_pts.numpy().reshape(B, Q, 9, 3)
    dt = frame_dt[:, 1].numpy()
    for b in range(B):
        for q in range(Q):
            hyp = velocity[b, q].numpy() + offsets  # (9, 2)
            np.testing.assert_allclose(points[b, q], ref[b, q] - dt[b] * np.c_[hyp, np.zeros(9)], atol=1e-5)
    was = ref - dt[:, None, None] * np.concatenate([matched.detach().numpy(), np.zeros((B, Q, 1))], -1)
    np.testing.assert_allclose(prev_ref.numpy(), was, atol=1e-5)
    assert ((matched - velocity).abs() <= 2.0 + 1e-5).all()  # a convex combination of the hypotheses
    torch.testing.assert_close(key_f[0], attn.velocity_matching.keys(feats[1][:, N:]))
    for got_f, got_l2i, f in ((cur_f, cur_l2i, 0), (prev_f, prev_l2i, 1)):
        torch.testing.assert_close(got_l2i, lidar2img[:, f * N:(f + 1) * N])
        for got, full in zip(got_f, feats):
            torch.testing.assert_close(got, full[:, f * N:(f + 1) * N])
    torch.testing.assert_close(key_l2i, lidar2img[:, N:])
    with pytest.raises(ValueError, match='need velocity'):
        attn(torch.randn(B, Q, C), torch.randn(B, Q, C), ref_norm, feats, lidar2img, (64, 96))
    with pytest.raises(ValueError, match='2 frame'):
        attn(torch.randn(B, Q, C), torch.randn(B, Q, C), ref_norm, [f[:, :N] for f in feats], lidar2img[:, :N],
             (64, 96), velocity, frame_dt)
    with pytest.raises(ValueError, match='velocity_matching only with 2'):
        DETR3DCrossAttention(embed_dims=C, num_frames=1, velocity_matching=dict(grid=3))
    with pytest.raises(ValueError, match='level 2 is not one of the 2 FPN levels'):
        DETR3DCrossAttention(embed_dims=C, num_levels=2, num_frames=2, velocity_matching=dict(level=2))


def test_velocity_matching_finds_the_displaced_feature():
    """A previous frame whose key matches the current feature only at p - v * dt: the softmax puts
    its weight on that hypothesis when the projection is the identity and the match is sharp."""
    C = 4
    match = VelocityMatching(embed_dims=C, match_dims=C, grid=5, step=2.0)
    with torch.no_grad():
        match.query_proj.weight.copy_(torch.eye(C) * 10)
        match.query_proj.bias.zero_()
    current = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])  # (1, 1, C)
    ref, true_v, dt = torch.tensor([[[10.0, 2.0, 0.0]]]), np.array([4.0, -2.0]), 0.5
    was = ref[0, 0, :2].numpy() - true_v * dt

    def key_fn(points):  # the previous frame's key equals the current feature only where the object was
        hit = (points[0, :, :2] - torch.as_tensor(was, dtype=torch.float32)).norm(dim=-1) < 1e-4
        return torch.where(hit[None, :, None], current * 10, torch.tensor([0.0, 10.0, 0.0, 0.0]))  # (1, K, C)

    with torch.no_grad():
        velocity, log_w, _ = match(current, ref, torch.zeros(1, 1, 2), torch.tensor([dt]), key_fn)
        assert log_w.exp().sum().item() == pytest.approx(1.0)
        np.testing.assert_allclose(velocity[0, 0].numpy(), true_v, atol=1e-3)
        # no previous frame (dt = 0): every hypothesis samples the same point, the estimate stays
        same = lambda points: current.expand(1, points.shape[1], C)  # noqa: E731
        velocity, _, _ = match(current, ref, torch.tensor([[[1.0, 3.0]]]), torch.tensor([0.0]), same)
    np.testing.assert_allclose(velocity[0, 0].numpy(), [1.0, 3.0], atol=1e-5)


def test_two_frames_at_dt_zero_reduce_to_one_frame():
    """Identical frames at dt = 0, both frames' attention weights equal and the output projection
    split in two halves: the two-frame attention equals the one-frame attention whose projection is
    the halves' sum (the previous frame is sampled at ref - matched * 0 = ref)."""
    torch.manual_seed(1)
    B, Q, C, N = 1, 5, 8, 2
    two = DETR3DCrossAttention(embed_dims=C, num_cams=N, num_levels=2, num_frames=2, dropout=0.0)
    one = DETR3DCrossAttention(embed_dims=C, num_cams=N, num_levels=2, num_frames=1, dropout=0.0)
    with torch.no_grad():
        w = torch.randn(N * 2, C)
        two.attention_weights.weight.copy_(torch.cat([w, w]))
        one.attention_weights.weight.copy_(w)
        one.output_proj.weight.copy_(two.output_proj.weight[:, :C] + two.output_proj.weight[:, C:])
        one.output_proj.bias.copy_(two.output_proj.bias)
        one.position_encoder.load_state_dict(two.position_encoder.state_dict())
    feats = _feats(B, N, C)
    cams = rig(camera(0.0), camera(math.radians(60)))
    l2i = MultiViewCameras(*cams, image_size=(64, 96)).lidar2img.float()[None]  # (1, N, 4, 4)
    ref_norm = torch.rand(B, Q, 3) * 0.2 + torch.tensor([0.6, 0.5, 0.45])
    q, qp, v = torch.randn(B, Q, C), torch.randn(B, Q, C), torch.randn(B, Q, 2)
    got, (matched, _, _) = two(q, qp, ref_norm, [torch.cat([f, f], 1) for f in feats], torch.cat([l2i, l2i], 1),
                               (64, 96), v, torch.zeros(B, 2))
    expected, none = one(q, qp, ref_norm, feats, l2i, (64, 96))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(matched, v, atol=1e-5, rtol=0)
    assert none is None


def test_decoder_matches_around_the_previous_layers_velocity(monkeypatch):
    """Layer d matches around the velocity code of layer d - 1 (zero for layer 0), and layer d's
    velocity code is its matched velocity plus the regressed residual."""
    det = build(num_cams=2, num_frames=2, head=dict(num_layers=3))
    head = det.head
    B, Q, C = 2, 6, head.decoder.layers[0].cross_attn.output_proj.out_features
    seen, matched = [], []
    for layer in head.decoder.layers:
        layer.cross_attn.register_forward_pre_hook(lambda m, args: seen.append(args[6].clone()))
        layer.cross_attn.register_forward_hook(lambda m, args, out: matched.append(out[1][0].clone()))
    frame_dt = torch.tensor([[0.0, 0.5], [0.0, 0.3]])
    feats = [torch.randn(B, 4, C, math.ceil(64 / s), math.ceil(96 / s)) for s in det.feat_strides]
    cams = batched_cameras(*[rig(camera(0.0), camera(1.0), camera(0.05), camera(1.05))] * B)
    query = torch.randn(B, Q, C)
    with torch.no_grad():
        dec = head.decoder(query, torch.randn(B, Q, C), torch.sigmoid(torch.randn(B, Q, 3)), feats, cams.lidar2img,
                           (64, 96), head.reg_branches, None, frame_dt)
        residual = [head.reg_branches[d](h)[..., 8:10] for d, h in enumerate(dec['hidden_states'])]
    assert len(seen) == 3
    torch.testing.assert_close(seen[0], torch.zeros(B, Q, 2))
    for d in range(3):
        if d:
            torch.testing.assert_close(seen[d], dec['reg_outputs'][d - 1][..., 8:10])
        torch.testing.assert_close(dec['reg_outputs'][d][..., 8:10], matched[d] + residual[d])


def _two_frame_batch(B=2, dt=(0.5, 0.0)):
    cur = rig(camera(0.0), camera(math.radians(75)))
    prev = rig(camera(0.0, centre=(-2.0, 0.0, 0.0)), camera(math.radians(75), centre=(-2.0, 0.0, 0.0)))
    both = (np.concatenate([cur[0], prev[0]]), np.concatenate([cur[1], prev[1]]))
    cams = batched_cameras(*[both] * B)
    boxes = [np.array([[10.0, 1.0, -1.6, 4.0, 1.8, 1.5, 0.2, 3.0, 0.0]])] * B
    samples = samples_for(cams, boxes, [np.array([0])] * B)
    samples['time_delta'] = list(dt)
    return dict(img=torch.randn(B, 4, 3, 64, 96)), samples


def test_detector_two_frames_trains_and_predicts_without_nan():
    det = build(num_cams=2, num_frames=2, token_loss=dict(), pixel_loss=dict(),
                denoising=dict(num_groups=2, ray_negatives=1))
    inputs, samples = _two_frame_batch(dt=(0.5, 0.0))  # the second sample's previous frame fell back (dt 0)
    det.train()
    losses = det(inputs, samples, mode='loss')
    assert all(torch.isfinite(v) for v in losses.values())
    assert not [k for k in losses if 'match' in k]  # the matching's own loss is off by default
    sum(losses.values()).backward()
    assert det.head.decoder.layers[0].cross_attn.attention_weights.weight.grad.abs().sum() > 0
    det.eval()
    with torch.no_grad():
        preds = det(inputs, samples, mode='predict')
        out = det(inputs, samples, mode='tensor')
        prev_changed = dict(img=inputs['img'].clone())
        prev_changed['img'][:, 2:] = torch.randn(2, 2, 3, 64, 96)
        moved = det(prev_changed, samples, mode='tensor')
    assert all(torch.isfinite(p['pred_instances_3d']['bboxes_3d'].tensor).all() for p in preds)
    assert not torch.allclose(out['all_bbox_preds'], moved['all_bbox_preds'])  # the previous frame is read
    torch.testing.assert_close(out['ref_points'], moved['ref_points'])  # queries come from the current frame


def test_previous_frame_gradient_is_optional():
    inputs, samples = _two_frame_batch()
    inputs['img'].requires_grad_(True)
    for grad, expected in ((False, False), (True, True)):
        det = build(num_cams=2, num_frames=2, prev_frame_grad=grad).train()
        inputs['img'].grad = None
        sum(det(inputs, samples, mode='loss').values()).backward()
        assert inputs['img'].grad[:, :2].abs().sum() > 0
        assert (inputs['img'].grad[:, 2:].abs().sum() > 0) == expected


def test_detector_two_frame_errors():
    det = build(num_cams=2, num_frames=2).eval()
    inputs, samples = _two_frame_batch()
    with pytest.raises(ValueError, match='expects 2 x 2 views'):
        det(dict(img=inputs['img'][:, :2]), dict(samples, cameras=samples['cameras'].select(slice(0, 2))))
    with pytest.raises(KeyError, match='time_delta'):
        det(inputs, {k: v for k, v in samples.items() if k != 'time_delta'})
    with pytest.raises(ValueError, match='num_frames must be 1 or 2'):
        build(num_cams=2, num_frames=3)
    with pytest.raises(ValueError, match='frame_dt'):
        build(num_cams=2).head(torch.zeros(1, 3, 32), torch.zeros(1, 3, 32), torch.zeros(1, 3, 3),
                               [torch.zeros(1, 2, 32, 8, 12)] * 3, torch.eye(4).expand(1, 2, 4, 4), (64, 96),
                               frame_dt=torch.zeros(1, 2))


# ---------------------------------------------------------------------------------- overfit
# Two samples with the SAME current views and GT positions: the car drives +6 m/s in one, -6 m/s in
# the other, so only the previous frame (0.5 s earlier, the ego 1 m further back) tells them apart.
# A single-frame model can only predict one velocity for both.
MOVING_GT = np.array([  # x, y, z_bottom, l, w, h, yaw, label
    [12.0, 2.0, -1.6, 4.2, 1.8, 1.6, 0.0, 0],   # car, front (moves)
    [9.0, -4.0, -1.6, 0.7, 0.7, 1.8, 0.0, 7],   # pedestrian, front
    [3.0, 13.0, -1.6, 7.0, 2.5, 3.0, 1.2, 1],   # truck, left
])
SPEED, DT, EGO_STEP = 6.0, 0.5, 1.0


def _moving_batch():
    yaws = (0.0, math.radians(75), math.radians(-75))
    cur = rig(*(camera(y) for y in yaws))
    prev = rig(*(camera(y, centre=(0.5 - EGO_STEP, 0.0, 0.0)) for y in yaws))  # current LiDAR frame
    imgs, boxes = [], []
    for sign in (1.0, -1.0):
        vel = np.zeros((len(MOVING_GT), 2))
        vel[0, 0] = sign * SPEED
        before = MOVING_GT.copy()
        before[:, :2] -= vel * DT
        imgs.append(torch.cat([render(*cur, MOVING_GT), render(*prev, before)]))  # (2 * 3, 3, H, W)
        boxes.append(np.c_[MOVING_GT[:, :7], vel])
    both = (np.concatenate([cur[0], prev[0]]), np.concatenate([cur[1], prev[1]]))
    samples = samples_for(batched_cameras(both, both), boxes, [MOVING_GT[:, 7]] * 2)
    samples['time_delta'] = [DT, DT]
    return dict(img=torch.stack(imgs)), samples


@pytest.fixture(scope='module')
def moving_overfit():
    inputs, samples = _moving_batch()
    det = build(num_cams=3, num_frames=2, grid=OVERFIT_GRID, token_loss=TOKEN_LOSS, depth_range=(1.0, 18.0),
                head=dict(pc_range=OVERFIT_PC_RANGE, code_weights=(1.0,) * 10))
    fit(det, inputs, samples, 250, 50)
    return det.eval(), inputs, samples


def _previous_position_errors(det, inputs, samples):
    """Per sample and GT: the distance (m) from the matched prediction's previous position,
    centre - velocity * dt, to the GT's previous position (inf where no prediction matches)."""
    with torch.no_grad():
        preds = det(inputs, samples, mode='predict')
    errors = []
    for pred, gt in zip(preds, samples['gt_bboxes_3d']):
        p, g = pred['pred_instances_3d']['bboxes_3d'].tensor, gt.tensor
        assert unmatched(pred['pred_instances_3d'], g, torch.as_tensor(MOVING_GT[:, 7]).long())[0] == []
        best = pred['pred_instances_3d']['scores_3d'] > 0.3
        was = lambda t: t[:, :2] - DT * t[:, 7:9]  # noqa: E731
        dist = torch.cdist(g[:, :2], p[best, :2])  # (G, P) current centres
        errors.append((was(p[best])[dist.argmin(1)] - was(g)).norm(dim=-1))
    return torch.stack(errors)  # (B, G)


def test_previous_position_of_a_mover_lands_on_its_previous_gt(moving_overfit):
    det, inputs, samples = moving_overfit
    errors = _previous_position_errors(det, inputs, samples)
    assert (errors < 0.75).all(), errors  # 12 m/s apart: a shared velocity would be >= 3 m off for one


def test_velocity_follows_the_previous_frame(moving_overfit):
    """Control: swapping the two samples' previous frames swaps the car's predicted velocity."""
    det, inputs, samples = moving_overfit
    swapped = dict(img=inputs['img'].clone())
    swapped['img'][:, 3:] = inputs['img'][[1, 0], 3:]
    with torch.no_grad():
        preds = det(swapped, samples, mode='predict')
    for pred, sign in zip(preds, (-1.0, 1.0)):
        inst = pred['pred_instances_3d']
        car = (inst['bboxes_3d'].tensor[:, :2] - torch.tensor([12.0, 2.0])).norm(dim=-1).argmin()
        assert sign * inst['bboxes_3d'].tensor[car, 7] > 2.0


def test_two_frame_geometry_stays_fp32_under_bf16_autocast(monkeypatch):
    """Under bf16 autocast every sampled point (current, hypotheses, matched) is float32 metres."""
    det = build(num_cams=2, num_frames=2).train()
    inputs, samples = _two_frame_batch()
    dtypes = []
    real = feature_sampling.project_points

    def spy(ref, l2i, shape, eps):  # every sampling of the head projects its points here
        dtypes.append(ref.dtype)
        return real(ref, l2i, shape, eps)

    monkeypatch.setattr(feature_sampling, 'project_points', spy)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses = det(inputs, samples, mode='loss')
    assert all(torch.isfinite(v) for v in losses.values())
    assert len(dtypes) == 3 * len(det.head.decoder.layers) and set(dtypes) == {torch.float32}


def test_matching_loss_supervises_matched_and_denoising_queries():
    """loss_match of every layer equals matching_loss over the queries the Hungarian step matched
    (and the positive DN queries), against their GT velocities; it trains the match projections."""
    det = build(num_cams=2, num_frames=2, denoising=dict(num_groups=2, ray_negatives=1),
                head=dict(velocity_matching=dict(grid=3, step=2.0, loss_weight=0.5))).train()
    inputs, samples = _two_frame_batch()
    head = det.head
    seen = {}
    real = head._match_loss

    def spy(losses, prefix, match, rows, velocity, num):
        seen[prefix] = (match, rows, velocity, num)
        return real(losses, prefix, match, rows, velocity, num)

    head._match_loss = spy
    losses = det(inputs, samples, mode='loss')
    L = len(head.decoder.layers)
    for prefix in [''] + [f'd{i}.' for i in range(L - 1)] + ['dn.'] + [f'dn.d{i}.' for i in range(L - 1)]:
        (log_w, hyp), rows, velocity, num = seen[prefix]
        assert rows.sum() > 0 and velocity.shape == (int(rows.sum()), 2)
        np.testing.assert_allclose(velocity.numpy(), [[3.0, 0.0]] * len(velocity), atol=1e-6)  # the GT's velocity
        expected = 0.5 * matching_loss(log_w[rows], hyp[rows], velocity, 1.0).sum() / num
        torch.testing.assert_close(losses[f'{prefix}loss_match'], expected)
    losses['loss_match'].backward()
    match = head.decoder.layers[-1].cross_attn.velocity_matching
    assert match.query_proj.weight.grad.abs().sum() > 0 and match.key_proj.weight.grad.abs().sum() > 0
