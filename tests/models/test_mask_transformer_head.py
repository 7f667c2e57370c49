"""MaskTransformerHead: top-k query selection against numpy, gradients into the spatial tokens,
matching against brute force, costs and losses against hand computations, ignore handling,
masked attention, semantic inference, bad input."""
import itertools
import math

import numpy as np
import pytest
import torch

from sf3d.models.heads.mask_transformer_head import (MaskHungarianMatcher, MaskTransformerHead, dice_loss,
                                                     labels_at, mask_bce_cost, mask_dice_cost,
                                                     pixel_centre_points, point_sample, sigmoid_bce_loss,
                                                     uncertain_points)
from sf3d.models.layers import Attention, grid_sincos_encoding

IN_CHANNELS = [16, 32, 64, 64]
K = 3


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def head(seed=0, **kwargs):
    torch.manual_seed(seed)
    cfg = dict(in_channels=IN_CHANNELS, num_classes=K, token_channels=64, spatial_grid=(4, 4), num_queries=20,
               num_candidates=64, embed_dims=32, mask_dims=32, num_heads=2, ffn_dims=64, num_layers=3)
    cfg.update(kwargs)
    return MaskTransformerHead(**cfg)


def features(B=2, size=(64, 64), seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, c, size[0] // s, size[1] // s, generator=g) for c, s in zip(IN_CHANNELS, [4, 8, 16, 32])]


def regions(B=2):
    gt = torch.zeros(B, 64, 64, dtype=torch.long)
    gt[:, 8:40, 16:48] = 1
    gt[:, 44:, :20] = 2
    return gt


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_forward_shapes_and_layer_count():
    h = head()
    tokens = torch.randn(2, 16, 64)
    out = h(features(), tokens)
    assert len(out['cls_logits']) == len(out['mask_logits']) == 4  # layer 0 + 3 decoder layers
    assert all(c.shape == (2, 20, K + 1) for c in out['cls_logits'])
    assert all(m.shape == (2, 20, 16, 16) for m in out['mask_logits'])
    assert out['query_index'].shape == (2, 20)
    learned = head(query_mode='learned')
    out = learned(features(), None)
    assert out['query_index'] is None and out['cls_logits'][-1].shape == (2, 20, K + 1)
    losses = learned.loss(features(), None, regions())
    assert set(losses) == {f'{p}loss_{t}' for p in ('d0.', 'd1.', 'd2.', '') for t in ('cls', 'mask', 'dice')}


def test_topk_selection_matches_numpy_argsort():
    h = head()
    with torch.no_grad():  # make the scores spread out so that no two candidates tie
        h.class_embed.weight.mul_(5)
    tokens = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        query, query_pos, index = h.select_queries(tokens)

    M, R = 16, 4
    p = {k: v.double().numpy() for k, v in h.state_dict().items()}
    content = tokens.double().numpy() @ p['token_proj.weight'].T + p['token_proj.bias']  # (B, M, C)
    content = np.concatenate([content + p['replica_content.weight'][r] for r in range(R)], axis=1)  # (B, R*M, C)
    mu, var = content.mean(-1, keepdims=True), content.var(-1, keepdims=True)
    normed = (content - mu) / np.sqrt(var + 1e-5) * p['decoder_norm.weight'] + p['decoder_norm.bias']
    probs = softmax(normed @ p['class_embed.weight'].T + p['class_embed.bias'])  # (B, N_c, K + 1)
    scores = probs[..., :K].max(-1)  # (B, N_c)
    expected = np.argsort(-scores, axis=1, kind='stable')[:, :20]
    np.testing.assert_array_equal(index.numpy(), expected)
    np.testing.assert_allclose(query.double().numpy(), np.take_along_axis(content, expected[..., None], 1), atol=1e-5)
    # candidate r * M + m is replica r of token m: its position is the token's cell code + replica r
    m, r = expected % M, expected // M
    pos = grid_sincos_encoding(4, 4, 32).double().numpy()[m] + p['replica_pos.weight'][r]
    np.testing.assert_allclose(query_pos.double().numpy(), pos, atol=1e-6)


def test_gradients_reach_spatial_tokens_through_layer0_predictions():
    h = head()
    tokens = torch.randn(2, 16, 64, requires_grad=True)
    feats = features()
    out = h(feats, tokens)
    # the selection score is the layer-0 class prediction of the gathered queries
    content, _ = h.candidate_queries(tokens)
    cand_logits = h.class_embed(h.decoder_norm(content))  # (B, N_c, K + 1)
    picked = cand_logits.gather(1, out['query_index'][..., None].expand(-1, -1, K + 1))
    torch.testing.assert_close(out['cls_logits'][0], picked)

    losses = h.loss(feats, tokens, regions())
    losses['d0.loss_cls'].backward()
    assert tokens.grad.abs().sum() > 0
    assert h.class_embed.weight.grad.abs().sum() > 0 and h.token_proj.weight.grad.abs().sum() > 0
    # through the class term only tokens with a selected replica get gradient
    for b in range(2):
        chosen = set((out['query_index'][b] % 16).tolist())
        for m in set(range(16)) - chosen:
            assert tokens.grad[b, m].abs().max() == 0


def test_candidate_loss_supervises_every_candidate():
    h = head(candidate_loss=True)
    tokens = torch.randn(2, 16, 64, requires_grad=True)
    feats, gt = features(), regions()
    losses = h.loss(feats, tokens, gt)
    assert {'enc.loss_cls', 'enc.loss_mask', 'enc.loss_dice'} <= set(losses)
    # the candidate predictions, computed here by hand, through the same set-prediction loss
    with torch.no_grad():
        content, _ = h.candidate_queries(tokens)  # (B, N_c, C)
        mask_features = h.pixel_decoder(feats)[0]  # (B, C_m, 16, 16)
        x = h.decoder_norm(content)
        cls = h.class_embed(x)  # (B, 64, K + 1)
        masks = torch.einsum('bqc,bchw->bqhw', h.mask_embed(x), mask_features)
        expected = h.loss_single(cls, masks, gt, h.gt_labels(gt))  # 16 x 16 <= num_points: every pixel, exact
    for key, value in expected.items():
        torch.testing.assert_close(losses['enc.' + key], value)
    # the selection ranks by the candidates' class logits either way
    with torch.no_grad():
        torch.testing.assert_close(h(feats, tokens, with_candidates=True)['candidate_cls'], cls)
        assert torch.equal(h(feats, tokens, with_candidates=True)['query_index'], h(feats, tokens)['query_index'])
    # unlike the layer-0 class term of the selected queries, it reaches every token
    losses['enc.loss_cls'].backward()
    assert (tokens.grad.abs().sum(-1) > 0).all()
    # off by default; not in learned mode
    assert not any(k.startswith('enc.') for k in head().loss(feats, tokens.detach(), gt))
    with pytest.raises(ValueError, match="candidate_loss needs query_mode='spatial_tokens'"):
        head(query_mode='learned', candidate_loss=True)


def test_matcher_matches_brute_force_with_hand_costs():
    g = torch.Generator().manual_seed(0)
    Q, G, P = 5, 3, 30
    cls = torch.randn(Q, K + 1, generator=g)
    masks = 2 * torch.randn(Q, P, generator=g)
    labels = torch.tensor([2, 0, 1])
    targets = (torch.rand(G, P, generator=g) > 0.5).float()
    matcher = MaskHungarianMatcher(cls_weight=2.0, mask_weight=5.0, dice_weight=5.0)
    cost = matcher.cost(cls, masks, labels, targets).numpy()

    x, t = masks.double().numpy(), targets.double().numpy()
    prob = softmax(cls.double().numpy())
    hand = np.zeros((Q, G))
    for q, j in itertools.product(range(Q), range(G)):
        s = sigmoid(x[q])
        bce = -(t[j] * np.log(s) + (1 - t[j]) * np.log(1 - s)).mean()
        dice = 1 - (2 * (s * t[j]).sum() + 1) / (s.sum() + t[j].sum() + 1)
        hand[q, j] = -2.0 * prob[q, labels[j]] + 5.0 * bce + 5.0 * dice
    np.testing.assert_allclose(cost, hand, rtol=1e-5, atol=1e-5)

    rows, cols = matcher.assign(cls, masks, labels, targets)
    best = min(sum(hand[perm[j], j] for j in range(G)) for perm in itertools.permutations(range(Q), G))
    assert len(rows) == G and sorted(cols.tolist()) == [0, 1, 2]
    np.testing.assert_allclose(hand[rows.numpy(), cols.numpy()].sum(), best, rtol=1e-9)


def test_dice_and_bce_against_hand_values():
    logits = torch.tensor([[0.0, 2.0, -1.0, 3.0]])
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    weights = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last point is ignored
    s = [0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1))]
    bce = (-math.log(s[0]) - math.log(s[1]) - math.log(1 - s[2])) / 3
    dice = 1 - (2 * (s[0] + s[1]) + 1) / ((s[0] + s[1] + s[2]) + 2 + 1)
    assert sigmoid_bce_loss(logits, targets, weights).item() == pytest.approx(bce, rel=1e-6)
    assert dice_loss(logits, targets, weights).item() == pytest.approx(dice, rel=1e-6)
    # with all weights 1 the matching costs equal the losses of each (prediction, target) pair
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(4, 9, generator=g), (torch.rand(3, 9, generator=g) > 0.5).float()
    ones = torch.ones(9)
    for q, j in itertools.product(range(4), range(3)):
        assert mask_bce_cost(x, t)[q, j].item() == pytest.approx(
            sigmoid_bce_loss(x[q:q + 1], t[j:j + 1], ones[None]).item(), rel=1e-5)
        assert mask_dice_cost(x, t)[q, j].item() == pytest.approx(
            dice_loss(x[q:q + 1], t[j:j + 1], ones[None]).item(), rel=1e-5)


def test_point_helpers():
    grid = torch.arange(12.).reshape(1, 1, 3, 4)
    centres = pixel_centre_points(3, 4)
    assert centres.shape == (12, 2)
    torch.testing.assert_close(point_sample(grid, centres[None])[0, 0], torch.arange(12.))  # exact at centres
    seg = torch.arange(64).reshape(1, 8, 8)
    coords = torch.tensor([[[0.0, 0.0], [0.99, 0.01], [0.5, 0.5], [1.0, 1.0]]])  # (x, y)
    assert labels_at(seg, torch.tensor([0]), coords).tolist() == [[0, 7, 36, 63]]
    torch.manual_seed(0)
    logits = torch.zeros(2, 1, 8, 8)
    logits[:, :, :, 4:] = 10.0  # certain on the right half
    pts = uncertain_points(logits, num_points=40, oversample_ratio=3.0, importance_sample_ratio=0.75)
    assert pts.shape == (2, 40, 2) and pts.min() >= 0 and pts.max() <= 1
    assert (pts[:, :30, 0] < 0.5 + 1 / 16).all()  # the importance part lies where the logits are uncertain


def test_ignored_pixels_never_contribute():
    h = head(query_mode='learned', num_points=12544)  # >= 16 * 16: every pixel centre of the mask grid
    gt = regions(1)
    gt[:, :16] = 255  # mask-grid rows 0..3
    g = torch.Generator().manual_seed(0)
    cls = torch.randn(1, 20, K + 1, generator=g, requires_grad=True)
    masks = torch.randn(1, 20, 16, 16, generator=g, requires_grad=True)
    losses = h.loss_single(cls, masks, gt, h.gt_labels(gt))
    sum(losses.values()).backward()
    assert masks.grad[:, :, :4].abs().max() == 0 and masks.grad[:, :, 4:].abs().sum() > 0
    other = masks.detach().clone()
    other[:, :, :4] = 10 * torch.randn(1, 20, 4, 16, generator=g)
    changed = h.loss_single(cls.detach(), other, gt, h.gt_labels(gt))
    for k, v in losses.items():
        torch.testing.assert_close(changed[k], v.detach(), msg=k)
    assert [t.tolist() for t in h.gt_labels(torch.tensor([[[255, 2], [0, 2]]]))] == [[0, 2]]
    # an image with only ignored pixels: no-object targets, zero mask losses
    empty = h.loss_single(cls.detach(), masks.detach(), torch.full_like(gt, 255), h.gt_labels(torch.full_like(gt, 255)))
    assert empty['loss_mask'] == 0 and empty['loss_dice'] == 0 and empty['loss_cls'] > 0


def test_masked_attention_matches_manual_and_empty_masks_attend_everywhere():
    torch.manual_seed(0)
    attn = Attention(8, 2)
    q, kv = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    allowed = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = attn(q, key=kv, value=kv, attn_mask=allowed[None, None])
    p = {k: v.double().numpy() for k, v in attn.state_dict().items()}
    Qm = (q[0].double().numpy() @ p['q.weight'].T + p['q.bias']).reshape(3, 2, 4).transpose(1, 0, 2)
    Km = (kv[0].double().numpy() @ p['k.weight'].T + p['k.bias']).reshape(5, 2, 4).transpose(1, 0, 2)
    Vm = (kv[0].double().numpy() @ p['v.weight'].T + p['v.bias']).reshape(5, 2, 4).transpose(1, 0, 2)
    logits = np.where(allowed.numpy(), Qm @ Km.transpose(0, 2, 1) / 2.0, -np.inf)  # (h, N, L)
    x = (softmax(logits) @ Vm).transpose(1, 0, 2).reshape(3, 8)
    np.testing.assert_allclose(out[0].detach().double().numpy(), x @ p['proj.weight'].T + p['proj.bias'], atol=1e-5)

    h = head(query_mode='learned')
    with torch.no_grad():  # every mask logit negative: no pixel above 0.5
        h.mask_embed[-1].weight.zero_()
        h.mask_embed[-1].bias.fill_(1.0)
        _, masks, attn_mask = h._predict(torch.randn(1, 20, 32), -torch.ones(1, 32, 16, 16), (4, 4))
    assert (masks < 0).all() and attn_mask.shape == (1, 1, 20, 16) and attn_mask.all()


def test_semantic_inference_is_class_prob_times_mask_prob():
    h = head().eval()
    tokens, feats = torch.randn(1, 16, 64), features(B=1)
    with torch.no_grad():
        out = h(feats, tokens)
        scores = h.predict_scores(feats, tokens, (16, 16))
    cls, masks = out['cls_logits'][-1][0].numpy(), out['mask_logits'][-1][0].numpy()
    expected = np.einsum('qk,qhw->khw', softmax(cls.astype(np.float64))[:, :K], sigmoid(masks.astype(np.float64)))
    np.testing.assert_allclose(scores[0].numpy(), expected, rtol=1e-4, atol=1e-6)


def test_sampled_points_mode_runs_on_larger_inputs():
    h = head(num_points=100)  # fewer points than the 32 x 32 mask grid: uniform / importance sampling
    gt = torch.zeros(1, 128, 128, dtype=torch.long)
    gt[:, 30:90, 40:100] = 2
    gt[:, :10] = 255
    losses = h.loss(features(B=1, size=(128, 128)), torch.randn(1, 16, 64), gt)
    assert all(torch.isfinite(v) for v in losses.values())


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match='multiple of the 16 spatial tokens'):
        head(num_candidates=60)
    with pytest.raises(ValueError, match='>= num_queries'):
        head(num_candidates=16, num_queries=20)
    with pytest.raises(ValueError, match='query_mode'):
        head(query_mode='anchors')
    with pytest.raises(ValueError, match='token_channels and spatial_grid'):
        head(spatial_grid=None)
    with pytest.raises(ValueError, match=r'\(B, 16, 64\).*got \(2, 9, 64\)'):
        head()(features(), torch.randn(2, 9, 64))
    with pytest.raises(ValueError, match='got None'):
        head()(features(), None)
