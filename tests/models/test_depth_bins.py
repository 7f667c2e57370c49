"""Depth hypotheses per spatial token (``MultiViewDetector(depth_bins=Z)``): the LID bin edges by
hand, every query of a token on that token's ray inside its own bin (numpy rays and slab bounds),
and the token targets / owner assignment moved to the hypothesis whose bin holds the GT's depth."""
import math

import numpy as np
import pytest
import torch
from detector_utils import (EMBED, H, W, batched_cameras, build, camera, np_project, rig, samples_for,
                            single_thread_fixture)
from test_fixed_assignment import GRID, assign_batch, np_owners, spy_on_assigner

from sf3d.models.detectors.multiview_detector import depth_bin_edges

one_thread = single_thread_fixture()
Z = 3


def test_depth_bin_edges_hand_case():
    # LID fractions for Z = 4: 0, 1/10, 3/10, 6/10, 1 of [lo, hi]
    edges = depth_bin_edges(torch.tensor([1.0, 0.0]), torch.tensor([61.0, 10.0]), 4)
    np.testing.assert_allclose(edges.numpy(), [[1, 7, 19, 37, 61], [0, 1, 3, 6, 10]], rtol=1e-6)
    np.testing.assert_allclose(depth_bin_edges(torch.tensor([2.0]), torch.tensor([5.0]), 1).numpy(), [[2, 5]])


def np_segment(origin, d, pc_range, depth_range=(1.0, 60.0), margin=1e-3):
    """Depth interval of a ray inside pc_range (shrunk by margin), intersected with depth_range (numpy slab)."""
    r = np.asarray(pc_range, dtype=np.float64)
    ext = r[3:] - r[:3]
    d = np.where(np.abs(d) < 1e-9, 1e-9, d)
    t1, t2 = (r[:3] + margin * ext - origin) / d, (r[3:] - margin * ext - origin) / d
    return max(np.minimum(t1, t2).max(), depth_range[0]), min(np.maximum(t1, t2).min(), depth_range[1])


def test_every_hypothesis_lies_on_its_token_ray_inside_its_bin():
    num_cams = 3
    ks, l2cs = rig(camera(0.0), camera(math.radians(120)), camera(math.radians(-120)))
    cameras = batched_cameras((ks, l2cs))
    det = build(num_cams, depth_bins=Z).eval()
    gh, gw = GRID
    M = gh * gw
    torch.manual_seed(1)
    tokens = torch.randn(1, num_cams, M, det.backbone.embed_dims[-1])
    q = det.token_queries(tokens, cameras, (H, W))
    assert q['query'].shape == (1, num_cams * M * Z, EMBED) and q['ref_points'].shape == (1, num_cams * M * Z, 3)
    ref = q['ref_points'][0].detach().double().numpy().reshape(num_cams, M, Z, 3)
    uv = np.array([[(j + 0.5) / gw * W, (i + 0.5) / gh * H] for i in range(gh) for j in range(gw)])  # (M, 2)
    frac = np.array([0, 1, 3, 6]) / 6.0  # LID fractions for Z = 3
    for n in range(num_cams):
        R, t = l2cs[n, :3, :3], l2cs[n, :3, 3]
        centre = -R.T @ t
        dirs = (np.linalg.inv(ks[n]) @ np.c_[uv, np.ones(M)].T).T @ R  # (M, 3) LiDAR frame
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        for m in range(M):
            lo, hi = np_segment(centre, dirs[m], det.head.pc_range)
            edges = lo + (hi - lo) * frac
            rel = ref[n, m] - centre  # (Z, 3)
            np.testing.assert_allclose(np.cross(rel, dirs[m]), 0, atol=1e-4)
            depth = rel @ dirs[m]
            assert (depth >= edges[:-1] - 1e-3).all() and (depth <= edges[1:] + 1e-3).all(), (n, m, depth, edges)
    # the Z queries of a token differ in content only by their bin embedding
    qry = q['query'][0].view(num_cams * M, Z, EMBED)
    torch.testing.assert_close(qry - qry[:, :1], (det.bin_embed.weight - det.bin_embed.weight[:1]).expand_as(qry))


def test_token_targets_and_owners_move_to_the_bin_of_the_gt_depth(monkeypatch):
    rigs, centres, boxes, labels, owners, inputs = assign_batch()
    cameras = batched_cameras(*rigs)
    samples = samples_for(cameras, boxes, labels)
    det = build(3, token_loss=dict(assign=True), depth_bins=Z).train()
    calls = spy_on_assigner(monkeypatch, det)
    captured = {}
    dense = det._dense_losses

    def spy_dense(name, weights, logits, depths, tgt_labels, tgt_depths):
        captured.update(labels=tgt_labels, depths=tgt_depths)
        return dense(name, weights, logits, depths, tgt_labels, tgt_depths)

    monkeypatch.setattr(det, '_dense_losses', spy_dense)
    with torch.no_grad():
        outputs = det(inputs, samples, mode='tensor')
        det.loss(outputs, samples, cameras, (H, W))
    ks, l2cs = rigs[0]
    gh, gw = GRID
    M = gh * gw
    bins = outputs['token_bins']  # (B, Q, 2)
    seen_bins = set()
    for b in range(2):
        exp_labels = np.full(3 * M * Z, -1)
        exp_owner = np.full(len(labels[b]), -1)
        for g, tok in enumerate(owners[b]):
            if tok < 0:
                continue
            n = tok // M
            k, l2c = ks[n], l2cs[n]
            R, t = l2c[:3, :3], l2c[:3, 3]
            (u, v), = np_project(k, l2c, centres[b][g:g + 1])[0]
            row, col = (tok % M) // gw, (tok % M) % gw
            ray = np.linalg.inv(k) @ np.array([(col + 0.5) / gw * W, (row + 0.5) / gh * H, 1.0]) @ R
            ray /= np.linalg.norm(ray)
            depth = (centres[b][g] - (-R.T @ t)) @ ray
            lo, hi = np_segment(-R.T @ t, ray, det.head.pc_range)
            z = int(np.searchsorted(lo + (hi - lo) * np.array([1, 3]) / 6.0, depth, side='right'))
            exp_owner[g] = tok * Z + z
            exp_labels[tok * Z + z] = labels[b][g]
            np.testing.assert_allclose(captured['depths'][b, tok * Z + z].item(), depth, atol=1e-3)
            lo_z, hi_z = bins[b, tok * Z + z].tolist()  # beyond the ray's segment: the last bin
            assert (z == 0 or depth >= lo_z - 1e-3) and (z == Z - 1 or depth <= hi_z + 1e-3)
            seen_bins.add(z)
        got = captured['labels'][b].numpy()
        np.testing.assert_array_equal(got[exp_owner[exp_owner >= 0]], exp_labels[exp_owner[exp_owner >= 0]])
        # every other labelled hypothesis is the one bin of a token that a non-owner GT wins (a GT seen by two views)
        assert ((got >= 0).reshape(-1, Z).sum(1) <= 1).all()
        assert (got >= 0).sum() >= (exp_owner >= 0).sum()
        for fixed in calls[b::2]:
            np.testing.assert_array_equal(fixed[0].numpy(), exp_owner[exp_owner >= 0])
            np.testing.assert_array_equal(fixed[1].numpy(), np.nonzero(exp_owner >= 0)[0])
    assert len(seen_bins) >= 2  # the scene's owners fall in different bins


def test_depth_bins_train_and_one_bin_is_the_single_depth():
    rigs, _, boxes, labels, _, inputs = assign_batch()
    samples = samples_for(batched_cameras(*rigs), boxes, labels)
    det = build(3, token_loss=dict(assign=True), depth_bins=Z).train()
    losses = det(inputs, samples, mode='loss')
    sum(losses.values()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in det.parameters())
    assert det.bin_embed.weight.grad.abs().sum() > 0 and det.depth_mlp[-1].weight.grad.abs().sum() > 0
    one, plain = build(3, depth_bins=1).eval(), build(3).eval()
    assert not hasattr(one, 'bin_embed')
    with torch.no_grad():
        a, b = one(inputs, samples, mode='tensor'), plain(inputs, samples, mode='tensor')
    assert torch.equal(a['all_bbox_preds'], b['all_bbox_preds'])


@pytest.mark.parametrize('kwargs', [dict(depth_bins=0), dict(depth_bins=2.5),
                                    dict(depth_bins=2, query_mode='learned', conditioning='none')])
def test_bad_depth_bins_raise(kwargs):
    with pytest.raises(ValueError, match='depth_bins'):
        build(3, **kwargs)


def test_num_select_keeps_the_top_scored_hypotheses_and_remaps_owners(monkeypatch):
    rigs, _, boxes, labels, _, inputs = assign_batch()
    cameras = batched_cameras(*rigs)
    samples = samples_for(cameras, boxes, labels)
    S = 20
    full = build(3, token_loss=dict(assign=True), depth_bins=Z).train()
    sel = build(3, token_loss=dict(assign=True), depth_bins=Z, num_select=S).train()
    sel.load_state_dict(full.state_dict())
    calls_full, calls_sel = spy_on_assigner(monkeypatch, full), spy_on_assigner(monkeypatch, sel)
    with torch.no_grad():
        out_full, out_sel = full(inputs, samples, mode='tensor'), sel(inputs, samples, mode='tensor')
        full.loss(out_full, samples, cameras, (H, W))
        sel.loss(out_sel, samples, cameras, (H, W))
    scores = out_full['token_cls_scores'].amax(-1)  # (B, Q)
    kept = dropped = 0
    for b in range(2):
        keep = out_sel['selected'][b]
        assert keep.shape == (S,) and keep.unique().numel() == S
        # exactly the S best-scored hypotheses, and their references are the full model's
        assert scores[b, keep].min() >= scores[b].sort(descending=True).values[S - 1]
        torch.testing.assert_close(out_sel['ref_points'][b], out_full['ref_points'][b, keep])
        # owners: fixed to their position among the selected, dropped when not selected
        fixed_full, fixed_sel = calls_full[b], calls_sel[b]
        pos = {int(k): i for i, k in enumerate(keep)}
        expected = [(pos[int(q)], int(g)) for q, g in zip(*fixed_full) if int(q) in pos]
        got = [(int(q), int(g)) for q, g in zip(*fixed_sel)] if fixed_sel is not None else []
        assert got == expected
        kept += len(expected)
        dropped += len(fixed_full[0]) - len(expected)
    assert kept > 0 and dropped > 0  # the scene exercises both cases
    assert out_sel['all_cls_scores'].shape[2] == S
    # the token losses are computed over all hypotheses, selection or not
    monkeypatch.undo()
    with torch.no_grad():
        lf, ls = full.loss(out_full, samples, cameras, (H, W)), sel.loss(out_sel, samples, cameras, (H, W))
    assert torch.equal(lf['token.loss_cls'], ls['token.loss_cls'])


@pytest.mark.parametrize('kwargs', [dict(num_select=5), dict(num_select=0, token_loss=dict()),
                                    dict(num_select=3 * 6 * Z + 1, token_loss=dict(), depth_bins=Z)])
def test_bad_num_select_raises(kwargs):
    with pytest.raises(ValueError, match='num_select'):
        build(3, **kwargs)
