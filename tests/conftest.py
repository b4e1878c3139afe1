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


# `make test` runs the unit tests and the notebooks in one pool of two workers (`-n 2 --dist
# loadfile --no-loadscope-reorder`). xdist hands whole files to the workers in collection order,
# so the longest files go first and the short ones fill the gaps at the end (longest processing
# time first): a long file handed out last would leave one core idle for its whole run. The
# weights are rough CPU seconds on the 2-core machine; they only change the order, never what runs.
_SLOW_FILES: dict[str, float] = {
    # notebooks (kernel CPU seconds, single-threaded)
    "00_tour.ipynb": 55, "01_clip_temperature.ipynb": 60, "02_vilt_fusion.ipynb": 80,
    "03_albef_momentum_distillation.ipynb": 56, "04_qformer_masks.ipynb": 75,
    "05_llava_tuning.ipynb": 74, "06_blip_coca.ipynb": 64, "07_mae_beit.ipynb": 58,
    "08_vlmo_beit3.ipynb": 63, "09_flamingo.ipynb": 57, "10_qwen_vl.ipynb": 49,
    "11_region_era.ipynb": 44,
    # the slowest unit-test files (CPU seconds with OMP_NUM_THREADS=1; test_gradebook's count
    # leaves out what its sandboxed children spend, which rusage cannot see)
    "test_slides.py": 58, "test_zoo.py": 37, "test_gradebook.py": 43, "test_benchmarks.py": 27,
    "test_ex05_checks.py": 14, "test_ex03_checks.py": 16, "test_ex02_checks.py": 12,
    "test_train.py": 18, "test_grading_stability.py": 14, "test_ex04_checks.py": 32,
    "test_ex01_checks.py": 8, "test_mae_beit_experiment.py": 10,
    "test_instructblip_experiment.py": 10, "test_grading.py": 8,
}


def _file_weight(path: str) -> float:
    return _SLOW_FILES.get(path.rsplit("/", 1)[-1], 60.0 if path.endswith(".ipynb") else 1.0)


def pytest_collection_modifyitems(session, config, items) -> None:  # noqa: ARG001
    """Order whole files longest first, keeping the order of the tests inside each file."""
    first_seen: dict[str, int] = {}
    for item in items:
        first_seen.setdefault(item.nodeid.split("::", 1)[0], len(first_seen))
    items.sort(key=lambda it: (-_file_weight(it.nodeid.split("::", 1)[0]),
                               first_seen[it.nodeid.split("::", 1)[0]]))
