"""Load a script from ``experiments/`` or ``benchmarks/`` as a module, for smoke tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relpath: str) -> ModuleType:
    """Import ``ROOT / relpath`` (e.g. "experiments/clip_shape.py") under a unique module name.

    The module is registered in ``sys.modules`` first: dataclasses look their module up there.
    """
    path = ROOT / relpath
    name = "script_" + relpath.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
