"""Execute one notebook with nbclient under a time limit (step 1 of ``minivlm grade``).

``minivlm grade`` runs this file as a script in its own process, one per
submission::

    python minivlm/grading/execute.py NOTEBOOK --result-fd 3 --timeout 60 [--kernel NAME]

It imports nothing from ``minivlm`` (so no torch: it starts in a fraction of a
second) and writes a JSON summary to the pipe ``--result-fd`` (or to a file given
after the notebook): did the notebook run, which cells raised, which cell ran out
of time. Outputs are not kept: grading never trusts them. The pipe is not passed
to the kernel, and the process makes itself non-dumpable, so that the notebook
cannot reach the pipe through /proc either (in the sandbox, which has no
CAP_SYS_PTRACE).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a file: don't let this folder's modules shadow others
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    # nbformat -> jsonschema imports rfc3987_syntax when it is installed (jupyterlab brings
    # it), which builds a grammar at import: ~2.6 s of CPU per process, for the IRI formats
    # that nbformat's schemas never use. This process (one per submission) goes without it.
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[assignment]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402


def kernel_manager(kernel: str | None, workdir: Path) -> Any:
    """An async kernel manager. ``kernel=None``: this very interpreter (``sys.executable``)
    with its ipykernel, whatever kernelspecs are installed elsewhere (a user-level
    ``python3`` kernelspec would otherwise win over the virtual environment's)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    if kernel is not None:
        return AsyncKernelManager(kernel_name=kernel)
    spec_dir = workdir / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (minivlm grade)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    ksm = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)])
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ksm)


def execute_notebook(path: str | Path, *, timeout: float, kernel: str | None = None,
                     workdir: str | Path | None = None) -> tuple[dict, Any]:
    """Run a notebook top to bottom (``allow_errors=True``) within ``timeout`` seconds in all.

    Returns (summary, executed notebook). ``summary``: ``status`` ("ok", "errors",
    "timeout", "kernel died" or "failed"), ``errors`` (index, ename, evalue of each
    cell that raised), ``timeout_cell`` and ``seconds``.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    path = Path(path)
    workdir = Path(workdir) if workdir is not None else path.parent
    nb = nbformat.read(path, as_version=4)
    t0 = time.monotonic()
    deadline = t0 + timeout
    current: dict[str, int | None] = {"cell": None}
    index_of = {id(c): i for i, c in enumerate(nb.cells)}

    def remaining(cell: Any) -> int:  # each cell gets what is left of the notebook's time
        current["cell"] = index_of.get(id(cell))
        return max(1, int(deadline - time.monotonic() + 0.999))

    client = NotebookClient(
        nb, km=kernel_manager(kernel, workdir), timeout_func=remaining, allow_errors=True,
        interrupt_on_timeout=False, startup_timeout=max(30, int(timeout)),
        record_timing=False, shutdown_kernel="immediate",
        resources={"metadata": {"path": str(workdir)}},
    )
    summary: dict[str, Any] = {"status": "ok", "errors": [], "timeout_cell": None}
    try:
        # cleanup_kc: shut the kernel down at the end (killing its process group, so also
        # any child a check forked), which nbclient skips for a kernel manager passed in.
        client.execute(cleanup_kc=True)
    except CellTimeoutError:
        summary["status"] = "timeout"
        summary["timeout_cell"] = current["cell"]
    except DeadKernelError as e:
        summary["status"] = "kernel died"
        summary["detail"] = str(e)[:300]
        summary["timeout_cell"] = current["cell"]
    except Exception as e:  # noqa: BLE001 - e.g. the kernel did not start
        summary["status"] = "failed"
        summary["detail"] = f"{type(e).__name__}: {str(e)[:300]}"
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "error":
                summary["errors"].append({"cell": i, "ename": out.get("ename", ""),
                                          "evalue": str(out.get("evalue", ""))[:300]})
                break
    if summary["status"] == "ok" and summary["errors"]:
        summary["status"] = "errors"
    summary["seconds"] = round(time.monotonic() - t0, 2)
    return summary, nb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="execute a notebook (used by `minivlm grade`)")
    p.add_argument("notebook")
    p.add_argument("summary", nargs="?", default=None, help="JSON file to write")
    p.add_argument("--result-fd", type=int, default=None,
                   help="write the JSON summary to this inherited pipe instead")
    p.add_argument("--timeout", type=float, required=True)
    p.add_argument("--kernel", default=None)
    a = p.parse_args(argv)
    if a.result_fd is not None:
        os.set_inheritable(a.result_fd, False)  # the kernel must not get the pipe
        _no_dump()
    summary, _ = execute_notebook(a.notebook, timeout=a.timeout, kernel=a.kernel,
                                  workdir=Path.cwd())
    summary["cpu_seconds"] = round(_cpu_seconds(), 2)
    data = json.dumps(summary).encode()
    if a.result_fd is not None:
        with os.fdopen(a.result_fd, "wb") as f:
            f.write(data)
    else:
        Path(a.summary).write_bytes(data)
    return 0


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the kernel)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _no_dump() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0)  # PR_SET_DUMPABLE, 0
    except Exception:  # noqa: BLE001 - not Linux
        pass


if __name__ == "__main__":
    sys.exit(main())
