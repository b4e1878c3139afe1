"""Run a learner's function on test inputs where it cannot hurt the caller.

On Linux each batch of calls runs in a ``fork`` child: the function need not be
picklable, a runaway loop is killed when the time limit passes, and a crash
(segfault, ``os._exit``) ends only the child. Where ``fork`` is not available
(Windows, or macOS where forking a process that uses system frameworks is
unsafe) the calls run in a daemon thread: a time limit is still reported, but
the thread cannot be stopped.

The child sends results back as bytes built from plain Python values only
(tensors become dtype + shape + raw bytes) and the parent decodes them with an
unpickler that refuses every class: nothing the learner's code returns can run
code in the process that compares and grades.
"""

from __future__ import annotations

import inspect
import io
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORK_AVAILABLE = sys.platform.startswith("linux") and hasattr(os, "fork")
_MAX_TENSOR_BYTES = 64 * 2**20  # results larger than this are described, not sent
_END = b"\x00END"


# ----------------------------------------------------------------------------- safe encoding
class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle hook
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: plain values only")


def dumps_safe(obj: Any) -> bytes:
    """Pickle plain values (dict/list/tuple/str/bytes/numbers/None) only."""
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def loads_safe(data: bytes) -> Any:
    """Unpickle bytes made by :func:`dumps_safe`; any class reference is refused."""
    return _SafeUnpickler(io.BytesIO(data)).load()


def encode(obj: Any, depth: int = 0) -> dict:
    """Describe ``obj`` with plain values; tensors keep their data."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        enc: dict[str, Any] = {
            "t": "tensor",
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
            "device": str(t.device),
            "requires_grad": bool(obj.requires_grad),
            "data": None,
        }
        nbytes = t.numel() * t.element_size()
        if nbytes <= _MAX_TENSOR_BYTES and not t.is_complex() and t.layout == torch.strided:
            flat = t.cpu().contiguous().reshape(-1)
            enc["data"] = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        return enc
    if isinstance(obj, (tuple, list)) and depth < 3:
        return {"t": type(obj).__name__, "items": [encode(o, depth + 1) for o in obj[:16]],
                "len": len(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"t": "py", "v": obj if not isinstance(obj, str) else obj[:200],
                "type": type(obj).__name__}
    if isinstance(obj, np.ndarray):
        return {"t": "ndarray", "dtype": str(obj.dtype), "shape": list(obj.shape)}
    return {"t": "other", "type": f"{type(obj).__module__}.{type(obj).__qualname__}",
            "repr": _short_repr(obj)}


def decode_tensor(enc: dict) -> torch.Tensor | None:
    """The tensor described by :func:`encode`, or None when its data was not sent."""
    if enc.get("t") != "tensor" or enc.get("data") is None:
        return None
    dtype = getattr(torch, enc["dtype"], None)
    if not isinstance(dtype, torch.dtype):
        return None
    shape = tuple(enc["shape"])
    if not enc["data"]:
        return torch.empty(shape, dtype=dtype)
    raw = torch.frombuffer(bytearray(enc["data"]), dtype=torch.uint8)
    return raw.view(dtype).reshape(shape).clone()


def describe(enc: dict) -> str:
    """Short words for an encoded value: 'a Tensor (2, 3) float32', 'a tuple of 2', ..."""
    kind = enc.get("t")
    if kind == "tensor":
        return f"a Tensor of shape {tuple(enc['shape'])} ({enc['dtype']})"
    if kind in ("tuple", "list"):
        return f"a {kind} of {enc['len']} item{'s' if enc['len'] != 1 else ''}"
    if kind == "ndarray":
        return f"a numpy array of shape {tuple(enc['shape'])} ({enc['dtype']})"
    if kind == "py":
        return "None" if enc["v"] is None else f"a {enc['type']} ({enc['v']!r})"
    return f"a {enc.get('type')} object ({enc.get('repr')})"


def _short_repr(obj: Any, n: int = 80) -> str:
    try:
        r = repr(obj)
    except Exception:  # noqa: BLE001 - a learner's __repr__ may fail
        r = f"<{type(obj).__name__}>"
    return r if len(r) <= n else r[: n - 3] + "..."


# ----------------------------------------------------------------------------- one call
@dataclass
class Call:
    """One call of the learner's function: positional/keyword arguments, and for
    gradient checks which arguments get ``requires_grad`` and the upstream gradients
    (one per output part, None where a part is not differentiated)."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    grad_argnums: tuple[int, ...] = ()
    grad_outputs: list[torch.Tensor | None] | None = None
    #: compare the tensor arguments after the call (an in-place change is reported)
    compare_inputs: bool = False
    #: calls that must not happen inside the learner's function (see :class:`Forbidden`)
    forbidden: Forbidden | None = None


@dataclass
class Forbidden:
    """What a graded function may not call: the library's own implementation of the same
    thing (a function called ``name`` defined under ``package_dir`` but not under
    ``allowed_dir``), the grader's references (functions whose name starts with ``_ref``
    under ``allowed_dir``/checks) and the code objects listed in ``codes`` as
    ``(filename, first line)``."""

    name: str
    package_dir: str
    allowed_dir: str
    codes: frozenset = frozenset()

    def match(self, code: Any) -> str | None:
        """Words naming the forbidden function ``code`` belongs to, or None."""
        fname = code.co_filename
        if (fname, code.co_firstlineno) in self.codes:
            whose = ("the grader's reference" if fname.startswith(self.allowed_dir)
                     else "the library's")
            return f"{whose} {code.co_name} ({_short_path(fname)})"
        if fname.startswith(self.allowed_dir):
            if code.co_name.startswith("_ref") and "checks" in fname[len(self.allowed_dir):]:
                return f"the grader's reference {code.co_name} ({_short_path(fname)})"
            return None
        if code.co_name == self.name and fname.startswith(self.package_dir):
            return f"the library's {code.co_name} ({_short_path(fname)})"
        return None


def _short_path(fname: str) -> str:
    i = fname.rfind("minivlm" + os.sep)
    return fname[i:] if i >= 0 else Path(fname).name


_INTERNAL_DIRS = (
    str(Path(__file__).resolve().parent),
    str(Path(torch.__file__).resolve().parent),
    str(Path(inspect.__file__).resolve().parent),  # the standard library
)


def learner_frame(tb: Any) -> str:
    """'line 7 in patchify: x = images.view(B, -1)' for the innermost frame of learner code."""
    frames = traceback.extract_tb(tb)
    mine = [f for f in frames if not str(Path(f.filename).resolve()).startswith(_INTERNAL_DIRS)
            and "site-packages" not in f.filename]
    if not mine:
        return ""
    f = mine[-1]
    line = (f.line or "").strip()
    return f"line {f.lineno} in {f.name}" + (f": {line}" if line else "")


def _is_placeholder(tb: Any) -> bool:
    """True when the innermost frame is a ``raise NotImplementedError`` line (the
    student stub), not a library saying an operation is not implemented."""
    frames = traceback.extract_tb(tb)
    if not frames:
        return False
    last = frames[-1]
    if last.line:  # source available (Jupyter, the grader): look at the raising line
        return "NotImplementedError" in last.line
    where = str(Path(last.filename).resolve())
    return not where.startswith(_INTERNAL_DIRS) and "site-packages" not in where


def _clone_arg(a: Any, grad: bool) -> Any:
    if isinstance(a, torch.Tensor):
        a = a.detach().clone()
        if grad:
            a.requires_grad_(True)
    return a


def _tensors(obj: Any, depth: int = 0) -> list[torch.Tensor]:
    """The tensors an argument holds: itself, or those in a list/tuple (two levels)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)) and depth < 2:
        return [t for o in obj for t in _tensors(o, depth + 1)]
    return []


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.detach(), b.detach()
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    if a.is_floating_point() or a.is_complex():
        nan = torch.isnan(a)
        return torch.equal(nan, torch.isnan(b)) and torch.equal(a[~nan], b[~nan])
    return False


def _changed_inputs(originals: Call, args: tuple, kwargs: dict) -> list[str]:
    """Positions ('argument 2') / names of the arguments whose tensors the call changed."""
    changed = []
    items = [(i, a, args[i]) for i, a in enumerate(originals.args)]
    items += [(k, v, kwargs[k]) for k, v in originals.kwargs.items()]
    for key, before, after in items:
        old, new = _tensors(before), _tensors(after)
        if len(old) != len(new) or not all(_same_tensor(o, n) for o, n in zip(old, new)):
            changed.append(key)
    return changed


class _Monitor:
    """A profile hook that notes the first forbidden function called (see :class:`Forbidden`).
    Installed for the learner's call only; a call that removes it is reported too."""

    def __init__(self, forbidden: Forbidden) -> None:
        self.forbidden = forbidden
        self.found: str | None = None

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call" and self.found is None:
            self.found = self.forbidden.match(frame.f_code)

    def __enter__(self) -> _Monitor:
        sys.setprofile(self)
        threading.setprofile(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        if sys.getprofile() is not self and self.found is None:
            self.found = "sys.setprofile (the grader's call monitor was switched off)"
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]


class _NoMonitor:
    found = None

    def __enter__(self) -> _NoMonitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _exc_classes(e: BaseException) -> list[str]:
    return [f"{c.__module__}.{c.__qualname__}" for c in type(e).__mro__]


def call_one(fn: Callable, call: Call) -> dict:
    """Run ``fn`` on one call; describe the result (or the exception) with plain values."""
    args = tuple(_clone_arg(a, False) for a in call.args)
    kwargs = {k: _clone_arg(v, False) for k, v in call.kwargs.items()}
    forbidden = getattr(call, "forbidden", None)
    monitor: Any = _Monitor(forbidden) if forbidden is not None else _NoMonitor()
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            sig.bind(*args, **kwargs)
        except TypeError as e:
            name = getattr(fn, "__name__", "function")
            params = ", ".join(str(p.replace(annotation=p.empty))
                               for p in sig.parameters.values())
            return {"ok": False, "kind": "signature", "exc_type": "TypeError",
                    "message": str(e), "signature": f"{name}({params})", "where": ""}
    t0 = time.perf_counter()
    try:
        with monitor:
            out = fn(*args, **kwargs)
    except NotImplementedError as e:
        kind = "not_implemented" if _is_placeholder(e.__traceback__) else "exception"
        return {"ok": False, "kind": kind, "exc_type": type(e).__name__,
                "exc_classes": _exc_classes(e), "library": monitor.found,
                "message": str(e)[:500], "where": learner_frame(e.__traceback__)}
    except (Exception, SystemExit) as e:  # noqa: BLE001 - every learner error becomes a message
        return {"ok": False, "kind": "exception", "exc_type": type(e).__name__,
                "exc_classes": _exc_classes(e), "library": monitor.found,
                "message": str(e)[:500], "where": learner_frame(e.__traceback__)}
    seconds = time.perf_counter() - t0
    result: dict[str, Any] = {"ok": True, "value": encode(out), "seconds": seconds,
                              "grads": None, "grad_error": None, "library": monitor.found,
                              "changed": []}
    if getattr(call, "compare_inputs", False):
        result["changed"] = _changed_inputs(call, args, kwargs)
    if call.grad_outputs is not None and call.grad_argnums:
        # A second call on inputs that require grad (the first one ran on plain
        # tensors, so that e.g. .numpy() behaves as it would for the learner).
        gargs = tuple(_clone_arg(a, i in call.grad_argnums) for i, a in enumerate(call.args))
        gkwargs = {k: _clone_arg(v, False) for k, v in call.kwargs.items()}
        try:
            with monitor:
                gout = fn(*gargs, **gkwargs)
        except Exception as e:  # noqa: BLE001
            where = learner_frame(e.__traceback__)
            result["grad_error"] = (f"calling it on inputs that require grad raised "
                                    f"{type(e).__name__}: {str(e)[:300]}"
                                    + (f" ({where})" if where else ""))
            return result
        result["grads"], result["grad_error"] = _input_grads(gout, gargs, call)
        result["library"] = result["library"] or monitor.found
        if getattr(call, "compare_inputs", False) and not result["changed"]:
            result["changed"] = _changed_inputs(call, gargs, gkwargs)
    return result


def _input_grads(out: Any, args: tuple, call: Call) -> tuple[list | None, str | None]:
    parts = list(out) if isinstance(out, (tuple, list)) else [out]
    assert call.grad_outputs is not None
    if len(parts) != len(call.grad_outputs):
        return None, "skipped"
    loss = None
    for o, g in zip(parts, call.grad_outputs):
        if g is None:
            continue
        if not isinstance(o, torch.Tensor) or o.shape != g.shape:
            return None, "skipped"
        if not o.requires_grad:
            continue
        term = (o * g.to(o.dtype)).sum()
        loss = term if loss is None else loss + term
    if loss is None:
        return None, "no_graph"
    inputs = [args[i] for i in call.grad_argnums]
    try:
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {str(e)[:300]}"
    return [None if g is None else encode(g) for g in grads], None


# ----------------------------------------------------------------------------- runners
@dataclass
class RunStatus:
    """How a batch of calls ended: 'done', 'timeout' or 'died' (child exited early)."""

    state: str
    seconds: float
    detail: str = ""

    def to_dict(self) -> dict:
        return {"state": self.state, "seconds": self.seconds, "detail": self.detail}

    @classmethod
    def from_dict(cls, d: dict) -> RunStatus:
        return cls(str(d["state"]), float(d["seconds"]), str(d.get("detail", "")))


def run_calls(fn: Callable, calls: Sequence[Call], timeout: float,
              *, use_fork: bool | None = None) -> tuple[list[bytes], RunStatus]:
    """Run ``fn`` on each call within ``timeout`` seconds in all.

    In a fork child (Linux) ``timeout`` counts the child's CPU seconds, so that a right
    solution is not failed because a busy machine gave it only part of a core; a function
    that waits without computing is stopped after :func:`wall_limit` seconds of wall time.
    In the thread fallback it counts wall time.

    Returns the encoded outcome of each call that finished (``loads_safe`` them)
    and how the batch ended.
    """
    if use_fork is None:
        use_fork = FORK_AVAILABLE and os.environ.get("MINIVLM_CHECK_NO_FORK", "") == ""
    if use_fork:
        return _run_forked(fn, calls, timeout)
    return _run_threaded(fn, calls, timeout)


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGKILL this child when its parent dies (a Jupyter kernel
    killed on timeout must not leave a runaway learner function behind)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _child_setup() -> io.StringIO:
    # libgomp's thread pool does not survive fork: a child that starts a parallel
    # region with more than one thread hangs. The test inputs are tiny anyway.
    torch.set_num_threads(1)
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, 0)
    # The parent's stdout may be a Jupyter stream whose sending thread did not
    # survive the fork; capture prints instead.
    buf = io.StringIO()
    sys.stdout = sys.stderr = buf
    return buf


def wall_limit(timeout: float) -> float:
    """The wall-clock cap of a fork child given ``timeout`` CPU seconds: room for a machine
    whose cores are shared four ways, plus 10 s; a child that sleeps or blocks (no CPU) is
    stopped there."""
    return 4.0 * timeout + 10.0


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads); None where it cannot
    be read (then the limit counts wall time)."""
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
    except (psutil.Error, OSError):
        return None
    return t.user + t.system


def _run_forked(fn: Callable, calls: Sequence[Call], timeout: float
                ) -> tuple[list[bytes], RunStatus]:
    import multiprocessing as mp

    recv, send = mp.Pipe(duplex=False)
    t0 = time.monotonic()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # ------------------------------------------------------------ child
        code = 0
        try:
            _die_with_parent(parent)
            recv.close()
            _child_setup()
            for call in calls:
                send.send_bytes(dumps_safe(call_one(fn, call)))
            send.send_bytes(_END)
        except BaseException:  # noqa: BLE001 - the child must never return
            code = 1
        finally:
            os._exit(code)
    # ----------------------------------------------------------------------------- parent
    send.close()
    results: list[bytes] = []
    status = RunStatus("died", 0.0)
    try:
        deadline, cap = t0 + timeout, t0 + wall_limit(timeout)
        while True:
            now = time.monotonic()
            if now >= deadline:
                # the wall-clock budget is spent: was the child computing all that time?
                used = _cpu_seconds(pid)
                if used is None or used >= timeout or now >= cap:
                    status = RunStatus("timeout", now - t0, "" if used is None else
                                       f"{used:.1f} s of CPU in {now - t0:.1f} s")
                    break
                deadline = min(cap, now + max(timeout - used, 0.05))
                continue
            if not recv.poll(deadline - now):
                continue
            try:
                data = recv.recv_bytes()
            except (EOFError, OSError):
                status = RunStatus("died", time.monotonic() - t0)
                break
            if data == _END:
                status = RunStatus("done", time.monotonic() - t0)
                break
            results.append(data)
    finally:
        recv.close()
        try:
            if status.state != "done":
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, wstatus = os.waitpid(pid, 0)
        if status.state == "died":
            status.detail = _wait_status_words(wstatus)
    return results, status


def _wait_status_words(wstatus: int) -> str:
    if os.WIFSIGNALED(wstatus):
        sig = os.WTERMSIG(wstatus)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {name}"
    if os.WIFEXITED(wstatus):
        return f"exit code {os.WEXITSTATUS(wstatus)}"
    return ""


def _run_threaded(fn: Callable, calls: Sequence[Call], timeout: float
                  ) -> tuple[list[bytes], RunStatus]:
    results: list[bytes] = []
    finished = threading.Event()

    def work() -> None:
        try:
            for call in calls:
                results.append(dumps_safe(call_one(fn, call)))
        finally:
            finished.set()

    t0 = time.monotonic()
    thread = threading.Thread(target=work, name="minivlm-check", daemon=True)
    thread.start()
    if finished.wait(timeout):
        return list(results), RunStatus("done", time.monotonic() - t0)
    return list(results), RunStatus(
        "timeout", time.monotonic() - t0,
        "the function is still running in a background thread; restart the kernel to stop it",
    )
