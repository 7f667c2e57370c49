"""tools/train.py on the demo detector config (shrunk) and the synthetic nuScenes fixture: one
epoch trains, the devkit evaluates mini_val, the best checkpoint by NDS is saved, and
`--resume` continues from it to the next epoch."""
from pathlib import Path

from mmengine.config import Config

from tool_loader import load_tool

REPO = Path(__file__).resolve().parents[2]
FINAL_SIZE = (64, 128)  # (H, W)

train_tool = load_tool('train')


def tiny_detector_config(data_root, out_dir, max_epochs):
    cfg = Config.fromfile(REPO / 'configs/synthetic/nuscenes_tiny.py')
    for pipeline in (cfg.train_dataloader.dataset.pipeline, cfg.val_dataloader.dataset.pipeline):
        for t in pipeline:
            if t['type'] == 'ResizeCropFlipMultiView':
                t['final_size'] = FINAL_SIZE
    cfg.merge_from_dict({
        'model.backbone.arch': dict(dims=(16, 16, 32, 32), heads=(1, 1, 2, 2), depths=(1, 1, 1, 1)),
        'model.backbone.spatial_grid': (2, 3),
        'model.embed_dims': 32,
        'model.head.num_layers': 1, 'model.head.num_heads': 2, 'model.head.ffn_dims': 32,
        'train_dataloader.num_workers': 0, 'val_dataloader.num_workers': 0,
        'val_dataloader.persistent_workers': False,
        'train_dataloader.dataset.data_root': str(data_root), 'val_dataloader.dataset.data_root': str(data_root),
        'val_evaluator.data_root': str(data_root),
        'train_cfg.max_epochs': max_epochs, 'train_cfg.val_interval': 1,
        'default_hooks.checkpoint.interval': 1, 'default_hooks.logger.interval': 4,
    })
    path = out_dir / f'tiny_detector_{max_epochs}e.py'
    cfg.dump(str(path))
    return path


def test_train_evaluate_and_resume(nuscenes_root, tmp_path):
    work = tmp_path / 'work'
    runner = train_tool.main([str(tiny_detector_config(nuscenes_root, tmp_path, 1)), '--work-dir', str(work)])
    metrics = runner.message_hub.get_scalar('val/NuScenes/NDS').current()
    assert 0.0 <= metrics <= 1.0
    assert list(work.glob('best_NuScenes_NDS_epoch_1.pth')) and (work / 'epoch_1.pth').exists()
    runner = train_tool.main([str(tiny_detector_config(nuscenes_root, tmp_path, 2)), '--work-dir', str(work),
                              '--resume'])
    assert runner.epoch == 2 and (work / 'epoch_2.pth').exists()
