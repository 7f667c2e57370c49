"""sf3d.evaluation.Accuracy: hand-computed top-k, an argsort reference, batching, errors."""
import numpy as np
import pytest
import torch

from sf3d.evaluation import Accuracy
from sf3d.registry import METRICS

# 4 samples, 6 classes; rank of the ground truth (0 = best): 0, 1, 5, 2
SCORES = torch.tensor([
    [0.9, 0.05, 0.01, 0.01, 0.02, 0.01],  # gt 0: rank 0
    [0.3, 0.5, 0.1, 0.05, 0.03, 0.02],    # gt 0: rank 1
    [0.2, 0.3, 0.1, 0.25, 0.1, 0.05],     # gt 5: rank 5 (last)
    [0.1, 0.2, 0.15, 0.25, 0.3, 0.0],     # gt 1: rank 2
])
GT = [0, 0, 5, 1]


def _samples(scores, gts):
    return [dict(pred_score=s, gt_label=g) for s, g in zip(scores, gts)]


def test_hand_computed_case():
    metric = METRICS.build(dict(type='Accuracy', topk=(1, 2, 3, 5, 6)))
    metric.process({}, _samples(SCORES, GT))
    result = metric.compute_metrics(metric.results)
    assert result == pytest.approx({'top1': 25.0, 'top2': 50.0, 'top3': 75.0, 'top5': 75.0, 'top6': 100.0})
    assert all(isinstance(v, float) for v in result.values())


def test_default_topk_and_prefix_through_evaluate():
    metric = Accuracy()
    metric.process({}, _samples(SCORES, GT))
    assert metric.evaluate(size=4) == pytest.approx({'accuracy/top1': 25.0, 'accuracy/top5': 75.0})
    assert metric.results == []  # evaluate() resets
    metric = Accuracy(topk=1, prefix='val')
    metric.process({}, _samples(SCORES, GT))
    assert metric.evaluate(size=4) == pytest.approx({'val/top1': 25.0})


def test_matches_argsort_reference_and_batching():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 10)).astype(np.float32)  # no ties
    gts = rng.integers(0, 10, 50)
    order = np.argsort(-scores, axis=1)  # (N, C) classes by decreasing score
    expected = {f'top{k}': 100 * np.mean([g in order[i, :k] for i, g in enumerate(gts)]) for k in (1, 3, 5)}

    one = Accuracy(topk=(1, 3, 5))
    one.process({}, _samples(torch.from_numpy(scores), gts.tolist()))
    two = Accuracy(topk=(1, 3, 5))
    two.process({}, _samples(torch.from_numpy(scores[:20]), [torch.tensor(g) for g in gts[:20]]))
    two.process({}, _samples(torch.from_numpy(scores[20:]), [torch.tensor([g]) for g in gts[20:]]))
    result_one = one.compute_metrics(one.results)
    assert result_one == pytest.approx(expected)
    assert two.compute_metrics(two.results) == result_one


def test_k_above_num_classes_is_clamped():
    metric = Accuracy(topk=(1, 10))
    metric.process({}, _samples(SCORES, GT))
    assert metric.compute_metrics(metric.results) == pytest.approx({'top1': 25.0, 'top10': 100.0})


def test_ties_follow_torch_topk():
    scores = torch.zeros(3, 4)  # all tied: a hit iff torch.topk returns the gt index
    gts = [0, 1, 3]
    metric = Accuracy(topk=(1,))
    metric.process({}, _samples(scores, gts))
    top1 = scores.topk(1, dim=1).indices[:, 0].tolist()
    expected = 100 * np.mean([t == g for t, g in zip(top1, gts)])
    assert metric.compute_metrics(metric.results)['top1'] == pytest.approx(expected)


def test_scores_are_stored_detached_on_cpu():
    metric = Accuracy(topk=(1,))
    score = torch.tensor([0.1, 0.9], requires_grad=True)
    metric.process({}, [dict(pred_score=score * 2, gt_label=1)])
    stored = metric.results[0]['pred_score']
    assert not stored.requires_grad and stored.device.type == 'cpu'


@pytest.mark.parametrize('topk', [(0,), (1, -5), ()])
def test_bad_topk(topk):
    with pytest.raises(ValueError, match='topk must be positive ints'):
        Accuracy(topk=topk)


def test_bad_inputs():
    metric = Accuracy()
    with pytest.raises(KeyError, match='pred_score and gt_label'):
        metric.process({}, [dict(pred_score=torch.zeros(3))])
    with pytest.raises(ValueError, match=r'shape \(num_classes,\), got \(1, 3\)'):
        metric.process({}, [dict(pred_score=torch.zeros(1, 3), gt_label=0)])
    with pytest.raises(ValueError, match='must be one int'):
        metric.process({}, [dict(pred_score=torch.zeros(3), gt_label=torch.tensor([0, 1]))])
    with pytest.raises(ValueError, match='no results'):
        metric.compute_metrics([])
    metric.process({}, [dict(pred_score=torch.zeros(3), gt_label=3)])
    with pytest.raises(ValueError, match=r'gt_label \[3\] outside \[0, 3\)'):
        metric.compute_metrics(metric.results)
    metric.results.clear()
    metric.process({}, _samples([torch.zeros(3), torch.zeros(4)], [0, 0]))
    with pytest.raises(ValueError, match=r'lengths differ between samples: \[3, 4\]'):
        metric.compute_metrics(metric.results)
