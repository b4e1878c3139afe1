"""``transformers`` CLIP text tower -> :class:`~minivlm.nn.causal_text.CausalTextEncoder`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from minivlm.interop.common import CLIP_LAYER_NAMES, load_converted, sizes_from_hf
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
    eos = getattr(hc, "eos_token_id", None)
    cfg = TextConfig.clip(
        **sizes_from_hf(hc, "CausalTextEncoder.from_hf", vocab=True, mlp_ratio=True),
        eos_token_id=None if eos == 2 else eos,
    )
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
