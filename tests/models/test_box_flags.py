"""Box flags (sf3d.models.layers.box_flags): the moving-state targets and its velocity gate against
hand values, its loss on the matched queries (NaN velocities carry none), prediction zeroing the
velocity of static boxes, the DN split with both flags in the detector, an overfit that tells a
moving box from a static one, and errors."""
import math

import numpy as np
import pytest
import torch
from detector_utils import batched_cameras, build, samples_for, single_thread_fixture
from test_detr3d_head import _inputs, _tiny_head, overfit
from test_fixed_assignment import assign_batch

from sf3d.models.layers.box_flags import MovingState

one_thread = single_thread_fixture()
NAN = float('nan')


def test_moving_targets_and_gate_by_hand():
    flag = MovingState(embed_dims=8, num_layers=1, speed=0.2)
    boxes = torch.zeros(5, 9)
    boxes[:, 7:9] = torch.tensor([[0.0, 0.0], [0.1, -0.1], [0.15, 0.15], [-3.0, 4.0], [NAN, NAN]])
    t = flag.targets(boxes)  # speeds 0, 0.141, 0.212, 5, unknown
    assert t[:4].tolist() == [0.0, 0.0, 1.0, 1.0] and math.isnan(t[4].item())
    reg = flag.regression_targets(boxes)  # static velocities leave the regression, the rest is kept
    assert torch.isnan(reg[:2, 7:]).all() and torch.equal(reg[2:4], boxes[2:4]) and torch.isnan(reg[4, 7:]).all()
    codes = torch.arange(30.0).view(3, 10)
    gated = flag.apply_to_codes(codes, torch.tensor([-0.5, 0.0, 2.0]))  # static, static (logit 0), moving
    np.testing.assert_array_equal(gated[:, :8].numpy(), codes[:, :8].numpy())
    np.testing.assert_array_equal(gated[:, 8:].numpy(), [[0, 0], [0, 0], [28, 29]])
    # the loss skips unknown targets: BCE of logits (1, -1) against (1, 0), weight 0.5, over 2
    flag.loss_weight = 0.5
    loss = flag.loss(torch.tensor([1.0, -1.0, 7.0]), torch.tensor([1.0, 0.0, NAN]), 2.0)
    assert loss.item() == pytest.approx(0.5 * 2 * math.log1p(math.exp(-1.0)) / 2.0, rel=1e-6)


def test_head_loss_on_matched_queries_and_predict_gates_velocity():
    torch.manual_seed(0)
    head = _tiny_head(moving=dict(speed=0.2))
    out = head(*_inputs())
    assert out['all_moving_logits'].shape == (2, 2, 12)
    box = torch.tensor([[1.0, 2.0, -1.0, 4.0, 2.0, 1.5, 0.3, 1.0, 0.0]])
    lab = [torch.zeros(0, dtype=torch.long), torch.tensor([4])]
    losses = head.loss(out, [torch.zeros(0, 9), box], lab)
    assert set(losses) == {'loss_cls', 'loss_bbox', 'loss_moving', 'd0.loss_cls', 'd0.loss_bbox', 'd0.loss_moving'}
    q = head.assigner.assign(out['all_cls_scores'][-1, 1].detach(), out['all_bbox_preds'][-1, 1].detach(),
                             lab[1], head._encode(box)[0])[0]
    logit = out['all_moving_logits'][-1, 1, q].item()
    assert losses['loss_moving'].item() == pytest.approx(0.25 * math.log1p(math.exp(-logit)), rel=1e-5)
    unknown = box.clone()
    unknown[0, 7:9] = NAN
    assert head.loss(out, [torch.zeros(0, 9), unknown], lab)['loss_moving'].item() == 0.0
    # the velocity L1 sees only moving GT: two static velocities (0 and 0.1 m/s) give the same box loss,
    # a moving one (1 m/s, above) another
    still, slow = box.clone(), box.clone()
    still[0, 7:9], slow[0, 7:9] = 0.0, torch.tensor([0.1, 0.0])
    box_loss = [head.loss(out, [torch.zeros(0, 9), b], lab)['loss_bbox'] for b in (still, slow, box)]
    torch.testing.assert_close(box_loss[0], box_loss[1])
    assert (box_loss[2] - box_loss[0]).abs() > 1e-4
    sum(losses.values()).backward()
    assert head.moving.branches[1][-1].weight.grad.abs().sum() > 0

    head.eval()
    codes = torch.zeros(1, 1, 2, 10)
    codes[..., 2:4] = codes[..., 5] = 0.5
    codes[..., 7] = 1.0
    codes[..., 8:] = torch.tensor([3.0, -1.0])
    outputs = dict(all_cls_scores=torch.tensor([[[[3.0] + [-9.0] * 9, [2.0] + [-9.0] * 9]]]), all_bbox_preds=codes,
                   all_moving_logits=torch.tensor([[[-1.0, 1.0]]]))
    vel = head.predict(outputs)[0]['bboxes_3d'][:2, 7:9]
    np.testing.assert_allclose(vel.numpy(), [[0.0, 0.0], [3.0, -1.0]])


def test_overfit_tells_moving_from_static(one_thread):
    torch.manual_seed(0)
    head = _tiny_head(dropout=0.0, moving=dict())
    args = _inputs(B=1, Q=20, seed=1)
    gt = torch.tensor([[5.0, 3.0, -1.5, 4.2, 1.9, 1.6, 0.4, 6.0, 1.0],     # moving
                       [-8.0, 6.0, -1.0, 4.0, 1.8, 1.7, 1.4, 0.05, 0.0],  # static: under 0.2 m/s
                       [2.0, -12.0, -0.5, 10.0, 2.8, 3.5, -1.2, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 3])
    pred = overfit(head, args, gt, labels)
    assert sorted(pred['labels_3d'][:3].tolist()) == sorted(labels.tolist())
    for box, lab in zip(pred['bboxes_3d'][:3], pred['labels_3d'][:3]):
        g = gt[labels == lab][0]
        if lab == 0:  # kept: the regression (weight 0.2, still on its way) points the GT's way
            assert torch.cosine_similarity(box[7:9], g[7:9], dim=0) > 0.9 and box[7:9].norm() > 1.0, (box, g)
        else:  # exactly zero, not the regression's small residual
            assert box[7:9].abs().max().item() == 0.0, (box, g)


def test_detector_splits_dn_logits_of_both_flags():
    rigs, _, boxes, labels, _, inputs = assign_batch()
    cameras = batched_cameras(*rigs)
    samples = samples_for(cameras, boxes, labels)
    det = build(3, token_loss=dict(assign=True), denoising=dict(num_groups=2, ray_negatives=1),
                head=dict(direction=dict(), moving=dict())).train()
    det.to('cpu')  # mmengine's BaseModel.to walks nn.Module.apply: the flags must not shadow it
    gt = det._ground_truth(samples, torch.device('cpu'))
    dn = det.denoising(*gt)
    out = det.forward_outputs(inputs['img'], cameras, dn)
    Qd = dn['query'].shape[1]
    for key in ('dir', 'moving'):
        assert out[f'dn_{key}_logits'].shape[2] == Qd
        assert out[f'all_{key}_logits'].shape == out['all_cls_scores'].shape[:3]
    losses = det.loss(out, samples, cameras, (64, 96))
    dn_cls, dn_box, _ = out['dn_outputs']
    expected = det.head.dn_loss(dn_cls, dn_box, dn['labels'], dn['boxes'],
                                flag_logits=dict(dir=out['dn_dir_logits'], moving=out['dn_moving_logits']))
    for key in ('dn.loss_moving', 'dn.d0.loss_moving', 'dn.loss_dir'):
        torch.testing.assert_close(losses[key], expected[key])
    assert {'loss_moving', 'd0.loss_moving', 'loss_dir'} <= set(losses)
    det.eval()
    with torch.no_grad():
        outputs = det(inputs, samples, mode='tensor')
        preds = det(inputs, samples, mode='predict')
    static = outputs['all_moving_logits'][-1] <= 0  # (B, Q)
    codes = det.head.final_codes(outputs)
    assert (codes[..., 8:][static] == 0).all() and torch.equal(codes[..., 8:][~static],
                                                              outputs['all_bbox_preds'][-1, ..., 8:][~static])
    assert all(torch.isfinite(p['pred_instances_3d']['bboxes_3d'].tensor).all() for p in preds)


def test_errors():
    with pytest.raises(ValueError, match='speed'):
        MovingState(embed_dims=8, num_layers=1, speed=-0.1)
    with pytest.raises(ValueError, match='loss_weight'):
        MovingState(embed_dims=8, num_layers=1, loss_weight=-1.0)
    head = _tiny_head(direction=dict(), moving=dict())
    out = head(*_inputs(Q=4))
    boxes = torch.zeros(2, 4, 9)
    boxes[..., 3:6] = 1.0
    with pytest.raises(ValueError, match=r"flag_logits.*\['dir', 'moving'\]"):
        head.dn_loss(out['all_cls_scores'], out['all_bbox_preds'], torch.zeros(2, 4, dtype=torch.long), boxes,
                     flag_logits=dict(dir=out['all_dir_logits']))
