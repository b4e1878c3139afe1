"""``transformers`` Qwen2-VL / Qwen2.5-VL -> :class:`~minivlm.models.qwen_vl.Qwen2VL`.

HF keeps the vision tower under ``model.visual`` (a Conv3d patch embedding, fused ``qkv``,
``merger.ln_q`` + ``merger.mlp.{0,2}``) and the Qwen2 decoder under ``model.language_model``
(q/k/v with bias, output without); ``lm_head`` may be tied to the embeddings.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from minivlm.interop.common import sizes_from_hf
from minivlm.interop.llama import llama_layers
from minivlm.nn.lm import MRopeLMConfig

Tensor = torch.Tensor


def _rope(cfg: Any) -> dict:
    return dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})


def qwen2vl_config_from_hf(hc: Any, config_cls: type) -> Any:
    """A :class:`~minivlm.models.qwen_vl.Qwen2VLConfig` equal to HF's config ``hc``."""
    vc, tc = hc.vision_config, hc.text_config
    is25 = "2_5" in type(hc).__name__
    if getattr(tc, "use_sliding_window", False):
        raise ValueError("Qwen2VL.from_hf: the LM's sliding-window attention is not supported")
    rope = _rope(tc)
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"Qwen2VL.from_hf: only default M-RoPE is supported, got "
                         f"{rope.get('rope_type')!r}")
    vision_rope = _rope(vc)
    lm = MRopeLMConfig(
        **sizes_from_hf(tc, "Qwen2VL.from_hf (text)", vocab=True, skip=("act", "eps")),
        num_kv_heads=tc.num_key_value_heads,
        rope_base=float(rope.get("rope_theta", 10000.0)), eps=tc.rms_norm_eps,
        tie_embeddings=bool(getattr(hc, "tie_word_embeddings", False)),
        pad_id=None, bos_id=None, eos_id=None, attention_bias=True, out_bias=False,
        mrope_section=tuple(rope.get("mrope_section", (16, 24, 24))),
    )
    if is25:
        if vc.hidden_act != "silu":
            raise ValueError(f"Qwen2VL.from_hf: expected a silu vision MLP, got {vc.hidden_act!r}")
        vision = dict(vision_dim=vc.hidden_size, vision_mlp_hidden=vc.intermediate_size,
                      vision_norm="rmsnorm", vision_mlp="swiglu", window_size=vc.window_size,
                      fullatt_blocks=tuple(vc.fullatt_block_indexes))
        out_dim = vc.out_hidden_size
    else:
        if vc.hidden_act != "quick_gelu":
            raise ValueError(f"Qwen2VL.from_hf: expected quick_gelu, got {vc.hidden_act!r}")
        vision = dict(vision_dim=vc.embed_dim, vision_mlp_hidden=int(vc.embed_dim * vc.mlp_ratio))
        out_dim = vc.hidden_size
    if out_dim != tc.hidden_size:
        raise ValueError(f"Qwen2VL.from_hf: the merger outputs {out_dim}, the LM has width "
                         f"{tc.hidden_size}")
    return config_cls(
        lm=lm, patch_size=vc.patch_size, temporal_patch_size=vc.temporal_patch_size,
        in_chans=vc.in_channels, vision_depth=vc.depth, vision_heads=vc.num_heads,
        vision_rope_base=float(vision_rope.get("rope_theta", 10000.0)),
        merge_size=vc.spatial_merge_size, image_token_id=hc.image_token_id,
        vision_start_id=hc.vision_start_token_id, vision_end_id=hc.vision_end_token_id, **vision,
    )


def qwen2vl_from_hf(cls: type[nn.Module], config_cls: type, hf_model: Any) -> Any:
    """Copy HF's weights into ``cls`` (:class:`~minivlm.models.qwen_vl.Qwen2VL`, ``config_cls``
    its config)."""
    cfg = qwen2vl_config_from_hf(hf_model.config, config_cls)
    model = cls(cfg)
    sd = hf_model.state_dict()
    V, L = "model.visual.", "model.language_model."
    D = cfg.vision_dim
    new: dict[str, Tensor] = {
        "visual.patch_embed.weight": sd[V + "patch_embed.proj.weight"].reshape(D, -1),
        "visual.merge_norm.weight": sd[V + "merger.ln_q.weight"],
        "visual.merge_mlp.fc1.weight": sd[V + "merger.mlp.0.weight"],
        "visual.merge_mlp.fc1.bias": sd[V + "merger.mlp.0.bias"],
        "visual.merge_mlp.fc2.weight": sd[V + "merger.mlp.2.weight"],
        "visual.merge_mlp.fc2.bias": sd[V + "merger.mlp.2.bias"],
        "lm.embed_tokens.weight": sd[L + "embed_tokens.weight"],
        "lm.norm.weight": sd[L + "norm.weight"],
        "lm.lm_head.weight": sd[L + "embed_tokens.weight" if cfg.lm.tie_embeddings
                                else "lm_head.weight"],
    }
    if V + "merger.ln_q.bias" in sd:
        new["visual.merge_norm.bias"] = sd[V + "merger.ln_q.bias"]
    for i in range(cfg.vision_depth):
        src, dst = f"{V}blocks.{i}.", f"visual.blocks.{i}."
        for p in ("weight", "bias"):
            for a, b in (("norm1", "norm1"), ("norm2", "norm2"), ("attn.proj", "attn.out_proj"),
                         ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"),
                         ("mlp.gate_proj", "mlp.gate_proj"), ("mlp.up_proj", "mlp.up_proj"),
                         ("mlp.down_proj", "mlp.down_proj")):
                if f"{src}{a}.{p}" in sd:
                    new[f"{dst}{b}.{p}"] = sd[f"{src}{a}.{p}"]
            q, k, v = sd[f"{src}attn.qkv.{p}"].chunk(3, dim=0)
            new.update({f"{dst}attn.q_proj.{p}": q, f"{dst}attn.k_proj.{p}": k,
                        f"{dst}attn.v_proj.{p}": v})
    new.update(llama_layers(sd, L + "layers.", "lm.blocks.", cfg.lm.depth))
    model.load_state_dict(new, strict=True)
    return model.to(next(hf_model.parameters()).dtype)
