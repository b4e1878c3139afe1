"""BERT (Devlin et al. 2019, §3): the bidirectional text encoder and its MLM head.

* :class:`TextConfig` sizes every text transformer in minivlm (defaults: BERT-base;
  ``TextConfig.clip()`` gives CLIP's causal text transformer, :mod:`minivlm.nn.causal_text`).
* :class:`BertEncoder`: word + position + token-type embeddings, an embedding LayerNorm,
  post-norm blocks; optional cross-attention layers (``cross_attention_from`` /
  ``cross_attention_freq``) turn it into the fusion encoder of ALBEF (layers 6-11) or the
  Q-Former of BLIP-2 (every second layer), and ``causal=True`` into BLIP's text decoder.
* :class:`BertMLMHead`: BERT's masked-language-model head (§3.1, Task #1).

Both text encoders return a :class:`TextOutput`; the helpers below (blocks, init, id and mask
checks) are shared with :mod:`minivlm.nn.causal_text`. Checkpoint conversion:
:mod:`minivlm.interop.bert`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from minivlm.nn.attention import causal_mask, padding_mask
from minivlm.nn.blocks import TransformerBlock, get_activation, init_weights
from minivlm.nn.config import MLPHidden, TransformerSizes, divisible
from minivlm.utils import raise_first

Tensor = torch.Tensor


# ---------------------------------------------------------------------------
# Configuration and outputs
# ---------------------------------------------------------------------------


@dataclass
class TextConfig(TransformerSizes, MLPHidden):
    """Sizes and switches of a text transformer (defaults: BERT-base, uncased: the
    :class:`~minivlm.nn.config.TransformerSizes` defaults, with the MLP width from ``mlp_ratio``).

    Cross-attention (to image tokens of width ``kv_dim``, default ``dim``) is
    added to layer ``i`` when ``i`` is in ``cross_attention_layers``, or when
    ``cross_attention_from`` is set, ``i >= cross_attention_from`` and
    ``(i - cross_attention_from) % cross_attention_freq == 0``. Examples:
    ALBEF's 12-layer BERT = 6 text layers + 6 fusion layers is
    ``cross_attention_from=6``; BLIP-2's Q-Former is ``cross_attention_from=0,
    cross_attention_freq=2``; a Hugging Face BERT with ``add_cross_attention``
    is ``cross_attention_from=0``.
    """

    vocab_size: int = 30522
    max_len: int = 512
    mlp_ratio: float = 4.0
    mlp_hidden: int | None = None  # TransformerSizes' field; None: int(dim * mlp_ratio)
    causal: bool = False
    prenorm: bool = False
    qkv_bias: bool = True
    cross_attention_from: int | None = None
    cross_attention_freq: int = 1
    cross_attention_layers: tuple[int, ...] | None = None
    kv_dim: int | None = None
    type_vocab_size: int = 2  # 0: no token-type (segment) embedding
    pad_id: int | None = 0  # BERT's word-embedding padding_idx (its row gets no gradient)
    eos_token_id: int | None = None  # CausalTextEncoder.pool; None: legacy argmax rule
    embed_norm: bool = True  # LayerNorm after the embeddings (BERT)
    final_norm: bool = False  # LayerNorm after the last block (CLIP)
    pooler: bool = False  # BERT's tanh(dense(h_CLS)) pooler
    dropout: float = 0.0

    def __post_init__(self) -> None:
        raise_first("TextConfig: ", [
            divisible(self, "dim", "num_heads"),
            (self.cross_attention_freq >= 1,
             f"cross_attention_freq must be >= 1, got {self.cross_attention_freq}"),
        ])  # fmt: skip
        if self.cross_attention_layers is not None:
            self.cross_attention_layers = tuple(int(i) for i in self.cross_attention_layers)
            bad = [i for i in self.cross_attention_layers if not 0 <= i < self.depth]
            if bad:
                raise ValueError(
                    f"TextConfig: cross_attention_layers {bad} are outside 0..{self.depth - 1}"
                )
        get_activation(self.act)  # raises a clear error for an unknown name

    @property
    def cross_attention_ids(self) -> tuple[int, ...]:
        """Indices of the layers that have cross-attention."""
        ids = set(self.cross_attention_layers or ())
        if self.cross_attention_from is not None:
            start, k = self.cross_attention_from, self.cross_attention_freq
            ids |= {i for i in range(start, self.depth) if (i - start) % k == 0}
        return tuple(sorted(ids))

    @classmethod
    def clip(cls, **overrides) -> TextConfig:
        """CLIP's text transformer (ViT-B/32 model): 12 pre-norm causal layers of width 512."""
        base = dict(
            vocab_size=49408, max_len=77, dim=512, depth=12, num_heads=8, act="quick_gelu",
            eps=1e-5, causal=True, prenorm=True, type_vocab_size=0, pad_id=None,
            eos_token_id=49407, embed_norm=False, final_norm=True,
        )  # fmt: skip
        return cls(**{**base, **overrides})


@dataclass
class BertSizes(TransformerSizes):
    """The sizes of a post-norm BERT as a model's config names them (defaults: BERT-base,
    :class:`~minivlm.nn.config.TransformerSizes`, 30,522 words, 512 positions): a base of the
    UNITER and Pixel-BERT configs, which add their image inputs and heads and build their
    encoder from :meth:`text_config`."""

    vocab_size: int = 30522
    max_len: int = 512
    dropout: float = 0.0

    def text_config(self) -> TextConfig:
        """The :class:`TextConfig` of the BERT these sizes describe."""
        return TextConfig(vocab_size=self.vocab_size, max_len=self.max_len, dim=self.dim,
                          depth=self.depth, num_heads=self.num_heads, mlp_hidden=self.mlp_hidden,
                          act=self.act, eps=self.eps, dropout=self.dropout)  # fmt: skip


@dataclass
class TextOutput:
    """What the text encoders return.

    last_hidden_state: (B, T, D).
    pooler_output: (B, D) BERT pooler output when the config has ``pooler=True``.
    hidden_states: depth+1 tensors (B, T, D) (embeddings, then each layer's output),
        when ``output_hidden_states=True``.
    attentions: one (B, H, T, T) self-attention map per layer, when ``need_weights``.
    cross_attentions: one (B, H, T, S) map per cross-attention layer, when ``need_weights``.
    """

    last_hidden_state: Tensor
    pooler_output: Tensor | None = None
    hidden_states: list[Tensor] | None = None
    attentions: list[Tensor] | None = None
    cross_attentions: list[Tensor] | None = field(default=None)


# ---------------------------------------------------------------------------
# Shared helpers (also used by nn/causal_text.py)
# ---------------------------------------------------------------------------


def text_blocks(cfg: TextConfig) -> nn.ModuleList:
    cross = set(cfg.cross_attention_ids)
    return nn.ModuleList(
        TransformerBlock(
            cfg.dim,
            cfg.num_heads,
            mlp_hidden=cfg.hidden,
            cross_attention=i in cross,
            kv_dim=cfg.kv_dim,
            eps=cfg.eps,
            mlp=cfg.act,
            qkv_bias=cfg.qkv_bias,
            out_bias=True,
            mlp_bias=True,
            prenorm=cfg.prenorm,
            dropout=cfg.dropout,
        )
        for i in range(cfg.depth)
    )


def check_ids(name: str, input_ids: Tensor, cfg: TextConfig) -> None:
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
        shape = (
            tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
        )
        raise ValueError(f"{name}: expected input_ids of shape (B, T), got {shape}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name}: expected integer token ids (torch.long), got {input_ids.dtype}")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= cfg.vocab_size):
        raise ValueError(
            f"{name}: token ids must lie in the vocabulary 0..{cfg.vocab_size - 1}, got ids in "
            f"{int(input_ids.min())}..{int(input_ids.max())}"
        )


def check_len(name: str, T: int, cfg: TextConfig) -> None:
    if T > cfg.max_len:
        raise ValueError(f"{name}: sequence length {T} exceeds max_len {cfg.max_len}")


def key_mask(name: str, attention_mask: Tensor | None, B: int, T: int, what: str) -> Tensor | None:
    """(B, T) 1/0 padding mask -> boolean (B, 1, 1, T), checking its shape."""
    if attention_mask is None:
        return None
    if attention_mask.shape != (B, T):
        raise ValueError(
            f"{name}: expected {what} of shape ({B}, {T}), got {tuple(attention_mask.shape)}"
        )
    return padding_mask(attention_mask)


def merge_masks(*masks: Tensor | None) -> Tensor | None:
    """AND of boolean masks; if any mask is additive (float), add them all as floats."""
    masks_ = [m for m in masks if m is not None]
    if not masks_:
        return None
    floats = [m for m in masks_ if m.is_floating_point()]
    if not floats:
        out = masks_[0]
        for m in masks_[1:]:
            out = out & m
        return out
    dtype = floats[0].dtype
    total = None
    for m in masks_:
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, float("-inf"))
        total = m if total is None else total + m
    return total


def run_blocks(
    blocks: nn.ModuleList,
    x: Tensor,
    mask: Tensor | None,
    context: Tensor | None,
    context_mask: Tensor | None,
    need_weights: bool,
    output_hidden_states: bool,
    name: str,
    start: int = 0,
) -> tuple[Tensor, list[Tensor] | None, list[Tensor] | None, list[Tensor] | None]:
    hidden = [x] if output_hidden_states else None
    attns: list[Tensor] | None = [] if need_weights else None
    cross: list[Tensor] | None = [] if need_weights else None
    for i, blk in enumerate(blocks):
        if blk.cross_attention and context is None:
            raise ValueError(
                f"{name}: layer {start + i} has cross-attention; pass encoder_hidden_states "
                "(B, S, kv_dim), or run only the layers without it (forward_layers(end=...))"
            )
        x = blk(x, mask=mask, context=context if blk.cross_attention else None,
                context_mask=context_mask, need_weights=need_weights)  # fmt: skip
        if hidden is not None:
            hidden.append(x)
        if need_weights:
            attns.append(blk.last_attn)
            if blk.cross_attention:
                cross.append(blk.last_cross_attn)
    return x, hidden, attns, cross


# ---------------------------------------------------------------------------
# BERT encoder and MLM head
# ---------------------------------------------------------------------------


class BertEncoder(nn.Module):
    """BERT (Devlin et al. 2019): bidirectional post-norm encoder, optional cross-attention.

    embeddings = LayerNorm(word[ids] + position[0..T-1] + token_type[types])   # (B, T, D)
    each layer: x = LN(x + SelfAttn(x)); [x = LN(x + CrossAttn(x, image))]; x = LN(x + MLP(x))
    """

    def __init__(self, config: TextConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = replace(config or TextConfig(), **overrides)
        self.config = cfg
        D = cfg.dim
        self.word_embeddings = nn.Embedding(cfg.vocab_size, D, padding_idx=cfg.pad_id)
        self.position_embeddings = nn.Embedding(cfg.max_len, D)
        self.token_type_embeddings = (
            nn.Embedding(cfg.type_vocab_size, D) if cfg.type_vocab_size > 0 else None
        )
        self.embed_norm = nn.LayerNorm(D, eps=cfg.eps) if cfg.embed_norm else nn.Identity()
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.blocks = text_blocks(cfg)
        self.final_norm = nn.LayerNorm(D, eps=cfg.eps) if cfg.final_norm else nn.Identity()
        self.pooler = nn.Linear(D, D) if cfg.pooler else None
        init_weights(self)

    def embed(
        self,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """Token ids (B, T) (or word vectors ``inputs_embeds`` (B, T, D)) -> (B, T, D)."""
        cfg, name = self.config, "BertEncoder"
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError(
                f"{name}: pass exactly one of input_ids (B, T) or inputs_embeds (B, T, D)"
            )
        if input_ids is not None:
            check_ids(name, input_ids, cfg)
            x = self.word_embeddings(input_ids)  # (B, T, D)
        else:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != cfg.dim:
                raise ValueError(
                    f"{name}: expected inputs_embeds of shape (B, T, {cfg.dim}), "
                    f"got {tuple(inputs_embeds.shape)}"
                )
            x = inputs_embeds
        B, T = x.shape[:2]
        if position_ids is None:
            check_len(name, T, cfg)
            position_ids = torch.arange(T, device=x.device)[None]  # (1, T)
        x = x + self.position_embeddings(position_ids)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(1, T, dtype=torch.long, device=x.device)
            x = x + self.token_type_embeddings(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError(f"{name}: token_type_ids given but the config has type_vocab_size=0")
        return self.embed_drop(self.embed_norm(x))

    def self_attention_mask(
        self, B: int, T: int, attention_mask: Tensor | None = None, mask: Tensor | None = None,
        device: torch.device | None = None,
    ) -> Tensor | None:  # fmt: skip
        """The (broadcastable) self-attention mask: padding AND causal (if causal) AND ``mask``."""
        pad = key_mask("BertEncoder", attention_mask, B, T, "attention_mask")  # (B, 1, 1, T)
        cm = causal_mask(T, device=device) if self.config.causal else None  # (T, T)
        if mask is not None:
            if mask.dim() not in (2, 3, 4) or tuple(mask.shape[-2:]) != (T, T):
                raise ValueError(
                    f"BertEncoder: expected mask of shape ({T}, {T}), ({B}, {T}, {T}) or "
                    f"({B}, 1|H, {T}, {T}), got {tuple(mask.shape)}"
                )
            # (T, T) / (B, T, T) -> 4-D so that it broadcasts against (B, 1, 1, T) correctly
            mask = mask[:, None] if mask.dim() == 3 else mask
        return merge_masks(pad, cm, mask)

    def forward_layers(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        mask: Tensor | None = None,
        start: int = 0,
        end: int | None = None,
        need_weights: bool = False,
        output_hidden_states: bool = False,
    ) -> TextOutput:
        """Run layers ``start..end-1`` on (B, T, D) hidden states (e.g. ALBEF's fusion half)."""
        B, T, _ = hidden_states.shape
        self_mask = self.self_attention_mask(B, T, attention_mask, mask, hidden_states.device)
        S = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else 0
        ctx_mask = key_mask("BertEncoder", encoder_attention_mask, B, S, "encoder_attention_mask")
        end = self.config.depth if end is None else end
        x, hidden, attns, cross = run_blocks(
            self.blocks[start:end], hidden_states, self_mask, encoder_hidden_states, ctx_mask,
            need_weights, output_hidden_states, "BertEncoder", start,
        )  # fmt: skip
        if end == self.config.depth:
            x = self.final_norm(x)
        pooled = None
        if self.pooler is not None and end == self.config.depth:
            pooled = torch.tanh(self.pooler(x[:, 0]))  # (B, D), BERT's [CLS] summary
        return TextOutput(x, pooled, hidden, attns, cross)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        need_weights: bool = False,
        mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> TextOutput:
        """Encode token ids (B, T).

        attention_mask: (B, T) 1 = token, 0 = padding (keys that nobody attends to).
        encoder_hidden_states: (B, S, kv_dim) image tokens for the cross-attention layers,
            with ``encoder_attention_mask`` (B, S).
        mask: a custom self-attention mask, boolean (True = may attend) or additive,
            of shape (T, T), (B, T, T) or (B, 1|H, T, T); it is combined (AND) with the
            padding mask (and the causal mask when ``causal``); pass no
            ``attention_mask`` to use it alone.
        """
        x = self.embed(input_ids, inputs_embeds, token_type_ids, position_ids)
        return self.forward_layers(
            x, attention_mask, encoder_hidden_states, encoder_attention_mask, mask,
            need_weights=need_weights, output_hidden_states=output_hidden_states,
        )  # fmt: skip

    @classmethod
    def from_hf(cls, model: nn.Module) -> BertEncoder:
        """Copy a ``transformers.BertModel`` (or a model holding one as ``.bert``).

        ``is_decoder=True`` becomes ``causal=True``; layers with ``crossattention``
        keep it (HF adds cross-attention only to decoders, to every layer).
        """
        from minivlm.interop.bert import bert_encoder_from_hf

        return bert_encoder_from_hf(cls, TextConfig, model)



class BertMLMHead(nn.Module):
    """Masked-language-model head of BERT (§3.1): logits = W_e · LN(act(dense(h))) + b.

    ``decoder`` shares its weight with the word embeddings when ``tie_to`` is given
    (as in BERT), so the head adds only ``dense``, ``norm`` and the output bias.
    """

    def __init__(
        self, dim: int, vocab_size: int, act: str = "gelu", eps: float = 1e-12,
        tie_to: nn.Embedding | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.act = get_activation(act)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.decoder = nn.Linear(dim, vocab_size)
        init_weights(self)
        if tie_to is not None:
            self.tie_weights(tie_to)

    def tie_weights(self, embedding: nn.Embedding) -> None:
        """Share the decoder weight with ``embedding`` (its (vocab, dim) weight)."""
        if embedding.weight.shape != self.decoder.weight.shape:
            raise ValueError(
                f"BertMLMHead.tie_weights: expected an embedding of shape "
                f"{tuple(self.decoder.weight.shape)}, got {tuple(embedding.weight.shape)}"
            )
        self.decoder.weight = embedding.weight

    def forward(self, hidden_states: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, vocab) logits."""
        return self.decoder(self.norm(self.act(self.dense(hidden_states))))

    @classmethod
    def from_hf(cls, model: nn.Module, encoder: BertEncoder | None = None) -> BertMLMHead:
        """Copy the head of a ``transformers.BertForMaskedLM`` (``model.cls.predictions``).

        With ``encoder`` (from ``BertEncoder.from_hf(model)``) and HF's decoder tied to
        its word embeddings, the copy is tied to ``encoder.word_embeddings`` too.
        """
        from minivlm.interop.bert import bert_mlm_head_from_hf

        return bert_mlm_head_from_hf(cls, model, encoder)
