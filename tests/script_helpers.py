"""Load a script from ``experiments/`` or ``benchmarks/`` as a module, for smoke tests."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

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


@contextmanager
def restored_threads() -> Iterator[None]:
    """Experiment scripts set ``torch.set_num_threads(1)``; give the test process its own back."""
    n = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(n)


def assert_keeps_existing(main: Callable[[list[str]], int], argv: list[str], out: Path,
                          capsys: Any) -> None:  # fmt: skip
    """Running ``main(argv)`` again without --force must exit 2, say why, and leave ``out`` as
    it was (experiment results are never overwritten unasked)."""
    before = out.read_text()
    assert main(argv) == 2  # refuses to overwrite without --force
    assert out.read_text() == before
    assert "pass --force" in capsys.readouterr().err
