"""``transformers`` Llama -> :class:`~minivlm.nn.lm.DecoderLM` (LLaVA's language model too)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from minivlm.interop.common import rename_layers, sizes_from_hf

Tensor = torch.Tensor

# one HF LlamaDecoderLayer -> a minivlm TransformerBlock (RMSNorm, SwiGLU)
LLAMA_LAYER_NAMES: dict[str, str] = {
    "input_layernorm": "norm1", "post_attention_layernorm": "norm2",
    "self_attn.q_proj": "attn.q_proj", "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj", "self_attn.o_proj": "attn.out_proj",
    "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
}  # fmt: skip


def llama_layers(sd: dict[str, Tensor], src: str, dst: str, depth: int) -> dict[str, Tensor]:
    """HF decoder layers ``{src}{i}.`` -> minivlm blocks ``{dst}{i}.`` (weights and any biases)."""
    return rename_layers(sd, src, dst, depth, LLAMA_LAYER_NAMES)


def decoder_lm_from_hf(cls: type[nn.Module], config_cls: type, hf_model: Any) -> Any:
    """Copy a ``transformers.LlamaForCausalLM`` (or anything with its ``config``,
    ``state_dict()`` and ``parameters()``) into a ``cls`` (:class:`~minivlm.nn.lm.DecoderLM`,
    ``config_cls`` its LMConfig)."""
    hc = hf_model.config
    if getattr(hc, "hidden_act", "silu") != "silu":
        raise ValueError(
            f"DecoderLM.from_hf: expected hidden_act 'silu', got {hc.hidden_act!r}"
        )
    if getattr(hc, "mlp_bias", False):
        raise ValueError("DecoderLM.from_hf: mlp_bias=True is not supported")
    # transformers >= 5 keeps RoPE settings in rope_parameters; 4.x in rope_theta/rope_scaling
    rope_params = (getattr(hc, "rope_parameters", None) or getattr(hc, "rope_scaling", None)
                   or {})
    rope_type = rope_params.get("rope_type", rope_params.get("type", "default"))
    if rope_type != "default":
        raise ValueError(
            f"DecoderLM.from_hf: only default RoPE is supported, got rope_type {rope_type!r}"
        )
    theta = rope_params.get("rope_theta", getattr(hc, "rope_theta", 10000.0))
    eos = hc.eos_token_id[0] if isinstance(hc.eos_token_id, list) else hc.eos_token_id
    head_dim = getattr(hc, "head_dim", None)
    if head_dim == hc.hidden_size // hc.num_attention_heads:
        head_dim = None
    cfg = config_cls(
        **sizes_from_hf(hc, "DecoderLM.from_hf", vocab=True, skip=("act", "eps")),
        num_kv_heads=hc.num_key_value_heads or hc.num_attention_heads,
        rope_base=float(theta), eps=hc.rms_norm_eps,  # SwiGLU (silu checked above), RMSNorm
        tie_embeddings=bool(getattr(hc, "tie_word_embeddings", False)),
        pad_id=hc.pad_token_id, bos_id=hc.bos_token_id, eos_id=eos,
        attention_bias=bool(getattr(hc, "attention_bias", False)), head_dim=head_dim,
    )
    model = cls(cfg)
    sd = hf_model.state_dict()
    new: dict[str, Tensor] = {
        "embed_tokens.weight": sd["model.embed_tokens.weight"],
        "norm.weight": sd["model.norm.weight"],
        "lm_head.weight": sd["model.embed_tokens.weight" if cfg.tie_embeddings
                             else "lm_head.weight"],
    }
    new.update(llama_layers(sd, "model.layers.", "blocks.", cfg.depth))
    model.load_state_dict(new, strict=True)
    return model.to(next(hf_model.parameters()).dtype)
