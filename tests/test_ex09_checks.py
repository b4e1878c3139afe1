"""Exercise 09 (Flamingo) checks: right solutions pass; deliberately broken ones fail with a
message that names the mistake; the instructor source passes every check and its generated
student version fails them as "not attempted"."""

from __future__ import annotations

from pathlib import Path

import torch
from exercise_helpers import assert_broken_fails_pointedly, assert_source_passes_student_fails

from minivlm.grading import check

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "exercises" / "09_flamingo.ipynb"
EXERCISE = "09_flamingo"
SEED = 1234


def test_source_passes_and_student_is_not_attempted():
    assert_source_passes_student_fails(SOURCE, EXERCISE, 3)


# ----------------------------------------------------------------------------- mask
def make_mask(how="right"):
    def interleaved_mask(input_ids, image_token_id, num_images):
        is_img = (input_ids == image_token_id).long()
        count = is_img.cumsum(1)
        n = torch.arange(num_images)
        if how == "all":
            return n < count[..., None]
        if how == "off_by_one":
            return count[..., None] == n
        if how == "exclusive":
            return (count - is_img - 1)[..., None] == n
        if how == "long":
            return ((count - 1)[..., None] == n).long()
        if how == "shifted":  # a learner's loop that starts the count one token late
            c = torch.zeros_like(count)
            c[:, 1:] = count[:, :-1]
            return (c - 1)[..., None] == n
        return (count - 1)[..., None] == n

    return interleaved_mask


def test_mask_right_variants_pass():
    assert check("interleaved_mask", make_mask()).passed


def test_mask_broken_versions_fail():
    assert_broken_fails_pointedly("interleaved_mask", make_mask("all"), ["most recent"], SEED)
    assert_broken_fails_pointedly("interleaved_mask", make_mask("off_by_one"), ["off by one"],
                                  SEED)
    assert_broken_fails_pointedly("interleaved_mask", make_mask("exclusive"), ["<image> token"],
                                  SEED)
    assert_broken_fails_pointedly("interleaved_mask", make_mask("shifted"), [], SEED)
    r = check("interleaved_mask", make_mask("long"))
    assert not r.passed and "dtype" in r.message


# ----------------------------------------------------------------------------- resampler
def make_resampler(how="right"):
    def resampler_attention(latents, x, wq, wk, wv, wo, num_heads):
        B, L, D = latents.shape
        hd = D // num_heads
        kv = {"x_only": x, "latents_first": torch.cat([latents, x], 1)}.get(
            how, torch.cat([x, latents], 1))
        q = latents @ (wq if how == "untransposed" else wq.T)

        def heads(t):
            if how == "interleaved_heads":
                return t.view(B, t.shape[1], hd, num_heads).permute(0, 3, 1, 2)
            return t.view(B, t.shape[1], num_heads, hd).transpose(1, 2)

        q, k, v = heads(q), heads(kv @ wk.T), heads(kv @ wv.T)
        s = q @ k.transpose(-2, -1)
        s = s / (1.0 if how == "no_scale" else (D if how == "scale_D" else hd) ** 0.5)
        w = s.softmax(dim=-2 if how == "axis" else -1)
        out = (w @ v).transpose(1, 2).reshape(B, L, D)
        return out if how == "no_out" else out @ wo.T

    return resampler_attention


def test_resampler_right_variants_pass():
    assert check("resampler_attention", make_resampler()).passed
    assert check("resampler_attention", make_resampler("latents_first")).passed  # order-free


def test_resampler_broken_versions_fail():
    assert_broken_fails_pointedly("resampler_attention", make_resampler("x_only"),
                                  ["[x; latents]"], SEED)
    assert_broken_fails_pointedly("resampler_attention", make_resampler("no_scale"),
                                  ["1/sqrt(head_dim)"], SEED)
    assert_broken_fails_pointedly("resampler_attention", make_resampler("axis"), ["axis"], SEED)
    assert_broken_fails_pointedly("resampler_attention", make_resampler("scale_D"),
                                  ["sqrt(D)", "head_dim = D / num_heads"], SEED)
    assert_broken_fails_pointedly("resampler_attention", make_resampler("interleaved_heads"),
                                  ["heads are split the wrong way"], SEED)
    for how in ("untransposed", "no_out"):
        r = check("resampler_attention", make_resampler(how), seed=SEED)
        assert not r.passed and r.points == 0, (how, str(r))


# ----------------------------------------------------------------------------- gate
def make_gated(how="right"):
    def gated_residual(x, y, alpha, sees_image):
        keep = sees_image[..., None]
        if how == "inverted":
            keep = ~keep
        y2 = y if how == "no_mask" else y * keep
        g = {"no_tanh": alpha, "sigmoid": torch.sigmoid(alpha)}.get(how, torch.tanh(alpha))
        if how == "detach":
            g = g.detach()
        out = g * y2
        return out if how == "no_residual" else x + out

    return gated_residual


def test_gated_right_passes():
    assert check("gated_residual", make_gated()).passed


def test_gated_broken_versions_fail():
    assert_broken_fails_pointedly("gated_residual", make_gated("no_tanh"), ["tanh(alpha)"], SEED)
    assert_broken_fails_pointedly("gated_residual", make_gated("sigmoid"), ["sigmoid"], SEED)
    assert_broken_fails_pointedly("gated_residual", make_gated("no_mask"), ["no image"], SEED)
    assert_broken_fails_pointedly("gated_residual", make_gated("no_residual"), ["residual"],
                                  SEED)
    assert_broken_fails_pointedly("gated_residual", make_gated("inverted"), ["inverted"], SEED)
    r = check("gated_residual", make_gated("detach"), seed=SEED)
    assert not r.passed and "grad" in r.message.lower()
