"""Vision Transformer image encoder (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

(The lead wrote ``patchify``; the ViT module follows below.)
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into non-overlapping square patches (ViT §3.1).

    images: (B, C, H, W) with H and W divisible by ``patch_size`` = p.
    Returns (B, N, C*p*p), N = (H/p)*(W/p): patches in raster order (row by row,
    left to right), each flattened in (C, p, p) order, the same order as a
    ``Conv2d(C, D, p, stride=p)`` weight reshaped to (D, C*p*p).
    """
    if images.dim() != 4:
        raise ValueError(f"patchify: expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    B, C, H, W = images.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"patchify: image size {H}x{W} is not divisible by patch_size {p}")
    x = images.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p)
    return x.reshape(B, (H // p) * (W // p), C * p * p)  # (B, N, C*p*p)
