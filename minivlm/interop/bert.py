"""``transformers`` BERT -> :class:`~minivlm.nn.bert.BertEncoder` and its MLM head."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from minivlm.interop.common import add_linear, hf_activation, load_converted, sizes_from_hf

Tensor = torch.Tensor


def bert_encoder_from_hf(cls: type[nn.Module], config_cls: type, model: nn.Module) -> Any:
    """Copy a ``transformers.BertModel`` (or a model holding one as ``.bert``) into a ``cls``
    (:class:`~minivlm.nn.bert.BertEncoder`, ``config_cls`` its TextConfig).

    ``is_decoder=True`` becomes ``causal=True``; layers with ``crossattention`` keep it
    (HF adds cross-attention only to decoders, to every layer).
    """
    bert = getattr(model, "bert", model)
    if not (hasattr(bert, "embeddings") and hasattr(bert, "encoder")):
        raise TypeError(
            f"BertEncoder.from_hf: expected a transformers BertModel, got {type(model).__name__}"
        )
    hc = bert.config
    if getattr(hc, "position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            "BertEncoder.from_hf: only absolute position embeddings are supported, got "
            f"{hc.position_embedding_type!r}"
        )
    layers = bert.encoder.layer
    cross = tuple(i for i, layer in enumerate(layers) if getattr(layer, "crossattention", None))
    kv_dim = layers[cross[0]].crossattention.self.key.in_features if cross else None
    emb = bert.embeddings
    cfg = config_cls(
        **sizes_from_hf(hc, "BertEncoder.from_hf", vocab=True, mlp_ratio=True),
        causal=bool(hc.is_decoder), prenorm=False,
        cross_attention_layers=cross or None, kv_dim=kv_dim,
        type_vocab_size=hc.type_vocab_size, pad_id=emb.word_embeddings.padding_idx,
        pooler=getattr(bert, "pooler", None) is not None,
    )  # fmt: skip
    sd = {
        "word_embeddings.weight": emb.word_embeddings.weight,
        "position_embeddings.weight": emb.position_embeddings.weight,
        "token_type_embeddings.weight": emb.token_type_embeddings.weight,
    }
    add_linear(sd, "embed_norm", emb.LayerNorm)
    if cfg.pooler:
        add_linear(sd, "pooler", bert.pooler.dense)
    for i, layer in enumerate(layers):
        add_bert_layer(sd, f"blocks.{i}.", layer, i in cross)
    return load_converted(cls(cfg), sd, emb.word_embeddings.weight, bert.training)


def add_bert_layer(sd: dict[str, Tensor], p: str, layer: nn.Module, cross: bool) -> None:
    """One HF BERT layer (``BertLayer`` or alike: BLIP's text layers) -> a post-norm
    :class:`~minivlm.nn.blocks.TransformerBlock` under prefix ``p`` in ``sd``."""
    parts = [("attn", "norm1", layer.attention)]
    if cross:
        parts.append(("cross_attn", "norm_cross", layer.crossattention))
    for attn, norm, src in parts:
        for ours, theirs in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
            add_linear(sd, f"{p}{attn}.{ours}", getattr(src.self, theirs))
        add_linear(sd, f"{p}{attn}.out_proj", src.output.dense)
        add_linear(sd, p + norm, src.output.LayerNorm)
    add_linear(sd, p + "mlp.fc1", layer.intermediate.dense)
    add_linear(sd, p + "mlp.fc2", layer.output.dense)
    add_linear(sd, p + "norm2", layer.output.LayerNorm)


def bert_mlm_head_from_hf(cls: type[nn.Module], model: nn.Module, encoder: Any = None) -> Any:
    """Copy the head of a ``transformers.BertForMaskedLM`` (``model.cls.predictions``).

    With ``encoder`` (from ``BertEncoder.from_hf(model)``) and HF's decoder tied to its word
    embeddings, the copy is tied to ``encoder.word_embeddings`` too.
    """
    pred = getattr(getattr(model, "cls", None), "predictions", model)
    if not (hasattr(pred, "transform") and hasattr(pred, "decoder")):
        raise TypeError(
            "BertMLMHead.from_hf: expected a BertForMaskedLM or BertLMPredictionHead, "
            f"got {type(model).__name__}"
        )
    config = getattr(model, "config", None)  # a bare prediction head has none: BERT's GELU
    act = hf_activation(config.hidden_act, "BertMLMHead.from_hf") if config is not None else "gelu"
    t = pred.transform
    dim, vocab = pred.decoder.in_features, pred.decoder.out_features
    head = cls(dim, vocab, act=act, eps=t.LayerNorm.eps)
    bias = pred.decoder.bias if pred.decoder.bias is not None else pred.bias
    with torch.no_grad():
        head.dense.weight.copy_(t.dense.weight)
        head.dense.bias.copy_(t.dense.bias)
        head.norm.weight.copy_(t.LayerNorm.weight)
        head.norm.bias.copy_(t.LayerNorm.bias)
        head.decoder.weight.copy_(pred.decoder.weight)
        head.decoder.bias.copy_(bias)
    bert = getattr(model, "bert", None)
    tied = bert is not None and pred.decoder.weight is bert.embeddings.word_embeddings.weight
    if encoder is not None and tied:
        head.tie_weights(encoder.word_embeddings)
    ref = pred.decoder.weight
    return head.to(device=ref.device, dtype=ref.dtype)
