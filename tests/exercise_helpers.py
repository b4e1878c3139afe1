"""Shared by the tests of every exercise: the instructor source passes all of its checks and
the generated student version fails each one as "not attempted"."""

from __future__ import annotations

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


def assert_source_passes_student_fails(source: Path, exercise: str, n_checks: int) -> str:
    """Check the source notebook's functions pass and the student's are "not attempted";
    returns the student notebook's code for file-specific assertions."""
    src = read_source(source)
    student, _ = make_student(src, source_name=source.name, exercise=exercise)
    src_ns, stu_ns = defined_functions(src), defined_functions(student)
    checks = list_checks(exercise)
    assert len(checks) == n_checks
    sources = "\n".join(c.source for c in src.cells if c.cell_type == "code")
    for chk in checks:
        assert f'check("{chk.name}", {chk.function})' in sources  # the notebook checks it
        good = check(chk.name, src_ns[chk.function])
        assert good.passed, str(good)
        todo = check(chk.name, stu_ns[chk.function])
        assert todo.status == "not attempted" and todo.points == 0, str(todo)
    stu_code = "\n".join(c.source for c in student.cells if c.cell_type == "code")
    assert "BEGIN SOLUTION" not in stu_code
    return stu_code
