"""Checks of exercise 00 (the tour): patchify, scaled dot-product attention, causal mask.

References: ``minivlm.nn.vit.patchify`` (ViT, Dosovitskiy et al. 2021, §3.1) and
``minivlm.nn.attention.attend`` / ``causal_mask`` (Vaswani et al. 2017, §3.2.1).
The "mistakes" are wrong versions whose output, when it equals the learner's,
names the mistake.
"""

from __future__ import annotations

import math

import torch

from minivlm.grading.core import Case, exercise_checks

Tensor = torch.Tensor
EXERCISE = "00_patchify_attention"
register_check = exercise_checks(EXERCISE)


# ----------------------------------------------------------------------------- patchify
def _ref_patchify(images: Tensor, patch_size: int) -> Tensor:
    from minivlm.nn.vit import patchify

    return patchify(images, patch_size)


def _grid(images: Tensor, p: int) -> Tensor:
    B, C, H, W = images.shape
    return images.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)


def _patch_order_ppc(images: Tensor, p: int) -> Tensor:  # each patch flattened (p, p, C)
    B, C, H, W = images.shape
    return _grid(images, p).permute(0, 2, 4, 3, 5, 1).reshape(B, -1, C * p * p)


def _column_major(images: Tensor, p: int) -> Tensor:  # patches listed column by column
    B, C, H, W = images.shape
    return _grid(images, p).permute(0, 4, 2, 1, 3, 5).reshape(B, -1, C * p * p)


def _swapped_hw(images: Tensor, p: int) -> Tensor:  # the image's H and W axes swapped
    return _ref_patchify(images.transpose(-1, -2), p)


def _patch_transposed(images: Tensor, p: int) -> Tensor:  # rows/columns swapped in a patch
    B, C, H, W = images.shape
    return _grid(images, p).permute(0, 2, 4, 1, 5, 3).reshape(B, -1, C * p * p)


def _features_first(images: Tensor, p: int) -> Tensor:  # (B, C*p*p, N)
    return _ref_patchify(images, p).transpose(1, 2)


def _unflattened_grid(images: Tensor, p: int) -> Tensor:  # (B, h, w, C*p*p)
    B, C, H, W = images.shape
    return _ref_patchify(images, p).reshape(B, H // p, W // p, C * p * p)


@register_check(
    "patchify(images, patch_size)", _ref_patchify, points=2, grad=True,
    returns="(B, N, C*p*p)",
    mistakes=[
        ("each patch is flattened in (p, p, C) order; flatten it channel-first, as (C, p, p), "
         "the order of a Conv2d weight reshaped to (D, C*p*p)", _patch_order_ppc),
        ("your patches are listed column by column; list them in raster order: left to right "
         "along the top row of patches, then the next row", _column_major),
        ("your output matches patchify of the image with H and W swapped: dim 2 is the height "
         "(rows), dim 3 the width (columns)", _swapped_hw),
        ("inside each patch, rows and columns are swapped: flatten a patch as "
         "(channel, row, column)", _patch_transposed),
        ("the last two axes are swapped: return (B, N, C*p*p), one row per patch",
         _features_first),
        ("the patch grid is not flattened: merge the (H/p, W/p) grid into N = (H/p)*(W/p) "
         "patches", _unflattened_grid),
    ],
)
def patchify_cases(gen: torch.Generator):
    def img(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype)

    yield Case("2 RGB images 8x8, 4x4 patches", img(2, 3, 8, 8), 4)
    yield Case("a batch of size 1", img(1, 3, 8, 8), 4,
               hint="with B = 1, .squeeze() also removes the batch axis; reshape with "
                    "explicit sizes instead")
    yield Case("non-square images, H=12 != W=8", img(2, 3, 12, 8), 4,
               hint="H and W differ here: use H // p for the rows of patches and W // p for "
                    "the columns (a solution that only works for square images mixes them up)")
    yield Case("one channel, 2x2 patches, a 3x5 grid of patches", img(3, 1, 6, 10), 2)
    yield Case("one patch per image (p = H = W)", img(2, 2, 4, 4), 4)
    yield Case("float64 images", img(2, 3, 8, 8, dtype=torch.float64), 2)
    yield Case("non-contiguous images (a channels-last view)",
               img(2, 8, 8, 3).permute(0, 3, 1, 2), 4,
               hint="the input is a view with unusual strides (as after a permute of an (H, W, "
                    "C) photo): .view() cannot handle it, .reshape() can")


# ----------------------------------------------------------------------------- attention
def _ref_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None
                   ) -> tuple[Tensor, Tensor]:
    from minivlm.nn.attention import attend

    out, weights = attend(q, k, v, mask, need_weights=True)
    assert weights is not None
    return out, weights


def _attention_variant(*, scale: str = "sqrt", dim: int = -1, mask_mode: str = "-inf",
                       invert: bool = False, normalise: bool = True, swap_kv: bool = False,
                       swap_return: bool = False):
    """A wrong attention: the formula with one step changed."""

    def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None):
        if swap_kv:
            k, v = v, k
        d = q.shape[-1]
        scores = q @ k.transpose(-2, -1)  # (B, H, Tq, Tk)
        scores = {"sqrt": scores / math.sqrt(d), "none": scores,
                  "times": scores * math.sqrt(d), "d": scores / d}[scale]
        m = None if mask is None else (~mask if invert else mask)
        if m is not None and mask_mode == "-inf":
            scores = scores.masked_fill(~m, float("-inf"))
        elif m is not None and mask_mode == "zero":
            scores = scores * m
        weights = scores.softmax(dim=dim) if normalise else scores.exp()
        if m is not None and mask_mode == "after":
            weights = weights * m
        if swap_return:
            return weights, weights @ v
        return weights @ v, weights

    return attention


def _explain_attention(case: Case, got: list, expected: list) -> str | None:
    w = torch.nan_to_num(got[1].double(), nan=0.0)  # (B, H, Tq, Tk) the weights
    sums = w.sum(-1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        return (f"each row of the weights (one query's distribution over the keys, the last "
                f"axis) must sum to 1; yours sum to between {sums.min().item():.3g} and "
                f"{sums.max().item():.3g}")
    mask = case.args[3] if len(case.args) > 3 else None
    if isinstance(mask, Tensor) and bool((w.abs() > 1e-6).logical_and(~mask).any()):
        return "your weights are not zero where the mask is False (True = may attend)"
    return None


@register_check(
    "attention(q, k, v, mask=None)", _ref_attention, points=3, grad=True,
    returns={"out": "(B, H, Tq, d)", "weights": "(B, H, Tq, Tk)"},
    mistakes=[
        ("your output matches attention without the 1/sqrt(d) scale: divide the scores "
         "q @ k^T by sqrt(d), d = q.shape[-1]", _attention_variant(scale="none")),
        ("your output matches attention with the scores multiplied by sqrt(d); divide by "
         "sqrt(d) instead", _attention_variant(scale="times")),
        ("your output matches attention with the scores divided by d; the scale is 1/sqrt(d)",
         _attention_variant(scale="d")),
        ("softmax over the wrong axis: each query's weights over the keys (the last axis, "
         "dim=-1) must sum to 1", _attention_variant(dim=-2)),
        ("the mask is inverted: True means 'may attend', so fill the scores where the mask "
         "is False with -inf", _attention_variant(invert=True)),
        ("the mask was applied by multiplying the scores (a masked score of 0 still gets "
         "weight exp(0) > 0): set masked scores to -inf before the softmax, e.g. "
         "scores.masked_fill(~mask, float('-inf'))", _attention_variant(mask_mode="zero")),
        ("the mask was applied after the softmax, so the weights no longer sum to 1: mask "
         "the scores with -inf before the softmax", _attention_variant(mask_mode="after")),
        ("the weights are exp(scores) without normalising: divide by their sum over the "
         "keys, i.e. use softmax", _attention_variant(normalise=False)),
        ("k and v are swapped: weights come from q @ k^T, the output is weights @ v",
         _attention_variant(swap_kv=True)),
        ("you return (weights, out); return (out, weights)", _attention_variant(swap_return=True)),
    ],
    explain=_explain_attention,
)
def attention_cases(gen: torch.Generator):
    def qkv(B: int, H: int, Tq: int, Tk: int, d: int, dtype: torch.dtype = torch.float32):
        return (torch.randn(B, H, Tq, d, generator=gen, dtype=dtype),
                torch.randn(B, H, Tk, d, generator=gen, dtype=dtype),
                torch.randn(B, H, Tk, d, generator=gen, dtype=dtype))

    yield Case("self-attention, B=2, H=2, T=5, d=8, no mask", *qkv(2, 2, 5, 5, 8))
    yield Case("cross-attention: 3 queries, 7 keys, d=4", *qkv(2, 2, 3, 7, 4),
               hint="Tq != Tk here: the weights are (B, H, Tq, Tk)")
    yield Case("a batch of size 1, one head, d=16", *qkv(1, 1, 4, 4, 16),
               hint="with B = 1 and H = 1, .squeeze() removes axes you need")
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    yield Case("causal mask (T, T), True = may attend", *qkv(2, 2, 6, 6, 8), causal)
    pad = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    pad[0, ..., 4:] = False  # the first sequence's last two keys are padding
    yield Case("padding mask (B, 1, 1, Tk): the last 2 keys of sequence 0 are padding",
               *qkv(2, 2, 4, 6, 8), pad)
    rand = torch.rand(2, 2, 5, 7, generator=gen) > 0.4
    rand[..., 0] = True  # every query may attend to at least one key
    yield Case("random boolean mask (B, H, Tq, Tk)", *qkv(2, 2, 5, 7, 8), rand)
    yield Case("float64 inputs with a causal mask", *qkv(2, 2, 5, 5, 8, torch.float64),
               torch.ones(5, 5, dtype=torch.bool).tril())


# ----------------------------------------------------------------------------- causal mask
def _ref_causal_mask(T: int) -> Tensor:
    from minivlm.nn.attention import causal_mask

    return causal_mask(T)


@register_check(
    "causal_mask(T)", _ref_causal_mask, points=1,
    returns="(T, T)",
    mistakes=[
        ("off by one: each position must also attend to itself, so the diagonal is True "
         "(torch.tril keeps the diagonal by default)",
         lambda T: torch.ones(T, T, dtype=torch.bool).tril(diagonal=-1)),
        ("off by one: position i may see position i+1, one step into the future",
         lambda T: torch.ones(T, T, dtype=torch.bool).tril(diagonal=1)),
        ("transposed: row i is the query and may attend to columns j <= i, the lower "
         "triangle (tril), not the upper one", lambda T: torch.ones(T, T, dtype=torch.bool).triu()),
        ("inverted: True must mean 'may attend' (j <= i); yours is True for future positions",
         lambda T: ~torch.ones(T, T, dtype=torch.bool).tril()),
    ],
)
def causal_mask_cases(gen: torch.Generator):
    yield Case("T = 5", 5)
    yield Case("T = 1", 1)
    yield Case("T = 8", 8)
