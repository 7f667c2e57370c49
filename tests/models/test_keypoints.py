"""Several sampling points per query (sf3d/models/layers/keypoints.py) in DETR3D's cross-attention:
the points start at the fixed pattern about each reference point and the attention reads exactly the
average of what sample_features reads there; one point is DETR3D; the points learn."""
import numpy as np
import pytest
import torch
from detector_utils import H, W, camera, rig

from sf3d.models.heads.box_coder import denormalize_points, inverse_sigmoid
from sf3d.models.heads.detr3d_head import DETR3DCrossAttention, DETR3DHead
from sf3d.models.layers.feature_sampling import sample_features
from sf3d.models.layers.keypoints import QueryKeypoints

B, Q, C, N, STRIDES = 2, 20, 8, 3, (4, 8)
SPREAD = (1.5, 1.0, 0.5)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(B, N, C, H // s, W // s, generator=g) for s in STRIDES]
    ks, l2c = rig(camera(0.0), camera(2.1), camera(-2.1))
    l2i = np.tile(np.eye(4), (N, 1, 1))
    l2i[:, :3, :3] = ks
    l2i = torch.tensor(l2i @ l2c, dtype=torch.float32).expand(B, N, 4, 4)
    ref_norm = 0.5 + (torch.rand(B, Q, 3, generator=g) - 0.5) * torch.tensor([0.3, 0.3, 0.2])  # within ~15 m
    return torch.randn(B, Q, C, generator=g), torch.randn(B, Q, C, generator=g), ref_norm, feats, l2i


def _attention(**kw):
    torch.manual_seed(0)
    return DETR3DCrossAttention(embed_dims=C, num_cams=N, num_levels=len(STRIDES), dropout=0.0, **kw).eval()


def test_keypoints_start_at_the_pattern_and_are_averaged():
    query, query_pos, ref_norm, feats, l2i = _inputs()
    attn = _attention(keypoints=dict(num_points=7, spread=SPREAD))
    got, _ = attn(query, query_pos, ref_norm, feats, l2i, (H, W))
    # independent: the seven points by hand, each sampled with sample_features and weighted by
    # sigmoid(0) = 0.5 (zero-initialised attention weights), averaged over the points
    sx, sy, sz = SPREAD
    pattern = torch.tensor([[0, 0, 0], [sx, 0, 0], [-sx, 0, 0], [0, sy, 0], [0, -sy, 0], [0, 0, sz], [0, 0, -sz]])
    centres = denormalize_points(ref_norm, attn.pc_range)  # (B, Q, 3)
    seen, summed = 0, torch.zeros(B, Q, C)
    for offset in pattern:
        sampled, mask = sample_features(feats, centres + offset, l2i, (H, W))  # (B, C, Q, N, L), (B, Q, N)
        summed += 0.5 * sampled.sum((-1, -2)).transpose(1, 2)
        seen += int(mask.sum())
    assert seen > B * Q  # the test reads features, not only zeros
    pos = attn.position_encoder(inverse_sigmoid(ref_norm))
    expected = attn.output_proj(summed / len(pattern)) + query + pos
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    offsets = attn.keypoints(query + query_pos)
    torch.testing.assert_close(offsets, pattern.float().expand(B, Q, 7, 3))


def test_one_keypoint_is_detr3d():
    inputs = _inputs(1)
    plain = _attention()
    one = _attention(keypoints=dict(num_points=1))
    missing, unexpected = one.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ['keypoints.offsets.bias', 'keypoints.offsets.weight'] and not unexpected
    torch.testing.assert_close(one(*inputs, (H, W))[0], plain(*inputs, (H, W))[0])


def test_keypoints_learn_in_every_layer():
    """The offsets get gradient through the bilinear sampling (they start with zero weight, so only
    a non-zero gradient lets them depend on the query), in every decoder layer."""
    query, query_pos, ref_norm, feats, l2i = _inputs(2)
    torch.manual_seed(0)
    head = DETR3DHead(num_classes=10, embed_dims=C, num_heads=2, ffn_dims=16, num_layers=2, num_cams=N,
                      num_levels=len(STRIDES), dropout=0.0, keypoints=dict(num_points=5, spread=SPREAD))
    out = head(query, query_pos, denormalize_points(ref_norm, head.pc_range), feats, l2i, (H, W))
    (out['all_bbox_preds'].square().sum() + out['all_cls_scores'].sum()).backward()
    for layer in head.decoder.layers:
        kp = layer.cross_attn.keypoints
        assert kp.num_points == 5 and layer.cross_attn.attention_weights.out_features == N * len(STRIDES) * 5
        assert kp.offsets.weight.grad.abs().sum() > 0 and kp.offsets.bias.grad.abs().sum() > 0


@pytest.mark.parametrize('kwargs, match', [(dict(num_points=0), 'num_points'), (dict(num_points=8), 'num_points'),
                                           (dict(num_points=2.5), 'num_points'), (dict(spread=(1.0, 1.0)), 'spread'),
                                           (dict(spread=(1.0, -1.0, 0.5)), 'spread')])
def test_keypoints_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QueryKeypoints(embed_dims=C, **kwargs)


def test_two_frames_sample_the_same_keypoints_where_the_object_was(monkeypatch):
    """With two frames the previous frame is sampled at the same offsets about ref - matched * dt."""
    from sf3d.models.heads import detr3d_head
    query, query_pos, ref_norm, feats, l2i = _inputs(3)
    torch.manual_seed(0)
    attn = DETR3DCrossAttention(embed_dims=C, num_cams=N, num_levels=len(STRIDES), num_frames=2, dropout=0.0,
                                velocity_matching=dict(grid=3, step=2.0, match_dims=4, level=1),
                                keypoints=dict(num_points=7, spread=SPREAD)).eval()
    calls, real = [], detr3d_head.weighted_features

    def spy(f, points, *args):
        calls.append(points)
        return real(f, points, *args)

    monkeypatch.setattr(detr3d_head, 'weighted_features', spy)
    frame_dt = torch.tensor([[0.0, 0.5], [0.0, 0.25]])
    velocity = torch.randn(B, Q, 2)
    out, (matched, _, _) = attn(query, query_pos, ref_norm, [torch.cat([f, f.flip(-1)], 1) for f in feats],
                                torch.cat([l2i, l2i], 1), (H, W), velocity, frame_dt)
    assert out.shape == (B, Q, C) and torch.isfinite(out).all() and len(calls) == 2
    sx, sy, sz = SPREAD
    pattern = torch.tensor([[0, 0, 0], [sx, 0, 0], [-sx, 0, 0], [0, sy, 0], [0, -sy, 0], [0, 0, sz], [0, 0, -sz]])
    ref = denormalize_points(ref_norm, attn.pc_range)  # (B, Q, 3)
    was = ref.clone()
    was[..., :2] -= matched * frame_dt[:, 1, None, None]
    torch.testing.assert_close(calls[0].view(B, Q, 7, 3), ref[:, :, None] + pattern.float())
    torch.testing.assert_close(calls[1].view(B, Q, 7, 3), was[:, :, None] + pattern.float())
