"""Test-session set-up shared by every test file."""

from __future__ import annotations

import sys

# nbformat -> jsonschema imports rfc3987_syntax when it is installed (jupyterlab brings it); it
# builds a grammar at import, ~2.6 s of CPU in every test process, for IRI formats no test uses
# (minivlm's grading processes skip it the same way). Effective where nbformat is not imported
# yet (pytest -p no:nbval); where the nbval plugin is loaded, it imports nbformat before any
# conftest, so `make test` loads tests/pytest_early.py first (-p tests.pytest_early).
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


# `make test` runs the zoo build, the unit tests and the notebooks in one pool of two workers
# (`-n 2 --dist loadfile --no-loadscope-reorder`). xdist hands whole files to the workers in
# collection order, so the longest files go first and the short ones fill the gaps at the end
# (longest processing time first): a long file handed out last would leave one core idle for its
# whole run. The weights are rough CPU seconds on the 2-core machine; they only change the order,
# never what runs.
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

# The zoo build is pool work too (tests/test_zoo_cache.py, one test per component): each
# component is its own unit of work, handed out before everything else, longest build first
# (CPU seconds of `minivlm zoo build --name N` on the 2-core machine, measured in make test).
# Files that load the zoo wait (see _ZooFirstScheduling) until every build has finished; the
# other files run on the free core meanwhile, so no core idles at the end of a separate build step.
_ZOO_BUILD_FILE = "tests/test_zoo_cache.py"
_ZOO_BUILD_SECONDS = {"shapes_vilt": 108, "shapes_albef": 66, "shapes_clip_cnn": 48,
                      "shapes_clip": 43, "shapes_lm": 39}  # fmt: skip
# Every notebook except these loads zoo components (directly or through a recipe); of the unit
# tests, the exercise 04/05 training checks do. A file that loads the zoo and is missing here
# still passes (zoo.load builds a missing component itself), it only may build it a second time.
_ZOO_FREE_NOTEBOOKS = {"00_tour.ipynb", "06_blip_coca.ipynb", "07_mae_beit.ipynb",
                       "11_region_era.ipynb"}  # fmt: skip
_USES_ZOO_TESTS = {"test_ex04_checks.py", "test_ex05_checks.py"}


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _uses_zoo(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    if path.endswith(".ipynb"):
        return name not in _ZOO_FREE_NOTEBOOKS
    return name in _USES_ZOO_TESTS


def _file_weight(path: str) -> float:
    return _SLOW_FILES.get(path.rsplit("/", 1)[-1], 60.0 if path.endswith(".ipynb") else 1.0)


def _sort_key(item: pytest.Item, first_seen: dict[str, int]) -> tuple:
    path = _file_of(item.nodeid)
    if path.endswith(_ZOO_BUILD_FILE):  # first of all, longest build first
        spec = getattr(item, "callspec", None)
        name = spec.params.get("name") if spec is not None else None
        return (0, -_ZOO_BUILD_SECONDS.get(name, 0), first_seen[path])
    return (1, -_file_weight(path), first_seen[path])


def pytest_collection_modifyitems(session, config, items) -> None:  # noqa: ARG001
    """Zoo builds first; then whole files longest first, keeping each file's test order."""
    first_seen: dict[str, int] = {}
    for item in items:
        first_seen.setdefault(_file_of(item.nodeid), len(first_seen))
    items.sort(key=lambda it: _sort_key(it, first_seen))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the zoo builds as separate units, ahead of their users."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class _ZooFirstScheduling(LoadFileScheduling):
        """xdist's loadfile scheduling (a whole file per unit, handed out in collection order
        when a worker has at most two tests left), except that each zoo build is a unit of its
        own and a file that loads the zoo is handed out only once no build is left to run."""

        def _split_scope(self, nodeid: str) -> str:
            path = _file_of(nodeid)
            return nodeid if path.endswith(_ZOO_BUILD_FILE) else path

        def _builds_left(self) -> bool:
            if any(_file_of(s).endswith(_ZOO_BUILD_FILE) for s in self.workqueue):
                return True
            return any(
                _file_of(s).endswith(_ZOO_BUILD_FILE) and not all(unit.values())
                for work in self.assigned_work.values() for s, unit in work.items()
            )

        def _assign_work_unit(self, node) -> None:
            if not self.workqueue:
                return
            waiting = self._builds_left()
            scope = next((s for s in self.workqueue if not (waiting and _uses_zoo(s))), None)
            if scope is None:
                # only zoo users are left: wait for the builds, unless this worker's one pending
                # test is a build (a worker runs its last test only once it has a next one or
                # is told to stop); then it gets a user now, which runs after that build
                pending = [i for s, unit in self.assigned_work[node].items()
                           for i, done in unit.items() if not done]
                if not (len(pending) == 1 and _file_of(pending[0]).endswith(_ZOO_BUILD_FILE)):
                    return
                scope = next(iter(self.workqueue))
            self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

        def mark_test_complete(self, node, item_index: int, duration: float = 0) -> None:
            super().mark_test_complete(node, item_index, duration)
            if _file_of(self.registered_collections[node][item_index]).endswith(_ZOO_BUILD_FILE):
                for other in self.nodes:  # a worker waiting for the builds may start now
                    if other is not node:
                        self._reschedule(other)

    return _ZooFirstScheduling(config, log)


def pytest_terminal_summary(terminalreporter) -> None:
    """The zoo builds' summary lines (tests/test_zoo_cache.py), as `minivlm zoo build` prints."""
    lines = [value for rep in terminalreporter.stats.get("passed", [])
             for key, value in getattr(rep, "user_properties", ()) if key == "zoo"]  # fmt: skip
    if lines:
        terminalreporter.write_sep("-", "zoo cache")
        for line in lines:
            terminalreporter.write_line(line)
