"""Shared pieces of the checkpoint converters: config sizes and activation names, state-dict
helpers.

Every converter in :mod:`minivlm.interop` reads a ``transformers`` / ``timm`` model, builds
the matching minivlm config (the sizes of a Hugging Face config with :func:`sizes_from_hf`),
maps parameter names, and loads the weights with :func:`load_converted`. The model class keeps
a short ``from_hf`` / ``from_timm`` that calls it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

Tensor = torch.Tensor

__all__ = [
    "ACTIVATIONS",
    "CLIP_LAYER_NAMES",
    "HF_SIZES",
    "HF_VOCAB",
    "add_linear",
    "hf_activation",
    "hf_from_pretrained",
    "load_converted",
    "rename_layers",
    "sizes_from_hf",
    "square",
]

# Hugging Face ``hidden_act`` names -> minivlm's (minivlm.nn.blocks.get_activation)
ACTIVATIONS: dict[str, str] = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "quick_gelu": "quick_gelu",
    "silu": "silu",
}

# Hugging Face config attribute -> minivlm config field: the sizes of a stack of transformer
# blocks (the fields of minivlm.nn.config.TransformerSizes; hidden_act through ACTIVATIONS) ...
HF_SIZES: dict[str, str] = {
    "hidden_size": "dim",
    "num_hidden_layers": "depth",
    "num_attention_heads": "num_heads",
    "intermediate_size": "mlp_hidden",
    "hidden_act": "act",
    "layer_norm_eps": "eps",
}
# ... and those of a text model's embeddings
HF_VOCAB: dict[str, str] = {"vocab_size": "vocab_size", "max_position_embeddings": "max_len"}

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


def sizes_from_hf(
    hc: Any, where: str, *, vocab: bool = False, mlp_ratio: bool = False, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The sizes of the Hugging Face config ``hc`` as keyword arguments of a minivlm config:
    :data:`HF_SIZES` (``dim``, ``depth``, ``num_heads``, ``mlp_hidden``, ``act``, ``eps``), with
    ``vocab=True`` also :data:`HF_VOCAB` (``vocab_size``, ``max_len``), with ``mlp_ratio=True``
    also ``mlp_ratio = intermediate_size / hidden_size`` (for configs with an ``mlp_ratio``);
    less the fields named in ``skip``, which the converter sets itself (LXMERT's three layer
    counts instead of ``depth``). A missing attribute or an unknown activation is a ValueError
    naming ``where``."""
    names = {**HF_SIZES, **(HF_VOCAB if vocab else {})}
    out: dict[str, Any] = {}
    for theirs, ours in names.items():
        if ours in skip:
            continue
        if not hasattr(hc, theirs):
            raise ValueError(f"{where}: expected a config with {theirs!r} (for {ours}), got "
                             f"{type(hc).__name__} without it")  # fmt: skip
        value = getattr(hc, theirs)
        out[ours] = hf_activation(value, where) if ours == "act" else value
    if mlp_ratio:
        out["mlp_ratio"] = hc.intermediate_size / hc.hidden_size
    return out


def square(value: object, what: str, where: str) -> int:
    """An int from an int or a square (n, n) pair (a config's image or patch size); a
    ValueError naming ``where`` and ``what`` otherwise."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{where}: only square {what} are supported, got {value}")
        value = value[0]
    return int(value)


def add_linear(sd: dict[str, Tensor], dst: str, src: nn.Module) -> None:
    """Put ``src.weight`` / ``src.bias`` (a Linear, LayerNorm, Embedding, ...) into ``sd``
    under ``dst``."""
    sd[dst + ".weight"] = src.weight
    if getattr(src, "bias", None) is not None:
        sd[dst + ".bias"] = src.bias


def rename_layers(
    sd: dict[str, Tensor],
    src: str,
    dst: str,
    depth: int,
    names: Mapping[str, str],
    suffixes: tuple[str, ...] = (".weight", ".bias"),
    pop: bool = False,
) -> dict[str, Tensor]:
    """The weights of ``depth`` layers under minivlm's names: ``{src}{i}.{theirs}{suffix}`` ->
    ``{dst}{i}.{ours}{suffix}`` for each layer i, each ``theirs -> ours`` of ``names`` and each
    suffix that ``sd`` holds (a missing one, such as an absent bias, is skipped); ``pop=True``
    takes them out of ``sd``, so that what is left can be reported as unexpected."""
    out: dict[str, Tensor] = {}
    for i in range(depth):
        for theirs, ours in names.items():
            for s in suffixes:
                if (key := f"{src}{i}.{theirs}{s}") in sd:
                    out[f"{dst}{i}.{ours}{s}"] = sd.pop(key) if pop else sd[key]
    return out


def load_converted(
    module: nn.Module, sd: Mapping[str, Tensor], like: Tensor, training: bool
) -> nn.Module:
    """Load the converted ``sd`` (strict, copied) into ``module`` on ``like``'s device and
    dtype, in train/eval mode ``training``; returns ``module``."""
    module.to(device=like.device, dtype=like.dtype)
    module.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=True)
    return module.train(training)


def hf_from_pretrained(
    hf_class: str, name_or_path: str, who: str, example: str, /, **kwargs: Any
) -> nn.Module:
    """``transformers.<hf_class>.from_pretrained(name_or_path, **kwargs)`` in eval mode. Without
    transformers, or when the checkpoint cannot be loaded, a RuntimeError names ``who`` (the
    minivlm method), the cause, and how to fix it (``example``: a checkpoint name that works)."""
    try:
        import transformers

        loader = getattr(transformers, hf_class)
    except ImportError as e:
        raise RuntimeError(f"{who} needs the transformers package: pip install transformers") from e
    try:
        hf = loader.from_pretrained(name_or_path, **kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised with advice, the cause attached
        offline = any(
            os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
            for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
        )
        where = (
            "HF_HUB_OFFLINE is set, so only the local cache was searched"
            if offline
            else "the Hub could not be reached or has no such model"
        )
        raise RuntimeError(
            f"{who}: could not load {name_or_path!r} with "
            f"transformers.{hf_class}.from_pretrained ({where}; {type(e).__name__}: {e}). "
            f"To fix: check the name (e.g. {example!r}); download it once while online (it is "
            "then cached and loads offline), or pass the path of a local folder written by "
            f"{hf_class}.save_pretrained."
        ) from e
    return hf.eval()
