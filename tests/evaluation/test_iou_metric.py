"""IoUMetric: hand-computed cases (incl. mmseg's NaN rules), an independent confusion-matrix
computation on random maps, the per-class table, mmengine's Evaluator, and errors on bad input."""
import math

import numpy as np
import pytest
import torch
from mmengine.evaluator import Evaluator

from sf3d.evaluation.iou_metric import IoUMetric


def _batch(gts, paths=None):
    paths = paths or [f'img_{i}.jpg' for i in range(len(gts))]
    return dict(inputs=None, data_samples=dict(gt_seg_map=list(gts), img_path=list(paths)))


def _preds(preds, paths=None):
    paths = paths or [f'img_{i}.jpg' for i in range(len(preds))]
    return [dict(img_path=p, pred_sem_seg=x) for p, x in zip(paths, preds)]


def _evaluate(metric, gts, preds):
    metric.process(_batch(gts), _preds(preds))
    return metric.compute_metrics(metric.results)


def test_hand_computed_case():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])  # the prediction under the ignored pixel is not counted
    # (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,0)
    # class 0: I=1, GT=2, P=2 -> IoU 1/3, Acc 1/2;  class 1: I=2, GT=2, P=3 -> IoU 2/3, Acc 1;
    # class 2: I=0, GT=1, P=0 -> IoU 0, Acc 0;  aAcc 3/5
    metric = IoUMetric(num_classes=3)
    out = _evaluate(metric, [gt], [pred])
    assert out['aAcc'] == pytest.approx(60.0)
    assert out['mIoU'] == pytest.approx(100 / 3)
    assert out['mAcc'] == pytest.approx(50.0)


def test_absent_classes_are_nan_and_excluded():
    # C = 4: class 0 in GT and pred (I=1, GT=2, P=1), class 3 only predicted (IoU 0, Acc NaN),
    # classes 1 and 2 nowhere (both NaN, excluded from the means)
    metric = IoUMetric(num_classes=4)
    out = _evaluate(metric, [np.array([[0, 0]])], [np.array([[0, 3]])])
    assert out == pytest.approx(dict(aAcc=50.0, mIoU=25.0, mAcc=50.0))


def test_perfect_prediction_and_accumulation_over_images():
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 5, (7, 9)), rng.integers(0, 5, (4, 3))]
    metric = IoUMetric(num_classes=5)
    metric.process(_batch(gts[:1]), _preds([torch.as_tensor(gts[0])]))
    metric.process(_batch(gts[1:]), _preds([gts[1]]))
    assert len(metric.results) == 2 and all(r['label'].shape == (5,) for r in metric.results)
    assert metric.compute_metrics(metric.results) == pytest.approx(dict(aAcc=100.0, mIoU=100.0, mAcc=100.0))


def _confusion_reference(gts, preds, num_classes, ignore):
    """Independent reference: one confusion matrix (rows GT, columns prediction) over the dataset."""
    conf = np.zeros((num_classes, num_classes), np.int64)
    for g, p in zip(gts, preds):
        valid = g != ignore
        np.add.at(conf, (g[valid], p[valid]), 1)
    tp = np.diag(conf).astype(float)
    with np.errstate(invalid='ignore', divide='ignore'):
        iou = tp / (conf.sum(0) + conf.sum(1) - tp)
        acc = tp / conf.sum(1)
    return dict(aAcc=100 * tp.sum() / conf.sum(), mIoU=100 * np.nanmean(iou), mAcc=100 * np.nanmean(acc))


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_random_maps_match_confusion_matrix(seed):
    rng = np.random.default_rng(seed)
    num_classes = 6
    gts, preds = [], []
    for _ in range(5):
        h, w = rng.integers(5, 30, 2)
        gt = rng.integers(0, num_classes - 1, (h, w))  # the last class never appears in the GT
        gt[rng.random((h, w)) < 0.2] = 255
        pred = np.where(rng.random((h, w)) < 0.6, np.clip(gt, 0, num_classes - 1), rng.integers(0, num_classes, (h, w)))
        gts.append(gt)
        preds.append(pred)
    metric = IoUMetric(num_classes=num_classes)
    out = _evaluate(metric, gts, preds)
    assert out == pytest.approx(_confusion_reference(gts, preds, num_classes, 255))


def test_table_uses_class_names_and_is_saved(tmp_path):
    table = tmp_path / 'sub' / 'per_class.md'
    metric = IoUMetric(table_file=str(table))
    metric.dataset_meta = dict(classes=('sky', 'road', 'car'))
    _evaluate(metric, [np.array([[0, 1], [1, 1]])], [np.array([[0, 1], [0, 1]])])
    lines = table.read_text().splitlines()
    assert lines[:2] == ['| Class | IoU | Acc |', '|---|---:|---:|']
    # sky: I=1, U=2 -> 50 / Acc 100; road: I=2, U=3 -> 66.67 / Acc 66.67; car: absent -> nan
    assert lines[2:] == ['| sky | 50.00 | 100.00 |', '| road | 66.67 | 66.67 |', '| car | nan | nan |']


def test_through_mmengine_evaluator_with_dataset_meta():
    rng = np.random.default_rng(3)
    gts = [rng.integers(0, 3, (6, 8)) for _ in range(4)]
    preds = [rng.integers(0, 3, (6, 8)) for _ in range(4)]
    evaluator = Evaluator(IoUMetric())
    evaluator.dataset_meta = dict(classes=('a', 'b', 'c'))  # num_classes from the dataset
    for k in (0, 2):
        evaluator.process(_preds(preds[k:k + 2]), _batch(gts[k:k + 2]))
    out = evaluator.evaluate(4)
    assert out == pytest.approx({f'seg/{k}': v for k, v in _confusion_reference(gts, preds, 3, 255).items()})


def test_all_ignored_gives_nan_without_error():
    metric = IoUMetric(num_classes=2)
    out = _evaluate(metric, [np.full((2, 2), 255)], [np.zeros((2, 2), np.int64)])
    assert all(math.isnan(v) for v in out.values())


def test_collate_padding_of_an_unresized_test_map_is_cropped():
    # image_collate pads a test map whose image kept its size (ori_shape == img_shape) with 255
    gt = np.array([[0, 1, 1], [2, 2, 0]])
    padded = np.full((4, 5), 255)
    padded[:2, :3] = gt
    metric = IoUMetric(num_classes=3)
    assert _evaluate(metric, [padded], [gt]) == pytest.approx(dict(aAcc=100.0, mIoU=100.0, mAcc=100.0))


def test_errors_name_the_image():
    metric = IoUMetric(num_classes=3)
    with pytest.raises(ValueError, match=r'b\.jpg: pred_sem_seg \(4, 5\) and gt_seg_map \(4, 6\) differ'):
        metric.process(_batch([np.zeros((4, 5), int), np.zeros((4, 6), int)], ['a.jpg', 'b.jpg']),
                       _preds([np.zeros((4, 5), int)] * 2, ['a.jpg', 'b.jpg']))
    with pytest.raises(ValueError, match=r'a\.jpg: values outside \[0, 3\).*gt_seg_map \[3\]'):
        metric.process(_batch([np.array([[3, 255]])], ['a.jpg']), _preds([np.array([[0, 0]])], ['a.jpg']))
    with pytest.raises(ValueError, match=r'pred_sem_seg \[-1\]'):
        metric.process(_batch([np.array([[0]])]), _preds([np.array([[-1]])]))
    with pytest.raises(ValueError, match='integer map'):
        metric.process(_batch([np.zeros((2, 2), int)]), _preds([np.zeros((2, 2), np.float32)]))
    with pytest.raises(KeyError, match='gt_seg_map'):
        metric.process(dict(data_samples=dict(img_path=['a.jpg'])), _preds([np.zeros((2, 2), int)]))
    with pytest.raises(KeyError, match='no pred_sem_seg'):
        metric.process(_batch([np.zeros((2, 2), int)]), [dict(img_path='a.jpg')])
    with pytest.raises(ValueError, match='no results'):
        metric.compute_metrics([])


def test_num_classes_must_agree_with_dataset():
    metric = IoUMetric(num_classes=4)
    metric.dataset_meta = dict(classes=('a', 'b', 'c'))
    with pytest.raises(ValueError, match='num_classes=4 but the dataset has 3 classes'):
        metric.process(_batch([np.zeros((1, 1), int)]), _preds([np.zeros((1, 1), int)]))
    with pytest.raises(ValueError, match='give num_classes'):
        IoUMetric().process(_batch([np.zeros((1, 1), int)]), _preds([np.zeros((1, 1), int)]))
    with pytest.raises(ValueError, match='num_classes must be >= 1'):
        IoUMetric(num_classes=0)
