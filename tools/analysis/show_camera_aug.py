"""Draw what a config's ``CameraRigAug`` does to one training sample: each chosen view as loaded and
as augmented, with the GT boxes projected through the cameras of each (they must sit on the objects
in both rows: the augmentation keeps the calibration exact).

    python tools/analysis/show_camera_aug.py configs/synthetic/nuscenes_tiny_rig.py --index 5 \
        --views 0 1 3 --seed 3 --out docs/rig/camera_rig_aug.png [--cfg-options k=v ...]

The training pipeline runs up to ``CameraRigAug`` (``--aug`` overrides its arguments, e.g.
``--aug zoom=0.85,1.15 rot_deg=3,4,3``); the sample's draw comes from ``np.random.seed(--seed)``.
"""
from __future__ import annotations

import argparse
import copy
import os
import os.path as osp
import sys
from typing import Optional, Sequence

import numpy as np

AUG = 'CameraRigAug'


def _pipelines(pipeline: Sequence[dict], aug_args: Optional[dict]):
    """(steps before CameraRigAug, the CameraRigAug step) of a training pipeline."""
    names = [str(t.get('type')) for t in pipeline]
    if AUG not in names:
        raise ValueError(f'the training pipeline {names} has no {AUG} step (use a config with one, e.g. '
                         'configs/synthetic/nuscenes_tiny_rig.py)')
    i = names.index(AUG)
    aug = dict(copy.deepcopy(pipeline[i]), **(aug_args or {}))
    before = [copy.deepcopy(t) for t in pipeline[:i] if t.get('type') not in ('Pack3DDetInputs',)]
    return before, aug


def _parse_aug(items: Optional[Sequence[str]]) -> dict:
    out = {}
    for item in items or ():
        key, sep, value = item.partition('=')
        if not sep or key not in ('zoom', 'shift', 'rot_deg', 'prob'):
            raise ValueError(f'--aug {item!r}: expected zoom=LO,HI, shift=DU,DV, rot_deg=R,P,Y or prob=P')
        numbers = [float(v) for v in value.split(',')]
        out[key] = numbers[0] if len(numbers) == 1 else tuple(numbers)
    return out


def draw(config: str, index: int, views: Sequence[int], seed: int, out: str, aug_args: Optional[dict] = None,
         cfg_options: Optional[dict] = None) -> dict:
    """Run the pipeline, draw the PNG; returns ``dict(before, after)`` (the two results dicts)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from sf3d.registry import DATASETS, TRANSFORMS
    from sf3d.structures import LiDARBoxes
    tools_dir = osp.dirname(osp.dirname(osp.abspath(__file__)))
    if tools_dir not in sys.path:
        sys.path.insert(0, tools_dir)
    from visualize import camera_segments

    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    dataset_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    before_steps, aug_cfg = _pipelines(dataset_cfg.pipeline, aug_args)
    dataset_cfg.pipeline = before_steps
    with DefaultScope.overwrite_default_scope('sf3d'):
        dataset = DATASETS.build(dict(dataset_cfg, serialize_data=False))
        aug = TRANSFORMS.build(aug_cfg)
    if not 0 <= index < len(dataset):
        raise IndexError(f'--index {index} is outside the {len(dataset)} training samples')
    before = dataset[index]
    if any(not 0 <= v < len(before['img']) for v in views):
        raise ValueError(f'--views {list(views)}: the sample has {len(before["img"])} views')
    np.random.seed(seed)
    after = aug(copy.deepcopy(before))
    boxes = before['gt_bboxes_3d']
    corners = (boxes if isinstance(boxes, LiDARBoxes) else LiDARBoxes(boxes)).corners.numpy()  # (G, 8, 3)
    fig, axes = plt.subplots(2, len(views), figsize=(5 * len(views), 6), squeeze=False)
    record = after['camera_aug']
    for col, view in enumerate(views):
        for row, res in enumerate((before, after)):
            ax = axes[row, col]
            img = res['img'][view]
            ax.imshow(np.clip(img, 0, 255).astype(np.uint8))
            cams = res['cameras']
            for seg in camera_segments(corners, cams.cam2img[view].numpy(), cams.lidar2cam[view].numpy()):
                for (u0, v0), (u1, v1) in seg:  # pixel centres at j + 0.5 -> imshow's j
                    ax.plot([u0 - 0.5, u1 - 0.5], [v0 - 0.5, v1 - 0.5], color='lime', linewidth=0.8)
            ax.set_xlim(0, img.shape[1])
            ax.set_ylim(img.shape[0], 0)
            ax.axis('off')
            if row == 0:
                ax.set_title(f'view {view} as loaded, GT boxes', fontsize=8)
            else:
                ax.set_title(f"{AUG}: zoom {record['zoom'][view]:.2f}, shift {np.round(record['shift'][view], 1)} px, "
                             f"roll/pitch/yaw {np.round(record['rot_deg'][view], 1)} deg", fontsize=8)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return dict(before=before, after=after)


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=f'Draw a training sample before and after {AUG}')
    parser.add_argument('config', help='a config whose training pipeline has CameraRigAug')
    parser.add_argument('--index', type=int, default=0, help='training sample index')
    parser.add_argument('--views', type=int, nargs='+', default=[0, 1, 3], help='view indices to draw')
    parser.add_argument('--seed', type=int, default=0, help='np.random seed of the draw')
    parser.add_argument('--aug', nargs='+', default=None, help='override CameraRigAug arguments, e.g. zoom=0.8,1.2')
    parser.add_argument('--out', required=True, help='PNG to write')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = draw(args.config, args.index, args.views, args.seed, args.out, _parse_aug(args.aug), args.cfg_options)
    print(f'written: {args.out}')
    return result


if __name__ == '__main__':
    main()
