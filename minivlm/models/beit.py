"""BEiT: BERT pre-training of image transformers (Bao et al. 2022).

BEiT §2: an image has two views, its patches (the input) and a grid of discrete *visual tokens*
from a separately trained image tokenizer (the target). Masked image modelling (§2.3) replaces
about 40 % of the patch embeddings, chosen in blocks (§2.5, :func:`blockwise_masking`), by one
learned ``[M]`` embedding, runs the whole sequence through a ViT and predicts the visual token
of every masked patch with a softmax over the codebook::

    images (B, C, H, W) -> patch embeddings (B, N, D); masked rows := e_[M]
      -> [CLS; patches] (+ absolute positions, if any)                        (B, 1+N, D)
      -> blocks: x += γ1·Attn(LN(x), bias=rel. positions); x += γ2·MLP(LN(x))  (layer scale)
      -> LN -> Linear(D, vocab) at every patch                               (B, N, vocab)
    loss = cross-entropy against the tokenizer's ids, masked patches only   (§2.3, Eq. 1)

The paper's tokenizer is DALL-E's discrete VAE, trained by OpenAI on 250M images. Nothing can be
downloaded here and a dVAE (Gumbel-softmax relaxation, temperature schedule, KL term) needs a long
run to give sharp codes, so :class:`VQTokenizer` is a vector-quantised autoencoder (van den Oord
et al. 2017) over single patches: nearest-codebook assignment with a straight-through gradient
trains in seconds and gives BEiT the same thing, one id per patch (BEiT v2 also uses a VQ).
``Beit.from_hf`` copies ``transformers.BeitForMaskedImageModeling`` (:mod:`minivlm.interop.beit`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from minivlm.nn.attention import MultiHeadAttention
from minivlm.nn.blocks import MLP, init_weights
from minivlm.nn.config import divisible, one_of
from minivlm.nn.relpos import RelativePositionBias, relative_position_index  # noqa: F401
from minivlm.nn.vit import ViTSizes, patchify
from minivlm.utils import raise_first

Tensor = torch.Tensor


@dataclass
class BeitConfig(ViTSizes):
    """Sizes and switches of BEiT (defaults: BEiT-B/16 pre-training, §3 and Table 8 of the paper;
    the encoder's sizes are :class:`~minivlm.nn.vit.ViTSizes`, ViT-B/16).

    ``rel_pos``: "shared" (one relative position bias table for all layers, the pre-training
    choice), "layer" (one per layer, used when fine-tuning) or "none"; ``abs_pos`` adds learned
    absolute positions. ``layer_scale`` = initial γ (0 turns layer scale off). ``final_norm``
    layer-norms the encoder output before the MIM head's own norm (HF: not use_mean_pooling).
    """

    vocab_size: int = 8192
    layer_scale: float = 0.1
    rel_pos: str = "shared"
    abs_pos: bool = False
    final_norm: bool = False

    def __post_init__(self) -> None:
        raise_first("BeitConfig: ", [
            one_of(self, "rel_pos", ("shared", "layer", "none")),
            divisible(self, "image_size", "patch_size"),
        ])  # fmt: skip


@dataclass
class BeitOutput:
    """logits (B, N, vocab) at every patch; loss (masked patches only) when labels are given;
    hidden (B, 1+N, D) the encoder output before the MIM head."""

    logits: Tensor
    hidden: Tensor
    loss: Tensor | None = None


# ---------------------------------------------------------------------------
# Blockwise masking (§2.5, Algorithm 1)
# ---------------------------------------------------------------------------


def add_block(mask: Tensor, area: float, aspect: float, top_frac: float, left_frac: float,
              need: int) -> Tensor:
    """One step of BEiT's Algorithm 1: try to mask one block of patches (§2.5).

    mask: (g, g) bool, True = already masked. The block has height round(sqrt(area·aspect)) and
    width round(sqrt(area/aspect)) patches and its top-left corner at row
    int(top_frac·(g-h+1)), column int(left_frac·(g-w+1)) (fractions in [0, 1)). It is kept only
    if it fits strictly inside the grid (h, w < g) and masks between 1 and ``need`` new patches;
    otherwise the mask comes back unchanged. Returns a new (g, g) bool mask.
    """
    g = mask.shape[-1]
    h = int(round(math.sqrt(area * aspect)))
    w = int(round(math.sqrt(area / aspect)))
    out = mask.clone()
    if not (0 < h < g and 0 < w < g):
        return out
    top, left = int(top_frac * (g - h + 1)), int(left_frac * (g - w + 1))
    new = h * w - int(mask[top:top + h, left:left + w].sum())
    if 0 < new <= need:
        out[top:top + h, left:left + w] = True
    return out


def blockwise_masking(
    grid: int, num_masked: int, rng: np.random.Generator, min_block: int = 4,
    min_aspect: float = 0.3, max_tries: int = 10,
) -> Tensor:
    """Mask rectangular blocks of patches until ``num_masked`` are masked (§2.5, Algorithm 1).

    Each try draws an area s ~ U[min_block, still-needed] patches and a log-uniform aspect ratio
    r in [min_aspect, 1/min_aspect] and places the block at random (:func:`add_block`), keeping
    it only if it masks new patches without overshooting the target. When no block fits what is
    still needed, single random patches finish the job (the released code stops there instead),
    so every mask has exactly ``num_masked`` patches. Returns a bool (grid, grid) mask, True =
    masked. (The paper: 75 of 14x14 = 196 patches, blocks of at least 16; scale ``min_block``.)
    """
    if not 0 <= num_masked <= grid * grid:
        raise ValueError(f"blockwise_masking: num_masked must be in [0, {grid * grid}], got "
                         f"{num_masked}")
    mask = torch.zeros(grid, grid, dtype=torch.bool)
    log_lo, log_hi = math.log(min_aspect), math.log(1 / min_aspect)
    while int(mask.sum()) < num_masked:
        need = num_masked - int(mask.sum())
        before = need
        for _ in range(max_tries):
            area = rng.uniform(min_block, max(min_block, need))
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            mask = add_block(mask, area, aspect, rng.uniform(), rng.uniform(), need)
            if num_masked - int(mask.sum()) < before:
                break
        else:  # no block fits what is still needed: fill with single patches
            free = (~mask).flatten().nonzero().flatten().numpy()
            mask.view(-1)[torch.from_numpy(rng.choice(free, size=need, replace=False))] = True
    return mask


def blockwise_mask_batch(batch: int, grid: int, ratio: float, seed: int, **kw) -> Tensor:
    """(B, grid²) bool masks, each from :func:`blockwise_masking` with ``ratio`` of the patches."""
    rng = np.random.default_rng(seed)
    n = int(round(ratio * grid * grid))
    return torch.stack([blockwise_masking(grid, n, rng, **kw).flatten() for _ in range(batch)])


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


class BeitBlock(nn.Module):
    """Pre-norm block with layer scale (§2.6: γ initialised small, so each block starts near
    the identity) and an optional per-layer relative position bias."""

    def __init__(self, cfg: BeitConfig) -> None:
        super().__init__()
        D = cfg.dim
        self.norm1 = nn.LayerNorm(D, eps=cfg.eps)
        self.attn = MultiHeadAttention(D, cfg.num_heads, qkv_bias=True, out_bias=True)
        # BEiT's key projection has no bias: it would add the same q·b to every key's score
        self.attn.k_proj = nn.Linear(D, D, bias=False)
        self.norm2 = nn.LayerNorm(D, eps=cfg.eps)
        self.mlp = MLP(D, cfg.mlp_hidden, act=cfg.act)
        ls = cfg.layer_scale
        self.gamma_1 = nn.Parameter(torch.full((D,), ls)) if ls > 0 else None
        self.gamma_2 = nn.Parameter(torch.full((D,), ls)) if ls > 0 else None
        self.rel_pos = (RelativePositionBias(cfg.grid_size, cfg.num_heads)
                        if cfg.rel_pos == "layer" else None)
        self.last_attn: Tensor | None = None

    def forward(self, x: Tensor, bias: Tensor | None = None, need_weights: bool = False) -> Tensor:
        """x: (B, 1+N, D); bias: additive (1, H, 1+N, 1+N) or None -> (B, 1+N, D)."""
        if self.rel_pos is not None:
            bias = self.rel_pos() if bias is None else bias + self.rel_pos()
        a, self.last_attn = self.attn(self.norm1(x), mask=bias, need_weights=need_weights)
        x = x + (a if self.gamma_1 is None else self.gamma_1 * a)
        m = self.mlp(self.norm2(x))
        return x + (m if self.gamma_2 is None else self.gamma_2 * m)


class Beit(nn.Module):
    """ViT with a mask embedding and a visual-token head (BEiT §2.3, Fig. 1)."""

    def __init__(self, config: BeitConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = replace(config or BeitConfig(), **overrides)
        self.config = cfg
        D = cfg.dim
        self.patch_embed = nn.Conv2d(cfg.in_chans, D, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        n = 1 + cfg.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, n, D)) if cfg.abs_pos else None
        self.rel_pos = (RelativePositionBias(cfg.grid_size, cfg.num_heads)
                        if cfg.rel_pos == "shared" else None)
        self.blocks = nn.ModuleList(BeitBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(D, eps=cfg.eps) if cfg.final_norm else nn.Identity()
        self.mim_norm = nn.LayerNorm(D, eps=cfg.eps)
        self.lm_head = nn.Linear(D, cfg.vocab_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal (0.02) linears, CLS, [M] and positions (BEiT's released code)."""
        init_weights(self, truncated=True)
        for p in (self.cls_token, self.mask_token, self.pos_embed):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    def encode(self, pixel_values: Tensor, bool_masked_pos: Tensor | None = None,
               need_weights: bool = False) -> Tensor:
        """(B, C, H, W) [+ (B, N) bool mask] -> encoder tokens (B, 1+N, D)."""
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)  # (B, N, D)
        B, N, _ = x.shape
        if bool_masked_pos is not None:
            if bool_masked_pos.shape != (B, N):
                raise ValueError(f"Beit: expected bool_masked_pos of shape ({B}, {N}), got "
                                 f"{tuple(bool_masked_pos.shape)}")
            w = bool_masked_pos[..., None].to(x.dtype)  # (B, N, 1)
            x = x * (1 - w) + self.mask_token * w  # masked rows become e_[M]
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, 1+N, D)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        bias = self.rel_pos() if self.rel_pos is not None else None  # (1, H, 1+N, 1+N)
        for blk in self.blocks:
            x = blk(x, bias, need_weights)
        return self.norm(x)

    def forward(self, pixel_values: Tensor, bool_masked_pos: Tensor | None = None,
                labels: Tensor | None = None) -> BeitOutput:
        """Logits over the codebook at every patch; with ``labels`` (B, N) token ids, the
        cross-entropy over the masked patches (§2.3, Eq. 1)."""
        hidden = self.encode(pixel_values, bool_masked_pos)
        logits = self.lm_head(self.mim_norm(hidden[:, 1:]))  # (B, N, vocab)
        loss = None
        if labels is not None:
            if bool_masked_pos is None:
                raise ValueError("Beit: labels need bool_masked_pos (the loss is on masked ones)")
            loss = F.cross_entropy(logits[bool_masked_pos], labels[bool_masked_pos])
        return BeitOutput(logits, hidden, loss)

    def features(self, pixel_values: Tensor) -> Tensor:
        """Probe features: mean of the patch tokens with nothing masked, (B, D)."""
        return self.encode(pixel_values)[:, 1:].mean(dim=1)

    @classmethod
    def from_hf(cls, model: nn.Module) -> Beit:
        """Copy a ``transformers.BeitForMaskedImageModeling`` (see :mod:`minivlm.interop.beit`)."""
        from minivlm.interop.beit import beit_from_hf

        return beit_from_hf(cls, BeitConfig, model)


# ---------------------------------------------------------------------------
# The visual tokenizer: a vector-quantised patch autoencoder
# ---------------------------------------------------------------------------


class VQTokenizer(nn.Module):
    """Patch -> one of ``codebook_size`` ids -> patch (van den Oord et al. 2017, §3.1).

    encoder: MLP (p·p·C -> hidden -> code_dim); quantiser: nearest codebook row;
    decoder: MLP (code_dim -> hidden -> p·p·C). ``loss`` = reconstruction MSE +
    codebook term ‖sg[z] - e‖² + β·commitment ‖z - sg[e]‖², gradients to the encoder pass
    straight through the quantiser.
    """

    def __init__(self, patch_size: int = 8, in_chans: int = 3, codebook_size: int = 64,
                 code_dim: int = 16, hidden: int = 128, beta: float = 0.25) -> None:
        super().__init__()
        self.patch_size, self.in_chans, self.beta = patch_size, in_chans, beta
        d = patch_size * patch_size * in_chans
        self.encoder = MLP(d, hidden, act="relu", out_dim=code_dim)
        self.codebook = nn.Parameter(torch.randn(codebook_size, code_dim) * 0.1)
        self.decoder = MLP(code_dim, hidden, act="relu", out_dim=d)

    def quantise(self, z: Tensor) -> Tensor:
        """(..., code_dim) -> (...,) id of the nearest codebook row (squared distance)."""
        d = (z.pow(2).sum(-1, keepdim=True) - 2 * z @ self.codebook.T
             + self.codebook.pow(2).sum(-1))  # (..., K)
        return d.argmin(dim=-1)

    @torch.no_grad()
    def tokenize(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> visual token ids (B, N), patches in raster order."""
        return self.quantise(self.encoder(patchify(images, self.patch_size)))

    def decode_ids(self, ids: Tensor) -> Tensor:
        """(...,) ids -> (..., C*p*p) patches in (C, p, p) order."""
        return self.decoder(self.codebook[ids])

    def loss(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        """patches (M, C*p*p) -> (total loss, ids (M,))."""
        z = self.encoder(patches)  # (M, code_dim)
        ids = self.quantise(z)
        e = self.codebook[ids]  # (M, code_dim)
        z_q = z + (e - z).detach()  # straight-through: forward e, backward to z
        recon = F.mse_loss(self.decoder(z_q), patches)
        vq = F.mse_loss(e, z.detach()) + self.beta * F.mse_loss(z, e.detach())
        return recon + vq, ids
