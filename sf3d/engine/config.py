"""Loading a run's config the same way in every tool (train, test, analysis)."""
import importlib.util
import os.path as osp
from typing import List, Optional

from mmengine.config import Config, ConfigDict


def load_run_config(path: str, *, cfg_options: Optional[dict] = None, launcher: str = 'none',
                    work_dir: Optional[str] = None) -> Config:
    """Read ``path``, apply ``--cfg-options`` and set ``launcher`` and ``work_dir``
    (default ``work_dirs/<config name>``). A true top-level ``tensorboard`` key (in the file or
    ``--cfg-options tensorboard=True``) adds TensorBoard logging (:func:`enable_tensorboard`)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file not found: {path}')
    cfg = Config.fromfile(path)
    cfg.merge_from_dict(cfg_options or {})
    if cfg.get('tensorboard', False):
        enable_tensorboard(cfg)
    cfg.launcher = launcher
    cfg.work_dir = work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg


def enable_tensorboard(cfg: Config) -> None:
    """Append mmengine's ``TensorboardVisBackend`` to ``cfg.visualizer.vis_backends`` (once): the
    scalars of ``vis_data/scalars.json`` then also go to a TensorBoard event file beside it."""
    if importlib.util.find_spec('tensorboard') is None:
        raise ImportError('tensorboard=True needs the tensorboard package: pip install sf3d[tensorboard] '
                          '(or pip install tensorboard)')
    visualizer = cfg.setdefault('visualizer', ConfigDict(type='Visualizer'))
    backends = visualizer.setdefault('vis_backends', [dict(type='LocalVisBackend')])
    if not any(b.get('type') == 'TensorboardVisBackend' for b in backends):
        backends.append(ConfigDict(type='TensorboardVisBackend'))


def metrics_of_test_evaluator(cfg: Config) -> List[ConfigDict]:
    """The metric configs of ``cfg.test_evaluator`` (a dict or a list of dicts), editable in place."""
    evaluator = cfg.get('test_evaluator')
    metrics = [evaluator] if isinstance(evaluator, dict) else list(evaluator or [])
    if not metrics or not all(isinstance(m, dict) for m in metrics):
        raise ValueError(f'test_evaluator must be a metric dict or a list of them, got {evaluator!r}')
    return metrics
