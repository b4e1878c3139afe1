"""Where a submission's processes run while ``minivlm grade`` executes and grades it.

* ``bwrap``: a `bubblewrap <https://github.com/containers/bubblewrap>`_ sandbox (Debian's
  ``bubblewrap`` package; ``make sandbox`` installs it where it can): a read-only view of
  the system, a private ``/tmp`` with the submission's own work folder as the only writable
  place, the submissions folders and the gradebook's folder hidden, its own PID namespace
  (the grader's processes are invisible; when the sandbox's first process ends the kernel
  kills every process left in it), no network (loopback only, for the Jupyter kernel), no
  capabilities, and it dies with the grader.
* ``none``: no sandbox. The processes run with the grader's rights, under a small reaper
  (:mod:`minivlm.grading.reaper`, a Linux child subreaper) that kills every process they
  started, detached ones included, when the main one ends. Files outside the work folder
  are *not* protected; the gradebook says so.

``choose("auto")`` picks ``bwrap`` when it is installed and works here, else ``none``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REAPER_SCRIPT = str(Path(__file__).resolve().with_name("reaper.py"))
NOT_ISOLATED = ("submissions were NOT ISOLATED: each notebook ran with your user's rights and "
                "could read or change your files; install bubblewrap (`make sandbox`, or "
                "apt-get install bubblewrap) or grade in a container")


@dataclass
class Isolation:
    """How to start a submission's process: ``kind`` is "bwrap" or "none"; ``why`` says why
    there is no sandbox; ``hide`` are folders the sandbox must not show (submissions, the
    gradebook's folder)."""

    kind: str
    why: str = ""
    hide: list[Path] = field(default_factory=list)

    @property
    def isolated(self) -> bool:
        return self.kind == "bwrap"

    def with_hidden(self, paths: Iterable[str | Path]) -> Isolation:
        return Isolation(self.kind, self.why, [*self.hide, *map(Path, paths)])

    def command(self, argv: Sequence[str], workdir: Path, env: dict[str, str]) -> list[str]:
        """The command line that runs ``argv`` in ``workdir`` (its only writable folder)."""
        if self.kind != "bwrap":
            return [sys.executable, REAPER_SCRIPT, *argv]
        cmd = [_bwrap(), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
               "--tmpfs", "/tmp", "--tmpfs", "/var/tmp", "--tmpfs", "/run"]
        for p in _reexposed():  # Python or this package under /tmp (a clone there, say)
            cmd += ["--ro-bind", str(p), str(p)]
        folders = _hideable(self.hide, workdir)
        for p in folders:
            cmd += ["--tmpfs", str(p)]
        for p in self.hide:  # a file (the gradebook) whose folder must stay visible
            p = Path(p)
            if p.is_file() and not any(f in p.resolve().parents for f in folders):
                cmd += ["--ro-bind", "/dev/null", str(p.resolve())]
        cmd += ["--bind", str(workdir), str(workdir), "--chdir", str(workdir),
                "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        for k, v in {**env, "TMPDIR": "/tmp"}.items():
            cmd += ["--setenv", k, v]
        return [*cmd, "--", *argv]


def _needed() -> list[Path]:
    """Folders the sandbox must keep visible: Python, its packages and this package."""
    import minivlm

    keep = {Path(sys.prefix), Path(sys.base_prefix), Path(minivlm.__file__).parent.parent}
    keep |= {Path(p) for p in sys.path if p}
    return [p.resolve() for p in keep]


def _hideable(paths: Iterable[Path], workdir: Path) -> list[Path]:
    """Existing folders that can be covered without hiding what the sandbox needs."""
    keep = _needed()
    out = []
    for p in paths:
        p = Path(p).resolve()
        if not p.is_dir() or p == Path("/") or p in out:
            continue
        if any(k == p or p in k.parents for k in keep) or p in workdir.resolve().parents:
            continue
        if _under_tmpfs(p) and not any(r in p.parents for r in _reexposed()):
            continue  # already replaced by an empty tmpfs
        out.append(p)
    return out


_TMPFS = (Path("/tmp"), Path("/var/tmp"), Path("/run"))


def _under_tmpfs(p: Path) -> bool:
    return any(p == t or t in p.parents for t in _TMPFS)


def _reexposed() -> list[Path]:
    """Needed folders that the sandbox's empty /tmp, /var/tmp or /run would cover, outermost
    first (bound read-only again on top of the tmpfs)."""
    found = sorted({k for k in _needed() if _under_tmpfs(k) and k.exists()},
                   key=lambda k: len(k.parts))
    return [k for i, k in enumerate(found) if not any(o in k.parents for o in found[:i])]


@functools.lru_cache(maxsize=1)
def _bwrap() -> str:
    return shutil.which("bwrap") or "bwrap"


@functools.lru_cache(maxsize=1)
def bwrap_problem() -> str | None:
    """None when bubblewrap runs here; else why not."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bubblewrap (bwrap) is not installed"
    try:
        r = subprocess.run([exe, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                            "--tmpfs", "/tmp", "--unshare-all", "--die-with-parent",
                            "--cap-drop", "ALL", "--", "true"],
                           capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"bwrap does not start: {e}"
    if r.returncode != 0:
        msg = r.stderr.decode(errors="replace").strip().splitlines()
        return f"bwrap cannot create a sandbox here: {msg[-1] if msg else r.returncode}"
    return None


def choose(sandbox: str = "auto") -> Isolation:
    """``"auto"``: bubblewrap when it works here, else none; ``"bwrap"``: bubblewrap or an
    error; ``"none"``: no sandbox."""
    if sandbox not in ("auto", "bwrap", "none"):
        raise ValueError(f"sandbox must be 'auto', 'bwrap' or 'none', got {sandbox!r}")
    if sandbox == "none":
        return Isolation("none", "--sandbox none was asked for")
    problem = bwrap_problem() if sys.platform.startswith("linux") else "not Linux"
    if problem is None:
        return Isolation("bwrap")
    if sandbox == "bwrap":
        raise RuntimeError(f"minivlm grade --sandbox bwrap: {problem}")
    return Isolation("none", problem)


def private_env(workdir: Path) -> dict[str, str]:
    """Environment of a submission's process: its caches and Jupyter files in ``workdir``."""
    # (TMPDIR stays short: torch passes tensors between processes over AF_UNIX sockets
    # made there, whose paths may not exceed 107 bytes; in the sandbox /tmp is private.)
    env = {"MPLBACKEND": "Agg", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
           "JUPYTER_PLATFORM_DIRS": "1", "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
           "IPYTHONDIR": str(workdir / "ipython"), "MPLCONFIGDIR": str(workdir / "mpl")}
    for d in ("runtime", "ipython", "mpl"):
        (workdir / d).mkdir(exist_ok=True)
    return env


def no_dump() -> None:
    """Linux: make this process non-dumpable, so that a process it starts cannot read its
    memory or open its file descriptors through /proc (without CAP_SYS_PTRACE, which the
    sandbox drops)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0)  # PR_SET_DUMPABLE, 0
    except Exception:  # noqa: BLE001 - best effort
        pass


def env_for(workdir: Path) -> dict[str, str]:
    """The full environment for :func:`subprocess.Popen` (the parent's plus the private one)."""
    return {**os.environ, **private_env(workdir)}
