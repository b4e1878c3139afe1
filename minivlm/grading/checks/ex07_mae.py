"""Checks of exercise 07 (MAE and BEiT): random masking, the MAE loss, one blockwise-mask step.

References: ``minivlm.models.mae.random_masking`` / ``mae_loss`` (He et al. 2022, §3) and
``minivlm.models.beit.add_block`` (Bao et al. 2022, §2.5, Algorithm 1). The "mistakes" are wrong
versions whose output, when it equals the learner's, names the mistake.
"""

from __future__ import annotations

import math

import torch

from minivlm.grading.core import Case, exercise_checks

Tensor = torch.Tensor
EXERCISE = "07_mae_beit"
register_check = exercise_checks(EXERCISE)


# ----------------------------------------------------------------------------- random masking
def _ref_masking(x: Tensor, mask_ratio: float, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    from minivlm.models.mae import random_masking

    kept, mask, ids_restore, _ = random_masking(x, mask_ratio, noise)
    return kept, mask, ids_restore


def _masking_variant(*, descending: bool = False, keep_rule: str = "int", invert: bool = False,
                     restore: str = "inverse", mask_order: str = "raster",
                     sort_kept: bool = False):
    def random_masking(x: Tensor, mask_ratio: float, noise: Tensor):
        B, N, D = x.shape
        keep = {"int": int(N * (1 - mask_ratio)), "ceil": math.ceil(N * (1 - mask_ratio)),
                "masked_first": N - int(N * mask_ratio)}[keep_rule]
        ids_shuffle = noise.argsort(dim=1, descending=descending)
        ids_restore = ids_shuffle.argsort(dim=1) if restore == "inverse" else ids_shuffle
        ids_keep = ids_shuffle[:, :keep]
        if sort_kept:
            ids_keep = ids_keep.sort(dim=1).values
        kept = x.gather(1, ids_keep[..., None].expand(-1, -1, D))
        mask = torch.ones(B, N, dtype=x.dtype)
        mask[:, :keep] = 0
        if mask_order == "raster":
            mask = mask.gather(1, ids_shuffle.argsort(dim=1))
        if invert:
            mask = 1 - mask
        return kept, mask, ids_restore

    return random_masking


@register_check(
    "random_masking(x, mask_ratio, noise)", _ref_masking, points=3,
    returns={"x_kept": "(B, N_keep, D)", "mask": "(B, N)", "ids_restore": "(B, N)"},
    mistakes=[
        ("you keep the patches with the HIGHEST noise; MAE keeps the lowest (argsort ascending, "
         "take the first N_keep)", _masking_variant(descending=True)),
        ("N_keep is rounded up (as with ceil or N - int(N * mask_ratio)); MAE truncates, "
         "int(N * (1 - mask_ratio)), which keeps one patch fewer when N * (1 - mask_ratio) is "
         "not a whole number", _masking_variant(keep_rule="masked_first")),
        ("the mask is inverted: 1 must mark a HIDDEN patch, 0 a visible one",
         _masking_variant(invert=True)),
        ("ids_restore is the shuffle itself; it must be its inverse, ids_shuffle.argsort(dim=1), "
         "so that gathering the shuffled sequence with it gives raster order",
         _masking_variant(restore="same")),
        ("the mask is in shuffled order (zeros first); gather it with ids_restore to put it in "
         "raster order, one entry per patch position", _masking_variant(mask_order="shuffled")),
        ("the kept tokens are sorted by position; keep them in the order of increasing noise "
         "(the decoder's ids_restore assumes that order)", _masking_variant(sort_kept=True)),
    ],
)
def random_masking_cases(gen: torch.Generator):
    def case(B: int, N: int, D: int, ratio: float, label: str, **kw):
        x = torch.randn(B, N, D, generator=gen)
        noise = torch.rand(B, N, generator=gen)
        return Case(label, x, ratio, noise, **kw)

    yield case(2, 16, 4, 0.75, "B=2, 16 patches, mask 75 %")
    yield case(3, 10, 3, 0.75, "10 patches at 75 %: N * (1 - r) = 2.5 is not a whole number",
               hint="int(10 * 0.25) = 2 patches are kept, 8 hidden")
    yield case(2, 9, 5, 0.6, "9 patches at 60 %", hint="int(9 * 0.4) = 3 are kept")
    yield case(1, 8, 2, 0.5, "a batch of size 1", hint="with B = 1, .squeeze() removes the batch")
    yield case(2, 12, 3, 0.0, "mask ratio 0: every patch kept (in noise order)")
    yield case(4, 64, 8, 0.9, "64 patches at 90 %, D = 8")


# ----------------------------------------------------------------------------- MAE loss
def _ref_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix_loss: bool) -> Tensor:
    from minivlm.models.mae import mae_loss

    return mae_loss(pred, target, mask, norm_pix_loss)


def _loss_variant(*, over: str = "masked", unbiased: bool = True, eps: float = 1e-6,
                  sqrt: bool = True, reduce: str = "mean", norm_pred: bool = False,
                  ignore_norm: bool = False):
    def mae_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix_loss: bool):
        if norm_pix_loss and not ignore_norm:
            mean = target.mean(-1, keepdim=True)
            var = target.var(-1, keepdim=True, unbiased=unbiased)
            scale = (var + eps) ** 0.5 if sqrt else var + eps
            target = (target - mean) / scale
            if norm_pred:
                pred = (pred - pred.mean(-1, keepdim=True)) / (
                    pred.var(-1, keepdim=True) + eps) ** 0.5
        sq = (pred - target) ** 2
        per = sq.mean(-1) if reduce == "mean" else sq.sum(-1)
        if over == "all":
            return per.mean()
        w = {"masked": mask, "visible": 1 - mask}[over]
        return (per * w).sum() / w.sum()

    return mae_loss


@register_check(
    "mae_loss(pred, target, mask, norm_pix_loss)", _ref_loss, points=3, grad=True,
    returns="()",
    mistakes=[
        ("your loss averages over every patch; MAE scores only the hidden ones: "
         "(per_patch * mask).sum() / mask.sum()", _loss_variant(over="all")),
        ("your loss scores the VISIBLE patches (mask == 0); mask == 1 marks the hidden ones, "
         "which are the ones to score", _loss_variant(over="visible")),
        ("each patch's error is summed over its pixels; take the mean over the last axis "
         "(p*p*C values) first", _loss_variant(reduce="sum")),
        ("norm_pix_loss uses the biased variance; MAE (and torch's .var()) use the unbiased one",
         _loss_variant(unbiased=False)),
        ("norm_pix_loss divides by the variance; divide by the standard deviation "
         "sqrt(var + 1e-6)", _loss_variant(sqrt=False)),
        ("norm_pix_loss normalises the prediction as well; only the target is normalised "
         "(the decoder learns to predict normalised pixels)", _loss_variant(norm_pred=True)),
        ("norm_pix_loss is ignored: with it on, normalise each target patch by its own mean "
         "and std, (t - mean) / sqrt(var + 1e-6)", _loss_variant(ignore_norm=True)),
        ("norm_pix_loss has no 1e-6 inside the square root (a flat patch divides by zero)",
         _loss_variant(eps=0.0)),
    ],
)
def mae_loss_cases(gen: torch.Generator):
    def case(B: int, N: int, P: int, norm: bool, label: str, flat: bool = False, **kw):
        pred = torch.randn(B, N, P, generator=gen)
        target = torch.randn(B, N, P, generator=gen)
        if flat:
            target[0, 0] = 0.3  # a flat patch: variance 0
        mask = (torch.rand(B, N, generator=gen) < 0.6).float()
        mask[0, 0], mask[-1, -1] = 1.0, 0.0  # at least one hidden and one visible patch
        return Case(label, pred, target, mask, norm, **kw)

    yield case(2, 8, 12, False, "plain pixels, B=2, 8 patches of 12 values")
    yield case(2, 8, 12, True, "norm_pix_loss=True")
    yield case(3, 6, 48, True, "norm_pix_loss with a flat target patch (variance 0)", flat=True,
               hint="a patch of one colour has variance 0: the 1e-6 keeps the division finite")
    yield case(1, 16, 4, False, "a batch of size 1, 4 values per patch")
    yield case(2, 5, 3, True, "norm_pix_loss, 3 values per patch",
               hint="with 3 values the unbiased variance (divide by 2) and the biased one "
                    "(divide by 3) differ a lot")


# ----------------------------------------------------------------------------- blockwise step
def _ref_block(mask: Tensor, area: float, aspect: float, top_frac: float, left_frac: float,
               need: int) -> Tensor:
    from minivlm.models.beit import add_block

    return add_block(mask, area, aspect, top_frac, left_frac, need)


def _block_variant(*, swap_hw: bool = False, trunc: bool = False, fit: str = "strict",
                   count: str = "new", overshoot: bool = False, origin: str = "frac"):
    def add_block(mask, area, aspect, top_frac, left_frac, need):
        g = mask.shape[-1]
        r = (lambda v: int(v)) if trunc else (lambda v: int(round(v)))
        h, w = r(math.sqrt(area * aspect)), r(math.sqrt(area / aspect))
        if swap_hw:
            h, w = w, h
        out = mask.clone()
        ok = (0 < h < g and 0 < w < g) if fit == "strict" else (0 < h <= g and 0 < w <= g)
        if not ok:
            return out
        if origin == "frac":
            top, left = int(top_frac * (g - h + 1)), int(left_frac * (g - w + 1))
        else:
            top, left = int(top_frac * g), int(left_frac * g)
        new = h * w - (int(mask[top:top + h, left:left + w].sum()) if count == "new" else 0)
        if 0 < new and (overshoot or new <= need):
            out[top:top + h, left:left + w] = True
        return out

    return add_block


@register_check(
    "add_block(mask, area, aspect, top_frac, left_frac, need)", _ref_block, points=3,
    returns="(g, g)",
    mistakes=[
        ("height and width are swapped: h = round(sqrt(area * aspect)), "
         "w = round(sqrt(area / aspect))", _block_variant(swap_hw=True)),
        ("the block's sides are truncated with int(); round them: int(round(sqrt(...)))",
         _block_variant(trunc=True)),
        ("a block as large as the grid was accepted; Algorithm 1 needs h < g and w < g",
         _block_variant(fit="loose")),
        ("already-masked patches were counted as new: new = h*w - mask[block].sum()",
         _block_variant(count="all")),
        ("a block that masks more than `need` new patches was kept; it must be rejected "
         "(mask unchanged)", _block_variant(overshoot=True)),
        ("the corner is int(top_frac * g); it must be int(top_frac * (g - h + 1)) so that the "
         "block always fits", _block_variant(origin="grid")),
    ],
)
def add_block_cases(gen: torch.Generator):
    def rnd() -> float:
        return float(torch.rand((), generator=gen))

    def mask_with(g: int, frac: float) -> Tensor:
        return torch.rand(g, g, generator=gen) < frac

    yield Case("empty 8x8 grid, a 2x3-ish block", torch.zeros(8, 8, dtype=torch.bool), 6.0, 0.7,
               rnd(), rnd(), 26)
    yield Case("tall block (aspect 3): h > w", torch.zeros(8, 8, dtype=torch.bool), 12.0, 3.0,
               0.5, 0.2, 20, hint="aspect > 1 makes the block taller than wide")
    yield Case("a block as large as the grid (rejected)", torch.zeros(4, 4, dtype=torch.bool),
               16.0, 1.0, 0.0, 0.0, 16, hint="h = w = 4 = g: the block must be strictly smaller")
    yield Case("part of the grid already masked", mask_with(8, 0.3), 9.0, 1.0, 0.4, 0.6, 30,
               hint="only patches not yet masked count as new")
    top_row = torch.zeros(8, 8, dtype=torch.bool)
    top_row[0] = True
    yield Case("a 3x3 block over a masked top row: 6 new patches, need = 7", top_row, 9.0, 1.0,
               0.0, 0.0, 7, hint="3 of the block's 9 patches are masked already: it adds 6 <= 7")
    yield Case("the block would overshoot `need`", torch.zeros(8, 8, dtype=torch.bool), 16.0,
               1.0, 0.3, 0.3, 5, hint="4x4 = 16 new patches but only 5 are needed: reject it")
    yield Case("corner near the far edge", torch.zeros(14, 14, dtype=torch.bool), 20.0, 0.5,
               0.99, 0.97, 75)
    yield Case("a block over patches that are all masked already", torch.ones(6, 6,
               dtype=torch.bool), 4.0, 1.0, 0.5, 0.5, 10, hint="no new patch: reject it")
