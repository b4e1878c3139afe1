"""Checks (minivlm.grading): right solutions pass; deliberately broken ones fail with a
message that names the mistake; learner code can't crash, hang or fool the checker."""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import threading
import time

import pytest
import torch
from exercise_helpers import assert_broken_fails_pointedly, summary_prefix

from minivlm.grading import (
    Case,
    CheckResult,
    check,
    get_check,
    list_checks,
    register_check,
    sandbox,
)
from minivlm.grading import core as grading_core
from minivlm.grading.sandbox import FORK_AVAILABLE, dumps_safe, loads_safe, wall_limit
from minivlm.nn.attention import attend
from minivlm.nn.vit import patchify as ref_patchify

SEED = 1234


# ----------------------------------------------------------------------------- patchify
def patchify_right(images, patch_size):
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def patchify_unfold(images, patch_size):  # a different, also right, solution
    p = patch_size
    x = images.unfold(2, p, p).unfold(3, p, p)  # (B, C, h, w, p, p)
    B, C, h, w = x.shape[:4]
    return x.permute(0, 2, 3, 1, 4, 5).reshape(B, h * w, C * p * p)


def patchify_ppc(images, patch_size):  # each patch flattened (p, p, C)
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, -1, C * p * p)


def patchify_column_major(images, patch_size):
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 4, 2, 1, 3, 5)
    return x.reshape(B, -1, C * p * p)


def patchify_hw_transposed(images, patch_size):  # treats dim 3 as the height
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 4, 2, 1, 5, 3)
    return x.reshape(B, -1, C * p * p)


def patchify_squeeze(images, patch_size):  # only works for B > 1
    return patchify_right(images, patch_size).squeeze()


def patchify_square_only(images, patch_size):  # uses H for both sides
    B, C, H, _ = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, H // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, -1, C * p * p)


def patchify_float32(images, patch_size):  # right in float32, casts float64 down
    return patchify_right(images.to(torch.float32), patch_size)


def patchify_transposed_output(images, patch_size):
    return patchify_right(images, patch_size).transpose(1, 2)


def patchify_numpy(images, patch_size):
    return patchify_right(images, patch_size).numpy()


# ----------------------------------------------------------------------------- attention
def make_attention(*, scale="div", dim=-1, invert=False, mask_mode="-inf", normalise=True,
                   cast=False, squeeze=False, detach=False):
    def attention(q, k, v, mask=None):
        if cast:
            q, k, v = q.float(), k.float(), v.float()
        d = q.shape[-1]
        s = q @ k.transpose(-2, -1)
        s = {"div": s / math.sqrt(d), "none": s, "mul": s * math.sqrt(d)}[scale]
        if mask is not None:
            m = ~mask if invert else mask
            if mask_mode == "-inf":
                s = s.masked_fill(~m, float("-inf"))
            elif mask_mode == "zero":
                s = s * m
        w = s.softmax(dim=dim) if normalise else s.exp()
        if detach:
            w = w.detach()
        out = w @ v
        if squeeze:
            return out.squeeze(), w.squeeze()
        return out, w

    return attention


def attention_big_negative(q, k, v, mask=None):  # right: -1e9 instead of -inf
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, -1e9)
    w = torch.softmax(s, dim=-1)
    return w @ v, w


def attention_sdpa_weights(q, k, v, mask=None):  # right: reuse the library's weights
    out, w = attend(q, k, v, mask, need_weights=True)
    return out, w


# ----------------------------------------------------------------------------- causal mask
def causal_right(T):
    return torch.tril(torch.ones(T, T, dtype=torch.bool))


def causal_arange(T):
    i = torch.arange(T)
    return i[None, :] <= i[:, None]


RIGHT = [
    ("patchify", patchify_right),
    ("patchify", patchify_unfold),
    ("attention", make_attention()),
    ("attention", attention_big_negative),
    ("attention", attention_sdpa_weights),
    ("causal_mask", causal_right),
    ("causal_mask", causal_arange),
]


@pytest.mark.parametrize("name,fn", RIGHT, ids=[f"{n}-{f.__name__}" for n, f in RIGHT])
def test_right_solutions_pass(name, fn):
    r = check(name, fn, seed=SEED)
    assert r.passed, str(r)
    assert r.points == r.max_points == get_check(name).points
    assert r.status == "passed"


# (check, broken function, words the message must contain)
BROKEN = [
    ("patchify", patchify_ppc, ["values differ", "(p, p, C) order"]),
    ("patchify", patchify_column_major, ["values differ", "column by column", "raster order"]),
    ("patchify", patchify_hw_transposed, ["values differ", "H and W swapped"]),
    ("patchify", patchify_squeeze, ["output shape (4, 48) but expected (1, 4, 48)",
                                    "batch of size 1", ".squeeze()"]),
    ("patchify", patchify_square_only, ["raised RuntimeError", "non-square", "H=12 != W=8",
                                        "images.reshape(B, C, H // p, p, H // p, p)"]),
    ("patchify", patchify_float32, ["dtype float32 but expected float64", "float64 images"]),
    ("patchify", patchify_transposed_output, ["output shape", "last two axes are swapped"]),
    ("patchify", patchify_numpy, ["numpy array", "expected a torch.Tensor", "torch.from_numpy"]),
    ("attention", make_attention(scale="mul"), ["values differ", "multiplied by sqrt(d)"]),
    ("attention", make_attention(scale="none"), ["values differ", "without the 1/sqrt(d) scale"]),
    ("attention", make_attention(dim=-2), ["values differ", "softmax over the wrong axis"]),
    ("attention", make_attention(invert=True), ["causal mask", "mask is inverted"]),
    ("attention", make_attention(mask_mode="zero"), ["causal mask", "multiplying the scores",
                                                     "-inf"]),
    ("attention", make_attention(mask_mode="ignore"), ["causal mask", "not zero where the mask "
                                                       "is False"]),
    ("attention", make_attention(normalise=False), ["values differ", "without normalising"]),
    ("attention", make_attention(cast=True), ["dtype float32 but expected float64",
                                              "don't convert to float32"]),
    ("attention", make_attention(squeeze=True), ["batch of size 1", "output shape (4, 16) but "
                                                 "expected (1, 1, 4, 16)"]),
    ("attention", make_attention(detach=True), ["values match", "does not depend on q",
                                                ".detach()"]),
    ("causal_mask", lambda T: torch.ones(T, T, dtype=torch.bool).tril(diagonal=-1),
     ["entries differ", "off by one", "diagonal is True"]),
    ("causal_mask", lambda T: torch.ones(T, T, dtype=torch.bool).tril(diagonal=1),
     ["entries differ", "off by one", "i+1"]),
    ("causal_mask", lambda T: torch.ones(T, T, dtype=torch.bool).triu(),
     ["entries differ", "transposed"]),
    ("causal_mask", lambda T: ~torch.ones(T, T, dtype=torch.bool).tril(),
     ["entries differ", "inverted"]),
    ("causal_mask", lambda T: torch.ones(T, T).tril(), ["dtype float32 but expected bool",
                                                        "torch.bool"]),
]


@pytest.mark.parametrize("name,fn,words", BROKEN,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BROKEN)])
def test_broken_solutions_fail_with_a_pointed_message(name, fn, words):
    assert_broken_fails_pointedly(name, fn, words, SEED, kind=summary_prefix)


def test_message_states_input_tolerance_and_index():
    r = check("attention", make_attention(scale="none"), seed=SEED)
    first = r.message.splitlines()[0]
    assert first.startswith("out: values differ: max abs error ")
    assert " at index (" in first and "rtol=0.0001, atol=1e-05" in first
    assert "case 1/7 (self-attention, B=2, H=2, T=5, d=8, no mask): q (2, 2, 5, 8) float32" \
        in r.message
    assert r.message.splitlines()[-1].startswith("hint: ")


def test_same_seed_same_verdict_and_fresh_inputs_otherwise():
    a = check("attention", make_attention(scale="none"), seed=7)
    b = check("attention", make_attention(scale="none"), seed=7)
    c = check("attention", make_attention(scale="none"), seed=8)
    assert a.message == b.message
    assert a.message != c.message  # other random numbers
    assert check("patchify", patchify_right).seed != check("patchify", patchify_right).seed


# ----------------------------------------------------------------------------- robustness
def not_attempted(images, patch_size):
    """Docstring kept by the student version."""
    raise NotImplementedError("replace this line with your solution")


def test_not_implemented_is_not_attempted():
    r = check("patchify", not_attempted)
    assert r.status == "not attempted" and r.summary == "not attempted"
    assert "not attempted yet" in r.message and not r.passed


def test_library_not_implemented_error_is_an_error_not_a_todo():
    def uses_unsupported(images, patch_size):
        return torch.ones(2, 2, dtype=torch.bool) @ torch.ones(2, 2, dtype=torch.bool)

    r = check("patchify", uses_unsupported)
    assert r.status in ("raised", "failed"), str(r)


def test_exception_reports_the_learners_line():
    def broken(images, patch_size):
        B = images.shape[0]
        return images[B + 10]  # IndexError here

    r = check("patchify", broken)
    assert r.status == "raised"
    assert "raised IndexError" in r.summary
    assert "return images[B + 10]  # IndexError here" in r.message
    assert "in broken" in r.message


def test_runaway_code_is_stopped_after_the_time_limit():
    def forever(images, patch_size):
        while True:
            pass

    t0 = time.monotonic()
    r = check("patchify", forever, timeout=1.0)
    elapsed = time.monotonic() - t0
    assert r.status == "timed out" and "timed out after 1 s" in r.message
    # 1 s of CPU: about 1 s of wall time on an idle core, more on a busy machine, never
    # more than the wall-clock cap
    assert elapsed < wall_limit(1.0) + 2, elapsed
    if FORK_AVAILABLE:
        assert "s of CPU in" in r.message, r.message


@pytest.mark.skipif(not FORK_AVAILABLE, reason="needs fork")
def test_time_limit_counts_cpu_time_and_a_waiting_function_meets_the_wall_cap(monkeypatch):
    slept = []

    def waits_then_answers(images, patch_size):  # what a busy machine looks like to the
        if not slept:                             # child: wall time passes, little CPU used
            time.sleep(1.5)
            slept.append(1)
        return patchify_right(images, patch_size)

    r = check("patchify", waits_then_answers, timeout=1.0)
    assert r.passed, str(r)

    def waits_forever(images, patch_size):
        while True:
            time.sleep(0.05)

    monkeypatch.setattr(sandbox, "wall_limit", lambda timeout: 2 * timeout)
    t0 = time.monotonic()
    r = check("patchify", waits_forever, timeout=0.5)
    assert r.status == "timed out" and "timed out after 0.5 s" in r.message
    assert 0.9 < time.monotonic() - t0 < 10


@pytest.mark.skipif(not FORK_AVAILABLE, reason="needs fork")
def test_a_function_that_exits_the_process_does_not_take_the_caller_with_it():
    def exits(images, patch_size):
        os._exit(3)

    r = check("patchify", exits)
    assert not r.passed and "exit code 3" in r.message

    def crashes(images, patch_size):
        os.kill(os.getpid(), 9)

    assert "SIGKILL" in check("patchify", crashes).message

    def calls_exit(images, patch_size):
        raise SystemExit(2)

    assert check("patchify", calls_exit).summary.startswith("raised SystemExit")


def test_wrong_signature_and_not_a_function():
    r = check("patchify", lambda images: images)
    assert r.status == "wrong signature"
    assert "expected patchify(images, patch_size), got <lambda>(images)" in r.summary
    r = check("patchify", 42)
    assert r.status == "failed" and "expected a function" in r.message
    r = check("no_such_check", patchify_right)
    assert r.status == "check error" and "known checks" in r.message and not r


def test_learner_prints_do_not_leak_and_inputs_are_copies():
    seen = []

    def printing(images, patch_size):
        print("debug output from the learner")
        seen.append(1)  # runs in a child: the parent's list stays empty
        return patchify_right(images, patch_size)

    r = check("patchify", printing)
    assert r.passed, str(r)
    if FORK_AVAILABLE:
        assert seen == []


def test_an_in_place_change_of_an_input_fails_with_a_note():
    def mutating(images, patch_size):
        out = patchify_right(images, patch_size).clone()
        with torch.no_grad():
            images.zero_()  # right output, but the caller's tensor is gone
        return out

    r = check("patchify", mutating, seed=SEED)
    assert r.status == "failed" and "changed its input images in place" in r.summary, str(r)
    assert "x.clone()" in r.message

    def masks_in_place(T):  # an integer input is not compared (T is a number): passes
        return causal_right(T)

    assert check("causal_mask", masks_in_place).passed


# ----------------------------------------------------------------------------- raises, library
def test_a_case_can_ask_for_an_exception(monkeypatch):
    monkeypatch.setattr(grading_core, "_CHECKS", dict(grading_core._CHECKS))

    def ref(x):
        if x.shape[-1] == 0:
            raise ValueError("empty")
        return x * 2

    @register_check("toy_double", signature="double(x)", reference=ref, exercise="99_toy")
    def cases(gen):
        yield Case("a (2, 3) matrix", torch.randn(2, 3, generator=gen))
        yield Case("an empty last axis", torch.zeros(2, 0), raises=ValueError,
                   hint="raise ValueError on an empty input")

    def right(x):
        if x.shape[-1] == 0:
            raise ValueError("nothing to double")
        return x * 2

    class MyError(ValueError):
        pass

    def subclass(x):
        if x.shape[-1] == 0:
            raise MyError("a subclass counts")
        return x + x

    assert check("toy_double", right).passed
    assert check("toy_double", subclass).passed
    r = check("toy_double", lambda x: x * 2)
    assert r.status == "failed" and "should raise ValueError" in r.summary, str(r)
    assert "raise ValueError on an empty input" in r.message
    r = check("toy_double", lambda x: x * 2 if x.shape[-1] else x.sum(-1).item())
    assert "raised RuntimeError" in r.summary and "should raise ValueError" in r.summary, r

    def stub(x):
        raise NotImplementedError("replace this line with your solution")

    assert check("toy_double", stub).status == "not attempted"
    with pytest.raises(TypeError, match="exception class"):
        Case("bad", torch.zeros(1), raises="ValueError")


def test_the_library_or_the_reference_earns_nothing():
    from minivlm.grading.checks import ex00_patchify_attention as ex00

    r = check("patchify", ref_patchify, seed=SEED)
    assert r.status == "library" and r.points == 0, str(r)
    assert "calls the library's patchify (minivlm/nn/vit.py)" in r.summary

    def via_reference(images, patch_size):
        return ex00._ref_patchify(images, patch_size)

    r = check("patchify", via_reference, seed=SEED)
    assert r.status == "library" and "_ref_patchify" in r.summary, str(r)

    def hides_it(images, patch_size):
        import sys

        hook = sys.getprofile()
        sys.setprofile(None)
        return ref_patchify(images, patch_size) if hook is None else ref_patchify(
            images, patch_size)

    assert check("patchify", hides_it, seed=SEED).status == "library"
    assert check("patchify", ref_patchify, seed=SEED, allow_library=True).passed


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] not in "ZX"  # zombies are dead
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not FORK_AVAILABLE, reason="needs fork")
def test_killing_the_kernel_mid_check_leaves_no_runaway_child(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = (
        "import os\n"
        "from minivlm.grading import check\n"
        "def forever(images, patch_size):\n"
        f"    open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
        "    while True:\n"
        "        pass\n"
        "check('patchify', forever, timeout=120)\n"
    )
    kernel = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        child = int(pidfile.read_text())
        assert _alive(child)
    finally:
        kernel.kill()
        kernel.wait()
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(child):
        os.kill(child, 9)
        pytest.fail("the learner's runaway function outlived the process that checked it")


@pytest.mark.skipif(not FORK_AVAILABLE, reason="needs fork")
def test_fork_after_parallel_torch_work_does_not_hang():
    # libgomp's thread pool does not survive fork; the child must not use it.
    torch.set_num_threads(max(2, torch.get_num_threads()))
    a = torch.randn(512, 512)
    for _ in range(3):
        a = (a @ a).tanh()
    # a hung child uses no CPU: it is stopped at the wall-clock cap and the check fails (no
    # wall-time assert here: on a loaded machine a right run may take seconds)
    r = check("attention", make_attention(), timeout=10)
    assert r.passed, str(r)


def test_thread_fallback_without_fork(monkeypatch):
    monkeypatch.setenv("MINIVLM_CHECK_NO_FORK", "1")
    assert check("patchify", patchify_right).passed
    assert check("patchify", patchify_ppc).status == "failed"
    stop = threading.Event()

    def slow(images, patch_size):
        stop.wait(10)
        return patchify_right(images, patch_size)

    r = check("patchify", slow, timeout=0.5)
    stop.set()
    assert r.status == "timed out" and "background thread" in r.message


def _cpu_seconds() -> float:
    """CPU of this process and of its finished children (the checks' fork children)."""
    import resource

    return sum(getattr(resource.getrusage(who), f) for f in ("ru_utime", "ru_stime")
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def test_per_check_overhead_is_small():
    check("attention", make_attention())  # warm up imports
    # CPU, not wall time: on a loaded machine the wall time of a check says little
    t0 = _cpu_seconds()
    for name, fn in [("patchify", patchify_right), ("attention", make_attention()),
                     ("causal_mask", causal_right)]:
        assert check(name, fn).passed
    per_check = (_cpu_seconds() - t0) / 3
    print(f"per check: {per_check * 1000:.0f} ms of CPU")
    assert per_check < 1.0


def test_results_never_unpickle_classes():
    assert loads_safe(dumps_safe({"a": [1, 2.5, b"x", None]})) == {"a": [1, 2.5, b"x", None]}
    with pytest.raises(pickle.UnpicklingError):
        loads_safe(pickle.dumps(torch.zeros(2)))


# ----------------------------------------------------------------------------- results, registry
def test_result_display():
    ok = check("causal_mask", causal_right)
    bad = check("causal_mask", lambda T: torch.ones(T, T, dtype=torch.bool).triu())
    def todo_fn(T):
        raise NotImplementedError("replace this line with your solution")

    todo = check("causal_mask", todo_fn)
    assert bool(ok) and not bad
    assert "#2e7d32" in ok._repr_html_() and "\u2714 causal_mask" in ok._repr_html_()
    assert "#c62828" in bad._repr_html_() and "(0/1 points)" in bad._repr_html_()
    assert str(ok).startswith("[PASS] causal_mask (1/1 points)")
    assert str(bad).startswith("[FAIL] causal_mask (0/1 points): ")
    assert repr(bad) == str(bad)
    assert todo.status == "not attempted" and "#b26a00" in todo._repr_html_()
    assert str(todo).startswith("[TODO] causal_mask (0/1 points): not attempted yet")
    r = CheckResult("x<y>", False, 0, 1, "a <b> & c", status="failed")
    assert "x&lt;y&gt;" in r._repr_html_() and "a &lt;b&gt; &amp; c" in r._repr_html_()
    assert CheckResult.from_dict(bad.to_dict()) == bad


def test_exercise_00_registers_its_checks():
    names = [c.name for c in list_checks("00_patchify_attention")]
    assert names == ["patchify", "attention", "causal_mask"]
    assert [get_check(n).points for n in names] == [2, 3, 1]
    assert get_check("patchify").signature == "patchify(images, patch_size)"


def test_a_new_check_takes_a_few_lines(monkeypatch):
    monkeypatch.setattr(grading_core, "_CHECKS", dict(grading_core._CHECKS))

    def softmax_ref(x):
        return x.softmax(dim=-1)

    @register_check("toy_softmax", signature="softmax(x)", reference=softmax_ref, points=1,
                    exercise="99_toy", grad=True,
                    mistakes=[("softmax over the first axis", lambda x: x.softmax(dim=0))])
    def toy_cases(gen):
        yield Case("a (3, 4) matrix", torch.randn(3, 4, generator=gen))
        yield Case("float64", torch.randn(2, 5, generator=gen, dtype=torch.float64))

    assert check("toy_softmax", lambda x: x.exp() / x.exp().sum(-1, keepdim=True)).passed
    r = check("toy_softmax", lambda x: x.softmax(dim=0))
    assert "hint: softmax over the first axis" in r.message
    with pytest.raises(ValueError, match="registered twice"):
        register_check("toy_softmax", signature="softmax(x)", reference=softmax_ref)(
            lambda gen: [])


def test_exercise_checks_names_the_check_and_explain_reads_well_formed_parts(monkeypatch):
    monkeypatch.setattr(grading_core, "_CHECKS", dict(grading_core._CHECKS))
    register = grading_core.exercise_checks("99_toy")
    seen = []

    def explain(case, got, expected):
        seen.append([tuple(g.shape) for g in got])
        return "the halves are swapped"

    @register("split(x)", lambda x: (x[:, :2], x[:, 2:]), points=2,
              returns={"left": "(B, 2)", "right": "(B, 2)"}, explain=explain)
    def split_cases(gen):
        yield Case("a (3, 4) matrix", torch.randn(3, 4, generator=gen))

    @register("double(x)", lambda x: 2 * x, points=1, returns="(B, D)", name="toy_double2")
    def double_cases(gen):
        yield Case("a (2, 3) matrix", torch.randn(2, 3, generator=gen))

    chk = get_check("split")
    assert (chk.exercise, chk.points, chk.outputs, chk.shapes) == (
        "99_toy", 2.0, ("left", "right"), ("(B, 2)", "(B, 2)"))
    dbl = get_check("toy_double2")
    assert (dbl.function, dbl.outputs, dbl.shapes) == ("double", None, ("(B, D)",))
    r = check("split", lambda x: (x[:, 2:], x[:, :2]))
    assert "hint: the halves are swapped" in r.message and seen == [[(3, 2), (3, 2)]], (r, seen)
    seen.clear()  # the second part's shape is wrong: the shape message, explain() not called
    r = check("split", lambda x: (x[:, 2:], x[:, 1:]))
    assert "the halves are swapped" not in r.message and seen == [], (r, seen)
