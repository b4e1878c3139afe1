"""Smoke test of experiments/blip_coca.py (lecture 6's multi-seed tables) on a tiny setting: one
seed, a few steps, small data (the numbers mean nothing; the layout and the bookkeeping do)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from script_helpers import load_script, restored_threads

from minivlm.recipes import blip_coca as rb


@pytest.fixture(scope="module")
def experiment():
    return load_script("experiments/blip_coca.py")


@pytest.fixture(autouse=True)
def _threads():
    with restored_threads():  # main() sets one thread; give the rest of the suite its own
        yield


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


def test_ablation_arms(experiment, tmp_path, capsys):
    """--ablation: oracle / random / clean-only filters, long runs, more held-out sets, a second
    (stronger) filter; the pair counts follow from the known corruptions and the filter."""
    out = tmp_path / "a.json"
    argv = ["--ablation", "--out", str(out), "--seeds", "0", "--captioner-steps", "1",
            "--retrieval-steps", "1", "--long-steps", "2", "--strong-steps", "1",
            "--eval-sets", "2", "--n-web", "20", "--n-clean", "40"]  # fmt: skip
    assert experiment.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["complete"] and res["ablation"] and len(res["capfilt"]) == len(res["strong"]) == 1
    run, strong = res["capfilt"][0], res["strong"][0]
    arms = [*experiment.ABLATE, *(f"{a}@2" for a in experiment.ABLATE)]
    assert list(run["r1"]) == ["captioner", *arms] and list(run["r1_sets"]) == list(run["r1"])
    assert all(len(v) == 2 and v[0] == run["r1"][k] for k, v in run["r1_sets"].items())
    p = run["pairs"]
    n_bad = round(0.5 * 20)
    kept = round(run["kept_web"] * 20)
    assert p["noisy"] == 60 and p["clean"] == p["clean@2"] == 40
    assert p["oracle"] == 40 + 20 - n_bad and p["random"] == p["filtered"] == 40 + kept
    assert set(strong["r1"]) == {"captioner", *experiment.STRONG,
                                 *(f"{a}@2" for a in experiment.STRONG)}  # fmt: skip
    assert strong["config"]["captioner_steps"] == 1 and "stronger filter" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown retrain arm"):
        rb.web_selection("bogus", np.ones(3, bool), np.zeros(3, bool), 0)
