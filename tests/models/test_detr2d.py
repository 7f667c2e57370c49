"""DETR-style 2D detector: matching, losses, spatial-token queries, contract, pretrained loading, overfit."""
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from sf3d.models.backbones.spatialformer import SpatialFormer
from sf3d.models.detectors.detr2d import DETR2D, token_cell_boxes, to_original_boxes
from sf3d.models.heads.detr2d_head import DETR2DHead, HungarianMatcher2D, memory_positions
from sf3d.models.layers import avg_num_targets
from sf3d.registry import MODELS

ARCH = dict(dims=(16, 32, 64, 64), heads=(1, 2, 4, 4), depths=(1, 1, 1, 1))
BACKBONE = dict(type='SpatialFormer', arch=ARCH, spatial_grid=(4, 4), drop_path_rate=0.0)
HEAD = dict(num_classes=3, num_decoder_layers=2, num_heads=4, ffn_dims=64, dropout=0.0)


def _model(query_mode='spatial_tokens', seed=0, backbone=BACKBONE, **kwargs):
    torch.manual_seed(seed)
    return MODELS.build(dict(type='DETR2D', backbone=backbone, head=dict(HEAD, **kwargs.pop('head', {})),
                             embed_dims=32, query_mode=query_mode, **kwargs))


def _samples():
    """Two images in one (64, 96) batch: one resized by 0.5 and flipped, one without GT."""
    return dict(img_shape=[(64, 96), (50, 80)], scale_factor=[(1.0, 1.0), (0.5, 0.5)],
                ori_shape=[(64, 96), (100, 160)], flip=[False, True], img_id=[3, 9],
                gt_bboxes=[torch.tensor([[10., 12, 40, 30], [50, 5, 90, 60]]), torch.zeros(0, 4)],
                gt_labels=[torch.tensor([2, 0]), torch.zeros(0, dtype=torch.long)])


# ---------------------------------------------------------------- matching (numpy reference)
def _np_cost(logits, boxes, labels, gt, alpha=0.25, gamma=2.0, eps=1e-12):
    p = 1 / (1 + np.exp(-logits))
    pos = -np.log(p + eps) * alpha * (1 - p) ** gamma
    neg = -np.log(1 - p + eps) * (1 - alpha) * p ** gamma
    cls = (pos - neg)[:, labels]
    l1 = np.abs(boxes[:, None] - gt[None]).sum(-1)

    def xyxy(b):
        return np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)

    a, b = xyxy(boxes)[:, None], xyxy(gt)[None]
    inter = np.prod(np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None), -1)
    union = np.prod(a[..., 2:] - a[..., :2], -1) + np.prod(b[..., 2:] - b[..., :2], -1) - inter
    hull = np.prod(np.maximum(a[..., 2:], b[..., 2:]) - np.minimum(a[..., :2], b[..., :2]), -1)
    giou = inter / union - (hull - union) / hull
    return 2 * cls + 5 * l1 - 2 * giou


@pytest.mark.parametrize('seed', range(6))
def test_matcher_matches_brute_force_search(seed):
    rng = np.random.default_rng(seed)
    Q, K, G = 5, 3, 1 + seed % 4
    logits = rng.normal(0, 2, (Q, K))
    boxes = np.concatenate([rng.uniform(0.2, 0.8, (Q, 2)), rng.uniform(0.05, 0.4, (Q, 2))], 1)
    gt = np.concatenate([rng.uniform(0.2, 0.8, (G, 2)), rng.uniform(0.05, 0.4, (G, 2))], 1)
    labels = rng.integers(0, K, G)
    ref = _np_cost(logits, boxes, labels, gt)
    matcher = HungarianMatcher2D()
    args = [torch.tensor(v, dtype=torch.float32) for v in (logits, boxes)] + [torch.tensor(labels),
                                                                              torch.tensor(gt, dtype=torch.float32)]
    np.testing.assert_allclose(matcher.cost(*args).numpy(), ref, rtol=1e-4, atol=1e-4)
    p, g = matcher.assign(*args)
    assert len(p) == G and len(set(p.tolist())) == G and sorted(g.tolist()) == list(range(G))
    best = min(sum(ref[q, j] for j, q in enumerate(perm)) for perm in itertools.permutations(range(Q), G))
    assert ref[p.numpy(), g.numpy()].sum() == pytest.approx(best, abs=1e-4)


def test_matcher_empty_gt_and_bad_input():
    m = HungarianMatcher2D()
    p, g = m.assign(torch.zeros(4, 3), torch.full((4, 4), 0.5), torch.zeros(0, dtype=torch.long), torch.zeros(0, 4))
    assert p.numel() == 0 and g.numel() == 0
    with pytest.raises(ValueError, match=r'gt_labels must be in \[0, 3\)'):
        m.assign(torch.zeros(4, 3), torch.full((4, 4), 0.5), torch.tensor([3]), torch.full((1, 4), 0.5))
    with pytest.raises(ValueError, match='gt_boxes'):
        m.assign(torch.zeros(4, 3), torch.full((4, 4), 0.5), torch.tensor([0]), torch.full((1, 2), 0.5))


# ---------------------------------------------------------------- losses on a hand-made case
def _focal_sum(logits, targets, alpha=0.25, gamma=2.0):
    p = 1 / (1 + np.exp(-logits))
    ce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    p_t = p * targets + (1 - p) * (1 - targets)
    a_t = alpha * targets + (1 - alpha) * (1 - targets)
    return float((a_t * ce * (1 - p_t) ** gamma).sum())


@pytest.mark.parametrize('shift', [0.0, 0.1])
def test_losses_on_a_hand_made_case(shift):
    head = DETR2DHead(num_classes=2, embed_dims=32, num_decoder_layers=2, num_heads=4, ffn_dims=64)
    gt = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    logits = np.array([[-4.0, 4.0], [-3.0, -2.0], [1.0, -5.0]])  # query 0 says class 1
    pred = torch.tensor([[0.5 + shift, 0.5, 0.2, 0.4], [0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]])
    all_cls = torch.tensor(logits, dtype=torch.float32)[None, None].repeat(2, 2, 1, 1)  # (D, B, Q, K)
    all_box = pred[None, None].repeat(2, 2, 1, 1)  # (D, B, Q, 4)
    losses = head.loss(dict(all_cls_scores=all_cls, all_bbox_preds=all_box), [gt, torch.zeros(0, 4)],
                       [torch.tensor([1]), torch.zeros(0, dtype=torch.long)])
    assert set(losses) == {f'{p}loss_{n}' for p in ('', 'd0.') for n in ('cls', 'bbox', 'giou')}
    onehot = np.zeros_like(logits)
    onehot[0, 1] = 1
    expected_cls = 2.0 * (_focal_sum(logits, onehot) + _focal_sum(logits, np.zeros_like(logits)))  # / 1 GT
    # shift 0.1 of a 0.2 x 0.4 box: intersection 0.04, union 0.12, hull 0.12 -> GIoU 1/3
    expected_l1, expected_giou = (0.0, 0.0) if shift == 0 else (5.0 * 0.1, 2.0 * (1 - 1 / 3))
    for prefix in ('', 'd0.'):
        assert losses[f'{prefix}loss_cls'].item() == pytest.approx(expected_cls, rel=1e-5)
        assert losses[f'{prefix}loss_bbox'].item() == pytest.approx(expected_l1, abs=1e-6)
        assert losses[f'{prefix}loss_giou'].item() == pytest.approx(expected_giou, abs=1e-6)


# GT counts of (rank 0, rank 1) per case -> the normaliser both ranks must use: the mean, clamped at 1
# after averaging ((0, 4) -> 2, not 2.5 as clamping each rank first would give; (0, 1) -> 0.5 -> 1).
_RANK_COUNTS = [(3, 6), (0, 4), (0, 1), (0, 0)]
_RANK_EXPECTED = [4.5, 2.0, 1.0, 1.0]


def _num_gt_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        values = [avg_num_targets(counts[rank], torch.device('cpu')) for counts in _RANK_COUNTS]
    finally:
        torch.distributed.destroy_process_group()
    (Path(out_dir) / f'rank{rank}.json').write_text(json.dumps(values))


def test_num_gt_is_averaged_over_ranks(tmp_path):
    assert avg_num_targets(0, torch.device('cpu')) == 1.0 and avg_num_targets(7, torch.device('cpu')) == 7.0  # no group
    torch.multiprocessing.spawn(_num_gt_worker, args=(str(tmp_path / 'pg'), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        assert json.loads((tmp_path / f'rank{rank}.json').read_text()) == _RANK_EXPECTED, f'rank {rank}'


# ---------------------------------------------------------------- geometry helpers
def test_token_cell_boxes_tile_the_padded_input():
    cells = token_cell_boxes((4, 4), (64, 96), torch.tensor([[64.0, 96.0], [60.0, 90.0]]))  # (B, 16, 4)
    assert cells.shape == (2, 16, 4)
    # full image: cell (i, j) centre ((j + 0.5) / 4, (i + 0.5) / 4), size 1 / 4
    i, j = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing='ij')
    torch.testing.assert_close(cells[0], torch.stack([(j.flatten() + 0.5) / 4, (i.flatten() + 0.5) / 4,
                                                      torch.full((16,), 0.25), torch.full((16,), 0.25)], -1))
    # image 90 x 60 in a 96 x 64 padding: the last column / row of cells is clipped at the image border
    last = cells[1, 15]  # x 72..96 -> 72..90, y 48..64 -> 48..60
    torch.testing.assert_close(last, torch.tensor([81 / 90, 54 / 60, 18 / 90, 12 / 60]))
    torch.testing.assert_close(cells[1, 0], torch.tensor([12 / 90, 8 / 60, 24 / 90, 16 / 60]))


def test_to_original_boxes_undoes_resize_padding_and_flip():
    box = torch.tensor([[0.25, 0.5, 0.3, 0.4], [0.95, 0.5, 0.3, 0.2]])  # normalised cxcywh of a 40 x 80 image
    out = to_original_boxes(box, (40, 80), (0.5, 0.25), (160, 160))
    # box 0: x 8..32, y 12..28 -> /(0.5, 0.25); box 1: x 64..88 clipped to 80
    torch.testing.assert_close(out, torch.tensor([[16., 48, 64, 112], [128, 64, 160, 96]]))
    flipped = to_original_boxes(box, (40, 80), (0.5, 0.25), (160, 160), flip=True)  # x -> 80 - x before scaling
    torch.testing.assert_close(flipped, torch.tensor([[96., 48, 144, 112], [0, 64, 32, 96]]))


@pytest.mark.parametrize('num_encoder_layers', [0, 1])
def test_memory_mask_ignores_the_padding(num_encoder_layers):
    torch.manual_seed(0)
    head = DETR2DHead(num_classes=3, embed_dims=32, num_decoder_layers=2, num_heads=4, ffn_dims=64, dropout=0.0,
                      num_encoder_layers=num_encoder_layers).eval()
    strides, img_shapes = (8, 16, 32), torch.tensor([[40.0, 56.0]])
    feats = [torch.randn(1, 32, 64 // s, 96 // s) for s in strides]
    query, ref = torch.randn(1, 5, 32), torch.rand(1, 5, 4) * 0.5 + 0.25
    _, valid = memory_positions([f.shape[-2:] for f in feats], strides, img_shapes, 32)
    assert valid.sum() == 5 * 7 + 3 * 4 + 2 * 2  # rows / cols starting inside 40 x 56
    torch.testing.assert_close(head.memory(feats, strides, img_shapes)[1], valid)
    garbage = []
    for f, s in zip(feats, strides):
        g = f.clone()
        g[..., math.ceil(40 / s):, :] = 1e3
        g[..., :, math.ceil(56 / s):] = -1e3
        garbage.append(g)
    with torch.no_grad():
        a, b = head(query, ref, feats, strides, img_shapes), head(query, ref, garbage, strides, img_shapes)
    torch.testing.assert_close(a['all_cls_scores'], b['all_cls_scores'])
    torch.testing.assert_close(a['all_bbox_preds'], b['all_bbox_preds'])


# ---------------------------------------------------------------- denoising queries
def _dn_head(**kwargs):
    torch.manual_seed(0)
    kw = dict(num_classes=3, embed_dims=32, num_decoder_layers=2, num_heads=4, ffn_dims=64, dropout=0.0, dn_groups=3)
    return DETR2DHead(**dict(kw, **kwargs))


GT_BOXES = [torch.tensor([[0.3, 0.4, 0.2, 0.1], [0.7, 0.6, 0.3, 0.4]]), torch.zeros(0, 4),
            torch.tensor([[0.5, 0.5, 0.4, 0.2]])]
GT_LABELS = [torch.tensor([2, 0]), torch.zeros(0, dtype=torch.long), torch.tensor([1])]


def test_denoising_queries_are_noised_copies_of_the_gt_per_group():
    head = _dn_head(dn_box_noise=0.4, dn_label_noise=0.0)
    dn = head.denoising_queries(GT_BOXES, GT_LABELS)
    assert dn['per_group'] == 2 and dn['query'].shape == (3, 6, 32) and dn['ref'].shape == (3, 6, 4)
    assert dn['valid'].tolist() == [[True, True] * 3, [False, False] * 3, [True, False] * 3]
    for b in (0, 2):
        for g in range(3):
            n = len(GT_LABELS[b])
            gt, ref = GT_BOXES[b], dn['ref'][b, 2 * g:2 * g + n]
            torch.testing.assert_close(dn['boxes'][b, 2 * g:2 * g + n], gt)
            assert dn['labels'][b, 2 * g:2 * g + n].tolist() == GT_LABELS[b].tolist()
            assert ((ref[:, :2] - gt[:, :2]).abs() <= 0.2 * gt[:, 2:] + 1e-6).all()  # centre within lambda / 2
            assert ((ref[:, 2:] / gt[:, 2:] - 1).abs() <= 0.4 + 1e-6).all()  # size within 1 +- lambda
            torch.testing.assert_close(dn['query'][b, 2 * g:2 * g + n], head.label_embed(GT_LABELS[b]))
    assert not torch.equal(dn['ref'][0, :2], dn['ref'][0, 2:4])  # groups get their own noise
    exact = _dn_head(dn_box_noise=0.0).denoising_queries(GT_BOXES, GT_LABELS)
    torch.testing.assert_close(exact['ref'][0, :2], GT_BOXES[0])
    flipped = _dn_head(dn_label_noise=1.0, num_classes=50).denoising_queries(GT_BOXES, GT_LABELS)
    assert flipped['labels'][0, :2].tolist() == [2, 0]  # targets keep the GT label
    assert not torch.equal(flipped['query'][0, :2], _dn_head(num_classes=50).label_embed(GT_LABELS[0]))
    assert _dn_head(dn_groups=0).denoising_queries(GT_BOXES, GT_LABELS) is None
    assert head.denoising_queries([torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)]) is None
    with pytest.raises(ValueError, match='dn_label_noise'):
        _dn_head(dn_label_noise=1.5)


def test_matching_queries_do_not_see_the_denoising_queries():
    """The matching outputs are the same with and without DN queries in the batch (no leak of the GT),
    and a DN group's outputs do not depend on the other groups."""
    head = _dn_head().eval()
    strides, img_shapes = (8, 16, 32), torch.tensor([[64.0, 96.0]] * 3)
    feats = [torch.randn(3, 32, 64 // s, 96 // s) for s in strides]
    query, ref = torch.randn(3, 5, 32), torch.rand(3, 5, 4) * 0.5 + 0.25
    dn = head.denoising_queries(GT_BOXES, GT_LABELS)
    with torch.no_grad():
        plain = head(query, ref, feats, strides, img_shapes)
        with_dn = head(query, ref, feats, strides, img_shapes, dn=dn)
        other = dict(dn, ref=dn['ref'].clone(), query=dn['query'].clone())
        other['ref'][:, 2:], other['query'][:, 2:] = 0.5, 0.0  # change groups 1 and 2
        changed = head(query, ref, feats, strides, img_shapes, dn=other)
    torch.testing.assert_close(with_dn['all_cls_scores'], plain['all_cls_scores'])
    torch.testing.assert_close(with_dn['all_bbox_preds'], plain['all_bbox_preds'])
    assert with_dn['dn_cls_scores'].shape == (2, 3, 6, 3) and with_dn['dn_bbox_preds'].shape == (2, 3, 6, 4)
    torch.testing.assert_close(changed['dn_bbox_preds'][:, :, :2], with_dn['dn_bbox_preds'][:, :, :2])
    mask = head._self_attention_mask(dn, 5)[0, 0]  # image 0, (6 + 5, 6 + 5)
    assert not mask[6:, :6].any() and mask[6:, 6:].all() and mask[:6, 6:].all()
    assert mask[:2, :2].all() and not mask[:2, 2:6].any()


@pytest.mark.parametrize('shift', [0.0, 0.1])
def test_denoising_losses_on_a_hand_made_case(shift):
    head = _dn_head(num_classes=2, dn_groups=2)
    dn = dict(boxes=torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.5, 0.5, 0.5, 0.5]] * 2]),
              labels=torch.tensor([[1, 0] * 2]), valid=torch.tensor([[True, False] * 2]), per_group=2)
    pred = torch.tensor([[[0.5 + shift, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1]] * 2])  # (B, P, 4); slot 1 is padding
    logits = np.array([[-4.0, 4.0], [3.0, 3.0]] * 2)
    outputs = dict(all_cls_scores=torch.zeros(1, 1, 3, 2), all_bbox_preds=torch.full((1, 1, 3, 4), 0.5), dn=dn,
                   dn_cls_scores=torch.tensor(logits, dtype=torch.float32)[None, None],
                   dn_bbox_preds=pred[None])
    losses = head.loss(outputs, [dn['boxes'][0, :1]], [dn['labels'][0, :1]])
    assert {'loss_dn_cls', 'loss_dn_bbox', 'loss_dn_giou'} <= set(losses)
    onehot = np.array([[0.0, 1.0]])
    expected_cls = 2.0 * 2 * _focal_sum(logits[:1], onehot) / (1 * 2)  # two groups, one GT
    expected_l1, expected_giou = (0.0, 0.0) if shift == 0 else (5.0 * 0.1, 2.0 * (1 - 1 / 3))
    assert losses['loss_dn_cls'].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses['loss_dn_bbox'].item() == pytest.approx(expected_l1, abs=1e-6)
    assert losses['loss_dn_giou'].item() == pytest.approx(expected_giou, abs=1e-6)


def test_detector_trains_with_denoising_and_predicts_without():
    model = _model('spatial_tokens', head=dict(dn_groups=2))
    x = torch.randn(2, 3, 64, 96)
    losses = model(x, _samples(), mode='loss')
    assert {'loss_dn_cls', 'd0.loss_dn_bbox'} <= set(losses)
    sum(losses.values()).backward()
    assert model.head.label_embed.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(x, _samples(), mode='tensor')
    assert 'dn_cls_scores' not in out and out['all_cls_scores'].shape[2] == 16


# ---------------------------------------------------------------- the detector
@pytest.mark.parametrize('query_mode', ['spatial_tokens', 'learned'])
def test_outputs_follow_the_contract(query_mode):
    model = _model(query_mode)
    assert isinstance(model, DETR2D) and model.query_mode == query_mode  # built from the registry
    x, ds = torch.randn(2, 3, 64, 96), _samples()
    out = model(x, ds, mode='tensor')
    assert out['all_cls_scores'].shape == (2, 2, 16, 3) and out['all_bbox_preds'].shape == (2, 2, 16, 4)
    assert out['init_boxes'].shape == (2, 16, 4) and ((out['all_bbox_preds'] > 0) & (out['all_bbox_preds'] < 1)).all()
    losses = model(x, ds, mode='loss')
    assert set(losses) == {f'{p}loss_{n}' for p in ('', 'd0.') for n in ('cls', 'bbox', 'giou')}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    model.eval()
    preds = model(x, ds, mode='predict')
    assert [p['img_id'] for p in preds] == [3, 9]
    for p, (H0, W0) in zip(preds, ds['ori_shape']):
        assert set(p) == {'img_id', 'bboxes', 'scores', 'labels'}
        assert p['bboxes'].shape == (48, 4) and p['bboxes'].dtype == torch.float32  # min(100, Q * K)
        assert p['labels'].dtype == torch.int64 and p['scores'].shape == (48,)
        assert (p['scores'][:-1] >= p['scores'][1:]).all() and (p['bboxes'] >= 0).all()
        assert (p['bboxes'][:, 2] <= W0).all() and (p['bboxes'][:, 3] <= H0).all()
        assert (p['bboxes'][:, 2:] >= p['bboxes'][:, :2]).all()


@pytest.mark.parametrize('out_indices', [(0, 1, 2, 3), (1, 2, 3)])
def test_memory_defaults_to_strides_8_16_32(out_indices):
    model = _model(backbone=dict(BACKBONE, out_indices=out_indices))
    assert model.feat_strides == [8, 16, 32] and model.head.num_levels == 3
    assert _model(neck=dict(start_level=2)).feat_strides == [16, 32]


def test_learned_queries_default_to_one_per_token():
    model = _model('learned')
    assert model.num_queries == 16 and model.query_embed.weight.shape == (16, 32)
    torch.testing.assert_close(model.ref_embed.weight.sigmoid()[:, 2:], torch.full((16, 2), 0.25))
    assert _model('learned', num_queries=7)(torch.randn(1, 3, 64, 64))['all_cls_scores'].shape == (2, 1, 7, 3)


def _initial_queries(model, x, shapes):
    tokens = model.backbone(x)['spatial_tokens']
    return model.initial_queries(tokens, shapes, x.shape[-2:])


@pytest.mark.parametrize('query_mode', ['spatial_tokens', 'learned'])
def test_initial_queries_come_from_the_spatial_tokens_only_in_token_mode(query_mode):
    model = _model(query_mode)
    if query_mode == 'spatial_tokens':
        torch.nn.init.normal_(model.token_ref.fc2.weight, std=0.1)  # a trained refinement moves the cells
    x, shapes = torch.randn(1, 3, 64, 64), torch.tensor([[64.0, 64.0]])
    q0, r0 = _initial_queries(model, x, shapes)
    with torch.no_grad():
        model.backbone.spatial_embed.add_(torch.randn_like(model.backbone.spatial_embed))
    q1, r1 = _initial_queries(model, x, shapes)
    grads = torch.autograd.grad(q1.sum() + r1.sum(), model.backbone.spatial_embed, allow_unused=True)[0]
    if query_mode == 'spatial_tokens':
        assert not torch.allclose(q0, q1) and not torch.allclose(r0, r1)
        assert grads is not None and grads.abs().sum() > 0
    else:
        torch.testing.assert_close(q0, q1)
        torch.testing.assert_close(r0, r1)
        assert grads is None


def test_token_mode_initial_boxes_are_the_cells_and_the_loss_reaches_the_tokens():
    model = _model('spatial_tokens')
    x, ds = torch.randn(2, 3, 64, 96), _samples()
    out = model(x, ds, mode='tensor')
    cells = token_cell_boxes((4, 4), (64, 96), torch.tensor([[64., 96], [50, 80]]))
    torch.testing.assert_close(out['init_boxes'], cells, rtol=0, atol=1e-5)  # zero-initialised refinement
    sum(model(x, ds, mode='loss').values()).backward()
    for p in (model.backbone.spatial_embed, model.query_proj.weight, model.token_ref.fc2.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_pretrained_backbone_loads_through_init_cfg(tmp_path):
    torch.manual_seed(123)
    ckpt = tmp_path / 'sf_tiny.pth'
    source = SpatialFormer(arch=ARCH, spatial_grid=(4, 4))
    torch.save(dict(state_dict=source.state_dict()), ckpt)
    model = _model(backbone=dict(BACKBONE, init_cfg=dict(type='Pretrained', checkpoint=str(ckpt))))
    assert not torch.equal(model.backbone.spatial_embed, source.spatial_embed)
    model.init_weights()
    for k, v in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    missing = _model(backbone=dict(BACKBONE, init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'no.pth'))))
    with pytest.raises(FileNotFoundError, match='no.pth'):
        missing.init_weights()


def test_empty_ground_truth_trains_without_nan():
    model = _model('spatial_tokens')
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ds = dict(img_shape=[(64, 64)] * 2, gt_bboxes=[torch.zeros(0, 4)] * 2,
              gt_labels=[torch.zeros(0, dtype=torch.long)] * 2)
    x = torch.randn(2, 3, 64, 64)
    for _ in range(3):
        losses = model(x, ds, mode='loss')
        assert losses['loss_bbox'] == 0 and losses['loss_giou'] == 0 and losses['loss_cls'] > 0
        opt.zero_grad()
        sum(losses.values()).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_overfits_one_image_with_two_boxes_at_original_scale():
    """An image resized by 0.75 to 60 x 90 and padded to 64 x 96, two coloured boxes of two classes:
    after 80 steps the two best detections are both boxes, right classes, IoU > 0.5 in original pixels."""
    model = _model('spatial_tokens', head=dict(num_classes=2))
    gt = torch.tensor([[8., 10, 40, 40], [50, 20, 85, 55]])  # img_shape pixels
    torch.manual_seed(1)
    x = torch.zeros(1, 3, 64, 96)
    x[:, :, :60, :90] = 0.2 * torch.randn(1, 3, 60, 90)
    x[0, 0, 10:40, 8:40] = 2.0
    x[0, 2, 20:55, 50:85] = 2.0
    ds = dict(img_shape=[(60, 90)], scale_factor=[(0.75, 0.75)], ori_shape=[(80, 120)], flip=[False], img_id=[1],
              gt_bboxes=[gt], gt_labels=[torch.tensor([0, 1])])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(80):
        loss = sum(model(x, ds, mode='loss').values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(x, ds, mode='predict')[0]
    top_boxes, top_labels = pred['bboxes'][:2], pred['labels'][:2]
    assert sorted(top_labels.tolist()) == [0, 1]
    for g, label in zip(gt / 0.75, (0, 1)):
        box = top_boxes[top_labels == label]
        assert box_iou(g[None], box).item() > 0.5


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match='query_mode'):
        _model('tokens')
    with pytest.raises(ValueError, match='one query per token'):
        _model('spatial_tokens', num_queries=10)
    with pytest.raises(ValueError, match='num_queries >= 1'):
        _model('learned', num_queries=0)
    with pytest.raises(ValueError, match='out_channels'):
        _model('spatial_tokens', neck=dict(out_channels=64))
    model = _model('spatial_tokens')
    x = torch.randn(1, 3, 64, 64)
    ok = dict(img_shape=[(64, 64)], gt_bboxes=[torch.tensor([[1., 2, 30, 40]])], gt_labels=[torch.tensor([1])])
    with pytest.raises(KeyError, match='gt_labels'):
        model(x, dict(img_shape=ok['img_shape'], gt_bboxes=ok['gt_bboxes']), mode='loss')
    with pytest.raises(ValueError, match=r'\(G, 4\)'):
        model(x, dict(ok, gt_bboxes=[torch.tensor([[1., 2, 30]])]), mode='loss')
    with pytest.raises(ValueError, match=r'x2 >= x1'):
        model(x, dict(ok, gt_bboxes=[torch.tensor([[30., 2, 1, 40]])]), mode='loss')
    with pytest.raises(ValueError, match=r'gt_labels must be in \[0, 3\)'):
        model(x, dict(ok, gt_labels=[torch.tensor([3])]), mode='loss')
    with pytest.raises(ValueError, match='1 images but 2 gt_bboxes'):
        model(x, dict(ok, gt_bboxes=ok['gt_bboxes'] * 2, gt_labels=ok['gt_labels'] * 2), mode='loss')
    with pytest.raises(ValueError, match='img_shape'):
        model(x, dict(ok, img_shape=[(70, 64)]), mode='loss')
    with pytest.raises(KeyError, match='scale_factor'):
        model(x, dict(img_shape=[(64, 64)], ori_shape=[(64, 64)]), mode='predict')
    with pytest.raises(KeyError, match='img_shape'):
        model(x, None, mode='loss')
    with pytest.raises(ValueError, match='divisible by 32'):
        model(torch.randn(1, 3, 60, 64), mode='tensor')
    with pytest.raises(ValueError, match="mode must be"):
        model(x, ok, mode='train')


@pytest.mark.parametrize('query_mode', ['spatial_tokens', 'learned'])
def test_every_parameter_gets_a_gradient_except_the_documented_ones(query_mode):
    """DDP without find_unused_parameters needs a gradient on every parameter (token mode); learned
    queries leave only the backbone's final spatial-token path unused (their config sets the flag)."""
    model = _model(query_mode, head=dict(dn_groups=2))
    sum(model(torch.randn(2, 3, 64, 96), _samples(), mode='loss').values()).backward()
    unused = sorted(n for n, p in model.named_parameters() if p.grad is None)
    if query_mode == 'spatial_tokens':
        assert unused == []
    else:
        assert unused and all(n.startswith('backbone.') for n in unused)
