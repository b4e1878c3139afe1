"""Smoke test: experiments/vilt_binding.py runs end to end on a tiny setting (lecture 2, §4c)."""

from __future__ import annotations

import json

import pytest
import torch
from script_helpers import assert_keeps_existing, load_script, restored_threads

from minivlm.data import QTYPES, ShapesWorld, caption_truth, shapes_tokenizer
from minivlm.recipes import vilt_binding as recipe


def _load():
    return load_script("experiments/vilt_binding.py")


def test_vilt_binding_experiment_writes_results_and_keeps_existing(tmp_path, capsys):
    exp = _load()
    out = tmp_path / "r.json"
    with restored_threads():
        argv = ["--out", str(out), "--steps", "3", "--warmup", "2", "--seeds", "0",
                "--n-train", "64", "--vqa-steps", "2", "--n-test", "60"]  # fmt: skip
        assert exp.main(argv) == 0
        res = json.loads(out.read_text())
        assert res["n_test"] == 60
        assert [(r["arm"], r["warmup"]) for r in res["runs"]] == [
            ("vilt warm-up", 2), ("vilt cold", 0), ("clip", 0)
        ]  # fmt: skip
        for r in res["runs"]:
            assert all(0.0 <= r[k] <= 1.0 for k in recipe.KINDS)
            assert ("vqa" in r) == (r["arm"] != "clip")  # the ViLTs are also fine-tuned on VQA
        assert set(res["summary"]) == set(recipe.ARMS)
        vqa = res["summary"]["vilt cold"]["vqa"]
        assert set(vqa) == set(QTYPES) | {"all"} and 0 < vqa["all"]["majority"][0] < 1
        assert_keeps_existing(exp.main, argv, out, capsys)


def _words(text):
    return [w for w in text.split() if w not in ("a", "an")]


def test_binding_pairs_use_the_images_words_bound_differently():
    data = ShapesWorld(min_objects=2, max_objects=2).generate(120, seed=5)
    pairs = recipe.test_pairs(data, recipe.KINDS + ("swap_attribute",))
    assert all(len(pairs[k]) > 10 for k in pairs)
    for kind, rows in pairs.items():
        for i, pos, neg in rows:
            scene = data.scenes[i]
            assert caption_truth(scene, pos) is True and caption_truth(scene, neg) is False
            if kind == "region":  # the named object's colour -> the other object's colour
                changed = {a for a, b in zip(pos.split(), neg.split(), strict=True) if a != b}
                assert changed <= {o.color for o in scene.objects} | {"a", "an"}, (pos, neg)
            else:  # the same words, bound differently
                assert sorted(_words(pos)) == sorted(_words(neg)), (kind, pos, neg)
    assert "swap_attribute" not in recipe.test_pairs(data)  # the default kinds leave shape out
    assert recipe.recolour("an orange circle left of a red square", "orange", "blue") == (
        "a blue circle left of a red square"
    )
    with pytest.raises(ValueError, match="arm must be one of"):
        recipe.run("vilt", seed=0, steps=1)


def test_answer_slot_is_appended_after_the_last_real_token():
    tok = shapes_tokenizer()
    ids = torch.tensor([[5, 9, 9, 0], [5, 9, 0, 0]])  # two questions, right-padded
    am = (ids != 0).long()
    b = recipe.with_answer_slot({"input_ids": ids, "attention_mask": am,
                              "pixel_values": torch.zeros(2, 3, 8, 8),
                              "answer": torch.tensor([1, 2])}, tok.mask_id)  # fmt: skip
    assert b["slot"].tolist() == [3, 2]
    assert b["input_ids"][0, 3] == b["input_ids"][1, 2] == tok.mask_id
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]
    assert b["input_ids"][0, :3].tolist() == [5, 9, 9] and b["vqa_labels"].tolist() == [1, 2]
