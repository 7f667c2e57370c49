"""tools/analysis/query_coverage.py: nearest distances and fractions against numpy, the run entries
and their errors, the GT dataset it builds, and a run on a briefly trained tiny detector whose GT
count equals an independent count from the info file and whose initial references are the model's."""
import pickle

import numpy as np
import pytest
import torch
from tiny_detector import build_model, checkpoint_state, tiny_detector_config, trained_checkpoint
from tool_loader import load_tool

tool = load_tool('analysis/query_coverage')


def test_nearest_distances_and_fractions_match_numpy():
    rng = np.random.default_rng(0)
    gt, pts = rng.normal(size=(7, 2)) * 10, rng.normal(size=(30, 2)) * 10
    got = tool.nearest_distances(torch.as_tensor(gt), torch.as_tensor(pts)).numpy()
    expected = np.sqrt(((gt[:, None] - pts[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert np.isinf(tool.nearest_distances(torch.as_tensor(gt), torch.zeros(0, 2)).numpy()).all()
    d = torch.tensor([0.5, 1.0, 1.5, 3.9, 4.0, float('inf')])
    assert tool.fractions(d, (1.0, 2.0, 4.0)) == [1 / 6, 3 / 6, 4 / 6]  # strictly below each threshold
    assert all(np.isnan(tool.fractions(torch.zeros(0), (1.0, 2.0))))


def test_entries_and_their_errors(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'cfg.py').write_text('x = 1\n')
    ckpt = run / 'epoch_2.pth'
    ckpt.write_bytes(b'')
    (run / 'last_checkpoint').write_text('/elsewhere/run/epoch_2.pth')  # moved since training: found in the dir
    assert tool.parse_entry(f'tokens=a={run}') == ('tokens=a', str(run / 'cfg.py'), str(ckpt))
    assert tool.parse_entry(f'x={ckpt}') == ('x', str(run / 'cfg.py'), str(ckpt))
    with pytest.raises(ValueError, match='expected LABEL=RUN'):
        tool.parse_entry(str(run))
    with pytest.raises(FileNotFoundError, match='neither a work dir nor a checkpoint'):
        tool.parse_entry(f'x={tmp_path / "missing"}')
    (run / 'last_checkpoint').write_text(str(run / 'epoch_9.pth'))
    with pytest.raises(FileNotFoundError, match='epoch_9.pth, which does not exist'):
        tool.parse_entry(f'x={run}')
    (run / 'last_checkpoint').unlink()
    with pytest.raises(FileNotFoundError, match='no last_checkpoint'):
        tool.parse_entry(f'x={run}')
    (run / 'other.py').write_text('y = 2\n')
    with pytest.raises(ValueError, match=r"exactly one dumped config.*\['cfg.py', 'other.py'\]"):
        tool.parse_entry(f'x={ckpt}')


def test_dataset_keeps_the_test_pipeline_and_adds_the_gt():
    cfg = tiny_detector_config({})
    before = cfg.val_dataloader.dataset.pipeline
    ds = tool.coverage_dataset_cfg(cfg, 'val')
    types = [t['type'] for t in ds.pipeline]
    assert types == [t['type'] for t in before][:-1] + ['ObjectRangeFilter', 'ObjectNameFilter', 'Pack3DDetInputs']
    assert ds.pipeline[-1]['keys'] == ('img', 'gt_bboxes_3d', 'gt_labels_3d') and ds.test_mode is False
    assert cfg.val_dataloader.dataset.test_mode is True and cfg.val_dataloader.dataset.pipeline == before


def test_run_on_a_trained_tiny_detector(nuscenes_root, tmp_path, capsys):
    cfg = tiny_detector_config({'val_dataloader.dataset.data_root': str(nuscenes_root),
                                'train_dataloader.dataset.data_root': str(nuscenes_root)}, loaders=('val', ))
    run = tmp_path / 'run'
    run.mkdir()
    cfg.dump(str(run / 'tiny.py'))
    ckpt = trained_checkpoint(cfg, run / 'epoch_1.pth', nuscenes_root)
    (run / 'last_checkpoint').write_text(str(ckpt))
    text = tool.main([f'tiny={run}', '--top', '5', '--thresholds', '2', '8', '--out', str(tmp_path / 'c.md'),
                      '--no-progress'])
    assert capsys.readouterr().out == text == (tmp_path / 'c.md').read_text()
    # independent GT count: the val info file's boxes of a config class with the BEV centre inside the range
    with open(nuscenes_root / 'nuscenes_infos_val.pkl', 'rb') as f:
        infos = pickle.load(f)['data_list']
    x0, y0, _, x1, y1, _ = cfg.point_cloud_range
    count = sum(1 for info in infos for inst in info['instances']
                if 0 <= inst['bbox_label_3d'] < len(cfg.class_names)
                and x0 < inst['bbox_3d'][0] < x1 and y0 < inst['bbox_3d'][1] < y1)
    row = text.splitlines()[2].split('|')
    assert row[1].strip() == 'tiny' and int(row[2]) == count > 0
    cells = [[float(v) for v in c.strip(' %').split('/')] for c in row[3:6]]
    assert all(0 <= a <= b <= 100 for a, b in cells)  # monotone in the threshold
    # the initial references are the model's: the first sample's nearest-reference distances by hand
    d = tool.measure(str(run / 'tiny.py'), str(ckpt), progress=False)
    model = build_model(cfg, checkpoint_state(ckpt)).eval()
    from mmengine.registry import DefaultScope

    from sf3d.datasets.transforms.formatting import multiview_collate
    from sf3d.registry import DATASETS
    with DefaultScope.overwrite_default_scope('sf3d'):
        dataset = DATASETS.build(dict(tool.coverage_dataset_cfg(cfg, 'val'), serialize_data=False))
    with torch.no_grad():
        data = model.data_preprocessor(multiview_collate([dataset[0]]), False)
        refs = model(data['inputs'], data['data_samples'], mode='tensor')['ref_points'][0, :, :2].double().numpy()
    gt = data['data_samples']['gt_bboxes_3d'][0].tensor[:, :2].double().numpy()
    expected = np.sqrt(((gt[:, None] - refs[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(d['ref'][:len(gt)].numpy(), expected, rtol=1e-6)
    assert d['ref'].numel() == count
    # a checkpoint of another model is refused with the file and the keys named
    state = checkpoint_state(ckpt)
    state.pop(next(iter(state)))
    bad = tmp_path / 'bad.pth'
    torch.save({'state_dict': {f'module.{k}': v for k, v in state.items()}}, bad)
    with pytest.raises(KeyError, match='bad.pth does not match the model: missing keys'):
        tool.measure(str(run / 'tiny.py'), str(bad), progress=False)
