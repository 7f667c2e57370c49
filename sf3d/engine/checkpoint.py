"""Checkpoints that load on torch >= 2.6, are never torn, and resume from the last good file.

Loading: torch 2.6 made ``torch.load(weights_only=True)`` the default; mmengine 0.10.x's local
loader relies on the old default, so resume, ``load_from`` and ``Pretrained`` init fail on the
``HistoryBuffer`` objects mmengine itself saves in its checkpoints. We re-register mmengine's
local-file scheme with a loader that asks for the full unpickler explicitly (mmengine's main
branch made the same change, unreleased). Checkpoints are the user's own files, the trust model
of ``torch.load`` before 2.6. A file that cannot be read raises :class:`CorruptCheckpointError`
naming it.

Saving: mmengine writes a checkpoint in place (``save_checkpoint`` -> ``LocalBackend.put``), so a
kill mid-write leaves a truncated file under the final name. :func:`make_checkpoint_writes_atomic`
routes every put through :func:`atomic_write` (temporary file in the same directory, fsync,
``os.replace``).

Resuming: :func:`find_resumable_checkpoint` returns the newest checkpoint of a work dir that
passes :func:`verify_checkpoint`, naming each file it skips.
"""
import glob
import logging
import os
import os.path as osp
import pickle
import uuid
import zipfile
from contextlib import contextmanager
from typing import IO, Iterator, List, Optional

import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.fileio import io as mm_io
from mmengine.logging import print_log
from mmengine.runner.checkpoint import CheckpointLoader

LAST_CHECKPOINT = 'last_checkpoint'  # the file in a work dir naming its latest checkpoint (mmengine's)
RESUMABLE_PATTERNS = ('iter_*.pth', 'epoch_*.pth')  # CheckpointHook's and PreemptionHook's file names


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read (truncated, or not what torch.save wrote)."""


def load_local_checkpoint(filename: str, map_location=None) -> dict:
    """Load a local checkpoint with ``weights_only=False``; a missing or unreadable file names the path."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint file not found: {filename}')
    try:
        return torch.load(filename, map_location=map_location, weights_only=False)
    except (EOFError, OSError, pickle.UnpicklingError, RuntimeError) as e:
        raise CorruptCheckpointError(f'cannot read checkpoint {filename} (truncated or corrupt?): '
                                     f'{type(e).__name__}: {e}') from e


def register_checkpoint_loader() -> None:
    """Make mmengine's local-file checkpoint scheme use :func:`load_local_checkpoint`."""
    CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)


def verify_checkpoint(filename: str) -> None:
    """Raise FileNotFoundError or :class:`CorruptCheckpointError` unless ``filename`` is intact.

    torch.save writes a zip whose members carry CRC-32s, which ``torch.load`` does not check:
    a zip is verified member by member (streamed, constant memory); anything else (a legacy
    checkpoint, or a zip cut short before its central directory) by loading it on the CPU.
    """
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint file not found: {filename}')
    try:
        with zipfile.ZipFile(filename) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError):
        load_local_checkpoint(filename, map_location='cpu')
        return
    if bad is not None:
        raise CorruptCheckpointError(f'checkpoint {filename} is corrupt: CRC mismatch in {bad}')


def _resume_candidates(work_dir: str) -> List[str]:
    """The file ``last_checkpoint`` names, then the other ``iter_*``/``epoch_*`` checkpoints, newest first."""
    candidates = []
    last = osp.join(work_dir, LAST_CHECKPOINT)
    if osp.isfile(last):
        with open(last) as f:
            named = f.read().strip()
        if named:
            candidates.append(named)
    found = [p for pattern in RESUMABLE_PATTERNS for p in glob.glob(osp.join(work_dir, pattern))]
    for path in sorted(found, key=osp.getmtime, reverse=True):
        if osp.realpath(path) not in map(osp.realpath, candidates):
            candidates.append(path)
    return candidates


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint to auto-resume from: the first of :func:`_resume_candidates` that passes
    :func:`verify_checkpoint`; None if ``work_dir`` holds none. Each file skipped is logged with the
    reason; if every candidate fails, a RuntimeError names them all."""
    tried = []
    for path in _resume_candidates(work_dir):
        if '://' in path:  # a remote checkpoint (CheckpointHook's out_dir): left to mmengine's loaders
            return path
        try:
            verify_checkpoint(path)
        except (FileNotFoundError, CorruptCheckpointError) as e:
            print_log(f'auto-resume: skipping {path}: {e}', logger='current', level=logging.WARNING)
            tried.append(f'{path} ({e})')
            continue
        if tried:
            print_log(f'auto-resume: falling back to {path}', logger='current', level=logging.WARNING)
        return path
    if tried:
        raise RuntimeError(f'cannot auto-resume: no readable checkpoint in {work_dir}; tried:\n  '
                           + '\n  '.join(tried))
    return None


@contextmanager
def atomic_write(path: str, mode: str = 'wb', encoding: Optional[str] = None) -> Iterator[IO]:
    """Open a hidden temporary file beside ``path`` for writing; on success fsync it and
    ``os.replace`` it onto ``path`` (then fsync the directory), on error remove it. A reader of
    ``path`` sees the old file or the complete new one, never a partial one."""
    if not ('w' in mode and '+' not in mode):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    folder, name = osp.split(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = osp.join(folder, f'.{name}.{uuid.uuid4().hex[:12]}.tmp')
    try:
        with open(tmp, mode.replace('w', 'x'), encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_last_checkpoint(work_dir: str, checkpoint: str) -> None:
    """Point ``work_dir/last_checkpoint`` (what auto-resume reads) at ``checkpoint``, atomically."""
    with atomic_write(osp.join(work_dir, LAST_CHECKPOINT), 'w', encoding='utf-8') as f:
        f.write(checkpoint)


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose ``put`` (the write of every checkpoint) is atomic."""

    def put(self, obj: bytes, filepath) -> None:
        with atomic_write(str(filepath), 'wb') as f:
            f.write(obj)


def make_checkpoint_writes_atomic() -> None:
    """Register :class:`AtomicLocalBackend` as mmengine's 'local' backend (dropping cached
    instances of the stock one). ``CheckpointHook`` still rewrites ``last_checkpoint`` in place;
    a torn one names no readable file, and :func:`find_resumable_checkpoint` then falls back to the
    newest intact checkpoint of the work dir."""
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
    for key, backend in list(mm_io.backend_instances.items()):
        if type(backend) is LocalBackend:
            del mm_io.backend_instances[key]
