"""tools/make_synthetic_imagenet.py: layout, determinism, argument checks, overwrite policy,
and that the classes are learnable by a linear model but not from the mean colour alone."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tool_loader import load_tool

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / 'tools' / 'make_synthetic_imagenet.py'


tool = load_tool('make_synthetic_imagenet')


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def _run_cli(*args):
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, cwd=ROOT)


def test_layout_and_counts(tmp_path):
    classes = tool.make_synthetic_imagenet(tmp_path, num_classes=3, train_per_class=4, val_per_class=2,
                                           size=32, seed=0, progress=False)
    wnids = ['n00000000', 'n00000001', 'n00000002']
    assert list(classes) == wnids
    assert classes['n00000000'] == 'red circle' and classes['n00000001'] == 'green square'
    lines = (tmp_path / 'classes.txt').read_text().splitlines()
    assert lines == [f'{w} {classes[w]}' for w in wnids]
    for split, n in (('train', 4), ('val', 2)):
        assert sorted(p.name for p in (tmp_path / split).iterdir()) == wnids
        for w in wnids:
            files = sorted((tmp_path / split / w).iterdir())
            assert len(files) == n and all(f.suffix == '.JPEG' for f in files)
            with Image.open(files[0]) as img:
                assert img.format == 'JPEG' and img.mode == 'RGB' and img.size == (32, 32)
    assert (tmp_path / 'train' / 'n00000001' / 'n00000001_3.JPEG').is_file()
    # val images are numbered over the whole split, as in ILSVRC2012
    assert (tmp_path / 'val' / 'n00000002' / 'ILSVRC2012_val_00000006.JPEG').is_file()


def test_cli_is_deterministic_and_seed_matters(tmp_path):
    args = ['--num-classes', '3', '--train-per-class', '3', '--val-per-class', '2', '--size', '32',
            '--no-progress']
    res = _run_cli('--out', str(tmp_path / 'a'), *args, '--seed', '5')
    assert res.returncode == 0, res.stderr
    assert 'wrote 15 images of 3 classes' in res.stdout
    tool.make_synthetic_imagenet(tmp_path / 'b', 3, 3, 2, 32, seed=5, progress=False)
    tool.make_synthetic_imagenet(tmp_path / 'c', 3, 3, 2, 32, seed=6, progress=False)
    a, b, c = _files(tmp_path / 'a'), _files(tmp_path / 'b'), _files(tmp_path / 'c')
    assert a == b  # CLI and function, byte for byte
    images = [k for k in a if k.endswith('.JPEG')]
    assert len(images) == 15 and all(a[k] != c[k] for k in images)


def test_per_image_seeds_do_not_depend_on_set_size(tmp_path):
    tool.make_synthetic_imagenet(tmp_path / 'small', 2, 2, 1, 32, seed=0, progress=False)
    tool.make_synthetic_imagenet(tmp_path / 'large', 3, 4, 1, 32, seed=0, progress=False)
    for rel, data in _files(tmp_path / 'small' / 'train').items():
        assert (tmp_path / 'large' / 'train' / rel).read_bytes() == data


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_classes=1), 'num_classes must be between 2 and 72'),
    (dict(num_classes=73), 'num_classes must be between 2 and 72'),
    (dict(train_per_class=0), 'train_per_class must be >= 1'),
    (dict(val_per_class=0), 'val_per_class must be >= 1'),
    (dict(size=8), 'size must be between 16 and 1024'),
    (dict(seed=-1), 'seed must be >= 0'),
])
def test_bad_arguments_raise(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tool.make_synthetic_imagenet(tmp_path / 'out', progress=False, **kwargs)
    assert not (tmp_path / 'out').exists()


def test_cli_bad_arguments_and_help(tmp_path):
    res = _run_cli('--out', str(tmp_path / 'out'), '--num-classes', '100')
    assert res.returncode == 2 and 'num_classes must be between 2 and 72' in res.stderr
    res = _run_cli('--help')
    assert res.returncode == 0 and 'previous set is replaced' in res.stdout


def test_refuses_foreign_dir_and_replaces_previous_set(tmp_path):
    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    (foreign / 'keep.txt').write_text('user data')
    with pytest.raises(FileExistsError, match='not empty'):
        tool.make_synthetic_imagenet(foreign, 2, 1, 1, 16, progress=False)
    assert _files(foreign) == {'keep.txt': b'user data'}

    out = tmp_path / 'set'
    tool.make_synthetic_imagenet(out, 4, 3, 2, 16, progress=False)
    (out / 'notes.txt').write_text('mine')
    tool.make_synthetic_imagenet(out, 2, 1, 1, 16, progress=False)
    train = sorted(str(p.relative_to(out)) for p in (out / 'train').rglob('*.JPEG'))
    assert train == ['train/n00000000/n00000000_0.JPEG', 'train/n00000001/n00000001_0.JPEG']
    assert sorted(p.name for p in (out / 'val').iterdir()) == ['n00000000', 'n00000001']
    assert (out / 'notes.txt').read_text() == 'mine'


def test_designs_are_distinct_and_colours_are_shared():
    designs = tool.class_designs()
    assert len(designs) == len(set(designs)) == tool.MAX_CLASSES
    first = designs[:len(tool.SHAPES)]
    assert sorted(s for s, _ in first) == sorted(tool.SHAPES)  # every shape once ...
    colours = [c for _, c in first[:10]]  # the default 10 classes use every colour, some twice
    assert set(colours) == set(tool.COLOURS) and len(set(colours)) < len(colours)


def _features(root: Path, split: str, px: int):
    x, y = [], []
    for label, class_dir in enumerate(sorted((root / split).iterdir())):
        for f in sorted(class_dir.iterdir()):
            with Image.open(f) as img:
                x.append(np.asarray(img.convert('RGB').resize((px, px), Image.BOX), np.float64) / 255)
            y.append(label)
    return np.stack(x), np.array(y)  # (N, px, px, 3), (N,)


def _ridge_accuracy(f_train, y_train, f_val, y_val, lam: float) -> float:
    """One-vs-all ridge-regression classifier on standardised features; val accuracy."""
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    a = np.c_[(f_train - mu) / sd, np.ones(len(f_train))]
    b = np.c_[(f_val - mu) / sd, np.ones(len(f_val))]
    targets = np.eye(y_train.max() + 1)[y_train]
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ targets)
    return float(((b @ w).argmax(1) == y_val).mean())


def test_classes_learnable_but_not_from_mean_colour(tmp_path):
    tool.make_synthetic_imagenet(tmp_path, 10, 40, 20, 32, seed=0, progress=False)
    x_train, y_train = _features(tmp_path, 'train', 8)
    x_val, y_val = _features(tmp_path, 'val', 8)
    pixels = _ridge_accuracy(x_train.reshape(len(x_train), -1), y_train,
                             x_val.reshape(len(x_val), -1), y_val, lam=10.0)
    mean_colour = _ridge_accuracy(x_train.mean((1, 2)), y_train, x_val.mean((1, 2)), y_val, lam=1.0)
    # chance is 0.1: a linear model on 8x8 pixels learns a lot, but is far from solving the
    # set (shape needs more than a linear map of pixels); mean colour alone stays weak
    assert 0.35 < pixels < 0.85, pixels
    assert mean_colour < 0.5 and mean_colour < pixels, (mean_colour, pixels)
