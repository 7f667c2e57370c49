"""Pixel supervision of MultiViewDetector: ``pixel_targets`` against an independent numpy rule
(corners of the z_bottom boxes projected with K [R | t], 2D bounding box per view, boxes with a
corner at camera depth <= 0.1 skipped, every feature pixel whose centre lies inside a 2D box,
edges included, takes the class and centre depth of the NEAREST covering box), and the
``pixel_loss`` option end to end (numpy focal / L1 recomputation, training-only outputs,
gradients into the FPN, bad keys).

Scenes are tiny (64x96 views, 3 cameras) and every test runs single-threaded."""
import itertools
import math

import numpy as np
import pytest
import torch

from detector_utils import (H, K, W, batched_cameras, build, camera, np_focal_sum, np_project, rig, samples_for,
                            single_thread_fixture)
from sf3d.models.detectors.multiview_detector import pixel_targets
from sf3d.structures import MultiViewCameras

EDGE_MARGIN = 1e-3  # px: no pixel centre of a comparison scene lies closer than this to a 2D box edge

one_thread = single_thread_fixture()


# ---------------------------------------------------------------------------------- numpy reference
def np_corners(box):
    """[x, y, z_bottom, l, w, h, yaw, ...] -> (8, 3) corners: l along the heading, yaw from +x."""
    x, y, z, l, w, h, yaw = (float(v) for v in box[:7])
    heading = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    side = np.array([-math.sin(yaw), math.cos(yaw), 0.0])
    return np.array([[x, y, z] + a * l / 2 * heading + b * w / 2 * side + [0.0, 0.0, c * h]
                     for a, b, c in itertools.product((-1, 1), (-1, 1), (0, 1))])


def np_box_2d(k, l2c, box):
    """Corners projected into one view -> (lo (2,), hi (2,), centre depth) or None when a corner
    has camera depth <= 0.1."""
    uv, depth = np_project(k, l2c, np_corners(box))
    if (depth <= 0.1).any():
        return None
    centre = np.array([[box[0], box[1], box[2] + box[5] / 2]])
    return uv.min(0), uv.max(0), float(np_project(k, l2c, centre)[1][0])


def np_pixel_targets(ks, l2cs, boxes, labels, feat_size, stride):
    """The pixel-supervision rule in numpy -> labels (N, h, w) (-1 uncovered), depths (N, h, w) (0 uncovered)."""
    h, w = feat_size
    v, u = np.meshgrid((np.arange(h) + 0.5) * stride, (np.arange(w) + 0.5) * stride, indexing='ij')  # (h, w) each
    out_labels, out_depths = np.full((len(ks), h, w), -1), np.zeros((len(ks), h, w))
    for n, (k, l2c) in enumerate(zip(ks, l2cs)):
        best = np.full((h, w), np.inf)
        for box, label in zip(boxes, labels):
            b2d = np_box_2d(k, l2c, box)
            if b2d is None:
                continue
            lo, hi, depth = b2d
            wins = (u >= lo[0]) & (u <= hi[0]) & (v >= lo[1]) & (v <= hi[1]) & (depth < best)
            best[wins], out_labels[n][wins], out_depths[n][wins] = depth, label, depth
    return out_labels, out_depths


def edge_distance(ks, l2cs, boxes, feat_size, stride):
    """Smallest distance (px) of a pixel-centre coordinate to an edge of a kept 2D box."""
    centres = [(np.arange(n) + 0.5) * stride for n in feat_size[::-1]]  # u of the columns, v of the rows
    dist = np.inf
    for k, l2c in zip(ks, l2cs):
        for box in boxes:
            b2d = np_box_2d(k, l2c, box)
            if b2d is not None:
                for axis in (0, 1):
                    for edge in (b2d[0][axis], b2d[1][axis]):
                        dist = min(dist, np.abs(centres[axis] - edge).min())
    return dist


def box(x, y, z_bottom, l, w, h, yaw=0.0):
    return [x, y, z_bottom, l, w, h, yaw, 0.0, 0.0]


# 3 views with different intrinsics, positions and yaws
VIEWS = (camera(0.0, f=48.0, centre=(0.5, 0.0, 0.0)),
         camera(math.radians(60), f=56.0, centre=(0.4, 0.3, 0.2), pp=(40.0, 30.0)),
         camera(math.radians(-60), f=40.0, centre=(0.4, -0.3, -0.1)))
SCENE = np.array([
    box(6.0, 0.5, -0.8, 2.0, 1.5, 1.2, 0.3),     # 0: near, view 0
    box(13.0, 1.7, -1.5, 4.5, 2.0, 2.6, -0.4),   # 1: far, behind box 0 in view 0 (overlap: box 0 wins)
    box(8.0, 4.8, -1.0, 3.0, 1.0, 1.4, 0.0),     # 2: in views 0 and 1, straddles view 2's image plane
    box(10.0, 0.0, 25.0, 2.0, 2.0, 2.0, 0.0),    # 3: in front of view 0, far above every image
    box(-12.0, 0.5, -1.0, 2.0, 2.0, 2.0, 0.5),   # 4: behind every camera
    box(6.0, 4.5, -1.2, 1.0, 0.8, 1.8, 1.0),     # 5: overlap of views 0 and 1, nearer than box 2
    box(4.8, -5.2, -0.9, 2.0, 1.0, 1.5, -0.8),   # 6: view 2
    box(9.0, -9.0, -1.5, 5.0, 2.2, 2.4, 2.2),    # 7: view 2, behind box 6
    box(0.55, -0.56, -1.1, 2.0, 2.0, 2.0, -1.05),  # 8: around camera 2 (the ego car): straddles every view
])
SCENE_LABELS = np.array([0, 3, 5, 1, 2, 7, 9, 4, 6])


def scene_cases():
    """Per view and box: 'skip' (corner at depth <= 0.1), 'covers' (kept, its 2D box holds a pixel
    centre of the 16x24 stride-4 map) or 'outside'."""
    ks, l2cs = rig(*VIEWS)
    feat = (H // 4, W // 4)
    v, u = np.meshgrid((np.arange(feat[0]) + 0.5) * 4, (np.arange(feat[1]) + 0.5) * 4, indexing='ij')
    cases = np.full((len(ks), len(SCENE)), 'outside', dtype=object)
    for n, (k, l2c) in enumerate(zip(ks, l2cs)):
        for g, b in enumerate(SCENE):
            b2d = np_box_2d(k, l2c, b)
            if b2d is None:
                cases[n, g] = 'skip'
            elif ((u >= b2d[0][0]) & (u <= b2d[1][0]) & (v >= b2d[0][1]) & (v <= b2d[1][1])).any():
                cases[n, g] = 'covers'
    return cases


def test_scene_covers_every_case():
    """The comparison scene really holds overlapping boxes (nearer wins), a box skipped in one view
    but kept in others, boxes outside every view, and no near-ties."""
    cases = scene_cases()
    assert (cases[:, 4] == 'skip').all()  # behind every camera
    assert (cases[:, 8] == 'skip').all()  # corners on both sides of every image plane
    assert (cases[:, 3] == 'outside').all()  # in front of views 0 and 2, far above their images
    assert cases[2, 2] == 'skip' and (cases[:2, 2] == 'covers').all()  # straddles view 2's plane only
    assert (cases[:2, 5] == 'covers').all() and cases[0, 0] == cases[0, 1] == 'covers' == cases[2, 6] == cases[2, 7]
    ks, l2cs = rig(*VIEWS)
    labels, _ = np_pixel_targets(ks, l2cs, SCENE, SCENE_LABELS, (H // 4, W // 4), 4.0)
    # overlaps: the far box keeps only the pixels the near box does not cover, and it keeps some
    for n, near, far in ((0, 0, 1), (2, 6, 7), (1, 5, 2)):
        only_near = np_pixel_targets(ks[n:n + 1], l2cs[n:n + 1], SCENE[[near]], [1], (H // 4, W // 4), 4.0)[0][0]
        only_far = np_pixel_targets(ks[n:n + 1], l2cs[n:n + 1], SCENE[[far]], [1], (H // 4, W // 4), 4.0)[0][0]
        overlap = (only_near >= 0) & (only_far >= 0)
        assert overlap.sum() >= 2 and ((only_far >= 0) & ~overlap).sum() >= 2, (n, near, far)
        assert (labels[n][overlap] == SCENE_LABELS[near]).all()
        assert (labels[n][(only_far >= 0) & ~overlap] == SCENE_LABELS[far]).all()
    assert edge_distance(ks, l2cs, SCENE, (H // 4, W // 4), 4.0) > EDGE_MARGIN


def run_pixel_targets(ks, l2cs, boxes, labels, feat_size, stride):
    cams = MultiViewCameras(ks, l2cs).to(torch.float32)
    return pixel_targets(torch.as_tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 9), dtype=torch.float32),
                         torch.as_tensor(labels, dtype=torch.long).reshape(-1), cams, feat_size, stride)


@pytest.mark.parametrize('feat_size, stride', [((16, 24), 4.0), ((8, 12), 8.0), ((5, 7), 11.0)])
def test_pixel_targets_match_numpy_reference(feat_size, stride):
    ks, l2cs = rig(*VIEWS)
    assert edge_distance(ks, l2cs, SCENE, feat_size, stride) > EDGE_MARGIN
    got_labels, got_depths = run_pixel_targets(ks, l2cs, SCENE, SCENE_LABELS, feat_size, stride)
    exp_labels, exp_depths = np_pixel_targets(ks, l2cs, SCENE, SCENE_LABELS, feat_size, stride)
    assert got_labels.shape == got_depths.shape == (3,) + feat_size
    assert got_labels.dtype == torch.int64 and got_depths.dtype == torch.float32
    np.testing.assert_array_equal(got_labels.numpy(), exp_labels)
    np.testing.assert_allclose(got_depths.numpy(), exp_depths, atol=1e-4, rtol=0)
    assert (exp_labels >= 0).sum() >= 8 and len(np.unique(exp_labels)) >= 6  # a non-trivial comparison
    # the GT order does not matter (no depth ties), nor do boxes that cover nothing
    perm = np.random.default_rng(0).permutation(len(SCENE))
    got_perm = run_pixel_targets(ks, l2cs, SCENE[perm], SCENE_LABELS[perm], feat_size, stride)
    assert torch.equal(got_perm[0], got_labels) and torch.equal(got_perm[1], got_depths)
    kept = [g for g in range(len(SCENE)) if g not in (3, 4, 8)]
    got_kept = run_pixel_targets(ks, l2cs, SCENE[kept], SCENE_LABELS[kept], feat_size, stride)
    assert torch.equal(got_kept[0], got_labels) and torch.equal(got_kept[1], got_depths)


def test_pixel_targets_without_covering_boxes():
    ks, l2cs = rig(*VIEWS)
    for boxes, labels in ((np.zeros((0, 9)), np.zeros(0, dtype=np.int64)), (SCENE[[3, 4, 8]], SCENE_LABELS[[3, 4, 8]])):
        got_labels, got_depths = run_pixel_targets(ks, l2cs, boxes, labels, (16, 24), 4.0)
        assert got_labels.shape == got_depths.shape == (3, 16, 24)
        assert (got_labels == -1).all() and (got_depths == 0).all()


def test_pixel_centres_on_the_box_edges_are_covered():
    """Exact arithmetic: a camera at the origin looking along +x (f=8, principal point (48, 32)), a
    box from depth 4 to 8 whose near face projects to u in [40, 56], v in [24, 40] exactly: the
    pixel centres (stride 16: 8, 24, 40, 56, ...) on those edges are covered (inclusive bounds)."""
    k, l2c = camera(0.0, f=8.0, centre=(0.0, 0.0, 0.0))
    b = box(6.0, 0.0, -4.0, 4.0, 8.0, 8.0)  # x in [4, 8], y in [-4, 4], z in [-4, 4]
    uv, depth = np_project(k, l2c, np_corners(b))
    np.testing.assert_array_equal(uv.min(0), [40, 24])
    np.testing.assert_array_equal(uv.max(0), [56, 40])
    labels, depths = run_pixel_targets(k[None], l2c[None], [b], [6], (4, 6), 16.0)
    expected = np.full((4, 6), -1)
    expected[1:3, 2:4] = 6  # rows v = 24, 40; columns u = 40, 56: all four on edges
    np.testing.assert_array_equal(labels[0].numpy(), expected)
    assert (depths[0][expected >= 0] == 6.0).all() and (depths[0][expected < 0] == 0).all()


@pytest.mark.parametrize('near_depth, kept', [(0.05, False), (0.099, False), (0.15, True), (0.5, True)])
def test_boxes_with_a_corner_at_depth_up_to_point_one_are_skipped(near_depth, kept):
    """A small box right in front of view 0 (near face at ``near_depth``, every corner in front):
    kept only when the near face is beyond 0.1; kept, its 2D box covers the whole view and beats a
    farther box; view 1, looking away, never sees it."""
    ks, l2cs = rig(camera(0.0), camera(math.pi))
    l = 1.0
    near = box(0.5 + near_depth + l / 2, 0.0, -1.0, l, 2.0, 2.0)
    far = box(8.0, 0.0, -1.0, 2.0, 2.0, 2.0)
    uv, depth = np_project(ks[0], l2cs[0], np_corners(near))
    assert depth.min() == pytest.approx(near_depth) and (depth > 0).all()
    labels, depths = run_pixel_targets(ks, l2cs, [far, near], [1, 8], (16, 24), 4.0)
    exp_labels, exp_depths = np_pixel_targets(ks, l2cs, [far, near], [1, 8], (16, 24), 4.0)
    np.testing.assert_array_equal(labels.numpy(), exp_labels)
    np.testing.assert_allclose(depths.numpy(), exp_depths, atol=1e-4, rtol=0)
    assert (labels[1] == -1).all()
    if kept:
        assert (labels[0] == 8).all()
        torch.testing.assert_close(depths[0], torch.full((16, 24), near_depth + l / 2), atol=1e-4, rtol=0)
    else:
        assert set(labels[0].unique().tolist()) == {-1, 1}


# ---------------------------------------------------------------------------------- pixel_loss through the detector
PIXEL_LOSS = dict(cls_weight=1.5, depth_weight=0.3)


def loss_batch():
    """2 samples on different rigs: the comparison scene, and 3 boxes of it on a turned rig."""
    turned = rig(*(camera(math.radians(y), f=f) for y, f in ((30, 48.0), (100, 60.0), (-40, 40.0))))
    rigs = [rig(*VIEWS), turned]
    boxes = [SCENE, SCENE[[0, 2, 6]]]
    labels = [SCENE_LABELS, SCENE_LABELS[[0, 2, 6]]]
    inputs = dict(img=torch.randn(2, 3, 3, H, W, generator=torch.Generator().manual_seed(0)))
    return rigs, boxes, labels, inputs


def np_pixel_losses(pixel_preds, rigs, boxes, labels, stride, weights=PIXEL_LOSS):
    """pixel_preds (B, N, K + 1, h, w) -> (loss_cls, loss_depth, number of covered pixels) in numpy."""
    preds = pixel_preds.detach().double().numpy()
    focal, l1, num_pos = 0.0, 0.0, 0
    for b, ((ks, l2cs), bx, lab) in enumerate(zip(rigs, boxes, labels)):
        exp_labels, exp_depths = np_pixel_targets(ks, l2cs, bx, lab, preds.shape[-2:], stride)
        pos = exp_labels >= 0
        onehot = np.zeros(exp_labels.shape + (K,))
        onehot[pos, exp_labels[pos]] = 1
        focal += np_focal_sum(np.moveaxis(preds[b, :, :K], 1, -1), onehot)
        l1 += np.abs(preds[b, :, K] - exp_depths)[pos].sum()
        num_pos += int(pos.sum())
    return weights['cls_weight'] * focal / max(num_pos, 1), weights['depth_weight'] * l1 / max(num_pos, 1), num_pos


@pytest.mark.parametrize('query_mode', ['spatial_tokens', 'learned'])
def test_pixel_losses_match_numpy_reference(query_mode):
    rigs, boxes, labels, inputs = loss_batch()
    cameras = batched_cameras(*rigs)
    samples = samples_for(cameras, boxes, labels)
    kwargs = (dict(query_mode='learned', num_queries=12, conditioning='none') if query_mode == 'learned' else {})
    det = build(num_cams=3, pixel_loss=PIXEL_LOSS, **kwargs).train()
    with torch.no_grad():
        out = det(inputs, samples, mode='tensor')
        losses = det(inputs, samples, mode='loss')
    preds = out['pixel_preds']
    stride = det.feat_strides[0]
    assert stride == 4 and preds.shape == (2, 3, K + 1, H // 4, W // 4)
    exp_cls, exp_depth, num_pos = np_pixel_losses(preds, rigs, boxes, labels, stride)
    assert num_pos >= 30
    assert {'pixel.loss_cls', 'pixel.loss_depth', 'loss_cls', 'loss_bbox'} <= set(losses)
    np.testing.assert_allclose(losses['pixel.loss_cls'].item(), exp_cls, rtol=1e-4)
    np.testing.assert_allclose(losses['pixel.loss_depth'].item(), exp_depth, rtol=1e-4)
    # the default weights (1.0, 0.1) scale the same sums
    det.pixel_loss = dict(cls_weight=1.0, depth_weight=0.1)
    with torch.no_grad():
        default = det.loss(out, samples, cameras.to(torch.float32), (H, W))
    np.testing.assert_allclose(default['pixel.loss_cls'].item(), exp_cls / 1.5, rtol=1e-4)
    np.testing.assert_allclose(default['pixel.loss_depth'].item(), exp_depth / 3.0, rtol=1e-4)


def test_pixel_losses_without_covered_pixels():
    """No GT covers a pixel: the class loss is the plain focal sum over all pixels (normaliser 1),
    the depth loss is 0."""
    rigs, _, _, inputs = loss_batch()
    boxes, labels = [SCENE[[3, 4, 8]], np.zeros((0, 9))], [SCENE_LABELS[[3, 4, 8]], np.zeros(0, dtype=np.int64)]
    samples = samples_for(batched_cameras(*rigs), boxes, labels)
    det = build(num_cams=3, pixel_loss=PIXEL_LOSS).train()
    with torch.no_grad():
        out = det(inputs, samples, mode='tensor')
        losses = det(inputs, samples, mode='loss')
    exp_cls, exp_depth, num_pos = np_pixel_losses(out['pixel_preds'], rigs, boxes, labels, det.feat_strides[0])
    assert num_pos == 0 and exp_depth == 0
    assert losses['pixel.loss_depth'].item() == 0
    np.testing.assert_allclose(losses['pixel.loss_cls'].item(), exp_cls, rtol=1e-4)


def test_pixel_outputs_only_in_training():
    rigs, boxes, labels, inputs = loss_batch()
    samples = samples_for(batched_cameras(*rigs), boxes, labels)
    det = build(num_cams=3, pixel_loss=PIXEL_LOSS).eval()
    calls = []
    det.pixel_head.register_forward_hook(lambda *args: calls.append(1))
    plain = build(num_cams=3).eval()
    plain.load_state_dict({k: v for k, v in det.state_dict().items() if not k.startswith('pixel_head.')})
    with torch.no_grad():
        out = det(inputs, samples, mode='tensor')
        pred = det(inputs, samples, mode='predict')
        ref = plain(inputs, samples, mode='tensor')
    assert 'pixel_preds' not in out and calls == []
    assert len(pred) == 2 and len(pred[0]['pred_instances_3d']['scores_3d']) > 0
    for key in ('all_cls_scores', 'all_bbox_preds', 'ref_points'):  # the option does not change inference
        torch.testing.assert_close(out[key], ref[key], atol=1e-5, rtol=1e-5)
    det.train()
    with torch.no_grad():
        assert 'pixel_preds' in det(inputs, samples, mode='tensor') and len(calls) == 1


def test_pixel_loss_gradients_reach_the_fpn_and_backbone():
    rigs, boxes, labels, inputs = loss_batch()
    samples = samples_for(batched_cameras(*rigs), boxes, labels)
    det = build(num_cams=3, pixel_loss=PIXEL_LOSS).train()
    losses = det(inputs, samples, mode='loss')
    (losses['pixel.loss_cls'] + losses['pixel.loss_depth']).backward()
    grads = {n: p.grad for n, p in det.named_parameters()}
    nonzero = lambda prefix: any(g is not None and g.abs().sum() > 0  # noqa: E731
                                 for n, g in grads.items() if n.startswith(prefix))
    assert nonzero('pixel_head.') and nonzero('neck.') and nonzero('backbone.')
    assert not nonzero('head.') and not nonzero('query_proj.')  # the decoder is not what this loss trains
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize('pixel_loss', [dict(weight=1.0), dict(cls_weight=1.0, depth=0.1), dict(assign=True)])
def test_bad_pixel_loss_keys_raise(pixel_loss):
    with pytest.raises(ValueError, match='pixel_loss'):
        build(num_cams=3, pixel_loss=pixel_loss)
