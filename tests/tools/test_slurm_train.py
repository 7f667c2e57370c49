"""tools/slurm_train.sh with stand-ins for srun and scontrol on PATH: the arguments reach
tools/train.py, a preempted training (status 75) or a signal to the script (forwarded to srun)
requeues the job, a requeued job adds --resume, and a crash or a normal exit requeues nothing."""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# srun stand-in: records its arguments and, on SIGUSR1/SIGTERM, the signal, then exits 75 as
# tools/train.py does; with FAKE_EXIT set it exits with that status right away.
FAKE_SRUN = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_DIR/srun_args"
trap 'echo USR1 > "$FAKE_DIR/srun_signal"; exit 75' USR1
trap 'echo TERM > "$FAKE_DIR/srun_signal"; exit 75' TERM
[[ -n ${FAKE_EXIT:-} ]] && exit "$FAKE_EXIT"
touch "$FAKE_DIR/started"
while :; do sleep 0.05; done
"""


FAKE_SCONTROL = """#!/usr/bin/env bash
echo "$@" >> "$FAKE_DIR/scontrol"
"""


@pytest.fixture
def fake_slurm(tmp_path):
    """The folder the stand-ins record into; they live in its bin/."""
    (tmp_path / 'bin').mkdir()
    for name, text in (('srun', FAKE_SRUN), ('scontrol', FAKE_SCONTROL)):
        (tmp_path / 'bin' / name).write_text(text)
        (tmp_path / 'bin' / name).chmod(0o755)
    return tmp_path


def _start(fake: Path, **env) -> subprocess.Popen:
    env = dict(os.environ, PATH=f'{fake / "bin"}{os.pathsep}{os.environ["PATH"]}', FAKE_DIR=str(fake), **env)
    for key in ('SLURM_JOB_ID', 'SLURM_RESTART_COUNT'):
        env.setdefault(key, '')
    return subprocess.Popen(['bash', str(REPO / 'tools/slurm_train.sh'), 'part', 'job', 'configs/x.py', 'work',
                             '--amp'], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _scontrol(fake: Path) -> str:
    return (fake / 'scontrol').read_text() if (fake / 'scontrol').exists() else ''


@pytest.mark.parametrize('status', [0, 1])
def test_finished_or_crashed_training_is_not_requeued(fake_slurm, status):
    proc = _start(fake_slurm, FAKE_EXIT=str(status), SLURM_JOB_ID='1234')
    assert proc.wait(timeout=30) == status, proc.stdout.read()
    args = (fake_slurm / 'srun_args').read_text().split('\n')
    assert args[args.index('python'):-1] == ['python', '-u', 'tools/train.py', 'configs/x.py', '--work-dir=work',
                                             '--launcher', 'slurm', '--amp']
    assert _scontrol(fake_slurm) == ''


def test_preempted_training_requeues_and_the_requeued_job_resumes(fake_slurm):
    proc = _start(fake_slurm, FAKE_EXIT='75', SLURM_JOB_ID='1234', SLURM_RESTART_COUNT='1')
    assert proc.wait(timeout=30) == 75
    assert _scontrol(fake_slurm) == 'requeue 1234\n'
    assert (fake_slurm / 'srun_args').read_text().split('\n')[-2:] == ['--resume', '']


@pytest.mark.parametrize('signum', [signal.SIGUSR1, signal.SIGTERM])
def test_signal_to_the_script_reaches_training(fake_slurm, signum):
    proc = _start(fake_slurm, SLURM_JOB_ID='1234')
    deadline = time.monotonic() + 30
    while not (fake_slurm / 'started').exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else 'timeout'
        time.sleep(0.05)
    proc.send_signal(signum)
    assert proc.wait(timeout=30) == 75, proc.stdout.read()
    assert (fake_slurm / 'srun_signal').read_text().strip() == signum.name[3:]
    assert _scontrol(fake_slurm) == 'requeue 1234\n'
