"""Samples per second of the nuScenes camera pipelines per data-loader worker, beside a decode-only loop.

Usage:
    python tools/analysis/benchmark_pipeline.py [--data-root DIR] [--ann-file FILE] [--samples N]
        [--final-size H W] [--repeats R] [--warmup N] [--clock wall|cpu] [--malloc-tuning] [--preprocessor] [--json OUT]

What one data-loader worker does per sample, timed in ONE process on ONE thread (num_workers=0,
``torch.set_num_threads(1)``, ``cv2.setNumThreads(1)``, OMP/MKL/OpenBLAS threads 1), so the numbers are
per worker: a loader with k workers on k free cores scales them by about k.

Rows (each a pass over the same ``--samples`` samples):
  * decode-only: ``dataset.get_data_info(i)`` + decoding the sample's six JPEGs with ``read_rgb``, the
    decoder ``LoadMultiViewImages`` uses: the floor that any pipeline pays.
  * train HxW: the recommended training pipeline (DETR3D's augmentations, BEVDet-style image
    augmentation): LoadMultiViewImages(to_float32=True), PhotoMetricDistortionMultiView,
    ResizeCropFlipMultiView(final_size=HxW, training), GlobalRotScaleTrans, RandomFlip3D,
    ObjectRangeFilter, ObjectNameFilter, NormalizeMultiviewImage, GridMask, PadMultiViewImage(32),
    Pack3DDetInputs.
  * train 900x1600 (no resize): the same without ResizeCropFlipMultiView (DETR3D's full-resolution
    recipe; padded to 928x1600).
  * train HxW, photometric after resize: the same steps with PhotoMetricDistortionMultiView moved
    after ResizeCropFlipMultiView. NOT the same images as the recommended order (the distortion is
    per pixel, resizing mixes pixels); shown because it distorts 4x fewer pixels.
  * train HxW fast (uint8, bilinear, pixel work on the model side): LoadMultiViewImages (uint8),
    ResizeCropFlipMultiView(interpolation='bilinear'), the BEV steps, PadMultiViewImage(32),
    Pack3DDetInputs (uint8). Photometric distortion, normalisation and GridMask then run batched on
    the model's device in ``sf3d.models.data_preprocessors.MultiViewDataPreprocessor``, which is not
    part of the loader's time; ``--preprocessor`` times it separately on this CPU for one batch.
  * train HxW fast, half-size JPEG decode: the same with LoadMultiViewImages(decode_scale=2) (libjpeg's
    scaled IDCT decodes 800x450 straight from the full-size file; ResizeCropFlipMultiView's relative
    scale then mostly enlarges). Not the same pixels as a full decode + resize (close to them).
  * test HxW: LoadMultiViewImages(to_float32=True), ResizeCropFlipMultiView(test mode),
    NormalizeMultiviewImage, PadMultiViewImage(32), Pack3DDetInputs(img only), on the same samples
    loaded without GT.
Every pipeline row includes ``get_data_info`` as the decode-only row does. Rows are run interleaved
(``--repeats`` rounds, the row order rotating each round, ``np.random`` reseeded per pass) after
``--warmup`` untimed samples per row; a row's time per sample is the median over rounds.
``ratio`` = the row's samples/s / the decode-only samples/s (the issue's target: >= 0.7 for train).
A second table splits each pipeline row into ms per sample per transform (medians over rounds).

``--clock cpu`` times the process's CPU time instead of wall time: on a machine shared with other
jobs, wall times of a single-threaded loop rise with the load, CPU times much less.

``--malloc-tuning`` keeps freed memory in the process (glibc ``mallopt``: mmap and trim thresholds
1 GiB, as ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment
would). By default glibc hands every freed multi-MB image buffer back to the kernel, and the next
one is page-faulted in again, which costs about as much as a pass over the pixels; the flag shows
what a data-loader worker gains from those two variables (at the price of a larger resident size).

Without ``--data-root``, a synthetic nuScenes at full size (1600x900 JPEGs, 20 samples) is generated
into a temporary folder first (tools/make_synthetic_nuscenes.py --image-scale 1.0, ~40 s) with its
info files (nuscenes_infos_train.pkl: 16 samples), and removed at the end.
"""
from __future__ import annotations

import os

for _var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):  # before numpy/torch load
    os.environ[_var] = '1'

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import ctypes  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sf3d.datasets.nuscenes_dataset import NuScenesMultiViewDataset  # noqa: E402
from sf3d.datasets.nuscenes_info import CLASSES, create_nuscenes_infos  # noqa: E402
from sf3d.datasets.transforms import read_rgb  # noqa: E402
from sf3d.registry import TRANSFORMS  # noqa: E402

TARGET_RATIO = 0.7
POINT_CLOUD_RANGE = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]
IMG_NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)  # ImageNet, RGB
FULL_SIZE = (900, 1600)


def train_pipeline(final_size: tuple[int, int] | None, photometric_after_resize: bool = False) -> list[dict]:
    """The recommended training pipeline (module docstring); ``final_size=None``: no image resize."""
    photometric = dict(type='PhotoMetricDistortionMultiView')
    image_aug = [] if final_size is None else [dict(
        type='ResizeCropFlipMultiView', final_size=final_size, resize_lim=(0.94, 1.25), bot_pct_lim=(0.0, 0.1),
        rand_flip=True, is_train=True)]
    image_aug = image_aug + [photometric] if photometric_after_resize else [photometric] + image_aug
    return [
        dict(type='LoadMultiViewImages', to_float32=True),
        *image_aug,
        dict(type='GlobalRotScaleTrans', rot_range=(-0.3925, 0.3925), scale_ratio_range=(0.95, 1.05),
             translation_std=(0.0, 0.0, 0.0)),
        dict(type='RandomFlip3D', flip_ratio_bev_horizontal=0.5, flip_ratio_bev_vertical=0.5),
        dict(type='ObjectRangeFilter', point_cloud_range=POINT_CLOUD_RANGE),
        dict(type='ObjectNameFilter', classes=CLASSES),
        dict(type='NormalizeMultiviewImage', **IMG_NORM),
        dict(type='GridMask', use_h=True, use_w=True, rotate=1, offset=False, ratio=0.5, mode=1, prob=0.7),
        dict(type='PadMultiViewImage', size_divisor=32),
        dict(type='Pack3DDetInputs', keys=['img', 'gt_bboxes_3d', 'gt_labels_3d']),
    ]


def fast_train_pipeline(final_size: tuple[int, int], decode_scale: int = 1) -> list[dict]:
    """The loader's part of the training pipeline when the pixel-wise float work runs in the model."""
    return [
        dict(type='LoadMultiViewImages', to_float32=False, decode_scale=decode_scale),
        dict(type='ResizeCropFlipMultiView', final_size=final_size, resize_lim=(0.94, 1.25), bot_pct_lim=(0.0, 0.1),
             rand_flip=True, is_train=True, interpolation='bilinear'),
        dict(type='GlobalRotScaleTrans', rot_range=(-0.3925, 0.3925), scale_ratio_range=(0.95, 1.05),
             translation_std=(0.0, 0.0, 0.0)),
        dict(type='RandomFlip3D', flip_ratio_bev_horizontal=0.5, flip_ratio_bev_vertical=0.5),
        dict(type='ObjectRangeFilter', point_cloud_range=POINT_CLOUD_RANGE),
        dict(type='ObjectNameFilter', classes=CLASSES),
        dict(type='PadMultiViewImage', size_divisor=32),
        dict(type='Pack3DDetInputs', keys=['img', 'gt_bboxes_3d', 'gt_labels_3d']),
    ]


def time_preprocessor(final_size: tuple[int, int], repeats: int, timer) -> dict:
    """ms per call of MultiViewDataPreprocessor (training: photometric, normalise, GridMask) on one
    batch (B=1, 6 uint8 views of ``final_size``) on this CPU, 1 thread; median of ``repeats`` calls."""
    from sf3d.models.data_preprocessors import MultiViewDataPreprocessor
    pre = MultiViewDataPreprocessor(mean=IMG_NORM['mean'], std=IMG_NORM['std'], photometric={},
                                    grid_mask=dict(ratio=0.5, prob=0.7))
    img = torch.randint(0, 256, (1, 6, 3) + tuple(final_size), dtype=torch.uint8)
    pre(dict(inputs=dict(img=img), data_samples={}), True)  # warm-up
    times = []
    for _ in range(repeats):
        start = timer()
        pre(dict(inputs=dict(img=img), data_samples={}), True)
        times.append((timer() - start) * 1e3)
    return dict(ms_per_batch=statistics.median(times), batch=[1, 6, 3, *final_size], rounds_ms=times)


def test_pipeline(final_size: tuple[int, int]) -> list[dict]:
    return [
        dict(type='LoadMultiViewImages', to_float32=True),
        dict(type='ResizeCropFlipMultiView', final_size=final_size, is_train=False),
        dict(type='NormalizeMultiviewImage', **IMG_NORM),
        dict(type='PadMultiViewImage', size_divisor=32),
        dict(type='Pack3DDetInputs', keys=['img']),
    ]


def keep_freed_memory() -> None:
    """glibc: serve large buffers from the heap and never trim it (``--malloc-tuning``)."""
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    try:
        libc = ctypes.CDLL('libc.so.6')
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError) as err:
        raise SystemExit(f'--malloc-tuning needs glibc (libc.so.6 with mallopt): {err}') from None
    if not ok:
        raise SystemExit('--malloc-tuning: mallopt refused the thresholds')


def make_synthetic(out: str) -> None:
    """A full-size synthetic nuScenes (v1.0-mini scenes, 2 samples each) and its info files in ``out``."""
    cmd = [sys.executable, str(ROOT / 'tools' / 'make_synthetic_nuscenes.py'), '--out', out, '--image-scale', '1.0',
           '--samples-per-scene', '2', '--no-progress']
    print(f'generating a full-size synthetic nuScenes in {out} ...', flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    create_nuscenes_infos(out, 'v1.0-mini', out, progress=False)


class Row:
    """One benchmarked loop: ``run(idx)`` processes sample ``idx``; per-step times go to ``steps``."""

    def __init__(self, name: str, dataset: NuScenesMultiViewDataset, transforms: list, timer):
        self.name, self.dataset, self.timer = name, dataset, timer
        self.transforms = [TRANSFORMS.build(t) for t in transforms]
        self.step_names = ['get_data_info'] + [type(t).__name__ for t in self.transforms]
        self.rounds: list[float] = []  # seconds per sample, one per round
        self.step_rounds: list[list[float]] = []  # per round: seconds per sample per step

    def run(self, idx: int, steps: list[float]) -> None:
        start = self.timer()
        results = self.dataset.get_data_info(idx)
        steps[0] += self.timer() - start
        for k, transform in enumerate(self.transforms, 1):
            start = self.timer()
            results = transform(results)
            steps[k] += self.timer() - start
        if results is None:
            raise RuntimeError(f'{self.name}: a transform returned None')

    def timed_pass(self, indices: list[int], seed: int) -> None:
        np.random.seed(seed)
        steps = [0.0] * len(self.step_names)
        start = self.timer()
        for idx in indices:
            self.run(idx, steps)
        self.rounds.append((self.timer() - start) / len(indices))
        self.step_rounds.append([s / len(indices) for s in steps])

    def summary(self) -> dict:
        per_sample = statistics.median(self.rounds)
        steps = {}
        for k, name in enumerate(self.step_names):
            key = name if name not in steps else f'{name} ({k})'
            steps[key] = statistics.median(r[k] for r in self.step_rounds) * 1e3
        return dict(ms_per_sample=per_sample * 1e3, samples_per_s=1 / per_sample,
                    rounds_ms=[r * 1e3 for r in self.rounds], steps_ms=steps)


class DecodeRow(Row):
    """``get_data_info`` + ``read_rgb`` of the six images: what LoadMultiViewImages decodes."""

    def __init__(self, dataset: NuScenesMultiViewDataset, timer):
        super().__init__('decode-only (6 JPEGs)', dataset, [], timer)
        self.step_names = ['get_data_info', 'read_rgb x 6']

    def run(self, idx: int, steps: list[float]) -> None:
        start = self.timer()
        info = self.dataset.get_data_info(idx)
        steps[0] += self.timer() - start
        start = self.timer()
        for cam in info['images'].values():
            read_rgb(cam['img_path'])
        steps[1] += self.timer() - start


def benchmark(rows: list[Row], indices: list[int], repeats: int, warmup: int) -> None:
    for row in rows:  # warm-up: page cache, allocator, lazily built caches
        row.run(indices[0], [0.0] * len(row.step_names))
        for idx in indices[1:warmup]:
            row.run(idx, [0.0] * len(row.step_names))
    for r in range(repeats):
        order = rows[r % len(rows):] + rows[:r % len(rows)]
        for row in order:
            row.timed_pass(indices, seed=r)
        print(f'round {r + 1}/{repeats}: ' + ', '.join(f'{row.name} {row.rounds[-1] * 1e3:.0f} ms' for row in rows),
              flush=True)


def markdown_tables(results: dict, clock: str) -> str:
    decode = results['decode-only (6 JPEGs)']['samples_per_s']
    unit = 'CPU ms' if clock == 'cpu' else 'ms'
    lines = [f'| loop (1 worker, 1 thread) | samples/s | {unit}/sample | ratio to decode-only |', '|---|---|---|---|']
    for name, r in results.items():
        lines.append(f"| {name} | {r['samples_per_s']:.2f} | {r['ms_per_sample']:.1f} | "
                     f"{r['samples_per_s'] / decode:.2f}x |")
    names = [n for n in results if not n.startswith('decode')]
    steps = []
    for n in names:
        steps += [s for s in results[n]['steps_ms'] if s not in steps]
    lines += ['', f'Per transform ({unit} per sample, median over rounds):', '',
              '| step | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
    for s in steps:
        cells = [f"{results[n]['steps_ms'][s]:.1f}" if s in results[n]['steps_ms'] else '' for n in names]
        lines.append(f'| {s} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data-root', default=None,
                        help='nuScenes root with the info file; default: generate a full-size synthetic set')
    parser.add_argument('--ann-file', default='nuscenes_infos_train.pkl',
                        help='info file, relative to --data-root unless absolute (default nuscenes_infos_train.pkl)')
    parser.add_argument('--samples', type=int, default=16, help='samples per timed pass (default 16)')
    parser.add_argument('--final-size', type=int, nargs=2, default=(448, 800), metavar=('H', 'W'),
                        help='ResizeCropFlipMultiView output size (default 448 800)')
    parser.add_argument('--repeats', type=int, default=5, help='timed rounds; medians are reported (default 5)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed samples per row first (default 2)')
    parser.add_argument('--clock', choices=['wall', 'cpu'], default='wall',
                        help='wall time (perf_counter) or the process CPU time (process_time)')
    parser.add_argument('--malloc-tuning', action='store_true',
                        help='keep freed memory in the process (glibc mallopt; see the module docstring)')
    parser.add_argument('--preprocessor', action='store_true',
                        help='also time MultiViewDataPreprocessor (training) on one batch on this CPU')
    parser.add_argument('--json', default=None, metavar='OUT', help='also write the results as JSON')
    args = parser.parse_args(argv)
    if args.samples < 1 or args.repeats < 1 or args.warmup < 0 or min(args.final_size) < 1:
        parser.error('--samples, --repeats and --final-size must be >= 1, --warmup >= 0')
    return args


def run(args: argparse.Namespace, data_root: str) -> dict:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    if args.malloc_tuning:
        keep_freed_memory()
    timer = time.process_time if args.clock == 'cpu' else time.perf_counter
    train = NuScenesMultiViewDataset(args.ann_file, data_root=data_root)
    test = NuScenesMultiViewDataset(args.ann_file, data_root=data_root, test_mode=True)
    indices = [i % len(train) for i in range(args.samples)]
    shape = read_rgb(train.get_data_info(0)['images']['CAM_FRONT']['img_path']).shape[:2]
    if shape != FULL_SIZE:
        print(f'note: the images are {shape[0]}x{shape[1]}, not the full-size {FULL_SIZE[0]}x{FULL_SIZE[1]}',
              flush=True)
    fh, fw = size = tuple(args.final_size)
    rows = [DecodeRow(train, timer),
            Row(f'train {fh}x{fw}', train, train_pipeline(size), timer),
            Row(f'train {shape[0]}x{shape[1]} (no resize)', train, train_pipeline(None), timer),
            Row(f'train {fh}x{fw}, photometric after resize', train, train_pipeline(size, True), timer),
            Row(f'train {fh}x{fw} fast (uint8, bilinear, pixel work on the model side)', train,
                fast_train_pipeline(size), timer),
            Row(f'train {fh}x{fw} fast, half-size JPEG decode', train, fast_train_pipeline(size, decode_scale=2),
                timer),
            Row(f'test {fh}x{fw}', test, test_pipeline(size), timer)]
    print(f'{len(indices)} samples x {len(rows)} loops x {args.repeats} rounds, 1 process, num_workers=0, '
          f'torch threads {torch.get_num_threads()}, cv2 threads {cv2.getNumThreads()}, clock {args.clock}'
          f"{', malloc tuning' if args.malloc_tuning else ''}", flush=True)
    benchmark(rows, indices, args.repeats, args.warmup)
    results = {row.name: row.summary() for row in rows}
    preprocessor = time_preprocessor(size, args.repeats, timer) if args.preprocessor else None
    decode = results[rows[0].name]['samples_per_s']
    for r in results.values():
        r['ratio_to_decode'] = r['samples_per_s'] / decode
    return dict(results=results, preprocessor=preprocessor, image_size=list(shape), final_size=list(size),
                samples=len(indices), repeats=args.repeats, warmup=args.warmup, clock=args.clock,
                malloc_tuning=args.malloc_tuning, num_workers=0,
                torch_threads=torch.get_num_threads(), cv2_threads=cv2.getNumThreads(), target_ratio=TARGET_RATIO,
                data_root=args.data_root or 'synthetic (generated)', ann_file=args.ann_file,
                versions=dict(python=platform.python_version(), numpy=np.__version__, opencv=cv2.__version__,
                              torch=torch.__version__), cpu=platform.processor() or platform.machine())


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.data_root is None:
        with tempfile.TemporaryDirectory(prefix='sf3d_bench_nusc_') as tmp:
            make_synthetic(tmp)
            out = run(args, tmp)
    else:
        out = run(args, args.data_root)
    print()
    print(markdown_tables(out['results'], args.clock))
    fh, fw = out['final_size']
    for name in (f'train {fh}x{fw}', f'train {fh}x{fw} fast (uint8, bilinear, pixel work on the model side)',
                 f'train {fh}x{fw} fast, half-size JPEG decode'):
        ratio = out['results'][name]['ratio_to_decode']
        print(f"\n{name} runs at {ratio:.2f}x the decode-only rate "
              f"(target >= {TARGET_RATIO}x: {'met' if ratio >= TARGET_RATIO else 'not met'})")
    if out['preprocessor'] is not None:
        print(f"MultiViewDataPreprocessor (training, batch 1x6x3x{fh}x{fw} uint8, this CPU, 1 thread): "
              f"{out['preprocessor']['ms_per_batch']:.1f} {'CPU ' if args.clock == 'cpu' else ''}ms per batch")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(out, f, indent=2)
        print(f'wrote {args.json}')
    return out


if __name__ == '__main__':
    main()
