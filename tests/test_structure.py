"""The package's layout rules (issue 15): a model file stands alone, and no import cycles.

Imports are read with ``ast`` wherever they are in a file (top level, inside a function, under
``if TYPE_CHECKING``): a lazy import still ties two modules together for a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import minivlm

PKG = Path(minivlm.__file__).parent


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """The ``minivlm`` names that module ``name`` (file ``path``) imports (``from a.b import c``
    gives a.b and a.b.c)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            mod = ".".join(base + [node.module or ""]).strip(".") if node.level else node.module
            out |= {mod or ""} | {f"{mod}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("minivlm")}


MODULES = {_module(p): p for p in sorted(PKG.rglob("*.py"))}
GRAPH = {m: {d for d in _imports(p, m) if d in MODULES and d != m} for m, p in MODULES.items()}
MODEL_FILES = [m for m, p in MODULES.items() if m.startswith("minivlm.models.")]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m) :] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def test_there_are_model_files():
    assert {"minivlm.models.clip", "minivlm.models.vilt", "minivlm.models.llava"} <= set(
        MODEL_FILES
    )


@pytest.mark.parametrize("model", MODEL_FILES)
def test_a_model_file_imports_no_other_model_file(model):
    """A model file imports nn/, objectives, data, interop (lazily), never another model."""
    others = sorted(d for d in GRAPH[model] if d in MODEL_FILES)
    assert not others, f"{model} imports {others}; move the shared part to nn/ or objectives"


def test_the_objectives_import_no_other_part_of_minivlm():
    """Models import the shared objectives, so the objectives cannot import a model (nor the
    layers built on models); they are plain functions on tensors."""
    parts = [m for m in MODULES if m.startswith("minivlm.objectives")]
    assert len(parts) > 1
    for m in parts:
        outside = sorted(d for d in GRAPH[m] if not d.startswith("minivlm.objectives"))
        assert not outside, f"{m} imports {outside}"


def test_minivlm_has_no_import_cycle():
    """No module imports one that imports it back, directly or through others. A package's
    ``__init__`` is left out (a package re-exporting its parts is not a cycle)."""
    graph = {m: {d for d in deps if MODULES[d].name != "__init__.py"}
             for m, deps in GRAPH.items() if MODULES[m].name != "__init__.py"}  # fmt: skip
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_what_they_guard_against(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    # the reader sees a lazy import inside a function, a relative import, a guarded one
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import torch\nif False:\n    import minivlm.nn.vit\n"
        "def f():\n    from minivlm.models.clip import CLIP\nfrom .vilt import ViLT\n"
    )
    got = _imports(probe, "minivlm.models.probe")
    assert {"minivlm.nn.vit", "minivlm.models.clip", "minivlm.models.vilt"} <= got
    assert "torch" not in got and "minivlm.models.vilt.ViLT" in got
