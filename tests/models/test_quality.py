"""Localisation-quality class targets (sf3d.models.layers.quality): the threshold fraction by hand, the
varifocal loss against a numpy transcription of RT-DETR's formula, the head's Hungarian and denoising
class losses against that loss on the head's own matches, and errors."""
import math

import numpy as np
import pytest
import torch
from test_detr3d_head import _inputs, _tiny_head

from sf3d.models.layers.quality import LocalizationQuality

BOXES = torch.tensor([[1.0, 2.0, -1.0, 4.0, 2.0, 1.5, 0.3, 1.0, 0.0],
                      [-6.0, 3.0, -1.0, 0.6, 0.6, 1.7, 2.0, 0.0, 0.0]])
LABELS = torch.tensor([4, 8])


def _vfl_numpy(logits, onehot, quality, alpha=0.75, gamma=2.0):
    x, t = np.asarray(logits, np.float64), np.asarray(onehot, np.float64) * np.asarray(quality, np.float64)[..., None]
    p = 1 / (1 + np.exp(-x))
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    weight = alpha * p ** gamma * (1 - np.asarray(onehot, np.float64)) + t
    return float((bce * weight).sum())


def test_targets_are_the_fraction_of_thresholds_by_hand():
    q = LocalizationQuality()
    gt = torch.zeros(6, 2)
    pred = torch.tensor([[0.3, 0.0], [0.0, -0.7], [1.2, 0.9], [3.0, 0.0], [3.0, 4.0], [0.5, 0.0]])  # 0.3 ... 5, 0.5 m
    torch.testing.assert_close(q.targets(pred, gt), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0, 0.75]))
    assert LocalizationQuality(thresholds=(2.0,)).targets(pred, gt).tolist() == [1, 1, 1, 0, 0, 1]


def test_loss_against_numpy_and_zero_quality_positive_carries_no_class_loss():
    torch.manual_seed(0)
    logits = torch.randn(5, 3)
    onehot = torch.zeros(5, 3)
    onehot[0, 1] = onehot[2, 0] = onehot[3, 2] = 1.0
    quality = torch.tensor([0.75, 0.0, 1.0, 0.0, 0.0])  # row 3: a positive outside every threshold
    vfl = LocalizationQuality()
    assert vfl.loss(logits, onehot, quality).item() == pytest.approx(_vfl_numpy(logits, onehot, quality), rel=1e-5)
    moved = logits.clone()
    moved[3, 2] += 5.0  # the q = 0 positive's GT-class logit: no loss either way
    assert vfl.loss(moved, onehot, quality).item() == pytest.approx(vfl.loss(logits, onehot, quality).item(), rel=1e-6)
    moved[3, 1] += 5.0  # its other classes are negatives
    assert vfl.loss(moved, onehot, quality).item() > vfl.loss(logits, onehot, quality).item() + 1.0
    # the gradient of a positive pushes its probability to q: up below q, down above it
    for start, sign in ((-2.0, -1.0), (3.0, 1.0)):
        x = torch.tensor([[start]], requires_grad=True)
        vfl.loss(x, torch.ones(1, 1), torch.tensor([0.5])).backward()
        assert math.copysign(1.0, x.grad.item()) == sign


def test_head_losses_use_quality_of_their_own_matches():
    torch.manual_seed(0)
    head = _tiny_head(quality=dict())
    out = head(*_inputs(B=1, Q=12))
    losses = head.loss(out, [BOXES], [LABELS])
    codes, labels, _ = head._gt([BOXES], [LABELS], torch.device('cpu'))
    for lid, key in ((0, 'd0.loss_cls'), (1, 'loss_cls')):
        cls_l, box_l = out['all_cls_scores'][lid, 0].detach(), out['all_bbox_preds'][lid, 0].detach()
        cls_t, _, _, (q_idx, g_idx) = head._targets(cls_l, box_l, codes[0], labels[0])
        dist = np.linalg.norm(box_l[q_idx, :2].numpy() - BOXES[g_idx, :2].numpy(), axis=-1)
        quality = np.zeros(12)
        quality[q_idx.numpy()] = [np.mean([d < t for t in (0.5, 1.0, 2.0, 4.0)]) for d in dist]
        expected = head.cls_weight * _vfl_numpy(cls_l.numpy(), cls_t.numpy(), quality) / 2  # 2 GT
        assert losses[key].item() == pytest.approx(expected, rel=1e-5)
    # without quality the head keeps the focal loss
    plain = _tiny_head()
    plain.load_state_dict(head.state_dict())
    assert plain.loss(out, [BOXES], [LABELS])['loss_cls'].item() != pytest.approx(losses['loss_cls'].item(), rel=1e-3)


def test_denoising_loss_uses_quality_of_its_positives():
    torch.manual_seed(0)
    head = _tiny_head(quality=dict())
    out = head(*_inputs(B=1, Q=4))
    cls, box = out['all_cls_scores'], out['all_bbox_preds']  # (D, 1, 4, K), (D, 1, 4, 10)
    labels = torch.tensor([[4, -1, 8, -2]])  # positive, ray negative, positive, padding
    boxes = torch.zeros(1, 4, 9)
    boxes[0, 0], boxes[0, 2] = BOXES[0], BOXES[1]
    boxes[0, 0, :2] = box[-1, 0, 0, :2].detach() + torch.tensor([0.6, 0.0])  # 0.6 m off: quality 0.75
    losses = head.dn_loss(cls, box, labels, boxes)
    logits = cls[-1, 0, :3].detach().numpy()  # the scored rows: 0, 1, 2
    onehot = np.zeros((3, 10))
    onehot[0, 4] = onehot[2, 8] = 1.0
    d2 = np.linalg.norm(box[-1, 0, 2, :2].detach().numpy() - BOXES[1, :2].numpy())
    quality = np.array([0.75, 0.0, np.mean([d2 < t for t in (0.5, 1.0, 2.0, 4.0)])])
    expected = head.cls_weight * _vfl_numpy(logits, onehot, quality) / 2  # 2 positives
    assert losses['dn.loss_cls'].item() == pytest.approx(expected, rel=1e-5)


def test_errors():
    with pytest.raises(ValueError, match='thresholds must be increasing distances > 0'):
        LocalizationQuality(thresholds=(1.0, 0.5))
    with pytest.raises(ValueError, match='thresholds must be increasing distances > 0'):
        LocalizationQuality(thresholds=())
    with pytest.raises(ValueError, match='alpha must be > 0 and gamma >= 0'):
        LocalizationQuality(alpha=0.0)
    with pytest.raises(ValueError, match=r'expected two \(..., 2\) centres of one shape'):
        LocalizationQuality().targets(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r'expected logits and onehot \(..., K\) and quality'):
        LocalizationQuality().loss(torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(4))
