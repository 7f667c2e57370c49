"""CocoMetric (sf3d/evaluation/coco_metric.py) on hand-made cases with hand-computed COCO AP:
perfect predictions, a TP/FP mix (101-point interpolated AP), an IoU between thresholds, the label ->
category id rule, crowd regions, segm vs bbox consistency, only processed images evaluated, the
results files (format_only) and the errors on bad predictions."""
import json

import numpy as np
import pytest
import torch
from mmengine.evaluator import Evaluator
from pycocotools import mask as mask_utils

from sf3d.evaluation.coco_metric import CocoMetric
from sf3d.registry import METRICS

torch.set_num_threads(1)
H = W = 100
# GT (xyxy): category 3 ('a', label 0) G1, G2 in image 1, G3 in image 2; category 8 ('b', label 1) G4 in
# image 2; a crowd region of 'b' in image 1
G1, G2, G3, G4, CROWD = [10, 10, 40, 40], [50, 50, 90, 90], [20, 20, 60, 70], [70, 10, 95, 30], [0, 70, 30, 100]
STATS = ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')


def _rect_poly(box):
    x1, y1, x2, y2 = box
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def _gt_ann(ann_id, img_id, cat, box, crowd=False):
    x1, y1, x2, y2 = box
    seg = _rect_poly(box)
    if crowd:
        seg = mask_utils.encode(np.asfortranarray(_mask(box)))
        seg = dict(size=seg['size'], counts=seg['counts'].decode('ascii'))
    return dict(id=ann_id, image_id=img_id, category_id=cat, bbox=[x1, y1, x2 - x1, y2 - y1],
                area=(x2 - x1) * (y2 - y1), iscrowd=int(crowd), segmentation=seg)


def _mask(box) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    x1, y1, x2, y2 = (int(v) for v in box)
    m[y1:y2, x1:x2] = 1
    return m


@pytest.fixture(scope='module')
def ann_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('coco_metric') / 'instances_val.json'
    data = dict(images=[dict(id=i, file_name=f'{i}.jpg', height=H, width=W) for i in (1, 2)],
                categories=[dict(id=8, name='b'), dict(id=3, name='a')],  # listed out of id order
                annotations=[_gt_ann(1, 1, 3, G1), _gt_ann(2, 1, 3, G2), _gt_ann(3, 2, 3, G3), _gt_ann(4, 2, 8, G4),
                             _gt_ann(5, 1, 8, CROWD, crowd=True)])
    path.write_text(json.dumps(data))
    return str(path)


def _pred(img_id, dets):
    """dets: list of (box xyxy, score, label)."""
    boxes = torch.tensor([d[0] for d in dets], dtype=torch.float32).reshape(-1, 4)
    masks = torch.from_numpy(np.stack([_mask(d[0]) for d in dets]) if dets else np.zeros((0, H, W), np.uint8)).bool()
    return dict(img_id=img_id, bboxes=boxes, scores=torch.tensor([d[1] for d in dets]),
                labels=torch.tensor([d[2] for d in dets], dtype=torch.int64), masks=masks)


def _run(ann_file, preds, **kw):
    metric = CocoMetric(ann_file=ann_file, metric=['bbox', 'segm'], **kw)
    metric.process({}, preds)
    return metric.evaluate(len(preds))


def test_perfect_predictions_score_one(ann_file):
    preds = [_pred(1, [(G1, 1.0, 0), (G2, 1.0, 0), (CROWD, 0.5, 1)]),  # a detection on a crowd region is no FP
             _pred(2, [(G3, 1.0, 0), (G4, 1.0, 1)])]
    out = _run(ann_file, preds)
    for metric in ('bbox', 'segm'):
        # 1 up to pycocotools' eps in precision = tp / (tp + fp + eps); no large GT: -1
        assert [out[f'coco/{metric}_{s}'] for s in STATS] == pytest.approx([1.0, 1.0, 1.0, 1.0, 1.0, -1.0])


def test_hand_computed_tp_fp_mix(ann_file):
    # class a (3 GT) by score: TP .9, FP .8, TP .7, TP .6 -> precision 1, 1/2, 2/3, 3/4 at recall 1/3, 1/3, 2/3, 1;
    # interpolated (max to the right) 1 for the 34 recall points 0..0.33, 3/4 for the 67 points 0.34..1
    ap_a = (34 * 1.0 + 67 * 0.75) / 101
    preds = [_pred(1, [(G1, 0.9, 0), ([60, 5, 95, 40], 0.8, 0), (G2, 0.6, 0)]),
             _pred(2, [(G3, 0.7, 0), (G4, 0.5, 1)])]
    out = _run(ann_file, preds, classwise=True)
    for metric in ('bbox', 'segm'):  # rectangle masks: the same IoUs, the same numbers
        assert out[f'coco/{metric}_a_precision'] == pytest.approx(ap_a, abs=1e-9)
        assert out[f'coco/{metric}_b_precision'] == pytest.approx(1.0)
        for s in ('mAP', 'mAP_50', 'mAP_75'):
            assert out[f'coco/{metric}_{s}'] == pytest.approx((ap_a + 1.0) / 2, abs=1e-9)
        # small range: G1 (a) and G4 (b) are the only small GT, both found, the small-range rest ignored
        assert out[f'coco/{metric}_mAP_s'] == pytest.approx(1.0)
        assert out[f'coco/{metric}_mAP_l'] == -1.0
    # medium range, class a: G2 (.6) and G3 (.7) after the FP (.8, 35 x 35 = 1225 px: medium); the hit on the
    # small G1 is ignored -> precision 0, 1/2, 2/3 at recall 0, 1/2, 1 -> interpolated 2/3 at every recall
    # point; class b has no medium GT (-1, left out of the mean)
    assert out['coco/bbox_mAP_m'] == pytest.approx(2 / 3, abs=1e-9)


def test_iou_between_thresholds_and_only_processed_images(ann_file):
    # image 2 only: G3 (40 x 50) found with a box of IoU 31/50 = 0.62 -> TP at IoU 0.50, 0.55, 0.60 (3 of 10);
    # G4 missed. Image 1's GT is not evaluated (it was not processed), so recall of class a is 1 at IoU 0.5.
    out = _run(ann_file, [_pred(2, [([20, 20, 60, 51], 0.9, 0)])], classwise=True)
    assert out['coco/bbox_a_precision'] == pytest.approx(0.3)
    assert out['coco/bbox_b_precision'] == 0.0
    assert out['coco/bbox_mAP_50'] == pytest.approx(0.5) and out['coco/bbox_mAP_75'] == 0.0
    assert out['coco/segm_mAP'] == pytest.approx(0.15)


def test_label_is_index_of_ascending_category_id(ann_file):
    preds = [_pred(1, [(G1, 1.0, 1), (G2, 1.0, 1)]), _pred(2, [(G3, 1.0, 1), (G4, 1.0, 0)])]  # labels swapped
    out = _run(ann_file, preds)
    assert out['coco/bbox_mAP'] == 0.0 and out['coco/segm_mAP'] == 0.0
    empty = _run(ann_file, [_pred(1, []), _pred(2, [])])  # no detection at all: AP 0, no crash
    assert empty['coco/bbox_mAP'] == 0.0 and empty['coco/segm_mAP_l'] == -1.0


def test_format_only_writes_results_files(ann_file, tmp_path):
    prefix = str(tmp_path / 'out' / 'results')
    metric = METRICS.build(dict(type='CocoMetric', ann_file=ann_file, metric=['bbox', 'segm'], format_only=True,
                                outfile_prefix=prefix))
    metric.process({}, [_pred(2, [([20.5, 20, 60, 51], 0.9, 0), (G4, 0.4, 1)])])
    assert metric.evaluate(1) == {}
    bbox = json.load(open(prefix + '.bbox.json'))
    assert bbox == [dict(image_id=2, category_id=3, score=pytest.approx(0.9), bbox=[20.5, 20.0, 39.5, 31.0]),
                    dict(image_id=2, category_id=8, score=pytest.approx(0.4), bbox=[70.0, 10.0, 25.0, 20.0])]
    segm = json.load(open(prefix + '.segm.json'))
    assert [s['category_id'] for s in segm] == [3, 8] and 'bbox' not in segm[0]
    np.testing.assert_array_equal(mask_utils.decode(segm[1]['segmentation']), _mask(G4))


def test_evaluator_prefix_and_bbox_only(ann_file):
    evaluator = Evaluator([dict(type='sf3d.CocoMetric', ann_file=ann_file)])
    evaluator.process([{k: v for k, v in _pred(2, [(G3, 1.0, 0), (G4, 1.0, 1)]).items() if k != 'masks'}])
    out = evaluator.evaluate(1)
    assert sorted(out) == sorted(f'coco/bbox_{s}' for s in STATS) and out['coco/bbox_mAP'] == pytest.approx(1.0)


def test_errors(ann_file, tmp_path):
    metric = CocoMetric(ann_file=ann_file, metric='segm')
    with pytest.raises(ValueError, match='img_id 99'):
        metric.process({}, [_pred(99, [(G1, 1.0, 0)])])
    with pytest.raises(ValueError, match=r'labels \[2\]'):
        metric.process({}, [_pred(1, [(G1, 1.0, 2)])])
    with pytest.raises(KeyError, match='masks'):
        metric.process({}, [{k: v for k, v in _pred(1, [(G1, 1.0, 0)]).items() if k != 'masks'}])
    with pytest.raises(ValueError, match='masks must be'):
        metric.process({}, [dict(_pred(1, [(G1, 1.0, 0)]), masks=torch.zeros(2, H, W, dtype=torch.bool))])
    with pytest.raises(ValueError, match='2 boxes, 1 scores'):
        metric.process({}, [dict(_pred(1, [(G1, 1.0, 0), (G2, 1.0, 0)]), scores=torch.ones(1))])
    with pytest.raises(ValueError, match='got no results'):
        metric.compute_metrics([])
    with pytest.raises(ValueError, match='metric must be'):
        CocoMetric(ann_file=ann_file, metric='proposal')
    with pytest.raises(ValueError, match='outfile_prefix'):
        CocoMetric(ann_file=ann_file, format_only=True)
    with pytest.raises(FileNotFoundError, match='missing.json'):
        CocoMetric(ann_file=str(tmp_path / 'missing.json'))
