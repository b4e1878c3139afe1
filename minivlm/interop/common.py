"""Shared pieces of the checkpoint converters: activation names and state-dict helpers.

Every converter in :mod:`minivlm.interop` reads a ``transformers`` / ``timm`` model, builds
the matching minivlm config, maps parameter names, and loads the weights with
:func:`load_converted`. The model class keeps a short ``from_hf`` / ``from_timm`` that calls it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

Tensor = torch.Tensor

__all__ = ["ACTIVATIONS", "CLIP_LAYER_NAMES", "add_linear", "hf_activation", "load_converted"]

# Hugging Face ``hidden_act`` names -> minivlm's (minivlm.nn.blocks.get_activation)
ACTIVATIONS: dict[str, str] = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "quick_gelu": "quick_gelu",
    "silu": "silu",
}

# one HF CLIP encoder layer (text and vision towers, CLIPEncoderLayer) -> a TransformerBlock
CLIP_LAYER_NAMES: dict[str, str] = {
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def hf_activation(name: object, where: str) -> str:
    """minivlm's name for the HF activation ``name``; a ValueError naming ``where`` if none."""
    act = ACTIVATIONS.get(name) if isinstance(name, str) else None
    if act is None:
        raise ValueError(
            f"{where}: unsupported hidden_act {name!r}; expected one of {sorted(ACTIVATIONS)}"
        )
    return act


def add_linear(sd: dict[str, Tensor], dst: str, src: nn.Module) -> None:
    """Put ``src.weight`` / ``src.bias`` (a Linear, LayerNorm, Embedding, ...) into ``sd``
    under ``dst``."""
    sd[dst + ".weight"] = src.weight
    if getattr(src, "bias", None) is not None:
        sd[dst + ".bias"] = src.bias


def load_converted(
    module: nn.Module, sd: Mapping[str, Tensor], like: Tensor, training: bool
) -> nn.Module:
    """Load the converted ``sd`` (strict, copied) into ``module`` on ``like``'s device and
    dtype, in train/eval mode ``training``; returns ``module``."""
    module.to(device=like.device, dtype=like.dtype)
    module.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=True)
    return module.train(training)
