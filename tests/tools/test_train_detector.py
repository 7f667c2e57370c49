"""tools/train.py on the demo detector config (shrunk) and the synthetic nuScenes fixture: one
epoch trains, the devkit evaluates mini_val and the best checkpoint by NDS is saved; `--resume`
continues at the epoch boundary, a SIGTERM preempts the next epoch mid-way (tests/signal_hook.py)
and `--resume` finishes it. The chain ends with the weights and logged losses of an uninterrupted
two-epoch run, bit for bit, with random crops/flips and the data preprocessor's photometric
distortion and GridMask on."""

import pytest
import torch
from run_records import assert_same_weights, logged, weights
from tiny_detector import tiny_detector_config
from tool_loader import load_tool

from sf3d.engine import TrainingPreempted

train_tool = load_tool('train')


def write_config(data_root, path, max_epochs, signal_at=0):
    """8 iterations an epoch (16 mini_train samples, batch 2); ``signal_at``: the iteration during
    which the run sends itself SIGTERM."""
    cfg = tiny_detector_config({
        'train_dataloader.dataset.data_root': str(data_root), 'val_dataloader.dataset.data_root': str(data_root),
        'val_evaluator.data_root': str(data_root),
        'train_cfg.max_epochs': max_epochs, 'train_cfg.val_interval': 1,
        'default_hooks.checkpoint.interval': 1, 'default_hooks.checkpoint.max_keep_ckpts': -1,
        'default_hooks.logger.interval': 1,
    }, loaders=('train', 'val'))
    cfg.model.data_preprocessor.update(photometric=dict(), grid_mask=dict(prob=0.7))
    for t in cfg.train_dataloader.dataset.pipeline:
        if t['type'] == 'ResizeCropFlipMultiView':
            t.update(is_train=True, resize_lim=(0.95, 1.1), rand_flip=True)
    if signal_at:
        cfg.custom_imports = dict(imports=['signal_hook'])
        cfg.custom_hooks = [*cfg.custom_hooks, dict(type='SendSignalHook', at_iter=signal_at)]
    cfg.dump(str(path))
    return path


def test_train_evaluate_resume_and_preemption(nuscenes_root, tmp_path):
    # Each run has its own config name: mmengine names a run's log folder and visualizer after the
    # config and the second it starts.
    full, work = tmp_path / 'full', tmp_path / 'work'
    runner = train_tool.main([str(write_config(nuscenes_root, tmp_path / 'full.py', 2)), '--work-dir', str(full)])
    preprocessor = runner.model.data_preprocessor
    assert preprocessor.photometric is not None and preprocessor.grid_mask is not None

    runner = train_tool.main([str(write_config(nuscenes_root, tmp_path / 'one_epoch.py', 1)), '--work-dir', str(work)])
    assert 0.0 <= runner.message_hub.get_scalar('val/NuScenes/NDS').current() <= 1.0
    assert list(work.glob('best_NuScenes_NDS_epoch_1.pth')) and (work / 'epoch_1.pth').exists()

    with pytest.raises(TrainingPreempted, match='iter_11.pth'):  # batch 3 of epoch 2
        train_tool.main([str(write_config(nuscenes_root, tmp_path / 'signalled.py', 2, signal_at=11)),
                         '--work-dir', str(work), '--resume'])
    assert not (work / 'epoch_2.pth').exists()
    runner = train_tool.main([str(write_config(nuscenes_root, tmp_path / 'resumed.py', 2)), '--work-dir', str(work),
                              '--resume'])
    assert runner.epoch == 2

    assert_same_weights(full / 'epoch_2.pth', work / 'epoch_2.pth')
    assert logged(work) == logged(full) and len(logged(full)) == 16
    # the comparison can fail: training moved the weights after the preemption checkpoint
    preempted, a = weights(work / 'iter_11.pth'), weights(full / 'epoch_2.pth')
    assert any(not torch.equal(preempted[k], a[k]) for k in a)
