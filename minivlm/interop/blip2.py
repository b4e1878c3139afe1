"""BLIP-2 from ``transformers.Blip2ForConditionalGeneration``: image encoder, query tokens,
Q-Former, ``language_projection`` and -- when it is a Llama -- the language model.

HF's vision attention fuses q/k/v into ``qkv`` with biases ``(q_bias, 0, v_bias)``; it is split
into ``q_proj``/``k_proj``/``v_proj`` (the key bias is a zero parameter here). HF's Q-Former
has no text side, so the converted Q-Former has none either (``QFormerConfig.text=False``):
the model runs stage 2 and ``query_features`` equals HF's Q-Former output.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn as nn

from minivlm.interop.common import add_linear, load_converted, sizes_from_hf
from minivlm.nn.lm import DecoderLM
from minivlm.nn.qformer import QFormerConfig
from minivlm.nn.vit import ViTConfig

Tensor = torch.Tensor

__all__ = ["blip2_config_from_hf", "blip2_from_hf", "blip2_state_dict_from_hf"]

SUPPORTED_LMS = ("LlamaForCausalLM",)


def blip2_config_from_hf(config_cls: type[Any], model: nn.Module,
                         language_model: DecoderLM | None) -> Any:  # fmt: skip
    """The ``config_cls`` (:class:`~minivlm.models.blip2.Blip2Config`) of HF ``model``: no
    Q-Former text side; ``lm`` from the converted ``language_model``, or None."""
    vm, qf = model.vision_model, model.qformer
    hv, hq = vm.config, qf.config
    if getattr(hq, "use_qformer_text_input", False):
        warnings.warn("Blip2.from_hf: the Q-Former's text feed-forward networks are not "
                      "copied (no text input in Blip2ForConditionalGeneration)", stacklevel=3)
    if qf.encoder.layer[0].crossattention.attention.key.in_features != hv.hidden_size:
        raise ValueError(
            "Blip2.from_hf: the Q-Former's encoder_hidden_size differs from the vision width"
        )
    vision = ViTConfig(  # BLIP-2's ViT: post-LN on every output token (HF post_layernorm)
        final_norm=True, pre_norm=False, image_size=hv.image_size, patch_size=hv.patch_size,
        in_chans=vm.embeddings.patch_embedding.in_channels,
        **sizes_from_hf(hv, "Blip2.from_hf (vision)", mlp_ratio=True),
    )  # fmt: skip
    qformer = QFormerConfig(
        **sizes_from_hf(hq, "Blip2.from_hf (qformer)", vocab=True),
        cross_attention_freq=hq.cross_attention_frequency,
        num_query_tokens=model.query_tokens.shape[1], text=False,
    )
    lm = language_model.config if language_model is not None else None
    return config_cls(vision=vision, qformer=qformer, lm=lm)


def blip2_state_dict_from_hf(model: nn.Module, with_projection: bool) -> dict[str, Tensor]:
    """minivlm names -> HF tensors for the image encoder, queries, Q-Former (and projection)."""
    vm, qf = model.vision_model, model.qformer
    emb, D = vm.embeddings, vm.config.hidden_size
    sd: dict[str, Tensor] = {
        "vision_encoder.cls_token": emb.class_embedding.reshape(1, 1, D),
        "vision_encoder.pos_embed": emb.position_embedding.reshape(1, -1, D),
        "query_tokens": model.query_tokens,
    }
    add_linear(sd, "vision_encoder.patch_embed", emb.patch_embedding)
    add_linear(sd, "vision_encoder.norm", vm.post_layernorm)
    add_linear(sd, "qformer.embed_norm", qf.layernorm)
    if with_projection:
        add_linear(sd, "language_projection", model.language_projection)
    for i, layer in enumerate(vm.encoder.layers):
        p = f"vision_encoder.blocks.{i}."
        qkv = layer.self_attn.qkv
        bias = qkv.bias if qkv.bias is not None else torch.zeros(3 * D)
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            sd[p + f"attn.{name}.weight"] = qkv.weight[j * D : (j + 1) * D]
            sd[p + f"attn.{name}.bias"] = bias[j * D : (j + 1) * D]
        for dst, src in (("attn.out_proj", layer.self_attn.projection),
                         ("norm1", layer.layer_norm1), ("norm2", layer.layer_norm2),
                         ("mlp.fc1", layer.mlp.fc1), ("mlp.fc2", layer.mlp.fc2)):  # fmt: skip
            add_linear(sd, p + dst, src)
    for i, layer in enumerate(qf.encoder.layer):
        p = f"qformer.blocks.{i}."
        att = layer.attention
        pairs = [("attn.q_proj", att.attention.query), ("attn.k_proj", att.attention.key),
                 ("attn.v_proj", att.attention.value), ("attn.out_proj", att.output.dense),
                 ("norm1", att.output.LayerNorm), ("mlp.fc1", layer.intermediate_query.dense),
                 ("mlp.fc2", layer.output_query.dense),
                 ("norm2", layer.output_query.LayerNorm)]  # fmt: skip
        if layer.has_cross_attention:
            ca = layer.crossattention
            pairs += [("cross_attn.q_proj", ca.attention.query),
                      ("cross_attn.k_proj", ca.attention.key),
                      ("cross_attn.v_proj", ca.attention.value),
                      ("cross_attn.out_proj", ca.output.dense),
                      ("norm_cross", ca.output.LayerNorm)]  # fmt: skip
        for dst, src in pairs:
            add_linear(sd, p + dst, src)
    return sd


def blip2_from_hf(cls: type[nn.Module], config_cls: type[Any], model: nn.Module,
                  with_language_model: bool = True) -> nn.Module:  # fmt: skip
    """Build ``cls`` (:class:`~minivlm.models.blip2.Blip2`, configured by ``config_cls``) from
    HF ``model``.

    A Llama language model is copied with ``DecoderLM.from_hf``. Any other (OPT, T5: the
    published BLIP-2 checkpoints) raises a ValueError naming what is supported, unless
    ``with_language_model=False``: then the image encoder, queries and Q-Former are copied and
    the model has no language model and no projection (``config.lm`` is None).
    """
    if not all(hasattr(model, a) for a in ("vision_model", "qformer", "query_tokens")):
        raise TypeError(
            "Blip2.from_hf: expected a transformers Blip2ForConditionalGeneration, got "
            f"{type(model).__name__}"
        )
    lm = None
    if with_language_model:
        name = type(model.language_model).__name__
        if name not in SUPPORTED_LMS:
            raise ValueError(
                f"Blip2.from_hf: cannot copy a {name} language model; supported: "
                f"{', '.join(SUPPORTED_LMS)}. Pass with_language_model=False to copy the image "
                "encoder, query tokens and Q-Former only (query_features then equals HF's)"
            )
        lm = DecoderLM.from_hf(model.language_model)
    sd = blip2_state_dict_from_hf(model, with_projection=lm is not None)
    new = cls(blip2_config_from_hf(config_cls, model, lm), language_model=lm)
    if lm is not None:
        sd.update({f"language_model.{k}": v for k, v in lm.state_dict().items()})
    return load_converted(new, sd, model.query_tokens, model.training)
