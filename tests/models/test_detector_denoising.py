"""MultiViewDetector with denoising queries: the matching part of the decoder is unchanged by the
DN queries run beside it (the mask), the DN losses are the head's dn_loss of the DN outputs, both
query modes train, and evaluation / prediction never build DN queries."""
import math

import pytest
import torch
from detector_utils import batched_cameras, build, camera, rig, samples_for, single_thread_fixture
from test_fixed_assignment import assign_batch

one_thread = single_thread_fixture()
DN = dict(num_groups=2, ray_negatives=1)


@pytest.mark.parametrize('mode', ['spatial_tokens', 'learned'])
def test_dn_queries_leave_the_matching_queries_unchanged(mode):
    rigs, _, boxes, labels, _, inputs = assign_batch()
    cameras = batched_cameras(*rigs)
    samples = samples_for(cameras, boxes, labels)
    extra = dict(token_loss=dict(assign=True)) if mode == 'spatial_tokens' else dict(conditioning='none')
    det = build(3, query_mode=mode, denoising=DN, **extra).train()
    gt = det._ground_truth(samples, torch.device('cpu'))
    torch.manual_seed(3)
    dn = det.denoising(*gt)
    with torch.no_grad():
        with_dn = det.forward_outputs(inputs['img'], cameras, dn)
        plain = det.forward_outputs(inputs['img'], cameras)
    Qd = dn['query'].shape[1]
    assert Qd == 2 * 2 * max(len(b) for b in boxes)
    torch.testing.assert_close(with_dn['all_cls_scores'], plain['all_cls_scores'], atol=1e-5, rtol=0)
    torch.testing.assert_close(with_dn['all_bbox_preds'], plain['all_bbox_preds'], atol=1e-4, rtol=1e-5)  # metres
    torch.testing.assert_close(with_dn['ref_points'], plain['ref_points'])
    dn_cls, dn_box, _ = with_dn['dn_outputs']
    assert dn_cls.shape[2] == Qd and dn_box.shape[2] == Qd
    # the loss adds exactly the head's dn_loss of those outputs
    losses = det.loss(with_dn, samples, cameras, (64, 96))
    expected = det.head.dn_loss(dn_cls, dn_box, dn['labels'], dn['boxes'])
    assert {k for k in losses if k.startswith('dn.')} == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value)
    plain_losses = det.loss(plain, samples, cameras, (64, 96))
    for key, value in plain_losses.items():
        torch.testing.assert_close(losses[key], value, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('mode', ['spatial_tokens', 'learned'])
def test_dn_trains_and_stays_out_of_eval(mode):
    rigs, _, boxes, labels, _, inputs = assign_batch()
    samples = samples_for(batched_cameras(*rigs), boxes, labels)
    extra = dict(token_loss=dict(assign=True), depth_bins=2) if mode == 'spatial_tokens' else dict(conditioning='none')
    det = build(3, query_mode=mode, denoising=DN, **extra).train()
    losses = det(inputs, samples, mode='loss')
    assert {'dn.loss_cls', 'dn.loss_bbox', 'dn.d0.loss_cls', 'dn.d0.loss_bbox'} <= set(losses)
    sum(losses.values()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in det.parameters())
    assert det.denoising.label_embed.weight.grad.abs().sum() > 0
    det.eval()
    with torch.no_grad():
        assert not any(k.startswith('dn.') for k in det(inputs, samples, mode='loss'))
        out = det(inputs, samples, mode='tensor')
        assert 'dn_outputs' not in out
        det(inputs, samples, mode='predict')


def test_dn_with_a_batch_without_gt():
    ks, l2cs = rig(camera(0.0), camera(math.radians(120)), camera(math.radians(-120)))
    cameras = batched_cameras((ks, l2cs), (ks, l2cs))
    samples = samples_for(cameras, [torch.zeros(0, 9)] * 2, [torch.zeros(0, dtype=torch.long)] * 2)
    det = build(3, denoising=DN).train()
    losses = det(dict(img=torch.randn(2, 3, 3, 64, 96)), samples, mode='loss')
    assert not any(k.startswith('dn.') for k in losses) and all(torch.isfinite(v) for v in losses.values())
