"""Exercise 07 (MAE and BEiT) checks: right solutions pass; deliberately broken ones fail with a
message that names the mistake; the instructor source passes every check and its generated
student version fails them as "not attempted"."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from exercise_helpers import assert_broken_fails_pointedly, assert_source_passes_student_fails

from minivlm.grading import check

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "exercises" / "07_mae_beit.ipynb"
EXERCISE = "07_mae_beit"
SEED = 4321


# ----------------------------------------------------------------------------- random masking
def make_masking(*, descending=False, keep="int", invert=False, restore="inverse",
                 raster=True, sort_kept=False, bool_mask=False, detach=False):
    def random_masking(x, mask_ratio, noise):
        B, N, D = x.shape
        n = {"int": int(N * (1 - mask_ratio)), "ceil": math.ceil(N * (1 - mask_ratio)),
             "other": N - int(N * mask_ratio)}[keep]
        order = noise.argsort(dim=1, descending=descending)
        inverse = order.argsort(dim=1)
        ids = order[:, :n]
        if sort_kept:
            ids = ids.sort(dim=1).values
        kept = torch.stack([x[b, ids[b]] for b in range(B)])  # a loop instead of gather: fine
        if detach:
            kept = kept.detach()
        mask = torch.ones(B, N, dtype=x.dtype)
        mask[:, :n] = 0
        if raster:
            mask = torch.gather(mask, 1, inverse)
        if invert:
            mask = 1 - mask
        if bool_mask:
            mask = mask.bool()
        return kept, mask, inverse if restore == "inverse" else order

    return random_masking


def test_masking_right_versions_pass():
    assert check("random_masking", make_masking(), seed=SEED).passed


@pytest.mark.parametrize("kwargs, words", [
    (dict(descending=True), ["HIGHEST noise"]),
    (dict(keep="other"), ["rounded up", "int(N * (1 - mask_ratio))"]),
    (dict(keep="ceil"), ["rounded up"]),
    (dict(invert=True), ["inverted"]),
    (dict(restore="same"), ["inverse"]),
    (dict(raster=False), ["raster order"]),
    (dict(sort_kept=True), ["sorted by position"]),
    (dict(bool_mask=True), ["dtype"]),
])
def test_masking_broken_versions_fail(kwargs, words):
    assert_broken_fails_pointedly("random_masking", make_masking(**kwargs), words, SEED)


# ----------------------------------------------------------------------------- MAE loss
def make_loss(*, over="masked", unbiased=True, eps=1e-6, sqrt=True, reduce="mean",
              norm_pred=False, ignore_norm=False, detach=False, std_fn=False):
    def mae_loss(pred, target, mask, norm_pix_loss):
        if norm_pix_loss and not ignore_norm:
            mu = target.mean(-1, keepdim=True)
            if std_fn:  # torch.std is sqrt(unbiased var): right apart from the missing eps
                target = (target - mu) / target.std(-1, keepdim=True)
            else:
                var = target.var(-1, keepdim=True, unbiased=unbiased)
                target = (target - mu) / ((var + eps) ** 0.5 if sqrt else var + eps)
            if norm_pred:
                pred = (pred - pred.mean(-1, keepdim=True)) / (pred.var(-1, keepdim=True)
                                                              + eps) ** 0.5
        p = pred.detach() if detach else pred
        sq = (p - target) ** 2
        per = sq.mean(-1) if reduce == "mean" else sq.sum(-1)
        if over == "all":
            return per.mean()
        w = mask if over == "masked" else 1 - mask
        return (per * w).sum() / w.sum()

    return mae_loss


def test_loss_right_version_passes():
    assert check("mae_loss", make_loss(), seed=SEED).passed


@pytest.mark.parametrize("kwargs, words", [
    (dict(over="all"), ["every patch"]),
    (dict(over="visible"), ["VISIBLE"]),
    (dict(reduce="sum"), ["summed over its pixels"]),
    (dict(unbiased=False), ["biased variance"]),
    (dict(sqrt=False), ["divides by the variance"]),
    (dict(norm_pred=True), ["normalises the prediction"]),
    (dict(ignore_norm=True), ["norm_pix_loss is ignored"]),
    (dict(eps=0.0), ["1e-6"]),
    (dict(std_fn=True), ["1e-6"]),
    (dict(detach=True), ["grad"]),
])
def test_loss_broken_versions_fail(kwargs, words):
    assert_broken_fails_pointedly("mae_loss", make_loss(**kwargs), words, SEED)


# ----------------------------------------------------------------------------- add_block
def make_block(*, swap=False, trunc=False, loose=False, count_all=False, overshoot=False,
               corner="frac", in_place=False):
    def add_block(mask, area, aspect, top_frac, left_frac, need):
        g = mask.shape[-1]
        rnd = int if trunc else (lambda v: int(round(v)))
        h, w = rnd(math.sqrt(area * aspect)), rnd(math.sqrt(area / aspect))
        if swap:
            h, w = w, h
        out = mask if in_place else mask.clone()
        fits = (h <= g and w <= g) if loose else (h < g and w < g)
        if not (h > 0 and w > 0 and fits):
            return out
        if corner == "frac":
            top, left = int(top_frac * (g - h + 1)), int(left_frac * (g - w + 1))
        else:
            top, left = min(int(top_frac * g), g - h), int(left_frac * g)
        block = out[top:top + h, left:left + w]
        new = h * w if count_all else h * w - int(block.sum())
        if new > 0 and (overshoot or new <= need):
            out[top:top + h, left:left + w] = True
        return out

    return add_block


def test_block_right_version_passes():
    assert check("add_block", make_block(), seed=SEED).passed


@pytest.mark.parametrize("kwargs, words", [
    (dict(swap=True), ["swapped"]),
    (dict(trunc=True), ["int()"]),
    (dict(loose=True), ["h < g"]),
    (dict(count_all=True), ["already-masked"]),
    (dict(overshoot=True), ["need"]),
    (dict(corner="grid"), ["g - h + 1"]),
])
def test_block_broken_versions_fail(kwargs, words):
    # summaries start with a count of differing entries, which varies: compare the hints
    assert_broken_fails_pointedly("add_block", make_block(**kwargs), words, SEED,
                                  kind=lambda s: s.split("hint:")[-1])


def test_source_passes_and_student_fails():
    code = assert_source_passes_student_fails(SOURCE, EXERCISE, n_checks=3)
    assert "raise NotImplementedError" in code
