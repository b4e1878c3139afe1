"""Smoke test of experiments/mae_beit.py (lecture 7's multi-seed table) at a tiny budget."""

from __future__ import annotations

import json

import pytest
from script_helpers import assert_keeps_existing, load_script, restored_threads

TINY = ["--steps", "3", "--ft-steps", "2", "--tokenizer-steps", "2", "--n-pretrain", "64",
        "--n-probe", "48", "--n-probe-train", "32", "--long-steps", "2", "--long-seeds", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def script():
    return load_script("experiments/mae_beit.py")


def test_runs_every_arm_and_refuses_to_overwrite(script, tmp_path, capsys):
    out = tmp_path / "mae_beit.json"
    argv = [*TINY, "--seeds", "0", "--out", str(out)]
    with restored_threads():
        assert script.main(argv) == 0
        res = json.loads(out.read_text())
        assert res["complete"] and res["seeds"] == [0] and len(res["runs"]) == 1
        assert res["recipe"]["steps"] == 3
        for run in res["runs"]:
            assert set(run["probe"]) == {"pixels", "random init", "MAE 15%", "MAE 50%",
                                         "MAE 75%", "MAE 90%", "BEiT 40% blocks"}
            for acc in run["probe"].values():
                assert set(acc) == {"color", "shape"}
                assert all(0.0 <= v <= 1.0 for v in acc.values())
            assert set(run["mae_heldout_loss"]) == {"0.15", "0.5", "0.75", "0.9"}
            assert 0 < run["why"]["object_share_of_loss"] <= 1
            assert run["encoder_seconds"]["all patches"] > 0
            assert 1 <= run["codebook"]["codes_used"] <= 64
            assert run["long"]["steps"] == 2 and set(run["finetune_shape"]) == {"MAE 75%", "scratch"}
        assert_keeps_existing(script.main, argv, out, capsys)
