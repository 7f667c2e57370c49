"""Training and inference cost per 6-view sample of multi-view 3D detector configs, side by side.

Usage:
    python tools/analysis/benchmark_detector.py [--configs configs/nuscenes/sf_s.py configs/nuscenes/detr3d_r50.py] \
        [--shape 448 800] [--device cpu|cuda] [--amp] [--batch 1] [--warmup 1] [--iters 3] [--rounds 1] \
        [--threads 0] [--clock wall|cpu] [--cfg-options key=value ...] [--json OUT]

Each config runs in a FRESH subprocess (NOTES.md: timings in a process after big work are
unreliable). It builds ``cfg.model`` with ``MODELS.build`` in the ``sf3d`` scope with the
backbone's ``pretrained`` / ``init_cfg`` set to None (random weights: no checkpoint is needed to
time), and feeds it one synthetic batch of ``--batch`` samples:

* images (B, 6, 3, H, W) ~ N(0, 1) (already normalised: the data preprocessor's normalisation,
  photometric distortion and GridMask are not timed; they cost the same for every config);
* cameras: the real nuScenes rig (``sf3d.datasets.synthetic_nuscenes.build_calibration``, 1600x900,
  cameras in the DESIGN.md order) resized by W / 1600 and, where the resized image is taller than
  H, cropped at the top (448x800: 450 -> 448 rows); where it is shorter, the batch is padded at the
  bottom, as ``PadMultiViewImage`` does (928x1600 is 1600x900 padded to a multiple of 32);
* a two-frame config (``model.num_frames=2``) also gets the previous key frame: 6 more views of
  random pixels whose cameras are the rig 0.5 s earlier with the ego 5 m further back (10 m/s), and
  ``time_delta`` = 0.5 s;
* ``--num-boxes`` (default 30) GT boxes per sample of random classes with the classes' nuScenes
  mean sizes, centres uniform in x, y in [-50, 50] m on the ground, random yaw and velocity.

Measured, in this order:

* train: ``model.train()``; forward ``mode='loss'`` (Hungarian matching included) under bf16
  autocast with ``--amp``, sum of the losses, ``backward()`` (outside autocast), gradients freed.
  No optimizer step. ``--warmup`` untimed steps, then ``--iters`` timed ones.
* peak memory of those train steps: on CUDA ``torch.cuda.max_memory_allocated`` (absolute: weights,
  gradients, activations); on CPU the growth of the process's peak resident set size (Linux
  ``VmHWM``, reset through ``/proc/self/clear_refs`` right before the first train step) over the
  RSS at that moment: what the train steps add on top of weights, batch and libraries
  (``ru_maxrss`` cannot be reset, so it would report model building's peak instead).
* inference: ``model.eval()``, ``torch.no_grad()`` (as mmengine's test loop), ``mode='predict'``
  (top-300 decoding included), bf16 autocast with ``--amp``; ``--warmup`` untimed, ``--iters`` timed.

Times are per sample: the median step time / ``--batch``. With ``--rounds R`` the config list runs R
times interleaved, each run in a fresh process, and a config's time is the median of its round
medians (a burst of load from other processes spoils one round, not one config); peak memory is the
max over rounds. The ratio columns divide by the first config's time. ``--clock cpu`` times the
process's CPU time instead of wall time (with ``--threads 1`` robust to other load on the machine).
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # a script's folder is on sys.path; not when loaded by path (tests/tool_loader.py)
    sys.path.insert(0, HERE)
from bench_utils import PeakMemory, markdown_lines, write_json  # noqa: E402

DEFAULT_CONFIGS = ['configs/nuscenes/sf_s.py', 'configs/nuscenes/detr3d_r50.py']
SIZE_DIVISOR = 32  # SpatialFormer and the FPN need H, W divisible by the coarsest stride
PROGRESS = '[progress] '  # worker stderr lines shown by the parent


def check_shape(shape) -> tuple[int, int]:
    """(H, W) -> (int H, int W); ValueError unless both are positive multiples of 32."""
    if len(shape) != 2:
        raise ValueError(f'shape must be (H, W), got {shape!r}')
    h, w = (int(v) for v in shape)
    if h <= 0 or w <= 0 or h % SIZE_DIVISOR or w % SIZE_DIVISOR:
        raise ValueError(f'shape {h}x{w} (HxW): H and W must be positive multiples of {SIZE_DIVISOR} '
                         f'(the backbones\' coarsest stride), e.g. 448 800 or 928 1600 (900x1600 padded)')
    return h, w


def config_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


# ---------------------------------------------------------------------------------------------- batch
def nuscenes_cameras(shape: tuple[int, int], batch: int):
    """The nuScenes rig at input size (H, W) (module docstring): MultiViewCameras (B, 6) float32
    whose ``image_size`` is the valid (unpadded) (h, W) of each view."""
    import torch

    from sf3d.datasets.synthetic_nuscenes import CAMERAS, FULL_HEIGHT, FULL_WIDTH, build_calibration
    from sf3d.structures import MultiViewCameras
    from sf3d.structures.transforms import img_crop, img_resize

    h, w = shape
    calib = build_calibration(image_scale=1.0)
    identity_pose = dict(translation=[0.0, 0.0, 0.0], rotation=[1.0, 0.0, 0.0, 0.0])  # ego pose: static rig
    cams = MultiViewCameras.from_nuscenes([calib[c] for c in CAMERAS], calib['LIDAR_TOP'], identity_pose,
                                          [identity_pose] * len(CAMERAS), image_size=(FULL_HEIGHT, FULL_WIDTH))
    scale = w / FULL_WIDTH
    resized_h = FULL_HEIGHT * scale
    top = max(resized_h - h, 0.0)  # rows cropped off the top
    cams = cams.image_transform(img_crop(0, top) @ img_resize(scale, scale), image_size=(resized_h - top, w))
    return MultiViewCameras.stack([cams.to(dtype=torch.float32)] * batch)


def random_gt(num_boxes: int, generator) -> tuple:
    """``num_boxes`` random boxes (LiDARBoxes (G, 9) ``[x, y, z_bottom, l, w, h, yaw, vx, vy]``) and
    labels (G,) int64: nuScenes mean sizes of random classes, centres on the ground (z = -1.84 m in
    the LiDAR frame) with x, y uniform in [-50, 50] m, yaw uniform, speed ~ N(0, 2 m/s) per axis
    (0 for traffic cones and barriers)."""
    import torch

    from sf3d.datasets.synthetic_nuscenes import CLASS_SIZES_WLH, CLASSES
    from sf3d.structures import LiDARBoxes

    labels = torch.randint(len(CLASSES), (num_boxes,), generator=generator)
    wlh = torch.tensor([CLASS_SIZES_WLH[CLASSES[i]] for i in labels.tolist()]).reshape(num_boxes, 3)  # (G, 3)
    xy = torch.rand(num_boxes, 2, generator=generator) * 100 - 50  # (G, 2)
    z = torch.full((num_boxes, 1), -1.84)
    yaw = (torch.rand(num_boxes, 1, generator=generator) * 2 - 1) * math.pi
    static = torch.tensor([CLASSES[i] in ('traffic_cone', 'barrier') for i in labels.tolist()])
    velocity = torch.randn(num_boxes, 2, generator=generator) * 2 * (~static).float()[:, None]  # (G, 2)
    boxes = torch.cat([xy, z, wlh[:, [1, 0, 2]], yaw, velocity], dim=1)  # (G, 9): l, w, h from w, l, h
    return LiDARBoxes(boxes), labels


PREV_DT, PREV_EGO_STEP = 0.5, 5.0  # the previous key frame of a two-frame config: 0.5 s, 5 m behind


def synthetic_batch(shape: tuple[int, int], batch: int, num_boxes: int, device: str, seed: int = 0,
                    num_frames: int = 1):
    """(inputs ``dict(img=(B, F * 6, 3, H, W))``, data_samples ``dict(cameras, gt_bboxes_3d, gt_labels_3d,
    token, pad_shape)`` + ``time_delta`` with two frames) as ``sf3d.multiview_collate`` returns them,
    on ``device``."""
    import torch

    from sf3d.structures import MultiViewCameras

    g = torch.Generator().manual_seed(seed)
    cameras = nuscenes_cameras(shape, batch)
    extra = {}
    if num_frames == 2:  # previous views: a point p of the current LiDAR frame was at p + step x then
        behind = torch.eye(4)
        behind[0, 3] = PREV_EGO_STEP
        prev = MultiViewCameras(cameras.cam2img, cameras.lidar2cam @ behind, cameras.image_size)
        cameras = MultiViewCameras(*(torch.cat([a, b], 1) for a, b in zip(
            (cameras.cam2img, cameras.lidar2cam, cameras.image_size), (prev.cam2img, prev.lidar2cam, prev.image_size))))
        extra = dict(time_delta=[PREV_DT] * batch)
    elif num_frames != 1:
        raise ValueError(f'synthetic_batch: num_frames must be 1 or 2, got {num_frames}')
    gt = [random_gt(num_boxes, g) for _ in range(batch)]
    img = torch.randn(batch, cameras.num_cams, 3, *shape, generator=g)  # (B, F * N, 3, H, W)
    samples = dict(cameras=cameras.to(device=device), gt_bboxes_3d=[b for b, _ in gt],
                   gt_labels_3d=[lab for _, lab in gt], token=[f'bench{i}' for i in range(batch)],
                   pad_shape=[shape] * batch, **extra)
    return dict(img=img.to(device)), samples


# ---------------------------------------------------------------------------------------------- model
def build_detector(config: str, cfg_options: Optional[dict] = None):
    """Build ``cfg.model`` of a config (a MultiViewDetector) with random weights."""
    from mmengine.registry import DefaultScope

    from sf3d.engine import load_run_config
    from sf3d.models.detectors.multiview_detector import MultiViewDetector
    from sf3d.registry import MODELS

    cfg = load_run_config(config, cfg_options=cfg_options)
    backbone = cfg.model.get('backbone', {})
    for key in ('pretrained', 'init_cfg'):  # ResNet loads `pretrained` when built; no weights are needed
        if key in backbone:
            backbone[key] = None
    with DefaultScope.overwrite_default_scope('sf3d'):
        model = MODELS.build(cfg.model)
    if not isinstance(model, MultiViewDetector):
        raise ValueError(f'{config}: model type {cfg.model.get("type")!r} is not a MultiViewDetector; '
                         f'benchmark_detector.py times multi-view 3D detector configs (configs/nuscenes/*.py)')
    return model


def measure(config: str, shape, *, device: str = 'cpu', amp: bool = False, batch: int = 1, warmup: int = 1,
            iters: int = 3, threads: int = 0, clock: str = 'wall', num_boxes: int = 30,
            cfg_options: Optional[dict] = None, log: Optional[Callable[[str], None]] = None) -> dict:
    """Build one config's detector and time its train step and inference in THIS process.

    Returns dict(config, config_path, shape 'HxW', device, amp, batch, clock, torch_threads,
    params_m, trainable_params_m, train_s and infer_s (median seconds per sample), train_times_s and
    infer_times_s (seconds per step), peak_mem_mib, mem ('cuda_max_allocated' or 'rss_growth'),
    loss (the last train step's summed loss)). ``log`` receives one line per step.
    """
    import gc

    import torch

    shape = check_shape(shape)
    if batch < 1 or warmup < 0 or iters < 1 or num_boxes < 0:
        raise ValueError(f'need batch >= 1, warmup >= 0, iters >= 1, num_boxes >= 0; got batch={batch}, '
                         f'warmup={warmup}, iters={iters}, num_boxes={num_boxes}')
    if clock not in ('wall', 'cpu'):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    cuda = device.startswith('cuda')
    if cuda and not torch.cuda.is_available():
        raise RuntimeError(f'device={device!r} but torch.cuda.is_available() is False; use --device cpu')
    if threads > 0:
        torch.set_num_threads(threads)
    log = log or (lambda line: None)
    name = config_name(config)
    timer = time.process_time if clock == 'cpu' else time.perf_counter

    torch.manual_seed(0)
    model = build_detector(config, cfg_options).to(device)
    inputs, samples = synthetic_batch(shape, batch, num_boxes, device, num_frames=model.num_frames)
    predict_samples = {k: v for k, v in samples.items() if not k.startswith('gt_')}
    autocast_device = 'cuda' if cuda else 'cpu'

    def sync():
        if cuda:
            torch.cuda.synchronize()

    losses_seen = []

    def train_step() -> None:
        with torch.autocast(autocast_device, dtype=torch.bfloat16, enabled=amp):
            losses = model(inputs, samples, mode='loss')
        total = sum(losses.values())
        total.backward()
        model.zero_grad(set_to_none=True)
        sync()
        losses_seen.append(total.item())

    def infer_step() -> None:
        with torch.no_grad(), torch.autocast(autocast_device, dtype=torch.bfloat16, enabled=amp):
            model(inputs, predict_samples, mode='predict')
        sync()

    def timed(phase: str, step: Callable) -> list[float]:
        times = []
        for i in range(warmup + iters):
            start = timer()
            step()
            elapsed = timer() - start
            if i >= warmup:
                times.append(elapsed)
            log(f'{name} {phase} step {i + 1}/{warmup + iters}'
                f'{" (warm-up)" if i < warmup else ""}: {elapsed:.3f} s')
        return times

    model.train()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    with PeakMemory(cuda) as peak:
        train_times = timed('train', train_step)
    model.eval()
    infer_times = timed('infer', infer_step)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return dict(config=name, config_path=config, shape=f'{shape[0]}x{shape[1]}', device=device, amp=amp,
                batch=batch, clock=clock, torch_threads=torch.get_num_threads(), params_m=params / 1e6,
                trainable_params_m=trainable / 1e6, train_s=statistics.median(train_times) / batch,
                infer_s=statistics.median(infer_times) / batch, train_times_s=train_times,
                infer_times_s=infer_times, peak_mem_mib=peak.mib,
                mem='cuda_max_allocated' if cuda else 'rss_growth', loss=losses_seen[-1])


# ---------------------------------------------------------------------------------------------- report
def merge_rounds(runs: list[dict]) -> dict:
    """One row from a config's rounds: median of the round medians, max of the peaks."""
    if any('error' in r for r in runs):
        return next(r for r in runs if 'error' in r)
    row = dict(runs[0])
    for key in ('train_s', 'infer_s'):
        row[key] = statistics.median(r[key] for r in runs)
        row[f'{key}_rounds'] = [r[key] for r in runs]
    row['peak_mem_mib'] = max(r['peak_mem_mib'] for r in runs)
    row['train_times_s'] = [t for r in runs for t in r['train_times_s']]
    row['infer_times_s'] = [t for r in runs for t in r['infer_times_s']]
    return row


def add_ratios(rows: list[dict]) -> list[dict]:
    """Set ``train_ratio`` / ``infer_ratio``: each row's time over the first successful row's."""
    ok = [r for r in rows if 'error' not in r]
    for row in ok:
        row['train_ratio'] = row['train_s'] / ok[0]['train_s']
        row['infer_ratio'] = row['infer_s'] / ok[0]['infer_s']
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Rows (with ratios, :func:`add_ratios`) -> a markdown table, one line per config."""
    ok = [r for r in rows if 'error' not in r]
    first = ok[0]['config'] if ok else 'first'
    cuda = any(r.get('mem') == 'cuda_max_allocated' for r in ok)
    mem = 'train peak mem (MiB, CUDA max allocated)' if cuda else 'train peak RSS growth (MiB)'
    clock = 'CPU s' if any(r.get('clock') == 'cpu' for r in ok) else 's'
    columns = ['config', 'shape', 'params (M)', f'train fwd+bwd ({clock}/sample)', f'train vs {first}', mem,
               f'infer ({clock}/sample)', f'infer vs {first}']

    def cells(r: dict) -> list[str]:
        return [r['config'], r['shape'], f"{r['params_m']:.2f}", f"{r['train_s']:.3g}", f"{r['train_ratio']:.2f}",
                f"{r['peak_mem_mib']:.0f}", f"{r['infer_s']:.3g}", f"{r['infer_ratio']:.2f}"]

    lines = markdown_lines(columns, rows, cells, lambda r: [r['config'], r.get('shape', '')])
    if ok:
        r = ok[0]
        lines.append(f"\n{r['device']}, {'bf16 autocast' if r['amp'] else 'fp32'}, batch {r['batch']} "
                     f"(6 views per sample), {r['torch_threads']} torch threads, {r['clock']} clock; "
                     f'times are medians per sample.')
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------- CLI
def run_worker(job: dict, echo: Callable[[str], None]) -> dict:
    """Run :func:`measure` on ``job`` (its keyword arguments + ``config``, ``shape``) in a fresh
    Python process; progress lines go to ``echo``. Returns measure's dict or dict(error=...)."""
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', json.dumps(job)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    result, tail = None, collections.deque(maxlen=20)
    for line in proc.stdout:
        line = line.rstrip('\n')
        if line.startswith(PROGRESS):
            echo(line[len(PROGRESS):])
        elif line.startswith('{'):
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                tail.append(line)
        elif line.strip():
            tail.append(line)
    code = proc.wait()
    if code or result is None:
        return dict(config=config_name(job['config']), shape='{}x{}'.format(*job['shape']),
                    error=f'worker exited {code}: {tail[-1] if tail else "no output"}')
    return result


def worker_main(job_json: str) -> None:
    job = json.loads(job_json)
    config, shape = job.pop('config'), job.pop('shape')
    log = lambda line: print(PROGRESS + line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        result = measure(config, shape, log=log, **job)
    except Exception as e:  # reported in the table, not fatal for the other configs
        import traceback
        traceback.print_exc()
        result = dict(config=config_name(config), shape='{}x{}'.format(*shape),
                      error=f'{type(e).__name__}: {str(e)[:300]}')
    print(json.dumps(result), flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--configs', nargs='+', default=DEFAULT_CONFIGS,
                        help='detector configs; the ratio columns divide by the first')
    parser.add_argument('--shape', type=int, nargs=2, default=[448, 800], metavar=('H', 'W'),
                        help='input size per view, multiples of 32 (928 1600 for 1600x900 padded)')
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--amp', action='store_true', help='bf16 autocast (CPU and CUDA)')
    parser.add_argument('--batch', type=int, default=1, help='samples (of 6 views) per step')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps per phase')
    parser.add_argument('--iters', type=int, default=3, help='timed steps per phase and round')
    parser.add_argument('--rounds', type=int, default=1,
                        help='repeat the config list this many times (interleaved, each in a fresh process) and '
                             'report the median of the per-round medians; guards against load changes')
    parser.add_argument('--num-boxes', type=int, default=30, help='random GT boxes per sample')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    parser.add_argument('--clock', default='wall', choices=['wall', 'cpu'],
                        help="'cpu': process CPU time instead of wall time (robust to other load with --threads 1)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override keys of every config, e.g. model.backbone.with_cp=True')
    parser.add_argument('--json', default=None, help='write the rows as a JSON list here')
    parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    try:
        check_shape(args.shape)
    except ValueError as e:
        parser.error(f'--shape: {e}')
    for name in ('batch', 'iters', 'rounds'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be >= 1, got {getattr(args, name)}')
    if args.warmup < 0 or args.num_boxes < 0:
        parser.error(f'--warmup and --num-boxes must be >= 0, got {args.warmup} and {args.num_boxes}')
    if args.device == 'cuda' and args.clock == 'cpu':
        parser.error('--clock cpu measures CPU time; use the wall clock on CUDA')
    missing = [c for c in args.configs if not os.path.isfile(c)]
    if missing:
        parser.error(f'config file(s) not found: {missing}')
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return

    from tqdm import tqdm

    options = dict(device=args.device, amp=args.amp, batch=args.batch, warmup=args.warmup, iters=args.iters,
                   threads=args.threads, clock=args.clock, num_boxes=args.num_boxes, cfg_options=args.cfg_options)
    jobs = [(r, i, config) for r in range(args.rounds) for i, config in enumerate(args.configs)]
    results = [[] for _ in args.configs]  # a config listed twice gets two rows (a noise check)
    bar = tqdm(jobs, desc='benchmark', unit='run')
    for round_index, index, config in bar:
        bar.set_postfix_str(f'round {round_index}: {config_name(config)}')
        result = run_worker(dict(options, config=config, shape=list(args.shape)),
                            echo=lambda line: tqdm.write(f'  {line}', file=sys.stderr))
        results[index].append(result)
        status = result.get('error') or (f"train {result['train_s']:.3g} s/sample, peak {result['peak_mem_mib']:.0f} "
                                         f"MiB, infer {result['infer_s']:.3g} s/sample")
        tqdm.write(f'round {round_index}: {config_name(config)}: {status}', file=sys.stderr)
    rows = add_ratios([merge_rounds(runs) for runs in results])
    print(markdown_table(rows))
    if args.json:
        write_json(rows, args.json)


if __name__ == '__main__':
    main()
