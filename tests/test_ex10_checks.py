"""Exercise 10 (Qwen2-VL) checks: right solutions pass; deliberately broken ones fail with a
message that names the mistake; the instructor source passes every check and its generated
student version fails them as "not attempted"."""

from __future__ import annotations

from pathlib import Path

import torch
from exercise_helpers import assert_broken_fails_pointedly, assert_source_passes_student_fails

from minivlm.grading import check

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "exercises" / "10_qwen_vl.ipynb"
EXERCISE = "10_qwen_vl"
SEED = 1234


def test_source_passes_and_student_is_not_attempted():
    assert_source_passes_student_fails(SOURCE, EXERCISE, 3)


# ----------------------------------------------------------------------------- M-RoPE
def make_mrope(how="right"):
    """A learner's vectorised-per-image version; ``how`` breaks it in one place."""

    def mrope_positions(input_ids, image_grid_thw, image_token_id, merge_size, attention_mask):
        B, T = input_ids.shape
        out = torch.zeros(3, B, T, dtype=torch.long)
        k = 0
        for b in range(B):
            keep = (attention_mask[b].bool() if how not in ("pads", "pads_after")
                    else torch.ones(T, dtype=torch.bool))
            ids = input_ids[b][keep].tolist()
            cols, cur, i = [], 0, 0
            while i < len(ids):
                if ids[i] != image_token_id:
                    cols.append(torch.full((3, 1), cur))
                    cur, i = cur + 1, i + 1
                    continue
                t, h, w = image_grid_thw[k].tolist()
                k += 1
                gh, gw = h // merge_size, w // merge_size
                hh = torch.arange(gh).repeat_interleave(gw)
                ww = torch.arange(gw).repeat(gh)
                if how == "raster_cols":  # column index from the flat index mod the height
                    ww = torch.arange(gh * gw) % gh
                cols.append(torch.stack([torch.zeros_like(hh), hh, ww]) + cur)
                step = {"area": gh * gw, "plus_one": max(gh, gw) + 1}.get(how, max(gh, gw))
                cur, i = cur + step, i + gh * gw
            if how == "one_d":  # plain running index on all axes
                cols = [torch.arange(len(ids)).expand(3, -1)]
            out[:, b, keep] = torch.cat(cols, dim=1)
        if how == "pads_after":  # every slot counted, padding reset to 0: wrong on the left
            out = out.masked_fill(attention_mask[None] == 0, 0)
        return out

    return mrope_positions


def test_mrope_right_passes():
    assert check("mrope_positions", make_mrope()).passed


def test_mrope_broken_versions_fail():
    assert_broken_fails_pointedly("mrope_positions", make_mrope("area"), ["max(h, w)"], SEED)
    assert_broken_fails_pointedly("mrope_positions", make_mrope("plus_one"), ["no +1"], SEED)
    assert_broken_fails_pointedly("mrope_positions", make_mrope("pads"), ["padding"], SEED)
    assert_broken_fails_pointedly("mrope_positions", make_mrope("pads_after"),
                                  ["left padding", "attention_mask 1"], SEED)
    assert_broken_fails_pointedly("mrope_positions", make_mrope("raster_cols"), [], SEED)
    assert_broken_fails_pointedly("mrope_positions", make_mrope("one_d"), [], SEED)


# ----------------------------------------------------------------------------- merge order
def make_order(how="right"):
    def merge_order(h, w, merge_size):
        m = merge_size
        out = []
        for br in range(h // m):
            for bc in range(w // m):
                for i in range(m):
                    for j in range(m):
                        r, c = (j, i) if how == "inner_cols" else (i, j)
                        out.append([br * m + r, bc * m + c])
        if how == "raster":
            out = [[r, c] for r in range(h) for c in range(w)]
        if how == "float":
            return torch.tensor(out, dtype=torch.float32)
        return torch.tensor(out)

    return merge_order


def test_order_right_passes():
    assert check("merge_order", make_order()).passed


def test_order_broken_versions_fail():
    assert_broken_fails_pointedly("merge_order", make_order("raster"), ["block-major"], SEED)
    assert_broken_fails_pointedly("merge_order", make_order("inner_cols"), ["column by column"],
                                  SEED)
    r = check("merge_order", make_order("float"))
    assert not r.passed and "dtype" in r.message


# ----------------------------------------------------------------------------- windows
def make_windows(how="right"):
    def window_partition(grid_thw, merge_size, window):
        order, lengths, offset = [], [], 0
        for t, h, w in grid_thw.tolist():
            gh, gw = h // merge_size, w // merge_size
            win_id = ((torch.arange(gh)[:, None] // window) * -(-gw // window)
                      + torch.arange(gw)[None, :] // window).flatten()  # (gh*gw,)
            if how == "unstable":  # sort without keeping raster order inside a window
                idx = torch.argsort(win_id * 1000 - torch.arange(gh * gw))
            else:
                idx = torch.argsort(win_id, stable=True)
            order.append(idx + (offset if how != "no_offset" else 0))
            counts = torch.bincount(win_id) * (merge_size**2 if how != "tokens" else 1)
            lengths.append(counts)
            offset += t * gh * gw
        return torch.cat(order), torch.cat(lengths)

    return window_partition


def test_windows_right_passes():
    assert check("window_partition", make_windows()).passed


def test_windows_broken_versions_fail():
    assert_broken_fails_pointedly("window_partition", make_windows("tokens"), ["m^2"], SEED)
    assert_broken_fails_pointedly("window_partition", make_windows("no_offset"), ["continue"],
                                  SEED)
    assert_broken_fails_pointedly("window_partition", make_windows("unstable"), [], SEED)
