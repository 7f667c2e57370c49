"""Checkpoint loading that works on torch >= 2.6.

torch 2.6 made ``torch.load(weights_only=True)`` the default; mmengine 0.10.x's local
loader relies on the old default, so resume, ``load_from`` and ``Pretrained`` init fail
on the ``HistoryBuffer`` objects mmengine itself saves in its checkpoints. We
re-register mmengine's local-file scheme with a loader that asks for the full
unpickler explicitly (mmengine's main branch made the same change, unreleased).
Checkpoints are the user's own files, the trust model of ``torch.load`` before 2.6.
"""
import os.path as osp

import torch
from mmengine.runner.checkpoint import CheckpointLoader


def load_local_checkpoint(filename: str, map_location=None) -> dict:
    """Load a local checkpoint with ``weights_only=False``; a missing file names the path."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint file not found: {filename}')
    return torch.load(filename, map_location=map_location, weights_only=False)


def register_checkpoint_loader() -> None:
    """Make mmengine's local-file checkpoint scheme use :func:`load_local_checkpoint`."""
    CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)
