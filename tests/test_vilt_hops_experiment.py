"""Smoke test: experiments/vilt_hops.py runs end to end on a tiny setting (lecture 2, §4b)."""

from __future__ import annotations

import json

import pytest
import torch
from script_helpers import assert_keeps_existing, load_script, restored_threads

from minivlm.data import COLORS, ShapesWorld, shapes_tokenizer
from minivlm.recipes import vilt_hops as recipe


def _load():
    return load_script("experiments/vilt_hops.py")


def test_vilt_hops_experiment_writes_results_and_keeps_existing(tmp_path, capsys):
    exp = _load()
    out = tmp_path / "r.json"
    with restored_threads():
        argv = ["--out", str(out), "--steps", "3", "--curriculum-steps", "4", "--eval-every", "2",
                "--seeds", "0", "--patches", "16", "--n-train", "64"]  # fmt: skip
        assert exp.main(argv) == 0
        res = json.loads(out.read_text())
        grid, cur = res["runs"][:3], res["runs"][3:]
        assert [(r["task"], r["patch"]) for r in grid] == [(t, 16) for t in recipe.TASKS]
        assert [(r["fixed_first"], r["pos_std"]) for r in cur] == [(2, None), (0, 0.5), (2, 0.5)]
        for r in res["runs"]:
            assert [c["step"] for c in r["curve"]] == ([2, 3] if r in grid else [2, 4])
            assert 0.0 <= r["final_acc"] <= 1.0 and r["n_test"] > 100
        assert list(res["summary"]) == [f"{t}, patch 16" for t in recipe.TASKS] + [
            "word decides, patch 16, 2 warm-up steps, position std 0.02",
            "word decides, patch 16, 0 warm-up steps, position std 0.5",
            "word decides, patch 16, 2 warm-up steps, position std 0.5",
        ]
        assert_keeps_existing(exp.main, argv, out, capsys)


def test_split_orders_objects_left_to_right_with_two_colours():
    split = recipe.two_object_split(200, seed=3)
    data = ShapesWorld(min_objects=2, max_objects=2).generate(200, seed=3)
    names, left, right = list(COLORS), [], []
    for scene in data.scenes:  # the rule, written out independently
        (xa, ca), (xb, cb) = sorted((o.x, o.color) for o in scene.objects)
        if ca != cb and xb - xa >= 8:
            left.append(names.index(ca))
            right.append(names.index(cb))
    assert split["left"].tolist() == left and split["right"].tolist() == right
    assert len(split["pixels"]) == len(left) > 50


def test_tasks_ask_what_they_say():
    tok = shapes_tokenizer()
    split = {"left": torch.tensor([0, 1, 2]), "right": torch.tensor([3, 4, 5])}
    idx, side = torch.tensor([0, 1, 2]), torch.tensor([1, 0, 1])
    word = recipe.Task("word decides", tok)
    assert word.target(split, idx, side).tolist() == [3, 1, 5]  # right, left, right
    ids, slot = word.text(side)
    assert tok.convert_ids_to_tokens(ids[0].tolist())[1:3] == ["right", "[MASK]"] and slot == 2
    fixed = recipe.Task("fixed query", tok)
    assert fixed.target(split, idx, side).tolist() == [0, 1, 2]  # always the left object
    assert fixed.text(side)[0].shape == (3, 3)
    text = recipe.Task("text only", tok)
    assert text.target(split, idx, side).tolist() == [1, 0, 1]
    assert tok.convert_ids_to_tokens(text.candidates().tolist()) == ["left", "right"]
    with pytest.raises(ValueError, match="name must be one of"):
        recipe.Task("binding", tok)
