"""COCO detection / instance-segmentation metric: the official pycocotools evaluation.

:class:`CocoMetric` is an mmengine ``BaseMetric``: ``process`` keeps each image's predictions as
small CPU arrays (masks already RLE-encoded), mmengine gathers them from every rank, and
``compute_metrics`` (rank 0) writes them in the COCO results format and runs ``COCOeval``
(``evaluate``, ``accumulate``, ``summarize``; 101-point interpolated AP, at most 100 detections per
image, the official defaults) on the images that were processed.

Predictions (the 2D contract, ORIGINAL image pixels): a list of dicts ``img_id`` (int), ``bboxes``
(N, 4) xyxy, ``scores`` (N,), ``labels`` (N,) int in 0..C-1, ``masks`` (N, H0, W0) bool (needed for
'segm'). Label i is the i-th category of ``ann_file`` in ascending category id (``CocoDetection``'s
rule). Result files: bbox ``[x1, y1, x2 - x1, y2 - y1]``; segm entries carry ``segmentation``
(compressed RLE) and no ``bbox``, as the official results format, so their area (for APs/m/l) is the
mask's.

Keys (with the ``coco/`` prefix under mmengine's Evaluator): ``{bbox,segm}_mAP``, ``_mAP_50``,
``_mAP_75``, ``_mAP_s``, ``_mAP_m``, ``_mAP_l`` (COCO stats 0-5, in [0, 1]; -1 where the evaluated
images hold no GT of that size), and with ``classwise`` ``{metric}_{class}_precision`` (AP over IoU
0.50:0.95 of the class; nan without GT).
"""
import contextlib
import io
import json
import os.path as osp
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmengine.utils import mkdir_or_exist
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sf3d.datasets.coco import load_coco_json, sorted_categories
from sf3d.registry import METRICS

METRICS_ALLOWED = ('bbox', 'segm')
STAT_NAMES = ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')  # COCOeval.stats[0:6]


def _quiet(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with its prints captured: (result, printed text)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = fn(*args, **kwargs)
    return out, buf.getvalue()


def _numpy(value, dtype) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def encode_masks(masks: np.ndarray) -> List[Dict]:
    """(N, H, W) bool masks -> N compressed RLEs ``{'size': [H, W], 'counts': str}`` (JSON-ready)."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))  # (H, W, N) input
    return [dict(size=[int(v) for v in r['size']], counts=r['counts'].decode('ascii')) for r in rles]


@METRICS.register_module()
class CocoMetric(BaseMetric):
    """COCO bbox / segm AP with pycocotools (module docstring for inputs and keys).

    Args:
        ann_file: the ground-truth annotation JSON (e.g. ``data/coco/annotations/instances_val2017.json``).
        metric: 'bbox', 'segm', or a list of both.
        classwise: also report (and log a table of) the per-class AP.
        format_only: only write the results files (``{outfile_prefix}.bbox.json`` /
            ``.segm.json``, e.g. for the test-dev server); returns no metrics.
        outfile_prefix: where the results files go (required with ``format_only``; otherwise they
            are written only when it is set).
        collect_device, prefix: as mmengine's ``BaseMetric`` (prefix defaults to 'coco').
    """
    default_prefix: Optional[str] = 'coco'

    def __init__(self, ann_file: str, metric: Union[str, Sequence[str]] = 'bbox', classwise: bool = False,
                 format_only: bool = False, outfile_prefix: Optional[str] = None, collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.metrics = [metric] if isinstance(metric, str) else list(metric)
        bad = [m for m in self.metrics if m not in METRICS_ALLOWED]
        if bad or not self.metrics or len(set(self.metrics)) != len(self.metrics):
            raise ValueError(f'CocoMetric: metric must be one or both of {METRICS_ALLOWED}, got {metric!r}')
        if format_only and not outfile_prefix:
            raise ValueError('CocoMetric: format_only=True needs outfile_prefix (where the results files go)')
        self.classwise = bool(classwise)
        self.format_only = bool(format_only)
        self.outfile_prefix = outfile_prefix
        self.ann_file = ann_file
        data = load_coco_json(ann_file)
        cats = sorted_categories(data, ann_file)
        self.cat_ids = [int(c['id']) for c in cats]
        self.class_names = [c['name'] for c in cats]
        self.img_ids = {int(img['id']) for img in data['images']}
        self._coco: Optional[COCO] = None  # built on first use from ann_file (rank 0 only)

    @property
    def coco(self) -> COCO:
        if self._coco is None:
            self._coco, _ = _quiet(COCO, self.ann_file)
        return self._coco

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Keep each image's predictions as CPU numpy arrays; masks as RLEs when 'segm' is evaluated."""
        for i, pred in enumerate(data_samples):
            missing = [k for k in ('img_id', 'bboxes', 'scores', 'labels') if k not in pred]
            if 'segm' in self.metrics and 'masks' not in pred:
                missing.append('masks')
            if missing:
                raise KeyError(f'CocoMetric: prediction {i} lacks keys {missing} (has {sorted(pred)})')
            img_id = int(pred['img_id'])
            if img_id not in self.img_ids:
                raise ValueError(f'CocoMetric: prediction {i} has img_id {img_id}, which is not an image of '
                                 f'{self.ann_file}')
            bboxes = _numpy(pred['bboxes'], np.float64).reshape(-1, 4)  # (N, 4)
            scores = _numpy(pred['scores'], np.float64).reshape(-1)  # (N,)
            labels = _numpy(pred['labels'], np.int64).reshape(-1)  # (N,)
            if not len(bboxes) == len(scores) == len(labels):
                raise ValueError(f'CocoMetric: prediction {i} (img_id {img_id}) has {len(bboxes)} boxes, '
                                 f'{len(scores)} scores, {len(labels)} labels')
            bad = labels[(labels < 0) | (labels >= len(self.cat_ids))]
            if bad.size:
                raise ValueError(f'CocoMetric: prediction {i} (img_id {img_id}) has labels {bad.tolist()} outside '
                                 f'0..{len(self.cat_ids) - 1} (the {len(self.cat_ids)} categories of {self.ann_file})')
            result = dict(img_id=img_id, bboxes=bboxes, scores=scores, labels=labels)
            if 'segm' in self.metrics:
                masks = _numpy(pred['masks'], bool)
                if masks.ndim != 3 or len(masks) != len(labels):
                    raise ValueError(f'CocoMetric: prediction {i} (img_id {img_id}) masks must be (N, H0, W0) with '
                                     f'N = {len(labels)}, got {masks.shape}')
                result['masks'] = encode_masks(masks)
            self.results.append(result)

    def results_to_json(self, results: List[dict]) -> Dict[str, List[dict]]:
        """The COCO results lists per metric ({'bbox': [...], 'segm': [...]})."""
        out: Dict[str, List[dict]] = {m: [] for m in self.metrics}
        for r in results:
            for k, (box, score, label) in enumerate(zip(r['bboxes'], r['scores'], r['labels'])):
                entry = dict(image_id=r['img_id'], category_id=self.cat_ids[label], score=float(score))
                if 'bbox' in out:
                    x1, y1, x2, y2 = (float(v) for v in box)
                    out['bbox'].append(dict(entry, bbox=[x1, y1, x2 - x1, y2 - y1]))
                if 'segm' in out:
                    out['segm'].append(dict(entry, segmentation=r['masks'][k]))
        return out

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        if not results:
            raise ValueError('CocoMetric got no results: process() was never called with predictions')
        files = self.results_to_json(results)
        if self.outfile_prefix:
            mkdir_or_exist(osp.dirname(osp.abspath(self.outfile_prefix)))
            for metric, entries in files.items():
                path = f'{self.outfile_prefix}.{metric}.json'
                with open(path, 'w') as f:
                    json.dump(entries, f)
                print_log(f'CocoMetric: wrote {len(entries)} {metric} results to {path}', logger='current')
        if self.format_only:
            return {}
        img_ids = sorted({r['img_id'] for r in results})
        metrics: Dict[str, float] = {}
        for metric in self.metrics:
            metrics.update(self._evaluate(metric, files[metric], img_ids))
        return metrics

    def _evaluate(self, metric: str, entries: List[dict], img_ids: List[int]) -> Dict[str, float]:
        """COCOeval of one iou type on ``img_ids``: the six summary numbers (+ per class)."""
        gt = self.coco
        if entries:
            dt, _ = _quiet(gt.loadRes, entries)
        else:  # loadRes cannot take an empty list: an empty detection set scores 0 (or -1 without GT)
            dt = COCO()
            dt.dataset = dict(images=list(gt.dataset['images']), categories=list(gt.dataset['categories']),
                              annotations=[])
            _quiet(dt.createIndex)
        coco_eval = COCOeval(gt, dt, iouType=metric)
        coco_eval.params.catIds = self.cat_ids
        coco_eval.params.imgIds = img_ids
        _quiet(coco_eval.evaluate)
        _quiet(coco_eval.accumulate)
        _, summary = _quiet(coco_eval.summarize)
        print_log(f'\nCOCO {metric} on {len(img_ids)} images ({len(entries)} detections):\n{summary}',
                  logger='current')
        out = {f'{metric}_{name}': float(coco_eval.stats[i]) for i, name in enumerate(STAT_NAMES)}
        if self.classwise:
            precision = coco_eval.eval['precision']  # (T iou, R recall, K classes, A areas, M max dets)
            rows = []
            for k, name in enumerate(self.class_names):
                p = precision[:, :, k, 0, -1]  # (T, R): area 'all', 100 detections
                p = p[p > -1]
                ap = float(p.mean()) if p.size else float('nan')
                out[f'{metric}_{name}_precision'] = ap
                rows.append(f'{name:>20s} {ap:.3f}')
            print_log(f'COCO {metric} per-class AP:\n' + '\n'.join(rows), logger='current')
        return out
