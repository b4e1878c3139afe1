"""Run a command and, when it ends, kill every process it started (used by ``minivlm grade``
where there is no sandbox).

    python minivlm/grading/reaper.py COMMAND...

Linux only: the reaper becomes a *child subreaper* (``PR_SET_CHILD_SUBREAPER``), so every
descendant whose parent dies - a detached, double-forked or ``setsid`` process included -
becomes its child. When the command ends (or the reaper gets SIGTERM) it SIGKILLs its
children until none is left, then exits with the command's status. It also dies with the
grader (``PR_SET_PDEATHSIG``). File descriptors it inherits are passed on to the command and
closed here, so a pipe's reader sees its end when the command's side is gone. It imports
only the standard library (no torch), so it starts fast.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def _prctl(option: int, value: int) -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, value)
    except Exception:  # noqa: BLE001 - not Linux: processes are killed by group only
        pass


def _children(pid: int) -> list[int]:
    kids = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return kids
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] not in "ZX":
            kids.append(int(name))
    return kids


def kill_all(deadline_s: float = 10.0) -> None:
    """SIGKILL every child (descendants reparent here) and reap them, until none is left."""
    me = os.getpid()
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        kids = _children(me)
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                break
        if not kids and not _children(me):
            return
        time.sleep(0.02)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: reaper.py COMMAND...", file=sys.stderr)
        return 2
    _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    _prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG: die with the grader
    fds = []
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []:
        fd = int(name)
        if fd > 2:
            try:
                os.fstat(fd)
                fds.append(fd)
            except OSError:
                pass
    proc = subprocess.Popen(argv, pass_fds=fds)
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass

    def stop(signum: int, frame: object) -> None:
        kill_all()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    code = proc.wait()
    kill_all()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
