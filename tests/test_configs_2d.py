"""The 2D-task configs (configs/coco, configs/ade20k, configs/synthetic/{coco,ade}_tiny*): the paper
recipes say what the issue fixes, and every tiny synthetic config runs one training step and one
evaluation end to end through its own dataset, pipeline, collate, preprocessor, model and metric
(on a few generated images), with predictions at the original image size."""
import math
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import DefaultSampler
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from torch.utils.data import DataLoader

from sf3d.datasets import synthetic_ade, synthetic_coco
from sf3d.registry import DATASETS, FUNCTIONS, METRICS, MODELS

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'configs'
TINY = ['synthetic/coco_tiny_mask_rcnn.py', 'synthetic/coco_tiny_detr.py', 'synthetic/coco_tiny_detr_learned.py',
        'synthetic/ade_tiny_upernet.py', 'synthetic/ade_tiny_maskformer.py', 'synthetic/ade_tiny_maskformer_learned.py']


@pytest.fixture(autouse=True)
def _sf3d_scope():
    with DefaultScope.overwrite_default_scope('sf3d'):
        yield


@pytest.fixture(scope='module')
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp('synthetic_2d')
    synthetic_coco.generate(str(base / 'coco'), num_train=6, num_val=3)
    synthetic_ade.generate(str(base / 'ade'), num_train=6, num_val=3)
    return dict(coco=str(base / 'coco') + '/', ade=str(base / 'ade' / 'ADEChallengeData2016'))


def test_coco_recipes():
    one = Config.fromfile(CONFIG_DIR / 'coco/mask_rcnn_sf_s_1x.py')
    three = Config.fromfile(CONFIG_DIR / 'coco/mask_rcnn_sf_b_3x.py')
    for cfg in (one, three):  # the paper's optimiser: AdamW, lr 1e-4 for a batch of 16, wd 0.05
        opt = cfg.optim_wrapper.optimizer
        assert (opt.type, opt.lr, opt.weight_decay, cfg.auto_scale_lr.base_batch_size) == ('AdamW', 1e-4, 0.05, 16)
        assert cfg.model.type == 'TVMaskRCNN' and cfg.model.num_classes == 80
        assert cfg.val_evaluator.metric == ['bbox', 'segm']
    assert one.train_cfg.max_epochs == 12 and one.param_scheduler[1].milestones == [8, 11]
    assert three.train_cfg.max_epochs == 36 and three.param_scheduler[1].milestones == [27, 33]
    assert one.train_dataloader.dataset.pipeline[2].scale == (1333, 800)
    resize = three.train_dataloader.dataset.pipeline[2]  # multi-scale training for 3x
    assert (resize.scale, resize.mode) == ([(1333, 480), (1333, 800)], 'range')
    assert three.model.backbone.arch == 'b' and three.model.backbone.init_cfg.checkpoint == 'checkpoints/sf_b_imagenet.pth'
    tokens = Config.fromfile(CONFIG_DIR / 'coco/detr_sf_s.py')
    learned = Config.fromfile(CONFIG_DIR / 'coco/detr_sf_s_learned.py')
    assert tokens.model.query_mode == 'spatial_tokens' and math.prod(tokens.model.backbone.spatial_grid) == 100
    assert (learned.model.query_mode, learned.model.num_queries) == ('learned', 100)
    assert {k: v for k, v in learned.model.items() if k not in ('query_mode', 'num_queries')} == \
        {k: v for k, v in tokens.model.items() if k != 'query_mode'}


def test_ade_recipes():
    uper = Config.fromfile(CONFIG_DIR / 'ade20k/upernet_sf_s_160k.py')
    mask = Config.fromfile(CONFIG_DIR / 'ade20k/maskformer_sf_s_160k.py')
    learned = Config.fromfile(CONFIG_DIR / 'ade20k/maskformer_sf_s_learned_160k.py')
    for cfg in (uper, mask):
        assert cfg.train_cfg.max_iters == 160000 and cfg.optim_wrapper.optimizer.type == 'AdamW'
        crop = next(t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomCropSeg')
        assert tuple(crop.crop_size) == (512, 512)
        assert cfg.default_hooks.checkpoint.save_best == 'seg/mIoU'
    assert uper.model.decode_head.type == 'UPerHead' and uper.model.auxiliary_head.loss_weight == 0.4
    head = mask.model.decode_head  # 8 x 8 tokens replicated to 256, the top 100 as queries, 9 layers
    assert math.prod(mask.model.backbone.spatial_grid) == 64
    assert (head.query_mode, head.num_candidates, head.num_queries, head.num_layers) == ('spatial_tokens', 256, 100, 9)
    assert learned.model.decode_head.query_mode == 'learned'
    assert {k: v for k, v in learned.model.decode_head.items() if k != 'query_mode'} == \
        {k: v for k, v in head.items() if k != 'query_mode'}


def _loader(cfg, split):
    loader_cfg = cfg[f'{split}_dataloader']
    dataset = DATASETS.build(loader_cfg.dataset)
    collate = FUNCTIONS.get(loader_cfg.collate_fn.type.split('.')[-1])
    kwargs = {k: v for k, v in loader_cfg.collate_fn.items() if k != 'type'}
    return DataLoader(dataset, batch_size=2, sampler=DefaultSampler(dataset, shuffle=False),
                      collate_fn=lambda batch: collate(batch, **kwargs))


@pytest.mark.parametrize('name', TINY)
def test_tiny_config_trains_and_evaluates(name, roots):
    torch.manual_seed(0)
    cfg = Config.fromfile(CONFIG_DIR / name)
    kind = 'coco' if 'coco' in name else 'ade'
    for split in ('train', 'val'):
        cfg[f'{split}_dataloader'].dataset.data_root = roots[kind]
    if kind == 'coco':
        cfg.val_evaluator.ann_file = roots[kind] + 'annotations/instances_val2017.json'
    model = MODELS.build(cfg.model)
    model.init_weights()
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    batch = next(iter(_loader(cfg, 'train')))
    losses = model.train_step(batch, optim)
    assert losses and all(torch.isfinite(v).all() for v in losses.values())
    loader = _loader(cfg, 'val')
    metric = METRICS.build(cfg.val_evaluator)
    metric.dataset_meta = loader.dataset.metainfo
    model.eval()
    for data in loader:
        outputs = model.val_step(data)
        for out, ori in zip(outputs, data['data_samples']['ori_shape']):
            if kind == 'ade':
                assert tuple(out['pred_sem_seg'].shape) == tuple(ori)
            elif 'masks' in out:
                assert tuple(out['masks'].shape[1:]) == tuple(ori)
        metric.process(data, outputs)
    results = metric.evaluate(len(loader.dataset))
    key = 'seg/mIoU' if kind == 'ade' else 'coco/bbox_mAP'
    assert key in results and -1 <= results[key] <= 100  # pycocotools' -1: no GT in a size range
