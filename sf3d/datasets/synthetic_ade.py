"""Synthetic ADE20K: a tiny semantic-segmentation set in the ADEChallengeData2016 folder layout.

``generate(out)`` writes (what ``sf3d.datasets.ADE20KDataset`` and mmseg's ADE20KDataset read)::

    OUT/ADEChallengeData2016/images/training/ADE_train_00000001.jpg     RGB, quality 90
    OUT/ADEChallengeData2016/images/validation/ADE_val_00000001.jpg
    OUT/ADEChallengeData2016/annotations/training/ADE_train_00000001.png  uint8 label map (mode L)
    OUT/ADEChallengeData2016/annotations/validation/ADE_val_00000001.png
    OUT/synthetic_ade.json     the arguments and class names; marks OUT as a synthetic set

Annotation values follow ADE20K: 0 = "other" (ignored once ``reduce_zero_label`` maps it to 255),
v = 1..9 is class ``CLASSES[v - 1]`` (after ``reduce_zero_label``: label v - 1).

What is drawn: an outdoor scene with a wavy horizon. Stuff: ``sky`` (vertical gradient, soft
clouds) above it; below it ``earth`` (blotchy brown), optionally a ``water`` band (horizontal
ripples), ``grass`` blobs (vertical streaks) and a ``road`` (grey trapezoid towards a vanishing
point, dashed centre line); ``building`` facades with a window grid stand on the horizon. Things,
smaller with distance (their base nearer the horizon) and drawn far to near: ``tree`` (bumpy
dark-green crown + trunk), ``car`` (body in a random colour, cabin, wheels), ``person`` (head,
torso in a random colour, legs). A few small polygons in random colours are "other" (value 0).
Colours are jittered per image, then a global brightness factor and pixel noise; some classes
share a colour family (sky / water, grass / tree) and are told apart by texture and position,
cars and persons have random colours and are told apart by shape.

Deterministic: each image is drawn from its own generator seeded with (seed, split, index), so
the same arguments give byte-identical files (with the same Pillow / libjpeg / OpenCV), and a
larger set starts with the images of a smaller one.
"""
import json
import re
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from .synthetic_files import check_generate_args, prepare_out_dir

CLASSES = ('sky', 'building', 'earth', 'road', 'grass', 'water', 'tree', 'car', 'person')
# file values: 0 = other, CLASSES[i] is i + 1
OTHER, SKY, BUILDING, EARTH, ROAD, GRASS, WATER, TREE, CAR, PERSON = range(len(CLASSES) + 1)
SPLITS = {'training': 'train', 'validation': 'val'}  # folder name -> file-name part
DATASET_DIR = 'ADEChallengeData2016'
MARKER = 'synthetic_ade.json'
JPEG_QUALITY = 90
MIN_SIZE, MAX_SIZE = 48, 2048
_OWNED_FILE = re.compile(r'^ADE_(train|val)_\d{8}\.(jpg|png)$')

Grid = Tuple[np.ndarray, np.ndarray]  # pixel-centre coordinates (xs, ys), each (H, W)


def image_name(split: str, index: int, suffix: str = '.jpg') -> str:
    """File name of image `index` (0-based) of `split` ('training' / 'validation'), numbered from 1."""
    return f'ADE_{SPLITS[split]}_{index + 1:08d}{suffix}'


# ----------------------------------------------------------------------------- textures

def _noise(rng: np.random.Generator, shape: Tuple[int, int], cell: Tuple[int, int]) -> np.ndarray:
    """Smooth noise in [-1, 1] of `shape` (H, W): uniform values on a grid with cells of
    `cell` = (cy, cx) pixels, interpolated bilinearly."""
    (h, w), (cy, cx) = shape, cell
    grid = rng.uniform(-1, 1, (h // cy + 2, w // cx + 2)).astype(np.float32)
    big = cv2.resize(grid, (grid.shape[1] * cx, grid.shape[0] * cy), interpolation=cv2.INTER_LINEAR)
    return big[:h, :w]  # (H, W)


def _jitter(rng: np.random.Generator, rgb, amount: float = 15) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.normal(0, amount, 3), 0, 255).astype(np.float32)


def _texture(base: np.ndarray, variation: np.ndarray) -> np.ndarray:
    """(H, W, 3) colour field: `base` (3,) plus a per-pixel brightness offset `variation` (H, W)."""
    return base[None, None, :] + variation[..., None]


# ----------------------------------------------------------------------------- shapes

def _polygon(shape: Tuple[int, int], pts) -> np.ndarray:
    """Boolean (H, W) mask of a filled polygon with vertices `pts` [(x, y), ...] in pixels."""
    img = Image.new('L', (shape[1], shape[0]), 0)
    ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in pts], fill=1)
    return np.asarray(img, dtype=bool)


def _ellipse(grid: Grid, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((grid[0] - cx) / rx) ** 2 + ((grid[1] - cy) / ry) ** 2 <= 1.0


def _rect(grid: Grid, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return (grid[0] >= x0) & (grid[0] < x1) & (grid[1] >= y0) & (grid[1] < y1)


def _bumpy_disc(grid: Grid, rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """An ellipse whose radius wobbles with the angle (a tree crown, a grass patch)."""
    dx, dy = (grid[0] - cx) / rx, (grid[1] - cy) / ry
    angle = np.arctan2(dy, dx)
    wobble = 1 + sum(rng.uniform(0.04, 0.12) * np.sin(k * angle + rng.uniform(0, 2 * np.pi)) for k in (3, 5, 7))
    return dx ** 2 + dy ** 2 <= wobble ** 2


# ----------------------------------------------------------------------------- the scene

class _Canvas:
    """The image (H, W, 3) float32 and its label map (H, W) uint8, painted back to front."""

    def __init__(self, h: int, w: int):
        self.img = np.zeros((h, w, 3), np.float32)
        self.label = np.zeros((h, w), np.uint8)
        self.shape = (h, w)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
        self.grid: Grid = (xs, ys)

    def paint(self, mask: np.ndarray, colour: np.ndarray, label: int) -> None:
        """Set the pixels of `mask` (H, W) to `colour` ((3,) or (H, W, 3)) and to `label`."""
        self.img[mask] = colour[mask] if colour.ndim == 3 else colour
        self.label[mask] = label


def _paint_stuff(c: _Canvas, rng: np.random.Generator, horizon: np.ndarray) -> None:
    """Sky, earth, water, grass, road and buildings; `horizon` (W,) is the horizon row per column."""
    (h, w), (xs, ys) = c.shape, c.grid
    below = ys >= horizon[None, :]  # (H, W)
    y0 = float(horizon.mean())

    # sky: vertical gradient from a deeper blue at the top to a pale one at the horizon, soft clouds
    top, bottom = _jitter(rng, (70, 130, 215)), _jitter(rng, (175, 210, 240))
    t = np.clip(ys / max(y0, 1.0), 0, 1)[..., None]
    sky = top + (bottom - top) * t
    clouds = np.clip(_noise(rng, c.shape, (12, 24)) * 2 - rng.uniform(0.4, 1.4), 0, 1)[..., None]
    c.paint(~below, sky + (245 - sky) * clouds, SKY)

    # earth: blotchy brown, with fine grain
    earth = _texture(_jitter(rng, (125, 95, 65), 12), 22 * _noise(rng, c.shape, (6, 6)) + rng.normal(0, 6, c.shape))
    c.paint(below, earth, EARTH)

    if rng.random() < 0.4:  # water: a band under the horizon, horizontal ripples
        x0, x1 = sorted(rng.uniform(-0.3, 1.3, 2) * w)
        x1 = max(x1, x0 + 0.3 * w)
        depth = rng.uniform(0.1, 0.3) * (h - y0)
        lower = horizon + depth * (1 + 0.3 * np.sin(xs[0] / w * rng.uniform(4, 10) + rng.uniform(0, 6)))
        mask = below & (ys < lower[None, :]) & (xs >= x0) & (xs < x1)
        ripple = np.sin(ys * rng.uniform(1.2, 1.8) + 3 * _noise(rng, c.shape, (8, 16)))
        c.paint(mask, _texture(_jitter(rng, (45, 105, 150), 12), 22 * ripple), WATER)

    for _ in range(rng.choice(3, p=(0.3, 0.45, 0.25))):  # grass: blobs with vertical streaks
        cx, cy = rng.uniform(0, w), rng.uniform(y0, h)
        rx, ry = rng.uniform(0.15, 0.45) * w, rng.uniform(0.1, 0.3) * (h - y0) + 4
        streaks = cv2.resize(rng.uniform(-1, 1, (max(h // 8, 1), w)).astype(np.float32), (w, h),
                             interpolation=cv2.INTER_LINEAR)  # (H, W) stretched vertically
        grass = _texture(_jitter(rng, (70, 150, 55), 14), 28 * streaks + rng.normal(0, 5, c.shape))
        c.paint(_bumpy_disc(c.grid, rng, cx, cy, rx, ry) & below, grass, GRASS)

    if rng.random() < 0.5:  # road: a trapezoid from the bottom edge to a vanishing point on the horizon
        vx = rng.uniform(0.25, 0.75) * w
        bottom_x = vx + rng.uniform(-0.3, 0.3) * w
        half_bottom, half_top = rng.uniform(0.2, 0.35) * w, rng.uniform(0.01, 0.04) * w
        mask = _polygon(c.shape, [(vx - half_top, y0), (vx + half_top, y0),
                                  (bottom_x + half_bottom, h), (bottom_x - half_bottom, h)]) & below
        road = _texture(_jitter(rng, (100, 100, 104), 10), rng.normal(0, 7, c.shape))
        # dashed centre line: pixels near the line from the vanishing point to the bottom centre
        s = np.clip((ys - y0) / max(h - y0, 1.0), 0, 1)  # 0 at the horizon, 1 at the bottom
        centre_x = vx + (bottom_x - vx) * s
        line = (np.abs(xs - centre_x) < 0.4 + 2.0 * s) & (np.sin(np.sqrt(s) * rng.uniform(25, 40)) > 0.2)
        road[line] = _jitter(rng, (230, 230, 215), 8)
        c.paint(mask, road, ROAD)

    for _ in range(rng.choice(4, p=(0.4, 0.2, 0.25, 0.15))):  # buildings on the horizon, window grid
        bw, bh = rng.uniform(0.1, 0.3) * w, rng.uniform(0.15, 0.5) * y0 + 6
        bx = rng.uniform(-0.1, 0.95) * w
        base = y0 + rng.uniform(0.0, 0.04) * h
        mask = _rect(c.grid, bx, base - bh, bx + bw, base)
        facade = _jitter(rng, [(150, 150, 155), (190, 170, 140), (150, 85, 65)][rng.integers(3)], 12)
        wall = _texture(facade, rng.normal(0, 4, c.shape))
        sx, sy = rng.uniform(5, 9, 2)
        wx, wy = (xs - bx) % sx, (ys - (base - bh)) % sy
        windows = (wx > 0.3 * sx) & (wx < 0.8 * sx) & (wy > 0.25 * sy) & (wy < 0.75 * sy)
        wall[windows] = _jitter(rng, (45, 55, 75), 10)
        c.paint(mask, wall, BUILDING)


def _paint_tree(c: _Canvas, rng: np.random.Generator, cx: float, base: float, size: float) -> None:
    trunk_w = 0.09 * size
    trunk = _rect(c.grid, cx - trunk_w / 2, base - 0.45 * size, cx + trunk_w / 2, base)
    c.paint(trunk, _jitter(rng, (95, 65, 35), 10), TREE)
    crown = _bumpy_disc(c.grid, rng, cx, base - 0.65 * size, 0.28 * size, 0.35 * size)
    leaves = _texture(_jitter(rng, (35, 95, 40), 10), 30 * _noise(rng, c.shape, (3, 3)))
    c.paint(crown, leaves, TREE)


def _paint_car(c: _Canvas, rng: np.random.Generator, cx: float, base: float, size: float) -> None:
    w, h = size, 0.45 * size
    colour = _jitter(rng, [(200, 30, 35), (230, 200, 40), (235, 235, 235), (40, 70, 190), (30, 30, 30),
                           (120, 120, 130)][rng.integers(6)], 12)
    body = _rect(c.grid, cx - w / 2, base - 0.65 * h, cx + w / 2, base - 0.15 * h)
    cabin = _polygon(c.shape, [(cx - 0.35 * w, base - 0.65 * h), (cx - 0.22 * w, base - h),
                               (cx + 0.2 * w, base - h), (cx + 0.35 * w, base - 0.65 * h)])
    glass = _polygon(c.shape, [(cx - 0.28 * w, base - 0.68 * h), (cx - 0.19 * w, base - 0.93 * h),
                               (cx + 0.17 * w, base - 0.93 * h), (cx + 0.28 * w, base - 0.68 * h)])
    c.paint(body | cabin, colour, CAR)
    c.paint(glass, _jitter(rng, (60, 80, 100), 10), CAR)
    for wx in (cx - 0.3 * w, cx + 0.3 * w):
        c.paint(_ellipse(c.grid, wx, base - 0.17 * h, 0.17 * h, 0.17 * h), _jitter(rng, (20, 20, 20), 5), CAR)


def _paint_person(c: _Canvas, rng: np.random.Generator, cx: float, base: float, size: float) -> None:
    half = 0.13 * size
    legs = _jitter(rng, (50, 50, 80), 15)
    for x0 in (cx - half, cx + 0.15 * half):
        c.paint(_rect(c.grid, x0, base - 0.47 * size, x0 + 0.85 * half, base), legs, PERSON)
    shirt = _jitter(rng, rng.uniform(0, 255, 3), 5)
    c.paint(_rect(c.grid, cx - 1.15 * half, base - 0.8 * size, cx + 1.15 * half, base - 0.45 * size), shirt, PERSON)
    head = _ellipse(c.grid, cx, base - 0.89 * size, 0.09 * size + 0.5, 0.1 * size + 0.5)
    c.paint(head, _jitter(rng, [(225, 180, 150), (160, 110, 80), (100, 65, 45)][rng.integers(3)], 10), PERSON)


def _paint_clutter(c: _Canvas, rng: np.random.Generator) -> None:
    """A small polygon in a random colour, labelled "other" (0)."""
    (h, w) = c.shape
    cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.03, 0.08) * min(h, w) + 2
    angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 7)))
    pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)  # (P, 2)
    c.paint(_polygon(c.shape, pts), rng.uniform(0, 255, 3).astype(np.float32), OTHER)


def render_sample(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image (H, W, 3) uint8 RGB, annotation (H, W) uint8 file values)``.

    The width is ``size * U(0.8, 1)`` and the height ``width * U(0.62, 0.9)`` (rounded), so
    image sizes vary from image to image.
    """
    w = int(round(size * rng.uniform(0.8, 1.0)))
    h = int(round(w * rng.uniform(0.62, 0.9)))
    c = _Canvas(h, w)
    y0 = rng.uniform(0.3, 0.55) * h
    xs = c.grid[0][0]
    horizon = y0 + rng.uniform(0, 0.03) * h * np.sin(xs / w * rng.uniform(3, 9) + rng.uniform(0, 6))  # (W,)
    _paint_stuff(c, rng, horizon)

    for _ in range(rng.integers(0, 3)):
        _paint_clutter(c, rng)
    things = ([(_paint_tree, 0.25, 0.5)] * rng.choice(4, p=(0.3, 0.3, 0.25, 0.15))
              + [(_paint_car, 0.18, 0.36)] * rng.choice(3, p=(0.35, 0.4, 0.25))
              + [(_paint_person, 0.2, 0.4)] * rng.choice(3, p=(0.4, 0.35, 0.25)))
    placed = []
    for paint, lo, hi in things:  # base row, nearer the bottom = nearer = larger
        base = rng.uniform(y0 + 0.08 * (h - y0), h + 0.05 * h)
        depth = (base - y0) / (h - y0)
        size_px = rng.uniform(lo, hi) * h * (0.45 + 0.55 * depth)
        placed.append((base, paint, rng.uniform(0.05, 0.95) * w, size_px))
    for base, paint, cx, size_px in sorted(placed, key=lambda p: p[0]):  # far to near
        paint(c, rng, cx, base, size_px)

    img = c.img * rng.uniform(0.8, 1.2) + rng.normal(0, rng.uniform(2, 6), c.img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), c.label


# ----------------------------------------------------------------------------- writing

def _clear(out: Path) -> None:
    """Delete the image and annotation files of a previous synthetic set in ``out``."""
    for kind in ('images', 'annotations'):
        for split in SPLITS:
            folder = out / DATASET_DIR / kind / split
            if folder.is_dir():
                for f in folder.iterdir():
                    if f.is_file() and _OWNED_FILE.match(f.name):
                        f.unlink()


def generate(out, num_train: int = 200, num_val: int = 50, size: int = 160, seed: int = 0,
             progress: bool = False) -> Dict[str, int]:
    """Write the synthetic set to `out` (see the module docstring); return the image counts
    ``{'training': n, 'validation': n}``.

    A previous synthetic set in `out` (recognised by its ``synthetic_ade.json``) is replaced:
    the image and annotation files it wrote are deleted first. A non-empty `out` without that
    file is refused (FileExistsError).
    """
    check_generate_args(dict(num_train=num_train, num_val=num_val), size, (MIN_SIZE, MAX_SIZE), seed)
    out = Path(out)
    prepare_out_dir(out, MARKER, _clear)
    counts = {'training': num_train, 'validation': num_val}
    jobs: List[Tuple[int, str, int]] = [(split_id, split, i) for split_id, split in enumerate(SPLITS)
                                        for i in range(counts[split])]
    root = out / DATASET_DIR
    for kind in ('images', 'annotations'):
        for split in SPLITS:
            (root / kind / split).mkdir(parents=True, exist_ok=True)
    for split_id, split, i in tqdm(jobs, desc='synthetic ade', unit='img', disable=not progress):
        img, label = render_sample(np.random.default_rng([seed, split_id, i]), size)
        Image.fromarray(img).save(root / 'images' / split / image_name(split, i), format='JPEG', quality=JPEG_QUALITY)
        Image.fromarray(label).save(root / 'annotations' / split / image_name(split, i, '.png'))
    meta = dict(num_train=num_train, num_val=num_val, size=size, seed=seed, classes=list(CLASSES))
    (out / MARKER).write_text(json.dumps(meta, indent=2) + '\n')
    return counts
