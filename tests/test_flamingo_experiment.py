"""Smoke test of experiments/flamingo.py (lecture 9's multi-seed tables) on a tiny setting:
one seed, a few steps, small banks (the numbers mean nothing; the layout and the gate check do)."""

from __future__ import annotations

import json

import pytest
from script_helpers import load_script, restored_threads


@pytest.fixture(scope="module")
def experiment():
    return load_script("experiments/flamingo.py")


@pytest.fixture(autouse=True)
def _threads():
    with restored_threads():  # main() sets one thread; give the rest of the suite its own
        yield


TINY = ["--seeds", "0", "--steps", "3", "--mask-steps", "2", "--n-eval", "60", "--bank", "60"]


def test_runs_writes_results_and_refuses_overwrite(experiment, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert experiment.main(["--out", str(out), *TINY]) == 0
    res = json.loads(out.read_text())
    assert res["complete"] and len(res["seeds"]) == 1
    s = res["seeds"][0]
    assert s["gates_at_zero_bit_identical"] is True
    assert set(s["interleaved"]["few_shot"]) == {"0", "1", "2", "4"}
    assert len(s["mask: every image"]) == 3 and len(s["pairs only"]["final_gates"]) == 4
    assert "interleaved" in capsys.readouterr().out
    assert experiment.main(["--out", str(out), *TINY]) == 2  # never overwrites unasked
