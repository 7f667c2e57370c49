"""The ``tensorboard`` config switch (sf3d.engine.config): a real tools/train.py run logs to TensorBoard
exactly the scalars of mmengine's scalars.json, no event file is written without the switch, the
switch is idempotent through the dumped config, and a missing package gives a clear error."""
import importlib.util
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from sf3d.engine import load_run_config

REPO = Path(__file__).resolve().parents[2]
TINY_CFG = REPO / 'configs/synthetic/imagenet_tiny.py'


def _run(args):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f'{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'


@pytest.fixture(scope='module')
def config(tmp_path_factory) -> Path:
    """Tiny model on a 3-class, 24-image synthetic ImageNet: 2 epochs of 6 iterations, val each epoch."""
    root = tmp_path_factory.mktemp('tb')
    _run(['tools/make_synthetic_imagenet.py', '--out', str(root / 'data'), '--num-classes', '3',
          '--train-per-class', '8', '--val-per-class', '2', '--size', '32', '--no-progress'])
    data = dict(data_root=str(root / 'data'), transform=dict(input_size=32, is_training=False, crop_pct=1.0))
    path = root / 'tiny.py'
    path.write_text(f"""
_base_ = [{str(TINY_CFG)!r}]
model = dict(backbone=dict(arch=dict(dims=(16, 32, 32, 32), heads=(1, 2, 2, 2), depths=(1, 1, 1, 1)),
                           spatial_grid=(2, 2)), head=dict(num_classes=3))
train_dataloader = dict(batch_size=4, num_workers=0, dataset={data!r})
val_dataloader = dict(batch_size=6, num_workers=0, dataset={data!r})
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=100))
""")
    return path


def _scalars_json(work_dir: Path) -> dict:
    """tag -> [(step, value)] in logging order, from mmengine's LocalVisBackend file."""
    out = defaultdict(list)
    for record in map(json.loads, next(work_dir.glob('*/vis_data/scalars.json')).read_text().splitlines()):
        step = record.pop('step')
        for tag, value in record.items():
            out[tag].append((step, value))
    return dict(out)


def test_tensorboard_logs_the_scalars_of_scalars_json(config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    work = tmp_path / 'tb'
    _run(['tools/train.py', str(config), '--work-dir', str(work), '--cfg-options', 'tensorboard=True'])
    [event_file] = work.glob('*/vis_data/events.out.tfevents.*')
    events = EventAccumulator(str(event_file), size_guidance={'scalars': 0}).Reload()
    logged = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()['scalars']}
    expected = _scalars_json(work)
    assert len(expected['loss']) == 12 and len(expected['accuracy/top1']) == 2  # train iterations, val epochs
    assert logged.keys() == expected.keys()
    for tag, pairs in expected.items():
        assert [s for s, _ in logged[tag]] == [s for s, _ in pairs], tag
        assert [v for _, v in logged[tag]] == pytest.approx([v for _, v in pairs], rel=1e-6), tag  # float32


def test_no_event_file_without_the_switch(config, tmp_path):
    work = tmp_path / 'plain'
    _run(['tools/train.py', str(config), '--work-dir', str(work)])
    assert 'loss' in _scalars_json(work)
    assert not list(work.rglob('events.out.tfevents.*'))


def _backends(cfg) -> list:
    return [b['type'] for b in cfg.visualizer.vis_backends]


def test_switch_in_the_config_file_adds_the_backend_once(config, tmp_path):
    path = tmp_path / 'with_tb.py'
    path.write_text(f'_base_ = [{str(config)!r}]\ntensorboard = True\n')
    cfg = load_run_config(str(path))
    assert _backends(cfg) == ['LocalVisBackend', 'TensorboardVisBackend']
    cfg.dump(tmp_path / 'dumped.py')  # what the Runner leaves in the work dir; tools reload it
    assert _backends(load_run_config(str(tmp_path / 'dumped.py'))) == _backends(cfg)
    assert _backends(load_run_config(str(config))) == ['LocalVisBackend']
    assert _backends(load_run_config(str(path), cfg_options=dict(tensorboard=False))) == ['LocalVisBackend']


def test_missing_package_names_the_extra(config, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'tensorboard'
                        else find_spec(name, *a))
    with pytest.raises(ImportError, match=r'pip install sf3d\[tensorboard\]'):
        load_run_config(str(config), cfg_options=dict(tensorboard=True))
