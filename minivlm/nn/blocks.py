"""Transformer building blocks shared by every model.

* :class:`TransformerBlock` — self-attention, optional cross-attention, MLP or
  SwiGLU; pre-norm (ViT, CLIP, GPT, Llama) or post-norm (BERT: Devlin et al.
  2019, which follows Vaswani et al. 2017, §3.1).
* :class:`MultiwayBlock` — shared self-attention, one feed-forward *expert* per modality,
  chosen per token (VLMo's MoME block, Bao et al. 2022, §2.1; BEiT-3's Multiway block).
* :class:`RMSNorm` (Zhang & Sennrich 2019), :class:`SwiGLU` (Shazeer 2020).
  RoPE lives in :mod:`minivlm.nn.attention`, which applies it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from minivlm.nn.attention import KVCache, MultiHeadAttention

Tensor = torch.Tensor
LayerNorm = nn.LayerNorm


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) * weight — LayerNorm without centring or bias."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x32 = x.float()  # normalise in float32 even under bf16 autocast, as Llama does
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def init_weights(module: nn.Module, std: float = 0.02, truncated: bool = False) -> None:
    """BERT / CLIP / Llama init: normal(0, ``std``) Linear and Embedding weights (the padding
    row zeroed), zero biases, unit LayerNorm / RMSNorm weights. ``truncated``: a normal
    truncated at ±2 (timm's ViT and BEiT) instead."""
    draw = nn.init.trunc_normal_ if truncated else nn.init.normal_
    for m in module.modules():
        if isinstance(m, nn.Linear):
            draw(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            draw(m.weight, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, (nn.LayerNorm, RMSNorm)):
            nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


def quick_gelu(x: Tensor) -> Tensor:
    """CLIP's GELU approximation x·σ(1.702x) (Radford et al. 2021, released code)."""
    return x * torch.sigmoid(1.702 * x)


_ACTS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": quick_gelu,
    "relu": F.relu,
    "silu": F.silu,
}


def get_activation(name: str):
    """Activation function by name (``gelu``, ``gelu_tanh``, ``quick_gelu``, ``relu``, ``silu``)."""
    if name not in _ACTS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTS)}")
    return _ACTS[name]


class MLP(nn.Module):
    """Two-layer feed-forward network: fc2(act(fc1(x)))."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu", bias: bool = True,
                 out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, out_dim or dim, bias=bias)
        self.act_name = act
        self.act = get_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (..., D) -> (..., hidden) -> (..., D)


class SwiGLU(nn.Module):
    """Gated MLP of Llama: down(silu(gate(x)) * up(x)) (Shazeer 2020, §2)."""

    def __init__(self, dim: int, hidden: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; expected 'layernorm' or 'rmsnorm'")


class TransformerBlock(nn.Module):
    """One transformer layer.

    Pre-norm (``prenorm=True``)::

        x = x + SelfAttn(norm1(x))
        x = x + CrossAttn(norm_cross(x), context)      # if cross_attention
        x = x + MLP(norm2(x))

    Post-norm (``prenorm=False``, BERT)::

        x = norm1(x + SelfAttn(x)); x = norm_cross(x + CrossAttn(x, context)); x = norm2(x + MLP(x))
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        mlp_hidden: int | None = None,
        cross_attention: bool = False,
        kv_dim: int | None = None,
        norm: str = "layernorm",
        eps: float = 1e-6,
        mlp: str = "gelu",
        qkv_bias: bool = True,
        out_bias: bool | None = None,
        mlp_bias: bool | None = None,
        prenorm: bool = True,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = mlp_hidden or int(dim * mlp_ratio)
        out_bias = qkv_bias if out_bias is None else out_bias
        mlp_bias = (mlp != "swiglu") if mlp_bias is None else mlp_bias
        self.prenorm = prenorm
        self.norm1 = make_norm(norm, dim, eps)
        self.attn = MultiHeadAttention(dim, num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                                       qkv_bias=qkv_bias, out_bias=out_bias, dropout=dropout)
        self.cross_attention = cross_attention
        if cross_attention:
            self.norm_cross = make_norm(norm, dim, eps)
            self.cross_attn = MultiHeadAttention(dim, num_heads, kv_dim=kv_dim, head_dim=head_dim,
                                                 qkv_bias=qkv_bias, out_bias=out_bias,
                                                 dropout=dropout)
        self.norm2 = make_norm(norm, dim, eps)
        if mlp == "swiglu":
            self.mlp: nn.Module = SwiGLU(dim, hidden, bias=mlp_bias)
        else:
            self.mlp = MLP(dim, hidden, act=mlp, bias=mlp_bias)
        self.drop = nn.Dropout(dropout)
        self.last_attn: Tensor | None = None
        self.last_cross_attn: Tensor | None = None

    # The three sub-layers, each with its residual connection and norm. ``forward`` chains
    # them; a model that routes positions differently (BLIP-2's Q-Former: only the query
    # positions cross-attend, queries and text have their own MLPs) calls them one by one.

    def self_attention_step(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        need_weights: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        """Self-attention sub-layer: (B, T, D) -> (B, T, D)."""
        if self.prenorm:
            a, self.last_attn = self.attn(self.norm1(x), mask=mask, need_weights=need_weights,
                                          rope=rope, kv_cache=kv_cache)
            return x + self.drop(a)
        a, self.last_attn = self.attn(x, mask=mask, need_weights=need_weights, rope=rope,
                                      kv_cache=kv_cache)
        return self.norm1(x + self.drop(a))

    def cross_attention_step(
        self,
        x: Tensor,
        context: Tensor,
        context_mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> Tensor:
        """Cross-attention sub-layer: x (B, T, D) reads context (B, S, kv_dim) -> (B, T, D)."""
        if not self.cross_attention:
            raise ValueError("TransformerBlock: this block was built without cross_attention")
        if self.prenorm:
            c, self.last_cross_attn = self.cross_attn(self.norm_cross(x), context,
                                                      mask=context_mask,
                                                      need_weights=need_weights)
            return x + self.drop(c)
        c, self.last_cross_attn = self.cross_attn(x, context, mask=context_mask,
                                                  need_weights=need_weights)
        return self.norm_cross(x + self.drop(c))

    def mlp_step(self, x: Tensor) -> Tensor:
        """Feed-forward sub-layer: (B, T, D) -> (B, T, D)."""
        if self.prenorm:
            return x + self.drop(self.mlp(self.norm2(x)))
        return self.norm2(x + self.drop(self.mlp(x)))

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        need_weights: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        """x: (B, T, D); context: (B, S, kv_dim) for cross-attention -> (B, T, D)."""
        if self.cross_attention and context is None:
            raise ValueError(
                "TransformerBlock: this block has cross-attention; pass context=(B, S, kv_dim)"
            )
        x = self.self_attention_step(x, mask, need_weights, rope, kv_cache)
        if self.cross_attention:
            x = self.cross_attention_step(x, context, context_mask, need_weights)
        return self.mlp_step(x)


def encoder_blocks(cfg: Any, prenorm: bool, cross_attention_ids: Iterable[int] = (),
                   kv_dim: int | None = None) -> nn.ModuleList:  # fmt: skip
    """The ``cfg.depth`` layers of a BERT (post-norm) or ViT / ViLT (pre-norm) encoder, sized
    by the config's ``dim``, ``num_heads``, ``hidden`` (MLP width), ``act``, ``eps``,
    ``qkv_bias``, ``dropout``; biases everywhere; cross-attention (to ``kv_dim``-wide states)
    in the layers ``cross_attention_ids``."""
    cross = set(cross_attention_ids)
    return nn.ModuleList(
        TransformerBlock(
            cfg.dim, cfg.num_heads, mlp_hidden=cfg.hidden, cross_attention=i in cross,
            kv_dim=kv_dim, eps=cfg.eps, mlp=cfg.act, qkv_bias=cfg.qkv_bias, out_bias=True,
            mlp_bias=True, prenorm=prenorm, dropout=cfg.dropout,
        )
        for i in range(cfg.depth)
    )  # fmt: skip


class MultiwayBlock(nn.Module):
    """Pre-norm block whose feed-forward layer is picked per token (VLMo §2.1, BEiT-3 §2.1)::

        x = x + γ1·SelfAttn(norm1(x))                  # one attention for every token
        x_t = x_t + γ2·FFN_e(norm2_e(x_t)),  e = route[t]   # expert e of token t

    ``num_experts`` experts (VLMo: 0 = V-FFN for image tokens, 1 = L-FFN for text tokens and,
    in the top layers only, 2 = VL-FFN for the fused pair), each with its own LayerNorm and
    MLP. ``route`` is an int (every token to that expert) or a long tensor (T,) / (B, T) of
    expert ids; a token's output depends only on the attention and on its own expert.
    ``layer_scale`` > 0 adds BEiT's learned per-channel scales γ1, γ2 (shared by the experts,
    as in VLMo's code); 0 turns them off.
    """

    def __init__(self, dim: int, num_heads: int, num_experts: int, *, mlp_hidden: int,
                 act: str = "gelu", eps: float = 1e-6, qkv_bias: bool = True,
                 layer_scale: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"MultiwayBlock: need at least one expert, got {num_experts}")
        self.num_experts = num_experts
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = MultiHeadAttention(dim, num_heads, qkv_bias=qkv_bias, out_bias=True)
        self.norms = nn.ModuleList(nn.LayerNorm(dim, eps=eps) for _ in range(num_experts))
        self.ffns = nn.ModuleList(MLP(dim, mlp_hidden, act=act) for _ in range(num_experts))
        self.gamma1 = self.gamma2 = None
        if layer_scale > 0:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        self.last_attn: Tensor | None = None

    def expert_ids(self, route: int | Tensor, B: int, T: int, device: torch.device) -> Tensor:
        """``route`` as a (B, T) long tensor of expert ids, checked against the experts."""
        if isinstance(route, int):
            route = torch.tensor(route)
        if route.dim() == 0:
            route = route.expand(B, T)
        elif route.dim() == 1:
            route = route[None].expand(B, -1)
        if tuple(route.shape) != (B, T):
            raise ValueError(f"MultiwayBlock: expected route as an int, ({T},) or ({B}, {T}) "
                             f"expert ids, got shape {tuple(route.shape)}")  # fmt: skip
        if bool(((route < 0) | (route >= self.num_experts)).any()):
            raise ValueError(f"MultiwayBlock: route holds ids outside 0..{self.num_experts - 1} "
                             f"(this block has {self.num_experts} experts)")  # fmt: skip
        return route.to(device)

    def ffn_step(self, x: Tensor, route: int | Tensor) -> Tensor:
        """Feed-forward sub-layer, each token through its own expert: (B, T, D) -> (B, T, D)."""
        B, T, _ = x.shape
        ids = self.expert_ids(route, B, T, x.device)  # (B, T)
        h = torch.zeros_like(x)
        for e in range(self.num_experts):
            sel = ids == e  # (B, T) the tokens of expert e
            if bool(sel.any()):
                h[sel] = self.ffns[e](self.norms[e](x[sel]))  # (M, D) -> (M, D)
        return x + (h if self.gamma2 is None else self.gamma2 * h)

    def forward(self, x: Tensor, route: int | Tensor, mask: Tensor | None = None,
                need_weights: bool = False) -> Tensor:  # fmt: skip
        """x (B, T, D); route: expert id(s); mask: attention mask (see nn.attention)."""
        a, self.last_attn = self.attn(self.norm1(x), mask=mask, need_weights=need_weights)
        x = x + (a if self.gamma1 is None else self.gamma1 * a)  # (B, T, D)
        return self.ffn_step(x, route)
