"""Smoke test of experiments/qwen_vl.py (lecture 10's multi-seed tables) on a tiny setting: one
seed, two steps per arm (the numbers mean nothing; the layout and the overwrite guard do)."""

from __future__ import annotations

import json

import pytest
from script_helpers import load_script, restored_threads


@pytest.fixture(scope="module")
def experiment():
    return load_script("experiments/qwen_vl.py")


@pytest.fixture(autouse=True)
def _threads():
    with restored_threads():  # main() sets one thread; give the rest of the suite its own
        yield


TINY = ["--seeds", "0", "--steps", "2", "--position-steps", "2", "--forget-steps", "2",
        "--n-eval", "8", "--scenes", "20"]


def test_runs_writes_results_and_refuses_overwrite(experiment, tmp_path):
    out = tmp_path / "r.json"
    assert experiment.main(["--out", str(out), *TINY]) == 0
    res = json.loads(out.read_text())
    assert res["complete"] and len(res["seeds"]) == 1
    s = res["seeds"][0]
    for arm in ("windowed", "full", "windowed const", "full const"):
        assert set(s[arm]["accuracy"]) == {"16", "32", "64"} and s[arm]["final_loss"] > 0
    assert set(s["mrope"]["left"]) == {"3x3", "4x4", "2x6", "6x2", "3x6", "6x6"}
    for arm in ("mrope", "1d", "mrope const", "1d const"):  # scheduled and constant-lr runs
        assert set(s[arm]) == {"left", "top", "final_loss"} and s[arm]["final_loss"] > 0
    assert s["text 0.0"]["before"] == s["text 0.5"]["before"] > 1
    assert experiment.main(["--out", str(out), *TINY]) == 2  # never overwrites unasked
