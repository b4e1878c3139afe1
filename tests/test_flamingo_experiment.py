"""Smoke test of experiments/flamingo.py (lecture 9's multi-seed tables) on a tiny setting:
one seed, a few steps, small banks (the numbers mean nothing; the layout and the gate check do)."""

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
    spec = importlib.util.spec_from_file_location("flamingo_exp", ROOT / "experiments" /
                                                  "flamingo.py")
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
