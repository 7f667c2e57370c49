"""The demo detector config (configs/synthetic/nuscenes_tiny.py) shrunk to a tiny model for tool
tests, a briefly trained checkpoint of it, and an independent reference for what a tool should
output with that checkpoint. Imported by the tests in this folder (pytest puts tests/tools/ on
sys.path).

Why trained, and from another seed: the Runner seeds with ``cfg.randomness.seed`` (0) before it
builds the model, so a checkpoint of the model built with seed 0 would equal the Runner's own
initialisation and a tool that ignored ``load_from`` would still pass. :func:`trained_checkpoint`
starts from seed :data:`TRAIN_SEED` and takes :data:`TRAIN_STEPS` AdamW steps on the fixture's
train split, so its weights and predictions differ from the Runner's initialisation
(:func:`runner_initial_state`). :func:`predict` runs a model built from a state dict directly
(no Runner, no tool) and :func:`reference_metric` scores or formats those predictions with the
config's NuScenesMetric: what the tool outputs must equal that, and differ from the same for the
Runner's initialisation.
"""
import copy
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

from sf3d.datasets.transforms.formatting import multiview_collate
from sf3d.registry import DATASETS, METRICS, MODELS

REPO = Path(__file__).resolve().parents[2]
FINAL_SIZE = (64, 128)  # (H, W) of the 400x225 synthetic images after resize + crop
TINY_MODEL = {
    'model.backbone.arch': dict(dims=(16, 16, 32, 32), heads=(1, 1, 2, 2), depths=(1, 1, 1, 1)),
    'model.backbone.spatial_grid': (2, 3),
    'model.num_select': 36,  # of the 6 views x 2 x 3 tokens x 8 depth bins = 288 hypotheses
    'model.embed_dims': 32,
    'model.head.num_layers': 1, 'model.head.num_heads': 2, 'model.head.ffn_dims': 32,
}
TRAIN_SEED = 1  # the checkpoint's initialisation; must differ from the config's randomness.seed
TRAIN_STEPS = 6
TRAIN_BATCH = 2
TRAIN_LR = 3e-3


def tiny_detector_config(overrides: dict, loaders=('test', )) -> Config:
    """nuscenes_tiny.py with the tiny model, FINAL_SIZE images and single-process loading in the
    ``loaders`` ('train', 'val', 'test'), then ``overrides`` (``merge_from_dict`` keys)."""
    cfg = Config.fromfile(REPO / 'configs/synthetic/nuscenes_tiny.py')
    options = dict(TINY_MODEL)
    for split in loaders:
        loader = cfg[f'{split}_dataloader']
        for t in loader.dataset.pipeline:
            if t['type'] == 'ResizeCropFlipMultiView':
                t['final_size'] = FINAL_SIZE
        options.update({f'{split}_dataloader.num_workers': 0, f'{split}_dataloader.persistent_workers': False})
    cfg.merge_from_dict({**options, **overrides})
    return cfg


def build_model(cfg: Config, state_dict: Optional[dict] = None, seed: Optional[int] = None) -> torch.nn.Module:
    """``cfg.model`` built after ``torch.manual_seed(seed)`` (if given), then ``state_dict`` loaded (strict)."""
    if seed is not None:
        torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope('sf3d'):
        model = MODELS.build(cfg.model)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model


_TRAINED: Dict[tuple, Dict[str, torch.Tensor]] = {}  # one training per (model, data, seed, steps) and session


def _trained_state(cfg: Config, train_root: str, seed: int, steps: int) -> Dict[str, torch.Tensor]:
    key = (repr(cfg.model.to_dict()), train_root, seed, steps)
    if key in _TRAINED:
        return _TRAINED[key]
    train_cfg = tiny_detector_config({'train_dataloader.dataset.data_root': train_root}, loaders=('train', ))
    train_cfg.model = copy.deepcopy(cfg.model)
    model = build_model(train_cfg, seed=seed)
    with DefaultScope.overwrite_default_scope('sf3d'):
        dataset = DATASETS.build(dict(train_cfg.train_dataloader.dataset, serialize_data=False))
    optim = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=TRAIN_LR))
    model.train()
    for step in range(steps):
        batch = [dataset[(step * TRAIN_BATCH + k) % len(dataset)] for k in range(TRAIN_BATCH)]
        losses = model.train_step(multiview_collate(batch), optim)
        if not torch.isfinite(losses['loss']):
            raise RuntimeError(f'tiny detector training diverged at step {step}: {losses}')
    _TRAINED[key] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return _TRAINED[key]


def trained_checkpoint(cfg: Config, path: Path, train_root: Path, seed: int = TRAIN_SEED,
                       steps: int = TRAIN_STEPS) -> Path:
    """Save ``cfg.model`` initialised with ``seed`` and trained ``steps`` AdamW steps (batch 2) on the
    train split of the synthetic nuScenes at ``train_root``, as an mmengine-style checkpoint."""
    runner_seed = cfg.get('randomness', {}).get('seed')
    if seed == runner_seed:
        raise ValueError(f'seed {seed} is the Runner\'s own seed: the checkpoint would start from the model '
                         'the Runner builds anyway')
    state = _trained_state(cfg, str(train_root), seed, steps)
    torch.save({'meta': dict(seed=seed, steps=steps), 'state_dict': state}, path)
    return path


def checkpoint_state(path: Path) -> Dict[str, torch.Tensor]:
    return torch.load(path, map_location='cpu', weights_only=False)['state_dict']


def runner_initial_state(cfg: Config, work_dir: Path) -> Dict[str, torch.Tensor]:
    """The weights the Runner builds from ``cfg`` before it would load any checkpoint (a Runner is built,
    with ``load_from=None``, and its model read)."""
    cfg = copy.deepcopy(cfg)
    cfg.load_from, cfg.resume, cfg.work_dir = None, False, str(work_dir)
    runner = Runner.from_cfg(cfg)
    return {k: v.detach().clone() for k, v in runner.model.state_dict().items()}


@torch.no_grad()
def predict(cfg: Config, state_dict: dict) -> List[dict]:
    """The predictions of ``cfg.model`` with ``state_dict`` on every sample of ``cfg.test_dataloader.dataset``
    (one at a time, in order): ``model.test_step``'s data samples (token, pred_instances_3d)."""
    model = build_model(cfg, state_dict).eval()
    with DefaultScope.overwrite_default_scope('sf3d'):
        dataset = DATASETS.build(dict(cfg.test_dataloader.dataset, serialize_data=False))
    out = []
    for i in range(len(dataset)):
        out += model.test_step(multiview_collate([dataset[i]]))
    return out


def reference_metric(cfg: Config, predictions: List[dict], out_dir: Path, **metric_options) -> Tuple[dict, dict]:
    """Score ``predictions`` with ``cfg.test_evaluator`` (a NuScenesMetric; ``metric_options`` override
    its arguments) writing into ``out_dir``: returns (metrics as the Runner reports them, i.e.
    ``NuScenes/``-prefixed; {} with format_only, the written results_nusc.json)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metric_cfg = copy.deepcopy(cfg.test_evaluator)
    metric_cfg.update(jsonfile_prefix=str(out_dir), **metric_options)
    with DefaultScope.overwrite_default_scope('sf3d'):
        metric = METRICS.build(metric_cfg)
        metric.dataset_meta = DATASETS.build(dict(cfg.test_dataloader.dataset, serialize_data=False)).metainfo
    metric.process(None, predictions)
    metrics = metric.evaluate(len(predictions))
    return metrics, json.loads((out_dir / 'results_nusc.json').read_text())


BOX_FIELDS = ('translation', 'size', 'rotation', 'velocity')


def assert_same_submission(got: dict, expected: dict, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    """The same sample tokens, and per token the same boxes (class, score, pose, size, velocity) in order."""
    assert got['meta'] == expected['meta']
    assert list(got['results']) == list(expected['results'])
    for token, boxes in expected['results'].items():
        mine = got['results'][token]
        assert len(mine) == len(boxes), f'{token}: {len(mine)} boxes, expected {len(boxes)}'
        assert [b['detection_name'] for b in mine] == [b['detection_name'] for b in boxes], token
        for field in ('detection_score', ) + BOX_FIELDS:
            np.testing.assert_allclose([b[field] for b in mine], [b[field] for b in boxes], rtol=rtol, atol=atol,
                                       err_msg=f'{token}: {field}')


def raw_scores(predictions: List[dict]) -> Dict[str, set]:
    """sample token -> the set of scores (as the float64 of each float32) that ``predict`` gave it."""
    return {p['token']: set(p['pred_instances_3d']['scores_3d'].double().tolist()) for p in predictions}


def assert_scores_not_from(submission: dict, predictions: List[dict]) -> None:
    """No box of ``submission`` carries a score of ``predictions`` (another model's): the file was not
    written from that model. The metric stores each float32 score exactly (float64 in the JSON)."""
    scores = raw_scores(predictions)
    for token, boxes in submission['results'].items():
        shared = {b['detection_score'] for b in boxes} & scores[token]
        assert not shared, f'{token}: {len(shared)} box scores equal those of the other model'
