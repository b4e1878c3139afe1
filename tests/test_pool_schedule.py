"""tests/conftest.py's xdist scheduling for `make test`: zoo builds first, their users after them.

A small simulation with stand-in workers that behave like xdist's: a worker runs its next test
only once it holds a test after it (or has been told to stop), and reports each finished test.
"""

from __future__ import annotations

from types import SimpleNamespace

import conftest
from xdist.remote import Producer

ZOO = [f"tests/test_zoo_cache.py::test_component_is_built_and_verified[{n}]" for n in "abc"]
USER = [f"notebooks/02_vilt_fusion.ipynb::Cell {i}" for i in range(4)]  # loads the zoo
USER_UNIT = ["tests/test_ex05_checks.py::test_one", "tests/test_ex05_checks.py::test_two"]
FREE_NB = [f"notebooks/07_mae_beit.ipynb::Cell {i}" for i in range(3)]
FREE = ["tests/test_text.py::test_one", "tests/test_tokenizer.py::test_one"]


class _Config:
    option = SimpleNamespace(loadscopereorder=False)

    def getvalue(self, name: str):
        return {"dist": "loadfile", "tx": ["2*popen"]}[name]


class _Worker:
    def __init__(self, name: str) -> None:
        self.name, self.queue, self.shutting_down = name, [], False
        self.gateway = SimpleNamespace(id=name)

    def send_runtest_some(self, indices: list[int]) -> None:
        self.queue.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True

    def can_run(self) -> bool:
        return len(self.queue) >= 2 or (len(self.queue) == 1 and self.shutting_down)


def _run(collection: list[str]) -> list[tuple[str, str]]:
    """(worker, nodeid) in the order the tests ran, one step of each worker in turn."""
    log = Producer("sched", enabled=False)
    sched = conftest.pytest_xdist_make_scheduler(config=_Config(), log=log)
    workers = [_Worker("gw0"), _Worker("gw1")]
    for w in workers:
        sched.add_node(w)
        sched.add_node_collection(w, collection)
    sched.schedule()
    ran = []
    while any(w.can_run() for w in workers):
        for w in workers:
            if w.can_run():
                i = w.queue.pop(0)
                ran.append((w.name, collection[i]))
                sched.mark_test_complete(w, i)
    assert sorted(n for _, n in ran) == sorted(collection), "some tests never ran"
    return ran


def _check_order(ran: list[tuple[str, str]]) -> None:
    last_build = max(i for i, (_, n) in enumerate(ran) if n in ZOO)
    first_user = min(i for i, (_, n) in enumerate(ran) if n in USER + USER_UNIT)
    assert first_user > last_build, ran
    for unit in (USER, USER_UNIT, FREE_NB):  # a file stays on one worker
        assert len({w for w, n in ran if n in unit}) <= 1, ran


def test_builds_go_first_and_their_users_wait_while_other_files_run() -> None:
    ran = _run(ZOO + USER + FREE_NB + USER_UNIT + FREE)
    _check_order(ran)
    assert {w for w, n in ran if n in ZOO} == {"gw0", "gw1"}  # builds spread over both workers
    # while the builds ran, the zoo-free files were handed out ahead of the waiting users
    first_user = min(i for i, (_, n) in enumerate(ran) if n in USER + USER_UNIT)
    assert any(n in FREE_NB + FREE for _, n in ran[:first_user]), ran


def test_only_users_left_still_finishes() -> None:
    # a worker whose one pending test is a build gets a user (it runs after the build), else
    # neither worker could run its last build
    _check_order(_run(ZOO + USER + USER_UNIT))


def test_without_builds_nothing_waits() -> None:
    ran = _run(USER + FREE_NB + FREE)
    assert [n for _, n in ran][:1] == USER[:1]


def test_a_waiting_worker_starts_when_the_last_build_finishes() -> None:
    # gw1 holds one zoo-free test it cannot run alone while the only other work is zoo users;
    # the end of the build on gw0 must hand gw1 work too
    ran = _run(ZOO[:1] + USER + FREE[:1] + USER_UNIT)
    _check_order(ran)
    assert {w for w, _ in ran} == {"gw0", "gw1"}
