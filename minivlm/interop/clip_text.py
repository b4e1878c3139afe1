"""``transformers`` CLIP text tower -> :class:`~minivlm.nn.causal_text.CausalTextEncoder`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from minivlm.interop.common import CLIP_LAYER_NAMES, hf_activation, load_converted
from minivlm.nn.bert import TextConfig

Tensor = torch.Tensor


def causal_text_from_hf(cls: type[nn.Module], model: nn.Module) -> Any:
    """Copy a ``transformers.CLIPTextModel`` (or a model holding one as ``.text_model``).

    An HF ``eos_token_id`` of 2 (old configs) becomes ``eos_token_id=None``, the legacy argmax
    rule of :func:`~minivlm.nn.causal_text.pool_eos`.
    """
    tm = model
    while hasattr(tm, "text_model"):
        tm = tm.text_model
    if not (hasattr(tm, "embeddings") and hasattr(tm, "final_layer_norm")):
        raise TypeError(
            "CausalTextEncoder.from_hf: expected a transformers CLIPTextModel, got "
            f"{type(model).__name__}"
        )
    hc = tm.config
    act = hf_activation(hc.hidden_act, "CausalTextEncoder.from_hf")
    eos = getattr(hc, "eos_token_id", None)
    cfg = TextConfig.clip(
        vocab_size=hc.vocab_size, max_len=hc.max_position_embeddings, dim=hc.hidden_size,
        depth=hc.num_hidden_layers, num_heads=hc.num_attention_heads,
        mlp_hidden=hc.intermediate_size, mlp_ratio=hc.intermediate_size / hc.hidden_size,
        act=act, eps=hc.layer_norm_eps, eos_token_id=None if eos == 2 else eos,
    )  # fmt: skip
    emb = tm.embeddings
    sd: dict[str, Tensor] = {
        "token_embedding.weight": emb.token_embedding.weight,
        "position_embedding.weight": emb.position_embedding.weight,
        "final_norm.weight": tm.final_layer_norm.weight,
        "final_norm.bias": tm.final_layer_norm.bias,
    }
    for i, layer in enumerate(tm.encoder.layers):
        for src, dst in CLIP_LAYER_NAMES.items():
            mod = layer.get_submodule(src)
            sd[f"blocks.{i}.{dst}.weight"] = mod.weight
            sd[f"blocks.{i}.{dst}.bias"] = mod.bias
    return load_converted(cls(cfg), sd, emb.token_embedding.weight, tm.training)
