"""The pieces around a submission's processes, without executing notebooks: the sandbox
command line, the reaper that stops detached processes, and the stand-in IPython."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minivlm.grading.gradebook import _FakeIPython, _python_source
from minivlm.grading.isolation import REAPER_SCRIPT, Isolation, bwrap_problem, choose


def test_choice_is_injectable():
    assert choose("none").kind == "none" and not choose("none").isolated
    assert choose("auto").kind == ("bwrap" if bwrap_problem() is None else "none")
    with pytest.raises(ValueError, match="'auto', 'bwrap' or 'none'"):
        choose("docker")
    if bwrap_problem() is not None:
        with pytest.raises(RuntimeError, match="--sandbox bwrap"):
            choose("bwrap")


def test_sandbox_command_hides_submissions_and_keeps_python(tmp_path):
    subs = Path.home() / ".minivlm-test-subs"  # outside /tmp, which is replaced anyway
    subs.mkdir(exist_ok=True)
    try:
        iso = Isolation("bwrap").with_hidden([subs, Path(sys.prefix), tmp_path / "missing"])
        cmd = iso.command(["python", "x.py"], tmp_path, {"A": "1"})
    finally:
        subs.rmdir()
    text = " ".join(cmd)
    assert f"--tmpfs {subs.resolve()}" in text  # the submissions are not visible
    assert f"--tmpfs {Path(sys.prefix).resolve()}" not in text  # python stays
    assert "--ro-bind / /" in text and f"--bind {tmp_path} {tmp_path}" in text
    for flag in ("--unshare-all", "--die-with-parent", "--cap-drop ALL", "--tmpfs /tmp",
                 "--setenv A 1"):
        assert flag in text
    assert cmd[-3:] == ["--", "python", "x.py"]
    book = Path(sys.prefix) / "pyvenv.cfg"  # a file whose folder cannot be hidden
    if book.is_file():
        cmd = Isolation("bwrap").with_hidden([book]).command(["python"], tmp_path, {})
        assert f"--ro-bind /dev/null {book.resolve()}" in " ".join(cmd)
    assert Isolation("none").command(["python", "x.py"], tmp_path, {}) == [
        sys.executable, REAPER_SCRIPT, "python", "x.py"]


DETACH = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open(sys.argv[1], "w").write(str(os.getpid()))
        time.sleep(300)
    os._exit(0)
time.sleep(0.5)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux subreaper")
def test_reaper_stops_a_detached_process(tmp_path):
    pidfile = tmp_path / "pid"
    subprocess.run([sys.executable, REAPER_SCRIPT, sys.executable, "-c", DETACH, str(pidfile)],
                   check=True, timeout=60)
    pid = int(pidfile.read_text())
    assert not _alive(pid)  # gone when the reaper returned


@pytest.mark.skipif(bwrap_problem() is not None, reason=f"no sandbox: {bwrap_problem()}")
def test_sandbox_stops_a_detached_process_and_hides_the_host(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    secret = Path.home() / ".minivlm-test-secret"
    secret.mkdir(exist_ok=True)
    (secret / "marks.csv").write_text("private")
    probe = ("import os, sys\n"
             f"print(os.path.exists({str(secret / 'marks.csv')!r}))\n"
             "print(len([p for p in os.listdir('/proc') if p.isdigit()]) < 10)\n"
             "try:\n    open('/etc/minivlm-probe', 'w')\nexcept OSError:\n    print('ro')\n")
    try:
        iso = Isolation("bwrap").with_hidden([secret])
        out = subprocess.run(iso.command([sys.executable, "-c", probe], work, {}),
                             capture_output=True, text=True, timeout=60, cwd=work)
        assert out.stdout.split() == ["False", "True", "ro"], out
        pidfile = work / "pid"
        subprocess.run(iso.command([sys.executable, "-c", DETACH, str(pidfile)], work, {}),
                       check=True, timeout=60, cwd=work)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5 and not pidfile.exists():
            time.sleep(0.05)
        # the pid is the sandbox's own; what matters is that nothing ran on from there
        assert [p for p in os.listdir("/proc") if p.isdigit() and _cwd_in(p, work)] == []
    finally:
        (secret / "marks.csv").unlink()
        secret.rmdir()


def _cwd_in(pid: str, folder: Path) -> bool:
    try:
        return str(folder) in os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False


def _run_cell(src: str, ns: dict) -> _FakeIPython:
    shell = _FakeIPython(ns, "<cell 0>")
    ns["get_ipython"] = lambda: shell
    exec(compile(_python_source(src), "<cell 0>", "exec"), ns)
    return shell


def test_cell_magics_run_their_body_and_line_magics_are_skipped_with_a_note():
    ns: dict = {}
    shell = _run_cell("%%time\ndef f(x):\n    return x + 1\n", ns)
    assert ns["f"](1) == 2 and shell.skipped == []
    _run_cell("%%capture out\ng = 3\n", ns)
    assert ns["g"] == 3
    shell = _run_cell("%matplotlib inline\n!pip install foo\nh = 4\n%time k = h + 1\n", ns)
    assert ns["h"] == 4 and ns["k"] == 5
    assert shell.skipped == ["%matplotlib inline", "!pip install foo"]
    shell = _run_cell("%%bash\necho hi\n", ns)
    assert shell.skipped == ["%%bash"]
