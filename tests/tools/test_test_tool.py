"""tools/test.py --format-only / --test-split test on a synthetic nuScenes v1.0-test set: a tiny
detector with random weights writes results_nusc.json into the work dir; its keys are exactly the
split's sample tokens (read from the devkit's tables), its meta is a camera submission and the
devkit's own loader reads it. Errors: a missing test info file, a non-nuScenes evaluator."""
import json
import shutil

import pytest
from mmengine.config import Config
from nuscenes import NuScenes
from nuscenes.eval.common.loaders import load_prediction
from nuscenes.eval.detection.data_classes import DetectionBox
from nuscenes.utils import splits

from sf3d.datasets import synthetic_nuscenes
from sf3d.datasets.nuscenes_info import create_nuscenes_infos
from tiny_detector import random_checkpoint, tiny_detector_config
from tool_loader import load_tool


tool = load_tool('test')


@pytest.fixture(scope='module')
def test_root(tmp_path_factory):
    """Synthetic v1.0-test (4 scenes x 2 samples, no annotations) with nuscenes_infos_test.pkl."""
    root = tmp_path_factory.mktemp('synthetic_nuscenes_test')
    synthetic_nuscenes.generate(str(root), samples_per_scene=2, version='v1.0-test', progress=False, workers=1)
    create_nuscenes_infos(str(root), 'v1.0-test', str(root), progress=False)
    return root


@pytest.fixture(scope='module')
def test_tokens(test_root):
    """The v1.0-test split's sample tokens, from the devkit's tables and its scene lists."""
    nusc = NuScenes(version='v1.0-test', dataroot=str(test_root), verbose=False)
    names = set(splits.create_splits_scenes()['test'])
    tokens = {s['token'] for s in nusc.sample if nusc.get('scene', s['scene_token'])['name'] in names}
    assert len(tokens) == len(nusc.sample) == 8
    return tokens


def _tiny_cfg(data_root) -> Config:
    """nuscenes_tiny.py (a v1.0-mini val config) shrunk further and pointed at ``data_root``."""
    return tiny_detector_config({'test_dataloader.dataset.data_root': str(data_root),
                                 'test_evaluator.data_root': str(data_root), 'default_hooks.logger.interval': 1})


@pytest.fixture(scope='module')
def config_and_ckpt(test_root, tmp_path_factory):
    """A tiny detector config file and a checkpoint of its randomly initialised model."""
    out = tmp_path_factory.mktemp('test_tool_cfg')
    cfg = _tiny_cfg(test_root)
    cfg_path = out / 'tiny_test.py'
    cfg.dump(str(cfg_path))
    return cfg_path, random_checkpoint(cfg, out / 'random.pth')


def test_test_split_writes_a_valid_submission(config_and_ckpt, test_tokens, tmp_path, capsys):
    cfg_path, ckpt = config_and_ckpt
    work = tmp_path / 'work'
    metrics = tool.main([str(cfg_path), str(ckpt), '--work-dir', str(work), '--test-split', 'test'])
    assert metrics == {}  # format_only: nothing is evaluated
    result = work / 'results_nusc.json'
    assert f'nuScenes submission written and validated: {result}' in capsys.readouterr().out
    submission = json.loads(result.read_text())
    assert set(submission['results']) == test_tokens
    assert submission['meta'] == dict(use_camera=True, use_lidar=False, use_radar=False, use_map=False,
                                      use_external=False)
    loaded, meta = load_prediction(str(result), 500, DetectionBox, verbose=False)
    assert set(loaded.sample_tokens) == test_tokens and meta['use_camera'] is True
    assert all(isinstance(box, DetectionBox) for box in loaded.all)
    num_boxes = sum(len(v) for v in submission['results'].values())
    assert len(loaded.all) == num_boxes
    for token, boxes in submission['results'].items():
        assert all(b['sample_token'] == token and b['detection_score'] >= 0 for b in boxes)


def test_test_split_rewrites_the_config(config_and_ckpt, test_root, tmp_path):
    cfg_path, ckpt = config_and_ckpt
    args = tool.parse_args([str(cfg_path), str(ckpt), '--work-dir', str(tmp_path / 'w'), '--test-split', 'test'])
    cfg = tool.build_config(args)
    info = str(test_root / 'nuscenes_infos_test.pkl')
    dataset, metric = cfg.test_dataloader.dataset, cfg.test_evaluator
    assert dataset.ann_file == 'nuscenes_infos_test.pkl' and dataset.test_mode is True
    assert (metric.ann_file, metric.version, metric.eval_set) == (info, 'v1.0-test', 'test')
    assert tool.set_format_only(cfg) == [str(tmp_path / 'w' / 'results_nusc.json')]
    assert metric.format_only is True and metric.jsonfile_prefix == str(tmp_path / 'w')
    # a prefix the config sets is kept
    cfg.test_evaluator.jsonfile_prefix = str(tmp_path / 'mine')
    assert tool.set_format_only(cfg) == [str(tmp_path / 'mine' / 'results_nusc.json')]


def test_info_file_name_follows_create_data():
    assert tool.info_file_for_test_split('nuscenes_infos_val.pkl') == 'nuscenes_infos_test.pkl'
    assert tool.info_file_for_test_split('infos/mytag_infos_train.pkl') == 'infos/mytag_infos_test.pkl'
    assert tool.info_file_for_test_split('/d/val.pkl') == '/d/nuscenes_infos_test.pkl'


def test_missing_test_info_file_is_a_clear_error(config_and_ckpt, test_root, tmp_path):
    root = tmp_path / 'no_infos'
    root.mkdir()
    shutil.copytree(test_root / 'v1.0-test', root / 'v1.0-test')
    cfg = _tiny_cfg(root)
    cfg_path = tmp_path / 'no_infos.py'
    cfg.dump(str(cfg_path))
    with pytest.raises(FileNotFoundError) as err:
        tool.main([str(cfg_path), str(config_and_ckpt[1]), '--work-dir', str(tmp_path / 'w'), '--test-split', 'test'])
    message = str(err.value)
    assert str(root / 'nuscenes_infos_test.pkl') in message
    assert f'python tools/create_data.py nuscenes --root-path {root} --version v1.0-test`' in message
    assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('option', [['--format-only'], ['--test-split', 'test']])
def test_non_nuscenes_evaluator_is_refused(config_and_ckpt, tmp_path, option):
    cfg_path, ckpt = config_and_ckpt
    cfg = Config.fromfile(cfg_path)
    cfg.test_evaluator = [cfg.test_evaluator, dict(type='Accuracy', topk=(1, ))]
    other = tmp_path / 'accuracy.py'
    cfg.dump(str(other))
    with pytest.raises(ValueError, match="type 'Accuracy' does not support format_only"):
        tool.main([str(other), str(ckpt), '--work-dir', str(tmp_path / 'w'), *option])
    assert not (tmp_path / 'w').exists()
