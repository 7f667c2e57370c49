"""Backbone latency, throughput, peak memory, params and GMACs of SpatialFormer and timm baselines.

Usage:
    python tools/analysis/benchmark.py [--sizes 224x224 448x800] \
        [--models sf_t sf_s sf_b pvt_v2_b2 swin_tiny_patch4_window7_224 twins_svt_small resnet50] \
        [--device cpu|cuda] [--warmup 3] [--iters 10] [--rounds 1] [--threads 0] [--json OUT]

Each (model, size) runs in a FRESH subprocess that first times the forward pass and only
then counts FLOPs (a FLOP-counting pass slows later timings in the same process).
Backbone only: image features (SpatialFormer's ``forward``, timm ``features_only=True``;
timm models are built with pretrained=False, and with ``img_size`` where the model has a
fixed input size, e.g. Swin). Batch 1 (``--batch``), fp32 on CPU, bf16 autocast on CUDA.

Columns: latency = median ms per forward (with ``--rounds R``: the median over rounds of
each round's median; the job list runs R times interleaved, so a burst of load from
other processes spoils one round, not one model); throughput = batch / median latency (img/s);
peak memory = CUDA ``max_memory_allocated`` on GPU; on CPU the peak resident set size
(Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` right before warm-up) minus
the RSS at that moment, i.e. what the forward passes add on top of weights and
libraries (activations, allocator caches);
GMACs = FlopCounterMode FLOPs / 2 counted under ``sdpa_kernel(SDPBackend.MATH)``.

``--threads 1 --clock cpu`` times single-threaded CPU time instead of wall time: on a
machine shared with other jobs, multi-threaded wall times can be several times too high.

A SpatialFormer entry may carry constructor options: ``sf_s:image_pos=('sine',)``
or ``sf_s:mlp_ratios=(4,4,4,4):stage3_sr_ratio=2`` (values are Python literals).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # a script's folder is on sys.path; not when loaded by path (tests/tool_loader.py)
    sys.path.insert(0, HERE)
from bench_utils import PeakMemory, markdown_lines, write_json  # noqa: E402

DEFAULT_MODELS = ['sf_t', 'sf_s', 'sf_b', 'pvt_v2_b2', 'swin_tiny_patch4_window7_224', 'twins_svt_small',
                  'resnet50']
SF_ARCHS = {'sf_t': 't', 'sf_s': 's', 'sf_b': 'b'}


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must look like 224x224 (HxW), got {text!r}') from None
    return h, w


def parse_model_spec(spec: str) -> tuple[str, dict]:
    """'sf_s:image_pos=("sine",)' -> ('sf_s', {'image_pos': ('sine',)})."""
    name, *options = spec.split(':')
    kwargs = {}
    for option in options:
        key, sep, value = option.partition('=')
        if not sep:
            raise ValueError(f'model option {option!r} in {spec!r} must be key=value')
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    if kwargs and name not in SF_ARCHS:
        raise ValueError(f'options are only supported for {sorted(SF_ARCHS)}, got {spec!r}')
    return name, kwargs


def build_model(spec: str, size: tuple[int, int]):
    """Return (model, forward_fn) for a model spec at an input size."""
    name, kwargs = parse_model_spec(spec)
    if name in SF_ARCHS:
        from sf3d.models import SpatialFormer
        model = SpatialFormer(arch=SF_ARCHS[name], **kwargs)
        return model, lambda x: model(x)['features']
    import timm
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    extra = {}
    if pretrained_cfg is not None and pretrained_cfg.fixed_input_size and tuple(pretrained_cfg.input_size[1:]) != size:
        extra['img_size'] = size
    model = timm.create_model(name, pretrained=False, features_only=True, **extra)
    return model, model


def worker(spec: str, size: tuple[int, int], device: str, warmup: int, iters: int, batch: int, threads: int,
           clock: str, count: bool) -> dict:
    """Time one model at one size in this (fresh) process, then (if ``count``) count its FLOPs."""
    import torch

    from sf3d.utils.flops import count_params_flops

    if threads > 0:
        torch.set_num_threads(threads)
    result = dict(model=spec, size=f'{size[0]}x{size[1]}', device=device, batch=batch, clock=clock)
    timer = time.process_time if clock == 'cpu' else time.perf_counter
    try:
        model, forward = build_model(spec, size)
    except Exception as e:  # a model that cannot be built at this size is reported, not fatal
        return dict(result, error=f'build failed: {type(e).__name__}: {e}')
    model = model.eval().to(device)
    images = torch.randn(batch, 3, *size, device=device)
    cuda = device.startswith('cuda')
    autocast = torch.autocast('cuda', dtype=torch.bfloat16, enabled=cuda)

    def run():
        with torch.inference_mode(), autocast:
            forward(images)
        if cuda:
            torch.cuda.synchronize()

    try:
        with PeakMemory(cuda) as peak:
            for _ in range(warmup):
                run()
            times = []
            for _ in range(iters):
                start = timer()
                run()
                times.append(timer() - start)
    except Exception as e:
        return dict(result, error=f'forward failed: {type(e).__name__}: {str(e)[:200]}')
    latency = statistics.median(times)
    result.update(latency_ms=latency * 1e3, latency_min_ms=min(times) * 1e3, peak_mem_mib=peak.mib,
                  torch_threads=torch.get_num_threads())
    if count:
        counted = count_params_flops(_as_module(forward, model.float()), images.float())
        result.update(params_m=counted['params'] / 1e6, gmacs=counted['flops'] / 2 / batch / 1e9)
    return result


def _as_module(forward, model):
    """Wrap ``forward`` in an nn.Module owning ``model`` (for parameter counting)."""
    import torch.nn as nn

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return forward(x)

    return Wrapper()


def merge_rounds(runs: list[dict]) -> dict:
    """One row from the rounds of a (model, size): median of the round medians; the first round's counts."""
    if any('error' in r for r in runs):
        return next(r for r in runs if 'error' in r)
    row = dict(runs[0])
    medians = [r['latency_ms'] for r in runs]
    row.update(latency_ms=statistics.median(medians), round_medians_ms=medians,
               latency_min_ms=min(r['latency_min_ms'] for r in runs),
               peak_mem_mib=max(r['peak_mem_mib'] for r in runs))
    row['throughput'] = row['batch'] / (row['latency_ms'] / 1e3)
    return row


def markdown_table(rows: list[dict], device: str, clock: str = 'wall') -> str:
    mem = 'peak mem (MiB, CUDA alloc)' if device.startswith('cuda') else 'peak RSS growth (MiB)'
    latency = 'latency (ms, median)' if clock == 'wall' else 'CPU time (ms, median)'
    columns = ['model', 'size', latency, 'throughput (img/s)', mem, 'params (M)', 'GMACs']

    def cells(r: dict) -> list[str]:
        return [r['model'], r['size'], f"{r['latency_ms']:.1f}", f"{r['throughput']:.2f}", f"{r['peak_mem_mib']:.0f}",
                f"{r['params_m']:.2f}", f"{r['gmacs']:.2f}"]

    return '\n'.join(markdown_lines(columns, rows, cells, lambda r: [r['model'], r['size']]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', nargs='+', type=parse_size, default=[(224, 224), (448, 800)])
    parser.add_argument('--models', nargs='+', default=DEFAULT_MODELS)
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=1,
                        help='repeat the whole model list this many times (interleaved, each in a fresh process) '
                             'and report the median of the per-round medians; guards against load changes')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    parser.add_argument('--clock', default='wall', choices=['wall', 'cpu'],
                        help="'cpu': process CPU time per forward instead of wall time; with --threads 1 it "
                             'equals the latency on an idle machine and is robust to other load')
    parser.add_argument('--json', default=None, help='write the results as a JSON list here')
    parser.add_argument('--worker', nargs=2, metavar=('MODEL', 'SIZE'), help=argparse.SUPPRESS)
    parser.add_argument('--count', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == 'cuda' and args.clock == 'cpu':
        parser.error('--clock cpu measures CPU time; use the wall clock on CUDA')

    if args.worker:
        spec, size = args.worker
        print(json.dumps(worker(spec, parse_size(size), args.device, args.warmup, args.iters, args.batch,
                                args.threads, args.clock, args.count)))
        return

    from tqdm import tqdm

    for spec in args.models:
        parse_model_spec(spec)  # fail early on a malformed spec
    jobs = [(r, spec, size) for r in range(args.rounds) for size in args.sizes for spec in args.models]
    results = {}
    for round_index, spec, size in tqdm(jobs, desc='benchmark', unit='run'):
        key = (spec, f'{size[0]}x{size[1]}')
        cmd = [sys.executable, os.path.abspath(__file__), '--worker', spec, key[1], '--device', args.device,
               '--warmup', str(args.warmup), '--iters', str(args.iters), '--batch', str(args.batch),
               '--threads', str(args.threads), '--clock', args.clock] + (['--count'] if round_index == 0 else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith('{')]
        if proc.returncode or not lines:
            tail = (proc.stderr.strip().splitlines() or ['no output'])[-1]
            result = dict(model=spec, size=key[1], error=f'worker exited {proc.returncode}: {tail}')
        else:
            result = json.loads(lines[-1])
        results.setdefault(key, []).append(result)
        status = result.get('error') or f"{result['latency_ms']:.1f} ms"
        tqdm.write(f'round {round_index}: {spec} {key[1]}: {status}', file=sys.stderr)
    rows = [merge_rounds(runs) for runs in results.values()]
    print(markdown_table(rows, args.device, args.clock))
    if args.json:
        write_json(rows, args.json)


if __name__ == '__main__':
    main()
