"""Fixed (pre-decided) query-GT pairs in the Hungarian matching: ``HungarianAssigner3D.assign(...,
fixed=(pred_idx, gt_idx))`` against a brute-force optimum of the reduced problem, and
``token_loss=dict(assign=True)`` in MultiViewDetector end to end (each GT's owner token is its
query at every decoder layer; the head losses equal a numpy focal + L1 recomputation under that
matching and differ from ``assign=False`` only through it).

Problems are tiny (<= 9 queries for the assigner, 3 x 6 token queries on 64x96 views end to end)
and every test runs single-threaded."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from detector_utils import (H, K, W, batched_cameras, build, camera, np_focal_sum, np_project, np_unproject, rig,
                            samples_for, single_thread_fixture)
from sf3d.models.detectors.multiview_detector import token_targets
from sf3d.models.heads.assigner import HungarianAssigner3D
from sf3d.structures import MultiViewCameras

GRID = (2, 3)  # the token grid of build()'s default backbone

one_thread = single_thread_fixture()


# ---------------------------------------------------------------------------------- numpy reference
def np_cost(logits, preds, labels, codes, cls_weight=2.0, reg_weight=0.25, alpha=0.25, gamma=2.0):
    """DETR3D's matching cost in numpy: (Q, K), (Q, 10), (G,), (G, 10) -> (Q, G)."""
    p = 1 / (1 + np.exp(-np.asarray(logits, dtype=np.float64)))[:, labels]  # (Q, G)
    pos = -np.log(p + 1e-12) * alpha * (1 - p) ** gamma
    neg = -np.log(1 - p + 1e-12) * (1 - alpha) * p ** gamma
    l1 = np.abs(np.asarray(preds, dtype=np.float64)[:, None, :8] - np.asarray(codes, dtype=np.float64)[None, :, :8])
    return cls_weight * (pos - neg) + reg_weight * l1.sum(-1)


def brute_force(cost):
    """Minimum total cost of a one-to-one matching of min(Q, G) pairs of a (Q, G) cost -> (total, set of pairs)."""
    Q, G = cost.shape
    if min(Q, G) == 0:
        return 0.0, set()
    if G <= Q:
        pairs = (tuple(zip(qs, range(G))) for qs in itertools.permutations(range(Q), G))
    else:
        pairs = (tuple(zip(range(Q), gs)) for gs in itertools.permutations(range(G), Q))
    return min((sum(cost[q, g] for q, g in p), set(p)) for p in pairs)


def problem(Q, G, seed):
    gen = torch.Generator().manual_seed(seed)
    logits, preds = torch.randn(Q, K, generator=gen) * 2, torch.randn(Q, 10, generator=gen)
    labels, codes = torch.randint(0, K, (G,), generator=gen), torch.randn(G, 10, generator=gen)
    return logits, preds, labels, codes


# ---------------------------------------------------------------------------------- the assigner
@pytest.mark.parametrize('Q, G, fixed_pred, fixed_gt', [
    (7, 5, [2, 5], [3, 0]),
    (9, 4, [8], [1]),
    (4, 6, [3, 0], [5, 1]),        # fewer queries than GT
    (6, 3, [1, 4, 0], [2, 0, 1]),  # every GT fixed
    (3, 3, [0, 1, 2], [2, 0, 1]),  # everything fixed
    (5, 4, [], []),                # nothing fixed: plain Hungarian
])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_fixed_pairs_are_kept_and_the_rest_is_optimal(Q, G, fixed_pred, fixed_gt, seed):
    logits, preds, labels, codes = problem(Q, G, seed)
    fixed = (torch.tensor(fixed_pred, dtype=torch.long), torch.tensor(fixed_gt, dtype=torch.long))
    p_idx, g_idx = HungarianAssigner3D().assign(logits, preds, labels, codes, fixed=fixed)
    assert p_idx.dtype == g_idx.dtype == torch.int64 and p_idx.shape == g_idx.shape == (min(Q, G),)
    assert len(set(p_idx.tolist())) == len(p_idx) and len(set(g_idx.tolist())) == len(g_idx)  # each at most once
    pairs = set(zip(p_idx.tolist(), g_idx.tolist()))
    assert set(zip(fixed_pred, fixed_gt)) <= pairs
    cost = np_cost(logits.numpy(), preds.numpy(), labels.numpy(), codes.numpy())
    free_q = [q for q in range(Q) if q not in fixed_pred]
    free_g = [g for g in range(G) if g not in fixed_gt]
    best, best_pairs = brute_force(cost[np.ix_(free_q, free_g)])
    rest = pairs - set(zip(fixed_pred, fixed_gt))
    assert rest == {(free_q[q], free_g[g]) for q, g in best_pairs}
    assert math.isclose(sum(cost[q, g] for q, g in rest), best, rel_tol=1e-6, abs_tol=1e-9)


def test_fixed_pairs_override_the_optimum():
    """A fixed pair the optimum would not use costs more than the unconstrained matching, and the
    other GT move to other queries."""
    logits, preds, labels, codes = problem(6, 3, seed=3)
    cost = np_cost(logits.numpy(), preds.numpy(), labels.numpy(), codes.numpy())
    opt_cost, opt_pairs = brute_force(cost)
    q_bad = max(range(6), key=lambda q: cost[q, 0])  # the worst query for GT 0
    assert (q_bad, 0) not in opt_pairs
    p_idx, g_idx = HungarianAssigner3D().assign(logits, preds, labels, codes, fixed=(torch.tensor([q_bad]),
                                                                                      torch.tensor([0])))
    pairs = set(zip(p_idx.tolist(), g_idx.tolist()))
    assert (q_bad, 0) in pairs and len(pairs) == 3
    assert sum(cost[q, g] for q, g in pairs) > opt_cost
    plain = HungarianAssigner3D().assign(logits, preds, labels, codes)
    assert set(zip(plain[0].tolist(), plain[1].tolist())) == opt_pairs
    empty = HungarianAssigner3D().assign(logits, preds, labels, codes, fixed=(torch.zeros(0, dtype=torch.long),) * 2)
    assert torch.equal(empty[0], plain[0]) and torch.equal(empty[1], plain[1])


@pytest.mark.parametrize('fixed_pred, fixed_gt', [([1, 1], [0, 2]), ([0, 3], [2, 2]), ([4, 4, 2], [1, 1, 0])])
def test_duplicate_fixed_indices_raise(fixed_pred, fixed_gt):
    logits, preds, labels, codes = problem(6, 4, seed=0)
    with pytest.raises(ValueError, match='at most once'):
        HungarianAssigner3D().assign(logits, preds, labels, codes, fixed=(torch.tensor(fixed_pred),
                                                                          torch.tensor(fixed_gt)))


# ---------------------------------------------------------------------------------- scenes
def np_owners(ks, l2cs, centres, grid=GRID):
    """The owner rule of the token supervision in numpy: a centre in front of a view (depth > 0.1)
    inside [0, W) x [0, H) marks its cell, the nearest centre wins the cell; a GT owns, of the
    cells it wins, the one whose view sees it nearest the middle column; -1 when it wins none."""
    gh, gw = grid
    best = {}  # token -> (camera depth, gt, |u / W - 0.5|)
    for n, (k, l2c) in enumerate(zip(ks, l2cs)):
        uv, depth = np_project(k, l2c, centres)
        for g, ((u, v), d) in enumerate(zip(uv, depth)):
            if d > 0.1 and 0 <= u < W and 0 <= v < H:
                tok = n * gh * gw + int(v * gh // H) * gw + int(u * gw // W)
                if tok not in best or d < best[tok][0]:
                    best[tok] = (d, g, abs(u / W - 0.5))
    owners, off = np.full(len(centres), -1), np.full(len(centres), np.inf)
    for tok, (_, g, o) in best.items():
        if o < off[g]:
            owners[g], off[g] = tok, o
    return owners


def np_codes(boxes):
    """(G, 9) z_bottom boxes -> (G, 10) codes (cx, cy, log l, log w, cz_gravity, log h, sin, cos, vx, vy)."""
    x, y, z, l, w, h, yaw, vx, vy = np.asarray(boxes, dtype=np.float64).T
    return np.stack([x, y, np.log(l), np.log(w), z + h / 2, np.log(h), np.sin(yaw), np.cos(yaw), vx, vy], -1)


def np_matching(logits, preds, labels, codes, fixed=None):
    """Fixed pairs + the optimum (scipy) of the cost among the free queries and GT -> [(q, g)]."""
    fixed = [] if fixed is None else list(zip(*(f.tolist() for f in fixed)))
    free_q = [q for q in range(len(logits)) if q not in {q for q, _ in fixed}]
    free_g = [g for g in range(len(labels)) if g not in {g for _, g in fixed}]
    if not free_g:
        return fixed
    rows, cols = linear_sum_assignment(np_cost(logits[free_q], preds[free_q], labels[free_g], codes[free_g]))
    return fixed + [(free_q[r], free_g[c]) for r, c in zip(rows, cols)]


def np_head_losses(outputs, boxes, labels, fixed=None, cls_weight=2.0, reg_weight=0.25):
    """DETR3DHead.loss in numpy for given fixed pairs (or none) -> (dict of losses, per layer and sample matchings)."""
    all_cls = outputs['all_cls_scores'].detach().double().numpy()  # (D, B, Q, K)
    all_box = outputs['all_bbox_preds'].detach().double().numpy()  # (D, B, Q, 10)
    code_weights = np.array([1.0] * 8 + [0.2, 0.2])
    D, B = all_cls.shape[:2]
    num_gt = max(sum(len(lab) for lab in labels), 1)
    losses, matchings = {}, []
    for lid in range(D):
        focal, l1 = 0.0, 0.0
        for b in range(B):
            codes, lab = np_codes(boxes[b]), np.asarray(labels[b])
            match = np_matching(all_cls[lid, b], all_box[lid, b], lab, codes, None if fixed is None else fixed[b])
            matchings.append(match)
            onehot = np.zeros(all_cls.shape[2:])
            for q, g in match:
                onehot[q, lab[g]] = 1
                l1 += (np.abs(all_box[lid, b, q] - codes[g]) * code_weights).sum()
            focal += np_focal_sum(all_cls[lid, b], onehot)
        prefix = '' if lid == D - 1 else f'd{lid}.'
        losses[f'{prefix}loss_cls'] = cls_weight * focal / num_gt
        losses[f'{prefix}loss_bbox'] = reg_weight * l1 / num_gt
    return losses, matchings


def boxes_at(centres, size=(1.6, 0.8, 1.2), yaw=0.3):
    """Gravity centres (G, 3) -> (G, 9) z_bottom boxes of one size."""
    c = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    return np.c_[c[:, :2], c[:, 2] - size[2] / 2, np.tile(size, (len(c), 1)), np.full(len(c), yaw),
                 np.zeros((len(c), 2))]


def assign_batch():
    """2 samples on a 3-view rig: sample 0 with owned GT (one seen by two views), a GT that loses its
    only cell to a nearer one and a GT behind every camera; sample 1 with no owned GT."""
    ks, l2cs = rig(camera(0.0), camera(math.radians(60)), camera(math.radians(-60)))
    centres = np.stack([
        np_unproject(ks[0], l2cs[0], (20.0, 20.0), 9.0),    # 0: view 0, cell (0, 0)
        np_unproject(ks[0], l2cs[0], (25.0, 24.0), 16.0),   # 1: view 0, same cell, farther: owns nothing
        np_unproject(ks[1], l2cs[1], (50.0, 45.0), 7.0),    # 2: view 1, cell (1, 1)
        [12.0 * math.cos(0.52), 12.0 * math.sin(0.52), 0.0],  # 3: in views 0 and 1
        [-10.0, 0.0, 0.0],                                  # 4: behind every camera
        np_unproject(ks[2], l2cs[2], (80.0, 10.0), 11.0),   # 5: view 2, cell (0, 2)
    ])
    centres = [centres, np.array([[-10.0, 2.0, 0.0], [8.0, 0.0, 40.0]])]  # sample 1: behind, far above
    labels = [np.array([0, 3, 5, 7, 1, 9]), np.array([2, 4])]
    owners = [np_owners(ks, l2cs, c) for c in centres]
    inputs = dict(img=torch.randn(2, 3, 3, H, W, generator=torch.Generator().manual_seed(0)))
    return [(ks, l2cs)] * 2, centres, [boxes_at(c) for c in centres], labels, owners, inputs


def test_assign_scene_covers_every_case():
    rigs, centres, boxes, labels, owners, _ = assign_batch()
    ks, l2cs = rigs[0]
    inside = [[(d > 0.1) & (0 <= u < W) & (0 <= v < H) for (u, v), d in zip(*np_project(k, m, centres[0]))]
              for k, m in zip(ks, l2cs)]
    assert sum(view[3] for view in inside) == 2  # GT 3 is seen twice and owned once
    assert owners[0][1] == -1 and inside[0][1]  # GT 1 is seen but loses its cell to GT 0
    assert owners[0][4] == -1 and not any(view[4] for view in inside)
    assert (owners[0][[0, 2, 3, 5]] >= 0).all() and len(set(owners[0][[0, 2, 3, 5]])) == 4
    assert (owners[1] == -1).all()
    # the detector's own token_targets agree with the numpy owners
    cams = MultiViewCameras(ks, l2cs).to(torch.float32)
    o, d = (r.reshape(-1, 3) for r in cams.pixel_grid_rays(GRID, (H, W)))
    for c, lab, own in zip(centres, labels, owners):
        got = token_targets(torch.as_tensor(c, dtype=torch.float32), torch.as_tensor(lab), cams, (H, W), GRID, o, d)[2]
        assert got.dtype == torch.int64 and got.shape == (len(lab),)
        np.testing.assert_array_equal(got.numpy(), own)


def spy_on_assigner(monkeypatch, det):
    """Record the ``fixed`` argument of every assign call from the head (not the assigner's own
    inner call on the reduced problem)."""
    calls, depth, assign = [], [0], det.head.assigner.assign

    def spy(*args, **kwargs):
        if depth[0] == 0:
            calls.append(args[4] if len(args) > 4 else kwargs.get('fixed'))
        depth[0] += 1
        try:
            return assign(*args, **kwargs)
        finally:
            depth[0] -= 1

    monkeypatch.setattr(det.head.assigner, 'assign', spy)
    return calls


def test_assign_true_fixes_owner_tokens_at_every_layer(monkeypatch):
    rigs, _, boxes, labels, owners, inputs = assign_batch()
    cameras = batched_cameras(*rigs)
    samples = samples_for(cameras, boxes, labels)
    det = build(3, token_loss=dict(assign=True)).train()
    calls = spy_on_assigner(monkeypatch, det)
    with torch.no_grad():
        outputs = det(inputs, samples, mode='tensor')
        losses = det(inputs, samples, mode='loss')
    D, B = 2, 2
    assert len(calls) == D * B  # layer-major: layer 0 samples 0, 1; layer 1 samples 0, 1
    for i, fixed in enumerate(calls):
        own = owners[i % B]
        assert fixed is not None and len(fixed) == 2
        np.testing.assert_array_equal(fixed[0].numpy(), own[own >= 0])
        np.testing.assert_array_equal(fixed[1].numpy(), np.nonzero(own >= 0)[0])

    exp_fixed, matchings = np_head_losses(outputs, boxes, labels,
                                          fixed=[(torch.as_tensor(o[o >= 0]), torch.as_tensor(np.nonzero(o >= 0)[0]))
                                                 for o in owners])
    for key, value in exp_fixed.items():
        np.testing.assert_allclose(losses[key].item(), value, rtol=1e-4, err_msg=key)
    for match, own in zip(matchings, owners * D):  # every owned GT is matched to its owner token
        assert {(int(own[g]), g) for g in np.nonzero(own >= 0)[0]} <= set(match)

    # assign=False on the same weights and inputs: token losses unchanged, head losses those of the plain matching
    det.token_loss['assign'] = False
    calls.clear()
    with torch.no_grad():
        plain = det.loss(outputs, samples, cameras, (H, W))
    assert calls == [None] * (D * B)
    exp_plain, plain_matchings = np_head_losses(outputs, boxes, labels)
    for key, value in exp_plain.items():
        np.testing.assert_allclose(plain[key].item(), value, rtol=1e-4, err_msg=key)
    for key in ('token.loss_cls', 'token.loss_depth'):
        assert torch.equal(plain[key], losses[key])
    # the owner tokens are not what Hungarian picks here, so the fixed matching changes the losses
    assert any(set(a) != set(b) for a, b in zip(matchings, plain_matchings))
    assert any(abs(losses[key].item() - plain[key].item()) > 1e-3 * abs(plain[key].item()) for key in exp_plain)
    for lid in range(D):  # the sample without owned GT is matched alike in both
        assert set(matchings[lid * B + 1]) == set(plain_matchings[lid * B + 1])


def test_assign_true_trains(monkeypatch):
    rigs, _, boxes, labels, _, inputs = assign_batch()
    samples = samples_for(batched_cameras(*rigs), boxes, labels)
    det = build(3, token_loss=dict(assign=True)).train()
    losses = det(inputs, samples, mode='loss')
    assert {'loss_cls', 'loss_bbox', 'd0.loss_cls', 'd0.loss_bbox', 'token.loss_cls', 'token.loss_depth'} <= set(losses)
    sum(losses.values()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in det.parameters())
    assert det.query_proj.weight.grad.abs().sum() > 0


def test_bad_token_loss_keys_raise():
    with pytest.raises(ValueError, match='token_loss'):
        build(3, token_loss=dict(assign=True, fixed=True))


def test_assign_true_with_two_gt_at_equal_depth_in_one_cell():
    """Two GT whose centres have the same camera depth in one token cell (e.g. a duplicated
    annotation): a cell has one owner, so training with assign=True must not fail."""
    ks, l2cs = rig(camera(0.0), camera(math.radians(60)), camera(math.radians(-60)))
    centres = [[10.5, 0.1, 0.0], [10.5, -0.1, 0.0]]  # camera depth 10.0 for both, the same cell of view 0
    samples = samples_for(batched_cameras((ks, l2cs)), [boxes_at(centres)], [np.array([0, 7])])
    det = build(3, token_loss=dict(assign=True)).train()
    inputs = dict(img=torch.randn(1, 3, 3, H, W, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        losses = det(inputs, samples, mode='loss')
    assert all(torch.isfinite(v) for v in losses.values())
