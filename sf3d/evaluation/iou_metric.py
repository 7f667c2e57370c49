"""Semantic-segmentation mIoU / mAcc / aAcc as an mmengine metric (mmseg's ``IoUMetric`` semantics).

Per image only four (C,) count vectors are kept (intersection, union, predicted and GT pixels
per class), so gathering across ranks is cheap; ``compute_metrics`` sums them over the dataset.
"""
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log

from sf3d.registry import METRICS


def _as_numpy(value, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    value = np.asarray(value)
    if value.ndim != 2 or not np.issubdtype(value.dtype, np.integer):
        raise ValueError(f'{what} must be an (H, W) integer map, got {value.dtype} {value.shape}')
    return value.astype(np.int64, copy=False)


def area_counts(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int) -> Dict[str, np.ndarray]:
    """Per-class pixel counts of one image, each (C,) int64: ``intersect`` (pred == gt == c),
    ``union``, ``pred`` and ``label``, over the pixels whose gt is not ``ignore_index``."""
    valid = gt != ignore_index
    p, g = pred[valid], gt[valid]  # (P,)
    label = np.bincount(g, minlength=num_classes)
    pred_area = np.bincount(p, minlength=num_classes)
    intersect = np.bincount(g[p == g], minlength=num_classes)
    return dict(intersect=intersect, union=pred_area + label - intersect, pred=pred_area, label=label)


@METRICS.register_module()
class IoUMetric(BaseMetric):
    """mIoU, mAcc and aAcc in percent, as mmseg's ``IoUMetric``.

    ``process(data_batch, data_samples)``: ``data_samples`` are the model's predictions, a list of
    dicts with ``pred_sem_seg`` (H0, W0) int (Tensor or array) and ``img_path``; the ground truth
    is ``data_batch['data_samples']['gt_seg_map'][i]`` (H0, W0) (loaded at ``ori_shape``, not
    resized), values 0..C-1 or ``ignore_index``.

    Over all GT pixels that are not ignored: ``aAcc`` = correct / all; per class
    ``IoU = |pred == gt == c| / |pred == c or gt == c|`` and ``Acc = |pred == gt == c| / |gt == c|``,
    NaN where the denominator is 0 (IoU: class absent from GT and prediction; Acc: absent from GT).
    ``mIoU`` / ``mAcc`` are the means over the non-NaN classes. A per-class IoU / Acc table
    (markdown) is logged and, with ``table_file``, written to that file.

    Args:
        num_classes: C; None takes ``len(dataset_meta['classes'])`` (the Runner sets dataset_meta).
        ignore_index: GT value that is not evaluated.
        table_file: optional path of a markdown file for the per-class table (written on rank 0).
        collect_device, prefix: as mmengine's ``BaseMetric``; None uses ``default_prefix`` ('seg'), so
            under mmengine's Evaluator the keys read ``seg/mIoU``, ``seg/mAcc``, ``seg/aAcc``.
    """
    default_prefix: Optional[str] = 'seg'

    def __init__(self, num_classes: Optional[int] = None, ignore_index: int = 255, table_file: Optional[str] = None,
                 collect_device: str = 'cpu', prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if num_classes is not None and num_classes < 1:
            raise ValueError(f'IoUMetric: num_classes must be >= 1, got {num_classes}')
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.table_file = table_file

    def _classes(self) -> Optional[Sequence[str]]:
        return (self.dataset_meta or {}).get('classes')

    def _num_classes(self) -> int:
        classes = self._classes()
        if self.num_classes is None:
            if classes is None:
                raise ValueError("IoUMetric: give num_classes, or a dataset_meta with 'classes'")
            return len(classes)
        if classes is not None and len(classes) != self.num_classes:
            raise ValueError(f'IoUMetric: num_classes={self.num_classes} but the dataset has {len(classes)} classes')
        return self.num_classes

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        """Count each image's per-class areas (see ``area_counts``)."""
        num_classes = self._num_classes()
        batch_samples = data_batch.get('data_samples', {}) if isinstance(data_batch, dict) else {}
        gts = batch_samples.get('gt_seg_map')
        if gts is None or len(gts) != len(data_samples):
            raise KeyError(f"IoUMetric needs data_batch['data_samples']['gt_seg_map'] with one map per prediction "
                           f'({len(data_samples)}); load the annotations in the val/test pipeline (LoadSegAnnotation)')
        paths = batch_samples.get('img_path')
        for i, sample in enumerate(data_samples):
            name = sample.get('img_path') or (paths[i] if paths else f'sample {i}')
            if 'pred_sem_seg' not in sample:
                raise KeyError(f'IoUMetric: prediction {i} ({name}) has no pred_sem_seg, got keys {sorted(sample)}')
            pred = _as_numpy(sample['pred_sem_seg'], f'pred_sem_seg of {name}')
            gt = _as_numpy(gts[i], f'gt_seg_map of {name}')
            gt = _unpad(gt, pred.shape, self.ignore_index)
            if pred.shape != gt.shape:
                raise ValueError(f'IoUMetric: {name}: pred_sem_seg {pred.shape} and gt_seg_map {gt.shape} differ; '
                                 f'predictions must be at the original image size (ori_shape)')
            bad_gt = np.unique(gt[((gt < 0) | (gt >= num_classes)) & (gt != self.ignore_index)])
            bad_pred = np.unique(pred[(pred < 0) | (pred >= num_classes)])
            if bad_gt.size or bad_pred.size:
                raise ValueError(f'IoUMetric: {name}: values outside [0, {num_classes}) (ignore {self.ignore_index}): '
                                 f'gt_seg_map {bad_gt.tolist()[:10]}, pred_sem_seg {bad_pred.tolist()[:10]}')
            self.results.append(area_counts(pred, gt, num_classes, self.ignore_index))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        if not results:
            raise ValueError('IoUMetric got no results: process() was never called with samples')
        total = {k: np.sum([r[k] for r in results], axis=0) for k in ('intersect', 'union', 'pred', 'label')}
        with np.errstate(divide='ignore', invalid='ignore'):
            iou = total['intersect'] / total['union']  # (C,), NaN where union is 0
            acc = total['intersect'] / total['label']  # (C,), NaN where the class is absent from GT
            a_acc = total['intersect'].sum() / total['label'].sum()
        self._report(iou, acc)
        return dict(aAcc=float(a_acc * 100), mIoU=_nanmean(iou) * 100, mAcc=_nanmean(acc) * 100)

    def _report(self, iou: np.ndarray, acc: np.ndarray) -> None:
        classes = self._classes()
        if classes is None or len(classes) != len(iou):
            classes = [f'class {c}' for c in range(len(iou))]
        rows = [f'| {name} | {100 * i:.2f} | {100 * a:.2f} |' for name, i, a in zip(classes, iou, acc)]
        table = '\n'.join(['| Class | IoU | Acc |', '|---|---:|---:|', *rows]) + '\n'
        print_log('per-class results:\n' + table, logger='current')
        if self.table_file:
            os.makedirs(osp.dirname(osp.abspath(self.table_file)), exist_ok=True)
            with open(self.table_file, 'w') as f:
                f.write(table)


def _unpad(gt: np.ndarray, shape: Sequence[int], ignore_index: int) -> np.ndarray:
    """``gt`` cropped to ``shape`` when it is larger only by ``ignore_index`` rows / columns at the bottom /
    right: a test map that ``image_collate`` padded because its image was not resized (its ``ori_shape``
    then equals its ``img_shape``). Any other ``gt`` is returned as it is."""
    h, w = shape[:2]
    if gt.ndim != 2 or gt.shape == tuple(shape) or gt.shape[0] < h or gt.shape[1] < w:
        return gt
    if (gt[h:] == ignore_index).all() and (gt[:, w:] == ignore_index).all():
        return gt[:h, :w]
    return gt


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN when all are NaN (no warning)."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float('nan')
