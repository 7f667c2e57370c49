"""Top-k classification accuracy as an mmengine metric (gathered across ranks by mmengine)."""
from typing import Dict, List, Optional, Sequence, Union

import torch
from mmengine.evaluator import BaseMetric

from sf3d.registry import METRICS


@METRICS.register_module()
class Accuracy(BaseMetric):
    """Top-k accuracy in percent.

    ``process`` takes the model's ``data_samples``: a list of dicts with ``pred_score``
    (Tensor (num_classes,), scores or logits) and ``gt_label`` (int, or a tensor holding one
    int). ``compute_metrics`` returns ``{'top1': float, 'top5': float, ...}``: the percentage
    (0-100) of samples whose ground truth is among the k highest scores. Under mmengine's
    Evaluator the keys get the prefix ``accuracy/`` (e.g. ``accuracy/top1``).

    - A hit counts only if the ground-truth index is in ``torch.topk(pred_score, k)``'s
      indices, so on tied scores the order torch.topk picks decides.
    - k larger than the number of classes is clamped to it (every sample is then a hit:
      top-k accuracy is 100% by definition); the key still reads ``top{k}``.

    Args:
        topk: the k values to report.
        collect_device: where results are gathered across ranks, 'cpu' or 'gpu'.
        prefix: key prefix; None uses ``default_prefix`` ('accuracy').
    """
    default_prefix: Optional[str] = 'accuracy'

    def __init__(self, topk: Union[int, Sequence[int]] = (1, 5), collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = (topk,) if isinstance(topk, int) else tuple(topk)
        if not self.topk or any(not isinstance(k, int) or k < 1 for k in self.topk):
            raise ValueError(f'topk must be positive ints, got {topk!r}')

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Keep each sample's score vector (on the CPU) and its ground-truth label."""
        for i, sample in enumerate(data_samples):
            if 'pred_score' not in sample or 'gt_label' not in sample:
                raise KeyError(f'data_samples[{i}] needs keys pred_score and gt_label, '
                               f'got {sorted(sample)}')
            score = torch.as_tensor(sample['pred_score']).detach().float().cpu()
            if score.dim() != 1:
                raise ValueError(f'data_samples[{i}]["pred_score"] must have shape (num_classes,), '
                                 f'got {tuple(score.shape)}')
            gt = torch.as_tensor(sample['gt_label'])
            if gt.numel() != 1:
                raise ValueError(f'data_samples[{i}]["gt_label"] must be one int, got {gt.tolist()}')
            self.results.append(dict(pred_score=score, gt_label=int(gt.item())))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        if not results:
            raise ValueError('Accuracy got no results: process() was never called with samples')
        num_classes = {r['pred_score'].numel() for r in results}
        if len(num_classes) != 1:
            raise ValueError(f'pred_score lengths differ between samples: {sorted(num_classes)}')
        num_classes = num_classes.pop()
        scores = torch.stack([r['pred_score'] for r in results])  # (N, C)
        gt = torch.tensor([r['gt_label'] for r in results])  # (N,)
        bad = gt[(gt < 0) | (gt >= num_classes)]
        if bad.numel():
            raise ValueError(f'gt_label {bad.tolist()} outside [0, {num_classes}) classes')
        metrics = {}
        for k in self.topk:
            ranked = scores.topk(min(k, num_classes), dim=1).indices  # (N, k)
            metrics[f'top{k}'] = (ranked == gt[:, None]).any(dim=1).float().mean().item() * 100
        return metrics
