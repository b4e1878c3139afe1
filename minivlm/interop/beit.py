"""``transformers.BeitForMaskedImageModeling`` -> :class:`minivlm.models.beit.Beit`."""

from __future__ import annotations

import torch.nn as nn

from minivlm.interop.mae import LAYER_RULES, from_hf_renamed, vit_sizes_from_hf

BEIT_RULES = [
    (r"^beit\.embeddings\.patch_embeddings\.projection\.", "patch_embed."),
    (r"^beit\.embeddings\.position_embeddings$", "pos_embed"),
    (r"^beit\.embeddings\.", ""),
    (r"^beit\.shared_position_bias\.relative_position_bias_table$", "rel_pos.table"),
    (r"\.relative_position_bias\.relative_position_bias_table$", ".rel_pos.table"),
    (r"^beit\.layers\.", "blocks."),
    (r"\.lambda_([12])$", r".gamma_\1"),
    (r"^beit\.layernorm\.", "norm."),
    (r"^layernorm\.", "mim_norm."),
    *LAYER_RULES,
]


def beit_config_from_hf(cfg) -> dict:
    """``BeitConfig`` -> keyword arguments of :class:`minivlm.models.beit.BeitConfig`."""
    where = "Beit.from_hf"
    if not cfg.use_mask_token:
        raise ValueError(f"{where}: masked image modelling needs use_mask_token=True")
    sizes = vit_sizes_from_hf(cfg, where)
    shared, layer = cfg.use_shared_relative_position_bias, cfg.use_relative_position_bias
    if shared and layer:
        raise ValueError(f"{where}: both a shared and a per-layer relative position bias")
    return dict(
        **sizes,
        vocab_size=cfg.vocab_size, layer_scale=float(cfg.layer_scale_init_value or 0.0),
        rel_pos="shared" if shared else "layer" if layer else "none",
        abs_pos=cfg.use_absolute_position_embeddings, final_norm=not cfg.use_mean_pooling,
    )


def beit_from_hf(cls: type[nn.Module], config_cls: type, model: nn.Module) -> nn.Module:
    """Build ``cls(config_cls(...))`` (a Beit) with the config and weights of a
    ``BeitForMaskedImageModeling``."""
    return from_hf_renamed(cls, config_cls, model, expected="BeitForMaskedImageModeling",
                           where="Beit.from_hf", config_from_hf=beit_config_from_hf,
                           rules=BEIT_RULES)
