"""How well a detector's dense two-frame motion measures velocity, and which part of it fails.

    python tools/analysis/motion_probe.py "motion=work_dirs/m16/motion_s0" [more LABEL=RUN ...] \
        [--split val] [--out TABLE.md]

Each ``LABEL=RUN`` is a trained ``MultiViewDetector(motion=...)``: a ``tools/train.py`` work dir or
a checkpoint in one (as ``query_coverage.py``). For every GT box of the split (the training
pipeline's GT filters) whose centre a current view sees, in samples that have a previous frame,
the velocity is read from the motion maps at the GT centre as the detector reads it for its own
boxes (``sf3d.models.layers.motion``: the centre's pixel moved by the flow, at its depth times the
depth ratio, unprojected through the previous camera), with the parts swapped one at a time:

==========  ==============================================================================
predicted   the model's flow and depth ratio
gt_ratio    the model's flow, the GT depth ratio: what the flow alone gets wrong
gt_flow     the GT flow, the model's depth ratio: what the ratio alone gets wrong
zero        velocity 0: what predicting "static" scores
==========  ==============================================================================

The table gives the mean velocity error (m/s) over the (view, GT) pairs: all, moving (GT speed
above 1 m/s) and static. Reading at the GT centre leaves the detector's centre error out.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
from typing import Dict, List, Sequence, Tuple

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from query_coverage import coverage_dataset_cfg, emit, parse_entry, runs_parser  # noqa: E402

VARIANTS = ('predicted', 'gt_ratio', 'gt_flow', 'zero')
MOVING = 1.0  # m/s: GT speed above which a box counts as moving


def probe_sample(flow: torch.Tensor, log_ratio: torch.Tensor, boxes: torch.Tensor, cur, prev, dt: float,
                 image_size: Sequence[int]) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """One sample: flow (N, 2, h, w), log_ratio (N, h, w) its motion maps, boxes (G, 9) GT, cur / prev
    its N current and previous views (one sample's MultiViewCameras), dt seconds ->
    (per variant the velocity errors (P,) m/s, GT speeds (P,)) over the P (view, GT) pairs whose
    centre the view sees (in front of both cameras, inside the current image)."""
    from sf3d.models.layers.motion import centre_motion, sample_motion
    from sf3d.structures import LiDARBoxes

    centres = LiDARBoxes(boxes.float(), validate=False).gravity_center  # (G, 3)
    velocity = boxes[:, 7:9].float()  # (G, 2)
    uv1, z1, uv0, z0 = centre_motion(centres, velocity, cur, prev, dt)  # (N, G, 2), (N, G) each frame
    seen = cur.in_image(uv1, z1, tuple(image_size)) & (z1 > 0.1) & (z0 > 0.1)  # (N, G)
    f, r = (x[0] for x in sample_motion(flow[None], log_ratio[None], uv1[None], image_size))  # (N, G, 2), (N, G)
    reads = dict(predicted=(uv1 + f, z1 * r.exp()), gt_ratio=(uv1 + f, z0), gt_flow=(uv0, z1 * r.exp()))
    errors = {}
    for name, (uv, z) in reads.items():
        before = prev.unproject(uv, z)  # (N, G, 3)
        errors[name] = ((centres[None, :, :2] - before[..., :2]) / dt - velocity[None]).norm(dim=-1)[seen]
    speed = velocity.norm(dim=-1)[None].expand_as(seen)[seen]  # (P,)
    errors['zero'] = speed.clone()
    return errors, speed


@torch.no_grad()
def measure(config: str, checkpoint: str, split: str = 'val', progress: bool = True) -> dict:
    """Per variant the errors (P,) of one model, and ``speed`` (P,)."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from tqdm import tqdm

    from sf3d.datasets.transforms.formatting import multiview_collate
    from sf3d.models.layers.temporal import frame_time_deltas
    from sf3d.registry import DATASETS, MODELS
    from sf3d.utils.checkpoint import load_state_dict_strict, unwrap_state_dict

    cfg = Config.fromfile(config)
    if cfg.model.get('motion') is None or cfg.model.get('num_frames', 1) != 2:
        raise ValueError(f'motion_probe: {config} builds a detector without dense motion (model.motion and '
                         f'num_frames=2, e.g. configs/synthetic/nuscenes_tiny_motion.py)')
    with DefaultScope.overwrite_default_scope('sf3d'):
        model = MODELS.build(cfg.model).eval()
        dataset = DATASETS.build(dict(coverage_dataset_cfg(cfg, split), serialize_data=False))
    state = unwrap_state_dict(torch.load(checkpoint, map_location='cpu', weights_only=False))
    load_state_dict_strict(model, state, source=checkpoint, name=f'motion_probe ({config})')
    out = {k: [] for k in VARIANTS + ('speed',)}
    for i in tqdm(range(len(dataset)), desc=osp.basename(osp.dirname(checkpoint)) or 'motion', unit='sample',
                  file=sys.stderr, disable=not progress):
        data = model.data_preprocessor(multiview_collate([dataset[i]]), False)
        img, samples = data['inputs']['img'], data['data_samples']
        dt = frame_time_deltas(samples, 1, 2, img.device)  # (1, 2)
        boxes, _ = model._ground_truth(samples, img.device)
        if float(dt[0, 1]) == 0 or boxes[0].shape[0] == 0:
            continue
        cameras = model._cameras(samples, 1, img.shape[1], img.device)
        motion = model.forward_outputs(img, cameras, frame_dt=dt)['motion']
        N = img.shape[1] // 2
        one = cameras.sample(0)
        errors, speed = probe_sample(motion['flow'][0], motion['log_ratio'][0], boxes[0], one.select(slice(0, N)),
                                     one.select(slice(N, None)), float(dt[0, 1]), img.shape[-2:])
        for k, v in errors.items():
            out[k].append(v)
        out['speed'].append(speed)
    return {k: torch.cat(v) if v else torch.zeros(0) for k, v in out.items()}


def table(rows: Sequence[Tuple[str, dict]]) -> str:
    """Markdown: a row per model and variant, mean errors (m/s) over all / moving / static pairs."""
    lines = ['| model | read | pairs | all (m/s) | moving (m/s) | static (m/s) |', '|---|---|---|---|---|---|']
    for label, d in rows:
        moving = d['speed'] > MOVING
        for name in VARIANTS:
            e = d[name]
            cells = [float(x.mean()) if x.numel() else float('nan') for x in (e, e[moving], e[~moving])]
            lines.append(f'| {label} | {name} | {e.numel()} | ' + ' | '.join(f'{c:.2f}' for c in cells) + ' |')
    return '\n'.join(lines) + '\n'


def parse_args(argv=None) -> argparse.Namespace:
    return runs_parser('Velocity errors of the dense two-frame motion (module docstring)').parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    entries: List[Tuple[str, str, str]] = [parse_entry(text) for text in args.runs]  # all checked first
    return emit(table([(label, measure(config, checkpoint, args.split, not args.no_progress))
                       for label, config, checkpoint in entries]), args.out)


if __name__ == '__main__':
    main()
