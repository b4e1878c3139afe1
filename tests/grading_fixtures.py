"""Builders of submitted notebooks for the grading tests, made from the instructor source.

Each builder returns notebook text (or bytes, for the broken file); the tests
write them into ``tmp_path``. Nothing here is committed as a binary fixture.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import nbformat

from minivlm.grading.student import (
    BEGIN,
    END,
    make_student,
    read_source,
    strip_solutions,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "exercises" / "00_patchify_attention.ipynb"
EXERCISE = "00_patchify_attention"


def source_nb() -> nbformat.NotebookNode:
    return read_source(SOURCE)


def _cell(nb: nbformat.NotebookNode, cell_id: str) -> nbformat.NotebookNode:
    for c in nb.cells:
        if c.get("id") == cell_id:
            return c
    raise KeyError(cell_id)


def _clear(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    return nb


def solved() -> nbformat.NotebookNode:
    """A learner's correct submission: the solutions kept (markers removed), the
    instructor-only cells dropped, outputs cleared."""
    nb = _clear(copy.deepcopy(source_nb()))
    nb.cells = [c for c in nb.cells if "solution" not in c.get("metadata", {}).get("tags", [])]
    for c in nb.cells:
        c.source = "\n".join(ln for ln in c.source.split("\n")
                             if ln.strip() not in (BEGIN, END))
    return nb


def untouched_student() -> nbformat.NotebookNode:
    nb, _ = make_student(source_nb(), source_name=SOURCE.name, exercise=EXERCISE)
    return nb


def with_body(nb: nbformat.NotebookNode, cell_id: str, body: list[str]
              ) -> nbformat.NotebookNode:
    """Replace the solution region of a source cell by ``body`` lines (indented like it)."""
    nb = copy.deepcopy(nb)
    src = _cell(source_nb(), cell_id).source
    marker = "__BODY__"
    text, n = strip_solutions(src, stub=marker, where=cell_id)
    assert n == 1
    lines = []
    for ln in text.split("\n"):
        if ln.strip() == marker:
            indent = ln[: len(ln) - len(ln.lstrip())]
            lines += [indent + b for b in body]
        else:
            lines.append(ln)
    _cell(nb, cell_id).source = "\n".join(lines)
    return nb


def insert_cell(nb: nbformat.NotebookNode, after_id: str, source: str, cell_id: str
                ) -> nbformat.NotebookNode:
    nb = copy.deepcopy(nb)
    index = [c.get("id") for c in nb.cells].index(after_id)
    cell = nbformat.v4.new_code_cell(source)
    cell["id"] = cell_id
    nb.cells.insert(index + 1, cell)
    return nb


def text(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb)


def submissions() -> dict[str, str | bytes]:
    """file name -> content of every kind of submission the gradebook test grades."""
    good = solved()
    import_error = copy.deepcopy(good)
    _cell(import_error, "imports").source = ("import nonexistent_module\n"
                                             + _cell(import_error, "imports").source)
    wrong_sig = copy.deepcopy(good)
    patch = _cell(wrong_sig, "patchify")
    patch.source = patch.source.replace(
        "def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:",
        "def patchify(images: torch.Tensor) -> torch.Tensor:\n    patch_size = 16")
    assert "patch_size = 16" in patch.source
    cheat = insert_cell(untouched_student(), "imports",
                        'def check(*args, **kwargs):\n    print("all checks passed")\n'
                        "    return True\n\n\nprint(\"all checks passed\")", "fake-check")
    return {
        "correct.ipynb": text(good),
        "empty.ipynb": text(untouched_student()),
        "import_error.ipynb": text(import_error),
        "loop_in_function.ipynb": text(with_body(good, "attention",
                                                 ["while True:  # runaway", "    pass"])),
        "loop_top_level.ipynb": text(insert_cell(good, "check-causal",
                                                 "while True:  # runaway\n    pass",
                                                 "runaway")),
        "fake_check.ipynb": text(cheat),
        "not_json.ipynb": b'{"cells": [ this is not JSON',
        "wrong_signature.ipynb": text(wrong_sig),
    }


def write_submissions(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, content in submissions().items():
        p = folder / name
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
        paths[name] = p
    return paths


def tree_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> hash)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
