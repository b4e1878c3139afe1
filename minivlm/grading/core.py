"""Checks: compare a learner's function with a reference and explain the first difference.

A :class:`Check` knows the reference implementation, how to make test inputs
(:class:`Case`), and a few known mistakes. :func:`check` runs the learner's
function on every case (in a child process that is killed on timeout, see
:mod:`minivlm.grading.sandbox`), then compares, case by case and in this order:
what was returned (a tensor, a tuple), shape, dtype, values (``isclose`` with a
stated tolerance) and, for differentiable checks, the gradients with respect to
the floating-point inputs. The first difference is explained in words; a hint
comes from the case ("batch of size 1") or from the first known mistake whose
output equals the learner's ("your output matches attention without the 1/√d
scale").

Also: a case may ask for an exception (``Case(..., raises=ValueError)``); a tensor
argument the function changed in place fails the case (unless the check allows
it, see ``Check.modifies_inputs``); a function that calls the library's own
implementation of the same thing, or the grader's reference, gets 0 (see
``Check.forbidden``). Expected values of float32 cases come from the reference in
float64, and the tolerance allows for the float32 reference's own rounding (times
``NOISE_HEADROOM``), so correct variants pass on every seed.
"""

from __future__ import annotations

import html
import importlib
import math
import os
import pkgutil
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from minivlm.grading.sandbox import (
    Call,
    Forbidden,
    RunStatus,
    decode_tensor,
    describe,
    loads_safe,
    run_calls,
)

Tensor = torch.Tensor

#: (rtol, atol) per dtype for value comparisons; gradients use 10x both.
DEFAULT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
    torch.float32: (1e-4, 1e-5),
    torch.float64: (1e-7, 1e-9),
}


# ----------------------------------------------------------------------------- cases and checks
class Case:
    """One test input: ``Case("batch of 1", images, 4, hint="...")``.

    ``label`` says what is special about the input; ``hint`` is shown when this
    case is the first to fail (e.g. "does your code .squeeze() away B = 1?");
    ``grad=False`` skips the gradient comparison for this case; ``rtol``/``atol``
    override the tolerance. ``raises=ValueError``: the learner's function must raise
    that exception (or a subclass) on this input; the reference must raise it too.
    """

    def __init__(self, label: str, *args: Any, kwargs: dict | None = None,
                 hint: str | None = None, grad: bool = True,
                 rtol: float | None = None, atol: float | None = None,
                 raises: type[BaseException] | None = None) -> None:
        if raises is not None and not (isinstance(raises, type)
                                       and issubclass(raises, BaseException)):
            raise TypeError(f"Case({label!r}): raises= takes an exception class such as "
                            f"ValueError, got {raises!r}")
        self.label = label
        self.args = args
        self.kwargs = dict(kwargs or {})
        self.hint = hint
        self.grad = grad
        self.rtol = rtol
        self.atol = atol
        self.raises = raises

    def __repr__(self) -> str:
        return f"Case({self.label!r}, {len(self.args)} args)"


@dataclass
class Check:
    """A registered check; see :func:`register_check` for the fields."""

    name: str
    signature: str
    reference: Callable[..., Any] | str
    cases: Callable[[torch.Generator], Iterable[Case]]
    points: float = 1.0
    exercise: str | None = None
    outputs: tuple[str, ...] | None = None
    shapes: tuple[str, ...] | None = None
    grad: bool = False
    mistakes: tuple[tuple[str, Callable[..., Any]], ...] = ()
    explain: Callable[[Case, list, list], str | None] | None = None
    library: tuple[str, ...] = ()
    inplace: bool | None = None
    precise: bool = True
    min_timeout: float = 0.0

    @property
    def modifies_inputs(self) -> bool:
        """May the function change its arguments in place? ``inplace`` when set, else
        PyTorch's naming convention: a trailing underscore (``enqueue_``)."""
        return self.inplace if self.inplace is not None else self.function.endswith("_")

    def forbidden(self) -> Forbidden:
        """What the learner's function may not call (see :class:`sandbox.Forbidden`):
        the library's function of the same name, the grader's references, the reference
        itself and the ``library`` entries."""
        import minivlm

        codes = set()
        for target in (self.reference, *self.library):
            try:
                obj = _resolve(target)
            except Exception:  # noqa: BLE001 - a wrong entry only weakens the guard
                continue
            code = getattr(getattr(obj, "__wrapped__", obj), "__code__", None)
            if code is not None:
                codes.add((code.co_filename, code.co_firstlineno))
        pkg = os.path.dirname(os.path.abspath(minivlm.__file__)) + os.sep
        return Forbidden(self.function, pkg, os.path.join(pkg, "grading") + os.sep,
                         frozenset(codes))

    @property
    def function(self) -> str:
        """Name of the learner's function, from the signature: 'patchify'."""
        return self.signature.split("(", 1)[0].strip()

    @property
    def params(self) -> list[str]:
        inner = self.signature.split("(", 1)[1].rsplit(")", 1)[0]
        return [p.split("=")[0].strip() for p in inner.split(",") if p.strip()]

    def resolve_reference(self) -> Callable[..., Any]:
        return _resolve(self.reference)


def _resolve(target: Callable[..., Any] | str) -> Callable[..., Any]:
    """A callable, or the object named by ``"module:attr"``."""
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def stable_seed(name: str) -> int:
    """The fixed seed a gradebook uses for check ``name`` (the same on every machine)."""
    return zlib.crc32(name.encode("utf-8"))


_CHECKS: dict[str, Check] = {}
# Modules (besides every module in minivlm.grading.checks) whose import registers checks.
EXTRA_CHECK_MODULES: list[str] = []
_LOADED = False


def add_check(chk: Check) -> Check:
    """Register a :class:`Check` (re-registering the same definition is allowed)."""
    old = _CHECKS.get(chk.name)
    if old is not None and (
        getattr(old.cases, "__module__", None), getattr(old.cases, "__qualname__", None)
    ) != (getattr(chk.cases, "__module__", None), getattr(chk.cases, "__qualname__", None)):
        raise ValueError(f"check name {chk.name!r} registered twice")
    _CHECKS[chk.name] = chk
    return chk


def register_check(
    name: str,
    *,
    signature: str,
    reference: Callable[..., Any] | str,
    points: float = 1.0,
    exercise: str | None = None,
    outputs: Sequence[str] | None = None,
    shapes: Sequence[str] | None = None,
    grad: bool = False,
    mistakes: Sequence[tuple[str, Callable[..., Any]]] = (),
    explain: Callable[[Case, list, list], str | None] | None = None,
    library: Sequence[str] = (),
    inplace: bool | None = None,
    precise: bool = True,
    min_timeout: float = 0.0,
) -> Callable[[Callable[[torch.Generator], Iterable[Case]]],
              Callable[[torch.Generator], Iterable[Case]]]:
    """Decorator: register the case generator ``cases(gen) -> Iterable[Case]`` as check ``name``.

    Args:
        signature: the call the check makes, e.g. ``"patchify(images, patch_size)"``;
            the learner's function is looked up by this name when grading.
        reference: the right implementation, a callable or ``"module:attr"``.
        points: what the check is worth in the gradebook.
        exercise: the exercise notebook's stem, e.g. ``"00_patchify_attention"``.
        outputs: names of the parts when the function returns a tuple.
        shapes: symbolic shape of each output for messages, e.g. ``"(B, N, C*p*p)"``.
        grad: also compare gradients w.r.t. the floating-point tensor arguments.
        mistakes: ``(hint, wrong_fn)`` pairs; when the learner's output equals
            ``wrong_fn``'s, ``hint`` is shown. Order matters: first match wins.
        explain: optional ``explain(case, got_parts, expected_parts) -> hint | None``
            for hints no single wrong function captures; it is called only when every
            part the learner returned is a tensor of the expected shape.
        library: ``"module:attr"`` of library functions the learner's function may not
            call (besides the reference and any ``minivlm`` function of the same name).
        inplace: whether the function may change its tensor arguments in place; default:
            only when its name ends with ``_`` (``enqueue_``). Otherwise a change fails.
        precise: compute the expected float32/16 values with the reference in float64,
            so that the comparison measures only the learner's rounding.
        min_timeout: the learner's calls get at least this many seconds, whatever timeout
            the caller (a notebook's ``check``, ``minivlm grade --check-timeout``) asks for:
            for checks that train a model.
    """

    def deco(fn: Callable[[torch.Generator], Iterable[Case]]
             ) -> Callable[[torch.Generator], Iterable[Case]]:
        add_check(Check(
            name=name, signature=signature, reference=reference, cases=fn, points=float(points),
            exercise=exercise, outputs=tuple(outputs) if outputs else None,
            shapes=tuple(shapes) if shapes else None, grad=grad, mistakes=tuple(mistakes),
            explain=explain, library=tuple(library), inplace=inplace, precise=precise,
            min_timeout=float(min_timeout),
        ))
        return fn

    return deco


Registrar = Callable[..., Callable[[Callable[[torch.Generator], Iterable[Case]]],
                                   Callable[[torch.Generator], Iterable[Case]]]]


def exercise_checks(exercise: str) -> Registrar:
    """:func:`register_check` for the checks of one exercise, in a shorter form.

    ``register_check = exercise_checks("00_patchify_attention")``, then::

        @register_check("patchify(images, patch_size)", _ref_patchify, points=2,
                        returns="(B, N, C*p*p)", grad=True, mistakes=[...])
        def patchify_cases(gen): ...

    The check is named after the learner's function (``name=`` when it is not);
    ``returns`` is the symbolic shape of the output for messages, or ``{part: shape}``
    in order for a function that returns a tuple. Other keywords as in ``register_check``.
    """

    def register(signature: str, reference: Callable[..., Any] | str, *, points: float,
                 returns: str | dict[str, str] | None = None, name: str | None = None,
                 **options: Any):
        if isinstance(returns, dict):
            outputs, shapes = tuple(returns), tuple(returns.values())
        else:
            outputs, shapes = None, (returns,) if returns else None
        return register_check(name or signature.split("(", 1)[0].strip(), signature=signature,
                              reference=reference, points=points, exercise=exercise,
                              outputs=outputs, shapes=shapes, **options)

    return register


def load_checks() -> None:
    """Import every module under ``minivlm.grading.checks`` (and EXTRA_CHECK_MODULES)."""
    global _LOADED
    if _LOADED:
        return
    import minivlm.grading.checks as pkg

    names = [f"{pkg.__name__}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)]
    for mod in [*names, *EXTRA_CHECK_MODULES]:
        importlib.import_module(mod)
    _LOADED = True


def get_check(name: str) -> Check:
    """The check registered as ``name``; KeyError lists the known names."""
    load_checks()
    if name not in _CHECKS:
        raise KeyError(f"unknown check {name!r}; known checks: {', '.join(sorted(_CHECKS))}")
    return _CHECKS[name]


def list_checks(exercise: str | None = None) -> list[Check]:
    """Registered checks (registration order), optionally only those of one exercise."""
    load_checks()
    return [c for c in _CHECKS.values() if exercise is None or c.exercise == exercise]


def list_exercises() -> list[str]:
    """Exercise ids that have checks, sorted."""
    return sorted({c.exercise for c in list_checks() if c.exercise})


# ----------------------------------------------------------------------------- results
_STYLE = {  # status -> (border, background, symbol)
    "passed": ("#2e7d32", "#e8f5e9", "\u2714"),
    "not attempted": ("#b26a00", "#fff8e1", "\u2026"),
}
_FAIL_STYLE = ("#c62828", "#ffebee", "\u2718")


@dataclass
class CheckResult:
    """Outcome of one check. ``summary`` is one line (for a gradebook's notes);
    ``message`` explains in full. True in a boolean context when passed."""

    name: str
    passed: bool
    points: float
    max_points: float
    message: str
    status: str = "passed"  # passed | failed | not attempted | raised | timed out |
    #                         wrong signature | missing | check error
    summary: str = ""
    seconds: float = 0.0
    seed: int | None = None

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        tag = "PASS" if self.passed else ("TODO" if self.status == "not attempted" else "FAIL")
        head = f"[{tag}] {self.name} ({_fmt(self.points)}/{_fmt(self.max_points)} points)"
        return f"{head}: {self.message}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        border, bg, sym = _STYLE.get(self.status, _FAIL_STYLE)
        lines = html.escape(self.message).split("\n")
        body = lines[0] + "".join(f"<br>{ln}" for ln in lines[1:])
        return (
            f'<div style="border-left:5px solid {border};background:{bg};color:#222;'
            f'padding:4px 10px;margin:2px 0;font-family:sans-serif;font-size:13px">'
            f'<b style="color:{border}">{sym} {html.escape(self.name)}</b> '
            f'<span style="color:#555">({_fmt(self.points)}/{_fmt(self.max_points)} points)'
            f"</span><br>"
            f'<span style="white-space:pre-wrap;font-family:monospace">{body}</span></div>'
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CheckResult:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _fmt(x: float) -> str:
    return f"{x:g}"


def failed(chk_or_name: Check | str, status: str, summary: str, message: str | None = None,
           max_points: float | None = None, **kw: Any) -> CheckResult:
    """A zero-point result."""
    if isinstance(chk_or_name, Check):
        name, mp = chk_or_name.name, chk_or_name.points
    else:
        name, mp = chk_or_name, 0.0
    return CheckResult(name=name, passed=False, points=0.0,
                       max_points=mp if max_points is None else max_points,
                       message=message or summary, status=status, summary=summary, **kw)


# ----------------------------------------------------------------------------- evaluation
Runner = Callable[[list[Call], float], tuple[list[bytes], RunStatus]]


@dataclass
class _Prepared:
    case: Case
    call: Call
    expected: list[Any]  # output parts (detached); float parts in float64 when precise
    grads: list[Tensor | None] | None
    grad_names: list[str] = field(default_factory=list)
    dtypes: list[Any] = field(default_factory=list)  # dtype the reference returns, per part
    grad_dtypes: list[Any] = field(default_factory=list)
    # the native reference's own rounding error (max |native - float64|), per part / gradient
    noise: list[float] = field(default_factory=list)
    grad_noise: list[float] = field(default_factory=list)


def _split(chk: Check, out: Any) -> list[Any]:
    return list(out) if chk.outputs else [out]


_LOW_PRECISION = (torch.float32, torch.float16, torch.bfloat16)


def _run_reference(chk: Check, ref: Callable[..., Any], case: Case, grad_argnums: tuple,
                   gen: torch.Generator, grad_outputs: list | None = None, *,
                   to64: bool = False) -> tuple[list[Any], list | None, list | None]:
    """(output parts, input gradients, upstream gradients) of the reference on ``case``
    (on copies of its inputs; floating-point tensors in float64 when ``to64``)."""

    def prep(a: Any, grad: bool) -> Any:
        if not isinstance(a, Tensor):
            return a
        a = a.detach().clone()
        if to64 and a.dtype in _LOW_PRECISION:
            a = a.double()
        return a.requires_grad_(grad)

    args = tuple(prep(a, i in grad_argnums) for i, a in enumerate(case.args))
    kwargs = {k: prep(v, False) for k, v in case.kwargs.items()}
    grads: list[Tensor | None] | None = None
    with torch.enable_grad():
        parts = _split(chk, ref(*args, **kwargs))
        if grad_argnums:
            if grad_outputs is None:
                grad_outputs = [
                    torch.randn(p.shape, generator=gen, dtype=p.dtype)
                    if isinstance(p, Tensor) and p.requires_grad else None
                    for p in parts
                ]
            terms = [(p * g.to(p.dtype)).sum() for p, g in zip(parts, grad_outputs)
                     if g is not None and isinstance(p, Tensor) and p.requires_grad]
            if terms:
                grads = list(torch.autograd.grad(  # type: ignore[arg-type]
                    sum(terms), [args[i] for i in grad_argnums], allow_unused=True))
    return [p.detach() if isinstance(p, Tensor) else p for p in parts], grads, grad_outputs


def _prepare(chk: Check, ref: Callable[..., Any], case: Case, gen: torch.Generator) -> _Prepared:
    """Run the reference on a case (with gradients when the check wants them)."""
    call_args = tuple(a.detach().clone() if isinstance(a, Tensor) else a for a in case.args)
    if case.raises is not None:  # the reference must raise too: a check that asks for
        try:                     # an error the library does not raise is a bug of the check
            ref(*call_args, **case.kwargs)
        except case.raises:
            pass
        else:
            raise ValueError(f"case {case.label!r} says raises={case.raises.__name__}, but "
                             "the reference returned")
        call_args = tuple(a.detach().clone() if isinstance(a, Tensor) else a
                          for a in case.args)
        return _Prepared(case, Call(call_args, dict(case.kwargs)), [], None)
    grad_argnums = tuple(
        i for i, a in enumerate(case.args)
        if chk.grad and case.grad and isinstance(a, Tensor) and a.is_floating_point()
    )
    expected, grads, grad_outputs = _run_reference(chk, ref, case, grad_argnums, gen)
    dtypes = [p.dtype if isinstance(p, Tensor) else None for p in expected]
    grad_dtypes = [g.dtype if isinstance(g, Tensor) else None for g in grads or []]
    noise: list[float] = []
    grad_noise: list[float] = []
    low = [a for a in (*case.args, *case.kwargs.values())
           if isinstance(a, Tensor) and a.dtype in _LOW_PRECISION]
    if chk.precise and low:
        # The same computation in float64: the learner's float32 result is then compared
        # with the exact answer, not with another float32 rounding of it.
        try:
            exact, exact_grads, _ = _run_reference(chk, ref, case, grad_argnums, gen,
                                                   grad_outputs, to64=True)
        except Exception:  # noqa: BLE001 - a reference that needs float32: keep its values
            exact, exact_grads = None, None
        if exact is not None and len(exact) == len(expected):
            noise = [_noise(x, e) for x, e in zip(exact, expected)]
            expected = [x if _usable(x, e) else e for x, e in zip(exact, expected)]
        if exact_grads is not None and grads is not None and len(exact_grads) == len(grads):
            grad_noise = [_noise(x, g) for x, g in zip(exact_grads, grads)]
            grads = [x if _usable(x, g) else g for x, g in zip(exact_grads, grads)]
    names = chk.params
    grad_names = [names[i] if i < len(names) else f"argument {i}" for i in grad_argnums]
    call = Call(call_args, dict(case.kwargs), grad_argnums, grad_outputs)
    return _Prepared(case, call, expected, grads, grad_names, dtypes, grad_dtypes,
                     noise, grad_noise)


#: a correct float32 solution may round differently from the reference: allow this many
#: times the reference's own float32 error (measured against float64) on top of atol
NOISE_HEADROOM = 10.0


def _noise(exact: Any, native: Any) -> float:
    if not _usable(exact, native):
        return 0.0
    err = (native.double() - exact).abs()
    err = err[torch.isfinite(err)]
    return float(err.max()) if err.numel() else 0.0


def _usable(exact: Any, native: Any) -> bool:
    """Is the float64 result a more precise version of the native floating-point one?"""
    return (isinstance(exact, Tensor) and isinstance(native, Tensor)
            and native.dtype in _LOW_PRECISION and exact.shape == native.shape
            and exact.is_floating_point())


def describe_inputs(chk: Check, case: Case) -> str:
    """'images (1, 3, 8, 8) float32, patch_size=4'."""
    names = chk.params
    items = [(names[i] if i < len(names) else f"arg{i}", a) for i, a in enumerate(case.args)]
    items += list(case.kwargs.items())
    words = []
    for n, a in items:
        if isinstance(a, Tensor):
            words.append(f"{n} {tuple(a.shape)} {str(a.dtype).removeprefix('torch.')}"
                         + ("" if a.is_contiguous() else " (not contiguous)"))
        elif a is None:
            words.append(f"{n}=None")
        else:
            words.append(f"{n}={a!r}")
    return ", ".join(words)


def prepare_cases(chk: Check, seed: int) -> list[_Prepared]:
    """The cases of ``chk`` drawn with ``seed``, each with the reference's answer: all that
    :func:`evaluate` compares a learner's outcomes with (a function of ``chk`` and ``seed``)."""
    ref = chk.resolve_reference()
    gen = torch.Generator().manual_seed(seed)
    return [_prepare(chk, ref, c, gen) for c in chk.cases(gen)]


def evaluate(chk: Check, runner: Runner, *, timeout: float = 5.0,
             seed: int | None = None, allow_library: bool = False) -> CheckResult:
    """Run ``chk``: build cases, run the reference, run the learner's function through
    ``runner`` and compare. Never raises (except KeyboardInterrupt).

    ``allow_library=False``: a function that calls the library's implementation of the
    same thing or the grader's reference gets 0 (see :meth:`Check.forbidden`)."""
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    timeout = max(timeout, chk.min_timeout)
    try:
        prepared = prepare_cases(chk, seed)
        forbidden = None if allow_library else chk.forbidden()
        for p in prepared:
            p.call.forbidden = forbidden
            p.call.compare_inputs = not chk.modifies_inputs
    except Exception as e:  # noqa: BLE001
        return failed(chk, "check error", f"the check itself failed: {type(e).__name__}: {e}",
                      f"the check itself failed ({type(e).__name__}: {e}); this is not your "
                      "fault - please tell the instructor.", seed=seed)
    try:
        raw, status = runner([p.call for p in prepared], timeout)
    except Exception as e:  # noqa: BLE001
        return failed(chk, "check error", f"could not run the function: {type(e).__name__}: {e}",
                      seed=seed)
    try:
        return _judge(chk, prepared, [loads_safe(r) for r in raw], status, timeout, seed)
    except Exception as e:  # noqa: BLE001
        return failed(chk, "check error", f"the check itself failed: {type(e).__name__}: {e}",
                      seed=seed)


def _judge(chk: Check, prepared: list[_Prepared], outcomes: list[dict], status: RunStatus,
           timeout: float, seed: int) -> CheckResult:
    n = len(prepared)
    for i, prep in enumerate(prepared):
        where = f"case {i + 1}/{n} ({prep.case.label}): {describe_inputs(chk, prep.case)}"
        if i >= len(outcomes):
            if status.state == "timeout":
                extra = f" ({status.detail})" if status.detail else ""
                return failed(
                    chk, "timed out", f"timed out after {timeout:g} s",
                    f"timed out after {timeout:g} s{extra}\n{where}\n"
                    "hint: is there a loop that never ends? The reference takes milliseconds.",
                    seconds=status.seconds, seed=seed)
            return failed(chk, "raised", f"the function ended the process ({status.detail})",
                          f"your function ended the process it ran in ({status.detail}), e.g. "
                          f"by calling exit() or crashing\n{where}", seed=seed)
        o = outcomes[i]
        if o.get("library"):
            s = f"calls {o['library']}"
            return failed(
                chk, "library", f"0 points: your {chk.function} {s}",
                f"0 points: your {chk.function} {s}. The exercise is to write it yourself; "
                f"the library's version (or the grader's reference) does not count.\n{where}",
                seed=seed)
        if prep.case.raises is not None:
            problem = _raise_difference(prep.case.raises, o)
            if problem is None:
                continue
            if problem == "not attempted":
                return _failed_call(chk, o, where, seed, prep.case.hint)
            hint = prep.case.hint
            return failed(chk, "failed", problem + (f" (hint: {hint})" if hint else ""),
                          f"{problem}\n{where}" + (f"\nhint: {hint}" if hint else ""),
                          seconds=status.seconds, seed=seed)
        if not o["ok"]:
            return _failed_call(chk, o, where, seed, prep.case.hint)
        if o.get("changed"):
            names = chk.params
            which = ", ".join(names[k] if isinstance(k, int) and k < len(names) else str(k)
                              for k in o["changed"])
            s = f"changed its input {which} in place"
            return failed(
                chk, "failed", s + " (the caller's tensor must stay as it was)",
                f"your function {s}: the caller's tensor must stay as it was. Work on a copy "
                "(x.clone()) or build a new tensor instead of writing into the argument "
                f"(x[...] = ..., x.add_(...), x += ...).\n{where}",
                seconds=status.seconds, seed=seed)
        problem = _first_difference(chk, prep, o)
        if problem is not None:
            summary, detail, hint = problem
            msg = f"{detail}\n{where}" + (f"\nhint: {hint}" if hint else "")
            short = summary + (f" (hint: {hint})" if hint else "")
            return failed(chk, "failed", short, msg, seconds=status.seconds, seed=seed)
    what = "shapes, dtypes, values" + (", gradients" if chk.grad else "") + (
        ", the errors raised" if any(p.case.raises for p in prepared) else "")
    return CheckResult(
        name=chk.name, passed=True, points=chk.points, max_points=chk.points,
        message=f"all {n} cases match the reference ({what})", status="passed",
        summary="passed", seconds=status.seconds, seed=seed)


def _raise_difference(expected: type[BaseException], o: dict) -> str | None:
    """None when the call raised ``expected`` (or a subclass); else what happened instead
    ("not attempted" for the student stub)."""
    want = expected.__name__
    if o["ok"]:
        return f"returned {describe(o['value'])} but should raise {want}"
    if o["kind"] == "not_implemented":
        return "not attempted"
    if o["kind"] == "signature":
        return f"wrong signature: {o['signature']} ({o['message']})"
    if f"{expected.__module__}.{expected.__qualname__}" in o.get("exc_classes", []):
        return None
    first = (o["message"].strip().splitlines() or [""])[0]
    at = f" at {o['where']}" if o.get("where") else ""
    return f"raised {o['exc_type']} ({first}){at} but should raise {want}"


def _failed_call(chk: Check, o: dict, where: str, seed: int, hint: str | None) -> CheckResult:
    kind = o["kind"]
    if kind == "not_implemented":
        return failed(
            chk, "not attempted", "not attempted",
            f"not attempted yet: {chk.function} still raises NotImplementedError. Replace the "
            "`raise NotImplementedError(...)` line with your code, then run this check again.",
            seed=seed)
    if kind == "signature":
        return failed(
            chk, "wrong signature",
            f"wrong signature: expected {chk.signature}, got {o['signature']}",
            f"wrong signature: the check calls {chk.signature} but your function is "
            f"{o['signature']} ({o['message']})\n{where}", seed=seed)
    first = (o["message"].strip().splitlines() or [""])[0]
    at = f" at {o['where']}" if o.get("where") else ""
    return failed(chk, "raised", f"raised {o['exc_type']}: {first}{at}",
                  f"your function raised {o['exc_type']}: {o['message']}\n"
                  + (f"  {o['where']}\n" if o.get("where") else "") + where
                  + (f"\nhint: {hint}" if hint else ""), seed=seed)


# ----------------------------------------------------------------------------- comparison
def _part_name(chk: Check, j: int) -> str:
    return f"{chk.outputs[j]}: " if chk.outputs else ""


def _shape_words(chk: Check, j: int, shape: Sequence[int]) -> str:
    s = str(tuple(shape))
    if chk.shapes and j < len(chk.shapes):
        s += f" = {chk.shapes[j]}"
    return s


def _first_difference(chk: Check, prep: _Prepared, o: dict) -> tuple[str, str, str | None] | None:
    """(summary, detail, hint) of the first difference on one case, or None."""
    value = o["value"]
    expected = prep.expected
    if chk.outputs:
        names = ", ".join(chk.outputs)
        if value["t"] not in ("tuple", "list") or value["len"] != len(chk.outputs):
            s = f"returned {describe(value)} but expected a tuple ({names})"
            return s, s, None
        got_parts = value["items"]
    else:
        got_parts = [value]

    got_tensors: list[Tensor | None] = [
        decode_tensor(g) if g["t"] == "tensor" else None for g in got_parts
    ]
    for j, (g, e) in enumerate(zip(got_parts, expected)):
        pre = _part_name(chk, j)
        if not isinstance(e, Tensor):
            continue
        e_dtype = prep.dtypes[j] if j < len(prep.dtypes) and prep.dtypes[j] else e.dtype
        if g["t"] != "tensor":
            s = f"{pre}returned {describe(g)} but expected a torch.Tensor"
            hint = ("convert with torch.from_numpy(...) or keep the computation in torch"
                    if g["t"] == "ndarray" else None)
            return s, s, hint
        if tuple(g["shape"]) != tuple(e.shape):
            s = (f"{pre}output shape {tuple(g['shape'])} but expected "
                 f"{_shape_words(chk, j, e.shape)}")
            hint = _mistake_hint(chk, prep, j, shape=tuple(g["shape"])) or prep.case.hint
            return s, s, hint
        if g["dtype"] != str(e_dtype).removeprefix("torch."):
            s = f"{pre}dtype {g['dtype']} but expected {str(e_dtype).removeprefix('torch.')}"
            hint = prep.case.hint
            if e_dtype == torch.float64 and g["dtype"] == "float32":
                hint = ("the input is float64 and so should the output be: don't convert to "
                        "float32 (torch.float32, .float()); create new tensors with the "
                        "input's dtype (dtype=x.dtype)")
            elif e_dtype == torch.bool:
                hint = "return a boolean tensor (dtype=torch.bool): True = may attend"
            return s, s, hint
        got = got_tensors[j]
        if got is None:
            s = f"{pre}the output tensor could not be read back ({describe(g)})"
            return s, s, None
        rtol, atol = _tolerance(prep.case, e_dtype)
        if j < len(prep.noise):
            atol = max(atol, NOISE_HEADROOM * prep.noise[j])
        diff = _value_difference(got, e, rtol, atol)
        if diff is not None:
            summary, detail = diff
            hint = (_mistake_hint(chk, prep, j, got=got)
                    or _precision_hint(prep, got, e, e_dtype)
                    or _explain(chk, prep, got_tensors, j) or prep.case.hint)
            return pre + summary, pre + detail, hint

    if prep.grads is not None:
        return _grad_difference(prep, o)
    return None


def _tolerance(case: Case, dtype: torch.dtype) -> tuple[float, float]:
    rtol, atol = DEFAULT_TOLERANCES.get(dtype, (0.0, 0.0))
    return (case.rtol if case.rtol is not None else rtol,
            case.atol if case.atol is not None else atol)


def _index(flat_index: int, shape: Sequence[int]) -> tuple[int, ...]:
    idx = []
    for s in reversed(shape):
        idx.append(flat_index % s)
        flat_index //= s
    return tuple(reversed(idx))


def _value_difference(got: Tensor, exp: Tensor, rtol: float, atol: float
                      ) -> tuple[str, str] | None:
    if got.numel() == 0:
        return None
    if not exp.is_floating_point():
        neq = (got != exp).reshape(-1)
        if not neq.any():
            return None
        k = int(neq.nonzero()[0])
        idx = _index(k, exp.shape)
        s = (f"{int(neq.sum())} of {exp.numel()} entries differ, first at index {idx}: "
             f"got {got.reshape(-1)[k].item()}, expected {exp.reshape(-1)[k].item()}")
        return s, s
    g, e = got.double().reshape(-1), exp.double().reshape(-1)
    bad_nan = torch.isnan(g) & ~torch.isnan(e)
    if bad_nan.any():
        k = int(bad_nan.nonzero()[0])
        s = (f"contains NaN at index {_index(k, exp.shape)} (expected {e[k].item():.4g}); "
             f"{int(bad_nan.sum())} NaN value(s) in all")
        return s, s
    close = torch.isclose(g, e, rtol=rtol, atol=atol, equal_nan=True)
    if close.all():
        return None
    err = torch.nan_to_num((g - e).abs(), nan=math.inf, posinf=math.inf)
    err[close & torch.isnan(err)] = 0
    k = int(err.argmax())
    idx = _index(k, exp.shape)
    summary = f"values differ: max abs error {err[k].item():.3g} at index {idx}"
    detail = (f"{summary} (got {g[k].item():.6g}, expected {e[k].item():.6g}); "
              f"{int((~close).sum())} of {e.numel()} values are outside the tolerance "
              f"rtol={rtol:g}, atol={atol:g}")
    return summary, detail


def _same_for_hint(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if not b.is_floating_point() or not a.is_floating_point():
        return bool((a == b).all())
    a64 = torch.nan_to_num(a.double(), nan=0.0)
    b64 = torch.nan_to_num(b.double(), nan=0.0)
    return bool(torch.allclose(a64, b64, rtol=1e-4, atol=1e-5))


def _mistake_hint(chk: Check, prep: _Prepared, j: int, *, got: Tensor | None = None,
                  shape: tuple[int, ...] | None = None) -> str | None:
    """The hint of the first known mistake whose output part ``j`` equals the learner's."""
    for hint, wrong in chk.mistakes:
        try:
            args = tuple(a.detach().clone() if isinstance(a, Tensor) else a
                         for a in prep.case.args)
            with torch.no_grad():
                parts = _split(chk, wrong(*args, **prep.case.kwargs))
        except Exception:  # noqa: BLE001 - a mistake may not apply to this input
            continue
        if j >= len(parts) or not isinstance(parts[j], Tensor):
            continue
        m = parts[j]
        if shape is not None:
            if tuple(m.shape) == shape and tuple(m.shape) != tuple(prep.expected[j].shape):
                return hint
        elif got is not None and _same_for_hint(got, m):
            return hint
    return None


def _precision_hint(prep: _Prepared, got: Tensor, exp: Tensor, dtype: torch.dtype
                    ) -> str | None:
    if dtype != torch.float64:
        return None
    err = (got - exp).abs().max().item()
    scale = exp.abs().max().item() + 1e-12
    if err / scale < 1e-4:
        return ("your float64 result has only float32 precision: is something converted to "
                "float32 on the way (torch.float32, .float(), a float32 constant tensor)?")
    return None


def _explain(chk: Check, prep: _Prepared, got_tensors: list, j: int) -> str | None:
    if chk.explain is None:
        return None
    expected = [e.to(d) if isinstance(e, Tensor) and d is not None else e
                for e, d in zip(prep.expected, prep.dtypes or [None] * len(prep.expected))]
    if any(isinstance(e, Tensor) and (not isinstance(g, Tensor) or g.shape != e.shape)
           for g, e in zip(got_tensors, expected)):
        return None  # the shape check names a malformed part; explain() reads tensors only
    try:
        return chk.explain(prep.case, got_tensors, expected)
    except Exception:  # noqa: BLE001
        return None


def _grad_difference(prep: _Prepared, o: dict) -> tuple[str, str, str | None] | None:
    detach_hint = ("something in your computation is cut off from autograd: look for "
                   ".detach(), .data, .item(), .numpy(), torch.no_grad() or torch.tensor(x)")
    err = o.get("grad_error")
    if err == "no_graph":
        s = "values match, but the output has no gradient back to the inputs"
        return s, s, detach_hint
    if err and err != "skipped":
        s = f"values match, but backward() through your function failed: {err}"
        return s, s, None
    got_grads = o.get("grads")
    if got_grads is None:
        return None
    assert prep.grads is not None
    dtypes = prep.grad_dtypes or [None] * len(prep.grads)
    noise = prep.grad_noise or [0.0] * len(prep.grads)
    for name, g_enc, e, e_dtype, e_noise in zip(prep.grad_names, got_grads, prep.grads, dtypes,
                                                 noise):
        if e is None:
            continue
        if g_enc is None:
            if bool((e == 0).all()):
                continue
            s = f"values match, but the output does not depend on {name} through autograd"
            return s, s, detach_hint
        g = decode_tensor(g_enc)
        if g is None or g.shape != e.shape:
            s = f"values match, but the gradient w.r.t. {name} has the wrong shape"
            return s, s, None
        rtol, atol = _tolerance(prep.case, e_dtype or e.dtype)
        # Gradients add up many terms of different sizes: their rounding error scales with
        # the largest entry, so the absolute tolerance does too.
        scale = float(e.abs().max()) if e.numel() else 0.0
        # Gradients (sums of many terms, often with cancellation) get 10x the tolerance of
        # values: a float32 gradient reduced to a scalar is good to about 1e-4 relative.
        diff = _value_difference(g.double(), e, rtol * 10,
                                 max(atol * 10, rtol * scale, NOISE_HEADROOM * e_noise))
        if diff is not None:
            summary, detail = diff
            hint = detach_hint if bool((g == 0).all()) else (
                "the forward values are right but the backward pass differs: an in-place "
                "change or a detached piece changes what autograd sees")
            return (f"values match, but the gradient w.r.t. {name} differs: {summary}",
                    f"values match, but the gradient w.r.t. {name} differs: {detail}", hint)
    return None


# ----------------------------------------------------------------------------- notebook API
def check(name: str, fn: Callable[..., Any], *, timeout: float = 5.0,
          seed: int | None = None, allow_library: bool = False) -> CheckResult:
    """Check the learner's ``fn`` against the reference of check ``name``.

    In a notebook: ``check("patchify", patchify)``. Runs ``fn`` on several fresh
    random inputs and edge cases in a child process (killed after ``timeout``
    seconds), compares with the reference and returns a :class:`CheckResult`
    (green/red in Jupyter) that explains the first difference. Never raises.
    A function that calls the library's own implementation (or the grader's reference)
    gets 0 unless ``allow_library=True``.
    """
    try:
        chk = get_check(name)
    except KeyError as e:
        return failed(name, "check error", str(e.args[0]))
    except Exception as e:  # noqa: BLE001
        return failed(name, "check error", f"could not load the checks: {type(e).__name__}: {e}")
    if not callable(fn):
        return failed(chk, "failed", f"expected a function for {chk.function}, got "
                      f"{type(fn).__name__}")

    def runner(calls: list[Call], t: float) -> tuple[list[bytes], RunStatus]:
        return run_calls(fn, calls, t)

    return evaluate(chk, runner, timeout=timeout, seed=seed, allow_library=allow_library)
