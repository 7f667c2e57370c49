"""tools/train.py on the demo detector config (shrunk) and the synthetic nuScenes fixture: one
epoch trains, the devkit evaluates mini_val, the best checkpoint by NDS is saved, and
`--resume` continues from it to the next epoch."""
from tiny_detector import tiny_detector_config
from tool_loader import load_tool

train_tool = load_tool('train')


def write_config(data_root, out_dir, max_epochs):
    cfg = tiny_detector_config({
        'train_dataloader.dataset.data_root': str(data_root), 'val_dataloader.dataset.data_root': str(data_root),
        'val_evaluator.data_root': str(data_root),
        'train_cfg.max_epochs': max_epochs, 'train_cfg.val_interval': 1,
        'default_hooks.checkpoint.interval': 1, 'default_hooks.logger.interval': 4,
    }, loaders=('train', 'val'))
    path = out_dir / f'tiny_detector_{max_epochs}e.py'
    cfg.dump(str(path))
    return path


def test_train_evaluate_and_resume(nuscenes_root, tmp_path):
    work = tmp_path / 'work'
    runner = train_tool.main([str(write_config(nuscenes_root, tmp_path, 1)), '--work-dir', str(work)])
    metrics = runner.message_hub.get_scalar('val/NuScenes/NDS').current()
    assert 0.0 <= metrics <= 1.0
    assert list(work.glob('best_NuScenes_NDS_epoch_1.pth')) and (work / 'epoch_1.pth').exists()
    runner = train_tool.main([str(write_config(nuscenes_root, tmp_path, 2)), '--work-dir', str(work),
                              '--resume'])
    assert runner.epoch == 2 and (work / 'epoch_2.pth').exists()
