"""Sampling and caption decoding.

Sampling (used by :meth:`minivlm.nn.lm.DecoderLM.generate` too): :func:`top_k_filter`,
:func:`top_p_filter` (nucleus sampling, Holtzman et al. 2020, §3.1) and :func:`sample_next`.

Caption decoding for image-conditioned text decoders (BLIP §3.1, CoCa §3.2): greedy, beam
search and nucleus sampling over one ``next_logits`` function.

A captioner hands :func:`generate` a function ``next_logits(ids, rows)`` that maps the tokens so
far, ids (N, t), to the logits of the next token (N, V); ``rows`` (N,) says which image of the
batch each row belongs to (beam search keeps ``num_beams`` rows per image).

* greedy: the arg-max token at every step;
* beam search: keep the ``num_beams`` prefixes of highest total log-probability, finish a beam
  at ``eos_id``; the best finished beam by mean log-probability per token wins (a length
  penalty of 1, as Hugging Face's default);
* nucleus (Holtzman et al. 2020): draw from the smallest set of tokens whose probability
  reaches ``top_p``. BLIP's CapFilt uses it because its captions are more diverse (§3.3, §4.4).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensor = torch.Tensor

__all__ = ["METHODS", "generate", "sample_next", "top_k_filter", "top_p_filter"]

METHODS = ("greedy", "beam", "nucleus")


# --------------------------------------------------------------------------- sampling


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits in the last dimension, set the rest to -inf.

    (Fan et al. 2018, §5.4.) Ties with the k-th value are kept.
    """
    if not isinstance(k, int) or k <= 0:
        raise ValueError(f"top_k_filter: expected a positive int k, got {k!r}")
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1) the k-th largest
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering (Holtzman et al. 2020, §3.1).

    Keep the smallest set of tokens whose cumulative probability is >= ``p``
    (the most likely token is always kept); set the others to -inf.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p_filter: expected 0 < p <= 1, got {p!r}")
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (..., V)
    probs = sorted_logits.float().softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above
    drop_sorted = mass_before >= p  # the set above already reaches p: not needed
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick the next token from logits (..., V) -> LongTensor (...).

    temperature 0 is greedy (argmax). Otherwise: divide by the temperature,
    apply top-k then top-p filtering, and draw from the softmax with ``generator``.
    """
    if temperature < 0:
        raise ValueError(f"sample_next: temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    lead, V = logits.shape[:-1], logits.shape[-1]
    x = logits.reshape(-1, V).float() / temperature  # (N, V)
    if top_k is not None:
        x = top_k_filter(x, top_k)
    if top_p is not None:
        x = top_p_filter(x, top_p)
    probs = x.softmax(dim=-1)  # (N, V)
    return torch.multinomial(probs, 1, generator=generator).reshape(lead)


# --------------------------------------------------------------------------- decoding


@torch.no_grad()
def generate(next_logits: Callable[[Tensor, Tensor], Tensor], start: Tensor, max_new_tokens: int,
             eos_id: int, method: str = "greedy", num_beams: int = 3, top_p: float = 0.9,
             temperature: float = 1.0, pad_id: int = 0,
             generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
    """Decode from ``start`` (B, t0) ids; returns (B, t0 + L) ids, L <= ``max_new_tokens``,
    each row ending at its first ``eos_id`` and padded with ``pad_id`` after it."""
    if method not in METHODS:
        raise ValueError(f"generate: method must be one of {METHODS}, got {method!r}")
    if start.dim() != 2 or start.shape[1] < 1:
        raise ValueError("generate: expected start ids of shape (B, t0>=1), got "
                         f"{tuple(start.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    if method == "beam":
        return _beam(next_logits, start, max_new_tokens, eos_id, num_beams, pad_id)
    B = start.shape[0]
    rows = torch.arange(B, device=start.device)
    ids, done = start, torch.zeros(B, dtype=torch.bool, device=start.device)
    for _ in range(max_new_tokens):
        logits = next_logits(ids, rows).float()  # (B, V)
        if method == "greedy":
            nxt = logits.argmax(-1)
        else:
            nxt = sample_next(logits, temperature=temperature, top_p=top_p, generator=generator)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)  # (B,)
        ids = torch.cat([ids, nxt[:, None]], 1)
        done |= nxt == eos_id
        if bool(done.all()):
            break
    return ids


def _beam(next_logits: Callable[[Tensor, Tensor], Tensor], start: Tensor, max_new: int,
          eos_id: int, K: int, pad_id: int) -> Tensor:  # fmt: skip
    """Beam search with ``K`` beams per image (see the module docstring)."""
    if K < 1:
        raise ValueError(f"generate: num_beams must be >= 1, got {K}")
    B, t0 = start.shape
    dev = start.device
    rows = torch.arange(B, device=dev).repeat_interleave(K)  # (B*K,) image of each beam
    ids = start.repeat_interleave(K, 0)  # (B*K, t0)
    score = torch.full((B, K), float("-inf"), device=dev)
    score[:, 0] = 0.0  # all beams start equal: keep one alive so the first step has no copies
    done = torch.zeros(B * K, dtype=torch.bool, device=dev)
    length = torch.zeros(B * K, device=dev)  # generated tokens, [EOS] included
    for _ in range(max_new):
        logp = next_logits(ids, rows).float().log_softmax(-1)  # (B*K, V)
        V = logp.shape[-1]
        # a finished beam can only append padding, at no cost: its score stays as it is
        frozen = torch.full_like(logp, float("-inf"))
        frozen[:, pad_id] = 0.0
        logp = torch.where(done[:, None], frozen, logp)
        cand = (score[:, :, None] + logp.view(B, K, V)).view(B, K * V)  # (B, K*V)
        score, flat = cand.topk(K, dim=-1)  # (B, K)
        beam, tok = flat // V, flat % V  # (B, K) parent beam and new token
        parent = (beam + torch.arange(B, device=dev)[:, None] * K).flatten()  # (B*K,)
        tok = tok.flatten()
        was_done = done[parent]
        ids = torch.cat([ids[parent], tok[:, None]], 1)
        length = length[parent] + (~was_done).float()
        done = was_done | (tok == eos_id)
        if bool(done.all()):
            break
    best = (score.view(-1) / length.clamp(min=1)).view(B, K).argmax(-1)  # (B,)
    return ids[best + torch.arange(B, device=dev) * K]
