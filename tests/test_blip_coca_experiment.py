"""Smoke test of experiments/blip_coca.py (lecture 6's multi-seed tables) on a tiny setting: one
seed, a few steps, small data (the numbers mean nothing; the layout and the bookkeeping do)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from minivlm.recipes import blip_coca as rb

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def experiment():
    spec = importlib.util.spec_from_file_location("blip_coca_exp", ROOT / "experiments" /
                                                  "blip_coca.py")
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


TINY = ["--seeds", "0", "--captioner-steps", "2", "--retrieval-steps", "2", "--coca-steps", "2",
        "--n-web", "40", "--n-clean", "40", "--coca-n-train", "40"]


def test_runs_writes_results_and_refuses_overwrite(experiment, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert experiment.main(["--out", str(out), *TINY]) == 0
    res = json.loads(out.read_text())
    assert res["complete"] and len(res["capfilt"]) == len(res["coca"]) == 1
    run = res["capfilt"][0]
    assert set(run["r1"]) == {"captioner", *experiment.RETRAIN}
    assert set(run["captions"]) == {"nucleus", "beam"}
    assert 0.0 <= run["filter_precision"] <= 1.0 and 0.0 <= run["filter_recall"] <= 1.0
    assert run["pairs"]["noisy"] == 80  # 40 clean + 40 web, nothing filtered
    assert set(res["coca"][0]["arms"]) == {name for name, _, _ in rb.CoCaConfig().arms}
    assert "CapFilt" in capsys.readouterr().out
    assert experiment.main(["--out", str(out), *TINY]) == 2  # never overwrites unasked


def test_precision_recall_and_corruptions_are_known():
    removed = np.array([True, True, False, False])
    corrupted = np.array([True, False, True, False])
    assert rb.precision_recall(removed, corrupted) == (0.5, 0.5)
    data = rb.make_data(rb.CapFiltConfig(n_web=50, n_clean=4, noise=0.4))
    wrong = [c != t for c, t in zip(data["web_caps"], data["web_true"], strict=True)]
    assert wrong == data["corrupted"].tolist() and 0 < sum(wrong) <= 20
