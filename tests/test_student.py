"""Student notebooks: solutions out, signatures and docstrings in, idempotent, and a
learner's edited copy is never overwritten without --force."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import nbformat
import pytest
from exercise_helpers import assert_source_passes_student_fails

from minivlm.cli import main as cli_main
from minivlm.grading.student import (
    CODE_STUB,
    OverwriteRefused,
    SolutionMarkerError,
    find_sources,
    generate_student,
    make_student,
    read_source,
    source_hash,
    strip_solutions,
    student_path,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "exercises" / "00_patchify_attention.ipynb"
EXERCISE = "00_patchify_attention"


@pytest.fixture
def exdir(tmp_path: Path) -> Path:
    d = tmp_path / "exercises"
    d.mkdir()
    shutil.copy(SOURCE, d / SOURCE.name)
    return d


def _code(nb: nbformat.NotebookNode) -> dict[str, str]:
    return {c.id: c.source for c in nb.cells if c.cell_type == "code"}


# ----------------------------------------------------------------------------- the transformation
def test_strip_solutions_keeps_indentation_signature_and_docstring():
    src = (
        "def f(x):\n"
        '    """Docstring stays."""\n'
        "    y = 1  # before the region stays\n"
        "    ### BEGIN SOLUTION\n"
        "    return x + y\n"
        "    ### END SOLUTION\n"
        "\n"
        "class A:\n"
        "    def g(self):\n"
        "        ### BEGIN SOLUTION\n"
        "        return 2\n"
        "        ### END SOLUTION"
    )
    out, n = strip_solutions(src, stub=CODE_STUB, where="t")
    assert n == 2
    assert out == (
        "def f(x):\n"
        '    """Docstring stays."""\n'
        "    y = 1  # before the region stays\n"
        f"    {CODE_STUB}\n"
        "\n"
        "class A:\n"
        "    def g(self):\n"
        f"        {CODE_STUB}"
    )
    ast.parse(out)


@pytest.mark.parametrize("src,words", [
    ("### BEGIN SOLUTION\nx = 1\n", ["line 1", "never closed"]),
    ("x = 1\n### END SOLUTION\n", ["line 2", "without a"]),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", ["line 2", "inside"]),
])
def test_bad_markers_raise_a_clear_error(src, words):
    with pytest.raises(SolutionMarkerError) as e:
        strip_solutions(src, stub=CODE_STUB, where="ex.ipynb, cell 3")
    for w in ["ex.ipynb, cell 3", *words]:
        assert w in str(e.value)


def test_student_version_of_exercise_00():
    src = read_source(SOURCE)
    student, stats = make_student(src, source_name=SOURCE.name, exercise=EXERCISE)
    assert stats.regions == 3 and stats.dropped == 1
    nbformat.validate(student)
    code = _code(student)
    assert "alt-solution" not in code  # the cell tagged "solution" is gone
    assert all("### BEGIN SOLUTION" not in s and "### END SOLUTION" not in s
               for s in code.values())
    for cid, signature in [("patchify", "def patchify(images: torch.Tensor, patch_size: int)"),
                           ("attention", "def attention(q: torch.Tensor, k: torch.Tensor"),
                           ("causal", "def causal_mask(T: int) -> torch.Tensor:")]:
        s = code[cid]
        assert signature in s and '"""' in s
        assert f"    {CODE_STUB}" in s.splitlines()
        tree = ast.parse(s)
        fn = tree.body[0]
        assert isinstance(fn, ast.FunctionDef) and ast.get_docstring(fn)
        assert isinstance(fn.body[-1], ast.Raise)
    assert "masked_fill" not in code["attention"] and "permute" not in code["patchify"]
    for s in code.values():
        ast.parse(s)
    for c in student.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None
    meta = student.metadata["minivlm"]
    assert meta["exercise"] == EXERCISE and meta["source"] == SOURCE.name
    assert meta["source_sha256"] == source_hash(src) and len(meta["student_sha256"]) == 64
    assert "generated" in meta
    # markdown and the check cells are untouched
    assert code["check-patchify"] == 'check("patchify", patchify)'
    assert [c.source for c in student.cells if c.cell_type == "markdown"] == \
        [c.source for c in src.cells if c.cell_type == "markdown"]


def test_markdown_solution_regions_are_replaced():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        "Question: why?\n\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION\n")])
    student, stats = make_student(nb, source_name="01_x.ipynb", exercise="01_x")
    assert stats.regions == 1
    assert student.cells[0].source == "Question: why?\n\n*Your answer here.*\n"


# ----------------------------------------------------------------------------- files
def test_generation_is_idempotent_and_atomic(exdir: Path):
    src = exdir / SOURCE.name
    first = generate_student(src)
    assert first.status == "written" and first.target == student_path(src)
    data = first.target.read_bytes()
    assert generate_student(src).status == "unchanged"
    assert first.target.read_bytes() == data
    # executing the instructor notebook (outputs only) does not make the student stale
    nb = nbformat.read(src, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            c.execution_count = 7
            c.outputs = [nbformat.v4.new_output("stream", text="hi\n")]
    nbformat.write(nb, src)
    assert generate_student(src).status == "unchanged"
    assert first.target.read_bytes() == data
    assert sorted(p.name for p in exdir.iterdir()) == sorted([SOURCE.name, first.target.name])


def test_learner_work_is_never_overwritten_without_force(exdir: Path):
    src = exdir / SOURCE.name
    target = generate_student(src).target
    nb = nbformat.read(target, as_version=4)
    for c in nb.cells:
        if c.get("id") == "causal":
            c.source = c.source.replace(CODE_STUB, "return torch.ones(T, T).tril().bool()")
    nbformat.write(nb, target)
    learner = target.read_bytes()
    with pytest.raises(OverwriteRefused) as e:
        generate_student(src)
    assert "learner's work" in str(e.value) and "--force" in str(e.value)
    assert target.read_bytes() == learner
    # the command line says the same and exits non-zero
    assert cli_main(["student", str(exdir)]) == 1
    assert target.read_bytes() == learner
    assert generate_student(src, force=True).status == "updated"
    assert target.read_bytes() != learner
    assert generate_student(src).status == "unchanged"


def test_untouched_stale_student_is_regenerated(exdir: Path):
    src = exdir / SOURCE.name
    target = generate_student(src).target
    before = target.read_bytes()
    nb = nbformat.read(src, as_version=4)
    nb.cells[0].source += "\n\nOne more sentence."
    nbformat.write(nb, src)
    assert generate_student(src, check=True).status == "stale"
    assert target.read_bytes() == before
    assert generate_student(src).status == "updated"  # it was ours, nobody touched it
    assert "One more sentence." in target.read_text()


def test_cli_student_skips_student_files_and_checks(exdir: Path, capsys):
    assert cli_main(["student", "--check", str(exdir)]) == 1  # missing
    assert cli_main(["student", str(exdir)]) == 0
    assert cli_main(["student", str(exdir)]) == 0
    out = capsys.readouterr().out
    assert "written:" in out and "up to date:" in out
    assert find_sources([exdir]) == [exdir / SOURCE.name]
    assert find_sources([student_path(exdir / SOURCE.name)]) == []
    assert cli_main(["student", "--check", str(exdir)]) == 0
    assert not list(exdir.glob("*_student_student.ipynb"))
    with pytest.raises(ValueError, match="student notebook"):
        generate_student(student_path(exdir / SOURCE.name))


def test_committed_student_notebook_is_up_to_date():
    assert generate_student(SOURCE, check=True).status == "unchanged", (
        "run `make student` (python -m minivlm student exercises/)")


# ----------------------------------------------------------------------------- checks on both
def test_source_passes_all_checks_and_student_fails_them_cleanly():
    assert_source_passes_student_fails(SOURCE, EXERCISE, 3)
