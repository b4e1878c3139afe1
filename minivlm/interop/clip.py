"""``transformers`` CLIP -> minivlm: the vision tower and the whole model (the text tower:
:mod:`minivlm.interop.clip_text`).

``clip_vision_state_from_hf`` and ``clip_vision_config_from_hf`` also serve LLaVA, whose
vision tower is CLIP's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from minivlm.interop.common import CLIP_LAYER_NAMES, hf_from_pretrained, sizes_from_hf
from minivlm.nn.causal_text import CausalTextEncoder
from minivlm.nn.vit import ViTConfig, clip_vision_config

Tensor = torch.Tensor


def clip_vision_config_from_hf(hv: Any, where: str) -> ViTConfig:
    """An HF ``CLIPVisionConfig`` -> :func:`~minivlm.nn.vit.clip_vision_config`."""
    return clip_vision_config(
        image_size=hv.image_size, patch_size=hv.patch_size, in_chans=hv.num_channels,
        **sizes_from_hf(hv, where, mlp_ratio=True),
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


def clip_from_hf(cls: type[nn.Module], config_cls: type, model: nn.Module) -> Any:
    """Copy a ``transformers.CLIPModel`` into a ``cls`` (:class:`~minivlm.models.clip.CLIP`,
    ``config_cls`` its CLIPConfig): same config, same weights, same outputs."""
    vm = getattr(model, "vision_model", None)
    if vm is None or not hasattr(model, "text_model") or not hasattr(model, "logit_scale"):
        raise TypeError(f"CLIP.from_hf: expected a transformers CLIPModel, got {type(model)}")
    hv = vm.config
    vision = clip_vision_config_from_hf(hv, "CLIP.from_hf (vision tower)")
    text_encoder = CausalTextEncoder.from_hf(model.text_model)
    cfg = config_cls(
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


def clip_from_pretrained(cls: Any, name_or_path: str, **kwargs: Any) -> Any:
    """``transformers.CLIPModel.from_pretrained(name_or_path, **kwargs)``, copied; failures
    raise a RuntimeError that says how to fix them."""
    hf = hf_from_pretrained("CLIPModel", name_or_path, "CLIP.from_pretrained",
                            "openai/clip-vit-base-patch32", **kwargs)  # fmt: skip
    return cls.from_hf(hf)
