"""What a training run leaves behind, read for comparisons between runs: a checkpoint's weights and
the scalars it logged. Shared by the resume and preemption tests of tests/engine/ and tests/tools/
(tests/ is on sys.path because of tests/conftest.py)."""
import json
from pathlib import Path

import torch

LOGGED = ('loss', 'lr', 'epoch', 'iter', 'step')  # scalars.json keys that must repeat (not the timings)


def weights(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=False)['state_dict']


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f'{a} and {b} differ in {differ[:5]}'


def logged(work_dir: Path) -> list:
    """The training scalars of every run in ``work_dir``, in order (each run logs to its own
    timestamped folder), without the timings."""
    rows = [json.loads(line) for f in sorted(work_dir.glob('*/vis_data/scalars.json'))
            for line in f.read_text().splitlines()]
    return [{k: r[k] for k in LOGGED if k in r} for r in rows if 'loss' in r]
