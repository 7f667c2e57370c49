"""Preemption on a tiny synthetic ImageNet: tools/train.py, sent a real SIGTERM/SIGUSR1 in the middle
of an epoch (tests/signal_hook.py), saves iter_<N>.pth and exits with status 75; `--resume` then ends
with the weights and logged losses of an uninterrupted run, bit for bit. The signalled runs are
subprocesses; the others run in this process (the same numbers, without the imports)."""
from pathlib import Path

import pytest
import torch
from run_records import assert_same_weights, logged, weights
from tiny_imagenet import run_python, write_config
from tool_loader import load_tool

from sf3d.engine import PREEMPTED_EXIT_STATUS

train_tool = load_tool('train')


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('synthetic_imagenet')
    assert load_tool('make_synthetic_imagenet').main([
        '--out', str(root), '--num-classes', '3', '--train-per-class', '8', '--val-per-class', '2', '--size', '32',
        '--no-progress']) == 0
    return root


def _preempt_and_resume(cfg: Path, signalled: Path, work: Path, at_iter: int, final: str) -> None:
    """Train ``signalled`` (``cfg`` + a signal during iteration ``at_iter``) in ``work`` until the
    signal stops it, check the preemption checkpoint, then resume ``cfg`` in ``work`` to the end.
    (Each run of a test has its own config file name: mmengine names a run's log folder and
    visualizer after the config and the second it starts, so two runs in one process and second
    would share them.)"""
    out = run_python(['tools/train.py', str(signalled), '--work-dir', str(work)], expect=PREEMPTED_EXIT_STATUS)
    checkpoint = work / f'iter_{at_iter}.pth'
    assert f'saving {checkpoint}' in out
    assert (work / 'last_checkpoint').read_text() == str(checkpoint)
    assert not (work / final).exists()
    assert torch.load(checkpoint, weights_only=False)['meta']['iter'] == at_iter
    train_tool.main([str(cfg), '--work-dir', str(work), '--resume'])


def test_sigterm_mid_epoch_resume_is_bit_identical(tmp_path, data_root):
    """SIGTERM in iteration 8 = batch 2 of epoch 2, sent to the whole process group as slurm does
    (the DataLoader workers inherit the handler and survive it); two workers augment, the main
    process draws MixUp/CutMix and drop path."""
    cfg = write_config(tmp_path / 'resumed.py', data_root, num_workers=2)
    signalled = write_config(tmp_path / 'signalled.py', data_root, num_workers=2, signal_at=8, signal_group=True)
    full, work = tmp_path / 'full', tmp_path / 'work'
    train_tool.main([str(write_config(tmp_path / 'full.py', data_root, num_workers=2)), '--work-dir', str(full)])
    _preempt_and_resume(cfg, signalled, work, 8, 'epoch_2.pth')
    assert_same_weights(full / 'epoch_2.pth', work / 'epoch_2.pth')
    assert logged(work) == logged(full) and len(logged(full)) == 12

    # The comparison can fail: the weights moved after the preemption, and the same resume without
    # the saved RNG states (as from a plain mmengine checkpoint) ends elsewhere.
    final = weights(full / 'epoch_2.pth')['head.fc.weight']
    assert not torch.equal(weights(work / 'iter_8.pth')['head.fc.weight'], final)
    checkpoint = torch.load(work / 'iter_8.pth', weights_only=False)
    del checkpoint['meta']['rng_states']
    torch.save(checkpoint, tmp_path / 'no_rng.pth')
    no_rng = write_config(tmp_path / 'no_rng.py', data_root, num_workers=2)
    train_tool.main([str(no_rng), '--work-dir', str(tmp_path / 'no_rng'), '--resume', str(tmp_path / 'no_rng.pth')])
    assert not torch.equal(weights(tmp_path / 'no_rng/epoch_2.pth')['head.fc.weight'], final)


def test_sigusr1_iteration_based_resume_is_bit_identical(tmp_path, data_root):
    """SIGUSR1 in iteration 4 of an IterBasedTrainLoop, transforms in the main process
    (num_workers=0): the next batch's augmentation draws from the restored RNG state."""
    cfg = write_config(tmp_path / 'iter_resumed.py', data_root, num_workers=0, iter_based=True)
    signalled = write_config(tmp_path / 'iter_signalled.py', data_root, num_workers=0, iter_based=True, signal_at=4,
                             signum='SIGUSR1')
    full, work = tmp_path / 'full', tmp_path / 'work'
    train_tool.main([str(write_config(tmp_path / 'iter_full.py', data_root, num_workers=0, iter_based=True)),
                     '--work-dir', str(full)])
    _preempt_and_resume(cfg, signalled, work, 4, 'iter_12.pth')
    assert_same_weights(full / 'iter_12.pth', work / 'iter_12.pth')
    assert logged(work) == logged(full) and len(logged(full)) == 12
    final = weights(full / 'iter_12.pth')['head.fc.weight']
    assert not torch.equal(weights(work / 'iter_4.pth')['head.fc.weight'], final)


def test_ddp_ranks_stop_after_the_same_iteration(tmp_path, data_root):
    """Two gloo processes; only rank 1 is signalled (during iteration 3). Rank 0, which saves, learns
    it through the all-reduce: both stop after iteration 3, and the checkpoint holds both ranks' RNG
    states. Without the all-reduce the ranks wait on each other's collectives until the timeout
    fails the test."""
    cfg = write_config(tmp_path / 'ddp.py', data_root, num_workers=0, batch_size=2, signal_at=3, signal_rank=1)
    work = tmp_path / 'ddp'
    out = run_python(['-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '29533',
                      'tools/train.py', str(cfg), '--work-dir', str(work), '--launcher', 'pytorch'],
                     expect=1, timeout=90)
    assert f'exitcode  : {PREEMPTED_EXIT_STATUS}' in out, out[-3000:]  # torchrun's report of the first to exit
    meta = torch.load(work / 'iter_3.pth', weights_only=False)['meta']
    assert meta['iter'] == 3 and len(meta['rng_states']) == 2
    assert (work / 'last_checkpoint').read_text() == str(work / 'iter_3.pth') and not (work / 'iter_4.pth').exists()
