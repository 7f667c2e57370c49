"""CocoDetection (sf3d/datasets/coco.py): samples against the JSON read independently and against
pycocotools' masks, label order by ascending category id, mmdet's annotation rules (crowd kept as
ignored, degenerate boxes skipped), filter_empty_gt / test_mode / indices, building from a config
dict with the 2D pipeline, and the errors on bad files and arguments."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from sf3d.datasets import synthetic_coco
from sf3d.datasets.coco import CocoDetection
from sf3d.datasets.transforms import transforms2d  # noqa: F401  (registers the 2D transforms)
from sf3d.registry import DATASETS

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp('coco')
    synthetic_coco.generate(root, num_train=10, num_val=4, size=64, seed=3)
    return root


def _write_set(root, images, annotations, categories):
    """A hand-made COCO file + black PNG images under root/imgs; returns the ann file path."""
    (root / 'imgs').mkdir(exist_ok=True)
    for img in images:
        Image.fromarray(np.zeros((img['height'], img['width'], 3), np.uint8)).save(root / 'imgs' / img['file_name'])
    path = root / 'ann.json'
    path.write_text(json.dumps(dict(images=images, annotations=annotations, categories=categories)))
    return path


def _img(i, h=20, w=30):
    return dict(id=i, file_name=f'{i}.png', height=h, width=w)


def _ann(i, img, cat, bbox, **kw):
    x, y, w, h = bbox
    seg = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return dict(dict(id=i, image_id=img, category_id=cat, bbox=list(bbox), area=w * h, iscrowd=0,
                     segmentation=seg), **kw)


CATS = [dict(id=9, name='nine'), dict(id=2, name='two'), dict(id=5, name='five')]  # not in id order


@pytest.fixture
def hand(tmp_path):
    images = [_img(11), _img(4), _img(30)]
    anns = [_ann(1, 11, 5, (2, 3, 10, 8)), _ann(2, 11, 9, (15, 5, 5, 5)),
            _ann(3, 11, 2, (0, 0, 6, 6), iscrowd=1),  # crowd: kept, ignore_flag 1
            _ann(4, 11, 2, (1, 1, 0.5, 6)),  # narrower than a pixel: skipped
            _ann(5, 11, 2, (40, 1, 5, 5)),  # outside the 30 px wide image: skipped
            _ann(6, 11, 2, (1, 1, 5, 5), ignore=True),  # 'ignore': skipped
            _ann(7, 4, 2, (1, 1, 4, 4), iscrowd=1)]  # image 4 holds only a crowd region; 30 none
    return tmp_path, _write_set(tmp_path, images, anns, CATS)


def test_samples_match_the_json_and_pycocotools(synth):
    pipeline = [dict(type='LoadImage'), dict(type='LoadCocoAnnotations', with_mask=True), dict(type='Pack2DInputs')]
    ds = DATASETS.build(dict(type='CocoDetection', data_root=str(synth),
                             ann_file='annotations/instances_train2017.json', data_prefix=dict(img='train2017/'),
                             pipeline=pipeline))
    assert len(ds) == 10
    assert ds.metainfo['classes'] == ('circle', 'rectangle', 'triangle', 'ellipse')
    assert ds.metainfo['cat_ids'] == (1, 3, 7, 12)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(synth / 'annotations/instances_train2017.json'))
    label_of = {1: 0, 3: 1, 7: 2, 12: 3}
    for i in range(len(ds)):
        item = ds[i]
        s = item['data_samples']
        info = coco.loadImgs(s['img_id'])[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=s['img_id']))
        assert s['img_path'].endswith('train2017/' + info['file_name'])
        assert item['inputs'].shape == (3, info['height'], info['width']) and item['inputs'].dtype == torch.uint8
        assert s['ori_shape'] == s['img_shape'] == (info['height'], info['width'])
        boxes = [[a['bbox'][0], a['bbox'][1], a['bbox'][0] + a['bbox'][2], a['bbox'][1] + a['bbox'][3]] for a in anns]
        np.testing.assert_allclose(s['gt_bboxes'].numpy().reshape(-1, 4), np.array(boxes).reshape(-1, 4))
        assert s['gt_labels'].tolist() == [label_of[a['category_id']] for a in anns]
        for mask, a in zip(s['gt_masks'], anns):
            np.testing.assert_array_equal(mask.numpy(), coco.annToMask(a))
    assert ds.get_cat_ids(0) == ds[0]['data_samples']['gt_labels'].tolist()


def test_annotation_rules_and_label_order(hand):
    root, path = hand
    ds = CocoDetection(ann_file=str(path), data_prefix=dict(img=str(root / 'imgs')))
    assert ds.metainfo['classes'] == ('two', 'five', 'nine') and ds.metainfo['cat_ids'] == (2, 5, 9)
    first = ds.get_data_info(0)
    assert first['img_id'] == 11 and (first['height'], first['width']) == (20, 30)
    assert [(inst['bbox'], inst['bbox_label'], inst['ignore_flag']) for inst in first['instances']] == [
        ([2.0, 3.0, 12.0, 11.0], 1, 0), ([15.0, 5.0, 20.0, 10.0], 2, 0), ([0.0, 0.0, 6.0, 6.0], 0, 1)]
    assert first['instances'][0]['mask'] == [[2, 3, 12, 3, 12, 11, 2, 11]]
    assert [ds.get_data_info(i)['img_id'] for i in range(len(ds))] == [11, 4, 30]  # file order
    boxes_only = CocoDetection(ann_file=str(path), data_prefix=dict(img=str(root / 'imgs')), with_mask=False)
    assert all('mask' not in inst for inst in boxes_only.get_data_info(0)['instances'])


def test_filter_empty_gt_test_mode_and_indices(hand):
    root, path = hand
    kw = dict(ann_file='ann.json', data_root=str(root), data_prefix=dict(img='imgs'))
    kept = CocoDetection(**kw, filter_empty_gt=True)
    assert [kept.get_data_info(i)['img_id'] for i in range(len(kept))] == [11]
    assert len(CocoDetection(**kw, filter_empty_gt=True, test_mode=True)) == 3
    assert len(CocoDetection(**kw)) == 3
    assert [CocoDetection(**kw, indices=2).get_data_info(i)['img_id'] for i in range(2)] == [11, 4]
    lazy = CocoDetection(**kw, lazy_init=True)
    assert 'not loaded' in repr(lazy) and len(lazy) == 3 and lazy.metainfo['cat_ids'] == (2, 5, 9)


def test_train_pipeline_from_config(synth):
    np.random.seed(0)
    cfg = dict(type='sf3d.CocoDetection', data_root=str(synth), ann_file='annotations/instances_train2017.json',
               data_prefix=dict(img='train2017/'), filter_empty_gt=True,
               pipeline=[dict(type='LoadImage'), dict(type='LoadCocoAnnotations', with_mask=True),
                         dict(type='Resize2D', scale=[(96, 64), (128, 96)], keep_ratio=True),
                         dict(type='RandomFlip2D', prob=0.5), dict(type='Pack2DInputs')])
    ds = DATASETS.build(cfg)
    for i in range(len(ds)):
        s = ds[i]['data_samples']
        h, w = s['img_shape']
        assert s['gt_masks'].shape[1:] == (h, w) and len(s['gt_masks']) == len(s['gt_bboxes']) > 0
        assert s['scale_factor'] == pytest.approx((w / s['ori_shape'][1], h / s['ori_shape'][0]))
        for box, mask in zip(s['gt_bboxes'], s['gt_masks']):  # boxes still enclose their masks
            ys, xs = np.nonzero(mask.numpy())
            tight = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            assert np.abs(box.numpy() - tight).max() <= 1.5


def test_errors_name_the_problem(hand, tmp_path):
    root, path = hand
    imgs = dict(img=str(root / 'imgs'))
    with pytest.raises(FileNotFoundError, match='nothere.json.*make_synthetic_coco'):
        CocoDetection(ann_file=str(root / 'nothere.json'), data_prefix=imgs)
    with pytest.raises(FileNotFoundError, match='image folder .*nope'):
        CocoDetection(ann_file=str(path), data_prefix=dict(img=str(root / 'nope')))
    with pytest.raises(ValueError, match='data_prefix'):
        CocoDetection(ann_file=str(path), data_prefix='imgs')
    data = json.loads(path.read_text())

    def write(**changes):
        bad = tmp_path / 'bad.json'
        bad.write_text(json.dumps(dict(data, **changes)))
        return str(bad)

    cases = [
        (dict(annotations=data['annotations'] + [_ann(99, 11, 77, (1, 1, 3, 3))]), 'category_id 77'),
        (dict(annotations=data['annotations'] + [_ann(99, 12345, 2, (1, 1, 3, 3))]), 'image id 12345'),
        (dict(images=data['images'] + [_img(11)]), 'duplicate image id 11'),
        (dict(images=[dict(id=1, height=2, width=2)]), "lacks keys \\['file_name'\\]"),
        (dict(categories=[]), 'no categories'),
        (dict(categories=[dict(id=1, name='a'), dict(id=1, name='b')]), 'duplicate category ids'),
        (dict(annotations=[dict(id=5, image_id=11, category_id=2)]), "lacks keys \\['bbox'\\]"),
        (dict(annotations=[dict(_ann(5, 11, 2, (1, 1, 3, 3)), segmentation=[])]), 'annotation 5 .*no segmentation'),
    ]
    for changes, message in cases:
        with pytest.raises(ValueError, match=message):
            CocoDetection(ann_file=write(**changes), data_prefix=imgs)
    no_images = tmp_path / 'noimg.json'
    no_images.write_text(json.dumps(dict(categories=CATS)))
    with pytest.raises(ValueError, match="no 'images' list"):
        CocoDetection(ann_file=str(no_images), data_prefix=imgs)
    broken = tmp_path / 'broken.json'
    broken.write_text('{"images": [')
    with pytest.raises(ValueError, match='not valid JSON'):
        CocoDetection(ann_file=str(broken), data_prefix=imgs)
