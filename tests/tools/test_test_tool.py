"""tools/test.py with a briefly trained tiny detector (tiny_detector.trained_checkpoint: another seed
than the Runner's, a few training steps), so a tool that ignored the checkpoint would fail.

--test-split test on a synthetic nuScenes v1.0-test set writes results_nusc.json into the work dir:
its keys are exactly the split's sample tokens (read from the devkit's tables), every sample has
boxes, the boxes are those of the checkpoint's model run directly (no Runner) and not those of the
Runner's own initialisation, its meta is a camera submission and the devkit's own loader reads it.
On v1.0-mini val the returned metrics and the written results equal the checkpoint model's, scored
independently, and differ from the Runner's initialisation's. Errors: a missing test info file, a
non-nuScenes evaluator."""
import json
import shutil

import pytest
import torch
from mmengine.config import Config
from nuscenes import NuScenes
from nuscenes.eval.common.loaders import load_prediction
from nuscenes.eval.detection.data_classes import DetectionBox
from nuscenes.utils import splits

from sf3d.datasets import synthetic_nuscenes
from sf3d.datasets.nuscenes_info import create_nuscenes_infos
from tiny_detector import (assert_same_submission, checkpoint_state, predict, reference_metric,
                           assert_scores_not_from, runner_initial_state, tiny_detector_config, trained_checkpoint)
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
def config_and_ckpt(test_root, nuscenes_root, tmp_path_factory):
    """A tiny detector config file on the v1.0-test set and a checkpoint of its model trained a few
    steps on the v1.0-mini fixture's train split."""
    out = tmp_path_factory.mktemp('test_tool_cfg')
    cfg = _tiny_cfg(test_root)
    cfg_path = out / 'tiny_test.py'
    cfg.dump(str(cfg_path))
    return cfg_path, trained_checkpoint(cfg, out / 'trained.pth', nuscenes_root)


@pytest.fixture(scope='module')
def initial_state(config_and_ckpt, tmp_path_factory):
    """The weights the Runner builds from the config before loading a checkpoint; not the checkpoint's."""
    state = runner_initial_state(Config.fromfile(config_and_ckpt[0]), tmp_path_factory.mktemp('runner_init'))
    ckpt = checkpoint_state(config_and_ckpt[1])
    assert state.keys() == ckpt.keys() and not all(torch.equal(state[k], ckpt[k]) for k in ckpt)
    return state


def _test_split_cfg(test_root) -> Config:
    cfg = _tiny_cfg(test_root)
    cfg.test_dataloader.dataset.update(ann_file='nuscenes_infos_test.pkl', test_mode=True)
    return cfg


def _test_split_reference(test_root, state, out_dir):
    """The submission that ``state``'s model, run directly on the v1.0-test samples, should give."""
    cfg = _test_split_cfg(test_root)
    metrics, submission = reference_metric(cfg, predict(cfg, state), out_dir, format_only=True, version='v1.0-test',
                                           eval_set='test', ann_file=str(test_root / 'nuscenes_infos_test.pkl'))
    assert metrics == {}
    return submission


def test_test_split_writes_a_valid_submission(config_and_ckpt, initial_state, test_root, test_tokens, tmp_path,
                                              capsys):
    cfg_path, ckpt = config_and_ckpt
    work = tmp_path / 'work'
    metrics = tool.main([str(cfg_path), str(ckpt), '--work-dir', str(work), '--test-split', 'test'])
    assert metrics == {}  # format_only: nothing is evaluated
    result = work / 'results_nusc.json'
    assert f'nuScenes submission written and validated: {result}' in capsys.readouterr().out
    submission = json.loads(result.read_text())
    assert set(submission['results']) == test_tokens
    # boxes for every sample of the split, and they are the checkpoint model's, not the Runner's initial model's
    assert all(len(boxes) > 0 for boxes in submission['results'].values())
    assert_same_submission(submission, _test_split_reference(test_root, checkpoint_state(ckpt), tmp_path / 'ref'))
    assert_scores_not_from(submission, predict(_test_split_cfg(test_root), initial_state))
    assert submission['meta'] == dict(use_camera=True, use_lidar=False, use_radar=False, use_map=False,
                                      use_external=False)
    loaded, meta = load_prediction(str(result), 500, DetectionBox, verbose=False)
    assert set(loaded.sample_tokens) == test_tokens and meta['use_camera'] is True
    assert all(isinstance(box, DetectionBox) for box in loaded.all)
    num_boxes = sum(len(v) for v in submission['results'].values())
    assert len(loaded.all) == num_boxes
    for token, boxes in submission['results'].items():
        assert all(b['sample_token'] == token and b['detection_score'] >= 0 for b in boxes)


def test_metrics_and_results_come_from_the_checkpoint(config_and_ckpt, initial_state, nuscenes_root, tmp_path):
    """v1.0-mini val: the tool's metrics (NDS, mAP, TP errors, per-class AP) and results_nusc.json equal
    those of the checkpoint's model run directly and scored by a NuScenesMetric of our own; the Runner's
    initial model scores differently."""
    cfg = _tiny_cfg(nuscenes_root)
    cfg_path = tmp_path / 'tiny_val.py'
    cfg.dump(str(cfg_path))
    ckpt = config_and_ckpt[1]
    metrics = tool.main([str(cfg_path), str(ckpt), '--work-dir', str(tmp_path / 'work'),
                         '--cfg-options', f'test_evaluator.jsonfile_prefix={tmp_path / "out"}'])
    expected, submission = reference_metric(cfg, predict(cfg, checkpoint_state(ckpt)), tmp_path / 'ref')
    assert len(expected) == 17 and expected['NuScenes/NDS'] > 0  # NDS, mAP, 5 TP errors, 10 class APs
    assert metrics == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert_same_submission(json.loads((tmp_path / 'out' / 'results_nusc.json').read_text()), submission)
    assert len(submission['results']) == 4 and all(len(b) > 0 for b in submission['results'].values())
    initial_predictions = predict(cfg, initial_state)
    assert_scores_not_from(submission, initial_predictions)
    initial, _ = reference_metric(cfg, initial_predictions, tmp_path / 'init')
    assert metrics['NuScenes/NDS'] != pytest.approx(initial['NuScenes/NDS'], rel=1e-3)
    assert metrics['NuScenes/mAP'] != pytest.approx(initial['NuScenes/mAP'], rel=1e-3)


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
