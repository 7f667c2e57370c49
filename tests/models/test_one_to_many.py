"""One-to-many matching on the first decoder layers (sf3d.models.layers.one_to_many): the repeated
targets by hand, the head's losses against the same head fed the GT repeated k times (early layers)
and the plain GT (last layer), k positives per GT where queries allow, a fixed assignment kept on
copy 0, and errors."""
import pytest
import torch
from test_detr3d_head import _inputs, _tiny_head

from sf3d.models.layers.one_to_many import OneToManyLayers

BOXES = torch.tensor([[1.0, 2.0, -1.0, 4.0, 2.0, 1.5, 0.3, 1.0, 0.0],
                      [-6.0, 3.0, -1.0, 0.6, 0.6, 1.7, 2.0, 0.0, 0.0]])
LABELS = torch.tensor([4, 8])


def test_repeats_and_expand_by_hand():
    o2m = OneToManyLayers(k=3, num_layers=2, decoder_layers=4)
    assert [o2m.repeats(lid) for lid in range(4)] == [3, 3, 1, 1]
    codes, labels = torch.arange(20.0).view(2, 10), torch.tensor([4, 8])
    c, lab, flags = o2m.expand(3, codes, labels, dict(dir=torch.tensor([0.0, 1.0])))
    assert c.shape == (6, 10) and torch.equal(c[4], codes[0]) and torch.equal(c[5], codes[1])  # row j G + g
    assert lab.tolist() == [4, 8] * 3 and flags['dir'].tolist() == [0.0, 1.0] * 3
    same = o2m.expand(1, codes, labels, {})
    assert same[0] is codes and same[1] is labels


@pytest.mark.parametrize('flags', [{}, dict(direction=dict(), moving=dict())])
def test_head_losses_equal_repeated_gt_early_and_plain_gt_last(flags):
    torch.manual_seed(0)
    head = _tiny_head(**flags)  # 2 decoder layers
    out = head(*_inputs(B=1, Q=12))
    plain = head.loss(out, [BOXES], [LABELS])
    repeated = head.loss(out, [BOXES.repeat(3, 1)], [LABELS.repeat(3)])
    head.one_to_many = OneToManyLayers(k=3, num_layers=1, decoder_layers=2)
    mixed = head.loss(out, [BOXES], [LABELS])
    assert set(mixed) == set(plain)
    for key, value in mixed.items():
        torch.testing.assert_close(value, (repeated if key.startswith('d0.') else plain)[key])
    # the early layer has 3 positives per GT: its focal loss differs from the one-to-one loss
    assert (mixed['d0.loss_cls'] - plain['d0.loss_cls']).abs() > 1e-4


def test_k_positives_per_gt_and_fixed_pairs_on_copy_zero():
    torch.manual_seed(0)
    head = _tiny_head(one_to_many=dict(k=4, num_layers=1))
    out = head(*_inputs(B=1, Q=12))
    codes, labels, flags = head._gt([BOXES], [LABELS], torch.device('cpu'))
    gt = OneToManyLayers.expand(4, codes[0], labels[0], flags[0])
    fixed = (torch.tensor([7]), torch.tensor([1]))  # query 7 owns GT 1
    cls_t, _, box_w, (q, g) = head._targets(out['all_cls_scores'][0, 0].detach(), out['all_bbox_preds'][0, 0].detach(),
                                            gt[0], gt[1], fixed)
    assert q.numel() == 8 and q.unique().numel() == 8  # every copy matched, each query at most once
    assert sorted((g % 2).tolist()) == [0] * 4 + [1] * 4  # 4 queries per GT
    assert (7, 1) in list(zip(q.tolist(), g.tolist()))
    assert cls_t.sum().item() == 8 and (box_w[:, 0] > 0).sum().item() == 8
    # fewer queries than copies: every query is matched, none twice
    small = head(*_inputs(B=1, Q=5))
    q = head._targets(small['all_cls_scores'][0, 0].detach(), small['all_bbox_preds'][0, 0].detach(), gt[0], gt[1])[3][0]
    assert sorted(q.tolist()) == list(range(5))


def test_errors():
    with pytest.raises(ValueError, match='k must be an integer >= 1'):
        OneToManyLayers(k=0, decoder_layers=2)
    with pytest.raises(ValueError, match='num_layers must be an integer >= 1'):
        OneToManyLayers(num_layers=1.5, decoder_layers=2)
    with pytest.raises(ValueError, match='must leave the last of the decoder\'s 2 layers one-to-one'):
        _tiny_head(one_to_many=dict(k=2, num_layers=2))
