"""Objectives shared by several models: token masking, negatives, soft targets, momentum.

Each model file keeps the losses only it uses; what two or more models share lives here, as
plain functions on tensors (shapes in the comments):

=========================  ===================================================  ================
function                   what it does                                         used by
=========================  ===================================================  ================
``mask_tokens``            BERT's 80/10/10 masking for MLM                       ViLT, ALBEF
``sample_itm_negatives``   one swapped image or caption per pair (ITM)           ViLT
``sample_hard_negatives``  ITM negatives drawn ∝ exp(similarity)                 ALBEF, BLIP-2
``same_pair_mask``         pairs that would be false negatives                   ALBEF, BLIP-2
``soft_cross_entropy``     cross-entropy against soft targets                    ALBEF
``distill_targets``        α·softmax(momentum sims) + (1 − α)·one-hot            ALBEF
``mlm_distill_loss``       MLM against labels and the momentum model's output    ALBEF
``ema_update_``            momentum (EMA) copy of the weights                    ALBEF
``enqueue_``               ring-buffer queue of momentum features                ALBEF
=========================  ===================================================  ================

CLIP's loss lives in :mod:`minivlm.models.clip`, ViLT's ITM/WPA in :mod:`minivlm.models.vilt`,
the next-token loss in :func:`minivlm.nn.lm.lm_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = [
    "concat_all_gather",
    "distill_targets",
    "ema_update_",
    "enqueue_",
    "mask_tokens",
    "mlm_distill_loss",
    "same_pair_mask",
    "sample_hard_negatives",
    "sample_itm_negatives",
    "soft_cross_entropy",
]


# ---------------------------------------------------------------------------
# Token masking (BERT §3.1; ViLT §3.2; ALBEF §3.2)
# ---------------------------------------------------------------------------


def _draw_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def mask_tokens(
    input_ids: Tensor,
    mask_id: int,
    vocab_size: int,
    special_ids: list[int] | tuple[int, ...] | Tensor,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking for MLM (Devlin et al. 2019, §3.1), as ViLT uses it (§3.2).

    Each token that is not special (padding, [CLS], [SEP], ...) is chosen with probability
    ``prob`` = 0.15. A chosen token becomes [MASK] 80% of the time, a random non-special
    token 10% of the time, and stays itself 10% of the time; the model must predict the
    original id at every chosen position.

    ViLT masks *whole words* (§3.3: all WordPiece pieces of a word together) so that a word cannot
    be guessed from its other pieces without looking at the image. With minivlm's word-level
    tokenizer every token is a whole word, so token masking already is whole-word masking.

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
    dev = input_ids.device
    special = torch.as_tensor(special_ids, dtype=torch.long).flatten()
    normal_ids = torch.ones(vocab_size, dtype=torch.bool)
    normal_ids[special[(special >= 0) & (special < vocab_size)]] = False
    normal_ids = normal_ids.nonzero().flatten()  # ids a random replacement may take
    if normal_ids.numel() == 0:
        raise ValueError("mask_tokens: every vocabulary id is special; nothing to sample")
    gd = _draw_device(generator, dev)
    shape = input_ids.shape
    choose = torch.rand(shape, generator=generator, device=gd).to(dev) < prob  # (B, T)
    choose &= ~torch.isin(input_ids, special.to(dev))
    how = torch.rand(shape, generator=generator, device=gd).to(dev)  # 80/10/10 split
    rand_tok = torch.randint(normal_ids.numel(), shape, generator=generator, device=gd)
    rand_tok = normal_ids.to(gd)[rand_tok].to(dev)
    labels = torch.where(choose, input_ids, torch.full_like(input_ids, -100))
    masked = input_ids.clone()
    masked[choose & (how < 0.8)] = mask_id
    use_random = choose & (how >= 0.8) & (how < 0.9)
    masked[use_random] = rand_tok[use_random]
    return masked, labels


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


def concat_all_gather(t: Tensor) -> Tensor:
    """Concatenate ``t`` over all processes (the paper's ``concat_all_gather``), if any."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)
