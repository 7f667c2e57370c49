"""The mmengine shims of sf3d.engine, each against the failure it exists for."""
import random

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import _load_checkpoint

import sf3d.engine  # noqa: F401  (registers the checkpoint loader)
from sf3d.engine import Bf16OptimWrapper, EpochSeedHook, seed_worker


def _mmengine_like_checkpoint(path):
    torch.save({'state_dict': {'w': torch.arange(3.0)},
                'message_hub': {'log_scalars': {'loss': HistoryBuffer([1.0, 0.5], [1, 1])}}}, path)


def test_stock_torch_load_rejects_mmengine_checkpoints(tmp_path):
    # The reason for the shim: torch >= 2.6 loads weights only by default.
    path = tmp_path / 'ckpt.pth'
    _mmengine_like_checkpoint(path)
    with pytest.raises(Exception, match='weights_only'):
        torch.load(path)


def test_checkpoint_loader_reads_mmengine_checkpoints(tmp_path):
    path = tmp_path / 'ckpt.pth'
    _mmengine_like_checkpoint(path)
    ckpt = _load_checkpoint(str(path), map_location='cpu')
    assert torch.equal(ckpt['state_dict']['w'], torch.arange(3.0))
    assert isinstance(ckpt['message_hub']['log_scalars']['loss'], HistoryBuffer)


def test_checkpoint_loader_names_missing_file(tmp_path):
    missing = tmp_path / 'nope.pth'
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        _load_checkpoint(str(missing))


def test_bf16_wrapper_autocasts_on_cpu_and_steps():
    model = torch.nn.Linear(4, 2)
    wrapper = Bf16OptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    before = model.weight.detach().clone()
    with wrapper.optim_context(model):
        out = model(torch.randn(3, 4))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().pow(2).mean())
    assert model.weight.dtype == torch.float32  # master weights stay fp32
    assert not torch.equal(model.weight, before)
    assert model(torch.randn(3, 4)).dtype == torch.float32  # autocast ends with the context


class _FakeRunner:
    def __init__(self, seed, epoch):
        self.seed, self.epoch = seed, epoch


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_epoch_seed_hook_is_a_function_of_seed_and_epoch():
    hook = EpochSeedHook()
    hook.before_train_epoch(_FakeRunner(0, 3))
    a = _draws()
    _draws()  # consume: the next reseed must not depend on history
    hook.before_train_epoch(_FakeRunner(0, 3))
    assert _draws() == a
    hook.before_train_epoch(_FakeRunner(0, 4))
    b = _draws()
    hook.before_train_epoch(_FakeRunner(1, 3))
    c = _draws()
    assert len({a, b, c}) == 3 and all(len(set(x)) == 3 for x in (a, b, c))


class _NumpyRandom(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return np.random.randint(1 << 30), random.randint(0, 1 << 30)


def _epoch(loader, torch_seed):
    torch.manual_seed(torch_seed)  # what EpochSeedHook does before each epoch
    return [tuple(int(v) for v in pair) for batch in loader for pair in zip(*batch)]


def test_seed_worker_gives_each_epoch_its_own_stream():
    loader = torch.utils.data.DataLoader(_NumpyRandom(), batch_size=2, num_workers=2,
                                         worker_init_fn=seed_worker)
    first, again, other = _epoch(loader, 1), _epoch(loader, 1), _epoch(loader, 2)
    assert first == again  # deterministic given the main-process seed
    assert first != other  # a new epoch (new seed) draws new augmentation
    assert len(set(first)) == 4  # workers do not repeat each other
