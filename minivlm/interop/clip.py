"""``transformers`` CLIP -> minivlm: the text tower, the vision tower, the whole model.

``clip_vision_state_from_hf`` and ``clip_vision_config_from_hf`` also serve LLaVA, whose
vision tower is CLIP's.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from minivlm.interop.common import CLIP_LAYER_NAMES, hf_activation, load_converted
from minivlm.nn.bert import TextConfig
from minivlm.nn.vit import ViTConfig, clip_vision_config

if TYPE_CHECKING:
    from minivlm.models.clip import CLIP
    from minivlm.nn.causal_text import CausalTextEncoder

Tensor = torch.Tensor


def causal_text_from_hf(cls: type[CausalTextEncoder], model: nn.Module) -> CausalTextEncoder:
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


def clip_vision_config_from_hf(hv: Any, where: str) -> ViTConfig:
    """An HF ``CLIPVisionConfig`` -> :func:`~minivlm.nn.vit.clip_vision_config`."""
    return clip_vision_config(
        image_size=hv.image_size, patch_size=hv.patch_size, in_chans=hv.num_channels,
        dim=hv.hidden_size, depth=hv.num_hidden_layers, num_heads=hv.num_attention_heads,
        mlp_hidden=hv.intermediate_size, mlp_ratio=hv.intermediate_size / hv.hidden_size,
        act=hf_activation(hv.hidden_act, where), eps=hv.layer_norm_eps,
    )  # fmt: skip


def clip_vision_state_from_hf(v: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """HF ``CLIPVisionTransformer`` state dict -> :class:`~minivlm.nn.vit.ViT` names.

    ``v`` is consumed (popped); leftover keys raise a ValueError.
    """
    out = {
        "cls_token": v.pop("embeddings.class_embedding").reshape(1, 1, -1),
        "patch_embed.weight": v.pop("embeddings.patch_embedding.weight"),
        "pos_embed": v.pop("embeddings.position_embedding.weight")[None],  # (1, 1+N, D)
    }
    for hf_name, ours in (("pre_layrnorm", "norm_pre"), ("post_layernorm", "norm")):
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = v.pop(f"{hf_name}.{p}")
    for i in range(depth):
        for src, dst in CLIP_LAYER_NAMES.items():
            for p in ("weight", "bias"):
                out[f"blocks.{i}.{dst}.{p}"] = v.pop(f"encoder.layers.{i}.{src}.{p}")
    v.pop("embeddings.position_ids", None)  # a buffer of 0..N, not a weight
    if v:
        raise ValueError(f"from_hf: unexpected CLIP vision tower weights {sorted(v)[:5]}")
    return {k: t.detach().clone() for k, t in out.items()}


def clip_from_hf(cls: type[CLIP], model: nn.Module) -> CLIP:
    """Copy a ``transformers.CLIPModel``: same config, same weights, same outputs."""
    from minivlm.models.clip import CLIPConfig
    from minivlm.nn.causal_text import CausalTextEncoder

    vm = getattr(model, "vision_model", None)
    if vm is None or not hasattr(model, "text_model") or not hasattr(model, "logit_scale"):
        raise TypeError(f"CLIP.from_hf: expected a transformers CLIPModel, got {type(model)}")
    hv = vm.config
    vision = clip_vision_config_from_hf(hv, "CLIP.from_hf (vision tower)")
    text_encoder = CausalTextEncoder.from_hf(model.text_model)
    cfg = CLIPConfig(
        vision=vision,
        text=text_encoder.config,
        embed_dim=model.visual_projection.out_features,
        logit_scale_init=min(float(model.logit_scale.detach()), math.log(100.0)),
    )
    vision_sd = clip_vision_state_from_hf(dict(vm.state_dict()), hv.num_hidden_layers)
    sd: dict[str, Tensor] = {f"image_encoder.{k}": v for k, v in vision_sd.items()}
    sd.update({
        "visual_projection.weight": model.visual_projection.weight,
        "text_projection.weight": model.text_projection.weight,
        "logit_scale": model.logit_scale.reshape(()),
    })  # fmt: skip
    sd = {k: v.detach().clone() for k, v in sd.items()}
    sd.update({f"text_encoder.{k}": v for k, v in text_encoder.state_dict().items()})
    with torch.device("meta"):  # no time spent on a random init that is overwritten
        clip = cls(cfg)
    clip.load_state_dict(sd, strict=True, assign=True)
    return clip.train(model.training)


def clip_from_pretrained(cls: type[CLIP], name_or_path: str, **kwargs: Any) -> CLIP:
    """``transformers.CLIPModel.from_pretrained(name_or_path, **kwargs)``, copied; failures
    raise a RuntimeError that says how to fix them."""
    try:
        from transformers import CLIPModel
    except ImportError as e:
        raise RuntimeError(
            "CLIP.from_pretrained needs the transformers package: pip install transformers"
        ) from e
    try:
        hf = CLIPModel.from_pretrained(name_or_path, **kwargs)
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
            f"CLIP.from_pretrained: could not load {name_or_path!r} with "
            f"transformers.CLIPModel.from_pretrained ({where}; {type(e).__name__}: {e}). "
            "To fix: check the name (e.g. 'openai/clip-vit-base-patch32'); download it once "
            "while online (it is then cached and loads offline), or pass the path of a "
            "local folder written by CLIPModel.save_pretrained."
        ) from e
    return cls.from_hf(hf.eval())
