"""``transformers`` ViLT -> :class:`~minivlm.models.vilt.ViLT` (backbone and task heads).

``ViltMLMHead`` / ``ViltForQuestionAnswering`` / ``ViltForImageAndTextRetrieval`` heads are
copied into ``mlm_head`` / ``vqa_head`` / ``itm_head`` (row 1 = HF's ``rank_output``, row 0 = 0).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from minivlm.interop.common import add_linear, load_converted, sizes_from_hf, square

Tensor = torch.Tensor


def vilt_from_hf(cls: type[nn.Module], config_cls: type, model: nn.Module) -> Any:
    """Build a ``cls`` (:class:`~minivlm.models.vilt.ViLT`, ``config_cls`` its ViLTConfig) with
    the config and weights of a Hugging Face ``ViltModel`` (or a ``Vilt...For...`` model
    holding one as ``.vilt``, its head copied too).

    Also accepts the task models, taking ``.vilt`` and copying their head:
    ``ViltForMaskedLM`` -> ``mlm_head`` (tied to the word embeddings, as in HF),
    ``ViltForQuestionAnswering`` -> ``vqa_head``, ``ViltForImageAndTextRetrieval`` ->
    ``itm_head`` with row 1 = HF's ``rank_output`` and row 0 = 0, so
    ``itm_logits[:, 1]`` equals HF's retrieval logit. Other models copy the backbone only.

    ``model(ids, pixels, mask).last_hidden_state`` then equals HF's with its patch
    sampling (``torch.multinomial``) made the identity: HF visits the patches in a random
    order even when it keeps them all, and at most ``max_image_length`` of them when
    that is positive; minivlm keeps all, in raster order.
    """
    vilt = getattr(model, "vilt", model)
    emb = getattr(vilt, "embeddings", None)
    if not (hasattr(emb, "text_embeddings") and hasattr(emb, "patch_embeddings")):
        raise TypeError(
            "ViLT.from_hf: expected a transformers ViltModel (or a Vilt...For... model "
            f"holding one as .vilt), got {type(model).__name__}"
        )
    heads = _heads(model)
    ours = cls(vilt_config_from_hf(config_cls, vilt, heads))
    te = emb.text_embeddings
    mlm = heads["mlm"]
    if mlm is not None and mlm.decoder.weight is not te.word_embeddings.weight:
        # HF's decoder is untied from the word embeddings: give ours its own weight
        ours.mlm_head.decoder.weight = nn.Parameter(ours.mlm_head.decoder.weight.clone())
    sd = vilt_state_from_hf(vilt, heads)
    return load_converted(ours, sd, te.word_embeddings.weight, model.training)


def _heads(model: nn.Module) -> dict[str, nn.Module | None]:
    """The task heads of a ``Vilt...For...`` model: MLM, VQA classifier, retrieval rank."""
    vqa = getattr(model, "classifier", None)
    if vqa is not None and type(model).__name__ != "ViltForQuestionAnswering":
        vqa = None  # NLVR2 / token classifiers have other shapes
    return {"mlm": getattr(model, "mlm_score", None), "vqa": vqa,
            "rank": getattr(model, "rank_output", None)}  # fmt: skip


def vilt_config_from_hf(config_cls: type, vilt: nn.Module, heads: dict[str, Any]) -> Any:
    """An HF ``ViltConfig`` (and which heads exist) -> ``config_cls`` (ViLTConfig)."""
    hc, where = vilt.config, "ViLT.from_hf"
    return config_cls(
        **sizes_from_hf(hc, where, mlp_ratio=True),
        vocab_size=hc.vocab_size, max_text_len=hc.max_position_embeddings,
        type_vocab_size=hc.type_vocab_size,
        modality_type_vocab_size=hc.modality_type_vocab_size,
        pad_id=vilt.embeddings.text_embeddings.word_embeddings.padding_idx,
        image_size=square(hc.image_size, "images", where),
        patch_size=square(hc.patch_size, "patches", where), in_chans=hc.num_channels,
        qkv_bias=hc.qkv_bias, pooler=vilt.pooler is not None,
        itm_head=heads["rank"] is not None, mlm_head=heads["mlm"] is not None,
        num_answers=heads["vqa"][-1].out_features if heads["vqa"] is not None else 0,
    )  # fmt: skip


def vilt_state_from_hf(vilt: nn.Module, heads: dict[str, Any]) -> dict[str, Tensor]:
    """HF ViLT weights (backbone and heads) -> minivlm's parameter names."""
    emb, sd = vilt.embeddings, {}
    te = emb.text_embeddings
    add_linear(sd, "text_embeddings.word_embeddings", te.word_embeddings)
    add_linear(sd, "text_embeddings.position_embeddings", te.position_embeddings)
    add_linear(sd, "text_embeddings.token_type_embeddings", te.token_type_embeddings)
    add_linear(sd, "text_embeddings.embed_norm", te.LayerNorm)
    add_linear(sd, "patch_embed", emb.patch_embeddings.projection)
    sd["cls_token"] = emb.cls_token
    sd["pos_embed"] = emb.position_embeddings
    add_linear(sd, "modality_embeddings", emb.token_type_embeddings)
    for i, layer in enumerate(vilt.encoder.layer):
        p, att = f"blocks.{i}.", layer.attention
        add_linear(sd, p + "norm1", layer.layernorm_before)
        add_linear(sd, p + "attn.q_proj", att.attention.query)
        add_linear(sd, p + "attn.k_proj", att.attention.key)
        add_linear(sd, p + "attn.v_proj", att.attention.value)
        add_linear(sd, p + "attn.out_proj", att.output.dense)
        add_linear(sd, p + "norm2", layer.layernorm_after)
        add_linear(sd, p + "mlp.fc1", layer.intermediate.dense)
        add_linear(sd, p + "mlp.fc2", layer.output.dense)
    add_linear(sd, "norm", vilt.layernorm)
    if vilt.pooler is not None:
        add_linear(sd, "pooler", vilt.pooler.dense)
    if heads["mlm"] is not None:
        add_linear(sd, "mlm_head.dense", heads["mlm"].transform.dense)
        add_linear(sd, "mlm_head.norm", heads["mlm"].transform.LayerNorm)
        add_linear(sd, "mlm_head.decoder", heads["mlm"].decoder)
    if heads["vqa"] is not None:
        for j in (0, 1, 3):  # Linear, LayerNorm, (GELU), Linear
            add_linear(sd, f"vqa_head.{j}", heads["vqa"][j])
    if heads["rank"] is not None:  # 1 logit -> 2 logits [0, s]: same log-odds of "match"
        w, b = heads["rank"].weight, heads["rank"].bias
        sd["itm_head.weight"] = torch.cat([torch.zeros_like(w), w], dim=0)
        sd["itm_head.bias"] = torch.cat([torch.zeros_like(b), b], dim=0)
    return sd
