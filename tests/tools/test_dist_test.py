"""Distributed evaluation on two ranks: tools/dist_test.sh (torchrun, 2 gloo processes on the CPU,
tools/test.py --launcher pytorch) with a briefly trained tiny detector on a val set of odd size (the
first 3 of the fixture's 4 mini_val samples, ``max_samples=3``), so mmengine's DefaultSampler pads
rank 1 with a repeat of sample 0. The metrics (NDS, mAP, TP errors, per-class AP and TP errors) and
the results_nusc.json equal those of a 1-process run of tools/test.py and those of the checkpoint's
model run directly (no Runner) and scored by a NuScenesMetric of our own, and the file holds each
sample token of the split exactly once: the padded repeat is dropped, no sample is lost.

The metric evaluates the whole mini_val split (the devkit needs every split token), so the 4th
sample, which the dataset leaves out, is submitted empty in both runs."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.dataset import DefaultSampler
from nuscenes import NuScenes

from sf3d.evaluation.nuscenes_metric import split_sample_tokens
from tiny_detector import (assert_same_submission, checkpoint_state, predict, reference_metric, tiny_detector_config,
                           trained_checkpoint)
from tool_loader import load_tool

REPO = Path(__file__).resolve().parents[2]
NUM_SAMPLES = 3  # odd: 2 ranks get 2 samples each, one of them a padded repeat

tool = load_tool('test')


@pytest.fixture(scope='module')
def config_and_ckpt(nuscenes_root, tmp_path_factory):
    out = tmp_path_factory.mktemp('dist_test_cfg')
    cfg = tiny_detector_config({'test_dataloader.dataset.data_root': str(nuscenes_root),
                                'test_dataloader.dataset.max_samples': NUM_SAMPLES,
                                'test_evaluator.data_root': str(nuscenes_root), 'default_hooks.logger.interval': 1})
    cfg_path = out / 'tiny_odd.py'
    cfg.dump(str(cfg_path))
    return cfg, cfg_path, trained_checkpoint(cfg, out / 'trained.pth', nuscenes_root)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f'duplicate keys in the JSON: {sorted(k for k in keys if keys.count(k) > 1)}'
    return dict(pairs)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(), object_pairs_hook=_no_duplicate_keys)


def _summary_metrics(path: Path) -> dict:
    """NDS, mAP, the TP errors and, per class, the AP and TP errors from the devkit's metrics_summary.json."""
    s = json.loads(path.read_text())
    out = dict(NDS=s['nd_score'], mAP=s['mean_ap'], **s['tp_errors'])
    out.update({f'{c}_AP': ap for c, ap in s['mean_dist_aps'].items()})
    out.update({f'{c}_{k}': v for c, errs in s['label_tp_errors'].items() for k, v in errs.items()})
    return out


def test_default_sampler_pads_an_odd_set_on_two_ranks(monkeypatch):
    """The precondition of the run below: the test loader's sampler gives rank 1 sample 0 a second time."""
    import mmengine.dataset.sampler as sampler_module
    indices = []
    for rank in (0, 1):
        monkeypatch.setattr(sampler_module, 'get_dist_info', lambda rank=rank: (rank, 2))
        indices.append(list(DefaultSampler(list(range(NUM_SAMPLES)), shuffle=False)))
    assert indices == [[0, 2], [1, 0]]


def test_two_gloo_ranks_equal_one_process(config_and_ckpt, nuscenes_root, tmp_path):
    cfg, cfg_path, ckpt = config_and_ckpt
    # 2 ranks through the documented launcher; `python` there must be this interpreter
    env = dict(os.environ, PORT=str(_free_port()),
               PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get('PATH', '')]))
    env.pop('OMP_NUM_THREADS', None)  # torchrun then gives each rank 1 thread (2 ranks on 2 cores)
    proc = subprocess.run(['bash', str(REPO / 'tools/dist_test.sh'), str(cfg_path), str(ckpt), '2',
                           '--work-dir', str(tmp_path / 'work2'),
                           '--cfg-options', f'test_evaluator.jsonfile_prefix={tmp_path / "out2"}'],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert 'Distributed launcher: pytorch' in log and 'Distributed training: True' in log, log[-3000:]
    # the same checkpoint in one process
    single = tool.main([str(cfg_path), str(ckpt), '--work-dir', str(tmp_path / 'work1'),
                        '--cfg-options', f'test_evaluator.jsonfile_prefix={tmp_path / "out1"}'])

    # the Runner's reported metrics (rank 0's log) and the devkit's full summary agree
    (log_json, ) = (tmp_path / 'work2').glob('*/*.json')
    reported = json.loads(log_json.read_text().splitlines()[-1])
    expected, expected_results = reference_metric(cfg, predict(cfg, checkpoint_state(ckpt)), tmp_path / 'ref')
    assert len(expected) == 17 and expected['NuScenes/NDS'] > 0
    assert single == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert {k: reported[k] for k in single} == pytest.approx(single, rel=1e-6, abs=1e-9)
    one, two = _summary_metrics(tmp_path / 'out1/metrics_summary.json'), \
        _summary_metrics(tmp_path / 'out2/metrics_summary.json')
    assert len(one) == 2 + 5 + 10 + 50 and two.keys() == one.keys()
    assert two == pytest.approx(one, rel=1e-6, abs=1e-9, nan_ok=True)

    # each split token once; the 3 predicted samples carry their boxes, the left-out one is empty
    nusc = NuScenes(version='v1.0-mini', dataroot=str(nuscenes_root), verbose=False)
    split = split_sample_tokens(nusc, 'mini_val')
    assert len(split) == NUM_SAMPLES + 1
    results_one, results_two = _read_json(tmp_path / 'out1/results_nusc.json'), \
        _read_json(tmp_path / 'out2/results_nusc.json')
    assert list(results_two['results']) == split
    assert sorted(len(boxes) > 0 for boxes in results_two['results'].values()) == [False] + [True] * NUM_SAMPLES
    assert_same_submission(results_two, results_one)
    assert_same_submission(results_one, expected_results)
