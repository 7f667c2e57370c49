"""Fixtures shared across test modules."""
import os

import pytest
import torch

from sf3d.datasets import synthetic_nuscenes
from sf3d.datasets.nuscenes_info import create_nuscenes_infos

if os.environ.get('PYTEST_XDIST_WORKER'):  # `make test` runs one xdist worker per core:
    torch.set_num_threads(1)  # one thread each, and for the tools they start in subprocesses
    os.environ['OMP_NUM_THREADS'] = '1'


@pytest.fixture(scope='session')
def nuscenes_root(tmp_path_factory):
    """A small synthetic nuScenes v1.0-mini (10 scenes x 2 samples, 400x225) with its
    nuscenes_infos_{train,val}.pkl beside the tables. Shared: tests must not write into it."""
    root = tmp_path_factory.mktemp('synthetic_nuscenes')
    synthetic_nuscenes.generate(str(root), samples_per_scene=2, progress=False)
    create_nuscenes_infos(str(root), 'v1.0-mini', str(root), progress=False)
    return root
