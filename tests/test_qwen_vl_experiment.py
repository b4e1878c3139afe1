"""Smoke test of experiments/qwen_vl.py (lecture 10's multi-seed tables) on a tiny setting: one
seed, two steps per arm (the numbers mean nothing; the layout and the overwrite guard do)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def experiment():
    spec = importlib.util.spec_from_file_location("qwen_vl_exp", ROOT / "experiments" /
                                                  "qwen_vl.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


TINY = ["--seeds", "0", "--steps", "2", "--position-steps", "2", "--forget-steps", "2",
        "--n-eval", "8", "--scenes", "20"]


def test_runs_writes_results_and_refuses_overwrite(experiment, tmp_path):
    out = tmp_path / "r.json"
    assert experiment.main(["--out", str(out), *TINY]) == 0
    res = json.loads(out.read_text())
    assert res["complete"] and len(res["seeds"]) == 1
    s = res["seeds"][0]
    assert set(s["windowed"]["accuracy"]) == {"16", "32", "64"}
    assert set(s["mrope"]["left"]) == {"3x3", "4x4", "2x6", "6x2", "3x6", "6x6"}
    assert s["text 0.0"]["before"] == s["text 0.5"]["before"] > 1
    assert experiment.main(["--out", str(out), *TINY]) == 2  # never overwrites unasked
