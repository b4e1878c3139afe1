"""Smoke test of experiments/region_era.py (lecture 11's multi-seed tables) on a tiny setting:
one seed, a few steps, few scenes (the numbers mean nothing; the layout does), and the
recipe's detector and WRA-with-your-own-IPOT path."""

from __future__ import annotations

import json

import torch
from script_helpers import load_script, restored_threads

from minivlm.objectives import ipot
from minivlm.recipes import region_era as rr

TINY = ["--seeds", "0", "--steps", "2", "--bind-steps", "2", "--depth-steps", "2", "--n-train", "60", "--n-test",
        "40", "--depth-n", "64", "--cost-images", "4",
        "--arms", "uniter+itm+wra", "pixel-bert sampled"]  # fmt: skip


def test_runs_writes_results_and_refuses_overwrite(tmp_path, capsys):
    exp = load_script("experiments/region_era.py")
    out = tmp_path / "r.json"
    with restored_threads():
        assert exp.main(["--out", str(out), *TINY]) == 0
        res = json.loads(out.read_text())
        assert res["complete"] and len(res["seeds"]) == 1
        s = res["seeds"][0]
        assert set(s["depth"]) == {"resnet", "plain", "plain shallow"}
        assert s["depth"]["plain"]["depth"] == s["depth"]["resnet"]["depth"] == 25
        row = s["binding"]["uniter+itm+wra"]
        assert set(row["clean"]) == {"region", "relation", "size"}
        assert {"jitter 0.2", "drop 0.5", "wra_accuracy"} <= set(row)
        assert "wra_accuracy" not in s["binding"]["pixel-bert sampled"]
        assert len(res["cost_ms_per_image"]) == 3
        assert "uniter+itm+wra" in capsys.readouterr().out
        assert exp.main(["--out", str(out), *TINY]) == 2  # never overwrites unasked


def test_detector_errors_and_own_ipot():
    world = rr.ShapesWorld(min_objects=2, max_objects=2)
    scenes = world.generate(20, seed=3).scenes
    clean = rr.detect(scenes)
    assert clean["mask"].all() and (clean["boxes"][..., 2:] > clean["boxes"][..., :2]).all()
    jit = rr.detect(scenes, jitter=0.2, seed=1)
    assert not torch.allclose(jit["boxes"], clean["boxes"])
    assert (jit["boxes"][..., 2:] >= jit["boxes"][..., :2]).all()  # corners stay ordered
    drop = rr.detect(scenes, drop=0.5, seed=1)
    assert 0 < int(drop["mask"].sum()) < 40 and (drop["boxes"][drop["mask"] == 0] == 0).all()
    data = rr.make_data(0, n_train=40, n_test=30)
    torch.manual_seed(0)
    calls = []

    def my_ipot(cost, xm, ym, beta, iters):
        calls.append(cost.shape)
        return ipot(cost, xm, ym, beta, iters)

    model, hist = rr.train_binding("uniter+itm+wra", data, 0, steps=2, plan_fn=my_ipot)
    assert len(calls) == 2 and model.config.wra_weight == 0.0  # the recipe's WRA, not the model's
    assert 0.0 <= rr.wra_accuracy(model, data) <= 1.0
