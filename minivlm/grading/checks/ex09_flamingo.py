"""Checks of exercise 09 (Flamingo): the interleaved image mask, the Perceiver Resampler's
attention over [x; latents], and the tanh-gated cross-attention residual.

References (Alayrac et al. 2022, "Flamingo", §2.1-2.3): ``minivlm.models.flamingo``'s
``image_attention_mask`` (mode "previous": each token sees only the latest image at or before
it, none before the first), the attention of :class:`~minivlm.models.flamingo.PerceiverResampler`
(queries from the latents, keys and values from the concatenation [x; latents], no biases; the
layer norms are left out here) and the residual of
:class:`~minivlm.models.flamingo.GatedCrossAttentionBlock` (``x + tanh(α)·y``, with y set to 0
for tokens that see no image).
"""

from __future__ import annotations

import torch

from minivlm.grading.core import Case, exercise_checks
from minivlm.nn.attention import attend

Tensor = torch.Tensor
EXERCISE = "09_flamingo"
register_check = exercise_checks(EXERCISE)


# ----------------------------------------------------------------------------- the mask
def _ref_mask(input_ids: Tensor, image_token_id: int, num_images: int) -> Tensor:
    from minivlm.models.flamingo import image_attention_mask

    return image_attention_mask(input_ids, image_token_id, num_images)


def _mask_variant(how: str):
    def interleaved_mask(input_ids, image_token_id, num_images):
        is_img = (input_ids == image_token_id).long()
        count = is_img.cumsum(1)
        if how == "exclusive":  # the image token itself does not see its image
            count = count - is_img
        n = torch.arange(num_images)
        if how == "all":
            return n < count[..., None]
        if how == "off_by_one":
            return count[..., None] == n
        if how == "first":
            return (count[..., None] > 0) & (n == 0)
        return (count - 1)[..., None] == n

    return interleaved_mask


def _ids(gen: torch.Generator, B: int, T: int, positions: list[list[int]], img: int) -> Tensor:
    ids = torch.randint(8, 30, (B, T), generator=gen)
    for b, pos in enumerate(positions):
        ids[b, pos] = img
    return ids


@register_check(
    "interleaved_mask(input_ids, image_token_id, num_images)", _ref_mask, points=2,
    returns="(B, T, N_img)",
    mistakes=[
        ("tokens see every earlier image; Flamingo lets a token see only the most recent one "
         "(§2.3)", _mask_variant("all")),
        ("off by one: token t sees image n when n images precede it, i.e. the *next* image; "
         "the latest image has index count - 1", _mask_variant("off_by_one")),
        ("the <image> token itself does not see its image; in IDEFICS the image token and "
         "everything after it see that image (count the image tokens up to and including t)",
         _mask_variant("exclusive")),
        ("every token after an image sees the first image only; it should see the latest",
         _mask_variant("first")),
    ],
)
def mask_cases(gen: torch.Generator):
    img = 7
    yield Case("one row: text, image, text, image, text", _ids(gen, 1, 8, [[1, 4]], img), img, 2)
    yield Case("tokens before the first image see nothing", _ids(gen, 2, 9, [[3, 6], [5]], img),
               img, 2, hint="a token before any image must have an all-False row")
    yield Case("unused image slots (num_images larger than the images in a row)",
               _ids(gen, 2, 10, [[0, 2, 7], [1]], img), img, 4)
    yield Case("two images in a row, back to back", _ids(gen, 1, 6, [[2, 3]], img), img, 2)
    yield Case("image token id 0, batch of 3", _ids(gen, 3, 7, [[0], [2, 4], [6]], 0), 0, 2)


# ----------------------------------------------------------------------------- resampler
def _ref_resampler(latents: Tensor, x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, wo: Tensor,
                   num_heads: int) -> Tensor:
    B, L, D = latents.shape
    kv = torch.cat([x, latents], dim=1)  # (B, S+L, D)

    def heads(t: Tensor) -> Tensor:
        return t.unflatten(-1, (num_heads, -1)).transpose(1, 2)  # (B, H, *, hd)

    out, _ = attend(heads(latents @ wq.T), heads(kv @ wk.T), heads(kv @ wv.T))
    return out.transpose(1, 2).flatten(2) @ wo.T  # (B, L, D)


def _resampler_variant(how: str):
    def resampler_attention(latents, x, wq, wk, wv, wo, num_heads):
        if how == "x_only":
            kv = x
        elif how == "latents_first":
            kv = torch.cat([latents, x], dim=1)
        else:
            kv = torch.cat([x, latents], dim=1)
        q = latents @ wq.T
        k, v = kv @ wk.T, kv @ wv.T
        h = lambda t: t.unflatten(-1, (num_heads, -1)).transpose(1, 2)  # noqa: E731
        if how == "heads":  # (.., head_dim, H): channel c goes to head c % H
            h = lambda t: t.unflatten(-1, (-1, num_heads)).permute(0, 3, 1, 2)  # noqa: E731
        q, k, v = h(q), h(k), h(v)
        s = q @ k.transpose(-2, -1)
        if how == "model_dim_scale":
            s = s / latents.shape[-1] ** 0.5
        elif how != "no_scale":
            s = s / q.shape[-1] ** 0.5
        w = s.softmax(dim=-2 if how == "axis" else -1)
        return (w @ v).transpose(1, 2).flatten(2) @ wo.T

    return resampler_attention


@register_check(
    "resampler_attention(latents, x, wq, wk, wv, wo, num_heads)",
    _ref_resampler, points=3, grad=True,
    returns="(B, L, D)",
    mistakes=[
        ("keys and values come from the image tokens only; Flamingo's latents attend to the "
         "concatenation [x; latents] (§2.1)", _resampler_variant("x_only")),
        ("the scores are not scaled by 1/sqrt(head_dim)", _resampler_variant("no_scale")),
        ("softmax over the wrong axis: each latent's weights over the keys must sum to 1 "
         "(softmax over the last axis)", _resampler_variant("axis")),
        ("the scores are divided by sqrt(D), the model width; the scale is 1/sqrt(head_dim), "
         "head_dim = D / num_heads", _resampler_variant("model_dim_scale")),
        ("the heads are split the wrong way: (B, S, D) -> (B, S, num_heads, head_dim), so head "
         "h holds the contiguous channels h*head_dim ... (h+1)*head_dim - 1, then "
         "transpose(1, 2)", _resampler_variant("heads")),
    ],
)
def resampler_cases(gen: torch.Generator):
    def case(label: str, B: int, L: int, S: int, D: int, H: int, dtype=torch.float32) -> Case:
        t = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
        w = [t(D, D) / D**0.5 for _ in range(4)]
        return Case(label, t(B, L, D), t(B, S, D), *w, H)

    yield case("2 images, 3 latents over 5 tokens, D=8, 2 heads", 2, 3, 5, 8, 2)
    yield case("one head", 1, 4, 6, 6, 1)
    yield case("more latents than image tokens", 2, 7, 2, 8, 4)
    yield case("float64", 1, 2, 9, 12, 3, dtype=torch.float64)


# ----------------------------------------------------------------------------- gated residual
def _ref_gated(x: Tensor, y: Tensor, alpha: Tensor, sees_image: Tensor) -> Tensor:
    return x + torch.tanh(alpha) * y.masked_fill(~sees_image[..., None], 0.0)


def _gated_variant(how: str):
    def gated_residual(x, y, alpha, sees_image):
        if how == "no_tanh":
            return x + alpha * y.masked_fill(~sees_image[..., None], 0.0)
        if how == "sigmoid":
            return x + torch.sigmoid(alpha) * y.masked_fill(~sees_image[..., None], 0.0)
        if how == "no_mask":
            return x + torch.tanh(alpha) * y
        if how == "no_residual":
            return torch.tanh(alpha) * y.masked_fill(~sees_image[..., None], 0.0)
        return x + torch.tanh(alpha) * y.masked_fill(sees_image[..., None], 0.0)  # inverted

    return gated_residual


@register_check(
    "gated_residual(x, y, alpha, sees_image)", _ref_gated, points=2, grad=True,
    returns="(B, T, D)",
    mistakes=[
        ("the gate is alpha itself; Flamingo squashes it with tanh(alpha) (§2.2)",
         _gated_variant("no_tanh")),
        ("sigmoid(0) = 0.5 would change the LM at initialisation; the gate is tanh(alpha)",
         _gated_variant("sigmoid")),
        ("tokens that see no image must get y = 0 (sees_image False)", _gated_variant("no_mask")),
        ("the residual x is missing: the block adds to x", _gated_variant("no_residual")),
        ("sees_image is inverted: keep y where sees_image is True", _gated_variant("inverted")),
    ],
)
def gated_cases(gen: torch.Generator):
    def case(label: str, B: int, T: int, D: int, alpha: Tensor, p: float = 0.7) -> Case:
        sees = torch.rand(B, T, generator=gen) < p
        return Case(label, torch.randn(B, T, D, generator=gen), torch.randn(B, T, D, generator=gen),
                    alpha, sees)

    yield case("a scalar gate alpha = 0.8", 2, 5, 4, torch.tensor([0.8]))
    yield case("a gate per channel", 1, 6, 3, torch.randn(1, 1, 3, generator=gen))
    yield case("alpha = 0: the output is x", 2, 4, 5, torch.zeros(1))
    yield case("a large gate (tanh saturates)", 1, 3, 2, torch.tensor([3.0]), p=0.5)
