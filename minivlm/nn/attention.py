"""Multi-head attention with two paths through the same math.

    Attention(Q, K, V) = softmax(Q Kᵀ / √d + M) V          (Vaswani et al. 2017, §3.2.1)

* ``need_weights=True`` computes that formula step by step and returns the
  attention weights, so a notebook can plot them.
* otherwise it calls ``F.scaled_dot_product_attention`` (SDPA), which on a GPU
  dispatches to flash / memory-efficient kernels. Both paths give the same
  numbers; ``tests/test_attention.py`` checks outputs and gradients.

Mask convention (everywhere in minivlm): a **boolean** mask is True where a
query position *may attend* to a key position; a **float** mask is *added* to
the scores (0 = keep, -inf = block). Accepted mask ranks:

    2-D (Tq, Tk)        the same for every batch element and head
    3-D (B, Tq, Tk)     per batch element
    4-D (B|1, H|1, Tq, Tk)

Rotary position embedding (RoPE, Su et al. 2021, RoFormer §3.4) is applied to queries and
keys inside :class:`MultiHeadAttention` when ``rope=(cos, sin)`` is given.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor


def causal_mask(T: int, device: torch.device | str | None = None) -> Tensor:
    """Boolean (T, T) lower-triangular mask: position i may attend to j <= i."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def padding_mask(attention_mask: Tensor) -> Tensor:
    """(B, Tk) 1/0 (or bool) key mask -> boolean (B, 1, 1, Tk), True = real token."""
    if attention_mask.dim() != 2:
        raise ValueError(
            "padding_mask: expected attention_mask of shape (B, T), "
            f"got {tuple(attention_mask.shape)}"
        )
    return attention_mask.bool()[:, None, None, :]


def combine_masks(*masks: Tensor | None) -> Tensor | None:
    """Logical AND of boolean masks (broadcasting); ``None`` entries are ignored."""
    out: Tensor | None = None
    for m in masks:
        if m is None:
            continue
        if m.dtype != torch.bool:
            raise TypeError(f"combine_masks: expected boolean masks, got {m.dtype}")
        out = m if out is None else out & m
    return out


def _expand_mask(mask: Tensor, B: int, H: int, Tq: int, Tk: int) -> Tensor:
    """Check a 2/3/4-D mask against (B, H, Tq, Tk) and return it as 4-D."""
    expected = "(Tq, Tk), (B, Tq, Tk) or (B|1, H|1, Tq, Tk)"
    given = tuple(mask.shape)
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    elif mask.dim() != 4:
        raise ValueError(
            f"attention mask: expected shape {expected} with B={B}, H={H}, Tq={Tq}, Tk={Tk}; "
            f"got {mask.dim()}-D shape {tuple(mask.shape)}"
        )
    mb, mh, mq, mk = mask.shape
    if mb not in (1, B) or mh not in (1, H) or mq not in (1, Tq) or mk != Tk:
        raise ValueError(
            f"attention mask: expected shape {expected} with B={B}, H={H}, Tq={Tq}, Tk={Tk}; "
            f"got {given}"
        )
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            "attention mask: expected bool (True = may attend) or float (additive), "
            f"got {mask.dtype}"
        )
    return mask


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    need_weights: bool = False,
    dropout_p: float = 0.0,
    training: bool = False,
    scale: float | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Scaled dot-product attention over heads.

    Args:
        q: (B, H, Tq, d) queries.
        k, v: (B, Hkv, Tk, d) keys and values; ``H % Hkv == 0`` (grouped-query
            attention shares each key/value head among ``H // Hkv`` query heads).
        mask: boolean (True = may attend) or additive float mask, see module doc.
        need_weights: use the explicit path and return the (B, H, Tq, Tk) weights.
        scale: score scale, default 1/√d.

    Returns:
        (out (B, H, Tq, d), weights or None)
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "attend: expected q, k, v of shape (B, H, T, d); got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    B, H, Tq, d = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    if k.shape != v.shape[:3] + (k.shape[3],) or k.shape[0] != B or k.shape[3] != d:
        raise ValueError(
            f"attend: expected k of shape ({B}, Hkv, Tk, {d}) and v of shape ({B}, Hkv, Tk, dv); "
            f"got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if H % Hkv != 0:
        raise ValueError(f"attend: query heads ({H}) must be a multiple of key/value heads ({Hkv})")
    if Hkv != H:  # grouped-query attention: repeat each kv head for its group of query heads
        k = k.repeat_interleave(H // Hkv, dim=1)  # (B, H, Tk, d)
        v = v.repeat_interleave(H // Hkv, dim=1)  # (B, H, Tk, dv)
    if mask is not None:
        mask = _expand_mask(mask, B, H, Tq, Tk)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    p = dropout_p if training else 0.0

    if not need_weights:
        # Fast path. SDPA treats a boolean mask exactly like ours (True = attend).
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=scale)
        return out, None

    # Explicit path: the formula, one line per step.
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    weights = scores.softmax(dim=-1)  # each row sums to 1 over keys
    # A row whose keys are all masked gives NaN (0/0); SDPA returns 0 there, and so do we.
    weights = torch.nan_to_num(weights, nan=0.0)
    if p > 0:
        weights = F.dropout(weights, p=p)
    out = weights @ v  # (B, H, Tq, dv)
    return out, weights


# --------------------------------------------------------------------------- RoPE


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer §3.4), in the Llama "rotate half" layout.

    ``forward(positions)`` returns ``(cos, sin)`` of shape (B, 1, T, head_dim)
    (or (1, 1, T, head_dim) for 1-D positions), ready for :func:`apply_rotary`
    on (B, H, T, head_dim) queries and keys.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding: head_dim must be even, got {head_dim}")
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (hd/2,)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        if positions.dim() == 1:
            positions = positions[None]  # (1, T)
        freqs = positions[..., None].float() * self.inv_freq  # (B, T, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (B, T, hd)
        return emb.cos()[:, None], emb.sin()[:, None]  # (B, 1, T, hd) each


def sectioned_rope(positions: Tensor, inv_freq: Tensor,
                   sections: list[int] | tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """RoPE with one position per axis: frequency chunk i turns with axis ``i % A``.

    Multimodal RoPE (Qwen2-VL, Wang et al. 2024, §2.1) gives each token a (time, row,
    column) position and splits the head's frequencies into ``sections`` (e.g. 16/24/24
    of the 64 frequencies): the first chunk rotates by the time index, the second by the
    row, the third by the column. The 2-D RoPE of a vision encoder is the same with two
    axes (rows, columns). When all axes carry the same index this is plain 1-D RoPE.

    Args:
        positions: (A, B, T) integer positions, one row per axis.
        inv_freq: (F,) inverse frequencies, ``sum(sections) == F``.
    Returns:
        (cos, sin), each (B, 1, T, 2F), for :func:`apply_rotary` ("rotate half" layout).
    """
    if positions.dim() != 3:
        raise ValueError(f"sectioned_rope: expected positions of shape (axes, B, T), "
                         f"got {tuple(positions.shape)}")
    if sum(sections) != inv_freq.shape[0]:
        raise ValueError(f"sectioned_rope: sections {list(sections)} must sum to the number "
                         f"of frequencies {inv_freq.shape[0]}")
    A = positions.shape[0]
    angles = positions[..., None].float() * inv_freq.float()  # (A, B, T, F)
    chunks = angles.split(list(sections), dim=-1)
    freqs = torch.cat([c[i % A] for i, c in enumerate(chunks)], dim=-1)  # (B, T, F)
    emb = torch.cat([freqs, freqs], dim=-1)  # (B, T, 2F)
    return emb.cos()[:, None], emb.sin()[:, None]  # (B, 1, T, 2F) each


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, T, hd) ``x`` by position-dependent angles."""
    return (x * cos + rotate_half(x) * sin).to(x.dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head self- or cross-attention.

    ``x`` (B, Tq, D) supplies queries; ``context`` (B, Tk, kv_dim) supplies keys
    and values (defaults to ``x``: self-attention). ``num_kv_heads`` < ``num_heads``
    gives grouped-query attention (Ainslie et al. 2023), used by Llama-style LMs.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        kv_dim: int | None = None,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        out_bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(
                    f"MultiHeadAttention: dim {dim} is not divisible by num_heads {num_heads}"
                )
            head_dim = dim // num_heads
        num_kv_heads = num_kv_heads or num_heads
        if num_heads % num_kv_heads:
            raise ValueError(
                f"MultiHeadAttention: num_heads {num_heads} must be a multiple of "
                f"num_kv_heads {num_kv_heads}"
            )
        kv_dim = kv_dim or dim
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
        self.num_kv_heads = num_kv_heads
        self.kv_dim = kv_dim
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(kv_dim, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(kv_dim, num_kv_heads * head_dim, bias=qkv_bias)
        self.out_proj = nn.Linear(num_heads * head_dim, dim, bias=out_bias)

    def _split(self, t: Tensor, heads: int) -> Tensor:
        B, T, _ = t.shape
        return t.view(B, T, heads, self.head_dim).transpose(1, 2)  # (B, heads, T, hd)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        need_weights: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        kv_cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """x: (B, Tq, D); context: (B, Tk, kv_dim) or None -> ((B, Tq, D), weights or None)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(
                f"MultiHeadAttention: expected x of shape (B, T, {self.dim}), got {tuple(x.shape)}"
            )
        src = x if context is None else context
        if src.dim() != 3 or src.shape[0] != x.shape[0] or src.shape[-1] != self.kv_dim:
            raise ValueError(
                f"MultiHeadAttention: expected context of shape ({x.shape[0]}, S, {self.kv_dim}), "
                f"got {tuple(src.shape)}"
            )
        q = self._split(self.q_proj(x), self.num_heads)  # (B, H, Tq, hd)
        k = self._split(self.k_proj(src), self.num_kv_heads)  # (B, Hkv, Tk, hd)
        v = self._split(self.v_proj(src), self.num_kv_heads)  # (B, Hkv, Tk, hd)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # (B, Hkv, T_past + Tk, hd)
        out, w = attend(
            q, k, v, mask, need_weights=need_weights, dropout_p=self.dropout, training=self.training
        )
        B, H, Tq, hd = out.shape
        out = out.transpose(1, 2).reshape(B, Tq, H * hd)  # (B, Tq, H*hd)
        return self.out_proj(out), w


class KVCache:
    """Keys and values of past positions for one attention layer (decoding).

    ``update(k_new, v_new)`` appends (B, Hkv, t, hd) and returns the full cache.
    """

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k, k], dim=2)
            self.v = torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (e.g. for beam search)."""
        if self.k is not None:
            self.k, self.v = self.k[index], self.v[index]
