"""`minivlm grade`: every kind of submission gets the grade it deserves, the run always
finishes, and the submissions folder is left exactly as it was."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import time
from pathlib import Path

import grading_fixtures as gf
import nbformat
import pytest

from minivlm.cli import main as cli_main
from minivlm.grading.execute import execute_notebook
from minivlm.grading.gradebook import grade

pytestmark = pytest.mark.slow

NORMAL = ["correct", "empty", "fake_check", "import_error", "not_json", "wrong_signature"]
RUNAWAY = ["loop_in_function", "loop_top_level"]
COLUMNS = ["submission", "patchify", "attention", "causal_mask", "total", "max_total", "notes"]


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict:
    """Grade all submissions once: the well-behaved ones with a generous time limit, the
    runaway ones (through the command line) with a short one."""
    root = tmp_path_factory.mktemp("grading")
    subs, loops = root / "submissions", root / "runaway"
    made = gf.write_submissions(root / "all")
    subs.mkdir()
    loops.mkdir()
    for name, path in made.items():
        stem = name.removesuffix(".ipynb")
        path.rename((subs if stem in NORMAL else loops) / name)
    before = {"subs": gf.tree_hashes(subs), "loops": gf.tree_hashes(loops)}
    t0 = time.monotonic()
    rows = grade([subs], root / "gradebook.csv", timeout=60, check_timeout=5, jobs=3,
                 log=None)
    t1 = time.monotonic()
    code = cli_main(["grade", str(loops), "--out", str(root / "runaway.csv"), "--timeout", "10",
                     "--cell-timeout", "4", "--check-timeout", "3", "--jobs", "2",
                     "--exercise", "00_patchify_attention"])
    t2 = time.monotonic()
    print(f"\ngraded {len(NORMAL)} notebooks in {t1 - t0:.1f} s, "
          f"{len(RUNAWAY)} runaway ones in {t2 - t1:.1f} s")
    with open(root / "gradebook.csv", newline="") as f:
        table = list(csv.DictReader(f))
    with open(root / "runaway.csv", newline="") as f:
        table += list(csv.DictReader(f))
    return {"root": root, "subs": subs, "loops": loops, "before": before, "rows": rows,
            "table": {r["submission"].removesuffix(".ipynb"): r for r in table},
            "code": code, "seconds": t2 - t0}


def _points(row: dict) -> tuple[float, float, float, float]:
    return (float(row["patchify"]), float(row["attention"]), float(row["causal_mask"]),
            float(row["total"]))


def test_gradebook_has_one_row_per_submission(graded):
    assert graded["code"] == 0
    assert sorted(graded["table"]) == sorted(NORMAL + RUNAWAY)
    with open(graded["root"] / "gradebook.csv", newline="") as f:
        assert next(csv.reader(f)) == COLUMNS
    assert all(r["max_total"] == "6" for r in graded["table"].values())
    assert graded["seconds"] < 150, graded["seconds"]


def test_correct_submission_gets_full_marks(graded):
    row = graded["table"]["correct"]
    assert _points(row) == (2, 3, 1, 6)
    assert "runs with errors" not in row["notes"] and "patchify" not in row["notes"]


@pytest.mark.parametrize("name", ["empty", "fake_check"])
def test_untouched_and_fake_check_submissions_get_nothing(graded, name):
    row = graded["table"][name]
    assert _points(row) == (0, 0, 0, 0)
    for chk in ("patchify", "attention", "causal_mask"):
        assert f"{chk}: not attempted" in row["notes"]
    assert "runs with errors" in row["notes"] and "NotImplementedError" in row["notes"]


def test_import_error_submission(graded):
    row = graded["table"]["import_error"]
    assert _points(row) == (0, 0, 0, 0)
    assert ("runs with errors: cell 1 raised ModuleNotFoundError: No module named "
            "'nonexistent_module'") in row["notes"]
    # the functions' cells fail too (torch was never imported): each zero says why
    for chk in ("patchify", "attention", "causal_mask"):
        assert f"{chk}: not defined: cell " in row["notes"]
    assert "NameError: name 'torch' is not defined" in row["notes"]


def test_not_json_submission(graded):
    row = graded["table"]["not_json"]
    assert _points(row) == (0, 0, 0, 0)
    assert row["notes"].startswith("notebook is not valid JSON: ")


def test_wrong_signature_submission(graded):
    row = graded["table"]["wrong_signature"]
    assert _points(row) == (0, 3, 1, 4)
    assert ("patchify: wrong signature: expected patchify(images, patch_size), "
            "got patchify(images)") in row["notes"]


def test_runaway_function_and_top_level_loop(graded):
    row = graded["table"]["loop_in_function"]
    assert _points(row) == (2, 0, 1, 3)
    assert "attention: timed out after 3 s" in row["notes"]
    assert "execution timed out after 10 s" in row["notes"]  # the demo cell calls it
    row = graded["table"]["loop_top_level"]
    assert _points(row) == (2, 3, 1, 6)  # the functions are right; the loop is noted
    assert "execution timed out after 10 s in cell " in row["notes"]


def test_submissions_are_never_modified(graded):
    assert gf.tree_hashes(graded["subs"]) == graded["before"]["subs"]
    assert gf.tree_hashes(graded["loops"]) == graded["before"]["loops"]
    assert {r["_sha256"] for r in graded["rows"] if r["_sha256"]} <= {
        hashlib.sha256(p.read_bytes()).hexdigest() for p in graded["subs"].iterdir()}


def test_gradebook_is_not_overwritten_without_force(graded, tmp_path):
    out = graded["root"] / "gradebook.csv"
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        grade([graded["subs"]], out, log=None)
    assert cli_main(["grade", str(graded["subs"]), "--out", str(out)]) == 2
    assert out.read_bytes() == before
    with pytest.raises(ValueError, match="inside the submissions folder"):
        grade([graded["subs"]], graded["subs"] / "grades.csv", log=None)
    assert not (graded["subs"] / "grades.csv").exists()
    # --force overwrites (one quick notebook is enough to see it)
    one = tmp_path / "one"
    one.mkdir()
    (one / "not_json.ipynb").write_bytes(b"nope")
    rows = grade([one], out, force=True, exercise="00_patchify_attention", log=None)
    assert [r["submission"] for r in rows] == ["not_json.ipynb"]
    assert out.read_text().splitlines()[1].startswith("not_json.ipynb,0,0,0,0,6,")


def test_kernel_is_this_interpreter_even_with_another_python3_kernelspec(tmp_path, monkeypatch):
    # A user-level "python3" kernelspec pointing elsewhere must not hijack grading.
    data = tmp_path / "jupyter-data"
    spec = data / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps(
        {"argv": ["/nonexistent/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
         "display_name": "elsewhere", "language": "python"}))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(data))
    monkeypatch.setenv("JUPYTER_PATH", str(data))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import sys, ipykernel\nprint(sys.executable)\nprint(ipykernel.__file__)")])
    path = tmp_path / "probe.ipynb"
    nbformat.write(nb, path)
    summary, executed = execute_notebook(path, timeout=60, workdir=tmp_path)
    assert summary["status"] == "ok", summary
    exe, kernel_pkg = executed.cells[0].outputs[0]["text"].split()
    assert Path(exe).resolve() == Path(sys.executable).resolve()
    assert Path(kernel_pkg).resolve().is_relative_to(Path(sys.prefix).resolve())


def _grading_processes() -> list[int]:
    """Processes still running in a (deleted) minivlm-grade-* folder: kernels, workers."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if "minivlm-grade-" in str((proc / "cwd").readlink()):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc")
def test_no_process_outlives_grading(graded):
    deadline = time.monotonic() + 10
    while _grading_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _grading_processes() == []
