"""MultiViewDetector: shapes in every mode, losses and gradients, token-ray reference points
(numpy reference; on the real nuScenes rig they stay on their rays inside pc_range), zero-initialised
camera conditioning, learned-query baseline, predict format."""
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from pyquaternion import Quaternion

from sf3d.datasets.synthetic_nuscenes import build_calibration
from sf3d.evaluation.nuscenes_metric import NuScenesMetric
from sf3d.models.detectors.multiview_detector import MultiViewDetector, ray_depth_bounds
from sf3d.structures import LiDARBoxes, MultiViewCameras

H, W = 64, 96
GRID = (2, 3)
M = GRID[0] * GRID[1]
ARCH = dict(dims=(16, 32, 32, 32), heads=(1, 2, 2, 2), depths=(1, 1, 1, 1))
EMBED, LAYERS, K = 32, 2, 10


def rig(num_cams, f=60.0, height=1.5):
    """numpy cam2img (N, 3, 3), lidar2cam (N, 4, 4): pinhole cameras at (0.5, 0, height), looking
    horizontally outward at yaws spread over the circle (camera x right, y down, z forward)."""
    K_ = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    t = np.array([0.5, 0.0, height])
    k_all, l2c_all = [], []
    for yaw in np.linspace(0, 2 * math.pi, num_cams, endpoint=False):
        z = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        x = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
        R = np.stack([x, np.array([0, 0, -1.0]), z])  # LiDAR -> camera rotation
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = R, -R @ t
        k_all.append(K_)
        l2c_all.append(m)
    return np.stack(k_all), np.stack(l2c_all)


def batch(B=2, num_cams=2, gt=((3, 2), ), seed=0):
    """Synthetic collated batch: random images, cameras (B, N), GT boxes per sample (count, label)."""
    g = torch.Generator().manual_seed(seed)
    k, l2c = rig(num_cams)
    cams = MultiViewCameras.stack([MultiViewCameras(k, l2c, image_size=(H, W)).to(torch.float32)] * B)
    boxes, labels = [], []
    for b in range(B):
        n, label = gt[b % len(gt)]
        xy = torch.rand(n, 2, generator=g) * 20 - 10
        t = torch.cat([xy, torch.full((n, 1), -1.0), torch.tensor([[4.0, 1.8, 1.6]]).expand(n, 3),
                       torch.rand(n, 1, generator=g) * 3, torch.zeros(n, 2)], dim=1)  # (n, 9)
        boxes.append(LiDARBoxes(t))
        labels.append(torch.full((n,), label, dtype=torch.long))
    img = torch.randn(B, num_cams, 3, H, W, generator=g)
    samples = dict(cameras=cams, gt_bboxes_3d=boxes, gt_labels_3d=labels, token=[f'tok{b}' for b in range(B)],
                   pad_shape=[(H, W)] * B)
    return dict(img=img), samples


def build(num_cams=2, query_mode='spatial_tokens', conditioning='ray', backbone=None, **kwargs):
    torch.manual_seed(0)
    backbone = backbone or dict(type='SpatialFormer', arch=ARCH, spatial_grid=GRID, drop_path_rate=0.0)
    return MultiViewDetector(backbone=backbone, neck=dict(), embed_dims=EMBED, query_mode=query_mode,
                             conditioning=conditioning,
                             head=dict(num_layers=LAYERS, num_heads=2, ffn_dims=64, num_cams=num_cams, dropout=0.0),
                             **kwargs)


@pytest.fixture(scope='module')
def detector():
    return build()


def test_forward_shapes_in_all_modes(detector):
    inputs, samples = batch()
    B, Q = 2, 2 * M
    out = detector(inputs, samples, mode='tensor')
    assert out['all_cls_scores'].shape == (LAYERS, B, Q, K)
    assert out['all_bbox_preds'].shape == (LAYERS, B, Q, 10)
    assert out['ref_points'].shape == (B, Q, 3)
    losses = detector(inputs, samples, mode='loss')
    assert set(losses) == {'loss_cls', 'loss_bbox', 'd0.loss_cls', 'd0.loss_bbox'}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    preds = detector(inputs, samples, mode='predict')
    assert len(preds) == B and [p['token'] for p in preds] == ['tok0', 'tok1']


@pytest.mark.parametrize('gt', [((3, 2), (1, 7)), ((0, 0), )], ids=['with_gt', 'empty_gt'])
def test_loss_backward_gives_finite_gradients(gt):
    det = build()
    det.train()
    inputs, samples = batch(gt=gt)
    losses = det(inputs, samples, mode='loss')
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = {n: p.grad for n, p in det.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    # the whole query path is trained: content, position, depth along the ray, backbone
    for prefix in ('query_proj.', 'query_pos_mlp.', 'depth_mlp.', 'backbone.stages.0.', 'neck.'):
        assert any(n.startswith(prefix) and g.abs().sum() > 0 for n, g in grads.items()), prefix
    if gt[0][0] > 0:  # the reference points' depth is supervised through the first layer's box centres
        assert grads['depth_mlp.2.weight'].abs().sum() > 0


def test_reference_points_lie_on_their_token_rays():
    """Independent numpy reference: pixel of token (i, j) over the padded image, camera centre
    -R^T t and direction R^T K^-1 (u, v, 1) from the cameras' cam2img / lidar2cam."""
    num_cams = 6
    det = build(num_cams=num_cams).eval()
    inputs, samples = batch(B=1, num_cams=num_cams)
    ref = det(inputs, samples, mode='tensor')['ref_points'][0].detach().double().numpy().reshape(num_cams, M, 3)
    k, l2c = rig(num_cams)
    gh, gw = GRID
    uv = np.array([[(j + 0.5) / gw * W, (i + 0.5) / gh * H] for i in range(gh) for j in range(gw)])  # (M, 2)
    for n in range(num_cams):
        R, t = l2c[n, :3, :3], l2c[n, :3, 3]
        centre = -R.T @ t
        dirs = (np.linalg.inv(k[n]) @ np.c_[uv, np.ones(M)].T).T @ R  # (M, 3) LiDAR frame (R^T d as rows)
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        rel = ref[n] - centre  # (M, 3)
        depth = np.einsum('mi,mi->m', rel, dirs)
        np.testing.assert_allclose(np.cross(rel, dirs), 0, atol=1e-4)
        assert (depth >= 1.0 - 1e-4).all() and (depth <= 60.0 + 1e-4).all()


def test_conditioning_is_zero_initialised_and_wired():
    inputs, samples = batch()
    plain = build(conditioning='none').eval()
    ray = build(conditioning='ray').eval()
    missing, unexpected = ray.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith('conditioning.') for k in missing)
    with torch.no_grad():
        a, b = plain(inputs, samples, mode='tensor'), ray(inputs, samples, mode='tensor')
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
        torch.nn.init.normal_(ray.conditioning.encoder[-1].weight, std=0.1)  # a trained conditioning changes outputs
        c = ray(inputs, samples, mode='tensor')
    assert not torch.allclose(a['all_cls_scores'], c['all_cls_scores'])


def test_learned_query_mode_with_spatialformer():
    det = build(query_mode='learned', num_queries=20)
    inputs, samples = batch()
    out = det(inputs, samples, mode='tensor')
    assert out['all_cls_scores'].shape == (LAYERS, 2, 20, K)
    ref = out['ref_points']
    assert torch.equal(ref[0], ref[1])  # learned constants, shared by the batch
    lo, hi = torch.tensor([-51.2, -51.2, -5.0]), torch.tensor([51.2, 51.2, 3.0])
    assert ((ref >= lo) & (ref <= hi)).all()
    sum(det(inputs, samples, mode='loss').values()).backward()
    assert det.query_embedding.weight.grad.abs().sum() > 0 and det.reference_points.weight.grad.abs().sum() > 0


def test_learned_query_mode_with_resnet():
    det = build(query_mode='learned', num_queries=8, conditioning='none',
                backbone=dict(type='ResNet', depth=50, out_indices=(1, 2, 3), frozen_stages=-1))
    inputs, samples = batch(B=1)
    out = det(inputs, samples, mode='tensor')
    assert out['all_bbox_preds'].shape == (LAYERS, 1, 8, 10) and len(det.feat_strides) == 3
    with pytest.raises(ValueError, match='spatial tokens'):
        build(backbone=dict(type='ResNet', depth=50), conditioning='none')
    with pytest.raises(ValueError, match='spatial tokens'):
        build(backbone=dict(type='ResNet', depth=50), query_mode='learned', conditioning='ray')


def test_predict_returns_the_metric_format(detector):
    inputs, samples = batch()
    preds = detector.val_step(dict(inputs=inputs, data_samples=samples))  # through mmengine's data preprocessor
    for p in preds:
        inst = p['pred_instances_3d']
        assert isinstance(inst['bboxes_3d'], LiDARBoxes) and inst['bboxes_3d'].tensor.shape[1] == 9
        n = len(inst['bboxes_3d'])
        assert 0 < n <= 2 * M * K and inst['scores_3d'].shape == (n,) and inst['labels_3d'].dtype == torch.int64
        assert (inst['scores_3d'][:-1] >= inst['scores_3d'][1:]).all()
    # NuScenesMetric.process accepts them as they are
    stub = types.SimpleNamespace(results=[], class_names=tuple(range(K)))
    NuScenesMetric.process(stub, None, preds)
    assert [r['token'] for r in stub.results] == ['tok0', 'tok1'] and stub.results[0]['bboxes_3d'].shape[1] == 9


def test_bad_input_raises_clear_errors(detector):
    inputs, samples = batch()
    with pytest.raises(KeyError, match='cameras'):
        detector(inputs, {}, mode='tensor')
    wrong = dict(samples, cameras=samples['cameras'].select([0]))
    with pytest.raises(ValueError, match='2 cameras'):
        detector(inputs, wrong, mode='tensor')
    with pytest.raises(ValueError, match=r'\(B, N_cam, 3, H, W\)'):
        detector(dict(img=inputs['img'][0]), samples, mode='tensor')
    with pytest.raises(KeyError, match='gt_labels_3d'):
        detector(inputs, dict(cameras=samples['cameras'], gt_bboxes_3d=samples['gt_bboxes_3d']), mode='loss')
    with pytest.raises(ValueError, match='mode'):
        detector(inputs, samples, mode='boxes')
    with pytest.raises(ValueError, match='query_mode'):
        build(query_mode='anchors')
    with pytest.raises(ValueError, match='out_channels'):
        MultiViewDetector(backbone=dict(type='SpatialFormer', arch=ARCH, spatial_grid=GRID), neck=dict(out_channels=16),
                          head=dict(num_layers=1, num_cams=2), embed_dims=EMBED)


def test_train_step_updates_the_weights():
    from mmengine.optim import OptimWrapper
    det = build()
    inputs, samples = batch()
    before = det.query_proj.weight.detach().clone()
    log_vars = det.train_step(dict(inputs=inputs, data_samples=samples),
                              OptimWrapper(torch.optim.SGD(det.parameters(), lr=0.1)))
    assert torch.isfinite(log_vars['loss'].detach()) and not torch.equal(before, det.query_proj.weight)


@pytest.mark.parametrize('where', ['input', 'output'])
def test_conditioning_at_input_or_output(where):
    """Zero-initialised either way; a trained conditioning at the input changes the image features
    (the tokens talk to the image tokens inside the backbone), at the output only the tokens."""
    inputs, samples = batch()
    plain = build(conditioning='none').eval()
    det = build(conditioning='ray', conditioning_at=where).eval()
    det.load_state_dict(plain.state_dict(), strict=False)
    cameras = samples['cameras']
    with torch.no_grad():
        feats0, tokens0 = plain.extract_feats(inputs['img'], cameras)
        feats1, tokens1 = det.extract_feats(inputs['img'], cameras)
        torch.testing.assert_close(tokens0, tokens1, rtol=0, atol=0)
        torch.nn.init.normal_(det.conditioning.encoder[-1].weight, std=0.1)
        feats2, tokens2 = det.extract_feats(inputs['img'], cameras)
    assert det.conditioning.embed_dim == (ARCH['dims'][0] if where == 'input' else ARCH['dims'][-1])
    assert not torch.allclose(tokens0, tokens2)
    same_feats = all(torch.equal(a, b) for a, b in zip(feats0, feats2))
    assert same_feats == (where == 'output')


def test_conditioning_at_output_needs_a_conditioning():
    with pytest.raises(ValueError, match='conditioning_at'):
        build(conditioning='none', conditioning_at='output')
    with pytest.raises(ValueError, match='conditioning_at'):
        build(conditioning='ray', conditioning_at='middle')


# ---------------------------------------------------------------- token references on the nuScenes rig
CONFIG_DIR = Path(__file__).resolve().parents[2] / 'configs'
NUSCENES_CAMS = ('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT', 'CAM_BACK_RIGHT')
NUSCENES_PAD = (928, 1600)  # 1600x900 views padded to a multiple of 32 (sf_s.py); token pixels tile the padded input


def nuscenes_rig():
    """numpy cam2img (6, 3, 3), lidar2cam (6, 4, 4): the real nuScenes calibration at 1600x900 (one ego
    pose), from the calibrated_sensor records with pyquaternion, independently of MultiViewCameras."""
    calib = build_calibration(image_scale=1.0)

    def sensor2ego(record):
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = Quaternion(record['rotation']).rotation_matrix, record['translation']
        return m

    lidar2ego = sensor2ego(calib['LIDAR_TOP'])
    k = np.stack([np.asarray(calib[c]['camera_intrinsic'], dtype=np.float64) for c in NUSCENES_CAMS])
    l2c = np.stack([np.linalg.inv(sensor2ego(calib[c])) @ lidar2ego for c in NUSCENES_CAMS])
    return k, l2c


def test_ray_depth_bounds_hand_cases():
    pc_range, depth_range, m = (-10.0, -10.0, -5.0, 10.0, 10.0, 3.0), (1.0, 50.0), 1e-3  # margins 0.02, 0.02, 0.008 m
    origins = torch.tensor([[0.0, 0, 0], [0, 0, 0], [0, 0, 0], [-20, 0, 0], [200, 0, 0], [0, 0, 0]])
    d = math.sqrt(0.5)
    dirs = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 0, -1], [1, 0, 0], [1, 0, 0], [d, 0, d]])
    lo, hi = ray_depth_bounds(origins, dirs, pc_range, depth_range, margin=m)
    # +x: exits at x = 9.98; up: z = 2.992; down: z = -4.992; from x = -20: enters at -9.98, exits at 9.98;
    # from x = 200 facing away: never inside, keeps depth_range; 45 deg up: exits the top at t = 2.992 / d
    expected_lo = [1.0, 1.0, 1.0, 10.02, 1.0, 1.0]
    expected_hi = [9.98, 2.992, 4.992, 29.98, 50.0, 2.992 / d]
    np.testing.assert_allclose(lo.numpy(), expected_lo, rtol=1e-6)
    np.testing.assert_allclose(hi.numpy(), expected_hi, rtol=1e-6)


def test_token_references_stay_on_their_rays_on_the_nuscenes_rig():
    """sf_s.py's token grid, depth range and pc_range on the real nuScenes rig: with the depth MLP
    saturated low, neutral and high, every initial reference is inside pc_range and projects back
    (numpy) onto its own token's pixel within 0.5 px, in every grid row; the head uses it unclamped
    (d cz / d ref = (0, 0, 1) for each query), and every query's depth gets a gradient.
    At 25.5 m along the rays 57 % of the 900 references used to leave z in [-5, 3] m (77 % at 50 m)
    and were clamped off their rays with no z gradient."""
    from mmengine.config import Config
    cfg = Config.fromfile(CONFIG_DIR / 'nuscenes/sf_s.py').model
    grid, pc_range = tuple(cfg.backbone.spatial_grid), cfg.head.pc_range
    gh, gw = grid
    M_, N_ = gh * gw, len(NUSCENES_CAMS)
    torch.manual_seed(0)
    det = MultiViewDetector(backbone=dict(type='SpatialFormer', arch=ARCH, spatial_grid=grid, drop_path_rate=0.0),
                            neck=dict(num_outs=cfg.neck.num_outs), embed_dims=EMBED, depth_range=cfg.depth_range,
                            head=dict(num_layers=LAYERS, num_heads=2, ffn_dims=64, num_cams=N_, dropout=0.0,
                                      pc_range=pc_range))
    reg0 = det.head.reg_branches[0][-1]  # zero layer-0 regression: its box centres ARE the references it used
    torch.nn.init.zeros_(reg0.weight)
    torch.nn.init.zeros_(reg0.bias)
    k, l2c = nuscenes_rig()
    cameras = MultiViewCameras.stack([MultiViewCameras(k, l2c).to(torch.float32)])  # (1, 6)
    Hp, Wp = NUSCENES_PAD
    uv_token = np.array([[(j + 0.5) / gw * Wp, (i + 0.5) / gh * Hp] for i in range(gh) for j in range(gw)])  # (M, 2)
    dirs_np = np.stack([(np.linalg.inv(k[n]) @ np.c_[uv_token, np.ones(M_)].T).T @ l2c[n, :3, :3] for n in range(N_)])
    dirs_np /= np.linalg.norm(dirs_np, axis=-1, keepdims=True)  # (N, M, 3) LiDAR frame
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(1, N_, M_, ARCH['dims'][-1], generator=g)
    feats = [torch.randn(1, N_, EMBED, 2, 4, generator=g) for _ in range(cfg.neck.num_outs)]
    lo, hi = torch.tensor(pc_range[:3]), torch.tensor(pc_range[3:])
    for bias in (-20.0, 0.0, 20.0):  # depth at the near end, in between, at the far end of each ray's segment
        torch.nn.init.constant_(det.depth_mlp[-1].bias, bias)
        logits = []
        handle = det.depth_mlp.register_forward_hook(lambda mod, args, out: logits.append(out))
        q = det.token_queries(tokens, cameras, NUSCENES_PAD)
        handle.remove()
        logits[0].retain_grad()
        ref = q['ref_points']  # (1, Q, 3) metres
        ref.retain_grad()
        out = det.head(q['query'], q['query_pos'], ref, feats, cameras.lidar2img, NUSCENES_PAD)
        centres = out['all_bbox_preds'][0, 0][:, [0, 1, 4]]  # (Q, 3) the references layer 0 used
        torch.testing.assert_close(centres, ref[0], atol=2e-3, rtol=0)  # not clamped
        assert ((ref > lo) & (ref < hi)).all() and (q['depth'] >= cfg.depth_range[0]).all()
        pts = centres.detach().double().numpy().reshape(N_, M_, 3)
        for n in range(N_):
            cam = pts[n] @ l2c[n, :3, :3].T + l2c[n, :3, 3]
            assert (cam[:, 2] > 0.5).all()
            uvw = cam @ k[n].T
            err = np.abs(uvw[:, :2] / uvw[:, 2:] - uv_token).max(-1).reshape(gh, gw)  # pixels, per grid row
            assert (err < 0.5).all(), f'bias {bias}, camera {n}: max error per row {err.max(1).round(2)}'
        out['all_bbox_preds'][0, 0, :, 4].sum().backward()  # d/d cz of every query
        grad_ref = ref.grad[0]
        torch.testing.assert_close(grad_ref, torch.tensor([0.0, 0.0, 1.0]).expand_as(grad_ref), atol=1e-3, rtol=0)
        if bias == 0.0:  # d cz / d logit = dir_z * (hi - lo) * s (1 - s) along each ray's segment
            grad_logit = logits[0].grad[0, :, 0]
            assert (grad_logit != 0).all()
            s = torch.sigmoid(logits[0].detach()[0, :, 0]).double().numpy()
            d_lo, d_hi = ray_depth_bounds(q['origins'], q['dirs'], pc_range, cfg.depth_range)
            span = (d_hi - d_lo)[0].double().numpy()
            np.testing.assert_allclose(grad_logit.double().numpy(), dirs_np[..., 2].reshape(-1) * span * s * (1 - s),
                                       rtol=2e-3, atol=1e-6)
        det.zero_grad()
