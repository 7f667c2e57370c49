"""Segmentation transforms: label loading (reduce_zero_label), resize geometry against OpenCV /
torch and hand-computed sizes, image-label alignment, crop geometry, mmseg's cat_max_ratio retry
rule (ignore label not counted), the test-time resize, photometric distortion, and bad input."""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sf3d.datasets.transforms.image import PhotoMetricDistortionMultiView
from sf3d.datasets.transforms.seg_transforms import (LoadSegAnnotation, PhotoMetricDistortionSeg, RandomCropSeg,
                                                     RandomResizeSeg, ResizeSegTest, rescaled_size, resize_seg_map)


def _png(path, array, mode=None):
    img = Image.fromarray(np.asarray(array, np.uint8))
    if mode == 'P':
        img = img.convert('P')
    elif mode == 'RGB':
        img = img.convert('RGB')
    img.save(path)
    return str(path)


def _sample(h, w, num_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    seg = rng.integers(0, num_classes, (h, w)).astype(np.int64)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return dict(img=img, gt_seg_map=seg, img_path='x.jpg', ori_shape=(h, w), img_shape=(h, w))


# ---------------------------------------------------------------------------- loading

@pytest.mark.parametrize('mode', ['L', 'P'])
def test_load_reduce_zero_label(tmp_path, mode):
    values = np.array([[0, 1, 2], [150, 254, 255]])
    path = _png(tmp_path / 'a.png', values, mode)
    out = LoadSegAnnotation()(dict(seg_map_path=path, reduce_zero_label=True, ori_shape=(2, 3)))
    assert out['gt_seg_map'].dtype == np.int64
    np.testing.assert_array_equal(out['gt_seg_map'], [[255, 0, 1], [149, 253, 255]])
    plain = LoadSegAnnotation()(dict(seg_map_path=path))  # no flag in the sample: values kept
    np.testing.assert_array_equal(plain['gt_seg_map'], values)
    explicit = LoadSegAnnotation(reduce_zero_label=True)(dict(seg_map_path=path))
    np.testing.assert_array_equal(explicit['gt_seg_map'], out['gt_seg_map'])


def test_load_errors(tmp_path):
    path = _png(tmp_path / 'a.png', np.zeros((2, 3)))
    with pytest.raises(ValueError, match='contradicts'):
        LoadSegAnnotation(reduce_zero_label=False)(dict(seg_map_path=path, reduce_zero_label=True))
    with pytest.raises(ValueError, match=r'a\.png is \(2, 3\), its image im\.jpg is \(3, 2\)'):
        LoadSegAnnotation()(dict(seg_map_path=path, img_path='im.jpg', ori_shape=(3, 2)))
    with pytest.raises(OSError, match=r'rgb\.png.*mode RGB'):
        LoadSegAnnotation()(dict(seg_map_path=_png(tmp_path / 'rgb.png', np.zeros((2, 3)), 'RGB')))
    with pytest.raises(OSError, match=r'missing\.png'):
        LoadSegAnnotation()(dict(seg_map_path=str(tmp_path / 'missing.png')))
    with pytest.raises(KeyError, match='seg_map_path'):
        LoadSegAnnotation()(dict(img_path='im.jpg', seg_map_path=None))


# ---------------------------------------------------------------------------- resize

def test_rescaled_size_hand_computed():
    assert rescaled_size((100, 150), (2048, 512), True) == (512, 768)  # short edge limits: x5.12
    assert rescaled_size((100, 1000), (2048, 512), True) == (205, 2048)  # long edge limits: x2.048
    assert rescaled_size((512, 683), (512, 2048), True) == (512, 683)  # (long, short) in any order
    assert rescaled_size((100, 150), (64, 48), False) == (48, 64)  # scale is (w, h)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_random_resize_draws_ratio_like_mmseg(seed):
    sample = _sample(30, 50)
    sample['scale_factor'] = (2.0, 2.0)  # an earlier resize: factors compose
    np.random.seed(seed)
    out = RandomResizeSeg(scale=(200, 60), ratio_range=(0.5, 2.0))(sample)
    np.random.seed(seed)
    ratio = np.random.random_sample() * 1.5 + 0.5
    long_edge, short_edge = int(200 * ratio), int(60 * ratio)
    factor = min(long_edge / 50, short_edge / 30)
    h, w = int(30 * factor + 0.5), int(50 * factor + 0.5)
    assert out['img'].shape == (h, w, 3) and out['img'].dtype == np.uint8
    assert out['gt_seg_map'].shape == (h, w) and out['gt_seg_map'].dtype == np.int64
    assert out['img_shape'] == (h, w)
    assert out['scale_factor'] == pytest.approx((2 * w / 50, 2 * h / 30))


@pytest.mark.parametrize('size', [(24, 40), (61, 97), (9, 13)])
def test_image_resize_matches_torch_bilinear(size):
    sample = _sample(20, 30)
    ref = F.interpolate(torch.from_numpy(sample['img']).permute(2, 0, 1)[None].float(), size=size,
                        mode='bilinear', align_corners=False)[0].permute(1, 2, 0).numpy()  # (h, w, 3)
    out = RandomResizeSeg(scale=size[::-1], ratio_range=None, keep_ratio=False)(sample)
    assert out['img'].shape == size + (3,)
    assert np.abs(out['img'].astype(np.float32) - ref).max() <= 1.0


@pytest.mark.parametrize('seed', range(4))
def test_label_resize_matches_cv2_nearest_exact(seed):
    rng = np.random.default_rng(seed)
    src_h, src_w, h, w = rng.integers(3, 60, 4)
    seg = rng.integers(0, 256, (src_h, src_w)).astype(np.uint8)
    ours = resize_seg_map(seg, (h, w))
    ref = cv2.resize(seg, (int(w), int(h)), interpolation=cv2.INTER_NEAREST_EXACT)
    # away from exact ties (an output centre on a source pixel edge, where either pixel is right)
    tie_rows = (2 * np.arange(h) + 1) * src_h % (2 * h) == 0
    tie_cols = (2 * np.arange(w) + 1) * src_w % (2 * w) == 0
    keep = ~(tie_rows[:, None] | tie_cols[None, :])
    np.testing.assert_array_equal(ours[keep], ref[keep])


@pytest.mark.parametrize('axis', [0, 1])
@pytest.mark.parametrize('size', [(31, 50), (9, 17), (44, 90)])
def test_labels_stay_aligned_with_image_and_ignore_survives(axis, size):
    # stripes of labels 0, 1, 2, 3, 255, 3, 2 (widths 2-6 px) along one axis; the image colour encodes the
    # label (60 apart). Along that axis bilinear mixes two neighbouring source pixels and the
    # nearest one weighs >= 1/2, so an aligned label map has the colour of the image within 30
    # (mmcv's floor(i * H / h) nearest lags by up to a source pixel and misses this by up to 60).
    labels = np.repeat([0, 1, 2, 3, 255, 3, 2], [3, 5, 4, 6, 3, 4, 2])  # (27,)
    colour = np.where(labels == 255, 240, labels * 60)
    seg = np.tile(labels, (14, 1)) if axis == 1 else np.tile(labels[:, None], (1, 14))
    img = np.repeat((np.tile(colour, (14, 1)) if axis == 1 else np.tile(colour[:, None], (1, 14)))[..., None], 3, 2)
    out = RandomResizeSeg(scale=size[::-1], ratio_range=None, keep_ratio=False)(
        dict(img=img.astype(np.uint8), gt_seg_map=seg, img_path='x.jpg'))
    out_seg, out_img = out['gt_seg_map'], out['img'][..., 0].astype(int)
    assert set(np.unique(out_seg)) <= {0, 1, 2, 3, 255} and 255 in out_seg
    expected = np.where(out_seg == 255, 240, out_seg * 60)
    assert np.abs(out_img - expected).max() <= 31


def test_resize_seg_test_moves_the_image_only():
    sample = _sample(100, 150)
    seg = sample['gt_seg_map'].copy()
    out = ResizeSegTest(scale=(2048, 512))(sample)
    assert out['img'].shape == (512, 768, 3) and out['img_shape'] == (512, 768)
    assert out['scale_factor'] == pytest.approx((768 / 150, 512 / 100))
    np.testing.assert_array_equal(out['gt_seg_map'], seg)  # stays at ori_shape
    assert out['ori_shape'] == (100, 150)


# ---------------------------------------------------------------------------- crop

def _coordinate_sample(h, w):
    """Image channels = (row, col, 0), label = row * w + col: a crop reveals its window."""
    rows, cols = np.mgrid[0:h, 0:w]
    img = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)
    return dict(img=img, gt_seg_map=(rows * w + cols).astype(np.int64), img_path='x.jpg', img_shape=(h, w))


def test_crop_geometry_and_offset_range():
    np.random.seed(0)
    crop = RandomCropSeg(crop_size=(5, 8))
    offsets = set()
    for _ in range(300):
        out = crop(_coordinate_sample(12, 20))
        y0, x0 = int(out['img'][0, 0, 0]), int(out['img'][0, 0, 1])
        full = _coordinate_sample(12, 20)
        np.testing.assert_array_equal(out['img'], full['img'][y0:y0 + 5, x0:x0 + 8])
        np.testing.assert_array_equal(out['gt_seg_map'], full['gt_seg_map'][y0:y0 + 5, x0:x0 + 8])
        assert out['img_shape'] == (5, 8) and out['img'].flags['C_CONTIGUOUS']
        offsets.add((y0, x0))
    ys, xs = zip(*offsets)
    assert (min(ys), max(ys), min(xs), max(xs)) == (0, 7, 0, 12)  # every valid offset range, inclusive


def test_crop_smaller_image_keeps_whole_side():
    np.random.seed(1)
    out = RandomCropSeg(crop_size=(8, 30))(_coordinate_sample(6, 40))
    assert out['img'].shape == (6, 30, 3) and out['img_shape'] == (6, 30)
    assert out['img'][0, 0, 0] == 0


def _draws(seed, n, shape, crop):
    """The (y0, x0) of the first n windows RandomCropSeg draws after np.random.seed(seed)."""
    np.random.seed(seed)
    return [(np.random.randint(0, shape[0] - crop[0] + 1), np.random.randint(0, shape[1] - crop[1] + 1))
            for _ in range(n)]


@pytest.mark.parametrize('seed', [0, 3])
def test_cat_max_ratio_gives_up_after_ten_redraws_ignoring_255(seed):
    # left half ignore, right half class 0: with 255 counted as a class, straddling windows would be
    # balanced (two labels); it is not counted, so no window is, and the 11th window is kept
    seg = np.zeros((20, 20), np.int64)
    seg[:, :10] = 255
    sample = dict(img=np.zeros((20, 20, 3), np.uint8), gt_seg_map=seg, img_path='x.jpg')
    np.random.seed(seed)
    out = RandomCropSeg(crop_size=(6, 6), cat_max_ratio=0.75)(sample)
    last = _draws(seed, 11, (20, 20), (6, 6))[-1]
    np.testing.assert_array_equal(out['gt_seg_map'], seg[last[0]:last[0] + 6, last[1]:last[1] + 6])


def test_cat_max_ratio_keeps_first_balanced_window_and_rejects_dominated_ones():
    seg = np.zeros((30, 30), np.int64)
    seg[:, 15:] = 1
    # a 10x10 window at column x0 holds (x0 - 5) columns of class 1: two labels, neither covering
    # >= 75%, exactly for x0 in 8..12 (5 of the 21 offsets)
    crop = RandomCropSeg(crop_size=(10, 10), cat_max_ratio=0.75)
    dominated = 0
    for seed in range(40):
        np.random.seed(seed)
        out = crop(dict(img=np.zeros((30, 30, 3), np.uint8), gt_seg_map=seg, img_path='x.jpg'))
        windows = _draws(seed, 11, (30, 30), (10, 10))
        balanced = [i for i, (_, x0) in enumerate(windows) if 8 <= x0 <= 12]
        y0, x0 = windows[balanced[0] if balanced else 10]  # the first balanced window, else the 11th
        np.testing.assert_array_equal(out['gt_seg_map'], seg[y0:y0 + 10, x0:x0 + 10])
        dominated += np.bincount(out['gt_seg_map'].ravel(), minlength=2).max() >= 75
    np.random.seed(0)
    plain = [RandomCropSeg(crop_size=(10, 10))(dict(img=np.zeros((30, 30, 3), np.uint8), gt_seg_map=seg))
             for _ in range(40)]
    plain_dominated = sum(np.bincount(p['gt_seg_map'].ravel(), minlength=2).max() >= 75 for p in plain)
    assert dominated <= 6 < 20 < plain_dominated  # expected 40 * (16/21)^11 = 2 vs 40 * 16/21 = 30


# ---------------------------------------------------------------------------- photometric, chain, errors

def test_photometric_distortion_matches_multiview_version_rounded():
    sample = _sample(16, 20)
    img, seg = sample['img'].copy(), sample['gt_seg_map'].copy()
    np.random.seed(5)
    out = PhotoMetricDistortionSeg()(sample)
    np.random.seed(5)
    ref = PhotoMetricDistortionMultiView()(dict(img=[img]))['img'][0]
    assert out['img'].dtype == np.uint8 and out['img'].shape == img.shape
    np.testing.assert_array_equal(out['img'], np.clip(np.round(ref), 0, 255).astype(np.uint8))
    assert not np.array_equal(out['img'], img)
    np.testing.assert_array_equal(out['gt_seg_map'], seg)


def test_train_chain_keeps_contract_keys(tmp_path):
    rng = np.random.default_rng(0)
    path = _png(tmp_path / 'a.png', rng.integers(0, 5, (40, 60)))
    results = dict(img=rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), img_path='a.jpg', seg_map_path=path,
                   reduce_zero_label=True, ori_shape=(40, 60), img_shape=(40, 60))
    np.random.seed(0)
    for t in (LoadSegAnnotation(), RandomResizeSeg(scale=(120, 40)), RandomCropSeg((32, 32), cat_max_ratio=0.75),
              PhotoMetricDistortionSeg()):
        results = t(results)
    h, w = results['img_shape']
    assert results['img'].shape == (h, w, 3) and results['img'].dtype == np.uint8
    assert results['gt_seg_map'].shape == (h, w) and results['gt_seg_map'].dtype == np.int64
    assert h <= 32 and w <= 32 and results['ori_shape'] == (40, 60)
    assert set(np.unique(results['gt_seg_map'])) <= {0, 1, 2, 3, 255}
    assert len(results['scale_factor']) == 2


def test_bad_input_raises():
    with pytest.raises(KeyError, match=r"needs results\['img'\] = \(H, W, 3\) numpy array"):
        RandomResizeSeg()(dict(img=torch.zeros(3, 4, 4), img_path='x.jpg'))
    bad = _sample(10, 12)
    bad['gt_seg_map'] = np.zeros((10, 11), np.int64)
    with pytest.raises(ValueError, match=r'gt_seg_map \(10, 11\) does not match the image size \(10, 12\) \(x\.jpg'):
        RandomCropSeg((4, 4))(bad)
    with pytest.raises(KeyError, match='cat_max_ratio < 1 needs'):
        RandomCropSeg((4, 4), cat_max_ratio=0.5)(dict(img=np.zeros((8, 8, 3), np.uint8)))
    for kwargs in (dict(scale=(0, 5)), dict(ratio_range=(2.0, 1.0)), dict(scale=(5,))):
        with pytest.raises(ValueError):
            RandomResizeSeg(**kwargs)
    with pytest.raises(ValueError, match='cat_max_ratio must be in'):
        RandomCropSeg(cat_max_ratio=0)
