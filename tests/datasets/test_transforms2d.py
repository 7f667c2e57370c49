"""2D transforms (sf3d/datasets/transforms/transforms2d.py), ``sf3d.image_collate`` and
``ImageDataPreprocessor``: segmentation decoding against pycocotools, resize/flip geometry against
numpy / OpenCV references (a box after resize + flip is the box of its transformed mask), the
multi-scale modes, the packed contract, padding, normalisation and the errors on bad input."""
import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from sf3d.datasets.transforms import formatting2d, transforms2d as T
from sf3d.models.data_preprocessors.image import ImageDataPreprocessor
from sf3d.registry import FUNCTIONS, MODELS, TRANSFORMS

torch.set_num_threads(1)


def _box_of(mask: np.ndarray) -> np.ndarray:
    """[x1, y1, x2, y2] of the pixels of an (H, W) mask, pixel (i, j) covering [j, j + 1) x [i, i + 1)."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _sample(h=40, w=60, boxes=((5, 4, 25, 20), (30, 10, 58, 37))):
    """A results dict with filled-rectangle masks, their boxes and a matching image and seg map."""
    masks = np.zeros((len(boxes), h, w), np.uint8)
    img = np.full((h, w, 3), 20, np.uint8)
    seg = np.full((h, w), 255, np.int64)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        masks[k, y1:y2, x1:x2] = 1
        img[y1:y2, x1:x2] = (200, 60 + 80 * k, 30)
        seg[y1:y2, x1:x2] = k
    return dict(img=img, ori_shape=(h, w), img_shape=(h, w), gt_bboxes=np.array(boxes, np.float32),
                gt_labels=np.arange(len(boxes), dtype=np.int64), gt_masks=masks, gt_seg_map=seg,
                img_path='x.jpg', img_id=7)


# ----------------------------------------------------------------------------- loading

def test_decode_segmentation_formats_agree():
    h, w = 30, 40
    poly = [[5.0, 5.0, 30.0, 6.0, 20.0, 25.0], [32.0, 20.0, 38.0, 20.0, 38.0, 28.0, 32.0, 28.0]]
    reference = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, h, w)))
    assert reference.sum() > 100
    np.testing.assert_array_equal(T.decode_segmentation(poly, h, w), reference)
    compressed = mask_utils.encode(np.asfortranarray(reference))
    np.testing.assert_array_equal(T.decode_segmentation(compressed, h, w), reference)
    as_str = dict(compressed, counts=compressed['counts'].decode('ascii'))
    np.testing.assert_array_equal(T.decode_segmentation(as_str, h, w), reference)
    flat = reference.reshape(-1, order='F')
    runs = np.diff(np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])).tolist()
    uncompressed = dict(size=[h, w], counts=([0] if flat[0] else []) + runs)
    np.testing.assert_array_equal(T.decode_segmentation(uncompressed, h, w), reference)
    # a 4-number part would be read as a box by pycocotools: dropped; nothing valid left -> None
    np.testing.assert_array_equal(T.decode_segmentation(poly + [[1, 1, 9, 9]], h, w), reference)
    assert T.decode_segmentation([[1, 1, 9, 9], [1, 2, 3]], h, w) is None
    with pytest.raises(ValueError, match='does not match'):
        T.decode_segmentation(dict(compressed, size=[h + 1, w]), h, w)
    with pytest.raises(ValueError, match='list of polygons or an RLE'):
        T.decode_segmentation('oops', h, w)


def test_load_image_and_annotations(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    path = tmp_path / 'a.png'
    Image.fromarray(pixels).save(path)
    square = [[10, 5, 20, 5, 20, 15, 10, 15]]
    instances = [dict(bbox=[10, 5, 20, 15], bbox_label=2, ignore_flag=0, mask=square),
                 dict(bbox=[0, 0, 5, 5], bbox_label=1, ignore_flag=1, mask=square),  # crowd: not GT
                 dict(bbox=[1, 1, 9, 9], bbox_label=0, ignore_flag=0, mask=[[1, 1, 9, 9]])]  # no valid polygon
    results = T.LoadImage()(dict(img_path=str(path), height=30, width=40, instances=instances))
    np.testing.assert_array_equal(results['img'], pixels)
    assert results['ori_shape'] == results['img_shape'] == (30, 40)
    boxes_only = T.LoadCocoAnnotations()(dict(results))
    np.testing.assert_array_equal(boxes_only['gt_bboxes'], [[10, 5, 20, 15], [1, 1, 9, 9]])
    assert boxes_only['gt_labels'].tolist() == [2, 0] and 'gt_masks' not in boxes_only
    out = T.LoadCocoAnnotations(with_mask=True)(dict(results))
    assert out['gt_bboxes'].dtype == np.float32 and out['gt_labels'].dtype == np.int64
    assert out['gt_labels'].tolist() == [2] and out['gt_masks'].shape == (1, 30, 40)
    assert out['gt_masks'].dtype == np.uint8 and out['gt_masks'].sum() == 100  # the 10 x 10 square
    empty = T.LoadCocoAnnotations(with_mask=True)(dict(results, instances=[]))
    assert empty['gt_bboxes'].shape == (0, 4) and empty['gt_labels'].shape == (0,)
    assert empty['gt_masks'].shape == (0, 30, 40)
    with pytest.raises(ValueError, match='annotation says 31x40'):
        T.LoadImage()(dict(img_path=str(path), height=31, width=40))
    with pytest.raises(FileNotFoundError, match='missing.jpg'):
        T.LoadImage()(dict(img_path=str(tmp_path / 'missing.jpg')))
    with pytest.raises(KeyError, match='with_mask=True'):
        T.LoadCocoAnnotations(with_mask=True)(dict(results, instances=[dict(bbox=[0, 0, 1, 1], bbox_label=0)]))
    with pytest.raises(KeyError, match='instances'):
        T.LoadCocoAnnotations()(dict(img=pixels))


# ----------------------------------------------------------------------------- geometry

def test_rescale_size_matches_mmcv_rule():
    assert T.rescale_size((480, 640), (1333, 800)) == (800, 1067)  # short side limited
    assert T.rescale_size((400, 1200), (1333, 800)) == (444, 1333)  # long side limited: 1333 / 1200
    assert T.rescale_size((512, 683), (2048, 512)) == (512, 683)
    assert T.rescale_size((100, 50), (64, 64)) == (64, 32)


@pytest.mark.parametrize('src,dst', [(40, 80), (40, 100), (60, 23), (37, 37), (5, 64)])
def test_nearest_index_is_opencv_nearest_exact(src, dst):
    rng = np.random.default_rng(src * dst)
    mask = (rng.random((src, src + 3)) < 0.5).astype(np.uint8)
    rows, cols = T.nearest_index(src, dst), T.nearest_index(src + 3, dst + 1)
    reference = cv2.resize(mask, (dst + 1, dst), interpolation=cv2.INTER_NEAREST_EXACT)
    np.testing.assert_array_equal(mask[rows[:, None], cols[None, :]], reference)


@pytest.mark.parametrize('scale,keep_ratio,tol', [((120, 80), True, 0.0), ((90, 31), False, 1.0),
                                                  ((100, 70), True, 1.0)])
def test_resize_then_flip_box_is_box_of_mask(scale, keep_ratio, tol):
    results = _sample()
    results = T.Resize2D(scale=scale, keep_ratio=keep_ratio)(results)
    h, w = results['img_shape']
    expected_hw = T.rescale_size((40, 60), scale) if keep_ratio else (scale[1], scale[0])
    assert (h, w) == expected_hw == results['img'].shape[:2]
    assert results['scale_factor'] == pytest.approx((w / 60, h / 40))
    np.random.seed(0)
    results = T.RandomFlip2D(prob=1.0)(results)
    assert results['flip'] is True
    assert results['gt_masks'].shape == (2, h, w) and results['gt_seg_map'].shape == (h, w)
    for k in range(2):
        mask = results['gt_masks'][k]
        # exact for an integer scale (120x80 = 2x); within a pixel otherwise
        np.testing.assert_allclose(results['gt_bboxes'][k], _box_of(mask), atol=tol)
        np.testing.assert_array_equal(results['gt_seg_map'] == k, mask.astype(bool))
        # the image moved with the masks: the object's colour lies inside the mask
        coloured = (results['img'][..., 1].astype(int) - (60 + 80 * k)).__abs__() < 15
        inter, union = (coloured & (mask > 0)).sum(), (coloured | (mask > 0)).sum()
        assert inter / union > 0.85
    # independent numpy reference for the boxes: scale, then mirror x
    sx, sy = w / 60, h / 40
    ref = np.array(_sample()['gt_bboxes']) * [sx, sy, sx, sy]
    ref[:, [0, 2]] = w - ref[:, [2, 0]]
    np.testing.assert_allclose(results['gt_bboxes'], ref, rtol=1e-6)


def test_flip_prob_zero_and_twice_is_identity():
    results = T.RandomFlip2D(prob=0.0)(_sample())
    assert results['flip'] is False
    ref = _sample()
    twice = T.RandomFlip2D(prob=1.0)(T.RandomFlip2D(prob=1.0)(_sample()))
    for key in ('img', 'gt_bboxes', 'gt_masks', 'gt_seg_map'):
        np.testing.assert_array_equal(twice[key], ref[key])


def test_scale_factor_is_relative_to_the_file_and_boxes_clip():
    results = _sample()
    results = T.Resize2D(scale=(30, 20), keep_ratio=False)(results)
    results = T.Resize2D(scale=(90, 50), keep_ratio=False)(results)
    assert results['img_shape'] == (50, 90) and results['scale_factor'] == pytest.approx((1.5, 1.25))
    results = _sample(boxes=((0, 0, 60, 40),))
    results['gt_bboxes'] = np.array([[-3, -2, 64, 45]], np.float32)  # a box reaching beyond the image
    out = T.Resize2D(scale=(120, 80))(results)
    np.testing.assert_array_equal(out['gt_bboxes'], [[0, 0, 120, 80]])


def test_multiscale_modes():
    np.random.seed(0)
    scales = [(100, 60), (100, 70), (100, 80)]
    choice = T.Resize2D(scale=scales, keep_ratio=False)
    seen = {choice(_sample())['img_shape'] for _ in range(40)}
    assert seen == {(60, 100), (70, 100), (80, 100)}
    rng_mode = T.Resize2D(scale=[(90, 60), (110, 64)], keep_ratio=False, mode='range')
    shapes = [rng_mode(_sample())['img_shape'] for _ in range(300)]
    hs, ws = zip(*shapes)
    assert set(hs) == set(range(60, 65)) and min(ws) == 90 and max(ws) == 110
    ratio = T.Resize2D(scale=(60, 40), keep_ratio=False, ratio_range=(0.5, 2.0))
    shapes = [ratio(_sample())['img_shape'] for _ in range(50)]
    assert all(20 <= h <= 80 and 30 <= w <= 120 and abs(w / h - 1.5) < 0.1 for h, w in shapes)
    assert len(set(shapes)) > 20
    # a test pipeline loads the seg map after Resize2D: it stays at ori_shape
    results = _sample()
    seg = results.pop('gt_seg_map')
    results = T.Resize2D(scale=(120, 80))(results)
    results['gt_seg_map'] = seg
    packed = T.Pack2DInputs()(results)
    assert tuple(packed['data_samples']['gt_seg_map'].shape) == packed['data_samples']['ori_shape'] == (40, 60)


def test_transform_errors():
    for bad in ((100,), (100, 0), 'big', (10.5, 20)):
        with pytest.raises(ValueError, match='scale'):
            T.Resize2D(scale=bad)
    with pytest.raises(ValueError, match='exactly two scales'):
        T.Resize2D(scale=[(1, 2), (3, 4), (5, 6)], mode='range')
    with pytest.raises(ValueError, match='mode'):
        T.Resize2D(scale=(10, 10), mode='uniform')
    with pytest.raises(ValueError, match='ratio_range'):
        T.Resize2D(scale=[(10, 10), (20, 20)], ratio_range=(0.5, 2.0))
    with pytest.raises(ValueError, match='prob'):
        T.RandomFlip2D(prob=1.5)
    for step in (T.Resize2D(scale=(10, 10)), T.RandomFlip2D(), T.Pack2DInputs()):
        with pytest.raises(KeyError, match="'img'"):
            step(dict(img_path='x'))


# ----------------------------------------------------------------------------- packing and batching

def test_pack_contract():
    results = T.Resize2D(scale=(90, 60))(_sample())
    packed = TRANSFORMS.build(dict(type='Pack2DInputs'))(results)
    inputs, s = packed['inputs'], packed['data_samples']
    assert inputs.dtype == torch.uint8 and inputs.shape == (3, 60, 90)
    np.testing.assert_array_equal(inputs.permute(1, 2, 0).numpy(), results['img'])
    assert s['img_shape'] == (60, 90) and s['ori_shape'] == (40, 60) and s['flip'] is False
    assert s['scale_factor'] == (1.5, 1.5) and s['img_id'] == 7 and s['img_path'] == 'x.jpg'
    assert s['gt_bboxes'].dtype == torch.float32 and s['gt_bboxes'].shape == (2, 4)
    assert s['gt_labels'].dtype == torch.int64 and s['gt_masks'].dtype == torch.uint8
    assert s['gt_masks'].shape == (2, 60, 90) and s['gt_seg_map'].dtype == torch.int64
    bare = T.Pack2DInputs()(dict(img=np.zeros((5, 6, 3), np.uint8)))['data_samples']
    assert bare == dict(scale_factor=(1.0, 1.0), flip=False, img_shape=(5, 6), ori_shape=(5, 6))
    with pytest.raises(ValueError, match='uint8'):
        T.Pack2DInputs()(dict(img=np.zeros((5, 6, 3), np.float32)))


def _item(h, w, seg_shape=None, value=1):
    samples = dict(img_shape=(h, w), ori_shape=(h, w), gt_labels=torch.zeros(1, dtype=torch.int64))
    if seg_shape is not None:
        samples['gt_seg_map'] = torch.full(seg_shape, 3, dtype=torch.int64)
    return dict(inputs=torch.full((3, h, w), value, dtype=torch.uint8), data_samples=samples)


def test_image_collate_pads_and_lists():
    collate = FUNCTIONS.get('sf3d.image_collate')
    assert collate is formatting2d.image_collate
    batch = collate([_item(40, 70, value=5), _item(65, 33, value=9)])
    x = batch['inputs']
    assert x.shape == (2, 3, 96, 96) and x.dtype == torch.uint8
    assert (x[0, :, :40, :70] == 5).all() and x[0, :, 40:].sum() == 0 and x[0, :, :, 70:].sum() == 0
    assert (x[1, :, :65, :33] == 9).all() and x[1, :, 65:].sum() == 0 and x[1, :, :, 33:].sum() == 0
    s = batch['data_samples']
    assert s['pad_shape'] == [(96, 96)] * 2 and s['img_shape'] == [(40, 70), (65, 33)]
    assert isinstance(s['gt_labels'], list) and len(s['gt_labels']) == 2
    assert collate([_item(40, 70)], size_divisor=1)['inputs'].shape == (1, 3, 40, 70)
    # training maps (at img_shape) padded with 255; test maps (at another shape) untouched
    seg = collate([_item(40, 70, (40, 70)), _item(65, 33, (80, 50))])['data_samples']['gt_seg_map']
    assert seg[0].shape == (96, 96) and (seg[0][:40, :70] == 3).all()
    assert (seg[0][40:] == 255).all() and (seg[0][:, 70:] == 255).all()
    assert seg[1].shape == (80, 50)
    kept = collate([_item(40, 70, (40, 70))], pad_seg_map=False)['data_samples']['gt_seg_map']
    assert kept[0].shape == (40, 70)
    with pytest.raises(ValueError, match='empty batch'):
        collate([])
    with pytest.raises(ValueError, match='keys'):
        collate([_item(4, 4), _item(4, 4, (4, 4))])
    with pytest.raises(ValueError, match='size_divisor'):
        collate([_item(4, 4)], size_divisor=0)
    with pytest.raises(ValueError, match=r'\(3, h, w\)'):
        collate([dict(inputs=torch.zeros(1, 3, 4, 4), data_samples={})])


def test_image_data_preprocessor():
    pre = MODELS.build(dict(type='ImageDataPreprocessor'))
    assert isinstance(pre, ImageDataPreprocessor)
    rng = np.random.default_rng(0)
    a, b = (torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in ((40, 70), (64, 33)))
    batch = formatting2d.image_collate([dict(inputs=a, data_samples=dict(img_shape=(40, 70), boxes=torch.ones(2, 4))),
                                        dict(inputs=b, data_samples=dict(img_shape=(64, 33), boxes=torch.ones(1, 4)))])
    out = pre(batch, training=True)
    x = out['inputs']
    assert x.dtype == torch.float32 and x.shape == (2, 3, 64, 96)
    mean = np.array([123.675, 116.28, 103.53])[:, None, None]
    std = np.array([58.395, 57.12, 57.375])[:, None, None]
    np.testing.assert_allclose(x[0, :, :40, :70].numpy(), (a.numpy() - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x[1, :, :64, :33].numpy(), (b.numpy() - mean) / std, rtol=1e-5, atol=1e-5)
    assert x[0, :, 40:].abs().sum() == 0 and x[0, :, :, 70:].abs().sum() == 0 and x[1, :, :, 33:].abs().sum() == 0
    s = out['data_samples']
    assert s['img_shape'] == [(40, 70), (64, 33)] and all(isinstance(t, torch.Tensor) for t in s['boxes'])
    custom = ImageDataPreprocessor(mean=(0, 0, 0), std=(255, 255, 255))
    y = custom(dict(inputs=torch.full((1, 3, 4, 4), 51.0)))['inputs']
    assert torch.allclose(y, torch.full_like(y, 0.2))
    with pytest.raises(ValueError, match='3 values'):
        ImageDataPreprocessor(mean=(1, 2), std=(1, 1, 1))
    with pytest.raises(ValueError, match=r'\(B, 3, Hp, Wp\)'):
        pre(dict(inputs=torch.zeros(3, 4, 4)))
    with pytest.raises(KeyError, match='inputs'):
        pre(dict(img=torch.zeros(1, 3, 4, 4)))
