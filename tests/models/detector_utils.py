"""Shared pieces of the MultiViewDetector tests (test_detector_training, test_pixel_targets,
test_fixed_assignment): tiny 64x96 pinhole rigs in numpy, the tiny detector, its data samples, and
numpy references (projection, focal loss).

Not a test module: the test modules of this folder import it as ``from detector_utils import ...``
(pytest's default ``prepend`` import mode puts a test file's folder on ``sys.path``; tests/ has no
``__init__.py``)."""
import math

import numpy as np
import pytest
import torch

from sf3d.models.detectors.multiview_detector import MultiViewDetector
from sf3d.structures import LiDARBoxes, MultiViewCameras

H, W = 64, 96  # view size
ARCH = dict(dims=(16, 32, 32, 32), heads=(1, 2, 2, 2), depths=(1, 1, 1, 1))  # tiny SpatialFormer
EMBED, K = 32, 10  # embedding dims, classes


def single_thread_fixture():
    """A fresh autouse, module-scoped pytest fixture that runs a test module with one torch thread
    and restores the previous count after it; a test module binds it: ``one_thread = single_thread_fixture()``."""
    @pytest.fixture(autouse=True, scope='module')
    def one_thread():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)

    return one_thread


# ---------------------------------------------------------------------------------- scenes
def camera(yaw, f=48.0, centre=(0.5, 0.0, 0.0), pp=(W / 2, H / 2)):
    """numpy cam2img (3, 3), lidar2cam (4, 4) of a pinhole looking horizontally at ``yaw``
    (camera x right, y down, z forward) from ``centre`` (LiDAR frame)."""
    k = np.array([[f, 0, pp[0]], [0, f, pp[1]], [0, 0, 1.0]])
    fwd = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    R = np.stack([right, [0, 0, -1.0], fwd])  # LiDAR -> camera rotation
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = R, -R @ np.asarray(centre, dtype=np.float64)
    return k, m


def rig(*views):
    """views: camera() results -> numpy cam2img (N, 3, 3), lidar2cam (N, 4, 4)."""
    return np.stack([v[0] for v in views]), np.stack([v[1] for v in views])


def batched_cameras(*rigs):
    """B numpy rigs -> MultiViewCameras (B, N) float32 with image_size (H, W)."""
    return MultiViewCameras.stack([MultiViewCameras(k, m, image_size=(H, W)).to(torch.float32) for k, m in rigs])


def build(num_cams, grid=(2, 3), query_mode='spatial_tokens', conditioning='ray', token_loss=None, seed=0, **kwargs):
    """The tiny detector (ARCH backbone with a ``grid`` of spatial tokens, a 2-layer head), seeded with ``seed``;
    ``head=dict(...)`` updates the head config, other keyword arguments go to MultiViewDetector."""
    torch.manual_seed(seed)
    head = dict(num_layers=2, num_heads=2, ffn_dims=64, num_cams=num_cams, dropout=0.0)
    head.update(kwargs.pop('head', {}))
    return MultiViewDetector(backbone=dict(type='SpatialFormer', arch=ARCH, spatial_grid=grid, drop_path_rate=0.0),
                             neck=dict(), embed_dims=EMBED, query_mode=query_mode, conditioning=conditioning,
                             head=head, token_loss=token_loss, **kwargs)


def fit(det, inputs, samples, steps, fine_steps, lr=2e-3):
    """Train ``det`` in place on one batch: ``steps`` AdamW steps at ``lr``, then ``fine_steps`` at lr / 10
    (gradient clipping at 35, as the configs)."""
    opt = torch.optim.AdamW(det.parameters(), lr=lr, weight_decay=0.0)
    drop = torch.optim.lr_scheduler.MultiStepLR(opt, [steps], gamma=0.1)
    det.train()
    for _ in range(steps + fine_steps):
        loss = sum(det(inputs, samples, mode='loss').values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(det.parameters(), 35.0)
        opt.step()
        drop.step()
    return det


def samples_for(cameras, boxes, labels):
    """Data samples of a batch: cameras (B, N), per sample boxes (G, 9) (array or tensor) and labels (G,)."""
    return dict(cameras=cameras, gt_bboxes_3d=[LiDARBoxes(torch.as_tensor(b, dtype=torch.float32)) for b in boxes],
                gt_labels_3d=[torch.as_tensor(lab, dtype=torch.long) for lab in labels],
                token=[f'tok{i}' for i in range(len(boxes))])


# ---------------------------------------------------------------------------------- numpy reference
def np_project(k, l2c, points):
    """(3, 3), (4, 4), (P, 3) -> uv (P, 2) pixels, camera depth (P,)."""
    cam = points @ l2c[:3, :3].T + l2c[:3, 3]
    uvw = cam @ k.T
    return uvw[:, :2] / uvw[:, 2:], cam[:, 2]


def np_unproject(k, l2c, uv, depth):
    """Pixel (u, v) at camera depth -> LiDAR point (3,)."""
    cam = depth * (np.linalg.inv(k) @ np.array([uv[0], uv[1], 1.0]))
    return l2c[:3, :3].T @ (cam - l2c[:3, 3])


def np_focal_sum(logits, targets, alpha=0.25, gamma=2.0):
    """Sigmoid focal loss summed over every element of logits and 0/1 targets (same shape) -> float."""
    p = 1 / (1 + np.exp(-logits))
    ce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    p_t = p * targets + (1 - p) * (1 - targets)
    return float((ce * (1 - p_t) ** gamma * (alpha * targets + (1 - alpha) * (1 - targets))).sum())
