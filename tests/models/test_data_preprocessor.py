"""MultiViewDataPreprocessor and its batched photometric distortion / GridMask, against numpy and
OpenCV references (normalisation, HSV round trip, DETR3D's GridMask loop) and distribution checks."""
import cv2
import numpy as np
import pytest
import torch

from sf3d.datasets.transforms import GridMask
from sf3d.models.data_preprocessors import BatchGridMask, BatchPhotometricDistortion, MultiViewDataPreprocessor
from sf3d.models.data_preprocessors.multiview import grid_keep, hsv_to_rgb, rgb_to_hsv
from sf3d.registry import MODELS
from sf3d.structures import LiDARBoxes, MultiViewCameras

MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def batch(b=2, n=3, h=24, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, n, 3, h, w), dtype=torch.uint8, generator=g)


def full_preprocessor():
    return MODELS.build(dict(type='MultiViewDataPreprocessor', mean=MEAN, std=STD, photometric={}, grid_mask={}))


def test_eval_mode_is_plain_normalisation():
    img = batch()
    pre = full_preprocessor()
    cams = MultiViewCameras(torch.eye(3).expand(2, 3, 3, 3), torch.eye(4).expand(2, 3, 4, 4))
    boxes = [LiDARBoxes(torch.tensor([[1.0, 2, 0, 4, 2, 1.5, 0.3, 0, 0]])), LiDARBoxes(torch.zeros(0, 9))]
    samples = dict(cameras=cams, gt_bboxes_3d=boxes, gt_labels_3d=[torch.zeros(1, dtype=torch.long)] * 2,
                   token=['a', 'b'])
    out = pre(dict(inputs=dict(img=img), data_samples=samples), False)
    x = out['inputs']['img']
    assert x.dtype == torch.float32 and x.shape == img.shape and x.device == torch.device('cpu')
    ref = (img.numpy().astype(np.float64) - np.reshape(MEAN, (3, 1, 1))) / np.reshape(STD, (3, 1, 1))
    np.testing.assert_allclose(x.numpy(), ref, rtol=1e-5, atol=1e-5)
    floats = pre(dict(inputs=dict(img=img.float()), data_samples=samples), False)['inputs']['img']
    assert torch.equal(floats, x)  # uint8 and float inputs give the same result
    ds = out['data_samples']
    assert isinstance(ds['cameras'], MultiViewCameras) and torch.equal(ds['cameras'].cam2img, cams.cam2img)
    assert all(isinstance(b, LiDARBoxes) for b in ds['gt_bboxes_3d']) and ds['token'] == ['a', 'b']
    assert img.dtype == torch.uint8  # the input is not modified


def test_training_mode_changes_pixels_and_off_switches():
    img = batch(b=2, n=6)
    torch.manual_seed(0)
    x = full_preprocessor()(dict(inputs=dict(img=img), data_samples={}), True)['inputs']['img']
    plain = (img.float() - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert x.shape == img.shape and x.dtype == torch.float32
    changed = (x - plain).abs().flatten(2).amax(-1) > 1e-3  # (B, N) per view
    assert changed.float().mean() > 0.5
    off = MultiViewDataPreprocessor(mean=MEAN, std=STD)  # no photometric, no GridMask: training = eval
    assert torch.allclose(off(dict(inputs=dict(img=img)), True)['inputs']['img'], plain, atol=1e-5)


def test_hsv_round_trip_matches_opencv():
    rng = np.random.default_rng(1)
    rgb = rng.uniform(0, 255, (2, 17, 23, 3)).astype(np.float32)
    rgb[0, :3] = 77.0  # grey pixels: zero chroma
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2)  # (M, 3, H, W)
    h, s, v = rgb_to_hsv(x)
    s = (s * 1.4).clamp(0, 1)
    h = torch.remainder(h + 25.0, 360.0)
    ours = hsv_to_rgb(h, s, v).permute(0, 2, 3, 1).numpy()
    for i in range(2):
        hsv = cv2.cvtColor(rgb[i] / 255.0, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = np.clip(hsv[..., 1] * 1.4, 0, 1)
        hsv[..., 0] = np.mod(hsv[..., 0] + 25.0, 360.0)
        ref = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
        np.testing.assert_allclose(ours[i], ref, atol=0.05)
    identity = hsv_to_rgb(*rgb_to_hsv(x))
    np.testing.assert_allclose(identity.numpy(), x.numpy(), atol=1e-3)


def test_photometric_draws_per_image():
    torch.manual_seed(0)
    flat = torch.full((400, 3, 4, 4), 100.0)
    bright = BatchPhotometricDistortion(brightness_delta=32, contrast_range=(1, 1), saturation_range=(1, 1),
                                        hue_delta=0, channel_swap=False)(flat)
    delta = bright[:, 0, 0, 0] - 100
    assert torch.allclose(bright, bright[:, :1, :1, :1].expand_as(bright), atol=1e-3)  # one value per image
    moved = delta.abs() > 1e-3
    assert 0.4 < moved.float().mean() < 0.6 and delta.abs().max() <= 32 + 1e-3
    colour = torch.tensor([200.0, 100.0, 50.0]).view(1, 3, 1, 1).expand(400, 3, 2, 2)
    swapped = BatchPhotometricDistortion(brightness_delta=0, contrast_range=(1, 1), saturation_range=(1, 1),
                                         hue_delta=0, channel_swap=True)(colour)
    firsts = swapped[:, :, 0, 0].round()  # the HSV round trip is exact up to float32 rounding
    assert torch.equal(firsts.sort(dim=1).values, torch.tensor([50.0, 100.0, 200.0]).expand(400, 3))  # permutations
    kept = (firsts == torch.tensor([200.0, 100.0, 50.0])).all(1).float().mean()
    assert 0.5 < kept < 0.7  # 0.5 unswapped + 0.5 * 1/6 identity permutations
    with pytest.raises(ValueError, match='contrast_range'):
        BatchPhotometricDistortion(contrast_range=(1.5, 0.5))


def detr3d_keep(h, w, d, stripe, st_h, st_w, mode):
    """DETR3D's GridMask loop (unrotated): stripes on a 1.5x canvas, centre crop; 1 = keep."""
    hh, ww = int(1.5 * h), int(1.5 * w)
    mask = np.ones((hh, ww), np.float32)
    for i in range(hh // d):
        s = d * i + st_h
        mask[s:min(s + stripe, hh), :] = 0
    for i in range(ww // d):
        s = d * i + st_w
        mask[:, s:min(s + stripe, ww)] = 0
    mask = mask[(hh - h) // 2:(hh - h) // 2 + h, (ww - w) // 2:(ww - w) // 2 + w]
    return 1 - mask if mode == 1 else mask


@pytest.mark.parametrize('mode', [0, 1])
def test_grid_keep_matches_detr3d_loop(mode):
    rng = np.random.default_rng(mode)
    h, w = 30, 52
    d = rng.integers(2, h, 12)
    stripe = np.clip((d * 0.5 + 0.5).astype(int), 1, d - 1)
    st_h, st_w = rng.integers(0, d), rng.integers(0, d)
    keep = grid_keep(h, w, *(torch.from_numpy(a) for a in (d, stripe, st_h, st_w)), True, True, mode)
    for i in range(len(d)):
        np.testing.assert_array_equal(keep[i].numpy(), detr3d_keep(h, w, d[i], stripe[i], st_h[i], st_w[i], mode))


def test_grid_mask_rate_matches_the_transform():
    h, w, m = 36, 64, 600
    torch.manual_seed(0)
    out = BatchGridMask(ratio=0.5, mode=1, prob=0.7)(torch.ones(m, 3, h, w))
    assert torch.equal(out[:, 0], out[:, 2])  # one mask for the channels of an image
    masked = (out[:, 0] == 0).flatten(1).float()  # (M, H * W)
    assert abs((masked.amax(1) > 0).float().mean().item() - 0.7) < 0.06  # fraction of images with a mask
    np.random.seed(0)
    ref = np.mean([1 - GridMask(ratio=0.5, mode=1, prob=1.0).mask(h, w).mean() for _ in range(m)])
    assert 0.15 < ref < 0.35  # about (1 - ratio)^2 of a masked image
    assert abs(masked.mean().item() - 0.7 * ref) < 0.03
    with pytest.raises(ValueError, match='mode'):
        BatchGridMask(mode=2)


def test_bad_input_raises():
    pre = MultiViewDataPreprocessor()
    with pytest.raises(ValueError, match=r'\(B, N_cam, 3, H, W\)'):
        pre(dict(inputs=dict(img=torch.zeros(2, 3, 8, 8))), False)
    with pytest.raises(KeyError, match='inputs'):
        pre(dict(img=torch.zeros(1, 1, 3, 8, 8)), False)
    with pytest.raises(ValueError, match='std > 0'):
        MultiViewDataPreprocessor(std=[1.0, 0.0, 1.0])
    with pytest.raises(TypeError):
        MultiViewDataPreprocessor(grid_mask=dict(rotate=360))  # rotation is not supported
