"""ViT's patch embedding for images padded to a common size (ViLT §3.1, as Hugging Face's
``ViltEmbeddings`` and ``ViltImageProcessor``).

A batch of images of different sizes is padded at the right and bottom to one size, with a
1/0 ``pixel_mask`` marking the real pixels. :func:`embed_padded_images` embeds such a batch as
ViT does, but resizes the learned patch positions to each image's real patch region and returns
a 1/0 mask of the real patches; :func:`check_padded_images`, :func:`patch_grid_mask` and
:func:`interpolate_patch_positions` are its steps. Images of one size: :class:`~minivlm.nn.vit.ViT`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = ["check_padded_images", "embed_padded_images", "interpolate_patch_positions",
           "patch_grid_mask"]  # fmt: skip


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

    pixel_values (B, C, H, W), pixel_mask (B, H, W) 1/0 or None, checked first
    (:func:`check_padded_images`, errors naming ``where``); ``patch_embed`` the
    Conv2d(C, D, p, stride p), ``cls_token`` (1, 1, D), ``pos_embed`` (1, 1 + g*g, D) learned
    for a (g, g) grid (the caller keeps them as its own parameters). Returns the tokens
    [CLS + pos[0]; patch_i + pos_i] (B, 1+N, D), patches in raster order, with the positions
    resized to each image's real patch region (zeros at padding patches), and their 1/0 mask
    (B, 1+N). A patch is padding where the mask, resized to the grid (nearest), is 0.
    """
    check_padded_images(pixel_values, pixel_mask, patch_embed.in_channels,
                        patch_embed.kernel_size[0], where)  # fmt: skip
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
