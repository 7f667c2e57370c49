"""Loading a run's config the same way in every tool (train, test, analysis)."""
import os.path as osp
from typing import Optional

from mmengine.config import Config


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
