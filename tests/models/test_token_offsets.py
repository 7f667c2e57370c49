"""In-cell offsets of the spatial-token hypotheses (``MultiViewDetector(token_offsets=True)``): every
hypothesis lies on the numpy ray through its cell centre moved by its offset, inside its own bin of
that ray, and projects back onto that pixel; zero-initialised offsets change nothing; the offset loss
equals a numpy L1 against the projected GT centres; the offsets learn from the decoder and from their
own loss."""
import math

import numpy as np
import pytest
import torch
from detector_utils import H, W, batched_cameras, build, camera, np_project, rig, samples_for, single_thread_fixture
from test_depth_bins import np_segment
from test_detector_training import TARGET_GRID, gt_boxes, np_token_targets, target_scene

one_thread = single_thread_fixture()
GRID = (2, 3)
LOSS = dict(cls_weight=1.0, depth_weight=0.1, offset_weight=0.7)


def with_offsets(det, seed=3):
    """Random offsets through the last layer's bias (its weight stays zero): 0.5 * tanh(bias) cells."""
    torch.nn.init.uniform_(det.offset_mlp[-1].bias, -1.5, 1.5, generator=torch.Generator().manual_seed(seed))
    return det


def test_hypotheses_lie_on_the_ray_through_their_offset_pixel():
    num_cams, Z = 3, 3
    ks, l2cs = rig(camera(0.0), camera(math.radians(120), f=60.0, pp=(40.0, 36.0)), camera(math.radians(-120)))
    cameras = batched_cameras((ks, l2cs))
    det = with_offsets(build(num_cams, grid=GRID, depth_bins=Z, token_loss=LOSS, token_offsets=True)).eval()
    gh, gw = GRID
    M = gh * gw
    tokens = torch.randn(1, num_cams, M, det.backbone.embed_dims[-1], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        q = det.token_queries(tokens, cameras, (H, W))
    ref = q['ref_points'][0].double().numpy().reshape(num_cams, M, Z, 3)
    offsets = (0.5 * np.tanh(det.offset_mlp[-1].bias.detach().double().numpy())).reshape(Z, 2)  # same for all tokens
    np.testing.assert_allclose(q['offsets'][0].double().numpy(), np.tile(offsets, (num_cams * M, 1)), atol=1e-6)
    assert np.abs(offsets).max() > 0.3
    frac = np.array([0, 1, 3, 6]) / 6.0  # LID fractions for Z = 3
    for n in range(num_cams):
        R, t = l2cs[n, :3, :3], l2cs[n, :3, 3]
        centre = -R.T @ t
        for m in range(M):
            i, j = divmod(m, gw)
            for z in range(Z):
                uv = np.array([(j + 0.5 + offsets[z, 0]) * W / gw, (i + 0.5 + offsets[z, 1]) * H / gh])
                d = R.T @ np.linalg.inv(ks[n]) @ np.r_[uv, 1.0]
                d /= np.linalg.norm(d)
                rel = ref[n, m, z] - centre
                np.testing.assert_allclose(np.cross(rel, d), 0, atol=1e-4)
                lo, hi = np_segment(centre, d, det.head.pc_range)
                edges = lo + (hi - lo) * frac
                assert edges[z] - 1e-3 <= rel @ d <= edges[z + 1] + 1e-3, (n, m, z, rel @ d, edges)
                np.testing.assert_allclose(np_project(ks[n], l2cs[n], ref[n, m, z][None])[0][0], uv, atol=1e-3)


def test_zero_initialised_offsets_change_nothing():
    cameras = batched_cameras(rig(camera(0.0), camera(math.radians(90))))
    tokens = torch.randn(1, 2, 6, 32, generator=torch.Generator().manual_seed(2))
    det = build(2, grid=GRID, depth_bins=2, token_loss=LOSS, token_offsets=True).eval()
    plain = build(2, grid=GRID, depth_bins=2, token_loss=LOSS).eval()
    missing, unexpected = plain.load_state_dict(det.state_dict(), strict=False)
    assert not missing and {k.split('.')[0] for k in unexpected} == {'offset_mlp'}
    with torch.no_grad():
        got, expected = det.token_queries(tokens, cameras, (H, W)), plain.token_queries(tokens, cameras, (H, W))
    assert (got['offsets'] == 0).all() and expected['offsets'] is None
    for key in ('query', 'query_pos', 'ref_points', 'depth', 'edges', 'origins', 'dirs'):
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5)


def test_offset_loss_is_an_l1_against_the_projected_gt_centres():
    """Z = 1: each labelled token has one hypothesis; its offset target is where the winning GT centre
    projects in the cell (numpy), the loss their L1 over the labelled tokens, normalised by their count."""
    ks, l2cs, centres, labels = target_scene()
    cameras = batched_cameras((ks, l2cs))
    samples = samples_for(cameras, [gt_boxes(centres, np.tile([[2.0, 1.0, 1.5]], (len(centres), 1)))], [labels])
    det = with_offsets(build(3, grid=TARGET_GRID, token_loss=LOSS, token_offsets=True)).eval()
    inputs = dict(img=torch.randn(1, 3, 3, H, W, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        out = det(inputs, samples, mode='tensor')
        losses = det.loss(out, samples, cameras, (H, W))
    exp_labels, _, _, exp_offsets = np_token_targets(ks, l2cs, centres, labels, TARGET_GRID)
    pos = exp_labels >= 0
    assert pos.sum() >= 5
    pred = out['token_offsets'][0].double().numpy()
    expected = 0.7 * np.abs(pred - exp_offsets)[pos].sum() / pos.sum()
    np.testing.assert_allclose(losses['token.loss_offset'].item(), expected, rtol=1e-5)
    assert expected > 0.05


def test_offsets_learn_from_the_decoder_and_from_their_own_loss():
    ks, l2cs, centres, labels = target_scene()
    cameras = batched_cameras((ks, l2cs))
    samples = samples_for(cameras, [gt_boxes(centres, np.tile([[2.0, 1.0, 1.5]], (len(centres), 1)))], [labels])
    inputs = dict(img=torch.randn(1, 3, 3, H, W, generator=torch.Generator().manual_seed(0)))
    for part in ('decoder', 'offset'):
        det = with_offsets(build(3, grid=TARGET_GRID, depth_bins=2, token_loss=LOSS, token_offsets=True)).train()
        losses = det(inputs, samples, mode='loss')
        loss = (losses['token.loss_offset'] if part == 'offset' else
                sum(v for k, v in losses.items() if not k.startswith('token.')))
        loss.backward()
        grad = det.offset_mlp[-1].weight.grad
        assert grad is not None and grad.abs().sum() > 0, part


def test_token_offsets_need_the_token_loss():
    with pytest.raises(ValueError, match='token_offsets=True needs token_loss'):
        build(2, token_offsets=True)
    with pytest.raises(ValueError, match='offset_weight'):
        build(2, token_loss=dict(offset_wieght=1.0))
