"""Every config under configs/ loads, names registered types, and builds its model and
optimizer; the recipe numbers the issue fixes are what the ImageNet configs say."""
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

from sf3d.registry import DATASETS, METRICS, MODELS, TRANSFORMS

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'configs'
CONFIGS = sorted(p for p in CONFIG_DIR.rglob('*.py') if '_base_' not in p.parts)


@pytest.fixture(autouse=True)
def _sf3d_scope():
    with DefaultScope.overwrite_default_scope('sf3d'):
        yield


def test_there_are_configs():
    names = {p.relative_to(CONFIG_DIR).as_posix() for p in CONFIGS}
    assert {'imagenet/sf_t.py', 'imagenet/sf_s.py', 'imagenet/sf_b.py', 'imagenet/sf_s_384_ft.py',
            'imagenet/sf_b_384_ft.py', 'synthetic/imagenet_tiny.py'} <= names


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.relative_to(CONFIG_DIR).as_posix())
def test_config_builds(path):
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'sf3d'
    if cfg.model.backbone.get('pretrained'):  # ResNet loads its weights when built; none are committed
        cfg.model.backbone.pretrained = None
    model = MODELS.build(cfg.model)
    build_optim_wrapper(model, cfg.optim_wrapper)
    for split in ('train', 'val', 'test'):
        assert DATASETS.get(cfg[f'{split}_dataloader'].dataset.type) is not None
        for step in cfg[f'{split}_dataloader'].dataset.get('pipeline', []):
            assert TRANSFORMS.get(step.type) is not None, step.type
    assert METRICS.get(cfg.val_evaluator.type) is not None


def test_imagenet_recipe():
    cfg = Config.fromfile(CONFIG_DIR / 'imagenet/sf_s.py')
    assert cfg.optim_wrapper.optimizer.lr == 1e-3 and cfg.auto_scale_lr.base_batch_size == 1024
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.05
    assert cfg.train_cfg.max_epochs == 300
    warmup, cosine = cfg.param_scheduler
    assert (warmup.type, warmup.end, cosine.type, cosine.begin) == ('LinearLR', 10, 'CosineAnnealingLR', 10)
    assert cfg.model.mixup == dict(mixup_alpha=0.8, cutmix_alpha=1.0) and cfg.model.label_smoothing == 0.1
    assert cfg.train_dataloader.dataset.transform.auto_augment == 'rand-m9-mstd0.5-inc1'
    assert cfg.train_dataloader.dataset.transform.re_prob > 0 and cfg.model.backbone.drop_path_rate > 0
    ft = Config.fromfile(CONFIG_DIR / 'imagenet/sf_b_384_ft.py')
    assert ft.model.backbone.arch == 'b' and ft.train_cfg.max_epochs == 30
    assert ft.optim_wrapper.optimizer.lr == 5e-6 and ft.optim_wrapper.optimizer.weight_decay == 1e-8
    assert ft.train_dataloader.dataset.transform.input_size == 384
    assert ft.auto_scale_lr.base_batch_size == 512
