"""Relative position bias (BEiT §2.6, after Swin): a learned score per head for each offset.

Tokens sit on an h x w grid behind one leading CLS token. The bias from query i to key j is a
table row chosen by their offset (dy, dx): (2h-1)(2w-1) rows for grid pairs, then three rows for
CLS -> token, token -> CLS and CLS -> CLS. An image is a g x g grid; a text of T tokens is a
1 x (T-1) grid after its CLS (VLMo's released code gives text the same kind of 1-D table).
"""

from __future__ import annotations

import torch
import torch.nn as nn

Tensor = torch.Tensor


def num_relative_positions(grid: int | tuple[int, int]) -> int:
    """Rows of the table for ``grid`` (g or (h, w)): (2h-1)(2w-1) offsets + 3 CLS rows."""
    h, w = (grid, grid) if isinstance(grid, int) else grid
    return (2 * h - 1) * (2 * w - 1) + 3


def relative_position_index(grid: int | tuple[int, int]) -> Tensor:
    """(1+hw, 1+hw) long: which table row holds the bias from query i to key j.

    Grid pairs use row (dy + h-1)·(2w-1) + (dx + w-1) for the offset (dy, dx) = query - key,
    raster order; the last three rows are CLS->token, token->CLS and CLS->CLS.
    """
    h, w = (grid, grid) if isinstance(grid, int) else grid
    if h < 1 or w < 1:
        raise ValueError(f"relative_position_index: expected a grid of at least 1 x 1, got "
                         f"{h} x {w}")
    n_rel = num_relative_positions((h, w))
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # (2, hw)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (hw, hw, 2) offsets
    idx = torch.zeros(h * w + 1, h * w + 1, dtype=torch.long)
    idx[1:, 1:] = (rel[..., 0] + h - 1) * (2 * w - 1) + rel[..., 1] + w - 1
    idx[0, :] = n_rel - 3
    idx[:, 0] = n_rel - 2
    idx[0, 0] = n_rel - 1
    return idx


class RelativePositionBias(nn.Module):
    """A learned bias per head for each relative offset: (1, H, 1+N, 1+N), added to the scores."""

    def __init__(self, grid: int, num_heads: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(num_relative_positions(grid), num_heads))
        self.register_buffer("index", relative_position_index(grid), persistent=False)

    def forward(self) -> Tensor:
        bias = self.table[self.index]  # (1+N, 1+N, H)
        return bias.permute(2, 0, 1)[None]  # (1, H, 1+N, 1+N)
