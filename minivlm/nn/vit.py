"""Vision Transformer image encoder (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

``patchify`` cuts images into patches; :class:`ViT` embeds them, prepends a
CLS token, adds learned positions and runs pre-norm transformer blocks.
``ViT.from_timm`` copies a timm ``VisionTransformer`` so that ``vit(x)`` equals
``timm_model.forward_features(x)`` (the converter: :mod:`minivlm.interop.timm_vit`).
:func:`clip_vision_config` is CLIP's variant (also LLaVA's vision tower).
For images padded to a common size (ViLT): :func:`embed_padded_images` (with
:func:`check_padded_images`, :func:`patch_grid_mask`, :func:`interpolate_patch_positions`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from minivlm.nn.blocks import TransformerBlock, get_activation, init_weights
from minivlm.nn.config import MLPHidden, TransformerSizes, divisible, one_of
from minivlm.utils import raise_first

Tensor = torch.Tensor


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into non-overlapping square patches (ViT §3.1).

    images: (B, C, H, W) with H and W divisible by ``patch_size`` = p.
    Returns (B, N, C*p*p), N = (H/p)*(W/p): patches in raster order (row by row,
    left to right), each flattened in (C, p, p) order, the same order as a
    ``Conv2d(C, D, p, stride=p)`` weight reshaped to (D, C*p*p).
    """
    if images.dim() != 4:
        raise ValueError(
            f"patchify: expected images of shape (B, C, H, W), got {tuple(images.shape)}"
        )
    B, C, H, W = images.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"patchify: image size {H}x{W} is not divisible by patch_size {p}")
    x = images.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p)
    return x.reshape(B, (H // p) * (W // p), C * p * p)  # (B, N, C*p*p)


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass
class PatchGrid:
    """The image a patch embedding reads, ``in_chans`` x ``image_size`` x ``image_size``, cut into
    ``patch_size`` squares (defaults: ViT-B/16's 224 px RGB), with ``grid_size`` and
    ``num_patches``. A field group (:mod:`minivlm.nn.config`) of the ViT, ViLT, MAE, BEiT and
    VLMo configs."""

    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3

    @property
    def grid_size(self) -> int:
        """Patches per side at the configured image size (``image_size // patch_size``)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


@dataclass
class ViTSizes(TransformerSizes, PatchGrid):
    """The sizes of a pre-norm ViT encoder as a model's config names them (defaults: ViT-B/16 at
    224 px, :class:`PatchGrid` and :class:`~minivlm.nn.config.TransformerSizes`, with LayerNorm
    eps 1e-6): a base of the MAE, BEiT and VLMo configs, which add their own heads and switches."""

    eps: float = 1e-6  # TransformerSizes' field, ViT's default


@dataclass
class ViTConfig(TransformerSizes, PatchGrid, MLPHidden):
    """Sizes and switches of a Vision Transformer (defaults: ViT-B/16 at 224 px: the
    :class:`PatchGrid` and :class:`~minivlm.nn.config.TransformerSizes` defaults, with the MLP
    width from ``mlp_ratio`` and LayerNorm eps 1e-6).

    ``pre_norm`` adds a LayerNorm between the embeddings and the first block
    (CLIP's ``ln_pre``); ``final_norm`` normalises every output token;
    ``fc_norm`` instead normalises the pooled vector (timm's choice for
    ``global_pool="avg"``). ``num_classes > 0`` adds a linear classifier head.
    """

    mlp_ratio: float = 4.0
    mlp_hidden: int | None = None  # TransformerSizes' field; None: int(dim * mlp_ratio)
    eps: float = 1e-6  # TransformerSizes' field, ViT's default
    qkv_bias: bool = True
    class_token: bool = True
    pre_norm: bool = False
    final_norm: bool = True
    fc_norm: bool = False
    patch_bias: bool = True
    dropout: float = 0.0
    num_classes: int = 0
    global_pool: str = "token"  # "token" (CLS) or "avg" (mean of patch tokens)

    def __post_init__(self) -> None:
        raise_first("ViTConfig: ", [
            divisible(self, "image_size", "patch_size"),
            divisible(self, "dim", "num_heads"),
            one_of(self, "global_pool", ("token", "avg")),
            (self.global_pool != "token" or self.class_token,
             "global_pool='token' needs class_token=True (or use 'avg')"),
        ])  # fmt: skip
        get_activation(self.act)  # raises a clear error for an unknown name

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches (1 for the CLS token, else 0)."""
        return int(self.class_token)


def clip_vision_config(**overrides) -> ViTConfig:
    """CLIP's image encoder as a :class:`ViTConfig` (ViT-B/32 at 224 px unless overridden).

    CLIP's ViT differs from the original ViT in three small ways (Radford et al. 2021, §2.4):
    a LayerNorm on the embeddings before the first block (``pre_norm``, HF's ``pre_layrnorm``),
    the ``quick_gelu`` activation x·σ(1.702x), and LayerNorm eps 1e-5. Its patch embedding has
    no bias.
    """
    base = dict(
        image_size=224, patch_size=32, dim=768, depth=12, num_heads=12, act="quick_gelu",
        eps=1e-5, pre_norm=True, final_norm=True, patch_bias=False, class_token=True,
        global_pool="token",
    )  # fmt: skip
    return ViTConfig(**{**base, **overrides})


@dataclass
class ViTOutput:
    """What :meth:`ViT.encode` returns.

    last_hidden_state: (B, P+N, D) all tokens after the final norm (= ``vit(x)``).
    hidden_states: depth+1 tensors (B, P+N, D): the input to block 0 (after the
        optional pre-norm), then the output of every block, before the final norm.
        ``hidden_states[-2]`` is the penultimate layer LLaVA feeds its projector.
    attentions: depth tensors (B, H, P+N, P+N) of attention weights.
    """

    last_hidden_state: Tensor
    hidden_states: list[Tensor] | None = None
    attentions: list[Tensor] | None = None


# ---------------------------------------------------------------------------
# Position embeddings at another resolution
# ---------------------------------------------------------------------------


def resample_pos_embed(
    pos_embed: Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
) -> Tensor:
    """Resize learned patch positions to another patch grid (as timm's ``resample_abs_pos_embed``).

    pos_embed: (1, P + h*w, D) with P prefix (CLS) positions, which are kept as they are;
    the (h, w) grid of patch positions is resized to ``new_grid`` with bicubic
    interpolation (antialiased when shrinking). Returns (1, P + H'*W', D).
    Fine-tuning at a higher resolution than pre-training relies on this (ViT §3.2).
    """
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    P = num_prefix_tokens
    D = pos_embed.shape[-1]
    n_old = P + old_grid[0] * old_grid[1]
    if pos_embed.dim() != 3 or pos_embed.shape[1] != n_old:
        raise ValueError(
            f"resample_pos_embed: expected pos_embed of shape (1, {n_old}, D) "
            f"for a {old_grid} grid with {P} prefix tokens, got {tuple(pos_embed.shape)}"
        )
    prefix, grid = pos_embed[:, :P], pos_embed[:, P:]  # (1, P, D), (1, h*w, D)
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], D).permute(0, 3, 1, 2)  # (1, D, h, w)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, D).to(pos_embed.dtype)  # (1, H'*W', D)
    return torch.cat([prefix, grid], dim=1)


# ---------------------------------------------------------------------------
# Images padded to a common size (ViLT §3.1, as Hugging Face's ViltEmbeddings)
# ---------------------------------------------------------------------------


def check_padded_images(
    pixel_values: Tensor, pixel_mask: Tensor | None, in_chans: int, patch_size: int, where: str
) -> None:
    """(B, in_chans, H, W) float images, H and W multiples of ``patch_size``, and an optional
    (B, H, W) ``pixel_mask``; otherwise a clear error naming ``where``."""
    if not isinstance(pixel_values, Tensor) or pixel_values.dim() != 4:
        shape = (
            tuple(pixel_values.shape)
            if isinstance(pixel_values, Tensor)
            else type(pixel_values).__name__
        )
        raise ValueError(
            f"{where}: expected pixel_values of shape (B, {in_chans}, H, W), got {shape}"
        )
    B, C, H, W = pixel_values.shape
    if C != in_chans:
        raise ValueError(
            f"{where}: expected {in_chans} channels in pixel_values (B, C, H, W), got shape "
            f"{tuple(pixel_values.shape)}"
        )
    if not pixel_values.is_floating_point():
        raise TypeError(f"{where}: expected floating-point pixel_values, got {pixel_values.dtype}")
    if H % patch_size or W % patch_size:
        raise ValueError(
            f"{where}: image size {H}x{W} is not divisible by patch_size {patch_size}; "
            "pad images at the right/bottom (and pass pixel_mask) as ViltImageProcessor does"
        )
    if pixel_mask is not None and tuple(pixel_mask.shape) != (B, H, W):
        raise ValueError(
            f"{where}: expected pixel_mask of shape ({B}, {H}, {W}) (1 = real pixel), got "
            f"{tuple(pixel_mask.shape)}"
        )


def patch_grid_mask(
    pixel_mask: Tensor, grid: tuple[int, int], where: str
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """(B, H, W) 1/0 pixel mask -> (B, h*w) 1/0 patch mask and the real rows/columns (B,), (B,).

    The mask is resized to the (h, w) patch grid with nearest sampling, so a patch is padding
    where the mask is 0 at its sampled pixel (HF's rule). Real pixels must start at the top
    left (images padded at the right and bottom).
    """
    grid_mask = F.interpolate(pixel_mask[:, None].float(), size=grid)[:, 0].long()  # (B, h, w)
    vh = grid_mask[:, :, 0].sum(dim=1)  # (B,) real patch rows (first column)
    vw = grid_mask[:, 0, :].sum(dim=1)  # (B,) real patch columns (first row)
    if bool((vh == 0).any() | (vw == 0).any()):
        bad = ((vh == 0) | (vw == 0)).nonzero().flatten().tolist()
        raise ValueError(
            f"{where}: pixel_mask of images {bad} has no real patch at the top left; real "
            "pixels must start at the top-left corner (padding right/bottom)"
        )
    return grid_mask.flatten(1), (vh, vw)


def interpolate_patch_positions(
    patch_pos: Tensor,
    old_grid: tuple[int, int],
    grid: tuple[int, int],
    valid_hw: tuple[Tensor, Tensor] | None = None,
    batch: int = 1,
) -> Tensor:
    """Learned patch positions (1, g*g, D) for an (h, w) patch grid, (B or 1, h*w, D).

    The (g, g) table is resized with bilinear interpolation (``align_corners=True``, as ViLT's
    code and HF do). With ``valid_hw`` = per-image numbers of real patch rows and columns
    (B,), (B,), each image gets the table resized to its own real region, and zeros at its
    padding patches.
    """
    (g, g2), D = old_grid, patch_pos.shape[-1]
    (h, w) = grid
    table = patch_pos.transpose(1, 2).reshape(1, D, g, g2)  # (1, D, g, g)

    def resize(size: tuple[int, int]) -> Tensor:
        if size == (g, g2):
            return table
        return F.interpolate(table, size=size, mode="bilinear", align_corners=True)

    if valid_hw is None:  # every patch is real: one table for the whole batch
        return resize((h, w)).flatten(2).transpose(1, 2)  # (1, h*w, D)
    vh, vw = valid_hw
    out = table.new_zeros(batch, D, h, w)  # (B, D, h, w), zero at padding patches
    for hv, wv in torch.stack([vh, vw], dim=1).unique(dim=0).tolist():
        rows = ((vh == hv) & (vw == wv)).nonzero().flatten()
        out[rows, :, :hv, :wv] = resize((hv, wv))
    return out.flatten(2).transpose(1, 2)  # (B, h*w, D)


def embed_padded_images(
    pixel_values: Tensor,
    pixel_mask: Tensor | None,
    patch_embed: nn.Conv2d,
    cls_token: Tensor,
    pos_embed: Tensor,
    where: str = "embed_padded_images",
) -> tuple[Tensor, Tensor]:
    """ViT's embedding of images padded at the right and bottom (ViLT §3.1, HF's rule).

    pixel_values (B, C, H, W), pixel_mask (B, H, W) 1/0 or None; ``patch_embed`` the
    Conv2d(C, D, p, stride p), ``cls_token`` (1, 1, D), ``pos_embed`` (1, 1 + g*g, D) learned
    for a (g, g) grid (the caller keeps them as its own parameters). Returns the tokens
    [CLS + pos[0]; patch_i + pos_i] (B, 1+N, D), patches in raster order, with the positions
    resized to each image's real patch region (zeros at padding patches), and their 1/0 mask
    (B, 1+N). A patch is padding where the mask, resized to the grid (nearest), is 0.
    """
    x = patch_embed(pixel_values.to(patch_embed.weight.dtype))  # (B, D, h, w)
    B, D, h, w = x.shape
    g = int(round((pos_embed.shape[1] - 1) ** 0.5))
    if pixel_mask is None:
        patch_mask = torch.ones(B, h * w, dtype=torch.long, device=x.device)  # (B, N)
        pos = interpolate_patch_positions(pos_embed[:, 1:], (g, g), (h, w))  # (1, N, D)
    else:  # (B, N) 1/0 and the numbers of real patch rows and columns (B,), (B,)
        patch_mask, valid_hw = patch_grid_mask(pixel_mask, (h, w), where)
        pos = interpolate_patch_positions(pos_embed[:, 1:], (g, g), (h, w), valid_hw, B)
    patches = x.flatten(2).transpose(1, 2) + pos  # (B, N, D)
    cls = (cls_token + pos_embed[:, :1]).expand(B, -1, -1)  # (B, 1, D)
    mask = torch.cat([patch_mask.new_ones(B, 1), patch_mask], dim=1)  # (B, 1+N)
    return torch.cat([cls, patches], dim=1), mask  # (B, 1+N, D), (B, 1+N)


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


class ViT(nn.Module):
    """Vision Transformer image encoder (Dosovitskiy et al. 2021, §3.1, Eq. 1-4).

    images (B, C, H, W)
      -> patch embedding: ``Conv2d(C, D, p, stride=p)``, which is exactly
         ``patchify(images, p) @ W.reshape(D, C*p*p).T + b`` (a linear map of
         each flattened patch; the convolution is just the faster way)
      -> prepend the learned CLS token, add learned positions (1+N, D)
      -> [pre-norm] -> ``depth`` pre-norm :class:`TransformerBlock` s -> final LayerNorm
      -> (B, 1+N, D): ``vit(images)``, equal to timm's ``forward_features``.

    Images of another size than ``config.image_size`` (divisible by the patch
    size) work too: the patch positions are interpolated (:func:`resample_pos_embed`).
    """

    def __init__(self, config: ViTConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = replace(config or ViTConfig(), **overrides)
        self.config = cfg
        D, p = cfg.dim, cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.in_chans, D, kernel_size=p, stride=p, bias=cfg.patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_prefix_tokens + cfg.num_patches, D))
        self.pos_drop = nn.Dropout(cfg.dropout)
        self.norm_pre = nn.LayerNorm(D, eps=cfg.eps) if cfg.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(
            TransformerBlock(
                D,
                cfg.num_heads,
                mlp_hidden=cfg.hidden,
                eps=cfg.eps,
                mlp=cfg.act,
                qkv_bias=cfg.qkv_bias,
                out_bias=True,
                mlp_bias=True,
                prenorm=True,
                dropout=cfg.dropout,
            )
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(D, eps=cfg.eps) if cfg.final_norm else nn.Identity()
        self.fc_norm = nn.LayerNorm(D, eps=cfg.eps) if cfg.fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(D, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm-style init: truncated normal (std 0.02) for linears and positions."""
        init_weights(self, truncated=True)
        # the patch embedding is a linear map of C*p*p pixels: LeCun-style fan-in init
        w = self.patch_embed.weight
        nn.init.trunc_normal_(w, std=(1.0 / w[0].numel()) ** 0.5)
        if self.patch_embed.bias is not None:
            nn.init.zeros_(self.patch_embed.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)

    # -- pieces -------------------------------------------------------------

    @property
    def num_prefix_tokens(self) -> int:
        return self.config.num_prefix_tokens

    def _check_images(self, images: Tensor) -> None:
        cfg = self.config
        if not isinstance(images, Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(
                f"ViT: expected images of shape (B, {cfg.in_chans}, H, W), got {shape}"
            )
        if images.shape[1] != cfg.in_chans:
            raise ValueError(
                f"ViT: expected {cfg.in_chans} channels in images (B, C, H, W), got shape "
                f"{tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise TypeError(f"ViT: expected floating-point images, got dtype {images.dtype}")
        H, W = images.shape[-2:]
        if H % cfg.patch_size or W % cfg.patch_size:
            raise ValueError(
                f"ViT: image size {H}x{W} is not divisible by patch_size {cfg.patch_size}"
            )

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """Position embeddings (1, P + h*w, D) for an (h, w) patch grid."""
        g = self.config.grid_size
        return resample_pos_embed(self.pos_embed, grid, (g, g), self.num_prefix_tokens)

    def embed(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> tokens entering block 0, (B, P+N, D)."""
        self._check_images(images)
        x = self.patch_embed(images)  # (B, D, h, w)
        B, D, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, N, D), patches in raster order
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, 1+N, D)
        x = x + self.pos_embed_for((h, w))
        return self.norm_pre(self.pos_drop(x))

    # -- forward passes -----------------------------------------------------

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> all tokens after the final norm, (B, P+N, D)."""
        x = self.embed(images)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def encode(
        self, images: Tensor, need_weights: bool = False, return_layers: bool = False
    ) -> ViTOutput:
        """Like ``forward`` but also returns per-layer tokens and/or attention weights."""
        x = self.embed(images)
        hidden = [x] if return_layers else None
        attns: list[Tensor] | None = [] if need_weights else None
        for blk in self.blocks:
            x = blk(x, need_weights=need_weights)
            if hidden is not None:
                hidden.append(x)
            if attns is not None:
                attns.append(blk.last_attn)
        return ViTOutput(self.norm(x), hidden, attns)

    def pool(self, tokens: Tensor) -> Tensor:
        """(B, P+N, D) -> (B, D): the CLS token or the mean of the patch tokens."""
        if self.config.global_pool == "token":
            return tokens[:, 0]
        return tokens[:, self.num_prefix_tokens :].mean(dim=1)

    def forward_head(self, tokens: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, P+N, D) tokens -> (B, num_classes) logits (or the pooled (B, D) features)."""
        x = self.head_drop(self.fc_norm(self.pool(tokens)))
        return x if pre_logits else self.head(x)

    def classify(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, num_classes) logits; needs ``num_classes > 0``."""
        if self.config.num_classes <= 0:
            raise ValueError("ViT.classify: this ViT has no head; build it with num_classes > 0")
        return self.forward_head(self.forward(images))

    @classmethod
    def from_timm(cls, model: nn.Module) -> ViT:
        """Build a ViT with the config and weights of a timm ``VisionTransformer``.

        timm fuses the query, key and value projections into one ``qkv`` linear;
        it is split into ``q_proj``, ``k_proj``, ``v_proj``. Features that this
        ViT does not implement (layer scale, register tokens, QK-norm, attention
        pooling, ...) raise a ValueError naming them.
        """
        from minivlm.interop.timm_vit import vit_from_timm

        return vit_from_timm(cls, ViTConfig, model)
