"""The demo detector config (configs/synthetic/nuscenes_tiny.py) shrunk to a tiny model for tool
tests, and a checkpoint of its randomly initialised model. Imported by the tests in this folder
(pytest puts tests/tools/ on sys.path)."""
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from sf3d.registry import MODELS

REPO = Path(__file__).resolve().parents[2]
FINAL_SIZE = (64, 128)  # (H, W) of the 400x225 synthetic images after resize + crop
TINY_MODEL = {
    'model.backbone.arch': dict(dims=(16, 16, 32, 32), heads=(1, 1, 2, 2), depths=(1, 1, 1, 1)),
    'model.backbone.spatial_grid': (2, 3),
    'model.embed_dims': 32,
    'model.head.num_layers': 1, 'model.head.num_heads': 2, 'model.head.ffn_dims': 32,
}


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


def random_checkpoint(cfg: Config, path: Path, seed: int = 0) -> Path:
    """Save the state dict of ``cfg.model`` freshly built with ``seed`` as an mmengine-style checkpoint."""
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope('sf3d'):
        model = MODELS.build(cfg.model)
    torch.save({'meta': {}, 'state_dict': model.state_dict()}, path)
    return path
