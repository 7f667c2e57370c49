"""Every config under configs/ loads, names registered types, and builds its model and
optimizer; every detector config's head samples the FPN strides DETR3D's rule gives (measured by a
tiny forward); the recipe numbers the issue fixes are what the ImageNet configs say."""
from pathlib import Path

import pytest
import torch
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
    if cfg.model.type in ('MultiViewDetector', 'DensePretrainer'):
        _check_sampled_strides(path, model)
    training_only = cfg.model.type == 'DensePretrainer'  # predicts no boxes: nothing to validate
    assert (cfg.val_dataloader is None) == training_only and (cfg.val_evaluator is None) == training_only
    for split in ('train', 'val', 'test'):
        if cfg[f'{split}_dataloader'] is None:
            continue
        assert DATASETS.get(cfg[f'{split}_dataloader'].dataset.type) is not None
        for step in cfg[f'{split}_dataloader'].dataset.get('pipeline', []):
            assert TRANSFORMS.get(step.type) is not None, step.type
    if not training_only:
        assert METRICS.get(cfg.val_evaluator.type) is not None


# Strides of the FPN levels the DETR3D head samples. DETR3D's rule: the FPN reads C3-C5 (strides 8, 16,
# 32; its ResNet returns C2-C5 and the FPN starts at level 1) and adds stride-2 levels up to num_outs.
# nuScenes configs: num_outs 4 -> 8, 16, 32, 64 (DETR3D's). Synthetic configs: num_outs 3, no extra level
# -> 8, 16, 32. The pixel supervision reads the first level: stride 8.
SAMPLED_STRIDES = {'nuscenes': [8, 16, 32, 64], 'synthetic': [8, 16, 32]}


def _check_sampled_strides(path: Path, model) -> None:
    """The strides the head samples, measured: a (1, 3, 64, 128) image through the backbone and FPN
    (a tiny forward); they must equal the declared ``feat_strides`` and the rule above."""
    expected = SAMPLED_STRIDES[path.relative_to(CONFIG_DIR).parts[0]]
    x = torch.zeros(1, 3, 64, 128)
    with torch.no_grad():
        feats = model.neck(model.eval().backbone(x)['features'])
    measured = [(64 // f.shape[-2], 128 // f.shape[-1]) for f in feats]
    assert measured == [(s, s) for s in expected], measured
    assert model.feat_strides == expected and model.head.decoder.layers[0].cross_attn.num_levels == len(expected)
    if model.pixel_loss is not None:
        assert model.feat_strides[0] == 8  # the pixel supervision's level


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


def test_nuscenes_recipe():
    """DETR3D's recipe (DESIGN.md) in the nuScenes configs, and what each variant changes."""
    cfg = Config.fromfile(CONFIG_DIR / 'nuscenes/sf_s.py')
    opt = cfg.optim_wrapper
    assert (opt.optimizer.type, opt.optimizer.lr, opt.optimizer.weight_decay) == ('AdamW', 2e-4, 0.01)
    assert opt.paramwise_cfg.custom_keys == {'backbone': dict(lr_mult=0.1)} and opt.clip_grad.max_norm == 35
    warmup, cosine = cfg.param_scheduler
    assert (warmup.type, warmup.by_epoch, warmup.end) == ('LinearLR', False, 500)
    assert (cosine.type, cosine.end) == ('CosineAnnealingLR', 24)
    assert cfg.train_cfg.max_epochs == 24 and cfg.train_cfg.val_interval == 2
    assert cfg.default_hooks.checkpoint.save_best == 'NuScenes/NDS'
    prep = cfg.model.data_preprocessor
    assert prep.photometric == {} and prep.grid_mask == dict(ratio=0.5, prob=0.7)
    assert cfg.model.backbone.spatial_grid == (10, 15) and cfg.model.query_mode == 'spatial_tokens'
    assert cfg.model.backbone.init_cfg.type == 'Pretrained'
    head = cfg.model.head
    assert (head.num_layers, cfg.model.embed_dims, head.max_num) == (6, 256, 300)
    assert head.direction == dict(offset=0.7854, loss_weight=0.25) and head.moving == dict(speed=0.2, loss_weight=0.25)
    assert cfg.val_evaluator.type == 'NuScenesMetric' and len(cfg.class_names) == 10
    steps = [t.type for t in cfg.train_pipeline]
    assert 'PadMultiViewImage' in steps and 'ResizeCropFlipMultiView' not in steps  # 1600x900 padded to 928
    half = Config.fromfile(CONFIG_DIR / 'nuscenes/sf_s_half.py')
    assert [t.get('final_size') for t in half.train_pipeline if t.type == 'ResizeCropFlipMultiView'] == [(448, 800)]
    for name, depth in (('detr3d_r50', 50), ('detr3d_r101', 101)):
        base = Config.fromfile(CONFIG_DIR / f'nuscenes/{name}.py')
        assert (base.model.backbone.type, base.model.backbone.depth) == ('ResNet', depth)
        assert (base.model.query_mode, base.model.num_queries, base.model.conditioning) == ('learned', 900, 'none')
        assert base.optim_wrapper == opt and base.param_scheduler == cfg.param_scheduler
        assert base.model.head.get('direction') is None and base.model.head.get('moving') is None  # DETR3D's codes


def test_spatialformer_pretrained_path_missing_is_a_clear_error(tmp_path):
    cfg = Config.fromfile(CONFIG_DIR / 'nuscenes/sf_t.py')
    cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / 'missing.pth')
    model = MODELS.build(cfg.model)
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        model.init_weights()


def test_resnet_pretrained_path_missing_is_a_clear_error():
    cfg = Config.fromfile(CONFIG_DIR / 'nuscenes/detr3d_r50.py')
    with pytest.raises(FileNotFoundError, match='resnet50_tv.pth'):
        MODELS.build(cfg.model)
