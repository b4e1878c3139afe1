"""``transformers.ViTMAEForPreTraining`` -> :class:`minivlm.models.mae.MAE`.

The config is read field by field (features minivlm lacks raise a ValueError naming them) and
parameters are renamed with regular expressions; the frozen sin-cos tables are copied as they are.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from minivlm.interop.common import load_converted, sizes_from_hf, square

# one HF ViT-style layer (ViTMAELayer, BeitLayer) -> minivlm names
LAYER_RULES = [
    (r"\.attention\.o_proj\.", ".attn.out_proj."),
    (r"\.attention\.([qkv])_proj\.", r".attn.\1_proj."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
]

MAE_RULES = [
    (r"^vit\.embeddings\.cls_token$", "encoder.cls_token"),
    (r"^vit\.embeddings\.position_embeddings$", "encoder.pos_embed"),
    (r"^vit\.embeddings\.patch_embeddings\.projection\.", "encoder.patch_embed."),
    (r"^vit\.layers\.", "encoder.blocks."),
    (r"^vit\.layernorm\.", "encoder.norm."),
    (r"^decoder\.decoder_layers\.", "decoder_blocks."),
    (r"^decoder\.", ""),
    *LAYER_RULES,
]


def vit_sizes_from_hf(cfg: Any, where: str) -> dict:
    """The :class:`~minivlm.nn.vit.ViTSizes` keyword arguments of a Hugging Face ViT-style
    config (``ViTMAEConfig``, ``BeitConfig``): square images and patches, the default head
    size; a ValueError naming ``where`` otherwise."""
    if getattr(cfg, "head_dim", None) not in (None, cfg.hidden_size // cfg.num_attention_heads):
        raise ValueError(f"{where}: a head_dim other than hidden_size / num_attention_heads")
    return dict(
        image_size=square(cfg.image_size, "images", where),
        patch_size=square(cfg.patch_size, "patches", where),
        in_chans=cfg.num_channels, **sizes_from_hf(cfg, where),
    )


def rename(state: dict, rules: list[tuple[str, str]]) -> dict:
    """Apply every (pattern, replacement) rule in turn to each key of ``state``."""
    out = {}
    for k, v in state.items():
        for pat, rep in rules:
            k = re.sub(pat, rep, k)
        out[k] = v
    return out


def mae_config_from_hf(cfg) -> dict:
    """``ViTMAEConfig`` -> keyword arguments of :class:`minivlm.models.mae.MAEConfig`."""
    return dict(
        **vit_sizes_from_hf(cfg, "MAE.from_hf"),
        decoder_dim=cfg.decoder_hidden_size, decoder_depth=cfg.decoder_num_hidden_layers,
        decoder_heads=cfg.decoder_num_attention_heads,
        decoder_mlp_hidden=cfg.decoder_intermediate_size, qkv_bias=cfg.qkv_bias,
        mask_ratio=cfg.mask_ratio, norm_pix_loss=cfg.norm_pix_loss,
    )


def from_hf_renamed(cls: type[nn.Module], config_cls: type, model: nn.Module, *, expected: str,
                    where: str, config_from_hf: Callable[[Any], dict], rules: list) -> nn.Module:
    """Build ``cls(config_cls(**config_from_hf(model.config)))`` and load the weights of the
    transformers ``model`` (a ``expected``), its parameter names mapped by ``rules``."""
    if type(model).__name__ != expected:
        raise TypeError(f"{where}: expected a transformers {expected}, got "
                        f"{type(model).__name__}")
    ours = cls(config_cls(**config_from_hf(model.config)))
    like = next(model.parameters())
    return load_converted(ours, rename(model.state_dict(), rules), like, model.training)


def mae_from_hf(cls: type[nn.Module], config_cls: type, model: nn.Module) -> nn.Module:
    """Build ``cls(config_cls(...))`` (an MAE) with the config and weights of a
    ``ViTMAEForPreTraining``."""
    return from_hf_renamed(cls, config_cls, model, expected="ViTMAEForPreTraining",
                           where="MAE.from_hf", config_from_hf=mae_config_from_hf,
                           rules=MAE_RULES)
