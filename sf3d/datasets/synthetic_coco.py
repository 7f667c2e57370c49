"""Synthetic COCO: a tiny detection / instance-segmentation set in the COCO 2017 file layout.

``generate(out)`` writes (what ``sf3d.datasets.CocoDetection``, pycocotools and mmdet read)::

    OUT/annotations/instances_train2017.json
    OUT/annotations/instances_val2017.json
    OUT/train2017/000000000001.jpg ...       RGB JPEG (quality 95), file name = 12-digit image id
    OUT/val2017/000001000001.jpg ...
    OUT/synthetic_coco.json                  the arguments and categories; marks OUT as a synthetic set

Categories (COCO-like: non-contiguous ids, listed in ascending id): ``CATEGORIES``. Label i of a
model is the i-th of them (circle 0, rectangle 1, triangle 2, ellipse 3).

What is drawn: a textured background (a tinted base colour, smooth blotches, faint stripes at a
random angle and frequency, pixel noise), then 0-4 shapes painted one over the other, each in a
random colour that contrasts with the background, with a linear shading ramp. Colours say nothing
about the class: the shape does (circle; rotated rectangle of aspect 0.5-1; irregular triangle;
ellipse of aspect 0.4-0.6). A new shape is placed only where it leaves every earlier shape at
least half visible.

Annotations are exact: each shape is a polygon, its pixels are the polygon rasterised by
pycocotools (``frPyObjects`` + ``decode``: what a loader does), and the image is painted from
those same pixel masks in drawing order. An unoccluded shape is stored as its polygon; a partly
covered one as an uncompressed RLE (``counts`` list, COCO's ground-truth RLE form) of its visible
pixels; ``iscrowd`` is 0 for all. ``area`` is the pixel count of the stored segmentation and
``bbox`` ``[x, y, w, h]`` its tight pixel box (both via pycocotools), so masks, boxes and areas agree.

Image sizes vary: width and height are drawn independently from ``[round(0.75 size), size]``.
About 4% of the images hold no object (as some COCO images), for ``filter_empty_gt``.

Deterministic: each image is drawn from its own generator seeded with (seed, split, index), so the
same arguments give byte-identical files (with the same Pillow / libjpeg), and a larger set starts
with the images of a smaller one.
"""
import colorsys
import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from .synthetic_files import check_generate_args, prepare_out_dir

CATEGORIES = ({'id': 1, 'name': 'circle'}, {'id': 3, 'name': 'rectangle'},
              {'id': 7, 'name': 'triangle'}, {'id': 12, 'name': 'ellipse'})
SPLITS = ('train', 'val')
IMAGE_ID_OFFSET = {'train': 0, 'val': 1_000_000}  # image ids are unique over both splits, as in COCO
MARKER = 'synthetic_coco.json'
JPEG_QUALITY = 95
MIN_SIZE, MAX_SIZE = 32, 2048
MAX_OBJECTS = 4
EMPTY_PROB = 0.04
MIN_VISIBLE_FRACTION = 0.5  # a new shape must leave each earlier one at least this visible
MIN_AREA = 24  # pixels of a shape
PLACEMENT_TRIES = 20
_OWNED_FILE = re.compile(r'^\d{12}\.jpg$')

Polygon = np.ndarray  # (P, 2) float vertices (x, y) in pixels, (0, 0) the top-left image corner


def ann_file(split: str) -> str:
    """Annotation file of ``split`` relative to OUT: ``annotations/instances_{split}2017.json``."""
    return f'annotations/instances_{split}2017.json'


def image_dir(split: str) -> str:
    """Image folder of ``split`` relative to OUT: ``{split}2017``."""
    return f'{split}2017'


# ----------------------------------------------------------------------------- shapes

def _ellipse(a: float, b: float, angle: float) -> Polygon:
    """(P, 2) polygon of an ellipse with semi-axes a, b rotated by `angle`, centred at 0."""
    n = max(16, int(round(np.pi * (a + b))))  # about one vertex per 2 px of perimeter
    t = np.arange(n) * 2 * np.pi / n
    pts = np.stack([a * np.cos(t), b * np.sin(t)], axis=1)  # (P, 2)
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])  # (P, 2) rotated


def _shape_polygon(name: str, r: float, rng: np.random.Generator) -> Polygon:
    """(P, 2) polygon of shape `name` of size `r` (pixels, about its circumradius) centred at 0."""
    angle = rng.uniform(0, 2 * np.pi)
    if name == 'circle':
        return _ellipse(r, r, 0.0)
    if name == 'ellipse':
        a = 1.2 * r
        return _ellipse(a, a * rng.uniform(0.4, 0.6), angle)
    if name == 'rectangle':
        hw = r * rng.uniform(0.65, 0.9)
        hh = hw * rng.uniform(0.5, 1.0)  # aspect 0.5-1
        corners = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])  # (4, 2)
        c, s = np.cos(angle), np.sin(angle)
        return corners @ np.array([[c, s], [-s, c]])
    if name == 'triangle':
        t = angle + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.3, 0.3, 3)
        rad = r * rng.uniform(0.95, 1.25, 3)
        return np.stack([rad * np.cos(t), rad * np.sin(t)], axis=1)  # (3, 2)
    raise ValueError(f'unknown shape {name!r}; expected one of {[c["name"] for c in CATEGORIES]}')


def rasterize(polygon: Polygon, height: int, width: int) -> np.ndarray:
    """(H, W) bool pixels of `polygon` exactly as a COCO loader decodes it (pycocotools)."""
    rle = mask_utils.frPyObjects([polygon.reshape(-1).tolist()], height, width)
    return mask_utils.decode(mask_utils.merge(rle)).astype(bool)


def uncompressed_rle(mask: np.ndarray) -> Dict:
    """COCO's uncompressed RLE ``{'size': [H, W], 'counts': [...]}`` of an (H, W) bool mask:
    run lengths over the column-major pixel order, starting with a (possibly empty) run of zeros."""
    flat = mask.reshape(-1, order='F').astype(np.int8)  # (H * W,)
    change = np.flatnonzero(np.diff(flat)) + 1  # indices where a new run starts
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {'size': [int(mask.shape[0]), int(mask.shape[1])], 'counts': counts}


def _place(polygon: Polygon, height: int, width: int, rng: np.random.Generator) -> Optional[Polygon]:
    """`polygon` moved to a random position fully inside the image, None if it does not fit."""
    lo, hi = polygon.min(axis=0), polygon.max(axis=0)  # (2,) each
    x_range = (1 - lo[0], width - 1 - hi[0])
    y_range = (1 - lo[1], height - 1 - hi[1])
    if x_range[0] > x_range[1] or y_range[0] > y_range[1]:
        return None
    offset = np.array([rng.uniform(*x_range), rng.uniform(*y_range)])
    return np.round(polygon + offset, 2)  # 2 decimals: the stored polygon is the rasterised one


# ----------------------------------------------------------------------------- images

def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """(H, W) smooth noise in about [-1, 1]: a random (cells x cells) grid upsampled bicubically."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float background: tinted base colour, blotches, faint stripes."""
    base = rng.uniform(60, 190) + rng.normal(0, 20, 3)  # (3,)
    img = np.broadcast_to(base, (height, width, 3)).astype(np.float32)
    blotches = _smooth_noise(rng, height, width, int(rng.integers(3, 8)))  # (H, W)
    img = img + rng.uniform(10, 30) * blotches[..., None] * rng.uniform(0.6, 1.0, 3)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    a = rng.uniform(0, np.pi)
    stripes = np.sin(2 * np.pi * (xs * np.cos(a) + ys * np.sin(a)) / rng.uniform(4, 16))
    return img + rng.uniform(3, 12) * stripes[..., None]


def _colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """(3,) a saturated random RGB colour far (in RGB) from the `background` colour (3,)."""
    for _ in range(20):
        rgb = 255 * np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.45, 1.0), rng.uniform(0.35, 1.0)))
        if np.abs(rgb - background).sum() > 120:
            break
    return rgb


def render_image(height: int, width: int, rng: np.random.Generator
                 ) -> Tuple[np.ndarray, List[Tuple[int, Polygon, np.ndarray, np.ndarray]]]:
    """Draw one image: ``(pixels (H, W, 3) uint8, objects)``, objects in drawing order as
    ``(category index into CATEGORIES, polygon (P, 2), full mask (H, W) bool, visible mask (H, W) bool)``."""
    img = _background(rng, height, width)
    shapes: List[Tuple[int, Polygon, np.ndarray]] = []  # (category, polygon, full mask)
    visible: List[np.ndarray] = []
    n = 0 if rng.random() < EMPTY_PROB else int(rng.integers(1, MAX_OBJECTS + 1))
    short = min(height, width)
    for _ in range(n):
        for _ in range(PLACEMENT_TRIES):
            cat = int(rng.integers(len(CATEGORIES)))
            poly = _place(_shape_polygon(CATEGORIES[cat]['name'], rng.uniform(0.08, 0.3) * short, rng),
                          height, width, rng)
            if poly is None:
                continue
            full = rasterize(poly, height, width)
            if full.sum() < MIN_AREA:
                continue
            covered = [vis & ~full for vis in visible]
            if all(c.sum() >= MIN_VISIBLE_FRACTION * s[2].sum() for c, s in zip(covered, shapes)):
                shapes.append((cat, poly, full))
                visible = covered + [full]
                break
    for cat, poly, full in shapes:  # paint in drawing order: later shapes cover earlier ones
        ys, xs = np.nonzero(full)
        colour = _colour(rng, img[ys, xs].mean(axis=0))
        centre, extent = poly.mean(axis=0), np.ptp(poly, axis=0).max()
        d = rng.uniform(0, 2 * np.pi)
        ramp = ((xs - centre[0]) * np.cos(d) + (ys - centre[1]) * np.sin(d)) / extent  # about [-1, 1]
        img[ys, xs] = colour * (1 + rng.uniform(0.0, 0.3) * ramp)[:, None]
    img = img + rng.normal(0, rng.uniform(2, 6), img.shape)
    pixels = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return pixels, [(cat, poly, full, vis) for (cat, poly, full), vis in zip(shapes, visible)]


def annotation(ann_id: int, image_id: int, category: int, polygon: Polygon, full: np.ndarray,
               visible: np.ndarray) -> Dict:
    """One COCO annotation: polygon if nothing covers the shape (``visible == full``), else the
    uncompressed RLE of the visible pixels; area and bbox from that segmentation."""
    h, w = visible.shape
    if np.array_equal(visible, full):
        segmentation = [polygon.reshape(-1).tolist()]
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    else:
        segmentation = uncompressed_rle(visible)
        rle = mask_utils.frPyObjects(segmentation, h, w)
    return {'id': ann_id, 'image_id': image_id, 'category_id': CATEGORIES[category]['id'],
            'segmentation': segmentation, 'area': float(mask_utils.area(rle)),
            'bbox': [float(v) for v in mask_utils.toBbox(rle)], 'iscrowd': 0}


# ----------------------------------------------------------------------------- files

def _clear(out: Path) -> None:
    """Delete the annotation and image files of a previous synthetic set in ``out``."""
    for split in SPLITS:
        (out / ann_file(split)).unlink(missing_ok=True)
        folder = out / image_dir(split)
        if folder.is_dir():
            for f in folder.iterdir():
                if f.is_file() and _OWNED_FILE.match(f.name):
                    f.unlink()


def generate(out, num_train: int = 200, num_val: int = 50, size: int = 128, seed: int = 0,
             progress: bool = False) -> Dict[str, Dict[str, int]]:
    """Write the synthetic set to `out` (module docstring); return
    ``{split: {'images': n, 'annotations': m}}``.

    A previous synthetic set in `out` (recognised by its ``synthetic_coco.json``) is replaced: the
    files it wrote are deleted first. A non-empty `out` without that file is refused (FileExistsError).
    """
    check_generate_args(dict(num_train=num_train, num_val=num_val), size, (MIN_SIZE, MAX_SIZE), seed)
    out = Path(out)
    prepare_out_dir(out, MARKER, _clear)
    counts = {'train': num_train, 'val': num_val}
    jobs = [(s, split, i) for s, split in enumerate(SPLITS) for i in range(counts[split])]
    data = {split: {'info': {'description': f'sf3d synthetic COCO ({split}2017), seed {seed}', 'version': '1.0'},
                    'licenses': [], 'images': [], 'annotations': [], 'categories': []} for split in SPLITS}
    for split in SPLITS:
        (out / image_dir(split)).mkdir(parents=True, exist_ok=True)
        data[split]['categories'] = [dict(c, supercategory='shape') for c in CATEGORIES]
    (out / 'annotations').mkdir(parents=True, exist_ok=True)
    lo = int(round(0.75 * size))
    for s, split, i in tqdm(jobs, desc='synthetic coco', unit='img', disable=not progress):
        rng = np.random.default_rng([seed, s, i])
        height, width = (int(v) for v in rng.integers(lo, size + 1, 2))
        pixels, objects = render_image(height, width, rng)
        image_id = IMAGE_ID_OFFSET[split] + i + 1
        file_name = f'{image_id:012d}.jpg'
        Image.fromarray(pixels).save(out / image_dir(split) / file_name, format='JPEG', quality=JPEG_QUALITY)
        data[split]['images'].append({'id': image_id, 'file_name': file_name, 'height': height, 'width': width})
        anns = data[split]['annotations']
        for obj in objects:
            anns.append(annotation(len(anns) + 1, image_id, *obj))
    for split in SPLITS:
        (out / ann_file(split)).write_text(json.dumps(data[split], separators=(',', ':')) + '\n')
    meta = dict(num_train=num_train, num_val=num_val, size=size, seed=seed, categories=list(CATEGORIES))
    (out / MARKER).write_text(json.dumps(meta, indent=2) + '\n')
    return {split: {'images': len(data[split]['images']), 'annotations': len(data[split]['annotations'])}
            for split in SPLITS}
