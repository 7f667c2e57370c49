"""No torn checkpoints (sf3d/engine/checkpoint.py): a save that dies midway leaves the previous file
intact, and resuming skips truncated or corrupt checkpoints (or a torn ``last_checkpoint``) by name
(auto) or stops naming the file (explicit path)."""
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.fileio.backends import local_backend, registry_utils
from mmengine.runner.checkpoint import save_checkpoint
from run_records import assert_same_weights, weights
from tiny_imagenet import run_python, write_config
from tool_loader import load_tool

import sf3d.engine.checkpoint as sf3d_checkpoint
from sf3d.engine import CorruptCheckpointError, find_resumable_checkpoint, verify_checkpoint
from sf3d.engine.checkpoint import AtomicLocalBackend

train_tool = load_tool('train')


class Killed(BaseException):
    """Stands for the process dying (not an Exception: nothing may swallow it)."""


class _DiesMidWrite:
    """A file whose first ``write`` writes half of the data, flushes it and 'dies'."""

    def __init__(self, f):
        self._f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()

    def write(self, data) -> None:
        self._f.write(data[:len(data) // 2])
        self._f.flush()
        raise Killed


def _save(path: Path, value: float) -> None:
    save_checkpoint({'state_dict': {'w': torch.full((20000, ), value)}}, str(path))


@pytest.mark.parametrize('atomic', [True, False], ids=['sf3d', 'mmengine_stock'])
def test_save_dying_midway_keeps_previous_checkpoint(tmp_path, monkeypatch, atomic):
    """mmengine's save path (save_checkpoint -> file backend put) with the write dying after half the
    bytes: sf3d's backend leaves the old checkpoint and no other file; the stock one (the control)
    leaves a torn checkpoint under the final name."""
    path = tmp_path / 'epoch_1.pth'
    _save(path, 1.0)
    if atomic:
        assert type(get_file_backend(str(path))) is AtomicLocalBackend
        module = sf3d_checkpoint
    else:
        monkeypatch.setitem(registry_utils.prefix_to_backends, '', LocalBackend)
        module = local_backend
    monkeypatch.setattr(module, 'open', lambda *a, **k: _DiesMidWrite(open(*a, **k)), raising=False)
    with pytest.raises(Killed):
        _save(path, 2.0)
    if atomic:
        assert os.listdir(tmp_path) == ['epoch_1.pth']
        assert torch.equal(weights(path)['w'], torch.full((20000, ), 1.0))
    else:
        with pytest.raises(CorruptCheckpointError, match=re.escape(str(path))):
            verify_checkpoint(str(path))


def test_save_killed_midway_in_a_subprocess(tmp_path):
    """A real SIGKILL after half the bytes: no clean-up runs, yet the final name still holds the old
    checkpoint; the hidden temporary file left over is not taken for a checkpoint."""
    path = tmp_path / 'epoch_1.pth'
    _save(path, 1.0)
    run_python(['-c', f"""
import os, signal, torch
import sf3d.engine.checkpoint as ck
from mmengine.runner.checkpoint import save_checkpoint
class DiesMidWrite:
    def __init__(self, f): self.f = f
    def __enter__(self): return self
    def __exit__(self, *exc): self.f.close()
    def write(self, data):
        self.f.write(data[:len(data) // 2]); self.f.flush(); os.kill(os.getpid(), signal.SIGKILL)
ck.open = lambda *a, **k: DiesMidWrite(open(*a, **k))
save_checkpoint({{'state_dict': {{'w': torch.full((20000, ), 2.0)}}}}, {str(path)!r})
"""], expect=-9)
    leftover = sorted(set(os.listdir(tmp_path)) - {'epoch_1.pth'})
    assert len(leftover) == 1 and leftover[0].startswith('.epoch_1.pth.') and leftover[0].endswith('.tmp')
    assert torch.equal(weights(path)['w'], torch.full((20000, ), 1.0))
    assert find_resumable_checkpoint(str(tmp_path)) == str(path)


@pytest.fixture
def log(monkeypatch):
    """The messages sf3d.engine.checkpoint logs."""
    messages = []
    monkeypatch.setattr(sf3d_checkpoint, 'print_log', lambda msg, **kwargs: messages.append(msg))
    return messages


def _work_dir(tmp_path: Path) -> Path:
    """epoch_1, epoch_2, iter_30 (saved in that order), last_checkpoint -> epoch_2."""
    work = tmp_path / 'work'
    for i, name in enumerate(['epoch_1.pth', 'epoch_2.pth', 'iter_30.pth']):
        _save(work / name, float(i))
        os.utime(work / name, (1e9 + i, 1e9 + i))
    (work / 'last_checkpoint').write_text(str(work / 'epoch_2.pth'))
    return work


def test_auto_resume_order_and_fallback(tmp_path, log):
    work = _work_dir(tmp_path)
    assert find_resumable_checkpoint(str(work)) == str(work / 'epoch_2.pth') and not log  # last_checkpoint first
    truncated = (work / 'epoch_2.pth').read_bytes()
    (work / 'epoch_2.pth').write_bytes(truncated[:len(truncated) // 2])
    assert find_resumable_checkpoint(str(work)) == str(work / 'iter_30.pth')  # then the newest
    assert str(work / 'epoch_2.pth') in log[0] and 'falling back' in log[1]

    # torch.load reads a checkpoint whose tensor bytes are damaged without complaint; the zip's CRC catches it
    data = bytearray((work / 'iter_30.pth').read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    (work / 'iter_30.pth').write_bytes(bytes(data))
    torch.load(work / 'iter_30.pth', weights_only=False)
    with pytest.raises(CorruptCheckpointError, match='CRC'):
        verify_checkpoint(str(work / 'iter_30.pth'))
    assert find_resumable_checkpoint(str(work)) == str(work / 'epoch_1.pth')

    # CheckpointHook rewrites last_checkpoint in place: a torn one names no file, and the newest intact one is used
    for torn in ('', str(work / 'epoch_')):
        (work / 'last_checkpoint').write_text(torn)
        assert find_resumable_checkpoint(str(work)) == str(work / 'epoch_1.pth')

    (work / 'epoch_1.pth').write_bytes(b'not a checkpoint')
    (work / 'last_checkpoint').write_text(str(tmp_path / 'moved/epoch_2.pth'))
    with pytest.raises(RuntimeError, match='no readable checkpoint') as error:
        find_resumable_checkpoint(str(work))
    tried = str(error.value)
    assert all(str(p) in tried for p in [tmp_path / 'moved/epoch_2.pth', *(work / n for n in
                                         ['epoch_1.pth', 'epoch_2.pth', 'iter_30.pth'])])
    shutil.rmtree(work)
    work.mkdir()
    assert find_resumable_checkpoint(str(work)) is None


def test_train_resumes_from_previous_good_checkpoint(tmp_path):
    """tools/train.py --resume with a torn epoch_2.pth resumes from epoch_1.pth, naming the torn
    file, and retrains epoch 2 to the same weights; an explicit torn path stops, naming it."""
    data_root = tmp_path / 'data'
    assert load_tool('make_synthetic_imagenet').main([
        '--out', str(data_root), '--num-classes', '3', '--train-per-class', '4', '--val-per-class', '2',
        '--size', '32', '--no-progress']) == 0
    cfg, work = write_config(tmp_path / 'run.py', data_root, num_workers=0), tmp_path / 'work'
    train_tool.main([str(cfg), '--work-dir', str(work)])
    shutil.copy(work / 'epoch_2.pth', tmp_path / 'reference.pth')
    data = (work / 'epoch_2.pth').read_bytes()
    (work / 'epoch_2.pth').write_bytes(data[:len(data) // 3])

    with pytest.raises(CorruptCheckpointError, match=re.escape(str(work / 'epoch_2.pth'))):
        train_tool.main([str(cfg), '--work-dir', str(tmp_path / 'explicit'), '--resume', str(work / 'epoch_2.pth')])

    out = run_python(['tools/train.py', str(cfg), '--work-dir', str(work), '--resume'])
    assert f'skipping {work / "epoch_2.pth"}' in out and f'falling back to {work / "epoch_1.pth"}' in out
    assert 'resumed epoch: 1' in out
    assert_same_weights(tmp_path / 'reference.pth', work / 'epoch_2.pth')
