"""Loading a run's config the same way in every tool (train, test, analysis)."""
import os.path as osp
from typing import List, Optional

from mmengine.config import Config, ConfigDict


def load_run_config(path: str, *, cfg_options: Optional[dict] = None, launcher: str = 'none',
                    work_dir: Optional[str] = None) -> Config:
    """Read ``path``, apply ``--cfg-options`` and set ``launcher`` and ``work_dir``
    (default ``work_dirs/<config name>``)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file not found: {path}')
    cfg = Config.fromfile(path)
    cfg.merge_from_dict(cfg_options or {})
    cfg.launcher = launcher
    cfg.work_dir = work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg


def metrics_of_test_evaluator(cfg: Config) -> List[ConfigDict]:
    """The metric configs of ``cfg.test_evaluator`` (a dict or a list of dicts), editable in place."""
    evaluator = cfg.get('test_evaluator')
    metrics = [evaluator] if isinstance(evaluator, dict) else list(evaluator or [])
    if not metrics or not all(isinstance(m, dict) for m in metrics):
        raise ValueError(f'test_evaluator must be a metric dict or a list of them, got {evaluator!r}')
    return metrics
