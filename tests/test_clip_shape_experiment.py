"""Smoke test: experiments/clip_shape.py runs end to end on a tiny setting (lecture 1, §8)."""

from __future__ import annotations

import json

from script_helpers import assert_keeps_existing, load_script, restored_threads

from minivlm.recipes import clip_shape as recipe


def _load():
    return load_script("experiments/clip_shape.py")


def test_clip_shape_experiment_writes_results_and_keeps_existing(tmp_path, capsys):
    exp = _load()
    out = tmp_path / "r.json"
    with restored_threads():
        argv = ["--out", str(out), "--steps", "2", "--seeds", "0", "--n-train", "64"]
        assert exp.main(argv + ["--towers", "cnn"]) == 0
        res = json.loads(out.read_text())
        assert [(r["tower"], r["max_objects"]) for r in res["runs"]] == [("cnn", 4), ("cnn", 1)]
        for r in res["runs"]:
            for key in ("zero_shot_shape", "zero_shot_color", "probe_shape"):
                assert 0.0 <= r[key] <= 1.0
        assert set(res["summary"]) == {"cnn, 1-4 objects", "cnn, 1 object"}
        assert_keeps_existing(exp.main, argv, out, capsys)


def test_prompt_ensemble_covers_every_other_attribute():
    shape_prompts = [t("circle") for t in recipe.prompt_templates("shape")]
    assert "a red circle" in shape_prompts and "a small red circle" in shape_prompts
    assert len(shape_prompts) == len(set(shape_prompts)) == 6 * 3  # 6 colours x (none, 2 sizes)
    assert len(recipe.prompt_templates("color")) == 5 * 3
