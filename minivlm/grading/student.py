"""Student notebooks from instructor sources: ``NN_topic.ipynb`` -> ``NN_topic_student.ipynb``.

In the source, a solution sits between two marker lines::

    def patchify(images, patch_size):
        \"\"\"... docstring stays ...\"\"\"
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

and becomes, at the indentation of the BEGIN line::

        raise NotImplementedError("...")

Cells tagged ``solution`` are dropped; outputs and execution counts are cleared;
``metadata.minivlm`` records that the file is generated, from which source, a
hash of the source cells and a hash of the generated notebook itself. The
latter tells an untouched generated file (safe to regenerate) from one that a
learner edited (never overwritten without ``--force``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import nbformat

from minivlm.utils import atomic_write

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
SOLUTION_TAG = "solution"
STUDENT_SUFFIX = "_student.ipynb"
CODE_STUB = 'raise NotImplementedError("replace this line with your solution")'
MARKDOWN_STUB = "*Your answer here.*"
_META_KEY = "minivlm"


class SolutionMarkerError(ValueError):
    """A BEGIN/END SOLUTION marker is missing, nested or unmatched."""


class OverwriteRefused(FileExistsError):
    """The student notebook on disk is not ours to overwrite (it may be a learner's work)."""


def student_path(source: str | Path) -> Path:
    """Where the student version of ``source`` goes: ``NN_topic_student.ipynb`` next to it."""
    source = Path(source)
    return source.with_name(source.stem + STUDENT_SUFFIX)


def strip_solutions(text: str, *, stub: str, where: str) -> tuple[str, int]:
    """Replace every BEGIN..END SOLUTION region of ``text`` by ``stub`` at the BEGIN
    line's indentation. Returns the new text and the number of regions."""
    out: list[str] = []
    inside = False
    begin_line = 0
    n = 0
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines, start=1):
        s = line.strip()
        if s.startswith(BEGIN):
            if inside:
                raise SolutionMarkerError(
                    f"{where}, line {i}: '{BEGIN}' inside the solution region opened at line "
                    f"{begin_line}; expected '{END}' first")
            inside, begin_line = True, i
            indent = line[: len(line) - len(line.lstrip())]
            out.append(indent + stub + ("\n" if line.endswith("\n") else ""))
            n += 1
        elif s.startswith(END):
            if not inside:
                raise SolutionMarkerError(
                    f"{where}, line {i}: '{END}' without a '{BEGIN}' before it")
            inside = False
            if not line.endswith("\n") and out and out[-1].endswith("\n"):
                out[-1] = out[-1][:-1]  # the region ended the cell: so does the stub
        elif not inside:
            out.append(line)
    if inside:
        raise SolutionMarkerError(
            f"{where}, line {begin_line}: '{BEGIN}' is never closed by '{END}'")
    return "".join(out), n


def source_hash(nb: nbformat.NotebookNode) -> str:
    """sha256 of what generation depends on: each cell's type, source and tags.

    Executing the instructor notebook (outputs, counts) does not change it."""
    items = [[c.cell_type, c.source, sorted(c.get("metadata", {}).get("tags", []))]
             for c in nb.cells]
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()


def _content_hash(nb: nbformat.NotebookNode) -> str:
    nb = copy.deepcopy(nb)
    nb.metadata.get(_META_KEY, {}).pop("student_sha256", None)
    return hashlib.sha256(_render(nb).encode()).hexdigest()


def _render(nb: nbformat.NotebookNode) -> str:
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


@dataclass
class StudentStats:
    regions: int = 0
    dropped: int = 0


def make_student(nb: nbformat.NotebookNode, *, source_name: str, exercise: str
                 ) -> tuple[nbformat.NotebookNode, StudentStats]:
    """The student version of an instructor notebook (a new object; ``nb`` is unchanged)."""
    stats = StudentStats()
    out = copy.deepcopy(nb)
    cells = []
    for index, cell in enumerate(out.cells):
        tags = cell.get("metadata", {}).get("tags", [])
        if SOLUTION_TAG in tags:
            stats.dropped += 1
            continue
        where = f"{source_name}, cell {index}"
        if cell.cell_type in ("code", "markdown"):
            stub = CODE_STUB if cell.cell_type == "code" else MARKDOWN_STUB
            cell.source, n = strip_solutions(cell.source, stub=stub, where=where)
            stats.regions += n
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cells.append(cell)
    out.cells = cells
    out.metadata[_META_KEY] = {
        "generated": "student notebook - edit the instructor source and run `minivlm student`",
        "exercise": exercise,
        "source": source_name,
        "source_sha256": source_hash(nb),
    }
    out.metadata[_META_KEY]["student_sha256"] = _content_hash(out)
    return out, stats


def read_source(path: Path) -> nbformat.NotebookNode:
    """Read an instructor notebook; cells without an id get a stable one (``cell-<i>``)."""
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a valid notebook (JSON error: {e})") from e
    nb = nbformat.reads(text, as_version=4)
    raw_cells = raw.get("cells", [])
    if nb.nbformat_minor >= 5 and len(raw_cells) == len(nb.cells):
        for i, (rc, cell) in enumerate(zip(raw_cells, nb.cells)):
            if "id" not in rc:  # nbformat may have made up a random one while reading
                cell["id"] = f"cell-{i}"
    return nb


def is_untouched(path: Path) -> bool:
    """True when ``path`` is a generated student notebook nobody has changed since."""
    try:
        nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
    except Exception:  # noqa: BLE001 - anything unreadable counts as someone's work
        return False
    meta = nb.metadata.get(_META_KEY, {})
    stored = meta.get("student_sha256")
    return bool(stored) and stored == _content_hash(nb)


@dataclass
class StudentOutcome:
    source: Path
    target: Path
    status: str  # "written" | "updated" | "unchanged" | "stale" (with check=True)
    stats: StudentStats


def generate_student(source: str | Path, *, force: bool = False, check: bool = False
                     ) -> StudentOutcome:
    """Write the student version of ``source`` next to it (atomically).

    Idempotent: an identical file is left alone. An existing student notebook that
    differs from what would be generated is overwritten only when it is an
    untouched earlier generation (the source changed) or ``force`` is given;
    otherwise :class:`OverwriteRefused`. With ``check=True`` nothing is written and
    the status says whether the file is up to date.
    """
    source = Path(source)
    if source.name.endswith(STUDENT_SUFFIX):
        raise ValueError(f"{source} is a student notebook, not an instructor source")
    if source.suffix != ".ipynb":
        raise ValueError(f"{source}: expected an instructor notebook NN_topic.ipynb")
    nb = read_source(source)
    student, stats = make_student(nb, source_name=source.name, exercise=source.stem)
    text = _render(student)
    target = student_path(source)
    status = "written"
    if target.exists():
        current = target.read_text(encoding="utf-8", errors="replace")
        if current == text:
            return StudentOutcome(source, target, "unchanged", stats)
        if check:
            return StudentOutcome(source, target, "stale", stats)
        if not force and not is_untouched(target):
            raise OverwriteRefused(
                f"refusing to overwrite {target}: it differs from what `minivlm student` "
                f"generates from {source.name} and was not left untouched since it was "
                "generated (it may hold a learner's work). Move it away, or re-run with "
                "--force to overwrite it.")
        status = "updated"
    elif check:
        return StudentOutcome(source, target, "stale", stats)
    atomic_write(target, lambda p: _write_text(p, text))
    return StudentOutcome(source, target, status, stats)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    _usual_permissions(path)


def _usual_permissions(path: Path) -> None:
    """mkstemp makes 0600 files; give the file the mode a plain open() would (0666 - umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def find_sources(paths: list[str | Path]) -> list[Path]:
    """Instructor notebooks among ``paths`` (folders are searched, not recursively);
    ``*_student.ipynb`` and checkpoint files are skipped."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.glob("*.ipynb") if not q.name.endswith(STUDENT_SUFFIX))
        elif p.is_file():
            if p.name.endswith(STUDENT_SUFFIX):
                continue
            found.append(p)
        else:
            raise FileNotFoundError(f"minivlm student: no such file or folder: {p}")
    return found
