"""CameraConditioning: zero-init identity, which camera parameters each variant sees, token rays
and frustum points against an independent numpy computation, bad input."""
import numpy as np
import pytest
import torch

from sf3d.models.layers.camera_encoding import VARIANTS, CameraConditioning, fourier_features
from sf3d.structures.cameras import MultiViewCameras

B, N, H, W = 2, 3, 64, 96
GRID = (4, 6)
M = GRID[0] * GRID[1]
C = 16


def _rotation(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def make_params(seed=0):
    """cam2img (B, N, 3, 3) and rigid lidar2cam (B, N, 4, 4) as float64 numpy."""
    rng = np.random.default_rng(seed)
    k = np.zeros((B, N, 3, 3))
    k[..., 0, 0], k[..., 1, 1] = rng.uniform(50, 90, (B, N)), rng.uniform(50, 90, (B, N))
    k[..., 0, 2], k[..., 1, 2] = W / 2 + rng.uniform(-5, 5, (B, N)), H / 2 + rng.uniform(-5, 5, (B, N))
    k[..., 2, 2] = 1
    l2c = np.zeros((B, N, 4, 4))
    for b in range(B):
        for n in range(N):
            l2c[b, n, :3, :3] = _rotation(rng)
            l2c[b, n, :3, 3] = rng.uniform(-2, 2, 3)
    l2c[..., 3, 3] = 1
    return k, l2c


def cameras(k, l2c, dtype=torch.float64):
    return MultiViewCameras(torch.as_tensor(k, dtype=dtype), torch.as_tensor(l2c, dtype=dtype), image_size=(H, W))


def numpy_token_pixels():
    """(M, 2) token-centre pixels (u, v), row-major over the (gh, gw) grid."""
    gh, gw = GRID
    return np.array([((j + 0.5) / gw * W, (i + 0.5) / gh * H) for i in range(gh) for j in range(gw)])


def numpy_rays(k, l2c):
    """Origins and unit directions (B, N, M, 3) in the LiDAR frame."""
    uv1 = np.concatenate([numpy_token_pixels(), np.ones((M, 1))], axis=1)  # (M, 3)
    origins, dirs = np.zeros((B, N, M, 3)), np.zeros((B, N, M, 3))
    for b in range(B):
        for n in range(N):
            r, t = l2c[b, n, :3, :3], l2c[b, n, :3, 3]
            d = (r.T @ np.linalg.inv(k[b, n]) @ uv1.T).T
            dirs[b, n] = d / np.linalg.norm(d, axis=1, keepdims=True)
            origins[b, n] = -r.T @ t
    return origins, dirs


def tokens(seed=1, shape=(B * N, M, C)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def perturbed(variant):
    torch.manual_seed(0)
    module = CameraConditioning(variant, C, num_freqs=4)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
    return module


def test_unknown_variant_lists_valid_ones():
    with pytest.raises(ValueError, match="valid variants.*'none'.*'intrinsics'.*'extrinsics'.*'ray'.*'frustum'"):
        CameraConditioning('plucker', C)


@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.parametrize('shape', [(B * N, M, C), (B, N, M, C)])
def test_zero_init_is_identity(variant, shape):
    k, l2c = make_params()
    x = tokens(shape=shape)
    out = CameraConditioning(variant, C)(x, cameras(k, l2c, torch.float32), GRID)
    assert out.shape == x.shape and torch.equal(out, x)


def test_zero_init_layer_receives_gradient():
    k, l2c = make_params()
    module = CameraConditioning('ray', C)
    module(tokens(), cameras(k, l2c), GRID).square().sum().backward()
    assert module.encoder[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize('variant,sees_intrinsics,sees_extrinsics', [
    ('none', False, False), ('intrinsics', True, False), ('extrinsics', False, True),
    ('ray', True, True), ('frustum', True, True)])
def test_which_camera_parameters_each_variant_sees(variant, sees_intrinsics, sees_extrinsics):
    k, l2c = make_params(0)
    k2, l2c2 = make_params(1)
    module, x = perturbed(variant), tokens()
    with torch.no_grad():
        base = module(x, cameras(k, l2c), GRID)
        new_intrinsics = module(x, cameras(k2, l2c), GRID)
        new_extrinsics = module(x, cameras(k, l2c2), GRID)
    assert torch.equal(base, x) == (variant == 'none')
    assert torch.allclose(base, new_intrinsics, atol=1e-6) != sees_intrinsics
    assert torch.allclose(base, new_extrinsics, atol=1e-6) != sees_extrinsics


def test_rays_for_grid_match_numpy_and_pass_through_token_pixels():
    k, l2c = make_params()
    cams = cameras(k, l2c)
    origins, dirs = CameraConditioning('ray', C).rays_for_grid(cams, GRID)  # image size from the cameras
    ref_o, ref_d = numpy_rays(k, l2c)
    assert origins.shape == dirs.shape == (B, N, M, 3)
    np.testing.assert_allclose(origins.numpy(), ref_o, atol=1e-9)
    np.testing.assert_allclose(dirs.numpy(), ref_d, atol=1e-9)
    # A point at distance 5 along each ray projects back to its token's pixel in its own view.
    points = (origins + 5 * dirs).reshape(B, N * M, 3)  # (B, N * M, 3)
    uv, depth = cams.project(points)  # (B, N, N * M, 2), (B, N, N * M)
    for n in range(N):
        own = slice(n * M, (n + 1) * M)
        np.testing.assert_allclose(uv[:, n, own].numpy(), np.broadcast_to(numpy_token_pixels(), (B, M, 2)),
                                   atol=1e-9)
        assert (depth[:, n, own] > 0).all()


def test_frustum_points_lie_on_the_rays_at_the_configured_depths():
    k, l2c = make_params()
    cams = cameras(k, l2c)
    depths = (1.5, 4.0, 30.0)
    module = CameraConditioning('frustum', C, depths=depths)
    points = module.frustum_points(cams, GRID, (H, W))
    assert points.shape == (B, N, M, len(depths), 3)
    ref_o, ref_d = numpy_rays(k, l2c)
    rel = points.numpy() - ref_o[:, :, :, None]  # (B, N, M, D, 3)
    np.testing.assert_allclose(np.cross(rel, ref_d[:, :, :, None]), 0, atol=1e-9)  # on the line
    assert (np.einsum('bnmdc,bnmc->bnmd', rel, ref_d) > 0).all()  # in front of the camera
    cam_z = np.einsum('bnc,bnmdc->bnmd', l2c[..., 2, :3], points.numpy()) + l2c[..., 2, 3][:, :, None, None]
    np.testing.assert_allclose(cam_z, np.broadcast_to(depths, cam_z.shape), atol=1e-9)
    # The encoded geometry is the points normalised to [-1, 1] over pc_range.
    lo, hi = np.array(module.pc_range[:3]), np.array(module.pc_range[3:])
    geo = module._geometry(cams, GRID, (H, W)).numpy()
    np.testing.assert_allclose(geo, (2 * (points.numpy() - lo) / (hi - lo) - 1).reshape(B, N, M, -1), atol=1e-9)


def test_extrinsics_geometry_uses_canonical_intrinsics():
    k, l2c = make_params()
    canonical = np.broadcast_to(np.array([[W, 0, W / 2], [0, W, H / 2], [0, 0, 1]], dtype=float), (B, N, 3, 3))
    o, d = numpy_rays(canonical, l2c)
    geo = CameraConditioning('extrinsics', C)._geometry(cameras(k, l2c), GRID, (H, W)).numpy()
    np.testing.assert_allclose(geo, np.concatenate([d, np.cross(o, d)], axis=-1), atol=1e-9)


def test_intrinsics_geometry_is_the_camera_frame_direction():
    k, l2c = make_params()
    uv1 = np.concatenate([numpy_token_pixels(), np.ones((M, 1))], axis=1)  # (M, 3)
    ref = np.einsum('bnij,mj->bnmi', np.linalg.inv(k), uv1)
    ref /= np.linalg.norm(ref, axis=-1, keepdims=True)
    geo = CameraConditioning('intrinsics', C)._geometry(cameras(k, l2c), GRID, (H, W)).numpy()
    np.testing.assert_allclose(geo, ref, atol=1e-9)


def test_fourier_features_match_numpy():
    x = torch.tensor([[0.25, -1.0, 3.0]], dtype=torch.float64)
    out = fourier_features(x, 3).numpy()
    ang = np.array([[v * 2.0 ** i * np.pi for v in (0.25, -1.0, 3.0) for i in range(3)]])
    np.testing.assert_allclose(out, np.concatenate([x.numpy(), np.sin(ang), np.cos(ang)], axis=1), atol=1e-12)


def test_bad_input():
    k, l2c = make_params()
    module = CameraConditioning('ray', C)
    with pytest.raises(ValueError, match=r'tokens must have shape .*\(6, 24, 16\)'):
        module(tokens(shape=(B * N, M + 1, C)), cameras(k, l2c), GRID)
    no_size = MultiViewCameras(torch.as_tensor(k), torch.as_tensor(l2c))
    with pytest.raises(ValueError, match='image_size'):
        module(tokens(), no_size, GRID)
    assert module(tokens(), no_size, GRID, image_size=(H, W)).shape == (B * N, M, C)
    with pytest.raises(ValueError, match='pc_range'):
        CameraConditioning('frustum', C, pc_range=(0, 0, 0, 1, 1))
    with pytest.raises(ValueError, match='depths'):
        CameraConditioning('frustum', C, depths=(0.0, 1.0))


def test_conditions_spatialformer_tokens_and_starts_unchanged():
    from sf3d.models.backbones.spatialformer import SpatialFormer
    torch.manual_seed(0)
    backbone = SpatialFormer(arch=dict(dims=(16, 32, 64, 64), heads=(1, 2, 4, 4), depths=(1, 1, 1, 1)),
                             spatial_grid=GRID).eval()
    k, l2c = make_params()
    cams = cameras(k, l2c, torch.float32)
    images = torch.randn(B * N, 3, H, W)
    module = CameraConditioning('frustum', backbone.embed_dims[0])
    with torch.no_grad():
        s = module(backbone.initial_spatial_tokens(B * N), cams, backbone.spatial_grid)  # (B * N, M, C0)
        out = backbone(images, spatial_tokens=s)
        ref = backbone(images)
        torch.testing.assert_close(out['spatial_tokens'], ref['spatial_tokens'], rtol=0, atol=0)
        for p in module.parameters():
            p.normal_(0, 0.5)
        moved = backbone(images, spatial_tokens=module(backbone.initial_spatial_tokens(B * N), cams, GRID))
    assert not torch.allclose(moved['spatial_tokens'], ref['spatial_tokens'])
