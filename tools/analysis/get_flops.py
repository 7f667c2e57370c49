"""Parameters and GMACs of a model built from a config, split by submodule and backbone stage.

Usage:
    python tools/analysis/get_flops.py CONFIG [--shape H W] [--cfg-options key=value ...]

Builds ``cfg.model`` with ``sf3d.registry.MODELS`` and feeds a (1, 3, H, W) input
(default 224 x 224) to ``model.backbone`` if the model has one, otherwise to the model.
``--whole`` runs the whole 2D model instead (COCO detectors, ADE20K segmentors: their
``predict`` on one H x W image, as mmdet / mmseg's get_flops do): the heads' cost then counts too,
for detectors with the test settings' proposal and detection numbers of the (random) weights.
GMACs = ``FlopCounterMode`` FLOPs / 2 (one multiply-add = 2 FLOPs = 1 MAC), counted
under ``sdpa_kernel(SDPBackend.MATH)`` so attention is included (see sf3d/utils/flops.py).
Submodules that the input does not reach (e.g. a classification head when only the
backbone runs) show their parameters and '-' for GMACs.
"""
from __future__ import annotations

import argparse

import torch
from mmengine.config import Config, DictAction


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Count parameters and GMACs of a model config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'), help='input size')
    parser.add_argument('--whole', action='store_true',
                        help="count the whole 2D model's predict (backbone, neck and heads) on one image")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config keys, e.g. model.backbone.arch=t')
    return parser.parse_args()


def table_rows(model: torch.nn.Module, counted: dict, prefix: str) -> list[tuple[str, float, float | None]]:
    """(name, params M, GMACs or None) for the model, its top-level children and backbone stages.

    ``counted`` comes from ``count_params_flops`` on the submodule named by ``prefix``
    ('backbone.' or '' for the whole model).
    """
    flops = {prefix + name: value for name, value in counted['by_module'].items()}
    if prefix:
        flops[prefix[:-1]] = counted['flops']
    counted_module = model.get_submodule(prefix[:-1]) if prefix else model
    named = [(name, child) for name, child in model.named_children()]
    if isinstance(getattr(counted_module, 'stages', None), torch.nn.ModuleList):
        named += [(f'{prefix}stages.{i}', stage) for i, stage in enumerate(counted_module.stages)]
    def gmacs(name: str, module: torch.nn.Module) -> float | None:
        if name in flops:
            return flops[name] / 2e9
        if prefix and not name.startswith(prefix):
            return None  # the input never reaches it
        # containers that are never called (ModuleList) and modules without counted ops
        return sum(gmacs(f'{name}.{child_name}', child) or 0. for child_name, child in module.named_children())

    rows = [('total', sum(p.numel() for p in model.parameters()) / 1e6, counted['flops'] / 2e9)]
    for name, module in named:
        rows.append((name, sum(p.numel() for p in module.parameters()) / 1e6, gmacs(name, module)))
    return rows


def whole_model_inputs(h: int, w: int) -> dict:
    """``forward`` keyword arguments of a 2D model (the 2D data contract, sf3d.datasets.transforms.
    formatting2d) predicting one normalised-noise H x W image, unscaled and unpadded."""
    if h % 32 or w % 32:
        raise ValueError(f'--whole: --shape {h} {w} must be multiples of 32 (the 2D models take padded batches)')
    samples = dict(img_path=['flops.jpg'], img_id=[0], ori_shape=[(h, w)], img_shape=[(h, w)],
                   scale_factor=[(1.0, 1.0)], flip=[False], pad_shape=[(h, w)])
    return dict(inputs=torch.randn(1, 3, h, w), data_samples=samples, mode='predict')


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    import sf3d.models  # noqa: F401  (registers the models)
    from sf3d.registry import MODELS
    from sf3d.utils.flops import count_params_flops

    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'sf3d')):  # as the Runner builds it
        model = MODELS.build(cfg.model).eval()
    has_backbone = isinstance(getattr(model, 'backbone', None), torch.nn.Module)
    if args.whole:
        torch.manual_seed(0)
        counted = count_params_flops(model, whole_model_inputs(*args.shape))
        rows, target_name = table_rows(model, counted, ''), 'model (predict)'
    else:
        counted = count_params_flops(model.backbone if has_backbone else model, torch.zeros(1, 3, *args.shape))
        rows = table_rows(model, counted, 'backbone.' if has_backbone else '')
        target_name = 'model.backbone' if has_backbone else 'model'

    print(f'config: {args.config}  input: (1, 3, {args.shape[0]}, {args.shape[1]}) -> {target_name}')
    print('| module | params (M) | GMACs |')
    print('|---|---|---|')
    for name, params, gmacs in rows:
        print(f'| {name} | {params:.2f} | {"-" if gmacs is None else f"{gmacs:.3f}"} |')
    print('GMACs = FlopCounterMode FLOPs / 2, attention counted under SDPBackend.MATH.')


if __name__ == '__main__':
    main()
