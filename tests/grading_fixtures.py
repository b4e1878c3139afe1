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


def source_nb(source: Path = SOURCE) -> nbformat.NotebookNode:
    return read_source(source)


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


def solved(source: Path = SOURCE) -> nbformat.NotebookNode:
    """A learner's correct submission: the solutions kept (markers removed), the
    instructor-only cells dropped, outputs cleared."""
    nb = _clear(copy.deepcopy(source_nb(source)))
    nb.cells = [c for c in nb.cells if "solution" not in c.get("metadata", {}).get("tags", [])]
    for c in nb.cells:
        c.source = "\n".join(ln for ln in c.source.split("\n")
                             if ln.strip() not in (BEGIN, END))
    return nb


def untouched_student(source: Path = SOURCE) -> nbformat.NotebookNode:
    nb, _ = make_student(source_nb(source), source_name=source.name, exercise=source.stem)
    return nb


def with_body(nb: nbformat.NotebookNode, cell_id: str, body: list[str],
              source: Path = SOURCE) -> nbformat.NotebookNode:
    """Replace the solution region of a source cell by ``body`` lines (indented like it)."""
    nb = copy.deepcopy(nb)
    src = _cell(source_nb(source), cell_id).source
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
        # the function's loop spins a core (in the demo cell that calls it, and in the check);
        # the top-level one blocks, as a cell waiting on input or a lock does: the limits are
        # wall-clock time either way, and a second spinning loop cost ~25 s of a core
        "loop_top_level.ipynb": text(insert_cell(good, "check-causal",
                                                 "import time\n\n"
                                                 "while True:  # runaway\n    time.sleep(0.05)",
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


# ----------------------------------------------------------------------------- attacks
# Each attack is the solved (or untouched) notebook with a cell added or a function changed.
# They only ever touch the grading's own processes and the paths the test passes in: the
# machine may be shared, so nothing here signals or writes anything else.

FORGE = '''\
import glob, json, os
fake = {"status": "ok", "errors": [], "cells": [], "stopped": None, "checks": {
    n: {"name": n, "passed": True, "points": 3.0, "max_points": 3.0, "message": "ok",
        "status": "passed", "summary": "passed"} for n in ("patchify", "attention", "causal_mask")}}
data = json.dumps(fake)
for pid in os.listdir("/proc"):  # the grading processes' result pipes
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        if b"minivlm.grading.gradebook" not in cmd and b"grading/execute.py" not in cmd:
            continue
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:"):
                with open(f"/proc/{pid}/fd/{fd}", "w") as f:
                    f.write(data)
    except OSError:
        pass
for d in glob.glob("/tmp/minivlm-grade-*/*/") + ["../grade/", "../execute/"]:
    for name in ("report.json", "summary.json"):  # where the old grader kept results
        try:
            with open(os.path.join(d, name), "w") as f:
                f.write(data)
        except OSError:
            pass
'''

KILL_PARENT = '''\
import os, signal
os.kill(os.getppid(), signal.SIGKILL)  # the process that executes / grades this notebook
'''

# Only inside the sandbox (PID 1 is bwrap there): kill every process in sight, i.e. try to
# stop `minivlm grade` itself. Outside a sandbox this cell does nothing.
KILL_ALL = '''\
import os, signal
if open("/proc/1/cmdline", "rb").read().split(b"\\0")[0].endswith(b"bwrap"):
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) not in (1, os.getpid()):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
'''

DETACHED = '''\
import os, time
TARGETS = {targets!r}
if os.fork() == 0:  # a detached process (double fork, new session) that keeps writing
    os.setsid()
    if os.fork() == 0:
        for _ in range(600):
            for t in TARGETS:
                try:
                    with open(t, "w") as f:
                        f.write("overwritten by a submission")
                except OSError:
                    pass
            try:
                for name in os.listdir(os.path.dirname(TARGETS[0])) if TARGETS else []:
                    if name.endswith(".txt"):
                        os.remove(os.path.join(os.path.dirname(TARGETS[0]), name))
            except OSError:
                pass
            time.sleep(0.1)
    os._exit(0)
time.sleep(0.5)
'''

# causal_mask forks a child that sleeps (a process started inside a graded function)
FORK_IN_FUNCTION = ["import os, time", "if os.fork() == 0:", "    time.sleep(600)",
                    "    os._exit(0)", "return torch.ones(T, T, dtype=torch.bool).tril()"]

IN_PLACE = ["B, C, H, W = images.shape", "p = patch_size",
            "x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)",
            "out = x.reshape(B, (H // p) * (W // p), C * p * p).clone()",
            "images.zero_()  # the caller's tensor is changed", "return out"]

LIBRARY_PATCHIFY = ["from minivlm.nn.vit import patchify as library_patchify",
                    "return library_patchify(images, patch_size)"]
REFERENCE_ATTENTION = ["from minivlm.grading.checks.ex00_patchify_attention import "
                       "_ref_attention", "return _ref_attention(q, k, v, mask)"]


TINY_CELLS = ("imports", "patchify", "check-patchify", "attention", "check-attention", "causal",
              "check-causal")


def tiny(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Only the graded functions and their checks, and imports without matplotlib and
    scikit-image: a cheap notebook to execute (the attacks are added to it)."""
    nb = copy.deepcopy(nb)
    nb.cells = [c for c in nb.cells if c.get("id") in TINY_CELLS]
    _cell(nb, "imports").source = "import math\n\nimport torch\n\nfrom minivlm.grading import check"
    return nb


def sneaky() -> nbformat.NotebookNode:
    """patchify changes its input in place, attention calls the grader's reference,
    causal_mask is right but defined under %%time; a cell of line magics and shell."""
    nb = with_body(with_body(tiny(solved()), "patchify", IN_PLACE), "attention",
                   REFERENCE_ATTENTION)
    _cell(nb, "causal").source = "%%time\n" + _cell(nb, "causal").source
    _cell(nb, "attention").source = "%%capture captured\n" + _cell(nb, "attention").source
    return insert_cell(nb, "imports", "%env MINIVLM_DEMO=1\n!echo this shell line is skipped",
                       "line-magics")


def attacks(targets: list[str]) -> dict[str, str]:
    """file name -> notebook text of each attack; ``targets``: files the detached process
    tries to overwrite (and .txt files beside the first one it tries to delete)."""
    good = tiny(solved())
    detached = with_body(insert_cell(good, "imports", DETACHED.format(targets=targets),
                                     "detached"), "causal", FORK_IN_FUNCTION)
    return {
        "attack_forge_result.ipynb": text(insert_cell(tiny(untouched_student()), "imports",
                                                      FORGE, "forge")),
        # in the sandbox: kill every process in sight (the grader's are invisible); outside
        # it: only the process that executes / grades the notebook
        "attack_kill.ipynb": text(insert_cell(insert_cell(good, "check-causal", KILL_ALL,
                                                          "kill-all"),
                                              "kill-all", KILL_PARENT, "kill")),
        "attack_detached.ipynb": text(detached),
        "attack_sneaky.ipynb": text(sneaky()),
    }
