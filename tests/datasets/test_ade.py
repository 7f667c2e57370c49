"""ADE20KDataset: folder layout of a small synthetic set, pairing by stem (also in sub-folders),
label values through LoadSegAnnotation, classes / indices / image-only mode, registry build,
and clear errors for missing folders, images and annotations."""
import shutil

import numpy as np
import torch
import pytest
from PIL import Image

from sf3d.datasets import synthetic_ade
from sf3d.datasets.ade import ADE20K_CLASSES, ADE20KDataset
from sf3d.datasets.transforms.formatting2d import image_collate
from sf3d.datasets.transforms.loading import read_rgb
from sf3d.datasets.transforms.seg_transforms import LoadSegAnnotation  # noqa: F401  (registers it)
from sf3d.datasets.transforms.transforms2d import LoadImage  # noqa: F401  (registers the generic 2D steps)
from sf3d.evaluation.iou_metric import IoUMetric
from sf3d.registry import DATASETS

VAL = dict(img_path='images/validation', seg_map_path='annotations/validation')


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    out = tmp_path_factory.mktemp('synthetic_ade')
    synthetic_ade.generate(out, num_train=3, num_val=2, size=48, seed=0)
    return out / synthetic_ade.DATASET_DIR


def _load_image(results):
    """Stand-in for the generic image loader: img (H, W, 3) uint8, ori_shape, img_shape."""
    img = read_rgb(results['img_path'])
    return dict(results, img=img, ori_shape=img.shape[:2], img_shape=img.shape[:2])


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_training_split_pairs_images_and_annotations(ade_root):
    ds = ADE20KDataset(data_root=str(ade_root), classes=synthetic_ade.CLASSES)
    assert len(ds) == 3
    info = ds.get_data_info(1)
    assert info['img_path'] == str(ade_root / 'images/training/ADE_train_00000002.jpg')
    assert info['seg_map_path'] == str(ade_root / 'annotations/training/ADE_train_00000002.png')
    assert info['reduce_zero_label'] is True and info['sample_idx'] == 1
    assert ds.metainfo['classes'] == synthetic_ade.CLASSES
    assert len(ADE20KDataset(data_root=str(ade_root), data_prefix=VAL)) == 2


def test_items_carry_reduced_labels_at_image_size(ade_root):
    ds = ADE20KDataset(data_root=str(ade_root), data_prefix=VAL, classes=synthetic_ade.CLASSES,
                       pipeline=[_load_image, dict(type='LoadSegAnnotation')])
    for i in range(len(ds)):
        item = ds[i]
        raw = np.asarray(Image.open(item['seg_map_path']), np.int64)
        assert item['gt_seg_map'].shape == item['img'].shape[:2] == item['ori_shape'] == raw.shape
        expected = np.where(raw == 0, 255, raw - 1)
        np.testing.assert_array_equal(item['gt_seg_map'], expected)
        assert item['gt_seg_map'][item['gt_seg_map'] != 255].max() < len(synthetic_ade.CLASSES)
    kept = ADE20KDataset(data_root=str(ade_root), data_prefix=VAL, reduce_zero_label=False,
                         pipeline=[dict(type='LoadSegAnnotation')])[0]
    np.testing.assert_array_equal(kept['gt_seg_map'], np.asarray(Image.open(kept['seg_map_path'])))


def test_default_classes_indices_and_registry_build(ade_root):
    ds = DATASETS.build(dict(type='ADE20KDataset', data_root=str(ade_root), indices=[2]))
    assert len(ds) == 1 and ds.get_data_info(0)['img_path'].endswith('ADE_train_00000003.jpg')
    classes = ds.metainfo['classes']
    assert len(classes) == 150 and classes[:3] == ('wall', 'building', 'sky') and classes[-1] == 'flag'
    assert 'bed' in classes and all(c == c.strip() for c in classes) and classes == ADE20K_CLASSES
    assert 'samples=1' in repr(ds)


def test_image_only_dataset(ade_root):
    ds = ADE20KDataset(data_root=str(ade_root), data_prefix=dict(img_path='images/validation'),
                       pipeline=[_load_image])
    assert len(ds) == 2 and ds.get_data_info(0)['seg_map_path'] is None
    assert ds[0]['img'].dtype == np.uint8
    with pytest.raises(KeyError, match='seg_map_path'):
        LoadSegAnnotation()(ds.get_data_info(0))


def test_pairs_by_relative_path_in_sub_folders(tmp_path):
    for kind, suffix, mode in (('images', '.jpg', 'RGB'), ('annotations', '.png', 'L')):
        for sub in ('a', 'b'):
            folder = tmp_path / kind / 'training' / sub
            folder.mkdir(parents=True)
            Image.new(mode, (4, 3), 1 if sub == 'a' else 2).save(folder / f'x{suffix}')
    ds = ADE20KDataset(data_root=str(tmp_path), pipeline=[dict(type='LoadSegAnnotation')])
    assert [ds.get_data_info(i)['seg_map_path'][len(str(tmp_path)) + 1:] for i in range(2)] == \
        ['annotations/training/a/x.png', 'annotations/training/b/x.png']
    assert ds[0]['gt_seg_map'].max() == 0 and ds[1]['gt_seg_map'].max() == 1


def test_missing_annotation_or_folder_is_named(ade_root, tmp_path):
    root = _copy(ade_root, tmp_path / 'ade')
    (root / 'annotations/training/ADE_train_00000002.png').unlink()
    with pytest.raises(FileNotFoundError, match=r'ADE_train_00000002\.jpg has no annotation .*ADE_train_00000002\.png'):
        ADE20KDataset(data_root=str(root))
    shutil.rmtree(root / 'annotations/training')
    with pytest.raises(FileNotFoundError, match=r'seg_map_path folder .*annotations/training does not exist'):
        ADE20KDataset(data_root=str(root))
    with pytest.raises(FileNotFoundError, match=r'img_path folder .*images/testing does not exist.*make_synthetic_ade'):
        ADE20KDataset(data_root=str(root), data_prefix=dict(img_path='images/testing'))
    (root / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match=r'no \*\.jpg images in .*empty'):
        ADE20KDataset(data_root=str(root), data_prefix=dict(img_path='empty'))
    # lazy_init defers the scan (and its errors) to first use
    lazy = ADE20KDataset(data_root=str(tmp_path / 'nowhere'), lazy_init=True)
    with pytest.raises(FileNotFoundError, match='nowhere'):
        len(lazy)


@pytest.mark.parametrize('kwargs, message', [
    (dict(classes=()), 'classes must be'),
    (dict(classes=('a', 'a')), 'classes must be'),
    (dict(classes=[f'c{i}' for i in range(256)]), 'classes must be'),
    (dict(data_prefix=dict(seg_map_path='annotations/training')), 'data_prefix must be'),
    (dict(data_prefix=dict(img_path='images/training', img='x')), 'data_prefix must be'),
])
def test_bad_arguments(ade_root, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ADE20KDataset(data_root=str(ade_root), **kwargs)


SYNTHETIC_TRAIN_PIPELINE = [
    dict(type='LoadImage'), dict(type='LoadSegAnnotation'),
    dict(type='RandomResizeSeg', scale=(320, 128), ratio_range=(0.5, 2.0)),
    dict(type='RandomCropSeg', crop_size=(64, 64), cat_max_ratio=0.75),
    dict(type='RandomFlip2D', prob=0.5), dict(type='PhotoMetricDistortionSeg'), dict(type='Pack2DInputs')]
SYNTHETIC_TEST_PIPELINE = [
    dict(type='LoadImage'), dict(type='ResizeSegTest', scale=(320, 128)), dict(type='LoadSegAnnotation'),
    dict(type='Pack2DInputs')]


def test_contract_with_generic_transforms_collate_and_metric(ade_root):
    """The config's pipelines with the generic 2D steps (LoadImage, RandomFlip2D, Pack2DInputs) and
    image_collate: contract keys and shapes; a perfect prediction scores 100 mIoU."""
    np.random.seed(0)
    train = DATASETS.build(dict(type='ADE20KDataset', data_root=str(ade_root), classes=synthetic_ade.CLASSES,
                                pipeline=SYNTHETIC_TRAIN_PIPELINE))
    batch = image_collate([train[0], train[1]])
    assert batch['inputs'].dtype == torch.uint8 and batch['inputs'].shape == (2, 3, 64, 64)
    for seg, shape in zip(batch['data_samples']['gt_seg_map'], batch['data_samples']['img_shape']):
        assert seg.dtype == torch.int64 and seg.shape == (64, 64) and max(shape) <= 64
        assert (seg[shape[0]:] == 255).all() and (seg[:, shape[1]:] == 255).all()  # padding is ignored

    val = DATASETS.build(dict(type='ADE20KDataset', data_root=str(ade_root), data_prefix=VAL,
                              classes=synthetic_ade.CLASSES, pipeline=SYNTHETIC_TEST_PIPELINE))
    batch = image_collate([val[0], val[1]], pad_seg_map=False)
    samples = batch['data_samples']
    for i in range(2):
        h0, w0 = samples['ori_shape'][i]
        h, w = samples['img_shape'][i]
        assert min(h, w) == 128 and samples['gt_seg_map'][i].shape == (h0, w0)
        assert samples['scale_factor'][i] == pytest.approx((w / w0, h / h0))
    metric = IoUMetric()
    metric.dataset_meta = val.metainfo
    metric.process(batch, [dict(img_path=p, pred_sem_seg=s.clamp(max=len(synthetic_ade.CLASSES) - 1))
                           for p, s in zip(samples['img_path'], samples['gt_seg_map'])])
    assert metric.compute_metrics(metric.results) == pytest.approx(dict(aAcc=100.0, mIoU=100.0, mAcc=100.0))
