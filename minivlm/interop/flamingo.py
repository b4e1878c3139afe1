"""``transformers.IdeficsForVisionText2Text`` -> :class:`minivlm.models.flamingo.Flamingo`.

IDEFICS (Laurençon et al. 2023) is the open reproduction of Flamingo. Its layout::

    model.vision_model              CLIP-style ViT; IDEFICS reads ``last_hidden_state`` (all
                                    tokens, no post-layernorm)
    model.perceiver_resampler       latents, blocks.i.0 (attention: context/latents LNs, q/k/v,
                                    output_proj), blocks.i.1 (MLP: ln, fc, c_proj), layer_norm
    model.gated_cross_attn_layers   cross_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj,
                                    input_layernorm, post_attention_layernorm, alpha_*
    model.layers / norm / embed_tokens, lm_head      the Llama decoder; ``additional_*`` rows
                                    hold the extra vocabulary

Unsupported switches (``qk_layer_norms``, ``qk_layer_norms_perceiver``, non-default RoPE, a
non-SiLU LM) raise a ValueError naming them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from minivlm.interop.clip import clip_vision_state_from_hf
from minivlm.interop.common import rename_layers, sizes_from_hf
from minivlm.interop.llama import LLAMA_LAYER_NAMES
from minivlm.nn.lm import LMConfig
from minivlm.nn.vit import ViTConfig

Tensor = torch.Tensor

_GATED = {"input_layernorm": "norm_xattn", "post_attention_layernorm": "norm_dense",
          "cross_attn.q_proj": "xattn.q_proj", "cross_attn.k_proj": "xattn.k_proj",
          "cross_attn.v_proj": "xattn.v_proj", "cross_attn.o_proj": "xattn.out_proj",
          "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj",
          "mlp.down_proj": "mlp.down_proj", "alpha_cross_attn": "alpha_xattn",
          "alpha_dense": "alpha_dense"}  # fmt: skip
_PERCEIVER = {"0.context_layer_norm": "norm_x", "0.latents_layer_norm": "norm_latents",
              "0.q_proj": "attn.q_proj", "0.k_proj": "attn.k_proj", "0.v_proj": "attn.v_proj",
              "0.output_proj": "attn.out_proj", "1.ln": "norm_mlp", "1.fc": "mlp.fc1",
              "1.c_proj": "mlp.fc2"}  # fmt: skip


def _config_from_hf(hc: Any, config_cls: type) -> Any:
    """IdeficsConfig -> FlamingoConfig, refusing what Flamingo here does not implement."""
    pc, vc = hc.perceiver_config, hc.vision_config
    if hc.qk_layer_norms or (hc.use_resampler and pc.qk_layer_norms_perceiver):
        raise ValueError("flamingo_from_hf: qk_layer_norms / qk_layer_norms_perceiver=True are "
                         "not supported")
    if hc.hidden_act != "silu":
        raise ValueError(f"flamingo_from_hf: expected the LM's hidden_act 'silu', "
                         f"got {hc.hidden_act!r}")
    rope = getattr(hc, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"flamingo_from_hf: only default RoPE is supported, got {rope}")
    vision = ViTConfig(**sizes_from_hf(vc, "flamingo_from_hf (vision)"),  # hidden_size: embed_dim
                       image_size=vc.image_size, patch_size=vc.patch_size,
                       pre_norm=True, patch_bias=False)
    eos = hc.eos_token_id[0] if isinstance(hc.eos_token_id, list) else hc.eos_token_id
    text = LMConfig(**sizes_from_hf(hc, "flamingo_from_hf", vocab=True, skip=("act", "eps")),
                    num_kv_heads=hc.num_attention_heads,
                    rope_base=float(rope.get("rope_theta", 10000.0)), eps=hc.rms_norm_eps,
                    pad_id=hc.pad_token_id, bos_id=hc.bos_token_id, eos_id=eos)
    return config_cls(
        vision=vision, text=text, cross_layer_interval=hc.cross_layer_interval,
        use_resampler=bool(hc.use_resampler), resampler_latents=pc.resampler_n_latents,
        resampler_depth=pc.resampler_depth, resampler_heads=pc.resampler_n_heads,
        resampler_head_dim=pc.resampler_head_dim, resampler_mlp_hidden=4 * vc.embed_dim,
        alpha_type=hc.alpha_type, additional_vocab_size=hc.additional_vocab_size,
        image_token_id=0)  # IDEFICS passes image_attention_mask explicitly


def flamingo_from_hf(cls: type[nn.Module], config_cls: type, hf_model: nn.Module) -> Any:
    """Copy the weights of an ``IdeficsForVisionText2Text`` into ``cls`` (Flamingo, built from
    a ``config_cls``); ``model(input_ids, pixel_values, image_attention_mask).logits`` then
    equals HF's (tests/test_flamingo.py). The classes are passed in, so that this module does
    not import the model file that imports it."""
    hc = hf_model.config
    cfg = _config_from_hf(hc, config_cls)
    sd = {k: t.detach() for k, t in hf_model.state_dict().items()}
    pre = "model."
    out: dict[str, Tensor] = {}
    vis = {k[len(pre + "vision_model."):]: sd.pop(k) for k in list(sd)
           if k.startswith(pre + "vision_model.")}
    out.update({f"vision_tower.{k}": t
                for k, t in clip_vision_state_from_hf(vis, cfg.vision.depth).items()})
    if cfg.use_resampler:
        p = pre + "perceiver_resampler."
        out["resampler.latents"] = sd.pop(p + "latents")
        out.update(rename_layers(sd, f"{p}blocks.", "resampler.layers.", cfg.resampler_depth,
                                 _PERCEIVER, pop=True))  # fmt: skip
        for w in ("weight", "bias"):
            out[f"resampler.norm.{w}"] = sd.pop(f"{p}layer_norm.{w}")
    out.update(rename_layers(sd, f"{pre}gated_cross_attn_layers.", "xattn.", cfg.num_cross_layers,
                             _GATED, suffixes=("", ".weight"), pop=True))  # fmt: skip
    for i in range(cfg.text.depth):  # every Llama weight must be there (no biases)
        for src, dst in LLAMA_LAYER_NAMES.items():
            out[f"lm.blocks.{i}.{dst}.weight"] = sd.pop(f"{pre}layers.{i}.{src}.weight")
    out["lm.embed_tokens.weight"] = sd.pop(pre + "embed_tokens.weight")
    out["lm.norm.weight"] = sd.pop(pre + "norm.weight")
    out["lm.lm_head.weight"] = sd.pop("lm_head.weight", out["lm.embed_tokens.weight"])
    if cfg.additional_vocab_size:
        out["extra_embed.weight"] = sd.pop(pre + "embed_tokens.additional_embedding.weight")
        out["extra_head.weight"] = sd.pop("lm_head.additional_fc.weight",
                                          out["extra_embed.weight"])
    sd = {k: t for k, t in sd.items() if not k.endswith(("rotary_emb.inv_freq", "position_ids"))}
    if sd:
        raise ValueError(f"flamingo_from_hf: unexpected IDEFICS weights {sorted(sd)[:5]}")
    with torch.device("meta"):
        model = cls(cfg)
    model.load_state_dict({k: t.clone() for k, t in out.items()}, strict=True, assign=True)
    model.lm.rotary.inv_freq = 1.0 / (cfg.text.rope_base ** (
        torch.arange(0, cfg.text.resolved_head_dim, 2, dtype=torch.float32)
        / cfg.text.resolved_head_dim))
    return model.to(next(hf_model.parameters()).dtype).eval()
