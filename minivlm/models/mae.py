"""Masked autoencoder (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners").

MAE §3: hide a large random subset of the patches (75 %), run the ViT encoder on the *visible*
patches only, then let a small decoder fill in the hidden ones from the encoded visible tokens
plus a shared, learned mask token, and score the pixels it predicts for the hidden patches::

    images (B, C, H, W) -> patches (B, N, p*p*C)
      random_masking: keep the int(N (1 - r)) lowest-noise patches        (§3 "Masking")
      encoder: a plain ViT on [CLS; kept patches + positions], (B, 1+N_keep, D)  (§3 "encoder")
      decoder: Linear D->D', mask tokens back in, unshuffle, + positions, blocks (§3 "decoder")
      pred (B, N, p*p*C); loss = MSE on the masked patches only, optionally on per-patch
      normalised pixels (``norm_pix_loss``)                       (§3 "Reconstruction target")

After pre-training the decoder is thrown away; ``model.encoder`` is an ordinary
:class:`~minivlm.nn.vit.ViT` that sees every patch. Positions are fixed 2-D sin-cos tables (kept
as frozen parameters, as the original code and Hugging Face do). ``MAE.from_hf`` copies a
``transformers.ViTMAEForPreTraining`` (conversion in :mod:`minivlm.interop.mae`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from minivlm.nn.blocks import TransformerBlock
from minivlm.nn.vit import ViT, ViTConfig, ViTSizes, patchify

Tensor = torch.Tensor


@dataclass
class MAEConfig(ViTSizes):
    """Sizes of an MAE (defaults: ViT-B/16 encoder, :class:`~minivlm.nn.vit.ViTSizes`, and an
    8-block 512-wide decoder: MAE §A.1)."""

    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    decoder_mlp_hidden: int = 2048
    qkv_bias: bool = True
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"MAEConfig: mask_ratio must be in [0, 1), got {self.mask_ratio}")
        for name, d in (("dim", self.dim), ("decoder_dim", self.decoder_dim)):
            if d % 4:
                raise ValueError(f"MAEConfig: {name} must be divisible by 4 (2-D sin-cos), got {d}")

    @property
    def patch_dim(self) -> int:
        return self.patch_size**2 * self.in_chans

    def encoder_config(self) -> ViTConfig:
        return ViTConfig(image_size=self.image_size, patch_size=self.patch_size,
                         in_chans=self.in_chans, dim=self.dim, depth=self.depth,
                         num_heads=self.num_heads, mlp_hidden=self.mlp_hidden,
                         qkv_bias=self.qkv_bias, act=self.act, eps=self.eps)


@dataclass
class MAEOutput:
    """loss (scalar); logits (B, N, p*p*C) predicted pixels of every patch (HF layout);
    mask (B, N) 1 = hidden; ids_restore (B, N); latent (B, 1+N_keep, D) encoder output."""

    loss: Tensor
    logits: Tensor
    mask: Tensor
    ids_restore: Tensor
    latent: Tensor


# ---------------------------------------------------------------------------
# The math: positions, masking, targets, loss
# ---------------------------------------------------------------------------


def sincos_pos_embed(grid: int, dim: int, cls_token: bool = True) -> Tensor:
    """Fixed 2-D sin-cos positions (MAE code, after Vaswani et al. §3.5), (1, [1+]grid², dim).

    The first half of the channels encodes the column, the second half the row; each half is
    [sin(pos·ω) | cos(pos·ω)] with ω_i = 1 / 10000^(i / (dim/4)). The CLS row is all zeros.
    """
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                                torch.arange(grid, dtype=torch.float64), indexing="ij")
    parts = []
    for pos in (cols.flatten(), rows.flatten()):  # (grid²,) each, raster order
        angle = pos[:, None] * omega[None]  # (grid², dim/4)
        parts += [angle.sin(), angle.cos()]
    emb = torch.cat(parts, dim=1)  # (grid², dim)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()[None]


def patchify_hwc(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, p*p*C): raster patches, each in (row, col, channel) order, channel
    fastest: the layout of MAE's targets and predictions (and of Hugging Face's ``patchify``)."""
    B, C = images.shape[:2]
    p = patch_size
    x = patchify(images, p)  # (B, N, C*p*p), (C, p, p) order
    return x.reshape(B, -1, C, p, p).permute(0, 1, 3, 4, 2).reshape(B, -1, p * p * C)


def unpatchify_hwc(patches: Tensor, patch_size: int, in_chans: int = 3) -> Tensor:
    """Inverse of :func:`patchify_hwc`: (B, N, p*p*C) -> (B, C, H, W) for a square grid."""
    B, N, _ = patches.shape
    g, p, C = int(round(N**0.5)), patch_size, in_chans
    if g * g != N:
        raise ValueError(f"unpatchify_hwc: {N} patches do not form a square grid")
    x = patches.reshape(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, g, p, g, p)
    return x.reshape(B, C, g * p, g * p)


def random_masking(
    x: Tensor, mask_ratio: float, noise: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample random masking by sorting noise (MAE §3 "Masking", released code).

    x: (B, N, D) tokens; noise: (B, N) (uniform random if None). Keeps the
    N_keep = int(N·(1 - mask_ratio)) tokens with the lowest noise.
    Returns x_kept (B, N_keep, D) in shuffled order, mask (B, N) float in raster order
    (1 = hidden), ids_restore (B, N) with x_shuffled.gather(ids_restore) = raster order,
    ids_keep (B, N_keep) the raster index of each kept token.
    """
    B, N, D = x.shape
    keep = int(N * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(B, N, device=x.device)
    if noise.shape != (B, N):
        raise ValueError(f"random_masking: expected noise of shape ({B}, {N}), got "
                         f"{tuple(noise.shape)}")
    ids_shuffle = noise.argsort(dim=1)  # (B, N): lowest noise first
    ids_restore = ids_shuffle.argsort(dim=1)  # (B, N): where each raster token went
    ids_keep = ids_shuffle[:, :keep]  # (B, N_keep)
    x_kept = x.gather(1, ids_keep[..., None].expand(-1, -1, D))  # (B, N_keep, D)
    mask = torch.ones(B, N, device=x.device, dtype=x.dtype)
    mask[:, :keep] = 0  # shuffled order: the first N_keep are visible ...
    mask = mask.gather(1, ids_restore)  # ... back to raster order
    return x_kept, mask, ids_restore, ids_keep


def mae_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix_loss: bool = False) -> Tensor:
    """Mean squared error per patch, averaged over the hidden patches only (MAE §3).

    pred, target: (B, N, p*p*C); mask (B, N), 1 = hidden. With ``norm_pix_loss`` the target of
    every patch is normalised by its own mean and (unbiased) variance + 1e-6 (§3, Table 1c).
    """
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased, as the released code
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # (B, N)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


class MAE(nn.Module):
    """ViT encoder on visible patches + lightweight decoder with mask tokens (MAE §3, Fig. 1)."""

    def __init__(self, config: MAEConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = replace(config or MAEConfig(), **overrides)
        self.config = cfg
        self.encoder = ViT(cfg.encoder_config())
        g, Dd = cfg.image_size // cfg.patch_size, cfg.decoder_dim
        self.decoder_embed = nn.Linear(cfg.dim, Dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1 + g * g, Dd), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            TransformerBlock(Dd, cfg.decoder_heads, mlp_hidden=cfg.decoder_mlp_hidden,
                             eps=cfg.eps, mlp=cfg.act, qkv_bias=cfg.qkv_bias, out_bias=True,
                             mlp_bias=True)
            for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(Dd, eps=cfg.eps)
        self.decoder_pred = nn.Linear(Dd, cfg.patch_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MAE's init: frozen sin-cos positions, xavier linears, N(0, 0.02) CLS / mask token."""
        cfg, g = self.config, self.config.image_size // self.config.patch_size
        with torch.no_grad():
            self.encoder.pos_embed.copy_(sincos_pos_embed(g, cfg.dim))
            self.decoder_pos_embed.copy_(sincos_pos_embed(g, cfg.decoder_dim))
        self.encoder.pos_embed.requires_grad_(False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.encoder.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    # -- encoder / decoder -----------------------------------------------------

    def encode_visible(
        self, images: Tensor, mask_ratio: float | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Encoder on the visible patches only: (latent (B, 1+N_keep, D), mask, ids_restore)."""
        enc = self.encoder
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        x = enc.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, D)
        pos = enc.pos_embed  # (1, 1+N, D), frozen sin-cos
        x = x + pos[:, 1:]
        x, mask, ids_restore, _ = random_masking(x, ratio, noise)  # (B, N_keep, D)
        cls = (enc.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, 1+N_keep, D)
        for blk in enc.blocks:
            x = blk(x)
        return enc.norm(x), mask, ids_restore

    def decode(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """(B, 1+N_keep, D) -> predicted pixels (B, N, p*p*C): mask tokens fill the gaps."""
        x = self.decoder_embed(latent)  # (B, 1+N_keep, D')
        B, N = ids_restore.shape
        fill = self.mask_token.expand(B, N + 1 - x.shape[1], -1)  # (B, N-N_keep, D')
        seq = torch.cat([x[:, 1:], fill], dim=1)  # (B, N, D'), shuffled order
        seq = seq.gather(1, ids_restore[..., None].expand(-1, -1, seq.shape[-1]))  # raster
        x = torch.cat([x[:, :1], seq], dim=1) + self.decoder_pos_embed  # (B, 1+N, D')
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # drop CLS: (B, N, p*p*C)

    def forward(
        self, pixel_values: Tensor, noise: Tensor | None = None, mask_ratio: float | None = None
    ) -> MAEOutput:
        """Mask, encode, decode, and score the hidden patches."""
        latent, mask, ids_restore = self.encode_visible(pixel_values, mask_ratio, noise)
        pred = self.decode(latent, ids_restore)
        target = patchify_hwc(pixel_values, self.config.patch_size)
        loss = mae_loss(pred, target, mask, self.config.norm_pix_loss)
        return MAEOutput(loss, pred, mask, ids_restore, latent)

    def features(self, pixel_values: Tensor) -> Tensor:
        """Probe features: mean of the encoder's patch tokens, every patch seen, (B, D)."""
        return self.encoder(pixel_values)[:, 1:].mean(dim=1)

    def reconstruct(self, pixel_values: Tensor, out: MAEOutput) -> Tensor:
        """Predicted pixels as images (B, C, H, W), undoing ``norm_pix_loss`` with the true
        per-patch statistics when it is on (the model never predicts them)."""
        pred = out.logits
        if self.config.norm_pix_loss:
            t = patchify_hwc(pixel_values, self.config.patch_size)
            pred = pred * (t.var(-1, keepdim=True) + 1e-6) ** 0.5 + t.mean(-1, keepdim=True)
        return unpatchify_hwc(pred, self.config.patch_size, self.config.in_chans)

    @classmethod
    def from_hf(cls, model: nn.Module) -> MAE:
        """Copy a ``transformers.ViTMAEForPreTraining`` (see :mod:`minivlm.interop.mae`)."""
        from minivlm.interop.mae import mae_from_hf

        return mae_from_hf(cls, MAEConfig, model)
