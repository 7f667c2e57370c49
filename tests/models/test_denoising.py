"""Denoising queries (DN-DETR / DINO) with ray negatives (RayDN) for the DETR3D head: query layout and
attention mask, no leak into the matching queries, noise geometry, label flipping, padding, the DN loss."""
import math

import numpy as np
import pytest
import torch
from detector_utils import single_thread_fixture
from torchvision.ops import sigmoid_focal_loss

from sf3d.models.heads.box_coder import inverse_sigmoid, normalize_points
from sf3d.models.heads.detr3d_head import DETR3DHead
from sf3d.models.layers.denoising import DenoisingQueries

PC = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
H, W, C, K = 32, 48, 32, 10
STRIDES = (4, 8)


one_thread = single_thread_fixture()


def _dn(**kw):
    return DenoisingQueries(**{**dict(embed_dims=C, num_classes=K, pc_range=PC), **kw})


def _gt(n, seed=0):
    """n random GT boxes [x, y, z_bottom, l, w, h, yaw, vx, vy] inside PC and n labels."""
    g = torch.Generator().manual_seed(seed)
    boxes = torch.cat([(torch.rand(n, 2, generator=g) - 0.5) * 80, torch.rand(n, 1, generator=g) * 2 - 2,
                       torch.rand(n, 3, generator=g) * 4 + 0.5, (torch.rand(n, 1, generator=g) - 0.5) * 6,
                       torch.randn(n, 2, generator=g)], 1)
    return boxes, torch.randint(0, K, (n,), generator=g)


def _gravity(boxes):
    return torch.cat([boxes[:, :2], boxes[:, 2:3] + boxes[:, 5:6] / 2], 1)  # (G, 3)


def _lidar2img(yaws, f=20.0):
    """(N, 4, 4) pinhole cameras at the origin looking horizontally along each yaw."""
    k = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    out = []
    for yaw in yaws:
        rot = np.stack([[math.sin(yaw), -math.cos(yaw), 0.0], [0, 0, -1.0], [math.cos(yaw), math.sin(yaw), 0.0]])
        m = np.eye(4)
        m[:3, :3] = k @ rot
        out.append(m)
    return torch.tensor(np.stack(out), dtype=torch.float32)


def _head_and_scene(B, Q, seed=0):
    torch.manual_seed(seed)
    head = DETR3DHead(num_classes=K, embed_dims=C, num_heads=4, ffn_dims=64, num_layers=2, num_cams=3,
                      num_levels=2, dropout=0.0)
    g = torch.Generator().manual_seed(seed + 1)
    feats = [torch.randn(B, 3, C, H // s, W // s, generator=g) for s in STRIDES]
    l2i = _lidar2img([0.0, 2.1, -2.1]).expand(B, 3, 4, 4)
    ref = (torch.rand(B, Q, 3, generator=g) - 0.5) * torch.tensor([40.0, 40.0, 4.0])
    query, query_pos = torch.randn(B, Q, C, generator=g), torch.randn(B, Q, C, generator=g)
    return head, (query, query_pos, ref), (feats, l2i, (H, W))


# ---------------------------------------------------------------- layout and mask
def test_attn_mask_and_layout_hand_written():
    """2 groups, G_max = 2, R = 1, 3 matching queries: DN queries first, group-major, positives then negatives."""
    torch.manual_seed(0)
    boxes, _ = _gt(2)
    dn = _dn(num_groups=2, ray_negatives=1)([boxes, boxes[:1]], [torch.tensor([4, 7]), torch.tensor([5])])
    assert dn['query'].shape == dn['query_pos'].shape == (2, 8, C) and dn['ref_points'].shape == (2, 8, 3)
    assert dn['labels'].tolist() == [[4, 7, -1, -1, 4, 7, -1, -1], [5, -2, -1, -2, 5, -2, -1, -2]]
    assert dn['labels'].dtype == torch.int64
    mask = dn['attn_mask'](3, 'cpu')
    assert mask.shape == (2, 1, 11, 11) and mask.dtype == torch.bool
    #                     group 0     group 1     matching
    expected = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1],
                             [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1],
                             [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1],
                             [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1],
                             [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
                             [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
                             [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
                             [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
                             [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1],
                             [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1],
                             [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[0, 0], expected)
    # sample 1 has one GT: slot 1 (queries 1, 3, 5, 7) is padding, hidden as a key except from itself
    padded = torch.tensor([[1, 0, 1, 0, 0, 0, 0, 0, 1, 1, 1],
                           [1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1],
                           [1, 0, 1, 0, 0, 0, 0, 0, 1, 1, 1],
                           [1, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1],
                           [0, 0, 0, 0, 1, 0, 1, 0, 1, 1, 1],
                           [0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1],
                           [0, 0, 0, 0, 1, 0, 1, 0, 1, 1, 1],
                           [0, 0, 0, 0, 1, 0, 1, 1, 1, 1, 1],
                           [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1],
                           [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1],
                           [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[1, 0], padded)
    assert dn['attn_mask'](0, 'cpu').any(-1).all()  # no matching query: every row still attends


# ---------------------------------------------------------------- no leak into matching queries
def test_dn_queries_cannot_leak_into_matching_queries():
    B, Q = 2, 6
    head, (query, query_pos, ref), rest = _head_and_scene(B, Q)
    head.eval()
    dn = _dn(num_groups=3, ray_negatives=1)([_gt(3)[0], _gt(1, seed=1)[0]], [_gt(3)[1], _gt(1, seed=1)[1]])
    qd = dn['query'].shape[1]
    both = (torch.cat([dn['query'], query], 1), torch.cat([dn['query_pos'], query_pos], 1),
            torch.cat([dn['ref_points'], ref], 1))
    with torch.no_grad():
        alone = head(query, query_pos, ref, *rest)
        masked = head(*both, *rest, attn_mask=dn['attn_mask'](Q, 'cpu'))
        unmasked = head(*both, *rest)
    for key in ('all_cls_scores', 'all_bbox_preds'):
        assert masked[key].shape[2] == qd + Q
        torch.testing.assert_close(masked[key][:, :, qd:], alone[key], atol=1e-5, rtol=0)
        assert (unmasked[key][:, :, qd:] - alone[key]).abs().max() > 1e-3  # control: the mask is what stops it


# ---------------------------------------------------------------- noise geometry
def test_positive_and_ray_negative_geometry():
    torch.manual_seed(0)
    boxes, labels = _gt(40)
    boxes[0, :3] = torch.tensor([1.0, 0.5, -0.5])  # near the origin: the nearer side would pass behind it
    boxes[1, :3] = torch.tensor([50.5, 3.0, -1.0])  # near the +x face: far negatives are clipped
    G, NG, R = 40, 4, 2
    dn = _dn(num_groups=NG, ray_negatives=R, centre_noise=0.5, label_noise=0.0, ray_offset=(2.0, 6.0))
    out = dn([boxes], [labels])
    ref = out['ref_points'][0].reshape(NG, 1 + R, G, 3)  # (NG, 1+R, G, 3)
    lo, hi = torch.tensor(PC[:3]), torch.tensor(PC[3:])
    assert ((out['ref_points'] >= lo) & (out['ref_points'] <= hi)).all()
    centre, half = _gravity(boxes), boxes[:, 3:6] / 2  # (G, 3) each
    # positives: within 0.5 half-size of the centre per axis, and the noise fills that box
    rel = (ref[:, 0] - centre) / (0.5 * half)  # (NG, G, 3)
    assert rel.abs().max() <= 1 + 1e-4 and rel.abs().max() > 0.95 and rel.mean().abs() < 0.1
    # negatives: on the ray origin -> centre, |offset| in [2, 6] unless clipped
    neg = ref[:, 1:]  # (NG, R, G, 3)
    cross = torch.linalg.cross(neg, centre.expand_as(neg), dim=-1).norm(dim=-1)  # (NG, R, G)
    inside = ((neg > lo + 1e-4) & (neg < hi - 1e-4)).all(-1)  # not clipped
    dist = centre.norm(dim=-1)  # (G,)
    offset = neg.norm(dim=-1) - dist  # (NG, R, G)
    assert (cross[inside] < 1e-3 * neg.norm(dim=-1)[inside] * dist.expand_as(cross)[inside]).all()
    assert ((neg * centre).sum(-1)[inside] > 0).all()  # the ray, not the line behind the origin
    assert ((offset.abs()[inside] >= 2.0 - 1e-4) & (offset.abs()[inside] <= 6.0 + 1e-4)).all()
    assert (offset[inside] > 0).any() and (offset[inside] < 0).any()
    assert (offset[:, :, 0] > 0).all()  # GT 0 lies 1.2 m from the origin: only the far side
    assert not inside[:, :, 1].all() and (neg[..., 1, 0] <= 51.2).all()  # clipped onto the +x face
    assert inside.float().mean() > 0.8
    # targets: positives keep their box and class, negatives are background with zero boxes
    assert torch.equal(out['labels'][0].reshape(NG, 1 + R, G)[:, 0], labels.expand(NG, G))
    assert (out['labels'][0].reshape(NG, 1 + R, G)[:, 1:] == -1).all()
    torch.testing.assert_close(out['boxes'][0].reshape(NG, 1 + R, G, 9)[:, 0], boxes.expand(NG, G, 9))
    assert (out['boxes'][0].reshape(NG, 1 + R, G, 9)[:, 1:] == 0).all()
    # content: the true label's embedding on positives (no label noise here) AND negatives
    torch.testing.assert_close(out['query'][0], dn.label_embed.weight[labels].repeat(NG * (1 + R), 1))
    torch.testing.assert_close(out['query_pos'], dn.pos_mlp(inverse_sigmoid(normalize_points(out['ref_points'], PC))))


@pytest.mark.parametrize('noise', [0.0, 0.3, 1.0])
def test_label_flipping_rate(noise):
    """A positive's content label is redrawn uniformly from all K classes with probability `noise`:
    it changes with probability noise * (K - 1) / K (0, 0.27, 0.9), to every other class alike."""
    torch.manual_seed(0)
    boxes, labels = _gt(100)
    dn = _dn(num_groups=10, label_noise=noise, max_queries=10_000)
    content = []
    for _ in range(10):  # 10 draws x 10 groups x 100 GT = 10000 positives
        q = dn([boxes], [labels])['query'][0]  # (Qd, C)
        content.append(torch.cdist(q, dn.label_embed.weight).argmin(-1))  # (Qd,) the embedded class
    content = torch.stack(content)  # (10, Qd)
    true = labels.repeat(10)  # (Qd,)
    changed = content != true
    assert changed.float().mean().item() == pytest.approx(noise * (K - 1) / K, abs=0.015)
    if noise == 1.0:  # every label redrawn: uniform over all K classes (1000 each)
        counts = torch.bincount(content.flatten(), minlength=K)
        assert counts.min() > 850 and counts.max() < 1150


# ---------------------------------------------------------------- padding, empty batches, group count
def test_padding_and_empty_samples():
    torch.manual_seed(0)
    (b3, l3), (b1, l1) = _gt(3), _gt(1, seed=1)
    b1[0, 7:] = float('nan')  # NaN velocity: stays on its positive only
    empty_b, empty_l = torch.zeros(0, 9), torch.zeros(0, dtype=torch.long)
    dn = _dn(num_groups=2, ray_negatives=1)
    out = dn([b3, b1, empty_b], [l3, l1, empty_l])
    assert out['query'].shape == (3, 12, C)  # 2 groups x (3 positives + 3 negatives)
    lab = out['labels'].reshape(3, 2, 2, 3)  # (B, NG, 1+R, G)
    assert torch.equal(lab[0, :, 0], l3.expand(2, 3)) and (lab[0, :, 1] == -1).all()
    assert lab[1, 0].tolist() == [[l1.item(), -2, -2], [-1, -2, -2]]
    assert (lab[2] == -2).all()
    pos = out['labels'] >= 0
    assert (out['boxes'][~pos] == 0).all() and torch.isnan(out['boxes'][1, [0, 6]][:, 7:]).all()
    assert all(torch.isfinite(out[k]).all() for k in ('query', 'query_pos', 'ref_points'))
    mask = out['attn_mask'](4, 'cpu')  # (3, 1, 16, 16)
    assert mask.any(-1).all()
    eye = torch.eye(16, dtype=torch.bool)
    assert torch.equal(mask[2, 0, :12, :12], eye[:12, :12])  # all-padding sample: a DN query sees only itself
    assert mask[2, 0, :12, 12:].all() and not mask[:, 0, 12:, :12].any()
    padded_keys = ~(out['labels'] >= -1)  # (B, Qd)
    assert not (mask[:, 0, :, :12] & ~eye[:, :12] & padded_keys[:, None, :]).any()
    assert dn([empty_b, empty_b], [empty_l, empty_l]) is None
    assert dn([], []) is None


def test_group_count_respects_max_queries():
    boxes, labels = _gt(3)
    assert _dn(num_groups=5, ray_negatives=1, max_queries=14)([boxes], [labels])['query'].shape[1] == 12
    assert _dn(num_groups=5, ray_negatives=1, max_queries=60)([boxes], [labels])['query'].shape[1] == 30
    assert _dn(num_groups=5, ray_negatives=1, max_queries=5)([boxes], [labels]) is None  # one group needs 6


# ---------------------------------------------------------------- DN loss
def _codes(box):
    x, y, z, l, w, h, yaw, vx, vy = box.tolist()
    return torch.tensor([x, y, math.log(l), math.log(w), z + h / 2, math.log(h), math.sin(yaw), math.cos(yaw),
                         vx, vy])


def test_dn_loss_hand_computation():
    """One positive (class 2, NaN vy), one ray negative, one padding slot; 2 decoder layers."""
    torch.manual_seed(0)
    head = DETR3DHead(num_classes=3, embed_dims=C, num_heads=4, ffn_dims=64, num_layers=2, num_cams=3, num_levels=2)
    all_cls = torch.randn(2, 1, 3, 3, requires_grad=True)
    all_box = torch.randn(2, 1, 3, 10)
    labels = torch.tensor([[2, -1, -2]])
    boxes = torch.zeros(1, 3, 9)
    boxes[0, 0] = torch.tensor([1.0, -2.0, -1.0, 4.0, 2.0, 1.5, 0.3, 0.5, float('nan')])
    losses = head.dn_loss(all_cls, all_box, labels, boxes)
    assert set(losses) == {'dn.loss_cls', 'dn.loss_bbox', 'dn.d0.loss_cls', 'dn.d0.loss_bbox'}
    target = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    weights = torch.tensor([1.0] * 8 + [0.2, 0.0])
    code = _codes(boxes[0, 0]).nan_to_num(0.0)
    for lid, prefix in ((0, 'dn.d0.'), (1, 'dn.')):
        focal = sigmoid_focal_loss(all_cls[lid, 0, :2], target, alpha=0.25, gamma=2.0, reduction='sum')
        l1 = ((all_box[lid, 0, 0] - code).abs() * weights).sum()
        torch.testing.assert_close(losses[f'{prefix}loss_cls'], 2.0 * focal)  # normaliser: 1 positive
        torch.testing.assert_close(losses[f'{prefix}loss_bbox'], 0.25 * l1)
    sum(losses.values()).backward()
    assert (all_cls.grad[:, 0, 2] == 0).all() and (all_cls.grad[:, 0, :2] != 0).all()  # padding has no loss
    # two copies of the sample: twice the sums over twice the positives
    twice = head.dn_loss(all_cls.repeat(1, 2, 1, 1), all_box.repeat(1, 2, 1, 1), labels.repeat(2, 1),
                         boxes.repeat(2, 1, 1))
    for key, value in losses.items():
        torch.testing.assert_close(twice[key], value)
    with pytest.raises(ValueError, match='dn_loss'):
        head.dn_loss(all_cls, all_box, labels[:, :2], boxes)


def test_dn_loss_gradient_reaches_query_content():
    B, Q = 2, 6
    head, (query, query_pos, ref), rest = _head_and_scene(B, Q)
    dn = _dn(num_groups=2, ray_negatives=1)
    out = dn([_gt(3)[0], _gt(2, seed=1)[0]], [_gt(3)[1], _gt(2, seed=1)[1]])
    qd = out['query'].shape[1]
    preds = head(torch.cat([out['query'], query], 1), torch.cat([out['query_pos'], query_pos], 1),
                 torch.cat([out['ref_points'], ref], 1), *rest, attn_mask=out['attn_mask'](Q, 'cpu'))
    losses = head.dn_loss(preds['all_cls_scores'][:, :, :qd], preds['all_bbox_preds'][:, :, :qd],
                          out['labels'], out['boxes'])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    used = torch.cat([_gt(3)[1], _gt(2, seed=1)[1]]).unique()
    assert (dn.label_embed.weight.grad[used].abs().sum(-1) > 0).all()
    assert all(p.grad.abs().sum() > 0 for p in dn.pos_mlp.parameters())


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize('kwargs, name', [
    (dict(num_groups=0), 'num_groups'), (dict(centre_noise=-0.1), 'centre_noise'),
    (dict(label_noise=1.5), 'label_noise'), (dict(ray_negatives=-1), 'ray_negatives'),
    (dict(ray_offset=(3.0, 3.0)), 'ray_offset'), (dict(ray_offset=(-1.0, 2.0)), 'ray_offset'),
    (dict(max_queries=0), 'max_queries'), (dict(pc_range=(0, 0, 0, 1, 1)), 'pc_range'),
    (dict(num_classes=0), 'num_classes'),
])
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        _dn(**kwargs)


def test_bad_gt():
    dn = _dn()
    boxes, labels = _gt(2)
    with pytest.raises(ValueError, match='sample 0'):
        dn([boxes[:, :7]], [labels])
    with pytest.raises(ValueError, match='gt_labels'):
        dn([boxes], [torch.tensor([0, K])])
    with pytest.raises(ValueError, match='gt_labels'):
        dn([boxes, boxes], [labels])
    with pytest.raises(ValueError, match='num_match'):
        dn([boxes], [labels])['attn_mask'](-1, 'cpu')
