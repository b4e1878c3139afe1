"""Smoke test: experiments/albef_align.py (lecture 3 §4, align before fuse) on a 2-step budget;
the recipe lives in minivlm.recipes.albef_align."""

from __future__ import annotations

import json

from script_helpers import assert_keeps_existing, load_script, restored_threads

from minivlm.recipes import albef_align


def test_albef_align_runs_both_arms_and_refuses_to_overwrite(tmp_path, capsys):
    exp = load_script("experiments/albef_align.py")
    out = tmp_path / "align.json"
    argv = ["--out", str(out), "--steps", "2", "--seeds", "0", "--n-train", "128"]
    with restored_threads():
        assert exp.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["complete"] and res["steps"] == 2 and len(res["runs"]) == 2
    assert {r["itc_weight"] for r in res["runs"]} == set(albef_align.ARMS.values())
    for r in res["runs"]:
        for m in ("r1", "itm_vs_wrong_colour", "itm_vs_other_scene", "mlm_colour"):
            assert 0.0 <= r[m] <= 1.0
    assert res["summary"]["paired_seeds"] == [0] and len(res["summary"]["paired"]["r1"]) == 1
    capsys.readouterr()
    assert_keeps_existing(exp.main, argv, out, capsys)


def test_test_set_negatives_differ_from_the_caption_in_one_colour():
    t = albef_align.test_set(n=20, seed=3)
    for true, neg in zip(t["true"], t["wrong_colour"], strict=True):
        a, b = true.split(), neg.split()
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b, strict=True)) == 1
