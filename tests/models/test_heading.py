"""Heading direction bins (FCOS3D's dir_cls): the fold against numpy, the head's targets and losses
(a box and the same box turned by pi share their regression target and differ only in the
direction target), the DN split in the detector, prediction turning boxes back, an overfit that
recovers both directions, and errors."""
import math

import numpy as np
import pytest
import torch
from detector_utils import batched_cameras, build, samples_for, single_thread_fixture
from test_detr3d_head import _inputs, _tiny_head, overfit
from test_fixed_assignment import assign_batch

from sf3d.models.layers.heading import HeadingDirection, fold_yaw, unfold_yaw

one_thread = single_thread_fixture()
OFFSET = math.pi / 4


def _np_fold(yaw, offset):
    """numpy reference: the representative of yaw modulo pi in [offset - pi/2, offset + pi/2) and
    whether reaching it took an odd number of half-turns (the box faces the other way)."""
    lo = offset - math.pi / 2
    folded = lo + np.mod(yaw - lo, math.pi)
    turned = np.mod(np.round((yaw - folded) / math.pi), 2)
    return folded, turned


def test_fold_matches_numpy_and_unfold_inverts_it():
    yaw = np.concatenate([np.linspace(-7, 7, 57), [0.0, math.pi, -math.pi / 2, math.pi / 2, 3 * math.pi / 4,
                                                    -math.pi / 4]])
    folded, turned = fold_yaw(torch.tensor(yaw, dtype=torch.float64), OFFSET)
    ref_folded, ref_turned = _np_fold(yaw, OFFSET)
    np.testing.assert_allclose(folded.numpy(), ref_folded, atol=1e-12)
    np.testing.assert_array_equal(turned.numpy(), ref_turned)
    # hand cases: the road-aligned yaws stay off the seam; the seam itself is half-open
    assert turned[-6:].tolist() == [0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert folded[-2].item() == pytest.approx(-math.pi / 4) and folded[-1].item() == pytest.approx(-math.pi / 4)
    back = unfold_yaw(folded, 2 * turned - 1, OFFSET)  # logit +1 where turned, -1 where not
    np.testing.assert_allclose(np.cos(back.numpy() - yaw), 1.0, atol=1e-9)
    assert (back >= -math.pi).all() and (back < math.pi).all()
    # a prediction that spills out of the half-plane is folded first: the logit alone sets the direction
    np.testing.assert_allclose(unfold_yaw(torch.tensor([0.3 + math.pi, 0.3]), torch.tensor([-2.0, -2.0]),
                                          OFFSET).numpy(), [0.3, 0.3], atol=1e-6)


def test_head_targets_ignore_the_direction_only_in_the_regression():
    torch.manual_seed(0)
    head = _tiny_head(direction=dict(offset=OFFSET))
    out = head(*_inputs())
    assert out['all_dir_logits'].shape == (2, 2, 12)
    box = torch.tensor([[1.0, 2.0, -1.0, 4.0, 2.0, 1.5, 0.3, 1.0, 0.0]])
    turned = box.clone()
    turned[0, 6] += math.pi
    lab = [torch.zeros(0, dtype=torch.long), torch.tensor([4])]
    a = head.loss(out, [torch.zeros(0, 9), box], lab)
    b = head.loss(out, [torch.zeros(0, 9), turned], lab)
    assert set(a) == {'loss_cls', 'loss_bbox', 'loss_dir', 'd0.loss_cls', 'd0.loss_bbox', 'd0.loss_dir'}
    for key in ('loss_cls', 'loss_bbox', 'd0.loss_bbox'):
        torch.testing.assert_close(a[key], b[key])
    # one matched query: its BCE against target 0 (box) and 1 (turned), weighted, over one GT
    q = head.assigner.assign(out['all_cls_scores'][-1, 1].detach(), out['all_bbox_preds'][-1, 1].detach(),
                             lab[1], head._encode(box)[0])[0]
    logit = out['all_dir_logits'][-1, 1, q].item()
    assert a['loss_dir'].item() == pytest.approx(0.25 * math.log1p(math.exp(logit)), rel=1e-5)
    assert b['loss_dir'].item() == pytest.approx(0.25 * math.log1p(math.exp(-logit)), rel=1e-5)
    sum(a.values()).backward()
    assert head.direction.branches[1][-1].weight.grad.abs().sum() > 0


def test_predict_turns_boxes_by_their_logits():
    head = _tiny_head(direction=dict(offset=OFFSET), max_num=4).eval()
    codes = torch.zeros(1, 1, 2, 10)
    codes[..., 2:4] = codes[..., 5] = 0.5
    codes[0, 0, :, 6], codes[0, 0, :, 7] = math.sin(0.4), math.cos(0.4)  # both folded yaws 0.4
    outputs = dict(all_cls_scores=torch.tensor([[[[3.0] + [-9.0] * 9, [2.0] + [-9.0] * 9]]]), all_bbox_preds=codes,
                   all_dir_logits=torch.tensor([[[-1.0, 1.0]]]))
    yaws = head.predict(outputs)[0]['bboxes_3d'][:2, 6]
    np.testing.assert_allclose(yaws.numpy(), [0.4, 0.4 - math.pi], atol=1e-6)
    np.testing.assert_allclose(head.final_codes(outputs)[0, 1, 6:8].numpy(), [-math.sin(0.4), -math.cos(0.4)],
                               atol=1e-6)


def test_overfit_recovers_both_directions():
    torch.manual_seed(0)
    head = _tiny_head(dropout=0.0, direction=dict(offset=OFFSET))
    args = _inputs(B=1, Q=20, seed=1)
    gt = torch.tensor([[5.0, 3.0, -1.5, 4.2, 1.9, 1.6, 0.4, 2.0, 0.0],          # not turned
                       [-8.0, 6.0, -1.0, 4.0, 1.8, 1.7, 0.4 + math.pi, 0.0, 0.5],  # the same axis, turned
                       [2.0, -12.0, -0.5, 10.0, 2.8, 3.5, -1.2, -1.0, 1.0]])     # turned (folded 1.94)
    labels = torch.tensor([0, 1, 3])
    pred = overfit(head, args, gt, labels)
    assert sorted(pred['labels_3d'][:3].tolist()) == sorted(labels.tolist())
    for box, lab in zip(pred['bboxes_3d'][:3], pred['labels_3d'][:3]):
        g = gt[labels == lab][0]
        assert math.cos(box[6].item() - g[6].item()) > math.cos(0.3), (box, g)


def test_detector_splits_dn_direction_logits_and_predicts():
    rigs, _, boxes, labels, _, inputs = assign_batch()
    cameras = batched_cameras(*rigs)
    samples = samples_for(cameras, boxes, labels)
    det = build(3, token_loss=dict(assign=True), denoising=dict(num_groups=2, ray_negatives=1),
                head=dict(direction=dict(offset=OFFSET))).train()
    gt = det._ground_truth(samples, torch.device('cpu'))
    dn = det.denoising(*gt)
    out = det.forward_outputs(inputs['img'], cameras, dn)
    Qd = dn['query'].shape[1]
    assert out['dn_dir_logits'].shape[2] == Qd and out['all_dir_logits'].shape == out['all_cls_scores'].shape[:3]
    losses = det.loss(out, samples, cameras, (64, 96))
    dn_cls, dn_box, _ = out['dn_outputs']
    expected = det.head.dn_loss(dn_cls, dn_box, dn['labels'], dn['boxes'], flag_logits=dict(dir=out['dn_dir_logits']))
    for key in ('dn.loss_dir', 'dn.d0.loss_dir'):
        torch.testing.assert_close(losses[key], expected[key])
    assert {'loss_dir', 'd0.loss_dir'} <= set(losses)
    det.eval()
    with torch.no_grad():
        preds = det(inputs, samples, mode='predict')
    assert all(torch.isfinite(p['pred_instances_3d']['bboxes_3d'].tensor).all() for p in preds)


def test_errors():
    with pytest.raises(ValueError, match='offset'):
        HeadingDirection(embed_dims=8, num_layers=1, offset=4.0)
    with pytest.raises(ValueError, match='loss_weight'):
        HeadingDirection(embed_dims=8, num_layers=1, loss_weight=-1.0)
    head = _tiny_head(direction=dict())
    out = head(*_inputs(Q=4))
    boxes = torch.zeros(2, 4, 9)
    boxes[..., 3:6] = 1.0
    with pytest.raises(ValueError, match='flag_logits'):
        head.dn_loss(out['all_cls_scores'], out['all_bbox_preds'], torch.zeros(2, 4, dtype=torch.long), boxes)
    plain = _tiny_head()
    out = plain(*_inputs(Q=4))
    with pytest.raises(ValueError, match='flag_logits'):
        plain.dn_loss(out['all_cls_scores'], out['all_bbox_preds'], torch.zeros(2, 4, dtype=torch.long), boxes,
                      flag_logits=dict(dir=torch.zeros(2, 2, 4)))
