"""Smoke test: experiments/instructblip.py (lecture 4, sections 4-5) runs one seed end to end.

Random stand-ins replace the zoo's frozen encoder and LM (the zoo is built after the unit
tests in ``make test``) and the step counts are cut to 2, so only the plumbing is checked:
both variants trained from one stage-1 state, accuracies and attention distances in range,
plain BLIP-2's attention identical across instructions, and the refusal to overwrite results.
"""

from __future__ import annotations

import torch
from script_helpers import load_script

import minivlm
from minivlm.recipes import instructblip as recipe


def _load():
    return load_script("experiments/instructblip.py")


def test_instructblip_experiment_one_seed(monkeypatch, tmp_path, capsys):
    exp = _load()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        monkeypatch.setitem(recipe.STAGE1, "steps", 2)
        monkeypatch.setitem(recipe.STAGE2, "steps", 2)
        minivlm.seed_everything(0)
        vocab = recipe.TOK.vocab_size
        vit = minivlm.create_model("clip_tiny", vocab_size=vocab, patch_size=16).image_encoder
        lm = minivlm.create_model("lm_tiny", vocab_size=vocab)
        for m in (vit, lm):
            m.requires_grad_(False).eval()
        record = recipe.run_seed(0, vit, lm)
        for name in ("BLIP-2", "InstructBLIP"):
            acc = record[name]["accuracy"]
            assert set(recipe.INSTRUCTIONS) <= set(acc)
            assert all(0.0 <= acc[k] <= 1.0 for k in recipe.INSTRUCTIONS)
        # plain BLIP-2 never sees the instruction: one attention map for all of them
        assert max(record["BLIP-2"]["mean_tv_between_instructions"].values()) == 0.0
        summary = recipe.summarize([record])
        assert "min_margin" in summary
        out = tmp_path / "r.json"
        out.write_text("{}")
        assert exp.main(["--out", str(out)]) == 2  # refuses before loading anything
        assert out.read_text() == "{}"
        assert "--force" in capsys.readouterr().err
    finally:
        torch.set_num_threads(n)
