"""Write a small synthetic image-classification set in the ImageNet folder layout.

    python tools/make_synthetic_imagenet.py --out data/synthetic_imagenet \
        [--num-classes 10] [--train-per-class 100] [--val-per-class 20] [--size 64] [--seed 0]

Layout (what ``sf3d.datasets.ImageNetFolder`` and torchvision's ImageFolder read)::

    OUT/train/<wnid>/<wnid>_<index>.JPEG
    OUT/val/<wnid>/ILSVRC2012_val_<number>.JPEG
    OUT/classes.txt                 one line per class: "<wnid> <readable name>"
    OUT/synthetic_imagenet.json     the arguments; marks OUT as a synthetic set

Class designs: a class is one shape (circle, square, triangle, cross, ring, stripes, star,
crescent, frame, checker, bar, dots) in one colour (red, green, blue, yellow, magenta, cyan).
The designs are ordered so that the first classes use every shape once and share colours in
pairs (red circle / red star, ...): colour alone does not tell them apart, the shape does.
All shapes share one area distribution, so the amount of colour says nothing about the
shape either. Every instance varies in position, scale, rotation, colour shade and shading,
background (tinted gradient, noise, small clutter in random colours) and brightness.

Deterministic: each image is drawn from its own generator seeded with
(seed, split, class, index), and JPEGs are written with fixed settings, so the same
arguments give byte-identical files (with the same Pillow / libjpeg).
"""
import argparse
import functools
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from sf3d.datasets.synthetic_files import check_generate_args, prepare_out_dir

SHAPES = ('circle', 'square', 'triangle', 'cross', 'ring', 'stripes', 'star', 'crescent',
          'frame', 'checker', 'bar', 'dots')
COLOURS = {
    'red': (215, 40, 40),
    'green': (40, 175, 60),
    'blue': (45, 80, 215),
    'yellow': (230, 205, 40),
    'magenta': (200, 50, 200),
    'cyan': (40, 195, 205),
}
SPLITS = ('train', 'val')
MARKER = 'synthetic_imagenet.json'
SUPERSAMPLE = 2  # shapes are drawn at 2x and box-filtered down: smooth edges
JPEG_QUALITY = 90
_OWNED_FILE = re.compile(r'^(n\d{8}_\d+|ILSVRC2012_val_\d{8})\.JPEG$')
_WNID = re.compile(r'^n\d{8}$')


def class_designs() -> List[Tuple[str, str]]:
    """All (shape, colour) designs in class order.

    Block k pairs shape s with colour (s + k) mod #colours, so the first len(SHAPES)
    classes cover every shape and every colour is shared by two shapes.
    """
    colours = list(COLOURS)
    return [(shape, colours[(s + k) % len(colours)])
            for k in range(len(colours)) for s, shape in enumerate(SHAPES)]


MAX_CLASSES = len(SHAPES) * len(COLOURS)


def wnid(class_index: int) -> str:
    """WordNet-id-like folder name of a class, e.g. ``n00000003``."""
    return f'n{class_index:08d}'


# ----------------------------------------------------------------------------- shapes
# Each shape returns a 0/1 float mask (S, S) for a shape of radius r (pixels) centred
# at (cx, cy) and rotated by `angle` (radians). `grid` holds pixel-centre coordinates.

def _polygon(S: int, pts: np.ndarray) -> np.ndarray:
    img = Image.new('L', (S, S), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in pts], fill=255)
    return np.asarray(img, dtype=np.float32) / 255.0


def _rotated(cx: float, cy: float, angle: float, pts: np.ndarray) -> np.ndarray:
    """Rotate local points (N, 2) by `angle` and move them to (cx, cy)."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return pts @ rot.T + np.array([cx, cy])  # (N, 2)


def _local(grid: Tuple[np.ndarray, np.ndarray], cx: float, cy: float, angle: float):
    """Pixel coordinates in the shape's rotated frame: (u, v), each (S, S)."""
    x, y = grid[0] - cx, grid[1] - cy
    c, s = np.cos(angle), np.sin(angle)
    return c * x + s * y, -s * x + c * y


def _disc(grid, cx, cy, r) -> np.ndarray:
    return ((grid[0] - cx) ** 2 + (grid[1] - cy) ** 2 <= r * r).astype(np.float32)


def _box(grid, cx, cy, angle, half_u, half_v) -> np.ndarray:
    u, v = _local(grid, cx, cy, angle)
    return ((np.abs(u) <= half_u) & (np.abs(v) <= half_v)).astype(np.float32)


def _star_points(r_out: float, r_in: float, n: int) -> np.ndarray:
    a = np.arange(2 * n) * np.pi / n - np.pi / 2
    rad = np.where(np.arange(2 * n) % 2 == 0, r_out, r_in)
    return np.stack([rad * np.cos(a), rad * np.sin(a)], axis=1)  # (2n, 2)


def _shape_mask(shape: str, S: int, grid, cx: float, cy: float, r: float,
                angle: float) -> np.ndarray:
    if shape == 'circle':
        return _disc(grid, cx, cy, r)
    if shape == 'square':
        return _box(grid, cx, cy, angle, 0.85 * r, 0.85 * r)
    if shape == 'triangle':
        return _polygon(S, _rotated(cx, cy, angle, _star_points(1.15 * r, 0.575 * r, 3)[::2]))
    if shape == 'cross':
        return np.maximum(_box(grid, cx, cy, angle, r, 0.3 * r), _box(grid, cx, cy, angle, 0.3 * r, r))
    if shape == 'ring':
        return _disc(grid, cx, cy, r) - _disc(grid, cx, cy, 0.62 * r)
    if shape == 'stripes':
        u, _ = _local(grid, cx, cy, angle)
        return _disc(grid, cx, cy, r) * (np.sin(2 * np.pi * u / (0.55 * r)) > 0)
    if shape == 'star':
        return _polygon(S, _rotated(cx, cy, angle, _star_points(1.15 * r, 0.48 * r, 5)))
    if shape == 'crescent':
        ox, oy = 0.45 * r * np.cos(angle), 0.45 * r * np.sin(angle)
        return _disc(grid, cx, cy, r) * (1 - _disc(grid, cx + ox, cy + oy, 0.85 * r))
    if shape == 'frame':
        return _box(grid, cx, cy, angle, 0.9 * r, 0.9 * r) - _box(grid, cx, cy, angle, 0.55 * r, 0.55 * r)
    if shape == 'checker':
        u, v = _local(grid, cx, cy, angle)
        cell = 0.45 * r
        parity = (np.floor(u / cell) + np.floor(v / cell)) % 2 == 0
        return _box(grid, cx, cy, angle, 0.9 * r, 0.9 * r) * parity
    if shape == 'bar':
        return _box(grid, cx, cy, angle, 1.15 * r, 0.3 * r)
    if shape == 'dots':
        centres = _rotated(cx, cy, angle, 0.5 * r * np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]]))
        return np.maximum.reduce([_disc(grid, x, y, 0.36 * r) for x, y in centres])
    raise ValueError(f'unknown shape {shape!r}; expected one of {SHAPES}')


@functools.lru_cache(maxsize=None)
def shape_area(shape: str) -> float:
    """Area of `shape` at radius 1 (measured on a 320 px canvas at radius 100)."""
    S, r = 320, 100.0
    ys, xs = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5
    return float(_shape_mask(shape, S, (xs, ys), S / 2, S / 2, r, 0.3).sum()) / r ** 2


# ----------------------------------------------------------------------------- images

def render_image(shape: str, colour: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one instance of a (shape, colour) class as an RGB image of size x size."""
    S = size * SUPERSAMPLE
    ys, xs = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5
    grid = (xs, ys)

    # background: a desaturated two-colour gradient in a random direction
    grey = rng.uniform(70, 185)
    c0 = (grey + rng.normal(0, 18, 3)).astype(np.float32)
    c1 = (grey + rng.uniform(-45, 45) + rng.normal(0, 18, 3)).astype(np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    t = ((xs - S / 2) * np.cos(direction) + (ys - S / 2) * np.sin(direction)) / S + 0.5
    img = c0 + (c1 - c0) * np.clip(t, 0, 1)[..., None]  # (S, S, 3)

    # clutter: a few small dots, squares and strokes in random colours
    for _ in range(rng.integers(2, 6)):
        kind = ('dot', 'square', 'stroke')[rng.integers(3)]
        cx, cy = rng.uniform(0, S, 2)
        r = rng.uniform(0.025, 0.06) * S
        a = rng.uniform(0, np.pi)
        if kind == 'dot':
            m = _disc(grid, cx, cy, r)
        elif kind == 'square':
            m = _box(grid, cx, cy, a, r, r)
        else:
            m = _box(grid, cx, cy, a, 2.5 * r, 0.25 * r)
        img[m > 0] = rng.uniform(0, 255, 3)

    # the object: random size, position (kept mostly inside), rotation, shade and shading.
    # Every shape gets the same area distribution (that of a disc of radius 0.75 * size), so
    # the amount of colour in the image says nothing about the shape.
    size_radius = rng.uniform(0.2, 0.34) * S
    r = size_radius * np.sqrt(np.pi * 0.75 ** 2 / shape_area(shape))
    cx, cy = rng.uniform(0.8 * r, S - 0.8 * r, 2)
    angle = rng.uniform(0, 2 * np.pi)
    inside = _shape_mask(shape, S, grid, cx, cy, r, angle) > 0  # (S, S) bool
    base = np.array(COLOURS[colour], np.float32) + rng.normal(0, 12, 3)
    shade_dir = rng.uniform(0, 2 * np.pi)
    ramp = ((xs[inside] - cx) * np.cos(shade_dir) + (ys[inside] - cy) * np.sin(shade_dir)) / (2 * r)
    img[inside] = base * (1 + rng.uniform(0, 0.35) * ramp)[:, None]  # (P, 3)

    # down to the output size, then global brightness and pixel noise
    small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((size, size), Image.BOX)
    out = np.asarray(small, np.float32) * rng.uniform(0.75, 1.25)
    out += rng.normal(0, rng.uniform(3, 12), out.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))


def _image_name(split: str, class_index: int, index: int, val_per_class: int) -> str:
    if split == 'train':
        return f'{wnid(class_index)}_{index}.JPEG'
    return f'ILSVRC2012_val_{class_index * val_per_class + index + 1:08d}.JPEG'


def _check_args(num_classes: int, train_per_class: int, val_per_class: int, size: int,
                seed: int) -> None:
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f'num_classes must be between 2 and {MAX_CLASSES} (the number of class '
                         f'designs: {len(SHAPES)} shapes x {len(COLOURS)} colours), got {num_classes}')
    check_generate_args(dict(train_per_class=train_per_class, val_per_class=val_per_class), size, (16, 1024), seed)


def _clear(out: Path) -> None:
    """Delete the images (and emptied class folders) of a previous synthetic set in ``out``."""
    for split in SPLITS:
        split_dir = out / split
        if not split_dir.is_dir():
            continue
        for class_dir in split_dir.iterdir():
            if not (class_dir.is_dir() and _WNID.match(class_dir.name)):
                continue
            for f in class_dir.iterdir():
                if f.is_file() and _OWNED_FILE.match(f.name):
                    f.unlink()
            if not any(class_dir.iterdir()):
                class_dir.rmdir()


def make_synthetic_imagenet(out, num_classes: int = 10, train_per_class: int = 100,
                            val_per_class: int = 20, size: int = 64, seed: int = 0,
                            progress: bool = True) -> Dict[str, str]:
    """Write the synthetic set to `out` (see the module docstring); return {wnid: name}.

    A previous synthetic set in `out` (recognised by its ``synthetic_imagenet.json``) is
    replaced: the image files it wrote are deleted first, so no stale classes or images
    remain. A non-empty `out` without that file is refused (FileExistsError).
    """
    _check_args(num_classes, train_per_class, val_per_class, size, seed)
    out = Path(out)
    prepare_out_dir(out, MARKER, _clear, arg='--out')
    designs = class_designs()[:num_classes]
    classes = {wnid(c): f'{colour} {shape}' for c, (shape, colour) in enumerate(designs)}
    per_class = {'train': train_per_class, 'val': val_per_class}
    jobs = [(split_id, split, c, i) for split_id, split in enumerate(SPLITS)
            for c in range(num_classes) for i in range(per_class[split])]
    for split in SPLITS:
        for c in range(num_classes):
            (out / split / wnid(c)).mkdir(parents=True, exist_ok=True)
    for split_id, split, c, i in tqdm(jobs, desc='synthetic imagenet', unit='img', disable=not progress):
        rng = np.random.default_rng([seed, split_id, c, i])
        shape, colour = designs[c]
        path = out / split / wnid(c) / _image_name(split, c, i, val_per_class)
        render_image(shape, colour, size, rng).save(path, format='JPEG', quality=JPEG_QUALITY)
    (out / 'classes.txt').write_text(''.join(f'{k} {v}\n' for k, v in classes.items()))
    args = dict(num_classes=num_classes, train_per_class=train_per_class,
                val_per_class=val_per_class, size=size, seed=seed)
    (out / MARKER).write_text(json.dumps(args, indent=2) + '\n')
    return classes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog=f'OUT must be new, empty, or a previous synthetic set (it holds {MARKER}); a '
               f'previous set is replaced: the image files it wrote are deleted and rewritten. '
               f'Any other non-empty directory is refused.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--out', required=True, help='output directory (e.g. data/synthetic_imagenet)')
    parser.add_argument('--num-classes', type=int, default=10, help=f'number of classes, 2..{MAX_CLASSES}')
    parser.add_argument('--train-per-class', type=int, default=100, help='training images per class')
    parser.add_argument('--val-per-class', type=int, default=20, help='validation images per class')
    parser.add_argument('--size', type=int, default=64, help='image side in pixels (16..1024)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (>= 0)')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        classes = make_synthetic_imagenet(args.out, args.num_classes, args.train_per_class,
                                          args.val_per_class, args.size, args.seed,
                                          progress=not args.no_progress)
    except (ValueError, FileExistsError, NotADirectoryError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    total = len(classes) * (args.train_per_class + args.val_per_class)
    print(f'wrote {total} images of {len(classes)} classes to {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
