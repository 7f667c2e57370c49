"""tools/analysis/motion_probe.py: the per-variant velocity errors against exact motion maps and a
numpy reading, the refusal of a detector without motion, and a run on a tiny two-frame detector."""
import math

import numpy as np
import pytest
import torch
from tiny_detector import build_model, tiny_detector_config
from tool_loader import load_tool

from sf3d.models.layers.motion import motion_targets
from sf3d.structures import LiDARBoxes, MultiViewCameras

tool = load_tool('analysis/motion_probe')
H, W = 64, 96


def _camera(yaw, centre):
    k = np.array([[48.0, 0, W / 2], [0, 48.0, H / 2], [0, 0, 1.0]])
    fwd, right = np.array([math.cos(yaw), math.sin(yaw), 0.0]), np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    m = np.eye(4)
    m[:3, :3] = np.stack([right, [0, 0, -1.0], fwd])
    m[:3, 3] = -m[:3, :3] @ np.asarray(centre)
    return k, m


def _views(centre):
    views = [_camera(y, centre) for y in (0.0, math.radians(75))]
    return MultiViewCameras(np.stack([v[0] for v in views]), np.stack([v[1] for v in views]), image_size=(H, W))


CUR, PREV = (_views(c).to(torch.float32) for c in ((0.5, 0.0, 0.0), (-1.5, 0.2, 0.0)))
BOX = torch.tensor([[10.0, 1.0, -1.6, 4.0, 1.8, 1.5, 0.2, 3.0, -1.0]])
DT = 0.5


def test_exact_maps_read_the_gt_velocity_and_zero_maps_match_numpy():
    cover = torch.zeros(2, H // 8, W // 8, dtype=torch.long)
    flow, ratio, _ = motion_targets(LiDARBoxes(BOX).gravity_center, BOX[:, 7:9], cover, CUR, PREV, DT)
    errors, speed = tool.probe_sample(flow.movedim(-1, 1), ratio, BOX, CUR, PREV, DT, (H, W))
    assert set(errors) == set(tool.VARIANTS) and speed.numel() == 1  # the front view only sees the box
    for name in ('predicted', 'gt_ratio', 'gt_flow'):
        assert errors[name].item() < 1e-3, (name, errors[name])
    assert errors['zero'].item() == pytest.approx(math.hypot(3.0, -1.0), abs=1e-5) == speed.item()
    # zero maps: the centre's pixel and depth unprojected through the previous front camera (numpy)
    errors, _ = tool.probe_sample(torch.zeros(2, 2, 8, 12), torch.zeros(2, 8, 12), BOX, CUR, PREV,
                                  DT, (H, W))
    c = np.array([10.0, 1.0, -1.6 + 0.75])
    (k1, m1), (k0, m0) = _camera(0.0, (0.5, 0.0, 0.0)), _camera(0.0, (-1.5, 0.2, 0.0))
    cam = m1[:3, :3] @ c + m1[:3, 3]
    before = np.linalg.inv(m0) @ np.r_[cam, 1.0]  # same camera coordinates, previous camera
    expected = np.linalg.norm((c[:2] - before[:2]) / DT - [3.0, -1.0])
    assert errors['predicted'].item() == pytest.approx(expected, rel=1e-4)


def test_refuses_a_detector_without_motion(tmp_path):
    cfg = tiny_detector_config({})
    cfg.dump(str(tmp_path / 'tiny.py'))
    with pytest.raises(ValueError, match='without dense motion'):
        tool.measure(str(tmp_path / 'tiny.py'), str(tmp_path / 'missing.pth'), progress=False)


def test_run_on_a_tiny_two_frame_detector(nuscenes_root, tmp_path, capsys):
    cfg = tiny_detector_config({'val_dataloader.dataset.data_root': str(nuscenes_root),
                                'val_dataloader.dataset.num_frames': 2, 'model.num_frames': 2,
                                'model.motion': dict(radius=(1, 2), match_dims=4, hidden=8)}, loaders=('val', ))
    run = tmp_path / 'run'
    run.mkdir()
    cfg.dump(str(run / 'tiny.py'))
    torch.save({'state_dict': build_model(cfg, seed=3).state_dict()}, run / 'epoch_1.pth')
    (run / 'last_checkpoint').write_text(str(run / 'epoch_1.pth'))
    text = tool.main([f'tiny={run}', '--out', str(tmp_path / 'm.md'), '--no-progress'])
    assert capsys.readouterr().out == text == (tmp_path / 'm.md').read_text()
    rows = [r.split('|') for r in text.splitlines()[2:]]
    assert [r[2].strip() for r in rows] == list(tool.VARIANTS)
    pairs = {int(r[3]) for r in rows}
    assert len(pairs) == 1 and pairs.pop() > 0
    d = tool.measure(str(run / 'tiny.py'), str(run / 'epoch_1.pth'), progress=False)
    torch.testing.assert_close(d['zero'], d['speed'])
    assert all(torch.isfinite(d[k]).all() for k in tool.VARIANTS)
