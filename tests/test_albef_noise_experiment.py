"""Smoke test: experiments/albef_noise.py (lecture 3) runs its main grid on a 2-step budget;
the recipe it runs lives in minivlm.recipes.albef_noise."""

from __future__ import annotations

import json

import numpy as np
import pytest
from script_helpers import load_script, restored_threads

from minivlm.recipes import albef_noise as recipe


def _load():
    return load_script("experiments/albef_noise.py")


def test_corrupt_captions_corrupts_exactly_the_fraction_and_never_keeps_a_pair():
    src = recipe.corrupt_captions(1000, 0.3, seed=4)
    bad = src != np.arange(1000)
    assert bad.sum() == 300  # exactly round(0.3 * n) images get another image's caption
    assert np.array_equal(recipe.corrupt_captions(1000, 0.3, seed=4), src)  # deterministic
    assert (recipe.corrupt_captions(50, 0.0, seed=0) == np.arange(50)).all()
    assert (recipe.corrupt_captions(50, 1.0, seed=0) != np.arange(50)).all()
    with pytest.raises(ValueError, match="fraction"):
        recipe.corrupt_captions(10, 1.5, seed=0)


def test_albef_noise_main_grid_resume_and_refusal(tmp_path, capsys):
    exp = _load()
    out = tmp_path / "r.json"
    with restored_threads():
        argv = ["--out", str(out), "--steps", "2", "--seeds", "0"]
        assert exp.main(argv) == 0
        res = json.loads(out.read_text())
        assert res["complete"] and len(res["runs"]) == 2 * len(recipe.NOISE_LEVELS)
        assert {(r["noise"], r["distill"]) for r in res["runs"]} == {
            (p, d) for p in recipe.NOISE_LEVELS for d in (False, True)
        }
        assert all(0.0 <= v <= 1.0 for r in res["runs"] for v in r["r1"])
        assert exp.main(argv + ["--resume"]) == 0  # everything is there: nothing re-run
        assert len(json.loads(out.read_text())["runs"]) == len(res["runs"])
        assert "nothing left to run" in capsys.readouterr().err
        assert exp.main(argv) == 2  # refuses to overwrite without --force / --resume
