"""`minivlm grade`: every kind of submission gets the grade it deserves, the run always
finishes, and the submissions folder is left exactly as it was."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import grading_fixtures as gf
import nbformat
import pytest

from minivlm.cli import main as cli_main
from minivlm.grading.execute import execute_notebook
from minivlm.grading.gradebook import grade
from minivlm.grading.isolation import bwrap_problem

pytestmark = pytest.mark.slow

NORMAL = ["correct", "empty", "fake_check", "import_error", "not_json", "wrong_signature"]
RUNAWAY = ["loop_in_function", "loop_top_level"]
ATTACKS = ["attack_forge_result", "attack_kill", "attack_detached", "attack_sneaky"]
COLUMNS = ["submission", "patchify", "attention", "causal_mask", "total", "max_total", "notes",
           "isolated", "sha256"]
#: the main run uses the sandbox where this machine has one (the attacks that only a
#: sandbox stops - writing files, killing the grader - are left out without one);
#: `graded_unsandboxed` below always runs without it
BWRAP = bwrap_problem() is None
needs_bwrap = pytest.mark.skipif(not BWRAP, reason=f"no sandbox here: {bwrap_problem()}")


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict:
    """Grade all submissions once: the well-behaved ones and the attacks with a generous
    time limit, in the sandbox when there is one; the runaway ones (through the command
    line) with a short one."""
    root = tmp_path_factory.mktemp("grading")
    subs, loops = root / "submissions", root / "runaway"
    made = gf.write_submissions(root / "all")
    subs.mkdir()
    loops.mkdir()
    for name, path in made.items():
        stem = name.removesuffix(".ipynb")
        path.rename((subs if stem in NORMAL else loops) / name)
    beside = subs / "notes.txt"  # a file next to the submissions
    beside.write_text("the instructor's notes")
    targets = [str(beside), str(subs / "correct.ipynb"), str(root / "gradebook.csv")]
    for name, content in gf.attacks(targets if BWRAP else []).items():
        (subs / name).write_text(content, encoding="utf-8")
    before = {"subs": gf.tree_hashes(subs), "loops": gf.tree_hashes(loops),
              "root": gf.tree_hashes(root)}
    work = tmp_path_factory.mktemp("grading-work")  # the grader's private folders
    saved, tempfile.tempdir = tempfile.tempdir, str(work)
    t0 = time.monotonic()
    rows = grade([subs], root / "gradebook.csv", timeout=60, check_timeout=5, jobs=3,
                 log=None, sandbox="bwrap" if BWRAP else "none")
    t1 = time.monotonic()
    # limits short enough to be hit, long enough for the imports on a busy machine (the
    # function's runaway loop spins a core until its limit, in the nbclient kernel and in the
    # worker; the top-level one sleeps in its loop until its limits)
    code = cli_main(["grade", str(loops), "--out", str(root / "runaway.csv"), "--timeout", "15",
                     "--cell-timeout", "10", "--check-timeout", "3", "--jobs", "2",
                     "--exercise", "00_patchify_attention"])
    t2 = time.monotonic()
    tempfile.tempdir = saved
    print(f"\ngraded {len(rows)} notebooks in {t1 - t0:.1f} s, "
          f"{len(RUNAWAY)} runaway ones in {t2 - t1:.1f} s")
    with open(root / "gradebook.csv", newline="") as f:
        table = list(csv.DictReader(f))
    with open(root / "runaway.csv", newline="") as f:
        table += list(csv.DictReader(f))
    time.sleep(1.0)  # a process that outlived grading would write now
    return {"root": root, "subs": subs, "loops": loops, "before": before, "rows": rows,
            "work": work,
            "table": {r["submission"].removesuffix(".ipynb"): r for r in table},
            "code": code, "seconds": t2 - t0}


def _points(row: dict) -> tuple[float, float, float, float]:
    return (float(row["patchify"]), float(row["attention"]), float(row["causal_mask"]),
            float(row["total"]))


def test_gradebook_has_one_row_per_submission(graded):
    assert graded["code"] == 0
    assert sorted(graded["table"]) == sorted(NORMAL + RUNAWAY + ATTACKS)
    with open(graded["root"] / "gradebook.csv", newline="") as f:
        assert next(csv.reader(f)) == COLUMNS
    assert all(r["max_total"] == "6" for r in graded["table"].values())
    isolated = {r["isolated"] for r in graded["table"].values()}
    if BWRAP:
        assert isolated == {"yes (bubblewrap)"}
    else:
        assert all(v.startswith("NO (") for v in isolated)


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
    assert "execution timed out after 15 s" in row["notes"]  # the demo cell calls it
    row = graded["table"]["loop_top_level"]
    assert _points(row) == (2, 3, 1, 6)  # the functions are right; the loop is noted
    assert "execution timed out after 15 s in cell " in row["notes"]


def test_submissions_are_never_modified(graded):
    assert gf.tree_hashes(graded["subs"]) == graded["before"]["subs"]
    assert gf.tree_hashes(graded["loops"]) == graded["before"]["loops"]
    after = gf.tree_hashes(graded["root"])
    changed = {k for k in set(after) | set(graded["before"]["root"])
               if after.get(k) != graded["before"]["root"].get(k)}
    assert changed == {"gradebook.csv", "runaway.csv"}, changed  # nothing outside --out
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


def _grading_processes(work: Path) -> list[str]:
    """Processes still running in one of this test's (deleted) minivlm-grade-* folders
    under ``work``: kernels, workers, whatever a notebook started."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = str((proc / "cwd").readlink())
            if str(work) in cwd and "minivlm-grade-" in cwd:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ")[:120]
                found.append(f"{proc.name}: {cmd.decode(errors='replace')}")
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc")
def test_no_process_outlives_grading(graded):
    assert _grading_processes(graded["work"]) == []  # gone when their rows were written, not later


# ----------------------------------------------------------------------------- attacks
def test_forged_result_earns_nothing(graded):
    row = graded["table"]["attack_forge_result"]
    assert _points(row) == (0, 0, 0, 0), row
    assert "patchify: not attempted" in row["notes"]


def test_a_notebook_that_kills_its_processes_gets_zero_and_the_run_goes_on(graded):
    row = graded["table"]["attack_kill"]  # in the sandbox it tried to kill everything
    assert _points(row) == (0, 0, 0, 0), row
    assert "the notebook ended the process that executed it" in row["notes"]
    assert "0 points" in row["notes"]
    assert _points(graded["table"]["correct"]) == (2, 3, 1, 6)  # the classmates are graded


def test_detached_and_forked_processes_are_stopped(graded):
    row = graded["table"]["attack_detached"]
    assert _points(row) == (2, 3, 1, 6), row  # its functions are right
    # their writes (in the sandbox: to the submissions and --out) changed nothing: see
    # test_submissions_are_never_modified; and no process is left: see
    # test_no_process_outlives_grading


def test_in_place_reference_calls_and_magics(graded):
    row = graded["table"]["attack_sneaky"]
    assert _points(row) == (0, 0, 1, 1), row  # causal_mask, under %%time, is right
    assert "patchify: changed its input images in place" in row["notes"]
    assert ("attention: 0 points: your attention calls the grader's reference "
            "_ref_attention") in row["notes"]
    assert ("not run when grading (line magics and shell commands are skipped): "
            "%env MINIVLM_DEMO=1 (cell 1), !echo this shell line is skipped (cell 1)") \
        in row["notes"]


@pytest.fixture(scope="module")
def graded_unsandboxed(tmp_path_factory) -> dict:
    """Without a sandbox (even where bwrap exists): the result channel, killed processes,
    detached processes and the warning in the CSV."""
    root = tmp_path_factory.mktemp("unsandboxed")
    subs = root / "submissions"
    subs.mkdir()
    attacks = gf.attacks([])
    for name in ("attack_forge_result.ipynb", "attack_kill.ipynb", "attack_detached.ipynb"):
        (subs / name).write_text(attacks[name], encoding="utf-8")
    lines: list[str] = []
    work = tmp_path_factory.mktemp("unsandboxed-work")
    saved, tempfile.tempdir = tempfile.tempdir, str(work)
    try:
        rows = grade([subs], root / "gradebook.csv", timeout=60, check_timeout=5, jobs=1,
                     log=lines.append, sandbox="none")
    finally:
        tempfile.tempdir = saved
    time.sleep(1.0)
    return {"rows": {r["submission"].removesuffix(".ipynb"): r for r in rows}, "log": lines,
            "work": work,
            "csv": (root / "gradebook.csv").read_text()}


def test_without_a_sandbox_the_gradebook_says_so(graded_unsandboxed):
    rows = graded_unsandboxed["rows"]
    assert _points(rows["attack_forge_result"]) == (0, 0, 0, 0)
    # as root and unsandboxed it can reach the pipes, but what it writes spoils the result
    assert "ended the process" not in rows["attack_forge_result"]["notes"]
    assert _points(rows["attack_kill"]) == (0, 0, 0, 0)
    assert "the notebook ended the process that executed it" in rows["attack_kill"]["notes"]
    assert _points(rows["attack_detached"]) == (2, 3, 1, 6)  # graded as usual, then stopped
    assert all(r["isolated"] == "NO (--sandbox none was asked for)" for r in rows.values())
    assert ",NO (--sandbox none was asked for)," in graded_unsandboxed["csv"]
    assert any("submissions were NOT ISOLATED" in line for line in graded_unsandboxed["log"])
    assert graded_unsandboxed["log"][-1].endswith("(WARNING: submissions were NOT isolated: "
                                                  "--sandbox none was asked for)")


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc")
def test_no_process_outlives_grading_without_a_sandbox(graded_unsandboxed):
    assert _grading_processes(graded_unsandboxed["work"]) == []


def test_rows_are_written_as_each_submission_finishes_and_resume_keeps_them(tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    for k in range(3):
        (subs / f"broken{k}.ipynb").write_bytes(b"not a notebook %d" % k)
    out = tmp_path / "grades.csv"
    seen = []

    def log(line: str) -> None:
        if line.startswith("  broken"):
            seen.append(len(out.read_text().splitlines()) - 1)  # rows on disk already

    grade([subs], out, exercise="00_patchify_attention", log=log, sandbox="none")
    assert seen == [1, 2, 3]
    # a run stopped after two rows: the CSV holds them; --resume grades only the rest
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:3]) + "\n")
    (subs / "broken1.ipynb").write_bytes(b"changed since")  # a changed file is graded again
    with pytest.raises(FileExistsError, match="--resume"):
        grade([subs], out, exercise="00_patchify_attention", log=None)
    rows = grade([subs], out, exercise="00_patchify_attention", resume=True, log=None,
                 sandbox="none")
    assert [r.get("_resumed", False) for r in rows] == [True, False, False]
    assert len(out.read_text().splitlines()) == 4


# ----------------------------------------------------------------------------- exercise 02
EX02 = gf.ROOT / "exercises" / "02_vilt_fusion.ipynb"
#: the graded functions without the training one (its check trains two small ViLTs; it is
#: tested in test_ex02_checks.py) and no demos: a cheap notebook to execute and grade
EX02_CELLS = ("imports", "build_single_stream_input", "itm_loss", "whole_word_choice",
              "corrupt_chosen", "mask_colour_words")
EX02_PARTS = {"build_single_stream_input": 3, "itm_loss": 2, "whole_word_choice": 2,
              "corrupt_chosen": 1, "mask_colour_words": 2, "train_colour_mlm": 3}
EX02_BROKEN = {  # one deliberate mistake in each of the whole-word parts
    "whole_word_choice": ["return (word_noise < prob) & ~special  # a draw per piece"],
    "corrupt_chosen": [
        "to_mask = chosen & (how < 0.8)",
        "to_random = chosen & (how >= 0.8) & (how < 0.9)",
        "masked_ids = torch.where(to_random, random_ids, input_ids.masked_fill(to_mask, mask_id))",
        "return masked_ids, input_ids.masked_fill(~to_mask, -100)  # labels only at [MASK]"],
}


def _ex02_tiny(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb.cells = [c for c in nb.cells if c.get("id") in EX02_CELLS]
    imports = next(c for c in nb.cells if c.get("id") == "imports")  # not the training helpers
    imports.source = "\n".join(ln for ln in imports.source.split("\n") if "vilt_mlm" not in ln)
    return nb


@pytest.fixture(scope="module")
def graded_ex02(tmp_path_factory) -> dict:
    """Exercise 02 solved, and with its two whole-word parts broken (an untouched notebook
    scoring zero is tested with exercise 00 above and in test_ex02_checks.py)."""
    subs = tmp_path_factory.mktemp("ex02") / "submissions"
    subs.mkdir()
    broken = gf.solved(EX02)
    for cell_id, body in EX02_BROKEN.items():
        broken = gf.with_body(broken, cell_id, body, source=EX02)
    for name, nb in [("right", gf.solved(EX02)), ("broken", broken)]:
        (subs / f"{name}.ipynb").write_text(gf.text(_ex02_tiny(nb)), encoding="utf-8")
    rows = grade([subs], subs.parent / "gradebook.csv", exercise="02_vilt_fusion", timeout=60,
                 check_timeout=5, jobs=2, log=None, sandbox="bwrap" if BWRAP else "none")
    return {r["submission"].removesuffix(".ipynb"): r for r in rows}


def _marks(row: dict) -> dict[str, float]:
    return {part: float(row[part]) for part in EX02_PARTS}


def test_exercise_02_whole_word_parts_are_graded(graded_ex02):
    right, broken = graded_ex02["right"], graded_ex02["broken"]
    assert all(float(r["max_total"]) == 13 for r in graded_ex02.values())
    full = {**EX02_PARTS, "train_colour_mlm": 0}  # not in the tiny notebook
    assert _marks(right) == full, right["notes"]
    assert "train_colour_mlm: not defined" in right["notes"]
    # each broken part loses exactly its own marks
    assert _marks(broken) == {**full, "whole_word_choice": 0, "corrupt_chosen": 0}, broken
    assert float(right["total"]) - float(broken["total"]) == 2 + 1
    assert "whole_word_choice: " in broken["notes"] and "drawn on its own" in broken["notes"]
    assert "corrupt_chosen: " in broken["notes"] and "only where [MASK]" in broken["notes"]
