"""The mmengine shims of sf3d.engine, each against the failure it exists for."""
import random
import socket

import mmengine.device
import mmengine.runner.amp
import numpy as np
import pytest
import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import _load_checkpoint

import sf3d.engine  # noqa: F401  (registers the checkpoint loader)
from sf3d.engine import Bf16OptimWrapper, EpochSeedHook, cleanup_distributed, seed_worker, setup_cpu_distributed


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


def _pretend_cuda_is_present(monkeypatch):
    """What a GPU machine looks like to mmengine and torch, without a GPU: mmengine's autocast then
    defaults to device_type 'cuda' (its device is fixed at import, so patch the name amp uses)."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(mmengine.device, 'get_device', lambda: 'cuda')
    monkeypatch.setattr(mmengine.runner.amp, 'get_device', lambda: 'cuda')


@pytest.mark.parametrize('cuda_present', [False, True])
def test_bf16_wrapper_autocasts_a_cpu_model_and_steps(monkeypatch, cuda_present):
    if cuda_present:
        _pretend_cuda_is_present(monkeypatch)
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU (the CPU twin runs everywhere)')
def test_bf16_wrapper_autocasts_a_gpu_model():
    model = torch.nn.Linear(4, 2).cuda()
    wrapper = Bf16OptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with wrapper.optim_context(model):
        out = model(torch.randn(3, 4, device='cuda'))
    assert out.dtype == torch.bfloat16 and out.is_cuda


# ---------------------------------------------------------------- CPU distributed set-up
def _torchrun_env(monkeypatch, **extra):
    port = _free_port()
    env = dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    for key, value in {**env, **extra}.items():
        monkeypatch.setenv(key, value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_setup_cpu_distributed_starts_gloo_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)  # also on a GPU machine
    _torchrun_env(monkeypatch)
    cfg = Config(dict())
    assert not setup_cpu_distributed(cfg, 'none') and 'model_wrapper_cfg' not in cfg
    try:
        assert setup_cpu_distributed(cfg, 'pytorch')
        assert dist.is_initialized() and dist.get_backend() == 'gloo' and dist.get_world_size() == 1
        assert cfg.model_wrapper_cfg.device_ids is None
    finally:
        cleanup_distributed()
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match='needs CUDA'):
        setup_cpu_distributed(cfg, 'slurm')
    monkeypatch.delenv('MASTER_PORT')
    with pytest.raises(RuntimeError, match=r'\$MASTER_PORT'):
        setup_cpu_distributed(cfg, 'pytorch')


@pytest.mark.parametrize('local_rank', [0, 1])
def test_setup_cpu_distributed_leaves_a_cuda_machine_to_mmengine(monkeypatch, local_rank):
    _pretend_cuda_is_present(monkeypatch)  # one GPU
    _torchrun_env(monkeypatch, LOCAL_RANK=str(local_rank))
    cfg = Config(dict())
    if local_rank == 0:
        assert not setup_cpu_distributed(cfg, 'pytorch')
    else:  # a second process per node would die in torch.cuda.set_device(1) inside mmengine
        with pytest.raises(RuntimeError, match='LOCAL_RANK=1 but only 1 GPU.*CUDA_VISIBLE_DEVICES='):
            setup_cpu_distributed(cfg, 'pytorch')
    assert 'model_wrapper_cfg' not in cfg and not dist.is_initialized()


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
