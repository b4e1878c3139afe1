"""Smoke test of experiments/qwen_vl.py (lecture 10's multi-seed tables) on a tiny setting: one
seed, two steps per arm (the numbers mean nothing; the layout and the overwrite guard do)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from script_helpers import load_script, restored_threads

from minivlm.recipes import qwen_vl as rq


@pytest.fixture(scope="module")
def experiment():
    return load_script("experiments/qwen_vl.py")


@pytest.fixture(autouse=True)
def _threads():
    with restored_threads():  # main() sets one thread; give the rest of the suite its own
        yield


TINY = ["--seeds", "0", "--steps", "2", "--position-steps", "2", "--forget-steps", "2",
        "--n-eval", "8", "--scenes", "20"]


def test_runs_writes_results_and_refuses_overwrite(experiment, tmp_path):
    out = tmp_path / "r.json"
    assert experiment.main(["--out", str(out), *TINY]) == 0
    res = json.loads(out.read_text())
    assert res["complete"] and len(res["seeds"]) == 1
    s = res["seeds"][0]
    for arm in ("windowed", "full", "windowed const", "full const"):
        assert set(s[arm]["accuracy"]) == {"16", "32", "64"} and s[arm]["final_loss"] > 0
    assert set(s["mrope"]["left"]) == {"3x3", "4x4", "2x6", "6x2", "3x6", "6x6"}
    for arm in ("mrope", "1d", "mrope const", "1d const", "mrope swap"):  # incl. constant lr
        assert set(s[arm]) == {"left", "top", "final_loss"} and s[arm]["final_loss"] > 0
    for arm in ("mrope breakdown", "mrope const breakdown"):
        assert set(s[arm]) == {"top 3x3", "top 2x6", "top 3x6", "left 3x3", "left 6x2"}
        assert set(s[arm]["top 2x6"]) == {"all", "before", "level", "after"}
    assert set(s["mrope probes"]) == set(rq.PROBES)
    assert set(s["mrope probes"]["resume 4"]["top"]) == {"3x3", "2x6", "3x6", "6x2"}
    assert s["text 0.0"]["before"] == s["text 0.5"]["before"] > 1
    assert experiment.main(["--out", str(out), *TINY]) == 2  # never overwrites unasked


def _prompt(model, grid):
    img = torch.zeros(3, grid[0] * rq.CELL, grid[1] * rq.CELL)
    batch = rq.collate([img], [rq.prompt_ids(grid[0] * grid[1], rq.QUESTIONS["top"])],
                       model.config)
    return batch["input_ids"], batch["image_grid_thw"], batch["attention_mask"]


def test_probe_positions_changes_only_what_it_names():
    model = rq.position_model("mrope", seed=0)
    ids, grid, mask = _prompt(model, (2, 6))  # [vision-start] 12 image tokens [vision-end] q
    base = model.position_ids(ids, grid, mask)[:, 0]  # (3, T)
    img = slice(1, 13)
    assert base[:, 13].tolist() == [1 + 6] * 3  # the text resumes at start + max(h, w)
    with rq.probe_positions(model, resume=4):
        p = model.position_ids(ids, grid, mask)[:, 0]
    assert torch.equal(p[:, :13], base[:, :13]) and torch.equal(p[:, 13:], base[:, 13:] - 2)
    with rq.probe_positions(model, drop_columns=True):
        p = model.position_ids(ids, grid, mask)[:, 0]
    assert p[2, img].tolist() == [1] * 12 and torch.equal(p[:2], base[:2])
    assert torch.equal(p[2, 13:], base[2, 13:])
    with rq.probe_positions(model, swap_rows_cols=True):
        p = model.position_ids(ids, grid, mask)[:, 0]
    assert torch.equal(p, base[[0, 2, 1]])
    assert "position_ids" not in vars(model)  # the method is back after the block
    assert torch.equal(model.position_ids(ids, grid, mask)[:, 0], base)
    with pytest.raises(ValueError, match="M-RoPE model"), \
            rq.probe_positions(rq.position_model("1d", seed=0), resume=4):
        pass


def test_breakdown_offsets_name_the_other_axis():
    tiles, colors = rq.tile_bank(n=20, seed=0)
    rng = np.random.default_rng(0)
    for kind in ("top", "left"):
        for _ in range(10):
            canvas, y, off = rq._position_scene(rng, (3, 6), kind, tiles, colors)
            cells = (canvas.abs().sum(0) > 0).view(3, rq.CELL, 6, rq.CELL).any(3).any(1)
            (r0, c0), (r1, c1) = cells.nonzero().tolist()  # raster order
            first, second = ((r0, c0), (r1, c1))
            if kind == "left" and c1 < c0:
                first, second = second, first
            ans, other = (first, second)
            assert off == (ans[1] - other[1] if kind == "top" else ans[0] - other[0])
    model = rq.position_model("mrope", seed=0)
    b = rq.position_breakdown(model, (2, 6), "top", n=12, seed=0)
    assert set(b) == {"all", "before", "level", "after"} and 0 <= b["all"] <= 1
