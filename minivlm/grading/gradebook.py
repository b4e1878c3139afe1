"""Grade a folder of submitted notebooks into a CSV gradebook.

For each submission, on private copies in a temporary folder (a submission is
only ever read):

1. **execute** it top to bottom with nbclient in its own process and kernel,
   under a per-notebook time limit (``allow_errors=True``): this says whether
   the notebook runs, and the first error or the cell that ran out of time goes
   into the notes. Its printed output is never read for grading.
2. **grade** it in a fresh worker process: the worker keeps the references and
   the comparison code to itself and runs the notebook's code cells in a forked
   child (each cell under a time limit; a cell that raises or runs out of time is
   skipped and recorded), so nothing a notebook defines - a fake ``check`` that
   prints "all checks passed", say - can reach the grader. Each check sends its
   inputs to the child, which runs the learner's function in yet another child
   that is killed on timeout; the worker compares and writes JSON.

Both run at once. The gradebook has one row per submission: ``submission``, one
column of points per check, ``total``, ``max_total`` and ``notes``, which gives
a reason for every check that did not earn its points.

The two processes are ``python minivlm/grading/execute.py`` (run as a file, so
that it starts without importing torch) and ``python -m minivlm.grading.gradebook``
(the worker); :func:`grade` / ``minivlm grade`` start them.
"""

from __future__ import annotations

import argparse
import builtins
import csv
import hashlib
import json
import linecache
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minivlm.grading import execute as _execute
from minivlm.grading.student import _usual_permissions
from minivlm.utils import atomic_write

execute_notebook = _execute.execute_notebook
EXECUTE_SCRIPT = _execute.__file__  # run as a script: it needs no torch, so it starts fast

_STUDENT_META = "minivlm"


# ============================================================================= 2. grading worker
class _CellTimeout(BaseException):
    """Raised by SIGALRM inside a notebook cell that ran out of time."""


class _FakeIPython:
    """What ``get_ipython()`` returns to cells run outside a kernel: magics do nothing."""

    def run_line_magic(self, *a: Any, **k: Any) -> None:
        return None

    def run_cell_magic(self, *a: Any, **k: Any) -> None:
        return None

    def system(self, *a: Any, **k: Any) -> None:
        return None

    def getoutput(self, *a: Any, **k: Any) -> list:
        return []

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **k: None


def _python_source(src: str) -> str:
    """Cell source with IPython syntax (``%magic``, ``!cmd``) turned into Python."""
    if not any(ln.lstrip().startswith(("%", "!")) or ln.rstrip().endswith("?")
               for ln in src.splitlines()):
        return src
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return TransformerManager().transform_cell(src)
    except Exception:  # noqa: BLE001 - fall back to dropping magic lines
        return "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln
                         for ln in src.splitlines())


def _quiet_check(*args: Any, **kwargs: Any) -> None:
    """Stands in for ``check`` while grading: the grader runs the real checks itself."""
    return None


def _host_main(conn: Any, cells: list[tuple[int, str]], cell_timeout: float) -> None:
    """The notebook's process: run its cells, then call its functions on request.

    Talks to the grader over ``conn``: requests come pickled from the grader;
    replies are plain values (``sandbox.dumps_safe``)."""
    from minivlm.grading import core
    from minivlm.grading.sandbox import _die_with_parent, dumps_safe, learner_frame, run_calls

    try:
        _die_with_parent(os.getppid())  # never outlive the grader
        devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        sys.stdout = sys.stderr = devnull
        os.environ["MPLBACKEND"] = "Agg"
        import minivlm.grading as pkg

        pkg.check = core.check = _quiet_check  # type: ignore[assignment]
        ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins,
                              "display": lambda *a, **k: None,
                              "get_ipython": lambda: _FakeIPython()}
        can_alarm = hasattr(signal, "setitimer")

        def on_alarm(signum: int, frame: Any) -> None:
            raise _CellTimeout()

        if can_alarm:
            signal.signal(signal.SIGALRM, on_alarm)
        for index, src in cells:
            name = f"<cell {index}>"
            linecache.cache[name] = (len(src), None, src.splitlines(True), name)
            t0 = time.monotonic()
            report: dict[str, Any] = {"cell": index, "status": "ok"}
            try:
                code = compile(_python_source(src), name, "exec", dont_inherit=True)
                if can_alarm:
                    signal.setitimer(signal.ITIMER_REAL, cell_timeout)
                try:
                    exec(code, ns)
                finally:
                    if can_alarm:
                        signal.setitimer(signal.ITIMER_REAL, 0)
            except _CellTimeout:
                report.update(status="timed out", error=f"after {cell_timeout:g} s")
            except BaseException as e:  # noqa: BLE001 - SystemExit and the like too
                where = learner_frame(e.__traceback__)
                report.update(status="raised", ename=type(e).__name__,
                              error=f"{type(e).__name__}: {str(e)[:200]}"
                              + (f" ({where})" if where else ""))
            report["seconds"] = round(time.monotonic() - t0, 3)
            conn.send_bytes(dumps_safe(report))
        conn.send_bytes(dumps_safe({"cells_done": True}))
        while True:
            req = conn.recv()
            if req[0] == "describe":
                obj = ns.get(req[1], None)
                conn.send_bytes(dumps_safe({"exists": req[1] in ns, "callable": callable(obj),
                                            "type": type(obj).__name__}))
            elif req[0] == "run":
                _, fname, calls, timeout = req
                raw, status = run_calls(ns[fname], calls, timeout)
                conn.send_bytes(dumps_safe({"raw": raw, "status": status.to_dict()}))
            else:
                break
    finally:
        os._exit(0)  # skip atexit handlers a notebook may have registered


class HostLost(RuntimeError):
    """The notebook's process stopped answering or exited."""


class NotebookHost:
    """The grader's handle on the process that runs a notebook's code."""

    def __init__(self, cells: list[tuple[int, str]], cell_timeout: float) -> None:
        method = "fork" if "fork" in mp.get_all_start_methods() and sys.platform.startswith(
            "linux") else "spawn"
        ctx = mp.get_context(method)
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_host_main, args=(child, cells, cell_timeout),
                                daemon=True)
        self.proc.start()
        child.close()
        self.cell_timeout = cell_timeout

    def _recv(self, timeout: float) -> Any:
        from minivlm.grading.sandbox import loads_safe

        if not self.conn.poll(timeout):
            raise HostLost("timeout")
        try:
            return loads_safe(self.conn.recv_bytes())
        except (EOFError, OSError) as e:
            raise HostLost("exited") from e

    def run_cells(self, n: int) -> tuple[list[dict], str | None]:
        """Reports of the cells run; the second item says why they stopped early."""
        reports: list[dict] = []
        while True:
            try:
                msg = self._recv(self.cell_timeout + 10)
            except HostLost as e:
                k = len(reports)
                why = ("could not be stopped" if str(e) == "timeout"
                       else "ended the grading process")
                return reports, f"cell {k + 1} of {n} code cells {why}"
            if msg.get("cells_done"):
                return reports, None
            reports.append(msg)

    def describe(self, name: str) -> dict:
        self.conn.send(("describe", name))
        return self._recv(30)

    def run(self, name: str, calls: list, timeout: float) -> tuple[list[bytes], Any]:
        from minivlm.grading.sandbox import RunStatus

        self.conn.send(("run", name, calls, timeout))
        reply = self._recv(timeout + 30)
        return list(reply["raw"]), RunStatus.from_dict(reply["status"])

    def close(self) -> None:
        try:
            self.conn.send(("close",))
        except Exception:  # noqa: BLE001
            pass
        self.proc.join(2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(2)


def code_cells(nb: Any) -> list[tuple[int, str]]:
    """(index in the notebook, source) of every code cell."""
    return [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


def run_worker(path: str | Path, check_names: Sequence[str], *, cell_timeout: float,
               check_timeout: float) -> dict:
    """Grade one notebook (see module doc); returns the JSON-able report."""
    import nbformat

    from minivlm.grading import core

    core.load_checks()
    checks = [core.get_check(n) for n in check_names]
    for chk in checks:  # captured here, before any of the notebook's code runs
        chk.resolve_reference()
    nb = nbformat.read(Path(path), as_version=4)
    cells = code_cells(nb)
    host = NotebookHost(cells, cell_timeout)
    report: dict[str, Any] = {"cells": [], "checks": {}, "stopped": None}
    try:
        report["cells"], report["stopped"] = host.run_cells(len(cells))
        for chk in checks:
            if report["stopped"] is not None:
                r = core.failed(chk, "error", f"not graded: {report['stopped']}")
            else:
                r = _grade_one_check(host, chk, check_timeout, cells, report["cells"])
            report["checks"][chk.name] = r.to_dict()
    finally:
        host.close()
    return report


def _defining_cell(name: str, cells: list[tuple[int, str]], reports: list[dict]) -> str:
    """Why ``name`` is missing: the cell that should define it failed, or there is none."""
    pattern = re.compile(rf"^\s*def\s+{re.escape(name)}\s*\(", re.MULTILINE)
    by_index = {r["cell"]: r for r in reports}
    for index, src in cells:
        if pattern.search(src):
            r = by_index.get(index, {})
            if r.get("status") not in (None, "ok"):
                return f"cell {index}, which defines it, {r.get('status')}: {r.get('error')}"
            return f"cell {index} defines it, but the name is gone by the end of the notebook"
    return f"the notebook has no `def {name}(...)`"


def _grade_one_check(host: NotebookHost, chk: Any, timeout: float,
                     cells: list[tuple[int, str]], reports: list[dict]) -> Any:
    from minivlm.grading import core

    try:
        info = host.describe(chk.function)
        if not info["exists"]:
            return core.failed(chk, "missing", f"not defined: "
                               f"{_defining_cell(chk.function, cells, reports)}")
        if not info["callable"]:
            return core.failed(chk, "missing",
                               f"{chk.function} is a {info['type']}, not a function")
        return core.evaluate(chk, lambda calls, t: host.run(chk.function, calls, t),
                             timeout=timeout)
    except HostLost as e:
        return core.failed(chk, "timed out" if str(e) == "timeout" else "error",
                           f"the notebook's process stopped answering ({e})")


# ============================================================================= 3. orchestration
@dataclass
class Submission:
    path: Path
    name: str  # as shown in the gradebook: path relative to the folder given
    data: bytes = b""
    nb: Any = None
    problem: str | None = None  # why it cannot be run at all
    warnings: list[str] = field(default_factory=list)


def find_submissions(paths: Iterable[str | Path]) -> list[Submission]:
    """Notebooks under the given folders (recursively) and files, sorted; folders
    named .ipynb_checkpoints are skipped."""
    subs: list[Submission] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*.ipynb")):
                if ".ipynb_checkpoints" in f.parts or not f.is_file():
                    continue
                subs.append(Submission(f, f.relative_to(p).as_posix()))
        elif p.is_file():
            subs.append(Submission(p, p.name))
        else:
            raise FileNotFoundError(f"minivlm grade: no such file or folder: {p}")
    return subs


def _load(sub: Submission) -> None:
    import nbformat

    with open(sub.path, "rb") as f:  # read-only, once
        sub.data = f.read()
    try:
        text = sub.data.decode("utf-8")
        json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        sub.problem = f"notebook is not valid JSON: {e}"
        return
    try:
        sub.nb = nbformat.reads(text, as_version=4)
    except Exception as e:  # noqa: BLE001
        sub.problem = f"not a valid notebook: {type(e).__name__}: {str(e)[:150]}"
        return
    try:
        nbformat.validate(sub.nb)
    except Exception as e:  # noqa: BLE001
        msg = str(getattr(e, "message", e)).splitlines()[0][:120]
        sub.warnings.append(f"notebook does not follow the nbformat schema ({msg}); "
                            "graded anyway")


def infer_exercise(subs: Sequence[Submission]) -> str:
    """The exercise the submissions are for: from the student notebook's metadata,
    else from the file names; one registered exercise is used when nothing says."""
    from minivlm.grading.core import list_exercises

    known = list_exercises()
    found: set[str] = set()
    for s in subs:
        meta = (s.nb.metadata.get(_STUDENT_META, {}) if s.nb is not None else {}) or {}
        ex = meta.get("exercise") if isinstance(meta, dict) else None
        if ex in known:
            found.add(ex)
            continue
        found.update(k for k in known if k in s.path.name)
    if len(found) == 1:
        return found.pop()
    if not found and len(known) == 1:
        return known[0]
    what = f"they look like {sorted(found)}" if found else "nothing names one"
    raise ValueError(f"minivlm grade: cannot tell which exercise the submissions are for "
                     f"({what}); pass --exercise, one of: {', '.join(known)}")


@dataclass
class Limits:
    timeout: float = 60.0  # whole notebook, nbclient
    cell_timeout: float = 60.0  # one cell, grading worker
    check_timeout: float = 10.0  # one check's calls of the learner's function
    kernel: str | None = None


def _spawn(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, MPLBACKEND="Agg", PYDEVD_DISABLE_FILE_VALIDATION="1",
               JUPYTER_PLATFORM_DIRS="1")
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, *args],
                                cwd=cwd, stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait until ``deadline``; kill the process group and return False after it."""
    try:
        proc.wait(max(0.0, deadline - time.monotonic()))
        return True
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, AttributeError):
            proc.kill()
        proc.wait()
        return False


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _log_tail(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def grade_submission(sub: Submission, checks: Sequence[Any], limits: Limits) -> dict:
    """One gradebook row (a dict) for one submission."""
    from minivlm.grading.core import CheckResult, failed

    t0 = time.monotonic()
    notes: list[str] = []
    results: dict[str, CheckResult] = {}
    if sub.problem is None and sub.nb is None:
        _load(sub)
    if sub.problem is not None:
        notes.append(sub.problem)
        results = {c.name: failed(c, "error", "not graded") for c in checks}
        return _row(sub, checks, results, notes, quiet=True, seconds=time.monotonic() - t0)
    notes += sub.warnings
    tmp = Path(tempfile.mkdtemp(prefix="minivlm-grade-"))
    procs: list[subprocess.Popen] = []
    try:
        exec_dir, grade_dir = tmp / "execute", tmp / "grade"
        for d in (exec_dir, grade_dir):
            d.mkdir()
            (d / "submission.ipynb").write_bytes(sub.data)
        n_cells = len(code_cells(sub.nb))
        execute = _spawn([EXECUTE_SCRIPT, "submission.ipynb", "summary.json", "--timeout",
                          str(limits.timeout)] + (["--kernel", limits.kernel]
                                                  if limits.kernel else []),
                         exec_dir, tmp / "execute.log")
        worker = _spawn(["-m", "minivlm.grading.gradebook", "submission.ipynb", "report.json",
                         "--checks", ",".join(c.name for c in checks), "--cell-timeout",
                         str(limits.cell_timeout), "--check-timeout", str(limits.check_timeout)],
                        grade_dir, tmp / "worker.log")
        procs += [execute, worker]
        start = time.monotonic()
        exec_ok = _wait(execute, start + limits.timeout + 60)
        worker_ok = _wait(worker, start + 90 + n_cells * (limits.cell_timeout + 10)
                          + len(checks) * (limits.check_timeout + 30))
        summary = _read_json(exec_dir / "summary.json") if exec_ok else None
        report = _read_json(grade_dir / "report.json") if worker_ok else None
        notes += _execution_notes(summary, exec_ok, tmp / "execute.log", limits)
        if report is None:
            why = ("grading ran out of time" if not worker_ok
                   else f"grader failed: {_log_tail(tmp / 'worker.log')}")
            notes.append(why)
            results = {c.name: failed(c, "error", "not graded") for c in checks}
            return _row(sub, checks, results, notes, quiet=True, seconds=time.monotonic() - t0)
        for cell in report.get("cells", []):
            if cell.get("status") == "timed out" and (summary or {}).get("status") != "timeout":
                notes.append(f"cell {cell['cell']} skipped when grading: timed out "
                             f"{cell.get('error')}")
        results = {name: CheckResult.from_dict(d) for name, d in report["checks"].items()}
        return _row(sub, checks, results, notes, seconds=time.monotonic() - t0)
    finally:
        for proc in procs:  # only if something above failed half-way
            if proc.poll() is None:
                _wait(proc, 0)
        shutil.rmtree(tmp, ignore_errors=True)


def _execution_notes(summary: dict | None, finished: bool, log: Path, limits: Limits
                     ) -> list[str]:
    if summary is None:
        if not finished:
            return [f"execution did not finish within {limits.timeout:g} s (stopped)"]
        return [f"could not execute the notebook: {_log_tail(log)}"]
    notes = []
    status = summary["status"]
    if status == "timeout":
        notes.append(f"execution timed out after {limits.timeout:g} s in cell "
                     f"{summary.get('timeout_cell')}")
    elif status == "kernel died":
        notes.append(f"the kernel died in cell {summary.get('timeout_cell')}")
    elif status == "failed":
        notes.append(f"could not execute the notebook: {summary.get('detail')}")
    errors = summary.get("errors", [])
    if errors:
        e = errors[0]
        more = f" (and {len(errors) - 1} more cell(s) with errors)" if len(errors) > 1 else ""
        first = (e["evalue"].splitlines() or [""])[0][:150]
        notes.append(f"runs with errors: cell {e['cell']} raised {e['ename']}: {first}{more}")
    return notes


def _row(sub: Submission, checks: Sequence[Any], results: dict, notes: list[str], *,
         quiet: bool = False, seconds: float = 0.0) -> dict:
    row: dict[str, Any] = {"submission": sub.name}
    total = 0.0
    for c in checks:
        r = results.get(c.name)
        pts = float(r.points) if r is not None else 0.0
        row[c.name] = pts
        total += pts
        if not quiet and (r is None or pts < c.points):
            notes.append(f"{c.name}: {r.summary if r is not None else 'not graded'}")
    row["total"] = total
    row["max_total"] = sum(c.points for c in checks)
    row["notes"] = "; ".join(notes)
    row["_seconds"] = round(seconds, 1)
    row["_sha256"] = hashlib.sha256(sub.data).hexdigest() if sub.data else ""
    return row


def _within(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def grade(submissions: Sequence[str | Path], out: str | Path, *, exercise: str | None = None,
          timeout: float = 60.0, cell_timeout: float | None = None, check_timeout: float = 10.0,
          jobs: int = 1, force: bool = False, kernel: str | None = None,
          log: Callable[[str], None] | None = print) -> list[dict]:
    """Grade every notebook in ``submissions`` (folders and/or files) into the CSV ``out``.

    Refuses to overwrite an existing ``out`` unless ``force``, and to write it inside a
    submissions folder. Returns the rows (dicts; keys starting with "_" are not written).
    """
    from minivlm.grading.core import list_checks

    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"minivlm grade: {out} exists; pass --force to overwrite it "
                              "(it may hold marks you entered by hand)")
    for s in map(Path, submissions):
        if s.is_dir() and _within(out, s):
            raise ValueError(f"minivlm grade: --out {out} is inside the submissions folder "
                             f"{s}; write the gradebook elsewhere")
    subs = find_submissions(submissions)
    if not subs:
        raise ValueError(f"minivlm grade: no .ipynb files in {', '.join(map(str, submissions))}")
    for s in subs:
        _load(s)
    exercise = exercise or infer_exercise(subs)
    checks = list_checks(exercise)
    if not checks:
        raise ValueError(f"minivlm grade: no checks registered for exercise {exercise!r}")
    limits = Limits(timeout=timeout, cell_timeout=cell_timeout or timeout,
                    check_timeout=check_timeout, kernel=kernel)
    if log:
        log(f"grading {len(subs)} notebook(s) for exercise {exercise} "
            f"({', '.join(c.name for c in checks)}) with {jobs} job(s)")

    def one(sub: Submission) -> dict:
        row = grade_submission(sub, checks, limits)
        if log:
            log(f"  {sub.name}: {row['total']:g}/{row['max_total']:g} "
                f"({row['_seconds']:.1f} s){'  - ' + row['notes'] if row['notes'] else ''}")
        return row

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        rows = list(pool.map(one, subs))
    columns = ["submission", *[c.name for c in checks], "total", "max_total", "notes"]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:g}" if isinstance(v, float) else v) for k, v in r.items()})
        _usual_permissions(tmp)

    atomic_write(out, write)
    if log:
        log(f"wrote {out}")
    return rows


# ============================================================================= entry point
def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minivlm.grading.gradebook",
                                description="grading worker (used by `minivlm grade`)")
    p.add_argument("notebook")
    p.add_argument("report")
    p.add_argument("--checks", required=True)
    p.add_argument("--cell-timeout", type=float, required=True)
    p.add_argument("--check-timeout", type=float, required=True)
    a = p.parse_args(argv)
    report = run_worker(a.notebook, [n for n in a.checks.split(",") if n],
                        cell_timeout=a.cell_timeout, check_timeout=a.check_timeout)
    Path(a.report).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
