"""Test-session set-up shared by every test file."""

from __future__ import annotations

import sys

# nbformat -> jsonschema imports rfc3987_syntax when it is installed (jupyterlab brings it); it
# builds a grammar at import, ~2.6 s of CPU in every test process, for IRI formats no test uses
# (minivlm's grading processes skip it the same way). Effective where nbformat is not imported
# yet: `make test` runs the unit tests with `-p no:nbval`, whose plugin would import it first.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[assignment]


# --------------------------------------------------------------------------- grading references
import copy  # noqa: E402

import pytest  # noqa: E402

_REFERENCE_CACHE: dict = {}


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A test that changes torch's thread count gives it back: two OpenMP threads left
    behind in a process that shares its core spin-wait and cost every later test CPU
    (measured: the 12-seed grading test took 36 CPU-s after a leak, 2.6 without)."""
    import torch

    n = torch.get_num_threads()
    yield
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@pytest.fixture
def reuse_references(monkeypatch):
    """Prepare each (check, seed)'s cases and reference answers once per test process and
    hand every later ``check(..., seed=s)`` a deep copy. The answers are a function of the
    check and the seed (``core.prepare_cases``); what this saves is re-running a reference
    that trains a model (exercises 01, 03: seconds each) for every broken solution graded
    with the same seed. The learner's function still runs, every time, in its own child."""
    from minivlm.grading import core

    original = core.prepare_cases

    def cached(chk, seed):
        key = (chk.name, seed)
        hit = _REFERENCE_CACHE.get(key)
        if hit is None or hit[0] is not chk or hit[1] is not chk.resolve_reference():
            hit = (chk, chk.resolve_reference(), original(chk, seed))
            _REFERENCE_CACHE[key] = hit
        return copy.deepcopy(hit[2])

    monkeypatch.setattr(core, "prepare_cases", cached)
