"""timm ``VisionTransformer`` -> :class:`~minivlm.nn.vit.ViT` (config and state map).

timm fuses the query, key and value projections into one ``qkv`` linear; it is split into
``q_proj``, ``k_proj``, ``v_proj``. Features that minivlm's ViT does not implement (layer
scale, register tokens, QK-norm, attention pooling, ...) raise a ValueError naming them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from minivlm.interop.common import load_converted
from minivlm.nn.blocks import get_activation

Tensor = torch.Tensor


def vit_from_timm(cls: type[nn.Module], config_cls: type, model: nn.Module) -> Any:
    """Build a ``cls`` (:class:`~minivlm.nn.vit.ViT`; ``config_cls`` its ViTConfig) with the
    config and weights of a timm ``VisionTransformer``."""
    cfg = config_from_timm(config_cls, model)
    return load_converted(cls(cfg), state_from_timm(model, cfg), next(model.parameters()),
                          model.training)  # fmt: skip


def timm_act_name(act: nn.Module) -> str:
    """Name of our activation that matches a timm activation module (checked numerically)."""
    x = torch.linspace(-5, 5, 201)
    with torch.no_grad():
        y = act(x.clone())
    for name in ("gelu", "gelu_tanh", "quick_gelu", "relu", "silu"):
        if torch.allclose(get_activation(name)(x), y, atol=1e-6):
            return name
    raise ValueError(f"ViT.from_timm: unsupported activation {type(act).__name__}")


def config_from_timm(config_cls: type, model: nn.Module) -> Any:
    try:
        from timm.layers import PatchEmbed
        from timm.layers.mlp import Mlp
        from timm.models.vision_transformer import Attention, Block, VisionTransformer
    except ImportError as e:  # pragma: no cover - timm is a dependency
        raise ImportError("ViT.from_timm needs timm (pip install timm)") from e

    def unsupported(what: str) -> ValueError:
        return ValueError(f"ViT.from_timm: this timm model uses {what}, which minivlm's ViT lacks")

    if type(model) is not VisionTransformer:
        raise TypeError(
            "ViT.from_timm: expected a timm.models.vision_transformer.VisionTransformer, "
            f"got {type(model).__name__}"
        )
    pe = model.patch_embed
    if type(pe) is not PatchEmbed or not isinstance(pe.norm, nn.Identity):
        raise unsupported(f"a {type(pe).__name__} patch embedding with a norm layer")
    if getattr(pe, "dynamic_img_pad", False):
        raise unsupported("dynamic image padding")
    if getattr(model, "reg_token", None) is not None:
        raise unsupported("register tokens")
    if model.pos_embed is None:
        raise unsupported("no position embedding")
    if getattr(model, "no_embed_class", False):
        raise unsupported("no_embed_class (no position for the class token)")
    if getattr(model, "attn_pool", None) is not None:
        raise unsupported("attention pooling (global_pool='map'/'prr')")
    if not isinstance(model.patch_drop, nn.Identity):
        raise unsupported("patch dropout")
    class_token = model.cls_token is not None
    num_classes = model.head.out_features if isinstance(model.head, nn.Linear) else 0
    pool = model.global_pool
    if pool == "":
        if num_classes:
            raise unsupported("global_pool='' with a classifier head")
        pool = "token" if class_token else "avg"
    if pool not in ("token", "avg"):
        raise unsupported(f"global_pool={pool!r}")
    if pool == "avg" and getattr(model, "pool_include_prefix", False):
        raise unsupported("pool_include_prefix=True")
    (ph, pw), (ih, iw) = pe.patch_size, pe.img_size
    if ph != pw or ih != iw:
        raise unsupported(f"non-square patches {pe.patch_size} or images {pe.img_size}")

    blk0 = model.blocks[0]
    for i, blk in enumerate(model.blocks):
        where = f"block {i}: "
        if type(blk) is not Block:
            raise unsupported(where + f"block type {type(blk).__name__}")
        if not (isinstance(blk.ls1, nn.Identity) and isinstance(blk.ls2, nn.Identity)):
            raise unsupported(where + "layer scale (init_values)")
        a = blk.attn
        if type(a) is not Attention:
            raise unsupported(where + f"attention type {type(a).__name__}")
        if not (isinstance(a.q_norm, nn.Identity) and isinstance(a.k_norm, nn.Identity)):
            raise unsupported(where + "QK-norm")
        if not isinstance(getattr(a, "norm", nn.Identity()), nn.Identity):
            raise unsupported(where + "attention scale-norm")
        if getattr(a, "gate", None) is not None:
            raise unsupported(where + "gated attention")
        if a.proj.bias is None:
            raise unsupported(where + "an attention output projection without bias")
        if a.num_heads * a.head_dim != model.embed_dim:
            raise unsupported(where + "a head dimension other than dim / num_heads")
        m = blk.mlp
        if type(m) is not Mlp or not isinstance(m.norm, nn.Identity):
            raise unsupported(where + f"MLP type {type(m).__name__} / MLP norm")
        if m.fc1.bias is None or m.fc2.bias is None:
            raise unsupported(where + "an MLP without biases")
        for norm in (blk.norm1, blk.norm2):
            if not isinstance(norm, nn.LayerNorm) or not norm.elementwise_affine:
                raise unsupported(where + f"norm layer {type(norm).__name__}")

    return config_cls(
        image_size=ih,
        patch_size=ph,
        in_chans=pe.proj.in_channels,
        dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=blk0.attn.num_heads,
        mlp_hidden=blk0.mlp.fc1.out_features,
        mlp_ratio=blk0.mlp.fc1.out_features / model.embed_dim,
        qkv_bias=blk0.attn.qkv.bias is not None,
        act=timm_act_name(blk0.mlp.act),
        eps=blk0.norm1.eps,
        class_token=class_token,
        pre_norm=not isinstance(model.norm_pre, nn.Identity),
        final_norm=not isinstance(model.norm, nn.Identity),
        fc_norm=not isinstance(model.fc_norm, nn.Identity),
        patch_bias=pe.proj.bias is not None,
        num_classes=num_classes,
        global_pool=pool,
    )


def state_from_timm(model: nn.Module, cfg: Any) -> dict[str, Tensor]:
    """timm state dict -> ours (split fused qkv; rename proj -> out_proj)."""
    src = model.state_dict()
    D = cfg.dim
    out: dict[str, Tensor] = {}
    renames = {"patch_embed.proj.": "patch_embed.", "attn.proj.": "attn.out_proj."}
    for k, v in src.items():
        if ".attn.qkv." in k:
            kind = k.rsplit(".", 1)[1]  # weight or bias
            prefix = k.split(".attn.qkv.")[0]
            for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{prefix}.attn.{name}.{kind}"] = v[j * D : (j + 1) * D]
            continue
        for old, new in renames.items():
            k = k.replace(old, new)
        out[k] = v
    return out


