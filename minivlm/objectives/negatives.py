"""Objectives shared by several models: token masking, negatives, soft targets, momentum.

Each model file keeps the losses only it uses; what two or more models share lives here, as
plain functions on tensors (shapes in the comments):

============================  ======================================================  =============
function                      what it does                                            used by
============================  ======================================================  =============
``mask_tokens``               BERT's 80/10/10 masking for MLM                         ViLT, ALBEF
``whole_word_choice``         choose whole words, every WordPiece of a word together  mask_tokens
``corrupt_chosen``            the 80/10/10 replacement of the chosen tokens           mask_tokens
``sample_itm_negatives``      one swapped image or caption per pair (ITM)             ViLT
``itm_loss_with_negatives``   a model's ITM loss on positives + those negatives       ViLT
``make_pretraining_batch``    ITM + MLM rows stacked for one forward pass             ViLT
``sample_hard_negatives``     ITM negatives drawn ∝ exp(similarity)                   ALBEF, BLIP-2
``same_pair_mask``            pairs that would be false negatives                     ALBEF, BLIP-2
``hard_negative_rows``        [positives; hard-negative texts; hard-negative images]  ALBEF, BLIP-2
``masked_cross_entropy``      cross-entropy over labels != -100, 0 when none          ViLT, VLMo
``soft_cross_entropy``        cross-entropy against soft targets                      ALBEF
``distill_targets``           α·softmax(momentum sims) + (1 − α)·one-hot              ALBEF
``mlm_distill_loss``          MLM against labels and the momentum model's output      ALBEF
``ema_update_``               momentum (EMA) copy of the weights                      ALBEF
``enqueue_``                  ring-buffer queue of momentum features                  ALBEF
``MomentumQueues``            momentum model + queues + ITC targets (a module mixin)  ALBEF
``ClampedTemperature``        learnable ITC τ, clamped one way (a module mixin)       ALBEF, BLIP-2
``wasserstein_distance``      OT distance of words to patches (``ipot``)              ViLT
``wpa_loss``                  word-patch alignment: matches close, others far         ViLT
============================  ======================================================  =============

CLIP's loss lives in :mod:`minivlm.models.clip`, ViLT's ITM/MLM/VQA losses in
:mod:`minivlm.models.vilt`, the next-token loss in :func:`minivlm.nn.lm.lm_loss`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = [
    "ClampedTemperature",
    "MomentumQueues",
    "concat_all_gather",
    "corrupt_chosen",
    "cost_matrix_cosine",
    "distill_targets",
    "ema_update_",
    "enqueue_",
    "hard_negative_rows",
    "ipot",
    "itm_loss_with_negatives",
    "make_pretraining_batch",
    "mask_tokens",
    "masked_cross_entropy",
    "mlm_distill_loss",
    "same_pair_mask",
    "sample_hard_negatives",
    "sample_itm_negatives",
    "soft_cross_entropy",
    "wasserstein_distance",
    "whole_word_choice",
    "wpa_loss",
]


# ---------------------------------------------------------------------------
# Token masking (BERT §3.1; ViLT §3.2; ALBEF §3.2)
# ---------------------------------------------------------------------------


def _draw_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def whole_word_choice(continuation: Tensor, special: Tensor, word_noise: Tensor,
                      prob: float) -> Tensor:
    """Which tokens MLM hides, a whole word at a time (ViLT §3.3, whole-word masking).

    ``continuation`` (B, T) bool: True where a token continues the word before it (a WordPiece
    "##" piece); every other token starts a word, so word k of a row is its k-th word start
    (from 0, [CLS] included). ``special`` (B, T) bool: never chosen. ``word_noise`` (B, T)
    uniform draws, ``word_noise[b, k]`` for word k of row b. Word k is chosen when its draw is
    below ``prob``, and then all of its pieces are. Returns (B, T) bool.
    """
    word = (~continuation).long().cumsum(dim=1) - 1  # (B, T) the word each token belongs to
    chosen = word_noise.gather(1, word.clamp_min(0)) < prob  # (B, T) one draw per word
    return chosen & ~special


def corrupt_chosen(input_ids: Tensor, chosen: Tensor, how: Tensor, random_ids: Tensor,
                   mask_id: int) -> tuple[Tensor, Tensor]:
    """BERT's replacement of the chosen tokens (Devlin et al. 2019, §3.1; ViLT §3.2).

    A chosen token becomes ``mask_id`` where ``how`` (B, T, uniform) < 0.8, ``random_ids``
    (B, T) where 0.8 <= how < 0.9, and stays itself otherwise; the labels hold the original
    id at *every* chosen position (the model must predict all three kinds) and -100 (the
    loss's ``ignore_index``) elsewhere. Returns ``(masked_ids, labels)``, both (B, T).
    """
    to_mask = chosen & (how < 0.8)  # (B, T)
    to_random = chosen & (how >= 0.8) & (how < 0.9)  # (B, T)
    masked = input_ids.masked_fill(to_mask, mask_id)
    masked = torch.where(to_random, random_ids.to(input_ids.dtype), masked)
    labels = input_ids.masked_fill(~chosen, -100)
    return masked, labels


def mask_tokens(
    input_ids: Tensor,
    mask_id: int,
    vocab_size: int,
    special_ids: list[int] | tuple[int, ...] | Tensor,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
    continuation: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking for MLM (Devlin et al. 2019, §3.1), as ViLT uses it (§3.2).

    Each token that is not special (padding, [CLS], [SEP], ...) is chosen with probability
    ``prob`` = 0.15. A chosen token becomes [MASK] 80% of the time, a random non-special
    token 10% of the time, and stays itself 10% of the time; the model must predict the
    original id at every chosen position (:func:`corrupt_chosen`).

    ViLT masks *whole words* (§3.3: all WordPiece pieces of a word together) so that a word cannot
    be guessed from its other pieces without looking at the image: pass ``continuation``
    (B, T) bool, True at the "##" pieces, and words are chosen instead of tokens
    (:func:`whole_word_choice`). With minivlm's word-level tokenizer every token is a whole
    word, so the default (no continuation pieces) already is whole-word masking.

    Returns ``(masked_ids, labels)``, both (B, T): labels hold the original id at chosen
    positions and -100 (ignored by the loss) everywhere else.
    """
    if input_ids.dim() != 2 or input_ids.is_floating_point():
        raise ValueError(
            f"mask_tokens: expected integer input_ids of shape (B, T), got {input_ids.dtype} "
            f"{tuple(input_ids.shape)}"
        )
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"mask_tokens: prob must be in [0, 1], got {prob}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(
            f"mask_tokens: mask_id {mask_id} is outside the vocabulary 0..{vocab_size - 1}"
        )
    if continuation is not None and continuation.shape != input_ids.shape:
        raise ValueError(
            f"mask_tokens: continuation {tuple(continuation.shape)} must have input_ids' shape "
            f"{tuple(input_ids.shape)}"
        )
    dev = input_ids.device
    special = torch.as_tensor(special_ids, dtype=torch.long).flatten()
    normal_ids = torch.ones(vocab_size, dtype=torch.bool)
    normal_ids[special[(special >= 0) & (special < vocab_size)]] = False
    normal_ids = normal_ids.nonzero().flatten()  # ids a random replacement may take
    if normal_ids.numel() == 0:
        raise ValueError("mask_tokens: every vocabulary id is special; nothing to sample")
    gd = _draw_device(generator, dev)
    shape = input_ids.shape
    noise = torch.rand(shape, generator=generator, device=gd).to(dev)  # (B, T) one per word
    how = torch.rand(shape, generator=generator, device=gd).to(dev)  # 80/10/10 split
    rand_tok = torch.randint(normal_ids.numel(), shape, generator=generator, device=gd)
    rand_tok = normal_ids.to(gd)[rand_tok].to(dev)
    if continuation is None:
        continuation = torch.zeros(shape, dtype=torch.bool, device=dev)
    choose = whole_word_choice(continuation.to(dev).bool(), torch.isin(input_ids, special.to(dev)),
                               noise, prob)  # (B, T)
    return corrupt_chosen(input_ids, choose, how, rand_tok, mask_id)


# ---------------------------------------------------------------------------
# Negatives for image-text matching (ViLT §3.2; ALBEF §3.2; BLIP-2 §3.2)
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


# ---------------------------------------------------------------------------
# ViLT's pre-training batches (ViLT §3.2): ITM pairs and ITM + MLM in one pass
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Soft targets and momentum distillation (ALBEF §3.3)
# ---------------------------------------------------------------------------


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """ALBEF §3.3: mean over rows of ``−Σ_j targets_ij · log_softmax(logits)_ij`` (cross-entropy
    with soft targets; equals ``F.cross_entropy`` when the targets are one-hot)."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def distill_targets(sim_m: Tensor, alpha: float) -> Tensor:
    """ITC targets with momentum distillation (ALBEF §3.3, Eq. 6): (B, B+K) rows summing to 1.

    ``alpha · softmax(sim_m) + (1 − alpha) · y``, where ``sim_m`` (B, B+K) are the momentum
    model's similarities / τ and y is one-hot at column i for row i (the positive: the batch
    comes first, the queue after). ``alpha = 0`` gives the plain one-hot targets.
    """
    if sim_m.dim() != 2 or sim_m.shape[1] < sim_m.shape[0]:
        raise ValueError(
            f"distill_targets: expected sim_m of shape (B, B+K), got {tuple(sim_m.shape)}"
        )
    onehot = torch.zeros_like(sim_m, dtype=torch.float32)
    onehot.fill_diagonal_(1.0)  # (B, B+K): 1 at (i, i)
    if alpha == 0:
        return onehot
    return alpha * sim_m.float().softmax(dim=1) + (1.0 - alpha) * onehot


def mlm_distill_loss(
    logits: Tensor, labels: Tensor, soft_labels: Tensor | None = None, alpha: float = 0.0
) -> Tensor:
    """MLM loss with momentum distillation (ALBEF §3.3; the paper's code).

    logits (B, T, V), labels (B, T) with -100 where nothing is predicted, soft_labels
    (B, T, V) the momentum model's predicted distribution. Returns
    ``(1 − alpha) · CE(logits, labels) + alpha · H(soft_labels, logits)``, both averaged over
    the masked positions (0, with a gradient path, when none is masked).
    """
    sel = labels != -100  # (B, T)
    if not bool(sel.any()):
        return logits.sum() * 0.0
    lg = logits[sel].float()  # (M, V)
    loss = F.cross_entropy(lg, labels[sel])
    if soft_labels is not None and alpha > 0:
        distill = -(soft_labels[sel].float() * F.log_softmax(lg, dim=-1)).sum(dim=-1).mean()
        loss = (1.0 - alpha) * loss + alpha * distill
    return loss

# ---------------------------------------------------------------------------
# Momentum encoders and feature queues (MoCo §3.2; ALBEF §3.3)
# ---------------------------------------------------------------------------


@torch.no_grad()
def ema_update_(pairs: list[tuple[Tensor, Tensor]], momentum: float) -> None:
    """Momentum (EMA) update in place (MoCo §3.2, ALBEF §3.3): ``p_m ← m·p_m + (1 − m)·p`` for
    each (p, p_m) pair."""
    for p, p_m in pairs:
        p_m.mul_(momentum).add_(p.detach(), alpha=1.0 - momentum)


@torch.no_grad()
def enqueue_(queue: Tensor, ptr: Tensor, feats: Tensor) -> None:
    """MoCo §3.1 / ALBEF §3.3 queue: write (B, E) ``feats`` into the (E, K) ring buffer
    ``queue`` from column ``ptr``.

    Columns ``ptr, ptr+1, ...`` (mod K) receive the batch, wrapping around the end, and
    ``ptr`` becomes ``(ptr + B) % K``. The paper's code asserts ``K % B == 0`` so that a
    batch never straddles the end; this works for any B (for B > K only the last K
    features survive, as if written one by one).
    """
    E, K = queue.shape
    if feats.dim() != 2 or feats.shape[1] != E:
        raise ValueError(f"enqueue_: expected features of shape (B, {E}), got {tuple(feats.shape)}")
    B = feats.shape[0]
    start = int(ptr)
    if B > K:  # earlier ones would be overwritten within this same batch
        start = (start + B - K) % K
        feats = feats[B - K :]
    cols = (start + torch.arange(feats.shape[0], device=queue.device)) % K  # (min(B, K),)
    queue[:, cols] = feats.t().to(queue.dtype)
    ptr.fill_((int(ptr) + B) % K)


class ClampedTemperature:
    """A learnable ITC temperature ``temp`` kept in [``config.temp_min``, ``config.temp_max``],
    clamped one way (ALBEF's and BLIP-2's code): in place at the start of every training step,
    and the τ a forward uses is the clamped value. Mixed into an ``nn.Module``."""

    @torch.no_grad()
    def clamp_temp_(self) -> None:
        """Clamp τ in place to [temp_min, temp_max] (the papers' code does it every step)."""
        self.temp.clamp_(self.config.temp_min, self.config.temp_max)  # type: ignore[attr-defined]

    @property
    def temperature(self) -> float:
        """τ after the clamp."""
        cfg = self.config  # type: ignore[attr-defined]
        return float(self.temp.detach().clamp(cfg.temp_min, cfg.temp_max))  # type: ignore[attr-defined]

    def step_temperature(self) -> Tensor:
        """The τ of this forward: clamped in place first in training mode, then read clamped."""
        if self.training:  # type: ignore[attr-defined]
            self.clamp_temp_()
        cfg = self.config  # type: ignore[attr-defined]
        return self.temp.clamp(cfg.temp_min, cfg.temp_max)  # type: ignore[attr-defined]


class MomentumQueues:
    """The momentum (EMA) model and its feature queues (MoCo §3; ALBEF §3.3), mixed into an
    ``nn.Module`` whose ``momentum_names`` modules get a deep-copied momentum twin.

    Call :meth:`init_momentum` in ``__init__`` after the online modules exist: it adds
    ``momentum`` (a ``ModuleDict`` deep copy, no gradients, always in eval mode) and the buffers
    ``image_queue``/``text_queue`` (E, K) of random unit columns and ``queue_ptr``. The EMA
    coefficient is ``config.momentum``.
    """

    momentum_names: tuple[str, ...] = ()

    def init_momentum(self, embed_dim: int, queue_size: int) -> None:
        """Deep-copy the online modules (one copy, so that ties inside them stay tied) and
        register the (E, K) queues and their pointer."""
        self.momentum = copy.deepcopy(self._online()).requires_grad_(False).eval()
        E, K = embed_dim, queue_size
        self.register_buffer("image_queue", F.normalize(torch.randn(E, K), dim=0))
        self.register_buffer("text_queue", F.normalize(torch.randn(E, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def _online(self) -> torch.nn.ModuleDict:
        return torch.nn.ModuleDict({name: getattr(self, name) for name in self.momentum_names})

    def train(self, mode: bool = True) -> Any:
        """Set the training mode; the momentum model always stays in eval mode."""
        super().train(mode)  # type: ignore[misc]
        self.momentum.eval()
        return self

    def momentum_modules(self) -> list[torch.nn.Module]:
        """The momentum (EMA) copies, in the order of ``momentum_names``."""
        return list(self.momentum.values())

    def momentum_pairs(self) -> Iterator[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
        """(online parameter, momentum parameter) pairs, each shared tensor once (a tied
        decoder / word embeddings would otherwise be averaged twice)."""
        return zip(self._online().parameters(), self.momentum.parameters(), strict=True)

    @torch.no_grad()
    def copy_params_to_momentum(self) -> None:
        """Make the momentum model equal to the online one (e.g. after loading weights)."""
        for p, p_m in self.momentum_pairs():
            p_m.copy_(p)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """EMA step: ``param_m = m · param_m + (1 − m) · param`` for every momentum parameter."""
        ema_update_(list(self.momentum_pairs()), self.config.momentum)  # type: ignore[attr-defined]

    @torch.no_grad()
    def dequeue_and_enqueue(self, image_feat_m: Tensor, text_feat_m: Tensor) -> None:
        """Push (B, E) momentum features (gathered over processes) into both queues; the oldest
        entries are overwritten, wrapping around the end of the queue (:func:`enqueue_`)."""
        image_feat_m, text_feat_m = concat_all_gather(image_feat_m), concat_all_gather(text_feat_m)
        if image_feat_m.shape != text_feat_m.shape:
            raise ValueError(f"{type(self).__name__}.dequeue_and_enqueue: image and text features "
                             f"must have the same shape (B, E), got {tuple(image_feat_m.shape)} "
                             f"and {tuple(text_feat_m.shape)}")  # fmt: skip
        enqueue_(self.image_queue, self.queue_ptr.clone(), image_feat_m)
        enqueue_(self.text_queue, self.queue_ptr, text_feat_m)

    @torch.no_grad()
    def with_queues(self, image_feat_m: Tensor, text_feat_m: Tensor) -> tuple[Tensor, Tensor]:
        """[momentum batch; queue] features, (E, B+K) each: images, texts."""
        return (torch.cat([image_feat_m.t(), self.image_queue.float()], 1),
                torch.cat([text_feat_m.t(), self.text_queue.float()], 1))  # fmt: skip

    @torch.no_grad()
    def itc_targets(self, image_feat_m: Tensor, text_feat_m: Tensor, temp: Tensor | float,
                    alpha: float) -> tuple[Tensor, Tensor]:  # fmt: skip
        """ITC targets (ALBEF §3.3 Eq. 6) over [momentum batch; queue], (B, B+K) each: i2t,
        t2i (:func:`distill_targets`; ``alpha`` <= 0: one-hot)."""
        image_all, text_all = self.with_queues(image_feat_m, text_feat_m)  # (E, B+K) each
        if alpha <= 0:  # plain one-hot targets: column i is the positive of row i
            onehot = distill_targets(image_feat_m.new_zeros(len(text_feat_m), text_all.shape[1]), 0)
            return onehot, onehot
        return (distill_targets(image_feat_m @ text_all / temp, alpha),
                distill_targets(text_feat_m @ image_all / temp, alpha))  # fmt: skip


def concat_all_gather(t: Tensor) -> Tensor:
    """Concatenate ``t`` over all processes (the paper's ``concat_all_gather``), if any."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


# ---------------------------------------------------------------------------
# Word-patch alignment (ViLT §3.2, after UNITER's WRA): optimal transport, words <-> patches
# ---------------------------------------------------------------------------


def cost_matrix_cosine(x: Tensor, y: Tensor, eps: float = 1e-5) -> Tensor:
    """Cosine distance 1 - cos(x_i, y_j) between every pair: (B, M, D), (B, N, D) -> (B, M, N)."""
    x = F.normalize(x, dim=-1, eps=eps)
    y = F.normalize(y, dim=-1, eps=eps)
    return 1.0 - x @ y.transpose(1, 2)


@torch.no_grad()
def ipot(
    cost: Tensor, x_mask: Tensor, y_mask: Tensor, beta: float = 0.5, iters: int = 50, k: int = 1
) -> Tensor:
    """Inexact proximal point method for optimal transport (Xie et al. 2019, Alg. 1).

    Finds a transport plan P (B, M, N) between uniform distributions over the real tokens of
    x (``x_mask`` (B, M) bool) and of y (``y_mask`` (B, N)) that (approximately) minimises
    <C, P>. Each outer step solves a proximal problem min <C, P> + beta * KL(P || P_t) with
    ``k`` Sinkhorn-style scaling steps:

        G = exp(-C / beta);   Q = G * P_t
        b = nu / (Q^T a);     a = mu / (Q b);    P_{t+1} = diag(a) Q diag(b)

    A small ``k`` (1 in ViLT/UNITER) makes it "inexact"; unlike entropic Sinkhorn, the plan
    still converges to the exact optimum as t grows. Padding gets no mass.
    """
    xm, ym = x_mask.to(cost.dtype), y_mask.to(cost.dtype)  # (B, M), (B, N)
    joint = xm[:, :, None] * ym[:, None, :]  # (B, M, N) 1 where both tokens are real
    mu = xm / xm.sum(1, keepdim=True).clamp_min(1)  # (B, M) uniform over real x tokens
    nu = ym / ym.sum(1, keepdim=True).clamp_min(1)  # (B, N)
    G = torch.exp(-cost / beta) * joint  # (B, M, N)
    P = joint.clone()
    a = mu.clone()
    for _ in range(iters):
        Q = G * P
        for _ in range(k):
            b = nu / (Q.transpose(1, 2) @ a[..., None])[..., 0].clamp_min(1e-30)  # (B, N)
            a = mu / (Q @ b[..., None])[..., 0].clamp_min(1e-30)  # (B, M)
        P = a[:, :, None] * Q * b[:, None, :]
    return P * joint


def wasserstein_distance(
    text_feats: Tensor,
    image_feats: Tensor,
    text_mask: Tensor,
    image_mask: Tensor,
    beta: float = 0.5,
    iters: int = 50,
) -> Tensor:
    """Optimal-transport distance between each caption's words and its image's patches, (B,).

    D = <C, P*> with C the cosine-distance matrix (B, M, N) and P* the IPOT plan; P* is
    treated as a constant, so the gradient is that of <C, P*> (the plan says which word is
    pulled towards which patches). Masked (False) tokens take no part.
    """
    with torch.autocast(text_feats.device.type, enabled=False):  # float32, as ViLT's code
        cost = cost_matrix_cosine(text_feats.float(), image_feats.float())  # (B, M, N)
        joint = text_mask.bool()[:, :, None] & image_mask.bool()[:, None, :]
        cost = cost.masked_fill(~joint, 0.0)
        plan = ipot(cost.detach(), text_mask.bool(), image_mask.bool(), beta, iters)  # (B, M, N)
        return (cost * plan).sum(dim=(1, 2))  # (B,)


def wpa_loss(distance: Tensor, itm_labels: Tensor) -> Tensor:
    """Word-patch alignment loss (ViLT §3.2): pull matching pairs' words and patches together.

    ``(sum of distances of positive pairs - sum over negative pairs) / number of pairs``:
    matching pairs (label 1) minimise their transport distance, mismatched pairs (label 0)
    maximise it. ViLT adds it to ITM with weight 0.1 (``ViLTConfig.wpa_weight``).
    """
    if distance.shape != itm_labels.shape:
        raise ValueError(
            f"wpa_loss: distance {tuple(distance.shape)} and itm_labels "
            f"{tuple(itm_labels.shape)} must have the same shape (B,)"
        )
    if distance.numel() == 0:
        return distance.sum()
    sign = torch.where(itm_labels == 1, 1.0, -1.0).to(distance.dtype)
    return (sign * distance).sum() / distance.numel()
