"""CLIP's causal text transformer (Radford et al. 2021, §2.4; GPT-2 layout).

:class:`CausalTextEncoder`: token + position embeddings, pre-norm blocks under a causal mask,
a final LayerNorm; the text is summarised by the feature at the end-of-text token
(:func:`pool_eos`). Sized by :class:`~minivlm.nn.bert.TextConfig` (``TextConfig.clip()``);
checkpoint conversion: :mod:`minivlm.interop.clip_text`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn

from minivlm.nn.attention import causal_mask
from minivlm.nn.bert import (
    TextConfig,
    TextOutput,
    check_ids,
    check_len,
    init_weights,
    key_mask,
    merge_masks,
    run_blocks,
    text_blocks,
)

Tensor = torch.Tensor


def pool_eos(hidden: Tensor, input_ids: Tensor, eos_token_id: int | None) -> Tensor:
    """Feature at the end-of-text token: (B, T, D), (B, T) -> (B, D).

    CLIP summarises a caption by the last layer's output at [EOS] (Radford et
    al. 2021, §2.4). The row's *first* ``eos_token_id`` is used (HF's rule: a
    pad token may equal [EOS], so later ones may be padding).

    ``eos_token_id=None`` applies the legacy rule of Hugging Face CLIP configs
    whose ``eos_token_id`` is 2 (before transformers PR #24773): the position of
    the *largest* token id, which is [EOS] = 49407 in CLIP's vocabulary.
    """
    if hidden.dim() != 3 or input_ids.shape != hidden.shape[:2]:
        raise ValueError(
            f"pool_eos: expected hidden (B, T, D) and input_ids (B, T), got "
            f"{tuple(hidden.shape)} and {tuple(input_ids.shape)}"
        )
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if eos_token_id is None:
        return hidden[rows, input_ids.argmax(dim=-1)]
    is_eos = input_ids == eos_token_id  # (B, T)
    missing = (~is_eos.any(dim=-1)).nonzero().flatten()
    if missing.numel():
        raise ValueError(
            f"pool_eos: rows {missing.tolist()} of input_ids contain no eos_token_id "
            f"{eos_token_id}; every caption must end with it"
        )
    first = is_eos.int().argmax(dim=-1)  # argmax returns the first maximal index
    return hidden[rows, first]  # (B, D)


class CausalTextEncoder(nn.Module):
    """CLIP's text transformer (Radford et al. 2021, §2.4; GPT-2 layout).

    x = token_embedding[ids] + position_embedding[0..T-1]          # (B, T, D)
    x = blocks(x) under a causal mask (AND the padding mask)         # pre-norm
    x = final_norm(x); the caption feature is x at [EOS] (``pool``).
    Cross-attention layers in the config (CoCa's multimodal decoder) are supported.
    """

    def __init__(self, config: TextConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = replace(config or TextConfig.clip(), **overrides)
        if not cfg.causal:
            raise ValueError(
                "CausalTextEncoder: the config has causal=False; use TextConfig.clip(...) "
                "or BertEncoder for a bidirectional encoder"
            )
        self.config = cfg
        D = cfg.dim
        self.token_embedding = nn.Embedding(cfg.vocab_size, D)
        self.position_embedding = nn.Embedding(cfg.max_len, D)
        self.embed_norm = nn.LayerNorm(D, eps=cfg.eps) if cfg.embed_norm else nn.Identity()
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.blocks = text_blocks(cfg)
        self.final_norm = nn.LayerNorm(D, eps=cfg.eps) if cfg.final_norm else nn.Identity()
        init_weights(self)
        nn.init.normal_(self.position_embedding.weight, std=0.01)  # as CLIP's code

    def embed(self, input_ids: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, D) token + position embeddings."""
        check_ids("CausalTextEncoder", input_ids, self.config)
        T = input_ids.shape[1]
        check_len("CausalTextEncoder", T, self.config)
        pos = torch.arange(T, device=input_ids.device)
        x = self.token_embedding(input_ids) + self.position_embedding(pos)[None]  # (B, T, D)
        return self.embed_drop(self.embed_norm(x))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        need_weights: bool = False,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> TextOutput:
        """(B, T) ids (+ (B, T) 1/0 attention_mask) -> TextOutput; last_hidden_state (B, T, D)."""
        x = self.embed(input_ids)
        B, T = input_ids.shape
        name = "CausalTextEncoder"
        mask = merge_masks(
            causal_mask(T, device=x.device),  # (T, T)
            key_mask(name, attention_mask, B, T, "attention_mask"),  # (B, 1, 1, T)
        )
        S = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else 0
        ctx_mask = key_mask(name, encoder_attention_mask, B, S, "encoder_attention_mask")
        x, hidden, attns, cross = run_blocks(
            self.blocks, x, mask, encoder_hidden_states, ctx_mask, need_weights,
            output_hidden_states, name,
        )  # fmt: skip
        return TextOutput(self.final_norm(x), None, hidden, attns, cross)

    def pool(self, hidden: Tensor, input_ids: Tensor) -> Tensor:
        """(B, T, D) -> (B, D) at [EOS] using ``config.eos_token_id`` (see :func:`pool_eos`)."""
        return pool_eos(hidden, input_ids, self.config.eos_token_id)

    @classmethod
    def from_hf(cls, model: nn.Module) -> CausalTextEncoder:
        """Copy a ``transformers.CLIPTextModel`` (or a model holding one as ``.text_model``).

        ``enc(ids, mask).last_hidden_state`` then equals HF's ``last_hidden_state`` and
        ``enc.pool(...)`` its ``pooler_output``; an HF ``eos_token_id`` of 2 (old configs)
        becomes ``eos_token_id=None``, the legacy argmax rule of :func:`pool_eos`.
        """
        from minivlm.interop.clip_text import causal_text_from_hf

        return causal_text_from_hf(cls, model)
