"""Grade a folder of submitted notebooks into a CSV gradebook.

For each submission, on private copies (a submission is only ever read), two
processes run at once, each in its own work folder and, where the machine has
bubblewrap, in its own sandbox (:mod:`minivlm.grading.isolation`); they share
nothing writable:

1. **execute** it top to bottom with nbclient in its own kernel, under a
   per-notebook time limit (``allow_errors=True``): this says whether the notebook
   runs, and the first error or the cell that ran out of time goes into the notes.
   Its printed output is never read for grading.
2. **grade** it in a fresh worker process: the worker keeps the references and
   the comparison code to itself and runs the notebook's code cells in a forked
   child (each cell under a time limit; a cell that raises or runs out of time is
   skipped and recorded; ``%%time``-like cell magics run their body, other magics
   and shell lines are skipped with a note), so nothing a notebook defines - a fake
   ``check`` that prints "all checks passed", say - can reach the grader. Each
   check (with its fixed seed) sends its inputs to the child, which runs the
   learner's function in yet another child that is killed on timeout.

Each process sends its result to the grader through a pipe only it holds (never
a file); a result counts only when the process ended normally. A notebook that
kills its kernel or a grading process gets 0 with that reason. When both
processes have ended - and with them, through the sandbox's PID namespace or the
reaper, every process the submission started - the submission's row is written:
the CSV is rewritten atomically after every row, so a stopped run keeps its rows
(``resume=True`` continues it). The gradebook has one row per submission:
``submission``, one column of points per check, ``total``, ``max_total``,
``notes`` (a reason for every check that did not earn its points), ``isolated``
and ``sha256``.

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
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # the worker's own process: skip a slow unused import (execute.py)
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[assignment]

from minivlm.grading import execute as _execute  # noqa: E402
from minivlm.grading.student import _usual_permissions  # noqa: E402
from minivlm.utils import atomic_write  # noqa: E402

execute_notebook = _execute.execute_notebook
EXECUTE_SCRIPT = _execute.__file__  # run as a script: it needs no torch, so it starts fast

_STUDENT_META = "minivlm"


# ============================================================================= 2. grading worker
class _CellTimeout(BaseException):
    """Raised by SIGALRM inside a notebook cell that ran out of time."""


#: cell magics whose body is not Python: skipped (with a note) when grading
_NOT_PYTHON_MAGICS = frozenset({
    "bash", "sh", "script", "system", "sx", "html", "HTML", "javascript", "js", "svg",
    "latex", "markdown", "writefile", "file", "perl", "ruby", "python2", "python3", "pypy",
})
#: line magics whose argument is a Python statement: the statement runs (once)
_STATEMENT_LINE_MAGICS = frozenset({"time", "timeit", "prun"})


class _FakeIPython:
    """What ``get_ipython()`` returns to cells run outside a kernel. Cell magics that wrap
    Python (``%%time``, ``%%capture``, ``%%timeit``, ...) run their body once; ``%time``-like
    line magics run their statement; other line magics and shell commands (``!pip``) are
    skipped, and each skip is noted in ``skipped``."""

    def __init__(self, ns: dict[str, Any] | None = None, filename: str = "<cell>") -> None:
        self.ns = ns if ns is not None else {}
        self.filename = filename
        self.skipped: list[str] = []

    def _run(self, source: str) -> None:
        exec(compile(_python_source(source), self.filename, "exec", dont_inherit=True),
             self.ns)

    def run_cell_magic(self, magic_name: str, line: str = "", cell: str = "",
                       *a: Any, **k: Any) -> None:
        if magic_name in _NOT_PYTHON_MAGICS:
            self.skipped.append(f"%%{magic_name}")
            return None
        if magic_name == "capture" and line.split():
            self.ns[line.split()[-1]] = None  # %%capture out: the name exists afterwards
        self._run(cell)
        return None

    def run_line_magic(self, magic_name: str, line: str = "", *a: Any, **k: Any) -> None:
        if magic_name in _STATEMENT_LINE_MAGICS and line.strip():
            stmt = " ".join(w for w in line.split() if not w.startswith("-"))
            self._run(stmt)
            return None
        self.skipped.append(f"%{magic_name} {line}".strip())
        return None

    def system(self, cmd: str = "", *a: Any, **k: Any) -> None:
        self.skipped.append(f"!{cmd}".strip())
        return None

    def getoutput(self, cmd: str = "", *a: Any, **k: Any) -> list:
        self.skipped.append(f"!{cmd}".strip())
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


def _host_main(conn: Any, cells: list[tuple[int, str]], cell_timeout: float,
               close_fds: Sequence[int] = ()) -> None:
    """The notebook's process: run its cells, then call its functions on request.

    Talks to the grader over ``conn``: requests come pickled from the grader;
    replies are plain values (``sandbox.dumps_safe``). ``close_fds`` (the worker's
    result pipe) are closed first, and stdout/stderr go to /dev/null."""
    from minivlm.grading import core
    from minivlm.grading.sandbox import _die_with_parent, dumps_safe, learner_frame, run_calls

    try:
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        _die_with_parent(os.getppid())  # never outlive the grader
        devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        sys.stdout = sys.stderr = devnull
        os.environ["MPLBACKEND"] = "Agg"
        import minivlm.grading as pkg

        pkg.check = core.check = _quiet_check  # type: ignore[assignment]
        ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins,
                              "display": lambda *a, **k: None}
        shell = _FakeIPython(ns)
        ns["get_ipython"] = lambda: shell
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
            shell.filename, shell.skipped = name, []
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
            if shell.skipped:
                report["skipped"] = [str(x)[:80] for x in shell.skipped[:5]]
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

    def __init__(self, cells: list[tuple[int, str]], cell_timeout: float,
                 close_fds: Sequence[int] = ()) -> None:
        method = "fork" if "fork" in mp.get_all_start_methods() and sys.platform.startswith(
            "linux") else "spawn"
        ctx = mp.get_context(method)
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_host_main,
                                args=(child, cells, cell_timeout, tuple(close_fds)),
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
        from minivlm.grading.sandbox import RunStatus, wall_limit

        self.conn.send(("run", name, calls, timeout))
        reply = self._recv(wall_limit(timeout) + 30)  # the calls' limit counts CPU seconds
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
               check_timeout: float, allow_library: bool = False,
               close_fds: Sequence[int] = ()) -> dict:
    """Grade one notebook (see module doc); returns the JSON-able report. Every check runs
    with its fixed seed (:func:`core.stable_seed`), so grading twice gives the same marks."""
    import nbformat

    from minivlm.grading import core

    core.load_checks()
    checks = [core.get_check(n) for n in check_names]
    for chk in checks:  # captured here, before any of the notebook's code runs
        chk.resolve_reference()
    nb = nbformat.read(Path(path), as_version=4)
    cells = code_cells(nb)
    host = NotebookHost(cells, cell_timeout, close_fds)
    report: dict[str, Any] = {"cells": [], "checks": {}, "stopped": None}
    try:
        report["cells"], report["stopped"] = host.run_cells(len(cells))
        for chk in checks:
            if report["stopped"] is not None:
                r = core.failed(chk, "error", f"not graded: {report['stopped']}")
            else:
                r = _grade_one_check(host, chk, check_timeout, cells, report["cells"],
                                     allow_library)
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
                     cells: list[tuple[int, str]], reports: list[dict],
                     allow_library: bool = False) -> Any:
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
                             timeout=timeout, seed=core.stable_seed(chk.name),
                             allow_library=allow_library)
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
    cpu_seconds: float | None = None  # execution + grading processes, when they said


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
    allow_library: bool = False


_MAX_RESULT = 32 * 2**20  # bytes a worker may send back


class _Run:
    """One process of a submission (execution or grading worker), started through the
    isolation, with a pipe that only it holds the write end of: its result comes back
    there, never through a file the notebook could reach."""

    def __init__(self, argv: list[str], workdir: Path, log: Path, iso: Any) -> None:
        from minivlm.grading.isolation import env_for, private_env

        r, w = os.pipe()
        env = env_for(workdir)
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(
                iso.command([sys.executable, *argv, "--result-fd", str(w)], workdir,
                            private_env(workdir)),
                cwd=workdir, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                env=env, start_new_session=True, pass_fds=(w,))
        os.close(w)
        self.log = log
        self.data = bytearray()
        self.reader = threading.Thread(target=self._read, args=(r,), daemon=True)
        self.reader.start()

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as f:
            while chunk := f.read(65536):
                if len(self.data) < _MAX_RESULT:
                    self.data += chunk

    def wait(self, deadline: float) -> bool:
        """Wait until ``deadline``; after it stop everything the process started and
        return False."""
        ok = _wait(self.proc, deadline)
        self.reader.join(5)
        return ok

    def result(self) -> dict | None:
        try:
            out = json.loads(bytes(self.data).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        return out if isinstance(out, dict) else None

    def ended(self) -> str:
        code = self.proc.returncode
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        if code > 128:  # bwrap and the reaper report a signal as 128 + n
            try:
                return f"killed by signal {signal.Signals(code - 128).name}"
            except ValueError:
                pass
        return f"exit code {code}"


def _wait(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait until ``deadline``; then SIGTERM (the reaper kills what it started), and
    SIGKILL the process group. Returns False when the deadline passed."""
    try:
        proc.wait(max(0.0, deadline - time.monotonic()))
        return True
    except subprocess.TimeoutExpired:
        pass
    try:
        proc.terminate()
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):
        proc.kill()
    proc.wait()
    return False


def _log_tail(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def grade_submission(sub: Submission, checks: Sequence[Any], limits: Limits,
                     iso: Any = None) -> dict:
    """One gradebook row (a dict) for one submission. When it returns, every process the
    submission started has ended."""
    from minivlm.grading.core import CheckResult, failed
    from minivlm.grading.isolation import Isolation

    iso = iso if iso is not None else Isolation("none", "no isolation given")
    t0 = time.monotonic()
    notes: list[str] = []
    results: dict[str, CheckResult] = {}
    if sub.problem is None and sub.nb is None:
        _load(sub)
    if sub.problem is not None:
        notes.append(sub.problem)
        results = {c.name: failed(c, "error", "not graded") for c in checks}
        return _row(sub, checks, results, notes, iso, quiet=True,
                    seconds=time.monotonic() - t0)
    notes += sub.warnings
    tmp = Path(tempfile.mkdtemp(prefix="minivlm-grade-"))
    runs: list[_Run] = []
    try:
        exec_dir, grade_dir = tmp / "execute", tmp / "grade"  # nothing shared between them
        for d in (exec_dir, grade_dir):
            d.mkdir()
            (d / "submission.ipynb").write_bytes(sub.data)
        n_cells = len(code_cells(sub.nb))
        execute = _Run([EXECUTE_SCRIPT, "submission.ipynb", "--timeout", str(limits.timeout)]
                       + (["--kernel", limits.kernel] if limits.kernel else []),
                       exec_dir, tmp / "execute.log", iso)
        worker = _Run(["-m", "minivlm.grading.gradebook", "submission.ipynb",
                       "--checks", ",".join(c.name for c in checks),
                       "--cell-timeout", str(limits.cell_timeout),
                       "--check-timeout", str(limits.check_timeout)]
                      + (["--allow-library"] if limits.allow_library else []),
                      grade_dir, tmp / "worker.log", iso)
        runs += [execute, worker]
        start = time.monotonic()
        exec_ok = execute.wait(start + limits.timeout + 60)
        worker_ok = worker.wait(start + 90 + n_cells * (limits.cell_timeout + 10)
                                + len(checks) * (limits.check_timeout + 30))
        summary = execute.result() if exec_ok else None
        # a result counts only from a worker that ended normally (one that was stopped or
        # killed may have left someone else's bytes in the pipe)
        report = worker.result() if worker_ok and worker.proc.returncode == 0 else None
        notes += _execution_notes(summary, exec_ok, execute, limits)
        killed = _killed_itself(summary, exec_ok, execute)
        if report is None or killed or not isinstance(report.get("checks"), dict):
            if killed:
                why = killed
            elif not worker_ok:
                why = "grading ran out of time"
            elif worker.proc.returncode != 0:
                why = (f"the notebook ended the grading process ({worker.ended()}): "
                       "0 points")
            elif worker.data:
                why = ("the grading process's result was not valid (did the notebook write "
                       "into it?): 0 points")
            else:
                why = f"grader failed: {_log_tail(worker.log)}"
            notes.append(why)
            results = {c.name: failed(c, "error", "not graded") for c in checks}
            return _row(sub, checks, results, notes, iso, quiet=True,
                        seconds=time.monotonic() - t0)
        for cell in report.get("cells", []):
            if cell.get("status") == "timed out" and (summary or {}).get("status") != "timeout":
                notes.append(f"cell {cell['cell']} skipped when grading: timed out "
                             f"{cell.get('error')}")
        skipped = [f"{x} (cell {c['cell']})" for c in report.get("cells", [])
                   for x in c.get("skipped", [])]
        if skipped:
            more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
            notes.append("not run when grading (line magics and shell commands are skipped): "
                         + ", ".join(skipped[:3]) + more)
        cpu = [x.get("cpu_seconds") for x in (summary or {}, report)]
        if all(isinstance(x, (int, float)) for x in cpu):
            sub.cpu_seconds = float(sum(cpu))  # type: ignore[arg-type]
        results = {}
        for c in checks:
            d = report["checks"].get(c.name)
            try:
                r = CheckResult.from_dict(d)
            except Exception:  # noqa: BLE001 - a malformed entry earns nothing
                r = failed(c, "error", "no result")
            # the points are the check's, never the number the worker sent
            r.points = float(c.points) if r.status == "passed" else 0.0
            r.max_points = float(c.points)
            results[c.name] = r
        return _row(sub, checks, results, notes, iso, seconds=time.monotonic() - t0)
    finally:
        for run in runs:  # only if something above failed half-way
            if run.proc.poll() is None:
                _wait(run.proc, 0)
        shutil.rmtree(tmp, ignore_errors=True)


def _killed_itself(summary: dict | None, finished: bool, execute: _Run) -> str | None:
    """A plain reason when the notebook killed its own kernel or the process executing it."""
    if summary is None and finished:
        if execute.proc.returncode == 0 and execute.data:
            return ("the execution process's result was not valid (did the notebook write "
                    "into it?): 0 points")
        return f"the notebook ended the process that executed it ({execute.ended()}): 0 points"
    if summary is not None and summary.get("status") == "kernel died":
        return (f"the notebook killed its own kernel (cell {summary.get('timeout_cell')}): "
                "0 points")
    return None


def _execution_notes(summary: dict | None, finished: bool, execute: _Run, limits: Limits
                     ) -> list[str]:
    if summary is None:
        if not finished:
            return [f"execution did not finish within {limits.timeout:g} s (stopped)"]
        return []  # _killed_itself says why
    notes = []
    status = summary.get("status")
    if status == "timeout":
        notes.append(f"execution timed out after {limits.timeout:g} s in cell "
                     f"{summary.get('timeout_cell')}")
    elif status == "failed":
        notes.append(f"could not execute the notebook: {summary.get('detail')}")
    errors = summary.get("errors", []) if isinstance(summary.get("errors"), list) else []
    if errors:
        e = errors[0]
        more = f" (and {len(errors) - 1} more cell(s) with errors)" if len(errors) > 1 else ""
        first = (str(e.get("evalue", "")).splitlines() or [""])[0][:150]
        notes.append(f"runs with errors: cell {e.get('cell')} raised {e.get('ename')}: "
                     f"{first}{more}")
    return notes


def _row(sub: Submission, checks: Sequence[Any], results: dict, notes: list[str], iso: Any,
         *, quiet: bool = False, seconds: float = 0.0) -> dict:
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
    row["isolated"] = "yes (bubblewrap)" if iso.isolated else f"NO ({iso.why})"
    row["sha256"] = hashlib.sha256(sub.data).hexdigest() if sub.data else ""
    row["_seconds"] = round(seconds, 1)
    row["_cpu_seconds"] = sub.cpu_seconds
    row["_sha256"] = row["sha256"]
    return row


def _within(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def _resumable(out: Path, columns: list[str], subs: Sequence[Submission]) -> dict[str, dict]:
    """Rows of an earlier run of the same grading that can be kept: same columns, and the
    submission's file is unchanged (same sha256)."""
    try:
        with open(out, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != columns:
                raise ValueError(f"minivlm grade --resume: {out} has other columns "
                                 f"({reader.fieldnames}); it is not this exercise's gradebook")
            old = {r["submission"]: r for r in reader}
    except FileNotFoundError:
        return {}
    keep = {}
    for s in subs:
        r = old.get(s.name)
        if r is not None and r.get("sha256") == hashlib.sha256(s.data).hexdigest():
            row: dict[str, Any] = dict(r)
            for k in columns[1:-4]:  # the checks' points and the totals
                row[k] = float(row[k])
            row["total"], row["max_total"] = float(row["total"]), float(row["max_total"])
            row["_seconds"], row["_sha256"], row["_resumed"] = 0.0, row["sha256"], True
            keep[s.name] = row
    return keep


def grade(submissions: Sequence[str | Path], out: str | Path, *, exercise: str | None = None,
          timeout: float = 60.0, cell_timeout: float | None = None, check_timeout: float = 10.0,
          jobs: int = 1, force: bool = False, kernel: str | None = None, resume: bool = False,
          sandbox: str = "auto", allow_library: bool = False,
          log: Callable[[str], None] | None = print) -> list[dict]:
    """Grade every notebook in ``submissions`` (folders and/or files) into the CSV ``out``.

    The CSV is rewritten (atomically) as each submission finishes, so a run that is
    stopped keeps every row already graded; ``resume=True`` keeps those rows (when the
    submission's file is unchanged) and grades the rest. Refuses to overwrite an existing
    ``out`` unless ``force`` or ``resume``, and to write it inside a submissions folder.
    ``sandbox``: "auto" (bubblewrap when it works here), "bwrap" or "none" (see
    :mod:`minivlm.grading.isolation`). Returns the rows (dicts; keys starting with "_" are
    not written).
    """
    from minivlm.grading.core import list_checks
    from minivlm.grading.isolation import NOT_ISOLATED, choose

    out = Path(out)
    if out.exists() and not (force or resume):
        raise FileExistsError(f"minivlm grade: {out} exists; pass --resume to keep its rows "
                              "and grade the rest, or --force to overwrite it (it may hold "
                              "marks you entered by hand)")
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
                    check_timeout=check_timeout, kernel=kernel, allow_library=allow_library)
    hidden = [p for p in map(Path, submissions) if p.is_dir()]
    hidden += [p.parent for p in map(Path, submissions) if p.is_file()]
    iso = choose(sandbox).with_hidden([*hidden, out.resolve().parent, out.resolve()])
    columns = ["submission", *[c.name for c in checks], "total", "max_total", "notes",
               "isolated", "sha256"]
    done: dict[str, dict] = _resumable(out, columns, subs) if resume and not force else {}
    order = {s.name: i for i, s in enumerate(subs)}
    lock = threading.Lock()

    def write() -> None:
        rows = sorted(done.values(), key=lambda r: order.get(r["submission"], len(order)))

        def to(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
                w.writeheader()
                for r in rows:
                    w.writerow({k: (f"{v:g}" if isinstance(v, float) else v)
                                for k, v in r.items()})
            _usual_permissions(tmp)

        atomic_write(out, to)

    if log:
        log(f"grading {len(subs)} notebook(s) for exercise {exercise} "
            f"({', '.join(c.name for c in checks)}) with {jobs} job(s)"
            + (f"; {len(done)} kept from {out}" if done else ""))
        log("  isolation: bubblewrap sandbox (read-only system, private /tmp, own PID "
            "namespace, no network)" if iso.isolated else f"  WARNING: {NOT_ISOLATED} "
            f"({iso.why})")

    def one(sub: Submission) -> dict:
        row = grade_submission(sub, checks, limits, iso)
        with lock:  # every process of this submission has ended: write its row
            done[sub.name] = row
            write()
        if log:
            cpu = row.get("_cpu_seconds")
            took = f"{row['_seconds']:.1f} s" + (f", CPU {cpu:.1f} s" if cpu else "")
            log(f"  {sub.name}: {row['total']:g}/{row['max_total']:g} "
                f"({took}){'  - ' + row['notes'] if row['notes'] else ''}")
        return row

    todo = [s for s in subs if s.name not in done]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, todo))
    write()
    if log:
        log(f"wrote {out}" + ("" if iso.isolated else f"  (WARNING: submissions were NOT "
                                                      f"isolated: {iso.why})"))
    return [done[s.name] for s in subs]


# ============================================================================= entry point
def _main(argv: list[str] | None = None) -> int:
    from minivlm.grading.isolation import no_dump

    p = argparse.ArgumentParser(prog="python -m minivlm.grading.gradebook",
                                description="grading worker (used by `minivlm grade`)")
    p.add_argument("notebook")
    p.add_argument("--result-fd", type=int, required=True,
                   help="pipe to write the JSON report to")
    p.add_argument("--checks", required=True)
    p.add_argument("--cell-timeout", type=float, required=True)
    p.add_argument("--check-timeout", type=float, required=True)
    p.add_argument("--allow-library", action="store_true")
    a = p.parse_args(argv)
    no_dump()  # the notebook's process (a fork child) cannot open /proc/<this>/fd or mem
    report = run_worker(a.notebook, [n for n in a.checks.split(",") if n],
                        cell_timeout=a.cell_timeout, check_timeout=a.check_timeout,
                        allow_library=a.allow_library, close_fds=(a.result_fd,))
    report["cpu_seconds"] = round(_execute._cpu_seconds(), 2)
    with os.fdopen(a.result_fd, "wb") as f:
        f.write(json.dumps(report).encode())
    return 0


if __name__ == "__main__":
    sys.exit(_main())
