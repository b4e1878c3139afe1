"""CoCa from ``open_clip.coca_model.CoCa`` (open_clip's ``coca_*`` models).

open_clip's blocks use ``nn.MultiheadAttention``: q/k/v fused in ``in_proj_weight`` (separate
``q/k/v_proj_weight`` when keys have another width, as in the pooler) with one ``in_proj_bias``;
they are split here. Its projections are bare (in, out) matrices, stored transposed as Linear
weights. Supported: the ViT image tower with ``attentional_pool=True`` (open_clip's original
CoCa pooler), no layer scale, LayerNorm eps 1e-5; GELU or QuickGELU.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from minivlm.interop.common import add_linear, load_converted

Tensor = torch.Tensor

__all__ = ["coca_from_open_clip"]


def _add_mha(sd: dict[str, Tensor], dst: str, mha: nn.MultiheadAttention) -> None:
    """nn.MultiheadAttention -> minivlm MultiHeadAttention q/k/v/out_proj under ``dst``."""
    D = mha.embed_dim
    if mha.in_proj_weight is not None:
        ws = mha.in_proj_weight.split(D)
    else:
        ws = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
    bs = mha.in_proj_bias.split(D)
    for name, w, b in zip(("q_proj", "k_proj", "v_proj"), ws, bs, strict=True):
        sd[f"{dst}.{name}.weight"], sd[f"{dst}.{name}.bias"] = w, b
    add_linear(sd, f"{dst}.out_proj", mha.out_proj)


def _add_block(sd: dict[str, Tensor], dst: str, blk: nn.Module, cross: bool = False) -> None:
    """open_clip ResidualAttentionBlock -> TransformerBlock (or a CoCa CrossAttentionBlock)."""
    if type(blk.ls_1).__name__ != "Identity":
        raise ValueError("CoCa.from_open_clip: layer scale (ls_init_value) is not supported")
    _add_mha(sd, dst + ".attn", blk.attn)
    add_linear(sd, dst + (".norm_q" if cross else ".norm1"), blk.ln_1)
    if cross:
        add_linear(sd, dst + ".norm_kv", blk.ln_1_kv)
    add_linear(sd, dst + ".norm2", blk.ln_2)
    add_linear(sd, dst + ".mlp.fc1", blk.mlp.c_fc)
    add_linear(sd, dst + ".mlp.fc2", blk.mlp.c_proj)


def _act(blk: nn.Module) -> str:
    return "quick_gelu" if type(blk.mlp.gelu).__name__ == "QuickGELU" else "gelu"


def _config(config_cls: type[Any], model: nn.Module) -> Any:
    v, t, d = model.visual, model.text, model.text_decoder
    vb, tb, db = v.transformer.resblocks[0], t.transformer.resblocks[0], d.resblocks[0]
    if v.attn_pool is None or v.attn_pool_contrastive is not None:
        raise ValueError("CoCa.from_open_clip: expected open_clip's CoCa pooler "
                         "(vision attentional_pool=True)")  # fmt: skip
    if isinstance(t.text_projection, nn.Linear) or t.cls_emb is None:
        raise ValueError("CoCa.from_open_clip: expected a text tower with embed_cls=True and a "
                         "bias-free text_projection")  # fmt: skip
    p = v.conv1.kernel_size[0]
    vision = dict(image_size=v.grid_size[0] * p, patch_size=p, dim=v.transformer.width,
                  depth=len(v.transformer.resblocks), num_heads=vb.attn.num_heads,
                  mlp_hidden=vb.mlp.c_fc.out_features, act=_act(vb), eps=v.ln_pre.eps,
                  pre_norm=not isinstance(v.ln_pre, nn.Identity))  # fmt: skip
    text = dict(vocab_size=t.vocab_size, max_len=t.context_length, dim=t.width,
                depth=len(t.transformer.resblocks), num_heads=tb.attn.num_heads,
                mlp_hidden=tb.mlp.c_fc.out_features, act=_act(tb), eps=t.ln_final.eps)  # fmt: skip
    return config_cls(
        vision=vision, text=text, embed_dim=v.proj.shape[1], decoder_depth=len(d.resblocks),
        decoder_heads=db.attn.num_heads, decoder_mlp_hidden=db.mlp.c_fc.out_features,
        n_queries=v.attn_pool.query.shape[0], pooler_heads=v.attn_pool.attn.num_heads,
        logit_scale=float(model.logit_scale.detach()), pad_id=model.pad_id,
        bos_id=min(49406, t.vocab_size - 1), eos_id=min(49407, t.vocab_size - 1),
        legacy_cls_mask=not getattr(t, "correct_cls_mask", False),
    )  # fmt: skip


def coca_from_open_clip(cls: type[nn.Module], config_cls: type[Any], model: nn.Module) -> Any:
    """Build ``cls`` (:class:`~minivlm.models.coca.CoCa`) from an open_clip CoCa."""
    if not all(hasattr(model, a) for a in ("visual", "text", "text_decoder")):
        raise TypeError("CoCa.from_open_clip: expected an open_clip CoCa, got "
                        f"{type(model).__name__}")
    if getattr(model, "logit_bias", None) is not None:
        raise ValueError("CoCa.from_open_clip: a logit_bias (SigLIP-style loss) is not supported")
    v, t, d = model.visual, model.text, model.text_decoder
    D = v.transformer.width
    sd: dict[str, Tensor] = {
        "image_encoder.patch_embed.weight": v.conv1.weight,
        "image_encoder.cls_token": v.class_embedding.reshape(1, 1, D),
        "image_encoder.pos_embed": v.positional_embedding[None],
        "pooler.query": v.attn_pool.query,
        "image_proj.weight": v.proj.t(),
        "token_embedding.weight": t.token_embedding.weight,
        "cls_emb": t.cls_emb,
        "pos_embed": t.positional_embedding,
        "text_proj.weight": t.text_projection.t(),
        "lm_proj.weight": d.text_projection.t(),
        "logit_scale": model.logit_scale.reshape(()),
    }
    add_linear(sd, "image_encoder.norm_pre", v.ln_pre)
    for i, blk in enumerate(v.transformer.resblocks):
        _add_block(sd, f"image_encoder.blocks.{i}", blk)
    _add_mha(sd, "pooler.attn", v.attn_pool.attn)
    add_linear(sd, "pooler.norm_q", v.attn_pool.ln_q)
    add_linear(sd, "pooler.norm_kv", v.attn_pool.ln_k)
    add_linear(sd, "ln_post", v.ln_post)
    for i, blk in enumerate(t.transformer.resblocks):
        _add_block(sd, f"text_blocks.{i}", blk)
    add_linear(sd, "text_norm", t.ln_final)
    for i, (sa, ca) in enumerate(zip(d.resblocks, d.cross_attn, strict=True)):
        _add_block(sd, f"decoder_self.{i}", sa)
        _add_block(sd, f"decoder_cross.{i}", ca, cross=True)
    add_linear(sd, "decoder_norm", d.ln_final)
    return load_converted(cls(_config(config_cls, model)), sd, v.conv1.weight, model.training)
