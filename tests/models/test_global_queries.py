"""Global learned queries beside the token queries (global_queries=G, Far3D): the decoder gets the
selected token queries first, then DETR3D's G learned queries with their own references; both
parts train; the option is bit-identical off and rejected where it does not apply."""
import pytest
import torch
from detector_utils import batched_cameras, build, samples_for, single_thread_fixture
from test_fixed_assignment import assign_batch

one_thread = single_thread_fixture()
TOKENS = dict(token_loss=dict(assign=True), depth_bins=2, num_select=10)


def test_global_queries_follow_the_token_queries():
    rigs, _, boxes, labels, _, inputs = assign_batch()
    cameras = batched_cameras(*rigs)
    plain = build(3, **TOKENS).eval()
    det = build(3, global_queries=7, **TOKENS).eval()
    with torch.no_grad():
        out = det.forward_outputs(inputs['img'], cameras)
        ref = plain.forward_outputs(inputs['img'], cameras)
        _, _, global_ref = det.learned_queries(2)
    assert out['all_cls_scores'].shape[2] == 10 + 7 and out['ref_points'].shape == (2, 17, 3)
    torch.testing.assert_close(out['ref_points'][:, :10], ref['ref_points'])  # the same selected token queries
    torch.testing.assert_close(out['ref_points'][:, 10:], global_ref)
    preds = det(inputs, samples_for(cameras, boxes, labels), mode='predict')
    assert len(preds) == 2 and all(len(p['pred_instances_3d']['scores_3d']) > 0 for p in preds)


def test_global_queries_train_beside_the_owner_assignment():
    rigs, _, boxes, labels, _, inputs = assign_batch()
    samples = samples_for(batched_cameras(*rigs), boxes, labels)
    det = build(3, global_queries=7, denoising=dict(num_groups=1), **TOKENS).train()
    losses = det(inputs, samples, mode='loss')
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert det.query_embedding.weight.grad.abs().sum() > 0 and det.reference_points.weight.grad.abs().sum() > 0
    assert det.query_proj.weight.grad.abs().sum() > 0


def test_global_queries_off_is_the_token_model_and_bad_values_raise():
    a, b = build(3, **TOKENS), build(3, global_queries=0, **TOKENS)
    assert not hasattr(b, 'query_embedding')
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match='global_queries must be an integer >= 0'):
            build(3, global_queries=bad, **TOKENS)
    with pytest.raises(ValueError, match="only with query_mode='spatial_tokens'"):
        build(3, query_mode='learned', conditioning='none', global_queries=5)
