"""Shared by the tests of every exercise: the instructor source passes all of its checks, the
generated student version fails each one as "not attempted", and each deliberately broken
solution fails with a message that names its mistake."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import nbformat

from minivlm.grading import check, list_checks
from minivlm.grading.student import make_student, read_source


def defined_functions(nb: nbformat.NotebookNode) -> dict:
    """Run the import cell and the cells that define functions (not demos, not checks)."""
    ns: dict = {}
    for c in nb.cells:
        if c.cell_type != "code" or "solution" in c.metadata.get("tags", []):
            continue
        if c.id == "imports" or c.source.lstrip().startswith(("def ", "@")):
            exec(compile(c.source, f"<{c.id}>", "exec", dont_inherit=True), ns)
    return ns


def assert_source_passes_student_fails(source: Path, exercise: str, n_checks: int,
                                       timeout: float = 5.0, seed: int | None = None) -> str:
    """Check the source notebook's functions pass and the student's are "not attempted";
    returns the student notebook's code for file-specific assertions. ``timeout``: per check
    (the checks that train a model need more than the default 5 s on a busy machine).
    ``seed``: the checks' seed for both notebooks (None: a random one per call). A test file
    whose checks train a model passes its ``SEED``: the reference answers, cached per (check,
    seed) (``reuse_references``, the checks' own caches), are then trained once for the file
    rather than once per call."""
    src = read_source(source)
    student, _ = make_student(src, source_name=source.name, exercise=exercise)
    src_ns, stu_ns = defined_functions(src), defined_functions(student)
    checks = list_checks(exercise)
    assert len(checks) == n_checks
    sources = "\n".join(c.source for c in src.cells if c.cell_type == "code")
    for chk in checks:
        assert f'check("{chk.name}", {chk.function}' in sources  # the notebook checks it
        good = check(chk.name, src_ns[chk.function], timeout=timeout, seed=seed)
        assert good.passed, str(good)
        todo = check(chk.name, stu_ns[chk.function], timeout=timeout, seed=seed)
        assert todo.status == "not attempted" and todo.points == 0, str(todo)
    stu_code = "\n".join(c.source for c in student.cells if c.cell_type == "code")
    assert "BEGIN SOLUTION" not in stu_code
    return stu_code


def summary_prefix(summary: str) -> str:
    """What failed, without the numbers: the summary up to its first ':'."""
    return summary.split(":")[0]


def summary_kind(summary: str) -> str:
    """'values differ', 'output shape', 'dtype float32', ...: the first three words of the prefix."""
    return " ".join(summary_prefix(summary).split()[:3])


def assert_broken_fails_pointedly(
    name: str,
    fn: Callable,
    words: Sequence[str],
    seed: int,
    kind: Callable[[str], str] = summary_kind,
) -> None:
    """A broken solution fails check ``name`` with no points, its message contains every one
    of ``words``, and other random inputs (``seed + 1``) trip the same kind of mistake."""
    r = check(name, fn, seed=seed)
    assert not r.passed and r.points == 0, str(r)
    assert r.status in ("failed", "raised"), str(r)
    for w in words:
        assert w in r.message, f"{w!r} not in:\n{r.message}"
    r2 = check(name, fn, seed=seed + 1)  # other random inputs trip the same mistake
    assert not r2.passed and kind(r2.summary) == kind(r.summary), (r.summary, r2.summary)


def assert_untouched_is_not_attempted(name: str, signature: str, seed: int) -> None:
    """The student stub of check ``name`` (``def name(<signature>): raise
    NotImplementedError``) is graded "not attempted", with no points."""
    scope: dict = {}
    exec(f"def {name}({signature}):\n"
         "    raise NotImplementedError('replace this line with your solution')\n", scope)
    r = check(name, scope[name], seed=seed)
    assert r.status == "not attempted" and r.points == 0, str(r)


def assert_trained_broken_fail(name: str, broken: dict[str, Callable], hint: str,
                               seed: int) -> None:
    """Each broken training loop in ``broken`` (label -> function) fails train check ``name``
    on its values, with no points and ``hint`` in the message. ``timeout=0.01``: the check's
    own min_timeout still lets the run finish; the call monitor is off (``allow_library``)."""
    for label, fn in broken.items():
        r = check(name, fn, seed=seed, timeout=0.01, allow_library=True)
        assert not r.passed and r.points == 0, (label, str(r))
        assert r.status == "failed" and "values differ" in r.summary, (label, str(r))
        assert hint in r.message, (label, str(r))
