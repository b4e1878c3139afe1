"""``transformers.LxmertModel`` -> :class:`~minivlm.models.lxmert.Lxmert`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from minivlm.interop.common import add_linear, load_converted, sizes_from_hf

Tensor = torch.Tensor


def _attention(sd: dict[str, Tensor], dst: str, norm: str, src: nn.Module) -> None:
    """An HF attention sub-layer (``.self``/``.att`` + ``.output``) -> MultiHeadAttention
    ``dst`` and the LayerNorm ``norm`` after its residual."""
    att = getattr(src, "self", None) or src.att
    for ours, theirs in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
        add_linear(sd, f"{dst}.{ours}", getattr(att, theirs))
    add_linear(sd, f"{dst}.out_proj", src.output.dense)
    add_linear(sd, norm, src.output.LayerNorm)


def _bert_layer(sd: dict[str, Tensor], p: str, attention: nn.Module, inter: nn.Module,
                output: nn.Module) -> None:  # fmt: skip
    """HF self-attention + intermediate + output -> a post-norm TransformerBlock at ``p``."""
    _attention(sd, p + "attn", p + "norm1", attention)
    add_linear(sd, p + "mlp.fc1", inter.dense)
    add_linear(sd, p + "mlp.fc2", output.dense)
    add_linear(sd, p + "norm2", output.LayerNorm)


def lxmert_from_hf(cls: type[nn.Module], config_cls: type, model: nn.Module) -> Any:
    """Copy a ``transformers.LxmertModel`` (or a model holding one as ``.lxmert``) into
    ``cls`` (:class:`~minivlm.models.lxmert.Lxmert`, ``config_cls`` its config)."""
    lx = getattr(model, "lxmert", model)
    if not (hasattr(lx, "embeddings") and hasattr(getattr(lx, "encoder", None), "x_layers")):
        raise TypeError(
            f"Lxmert.from_hf: expected a transformers LxmertModel, got {type(model).__name__}"
        )
    hc = lx.config
    enc = lx.encoder
    cfg = config_cls(
        **sizes_from_hf(hc, "Lxmert.from_hf", vocab=True, skip=("depth", "eps")),
        l_layers=hc.l_layers, r_layers=hc.r_layers, x_layers=hc.x_layers,
        eps=1e-12,  # HF's LXMERT has no layer_norm_eps; its LayerNorms use 1e-12
        type_vocab_size=hc.type_vocab_size,
        visual_feat_dim=hc.visual_feat_dim, visual_pos_dim=hc.visual_pos_dim,
    )  # fmt: skip
    emb = lx.embeddings
    sd: dict[str, Tensor] = {
        "lang.word_embeddings.weight": emb.word_embeddings.weight,
        "lang.position_embeddings.weight": emb.position_embeddings.weight,
        "lang.token_type_embeddings.weight": emb.token_type_embeddings.weight,
    }
    add_linear(sd, "lang.embed_norm", emb.LayerNorm)
    for i, layer in enumerate(enc.layer):
        _bert_layer(sd, f"lang.blocks.{i}.", layer.attention, layer.intermediate, layer.output)
    for i, layer in enumerate(enc.r_layers):
        _bert_layer(sd, f"r_layers.{i}.", layer.attention, layer.intermediate, layer.output)
    for i, layer in enumerate(enc.x_layers):
        p = f"x_layers.{i}."
        _attention(sd, p + "cross_attn", p + "cross_norm", layer.visual_attention)
        _bert_layer(sd, p + "lang.", layer.lang_self_att, layer.lang_inter, layer.lang_output)
        _bert_layer(sd, p + "visn.", layer.visn_self_att, layer.visn_inter, layer.visn_output)
    v = enc.visn_fc
    for ours, theirs in (("visn_fc", v.visn_fc), ("visn_norm", v.visn_layer_norm),
                         ("box_fc", v.box_fc), ("box_norm", v.box_layer_norm),
                         ("pooler", lx.pooler.dense)):  # fmt: skip
        add_linear(sd, ours, theirs)
    return load_converted(cls(cfg), sd, emb.word_embeddings.weight, lx.training)
