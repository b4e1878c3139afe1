"""Negatives for image-text matching (ITM), shared by ViLT, ALBEF, BLIP, BLIP-2 and VLMo.

ITM is a binary "does this caption match this image?" head on the fused [CLS]; it needs
mismatched pairs, made from the batch:

- Kim et al. 2021 (ViLT), §3.2: each positive pair gets one random negative (another image;
  here also another caption) -- :func:`sample_itm_negatives`. ViLT's pre-training step is ITM
  plus MLM; :func:`make_pretraining_batch` stacks both passes into one batch.
- Li et al. 2021 (ALBEF), §3.2: *hard* negatives, drawn with probability ∝ exp(similarity) from
  the contrastive scores, so that the pairs the contrastive model confuses are the ones ITM
  trains on -- :func:`sample_hard_negatives`, never a copy of the positive
  (:func:`same_pair_mask`), stacked as 3B rows by :func:`hard_negative_rows`. BLIP (Li et al.
  2022, §3.2), BLIP-2 (Li et al. 2023, §3.2) and VLMo (Bao et al. 2022, §2.2) reuse them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from minivlm.objectives.masking import _draw_device, mask_tokens

Tensor = torch.Tensor

__all__ = [
    "hard_negative_rows",
    "itm_loss_with_negatives",
    "make_pretraining_batch",
    "masked_cross_entropy",
    "same_pair_mask",
    "sample_hard_negatives",
    "sample_itm_negatives",
]


# ---------------------------------------------------------------------------
# Random negatives (ViLT §3.2)
# ---------------------------------------------------------------------------


_PAIR_KEYS = ("input_ids", "attention_mask", "token_type_ids")  # caption side
_IMAGE_KEYS = ("pixel_values", "pixel_mask")  # image side


def sample_itm_negatives(
    batch: dict[str, Tensor], generator: torch.Generator | None = None, image_prob: float = 0.5
) -> dict[str, Tensor]:
    """ViLT §3.2: image-text matching pairs from a batch of B matching (caption, image) pairs.

    Every positive pair i is kept (label 1) and gets one negative (label 0): with
    probability ``image_prob`` its image is swapped for the image of another item j != i,
    otherwise its caption for caption j. ViLT itself only swaps images: half of its ITM pairs
    show a randomly drawn other image (``image_prob=1`` here); swapping captions too makes
    the model read the text as well.

    Returns a batch of 2B rows, the B positives first, with ``itm_labels`` (2B,), plus
    ``partner`` (B,) = j and ``swapped_image`` (B,) bool describing each negative. Caption
    keys (``input_ids``, ``attention_mask``, ``token_type_ids``) and image keys
    (``pixel_values``, ``pixel_mask``) are carried over; other keys are dropped.
    """
    if "input_ids" not in batch or "pixel_values" not in batch:
        raise ValueError(
            f"sample_itm_negatives: the batch needs 'input_ids' and 'pixel_values', got keys "
            f"{sorted(batch)}"
        )
    B = batch["input_ids"].shape[0]
    if B < 2:
        raise ValueError(f"sample_itm_negatives: need at least 2 pairs to swap, got B={B}")
    dev = batch["input_ids"].device
    gd = _draw_device(generator, dev)
    # j = i + k (mod B) with k in 1..B-1 is never i
    shift = torch.randint(1, B, (B,), generator=generator, device=gd).to(dev)
    partner = (torch.arange(B, device=dev) + shift) % B  # (B,)
    swap_image = (torch.rand(B, generator=generator, device=gd) < image_prob).to(dev)  # (B,)
    me = torch.arange(B, device=dev)
    image_src = torch.where(swap_image, partner, me)  # whose image negative i shows
    text_src = torch.where(swap_image, me, partner)  # whose caption negative i reads
    out: dict[str, Tensor] = {}
    for key, value in batch.items():
        if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != B:
            continue
        if key in _PAIR_KEYS:
            out[key] = torch.cat([value, value[text_src]], dim=0)
        elif key in _IMAGE_KEYS:
            out[key] = torch.cat([value, value[image_src]], dim=0)
    labels = torch.cat([torch.ones(B, dtype=torch.long), torch.zeros(B, dtype=torch.long)])
    out["itm_labels"] = labels.to(dev)
    out["partner"] = partner
    out["swapped_image"] = swap_image
    return out


# ---------------------------------------------------------------------------
# Hard negatives (ALBEF §3.2; BLIP §3.2; BLIP-2 §3.2; VLMo §2.2)
# ---------------------------------------------------------------------------


def same_pair_mask(input_ids: Tensor, mask: Tensor, index: Tensor | None = None,
                   where: str = "ALBEF.forward") -> Tensor:
    """ALBEF §3.2: (B, B) True where pair j would also match pair i -- the same caption (ids
    under the mask) or the same image ``index``. Passed as ``exclude`` to
    :func:`sample_hard_negatives` so that a "negative" is never a copy of the positive."""
    ids = input_ids.masked_fill(mask == 0, -1)  # (B, T)
    same = (ids[:, None, :] == ids[None, :, :]).all(dim=-1)  # (B, B)
    if index is not None:
        if index.shape != input_ids.shape[:1]:
            raise ValueError(
                f"{where}: expected index of shape ({input_ids.shape[0]},), got "
                f"{tuple(index.shape)}"
            )
        same = same | (index[:, None] == index[None, :]).to(same.device)
    return same


def sample_hard_negatives(
    sim_i2t: Tensor,
    sim_t2i: Tensor,
    exclude: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Hard negatives for ITM (ALBEF §3.2; BLIP-2 §3.2): one text per image, one image per text.

    For image i, text j ≠ i is drawn with probability ∝ ``exp(sim_i2t[i, j])`` (softmax
    over the batch, the positive's weight set to 0), so texts that the contrastive model
    finds similar -- hard to tell apart -- are picked more often; likewise an image for
    each text from ``sim_t2i``. Only the first B columns (the batch) of (B, B+K)
    similarities are used. ``exclude`` (B, B) bool marks further pairs that must not be
    drawn (e.g. duplicates of the positive); a row left with no candidate falls back to
    every j ≠ i. The positive is masked with −inf before the softmax, so it can never be
    drawn, however strongly the similarities favour it.

    Returns ``(neg_text_idx, neg_image_idx)``, both (B,) long.
    """
    B = sim_i2t.shape[0]
    if B < 2:
        raise ValueError(f"sample_hard_negatives: need at least 2 pairs in the batch, got B={B}")
    if sim_i2t.dim() != 2 or sim_t2i.shape != sim_i2t.shape or sim_i2t.shape[1] < B:
        raise ValueError(
            "sample_hard_negatives: expected sim_i2t and sim_t2i of the same shape (B, B+K), "
            f"got {tuple(sim_i2t.shape)} and {tuple(sim_t2i.shape)}"
        )
    dev = sim_i2t.device
    eye = torch.eye(B, dtype=torch.bool, device=dev)  # the positives
    blocked = eye
    if exclude is not None:
        if exclude.shape != (B, B):
            raise ValueError(
                f"sample_hard_negatives: expected exclude of shape ({B}, {B}), "
                f"got {tuple(exclude.shape)}"
            )
        blocked = eye | exclude.to(device=dev, dtype=torch.bool)
        empty = blocked.all(dim=1, keepdim=True)  # (B, 1) rows with no candidate left
        blocked = torch.where(empty, eye, blocked)
    out = []
    for sim in (sim_i2t, sim_t2i):
        with torch.no_grad():
            logits = sim[:, :B].detach().float().masked_fill(blocked, float("-inf"))
            weights = logits.softmax(dim=1)  # (B, B), 0 on the blocked pairs
            gd = generator.device if generator is not None else dev
            idx = torch.multinomial(weights.to(gd), 1, generator=generator).squeeze(1)
        out.append(idx.to(dev))
    return out[0], out[1]


def hard_negative_rows(text: Tensor, mask: Tensor, image: Tensor, neg_text: Tensor,
                       neg_image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """The 3B ITM rows of ALBEF §3.2 (and BLIP-2's): positives (I_i, T_i), then (I_i,
    hard-negative text ``neg_text[i]``), then (hard-negative image ``neg_image[i]``, T_i).

    text (B, T, ...) ids or embeddings, mask (B, T), image (B, S, D) -> text (3B, T, ...),
    mask (3B, T), image (3B, S, D) and labels (3B,): [1]*B + [0]*2B.
    """
    B = len(text)
    labels = torch.zeros(3 * B, dtype=torch.long, device=mask.device)  # (3B,)
    labels[:B] = 1  # the positives match; the 2B hard negatives do not
    return (torch.cat([text, text[neg_text], text]), torch.cat([mask, mask[neg_text], mask]),
            torch.cat([image, image, image[neg_image]]), labels)  # fmt: skip


# ---------------------------------------------------------------------------
# ViLT's pre-training batches (ViLT §3.2): ITM pairs and ITM + MLM in one pass
# ---------------------------------------------------------------------------


def masked_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over labels != -100 (logits (..., C), labels (...)); 0 with a gradient
    path when there are none (a batch with nothing masked)."""
    if not bool((labels != -100).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.flatten(0, -2), labels.flatten(), ignore_index=-100)


def itm_loss_with_negatives(
    model: torch.nn.Module,
    batch: dict[str, Tensor],
    generator: torch.Generator | None = None,
    image_prob: float = 0.5,
) -> Any:
    """Run ``model`` on the positives and sampled negatives of ``batch`` (ITM, ViLT §3.2).

    Returns the model's output (:class:`~minivlm.models.vilt.ViLTOutput` for ViLT) on the 2B
    pairs of :func:`sample_itm_negatives`; its ``loss`` is ``loss_itm`` (plus
    ``wpa_weight * loss_wpa`` when WPA is on).
    """
    pairs = sample_itm_negatives(batch, generator, image_prob)
    inputs = {k: v for k, v in pairs.items() if k not in ("partner", "swapped_image")}
    return model(**inputs)


def make_pretraining_batch(
    batch: dict[str, Tensor],
    mask_id: int,
    vocab_size: int,
    special_ids: list[int] | tuple[int, ...] | Tensor,
    mlm_prob: float = 0.15,
    image_prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """ViLT's pre-training step (ViLT §3.2) as one batch of 3B rows for ``model(**batch)``.

    The paper runs two passes: MLM on masked captions with their own images, and ITM (with
    WPA) on unmasked captions, half of them with a wrong partner. Here they are stacked:
    rows 0..B-1 are the MLM pass (``itm_labels`` = -100), rows B..3B-1 the ITM pass of
    :func:`sample_itm_negatives` (``mlm_labels`` all -100), so ``loss = loss_itm + loss_mlm``.
    """
    ids = batch["input_ids"]
    masked, mlm = mask_tokens(ids, mask_id, vocab_size, special_ids, mlm_prob, generator)
    itm = sample_itm_negatives(batch, generator, image_prob)
    B = ids.shape[0]
    out: dict[str, Tensor] = {}
    for key, value in itm.items():
        if key in ("partner", "swapped_image", "itm_labels"):
            continue
        first = masked if key == "input_ids" else batch[key]
        out[key] = torch.cat([first, value], dim=0)
    out["itm_labels"] = torch.cat([torch.full_like(itm["itm_labels"][:B], -100),
                                   itm["itm_labels"]])  # fmt: skip
    out["mlm_labels"] = torch.cat([mlm, torch.full_like(itm["input_ids"], -100)], dim=0)
    return out
