"""``load_generator(name)``: the generator module ``sf3d/datasets/<name>.py`` imported from its
file, without importing the ``sf3d.datasets`` package (which pulls in torch), so that the
``make_synthetic_*`` tools start fast. The module is registered under its package name, so a
later ``import sf3d.datasets.<name>`` gets the same module."""
import importlib.util
import sys
from pathlib import Path

DATASETS_DIR = Path(__file__).resolve().parents[1] / 'sf3d' / 'datasets'


def load_generator(name: str):
    qualified = f'sf3d.datasets.{name}'
    if qualified in sys.modules:
        return sys.modules[qualified]
    spec = importlib.util.spec_from_file_location(qualified, DATASETS_DIR / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    spec.loader.exec_module(module)
    return module
