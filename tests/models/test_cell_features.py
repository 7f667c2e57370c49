"""FPN cell features for the spatial tokens (sf3d.models.layers.cell_features): the cell means against
numpy blocks, in the order of the cameras' token centres; identity at initialisation, a gradient for
the projection; the detector composes it (and refuses it without spatial tokens); errors."""
import numpy as np
import pytest
import torch
from detector_utils import batched_cameras, build, camera, rig, samples_for
from test_fixed_assignment import assign_batch

from sf3d.models.layers.cell_features import CellFeatures


def test_cell_means_are_numpy_blocks_in_token_order():
    mod = CellFeatures(fpn_dims=3, token_dims=5, grid=(3, 5))
    feat = torch.randn(2, 4, 3, 12, 20)  # 4 x 4 pixel cells
    got = mod.cell_means(feat).numpy()  # (B, N, 15, C)
    f = feat.numpy()
    ref = f.reshape(2, 4, 3, 3, 4, 5, 4).mean((4, 6))  # (B, N, C, gh, gw)
    np.testing.assert_allclose(got, ref.reshape(2, 4, 3, 15).transpose(0, 1, 3, 2), rtol=1e-5, atol=1e-6)
    # token m's centre (MultiViewCameras.pixel_grid, at stride 1 here) lies inside the cell averaged for m
    cams = batched_cameras(rig(camera(0.0)))
    uv = cams.pixel_grid((3, 5), (12, 20))[0, 0]  # (15, 2)
    marker = torch.zeros(1, 1, 1, 12, 20)
    for m, (u, v) in enumerate(uv.tolist()):
        marker[..., int(v), int(u)] = m + 1.0
    np.testing.assert_allclose(mod.cell_means(marker)[0, 0, :, 0].numpy() * 16, np.arange(1, 16))


def test_identity_at_init_and_gradient():
    torch.manual_seed(0)
    mod = CellFeatures(fpn_dims=8, token_dims=6, grid=(2, 3))
    tokens, feat = torch.randn(1, 2, 6, 6), torch.randn(1, 2, 8, 8, 12)
    out = mod(tokens, feat)
    assert torch.equal(out, tokens)
    out.square().sum().backward()
    assert mod.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        mod.proj.weight.normal_()
    assert not torch.allclose(mod(tokens, feat), tokens)


def test_detector_composes_cell_features():
    rigs, _, boxes, labels, _, inputs = assign_batch()
    cameras = batched_cameras(*rigs)
    samples = samples_for(cameras, boxes, labels)
    det = build(3, token_loss=dict(assign=True), cell_features=True).train()
    with torch.no_grad():
        det.cell_features.proj.weight.normal_(std=0.1)
    losses = det(inputs, samples, mode='loss')
    sum(losses.values()).backward()
    assert det.cell_features.proj.weight.grad.abs().sum() > 0  # the token losses reach it
    plain = build(3, token_loss=dict(assign=True)).train()
    assert sum(p.numel() for p in det.parameters()) > sum(p.numel() for p in plain.parameters())
    with pytest.raises(ValueError, match="cell_features=True needs query_mode='spatial_tokens'"):
        build(3, query_mode='learned', conditioning='none', cell_features=True)


def test_errors():
    mod = CellFeatures(fpn_dims=4, token_dims=4, grid=(2, 3))
    with pytest.raises(ValueError, match=r'tokens must be \(B, N, 2 x 3, C\)'):
        mod(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 4, 8, 8))
    with pytest.raises(ValueError, match='the FPN level must be'):
        mod(torch.zeros(1, 2, 6, 4), torch.zeros(1, 2, 4, 1, 8))
