"""Token masking for masked language modelling (MLM), shared by ViLT, ALBEF and VLMo.

Devlin et al. 2019 (BERT), §3.1: 15 % of the tokens are chosen; a chosen token becomes [MASK]
80 % of the time, a random token 10 % of the time, and stays itself 10 % of the time; the model
predicts the original token at every chosen position. Kim et al. 2021 (ViLT), §3.2-3.3, masks
whole words, so that a word cannot be read off its other WordPiece pieces instead of the image;
Li et al. 2021 (ALBEF), §3.2, and Bao et al. 2022 (VLMo), §2.2, use the same MLM.

:func:`mask_tokens` composes the two steps that exercise 02 asks for:
:func:`whole_word_choice` (which tokens) and :func:`corrupt_chosen` (what they become).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

__all__ = ["corrupt_chosen", "mask_tokens", "whole_word_choice"]


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
