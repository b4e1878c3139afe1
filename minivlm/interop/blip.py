"""BLIP from ``transformers.BlipForImageTextRetrieval``: ViT, the BERT with cross-attention in
every layer (HF ``text_encoder``), the two projections and the ITM head.

HF's vision attention fuses q/k/v into one ``qkv`` Linear (all three with biases); it is split.
The retrieval model has no decoder, no momentum encoders and no temperature, so the converted
model is built with ``decoder=False, use_momentum=False, learn_temp=False``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from minivlm.interop.bert import add_bert_layer
from minivlm.interop.common import add_linear, load_converted, sizes_from_hf
from minivlm.nn.bert import TextConfig
from minivlm.nn.vit import ViTConfig

Tensor = torch.Tensor

__all__ = ["blip_from_hf"]


def _config(config_cls: type[Any], model: nn.Module) -> Any:
    hv, ht = model.config.vision_config, model.config.text_config
    vision = ViTConfig(
        **sizes_from_hf(hv, "Blip.from_hf (vision)", mlp_ratio=True),
        image_size=hv.image_size, patch_size=hv.patch_size,
        in_chans=model.vision_model.embeddings.patch_embedding.in_channels,
    )  # fmt: skip
    text = TextConfig(
        **sizes_from_hf(ht, "Blip.from_hf (text)", vocab=True, mlp_ratio=True),
        type_vocab_size=0, pad_id=ht.pad_token_id,
    )  # fmt: skip
    V = ht.vocab_size
    return config_cls(
        vision=vision, text=text, embed_dim=model.vision_proj.out_features, decoder=False,
        use_momentum=False, learn_temp=False, pad_token_id=ht.pad_token_id or 0,
        sep_token_id=min(ht.sep_token_id, V - 1), dec_token_id=min(ht.bos_token_id, V - 1),
        cls_token_id=min(101, V - 1), enc_token_id=min(ht.bos_token_id + 1, V - 1),
    )  # fmt: skip


def blip_from_hf(cls: type[nn.Module], config_cls: type[Any], model: nn.Module) -> Any:
    """Build ``cls`` (:class:`~minivlm.models.blip.Blip`) from a BlipForImageTextRetrieval."""
    if not all(hasattr(model, a) for a in ("vision_model", "text_encoder", "itm_head")):
        raise TypeError("Blip.from_hf: expected a transformers BlipForImageTextRetrieval, got "
                        f"{type(model).__name__}")  # fmt: skip
    if not model.config.text_config.is_decoder:
        raise ValueError("Blip.from_hf: the text encoder has no cross-attention "
                         "(text_config.is_decoder=False); ITM needs it")  # fmt: skip
    vm, te = model.vision_model, model.text_encoder
    emb, D = vm.embeddings, vm.config.hidden_size
    sd: dict[str, Tensor] = {
        "image_encoder.cls_token": emb.class_embedding.reshape(1, 1, D),
        "image_encoder.pos_embed": emb.position_embedding.reshape(1, -1, D),
        "text_encoder.word_embeddings.weight": te.embeddings.word_embeddings.weight,
        "text_encoder.position_embeddings.weight": te.embeddings.position_embeddings.weight,
    }
    add_linear(sd, "image_encoder.patch_embed", emb.patch_embedding)
    add_linear(sd, "image_encoder.norm", vm.post_layernorm)
    add_linear(sd, "text_encoder.embed_norm", te.embeddings.LayerNorm)
    for name in ("vision_proj", "text_proj", "itm_head"):
        add_linear(sd, name, getattr(model, name))
    for i, layer in enumerate(vm.encoder.layers):
        p = f"image_encoder.blocks.{i}."
        qkv = layer.self_attn.qkv
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            sd[p + f"attn.{name}.weight"] = qkv.weight[j * D : (j + 1) * D]
            sd[p + f"attn.{name}.bias"] = qkv.bias[j * D : (j + 1) * D]
        for dst, src in (("attn.out_proj", layer.self_attn.projection),
                         ("norm1", layer.layer_norm1), ("norm2", layer.layer_norm2),
                         ("mlp.fc1", layer.mlp.fc1), ("mlp.fc2", layer.mlp.fc2)):  # fmt: skip
            add_linear(sd, p + dst, src)
    for i, layer in enumerate(te.encoder.layer):
        add_bert_layer(sd, f"text_encoder.blocks.{i}.", layer, cross=True)
    new = cls(_config(config_cls, model))
    sd["temp"] = new.temp  # a fixed buffer: HF's retrieval model has no temperature
    return load_converted(new, sd, emb.class_embedding, model.training)
