"""Import a script under tools/ as a module (tools/ is not a package). tests/ is on sys.path
because of tests/conftest.py, so test modules use ``from tool_loader import load_tool``."""
import importlib.util
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / 'tools'


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f'sf3d_tool_{name}', TOOLS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
