"""DETR3D-style head: feature sampling, box code, Hungarian matching, decoder, losses (normalised
over ranks), DETR3D's initialisation, overfit."""
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sf3d.models.heads.assigner import HungarianAssigner3D, focal_cost
from sf3d.models.heads.box_coder import NMSFreeDecoder, decode_boxes, encode_boxes
from sf3d.models.heads.detr3d_head import DETR3DHead
from sf3d.models.layers.feature_sampling import sample_features, weighted_features
from sf3d.structures import LiDARBoxes

H, W = 32, 48  # padded input
STRIDES = (4, 8)


def _lidar2img(yaws, f=20.0, t=(0.3, -0.2, 0.1)):
    """numpy (N, 4, 4): pinhole cameras at t looking horizontally along each yaw."""
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    out = []
    for yaw in yaws:
        z = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        x = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
        R = np.stack([x, np.array([0, 0, -1.0]), z])  # LiDAR -> camera rotation
        m = np.eye(4)
        m[:3, :3] = K @ R
        m[:3, 3] = K @ (-R @ np.asarray(t))
        out.append(m)
    return np.stack(out)


def _coded_feats(B, N):
    """Per level (B, N, 4, H_l, W_l): channels = cam + 1, level + 1, row index, column index."""
    feats = []
    for lvl, s in enumerate(STRIDES):
        h, w = H // s, W // s
        f = torch.zeros(B, N, 4, h, w)
        f[:, :, 0] = torch.arange(N, dtype=torch.float32)[None, :, None, None] + 1
        f[:, :, 1] = lvl + 1
        f[:, :, 2] = torch.arange(h, dtype=torch.float32)[:, None]
        f[:, :, 3] = torch.arange(w, dtype=torch.float32)[None, :]
        feats.append(f)
    return feats


def test_feature_sampling_matches_numpy_projection():
    rng = np.random.default_rng(0)
    B, N, Q = 2, 3, 400
    l2i = np.stack([_lidar2img([0.0, 2.1, -2.1]), _lidar2img([0.5, 2.6, -1.6])])  # (B, N, 4, 4)
    pts = rng.uniform([-15, -15, -3], [15, 15, 3], size=(B, Q, 3))
    pts[:, 0] = [-5.0, 0.0, 0.0]  # behind camera 0 (and off the others' images)
    feats = _coded_feats(B, N)
    sampled, mask = sample_features(feats, torch.tensor(pts, dtype=torch.float32),
                                    torch.tensor(l2i, dtype=torch.float32), (H, W))
    assert sampled.shape == (B, 4, Q, N, len(STRIDES)) and mask.shape == (B, Q, N)
    # independent reference: homogeneous projection in float64
    hom = np.concatenate([pts, np.ones((B, Q, 1))], -1)
    cam = np.einsum('bnij,bqj->bqni', l2i, hom)  # (B, Q, N, 4)
    depth = cam[..., 2]
    u = cam[..., 0] / np.maximum(depth, 1e-5)
    v = cam[..., 1] / np.maximum(depth, 1e-5)
    ref_mask = (depth > 1e-5) & (u > 0) & (u < W) & (v > 0) & (v < H)
    assert ref_mask.sum() > 50 and (~ref_mask).sum() > 50
    np.testing.assert_array_equal(mask.numpy(), ref_mask)
    assert not ref_mask[:, 0, 0].any()
    s = sampled.numpy()
    assert (s.transpose(0, 2, 3, 4, 1)[~ref_mask] == 0).all()  # masked points read zeros
    # interior points (half a coarse pixel from the border): bilinear reads exact (cam, level, row, col)
    margin = max(STRIDES) / 2
    inner = ref_mask & (u > margin) & (u < W - margin) & (v > margin) & (v < H - margin)
    assert inner.sum() > 30
    for lvl, st in enumerate(STRIDES):
        val = s[..., lvl].transpose(0, 2, 3, 1)  # (B, Q, N, 4)
        cams = np.broadcast_to(np.arange(N) + 1.0, inner.shape)
        np.testing.assert_allclose(val[..., 0][inner], cams[inner], atol=1e-5)
        np.testing.assert_allclose(val[..., 1][inner], lvl + 1, atol=1e-5)
        np.testing.assert_allclose(val[..., 2][inner], (v / st - 0.5)[inner], atol=2e-3)
        np.testing.assert_allclose(val[..., 3][inner], (u / st - 0.5)[inner], atol=2e-3)


def test_feature_sampling_bad_input():
    feats = _coded_feats(1, 2)
    l2i = torch.tensor(_lidar2img([0.0, 1.0]), dtype=torch.float32)[None]
    with pytest.raises(ValueError, match='ref_points'):
        sample_features(feats, torch.zeros(1, 5, 2), l2i, (H, W))
    with pytest.raises(ValueError, match=r'feats\[0\]'):
        sample_features([f[:, :1] for f in feats], torch.zeros(1, 5, 3), l2i, (H, W))


def test_weighted_features_is_the_weighted_sum_of_the_samples():
    """DETR3D's weighted sum over cameras x levels, computed level by level on the points each camera
    sees, equals the sum over the dense (B, C, Q, N, L) samples, values and gradients (features,
    weights, points); points no camera sees (behind, off the image) give zero."""
    rng = np.random.default_rng(1)
    B, N, Q = 2, 3, 50
    l2i = torch.tensor(np.stack([_lidar2img([0.0, 2.1, -2.1]), _lidar2img([0.5, 2.6, -1.6])]), dtype=torch.float32)
    pts = torch.tensor(rng.uniform([-15, -15, -3], [15, 15, 3], size=(B, Q, 3)), dtype=torch.float32)
    pts[:, 0] = torch.tensor([0.0, 0.0, 40.0])  # straight above: no camera sees it
    feats = [torch.randn(B, N, 5, H // s, W // s) for s in STRIDES]
    weights = torch.rand(B, Q, N, len(STRIDES))
    grads = []
    for dense in (True, False):
        leaves = [x.clone().requires_grad_() for x in (pts, weights, *feats)]
        p, w, f = leaves[0], leaves[1], leaves[2:]
        if dense:
            sampled, mask = sample_features(f, p, l2i, (H, W))  # (B, C, Q, N, L), (B, Q, N)
            out = expected = (sampled * w[:, None]).sum((-1, -2)).transpose(1, 2)  # (B, Q, C)
        else:
            out = got = weighted_features(f, p, l2i, (H, W), w)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        grads.append([x.grad for x in leaves])
    torch.testing.assert_close(got, expected)
    for dense_grad, seen_grad in zip(*grads):
        torch.testing.assert_close(seen_grad, dense_grad)
    assert 0 < mask.sum(-1).max() < N and mask.any() and not mask[:, 0].any() and (got[:, 0] == 0).all()
    with pytest.raises(ValueError, match='L=1'):
        weighted_features(feats, pts, l2i, (H, W), weights[..., :1])


def test_box_code_round_trip_and_yaw_wrap():
    torch.manual_seed(0)
    n = 50
    boxes = torch.cat([torch.randn(n, 3) * 10, torch.rand(n, 3) * 4 + 0.2,
                       (torch.rand(n, 1) - 0.5) * 6 * math.pi, torch.randn(n, 2)], 1).double()
    code = encode_boxes(boxes)
    assert code.shape == (n, 10)
    np.testing.assert_allclose(code[:, 4], boxes[:, 2] + boxes[:, 5] / 2)  # gravity centre
    back = decode_boxes(code)
    wrapped = torch.remainder(boxes[:, 6] + math.pi, 2 * math.pi) - math.pi
    np.testing.assert_allclose(back[:, [0, 1, 2, 3, 4, 5, 7, 8]], boxes[:, [0, 1, 2, 3, 4, 5, 7, 8]], atol=1e-9)
    np.testing.assert_allclose(back[:, 6], wrapped, atol=1e-9)
    hand = encode_boxes(torch.tensor([[1.0, 2.0, -1.0, math.e, 1.0, 2.0, math.pi / 2, 3.0, 4.0]]))
    np.testing.assert_allclose(hand[0], [1, 2, 1, 0, 0, math.log(2), 1, 0, 3, 4], atol=1e-6)
    with pytest.raises(ValueError, match='encode_boxes'):
        encode_boxes(torch.zeros(3, 7))


def test_hungarian_recovers_permutation_and_is_optimal():
    torch.manual_seed(0)
    G, Q, K = 5, 9, 10
    gt = torch.cat([torch.randn(G, 3) * 10, torch.rand(G, 3) + 0.5, torch.randn(G, 3)], 1)
    labels = torch.tensor([0, 3, 3, 7, 9])
    codes = encode_boxes(gt)
    perm = torch.randperm(Q)[:G]  # query perm[g] predicts GT g
    preds = torch.randn(Q, 10) * 10 + 30
    preds[perm] = codes + 0.01 * torch.randn(G, 10)
    logits = torch.full((Q, K), -5.0)
    logits[perm, labels] = 5.0
    p_idx, g_idx = HungarianAssigner3D().assign(logits, preds, labels, codes)
    assert dict(zip(g_idx.tolist(), p_idx.tolist())) == dict(enumerate(perm.tolist()))
    # optimality against brute force on a small random problem
    logits, preds = torch.randn(4, K), torch.randn(4, 10)
    labels, codes = torch.tensor([1, 2, 2]), torch.randn(3, 10)
    cost = (2.0 * focal_cost(logits, labels) + 0.25 * torch.cdist(preds[:, :8], codes[:, :8], p=1)).numpy()
    best = min(sum(cost[q, g] for g, q in enumerate(qs)) for qs in itertools.permutations(range(4), 3))
    p_idx, g_idx = HungarianAssigner3D().assign(logits, preds, labels, codes)
    assert math.isclose(cost[p_idx.numpy(), g_idx.numpy()].sum(), best, rel_tol=1e-6)
    p_idx, g_idx = HungarianAssigner3D().assign(logits, preds, labels[:0], codes[:0])
    assert p_idx.numel() == 0 and g_idx.numel() == 0


def test_nms_free_decoder_hand_case():
    logits = torch.full((4, 3), -10.0)
    logits[0, 1], logits[2, 0], logits[3, 2], logits[1, 1] = 3.0, 2.0, 1.0, 0.0
    codes = torch.zeros(4, 10)
    codes[:, 7] = 1.0  # cos yaw
    codes[:, 0] = torch.tensor([1.0, 2.0, 70.0, 4.0])  # query 2 lies outside post_center_range
    codes[:, 4] = torch.tensor([0.5, 0.5, 0.5, -9.0])
    out = NMSFreeDecoder(num_classes=3, max_num=3).decode(logits[None], codes[None])[0]
    # top-3 pairs: (q0, c1), (q2, c0), (q3, c2); q2 is dropped by the range filter
    assert out['labels_3d'].tolist() == [1, 2]
    np.testing.assert_allclose(out['scores_3d'], torch.sigmoid(torch.tensor([3.0, 1.0])))
    np.testing.assert_allclose(out['bboxes_3d'][:, 0], [1.0, 4.0])
    np.testing.assert_allclose(out['bboxes_3d'][:, 2], [0.0, -9.5])  # bottom z = cz - h / 2 (h = 1)
    assert out['bboxes_3d'].shape == (2, 9)


def _tiny_head(**kw):
    return DETR3DHead(num_classes=10, embed_dims=32, num_heads=4, ffn_dims=64, num_layers=2, num_cams=3,
                      num_levels=2, **kw)


def _inputs(B=2, Q=12, C=32, seed=0, ref=None):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(B, 3, C, H // s, W // s, generator=g) for s in STRIDES]
    l2i = torch.tensor(_lidar2img([0.0, 2.1, -2.1]), dtype=torch.float32).expand(B, 3, 4, 4)
    if ref is None:
        ref = torch.rand(B, Q, 3, generator=g) * torch.tensor([40.0, 40.0, 4.0]) - torch.tensor([20.0, 20.0, 2.0])
    return (torch.randn(B, Q, C, generator=g), torch.randn(B, Q, C, generator=g), ref, feats, l2i, (H, W))


def test_head_shapes_and_predict():
    torch.manual_seed(0)
    head = _tiny_head(max_num=7).eval()
    out = head(*_inputs())
    assert out['all_cls_scores'].shape == (2, 2, 12, 10) and out['all_bbox_preds'].shape == (2, 2, 12, 10)
    centres = out['all_bbox_preds'][..., [0, 1, 4]]
    lo, hi = torch.tensor([-51.2, -51.2, -5.0]), torch.tensor([51.2, 51.2, 3.0])
    assert ((centres >= lo) & (centres <= hi)).all()
    dec = head.decoder(*_inputs()[:2], torch.rand(2, 12, 3), *_inputs()[3:], head.reg_branches)
    assert dec['hidden_states'].shape == (2, 2, 12, 32) and not dec['references'][1].requires_grad
    preds = head.predict(out)
    assert len(preds) == 2 and preds[0]['bboxes_3d'].shape == (7, 9) and preds[0]['labels_3d'].dtype == torch.long
    with pytest.raises(ValueError, match='levels'):
        head(*_inputs()[:3], _inputs()[3][:1], *_inputs()[4:])


@pytest.mark.parametrize('behind', [False, True])
def test_loss_zero_gt_and_no_projection(behind):
    torch.manual_seed(0)
    head = _tiny_head()
    ref = None
    if behind:  # straight above the horizontal cameras: behind them or far outside every image
        ref = torch.tensor([0.0, 0.0, 50.0]).expand(2, 12, 3).clone()
    args = _inputs(ref=ref)
    if behind:
        assert not sample_features(args[3], ref, args[4], (H, W))[1].any()
    out = head(*args)
    gt_boxes = [LiDARBoxes(torch.zeros(0, 9)), torch.tensor([[1.0, 2.0, -1.0, 4.0, 2.0, 1.5, 0.3, 1.0, float('nan')]])]
    losses = head.loss(out, gt_boxes, [torch.zeros(0, dtype=torch.long), torch.tensor([4])])
    assert set(losses) == {'loss_cls', 'loss_bbox', 'd0.loss_cls', 'd0.loss_bbox'}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)
    empty = head.loss(head(*args), [torch.zeros(0, 9)] * 2, [torch.zeros(0, dtype=torch.long)] * 2)
    assert empty['loss_bbox'].item() == 0.0 and torch.isfinite(sum(empty.values()))
    sum(empty.values()).backward()


def test_loss_bad_input():
    head = _tiny_head()
    out = head(*_inputs())
    with pytest.raises(ValueError, match='sample 0'):
        head.loss(out, [torch.zeros(2, 9), torch.zeros(0, 9)], [torch.tensor([1]), torch.zeros(0)])


@pytest.fixture
def one_thread():
    """Tiny ops run faster on one thread (and the test machine is shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def overfit(head, args, gt, labels, steps=200):
    """Train ``head`` on one sample (Adam 3e-3, cosine) -> its predictions for that sample."""
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        loss = sum(head.loss(head(*args), [gt], [labels]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return head.predict(head(*args))[0]


def test_tiny_overfit_reaches_gt(one_thread):
    torch.manual_seed(0)
    head = _tiny_head(dropout=0.0)
    args = _inputs(B=1, Q=20, seed=1)
    gt = torch.tensor([[5.0, 3.0, -1.5, 4.2, 1.9, 1.6, 0.4, 2.0, 0.0],
                       [-8.0, 6.0, -1.0, 0.8, 0.7, 1.7, -1.2, 0.0, 0.5],
                       [2.0, -12.0, -0.5, 10.0, 2.8, 3.5, 2.5, -1.0, 1.0]])
    labels = torch.tensor([0, 7, 3])
    pred = overfit(head, args, gt, labels)
    top = pred['bboxes_3d'][:3]
    assert sorted(pred['labels_3d'][:3].tolist()) == sorted(labels.tolist())
    for box, lab in zip(top, pred['labels_3d'][:3]):
        g = gt[labels == lab][0]
        assert torch.linalg.norm(box[:3] - g[:3]) < 0.5, (box, g)


# ---------------------------------------------------------------- initialisation (DETR3D)
def _uniform_law(w: torch.Tensor, bound: float) -> None:
    """w looks drawn from U(-bound, bound): inside the bound and std within 5 % of bound / sqrt(3)."""
    assert w.abs().max() <= bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05), (tuple(w.shape), bound)


def test_init_matches_detr3d():
    """DETR3D's Detr3DTransformer.init_weights + Detr3DHead.init_weights at the nuScenes config's sizes:
    xavier_uniform on every >= 2-D decoder weight (self-attention q, k, v as ONE (3C, C) in_proj of
    nn.MultiheadAttention, zero biases), cross-attention weights zero, output_proj xavier with zero bias,
    classifier bias at prior 0.01; the branches keep nn.Linear's default U(+-1 / sqrt(fan_in))."""
    torch.manual_seed(0)
    C = 256
    head = DETR3DHead(embed_dims=C, num_heads=8, ffn_dims=512, num_layers=2, num_cams=6, num_levels=4)
    xavier = lambda w: math.sqrt(6.0 / (w.shape[0] + w.shape[1]))  # noqa: E731  fan_out, fan_in = shape
    checked = 0
    for name, p in head.decoder.named_parameters():
        leaf = name.split('.', 2)[-1]  # layers.{i}.self_attn.q.weight -> self_attn.q.weight
        if leaf.startswith('cross_attn.attention_weights'):
            assert (p == 0).all(), name
        elif leaf.startswith(('self_attn.q.', 'self_attn.k.', 'self_attn.v.')) and p.dim() == 2:
            _uniform_law(p, math.sqrt(6.0 / (C + 3 * C)))
        elif p.dim() > 1:
            _uniform_law(p, xavier(p))
        elif leaf.startswith(('self_attn.', 'cross_attn.output_proj.')):
            assert (p == 0).all(), name  # attention and output-projection biases
        checked += p.dim() > 1
    assert checked == 2 * (4 + 2 + 2 + 2)  # per layer: q k v proj, attention_weights + output_proj, 2 pos, 2 ffn
    prior = -math.log(0.99 / 0.01)
    for cls, reg in zip(head.cls_branches, head.reg_branches):
        torch.testing.assert_close(cls[-1].bias, torch.full((10,), prior))
        for lin in [m for m in (*cls, *reg) if isinstance(m, torch.nn.Linear)]:
            _uniform_law(lin.weight, 1 / math.sqrt(lin.in_features))


# ---------------------------------------------------------------- loss normaliser over ranks
# #GT of (rank 0, rank 1) per case -> the normaliser both ranks must use: their mean, at least 1.
_RANK_GT = [(0, 4), (1, 3), (2, 2), (0, 1)]
_RANK_NORM = [2.0, 2.0, 2.0, 1.0]


def _rank_case(rank: int, case: int):
    """The same head on both ranks; rank-specific outputs (1 sample, 6 queries) and GT."""
    torch.manual_seed(0)
    head = _tiny_head()
    g = torch.Generator().manual_seed(10 * case + rank)
    outputs = dict(all_cls_scores=torch.randn(2, 1, 6, 10, generator=g),
                   all_bbox_preds=torch.randn(2, 1, 6, 10, generator=g))
    n = _RANK_GT[case][rank]
    boxes = torch.cat([torch.randn(n, 3, generator=g) * 5, torch.rand(n, 3, generator=g) + 1,
                       torch.randn(n, 3, generator=g)], 1)
    labels = torch.randint(0, 10, (n,), generator=g)
    return head, outputs, [boxes], [labels]


def _normaliser_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        synced = [{k: v.item() for k, v in head.loss(out, b, lab).items()}
                  for head, out, b, lab in (_rank_case(rank, c) for c in range(len(_RANK_GT)))]
    finally:
        torch.distributed.destroy_process_group()
    (Path(out_dir) / f'rank{rank}.json').write_text(json.dumps(synced))


def test_loss_normaliser_is_averaged_over_ranks(tmp_path):
    """DETR3D's sync_cls_avg_factor / reduce_mean: with 2 gloo ranks each rank divides its summed
    losses by the mean #GT of the ranks (clamped to 1 after averaging), not by its own count."""
    torch.multiprocessing.spawn(_normaliser_worker, args=(str(tmp_path / 'pg'), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        synced = json.loads((tmp_path / f'rank{rank}.json').read_text())
        for case, (counts, norm) in enumerate(zip(_RANK_GT, _RANK_NORM)):
            head, out, boxes, labels = _rank_case(rank, case)
            local = head.loss(out, boxes, labels)  # no process group: divided by max(own #GT, 1)
            own = max(counts[rank], 1)
            for key, value in local.items():
                assert synced[case][key] == pytest.approx(value.item() * own / norm, rel=1e-5), (rank, case, key)
            if counts[rank] == 0:  # no GT: all-background focal loss over every logit, by hand (numpy)
                logits = out['all_cls_scores'][-1].double().numpy()
                p = 1 / (1 + np.exp(-logits))
                focal = (0.75 * -np.log(1 - p) * p ** 2).sum()
                assert synced[case]['loss_cls'] == pytest.approx(2.0 * focal / norm, rel=1e-5)
