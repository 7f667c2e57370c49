"""BoxDeformableAttention: sampling locations, Deformable DETR's initialisation, and the output
against a numpy bilinear-sampling reference written from the definition (pixel centres at
(j + 0.5) * stride in input pixels, zeros outside the map and in the padding)."""
import itertools

import numpy as np
import pytest
import torch

from sf3d.models.layers import BoxDeformableAttention


def _bilinear(vmap, x, y):
    """vmap (c, h, w); (x, y) continuous pixel coordinates of the map (centre of pixel j at j + 0.5)."""
    c, h, w = vmap.shape
    x, y = x - 0.5, y - 0.5
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    out = np.zeros(c)
    for xi, yi in itertools.product((x0, x0 + 1), (y0, y0 + 1)):
        wt = (1 - abs(x - xi)) * (1 - abs(y - yi))
        if 0 <= xi < w and 0 <= yi < h:
            out += wt * vmap[:, yi, xi]
    return out


def _reference(attn, query, ref, memory, valid, shapes, strides, img_shapes):
    """Independent numpy forward of BoxDeformableAttention (same parameters)."""
    p = {k: v.detach().double().numpy() for k, v in attn.state_dict().items()}
    q, ref, mem = query.double().numpy(), ref.double().numpy(), memory.double().numpy()
    B, Q, C = q.shape
    H, L, P = attn.num_heads, attn.num_levels, attn.num_points
    d = C // H
    value = mem @ p['value_proj.weight'].T + p['value_proj.bias']
    value[~valid.numpy()] = 0
    off = (q @ p['sampling_offsets.weight'].T + p['sampling_offsets.bias']).reshape(B, Q, H, L, P, 2)
    logits = (q @ p['attention_weights.weight'].T + p['attention_weights.bias']).reshape(B, Q, H, L * P)
    wts = np.exp(logits - logits.max(-1, keepdims=True))
    wts = (wts / wts.sum(-1, keepdims=True)).reshape(B, Q, H, L, P)
    out = np.zeros((B, Q, C))
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    for b, qi, hd in itertools.product(range(B), range(Q), range(H)):
        acc = np.zeros(d)
        for lvl, (h, w) in enumerate(shapes):
            vmap = value[b, starts[lvl]:starts[lvl + 1], hd * d:(hd + 1) * d].T.reshape(d, h, w)
            for pt in range(P):
                u = ref[b, qi, 0] + off[b, qi, hd, lvl, pt, 0] / P * ref[b, qi, 2] / 2  # image-normalised
                v = ref[b, qi, 1] + off[b, qi, hd, lvl, pt, 1] / P * ref[b, qi, 3] / 2
                x_px, y_px = u * img_shapes[b][1], v * img_shapes[b][0]  # input pixels
                acc += wts[b, qi, hd, lvl, pt] * _bilinear(vmap, x_px / strides[lvl], y_px / strides[lvl])
        out[b, qi, hd * d:(hd + 1) * d] = acc
    return out @ p['output_proj.weight'].T + p['output_proj.bias']


def test_matches_a_numpy_reference_with_padding():
    torch.manual_seed(0)
    attn = BoxDeformableAttention(embed_dims=8, num_heads=2, num_levels=2, num_points=3)
    for lin in (attn.sampling_offsets, attn.attention_weights):  # leave the init: random queries move the points
        torch.nn.init.normal_(lin.weight, std=0.5)
    strides, shapes = (8, 16), [(4, 6), (2, 3)]  # a (32, 48) padded input
    img_shapes = [(30.0, 40.0), (32.0, 48.0)]  # image 0 padded: the right column of level 0 starts in it
    memory = torch.randn(2, 4 * 6 + 2 * 3, 8)
    valid = torch.ones(2, 30, dtype=torch.bool)
    valid[0, [5, 11, 17, 23]] = False  # level-0 column 5 starts at x = 40 >= 40
    query, ref = torch.randn(2, 3, 8), torch.rand(2, 3, 4) * 0.6 + 0.2
    scales = torch.tensor([[[40 / (6 * 8), 30 / (4 * 8)], [40 / (3 * 16), 30 / (2 * 16)]],
                           [[1.0, 1.0], [1.0, 1.0]]])
    with torch.no_grad():
        got = attn(query, ref, memory, valid, shapes, scales)
    expected = _reference(attn, query, ref, memory, valid, shapes, strides, img_shapes)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_initial_points_lie_on_rays_inside_the_box_and_weights_are_uniform():
    attn = BoxDeformableAttention(embed_dims=16, num_heads=4, num_levels=2, num_points=2)
    query, ref = torch.randn(1, 1, 16), torch.tensor([[[0.5, 0.4, 0.2, 0.4]]])
    loc = attn.sampling_locations(query, ref)[0, 0]  # (H, L, P, 2)
    # heads point right, down, left, up; point p at (p + 1) / P of the half-size
    expected = torch.tensor([[[0.55, 0.4], [0.6, 0.4]], [[0.5, 0.5], [0.5, 0.6]],
                             [[0.45, 0.4], [0.4, 0.4]], [[0.5, 0.3], [0.5, 0.2]]])
    for lvl in range(2):
        torch.testing.assert_close(loc[:, lvl], expected, atol=1e-6, rtol=0)
    weights = attn.attention_weights(query).view(4, 4).softmax(-1)
    torch.testing.assert_close(weights, torch.full((4, 4), 0.25))


def test_bad_shapes_raise():
    attn = BoxDeformableAttention(embed_dims=8, num_heads=2, num_levels=2)
    with pytest.raises(ValueError, match='built for 2 levels'):
        attn(torch.randn(1, 3, 8), torch.rand(1, 3, 4), torch.randn(1, 24, 8), torch.ones(1, 24, dtype=torch.bool),
             [(4, 6)], torch.ones(1, 1, 2))
    with pytest.raises(ValueError, match='divisible'):
        BoxDeformableAttention(embed_dims=10, num_heads=4, num_levels=1)
