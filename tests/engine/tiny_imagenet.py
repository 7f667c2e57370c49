"""A tiny synthetic-ImageNet training config and running tools in a subprocess, for the preemption and
checkpoint-safety tests (checkpoints and logged scalars are compared with tests/run_records.py).
Imported by the tests in this folder (pytest puts tests/engine/ on sys.path)."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TINY_CFG = REPO / 'configs/synthetic/imagenet_tiny.py'


def run_python(args, expect: int = 0, timeout: int = 120) -> str:
    """Run ``python args`` from the repository root (tests/ on PYTHONPATH, for signal_hook) in its own
    process group, killed whole on timeout; check the exit status and return stdout + stderr. The child
    computes with this process's torch thread count (OMP_NUM_THREADS): its weights are compared bit for
    bit with runs made in this process, and a reduction split over another number of threads rounds
    differently (under `make test`, xdist workers run one thread)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / 'tests'), os.environ.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS=str(torch.get_num_threads()))
    with subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, start_new_session=True) as proc:
        try:
            out = proc.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers too
            raise
    assert proc.returncode == expect, f'{args} exited {proc.returncode}, not {expect}:\n{out[-5000:]}'
    return out


def write_config(path: Path, data_root: Path, *, num_workers: int, iter_based: bool = False,
                 signal_at: int = 0, signum: str = 'SIGTERM', signal_rank: int = 0, signal_group: bool = False,
                 batch_size: int = 4) -> Path:
    """24 images at batch 4: 6 iterations an epoch, 2 epochs (or 12 iterations of an iteration-based
    loop with an InfiniteSampler), with random crops, RandAugment, MixUp/CutMix and drop path.
    ``signal_at``: the iteration during which rank ``signal_rank`` sends ``signum`` to itself (to its
    process group with ``signal_group``: see tests/signal_hook.py)."""
    if iter_based:
        sampler = "sampler=dict(type='InfiniteSampler', shuffle=True), "
        schedule = """
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=12, val_interval=6)
param_scheduler = [dict(type='CosineAnnealingLR', T_max=12, eta_min=1e-5, by_epoch=False, begin=0, end=12)]
log_processor = dict(by_epoch=False)
"""
    else:
        sampler = ''
        schedule = """
train_cfg = dict(max_epochs=2)
param_scheduler = [dict(type='CosineAnnealingLR', T_max=2, eta_min=1e-5, by_epoch=True, begin=0, end=2,
                        convert_to_iter_based=True)]
"""
    signalling = (f"custom_imports = dict(imports=['signal_hook'])\n"
                  f"custom_hooks = [dict(type='EpochSeedHook'), dict(type='SendSignalHook', at_iter={signal_at}, "
                  f"signum={signum!r}, rank={signal_rank}, process_group={signal_group})]\n") if signal_at else ''
    transform = dict(input_size=32, scale=(0.5, 1.0), auto_augment='rand-m9-mstd0.5-inc1')
    path.write_text(f"""
_base_ = [{str(TINY_CFG)!r}]
model = dict(
    backbone=dict(arch=dict(dims=(16, 32, 32, 32), heads=(1, 2, 2, 2), depths=(1, 1, 1, 1)),
                  spatial_grid=(2, 2), drop_path_rate=0.1),
    head=dict(num_classes=3), mixup=dict(_delete_=True, mixup_alpha=0.8, cutmix_alpha=1.0))
train_dataloader = dict(batch_size={batch_size}, num_workers={num_workers}, {sampler}
                        dataset=dict(data_root={str(data_root)!r}, transform={transform!r}))
val_dataloader = dict(batch_size=6, num_workers=0,
                      dataset=dict(data_root={str(data_root)!r}, transform=dict(input_size=32)))
test_dataloader = val_dataloader
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(by_epoch={not iter_based}, interval={6 if iter_based else 1},
                                     max_keep_ckpts=-1, save_best=None))
{schedule}{signalling}""")
    return path
