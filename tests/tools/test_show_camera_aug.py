"""tools/analysis/show_camera_aug.py on the synthetic nuScenes fixture: the config's CameraRigAug (or the
--aug override) is what gets applied and drawn, the PNG is written; clear errors for a pipeline without
the augmentation and a bad index or view."""
import numpy as np
import pytest

from tool_loader import load_tool

tool = load_tool('analysis/show_camera_aug')
RIG = 'configs/synthetic/nuscenes_tiny_rig.py'


def test_draws_the_configs_augmentation(nuscenes_root, tmp_path):
    out = tmp_path / 'aug.png'
    opts = {'train_dataloader.dataset.data_root': str(nuscenes_root)}
    result = tool.main([RIG, '--index', '1', '--views', '0', '2', '--seed', '3', '--out', str(out),
                        '--aug', 'rot_deg=3,4,3', '--cfg-options', *[f'{k}={v}' for k, v in opts.items()]])
    png = out.read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 20000
    record = result['after']['camera_aug']
    assert record['applied'] and ((0.9 <= record['zoom']) & (record['zoom'] <= 1.1)).all()  # the config's zoom
    assert (np.abs(record['rot_deg']) <= [3, 4, 3]).all() and np.abs(record['rot_deg'][:, 1]).max() > 2  # --aug
    assert not np.allclose(result['after']['cameras'].lidar2cam, result['before']['cameras'].lidar2cam)
    again = tool.main([RIG, '--index', '1', '--views', '0', '--seed', '3', '--out', str(tmp_path / 'b.png'),
                       '--aug', 'rot_deg=3,4,3', '--cfg-options', *[f'{k}={v}' for k, v in opts.items()]])
    np.testing.assert_array_equal(again['after']['camera_aug']['homography'], record['homography'])  # seeded


def test_clear_errors(nuscenes_root, tmp_path):
    opts = [f'train_dataloader.dataset.data_root={nuscenes_root}']
    with pytest.raises(ValueError, match='has no CameraRigAug step'):
        tool.main(['configs/synthetic/nuscenes_tiny.py', '--out', str(tmp_path / 'x.png'), '--cfg-options', *opts])
    with pytest.raises(IndexError, match='--index 999 is outside the'):
        tool.main([RIG, '--index', '999', '--out', str(tmp_path / 'x.png'), '--cfg-options', *opts])
    with pytest.raises(ValueError, match=r'--views \[7\]: the sample has 6 views'):
        tool.main([RIG, '--views', '7', '--out', str(tmp_path / 'x.png'), '--cfg-options', *opts])
    with pytest.raises(ValueError, match="--aug 'scale=2'"):
        tool.main([RIG, '--aug', 'scale=2', '--out', str(tmp_path / 'x.png')])
    assert not (tmp_path / 'x.png').exists()
