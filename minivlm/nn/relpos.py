"""Relative position bias (BEiT §2.6, after Swin): a learned score per head for each offset.

Tokens sit on an h x w grid behind one leading CLS token. The bias from query i to key j is a
table row chosen by their offset (dy, dx): (2h-1)(2w-1) rows for grid pairs, then three rows for
CLS -> token, token -> CLS and CLS -> CLS. An image is a g x g grid; a text of T tokens is a
1 x (T-1) grid after its CLS (VLMo's released code gives text the same kind of 1-D table).
:class:`MultiwayPositionBias` holds VLMo's image, text and cross tables for [text; image].
"""

from __future__ import annotations

from typing import Any

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


class MultiwayPositionBias(nn.Module):
    """Relative position bias of VLMo's released code, one score per layer and head (BEiT §2.6)::

        image tokens [I_CLS; g x g patches]: BEiT's 2-D table, rows by offset (dy, dx) + 3 CLS rows
        text tokens [T_CLS; words]          : a 1-D table, rows by word offset + 3 CLS rows
        fused [text; image]                 : [[text table, t->i score], [i->t score, image table]]

    Three parameters of shape (depth, rows, H): ``image``, ``text`` and ``cross`` (t->i, i->t),
    so that each pre-training stage can train its own rows
    (:func:`minivlm.models.vlmo.stage_plan`). Zero at init. ``cfg``: a config with ``depth``,
    ``num_heads``, ``max_text_len`` and ``grid_size`` (:class:`~minivlm.models.vlmo.VLMoConfig`).
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        L, H, text_grid = cfg.depth, cfg.num_heads, (1, cfg.max_text_len - 1)
        n_img, n_txt = num_relative_positions(cfg.grid_size), num_relative_positions(text_grid)
        self.image = nn.Parameter(torch.zeros(L, n_img, H))
        self.text = nn.Parameter(torch.zeros(L, n_txt, H))
        self.cross = nn.Parameter(torch.zeros(L, 2, H))
        self.register_buffer("image_index", relative_position_index(cfg.grid_size),
                             persistent=False)  # (1+N, 1+N) rows of ``image``
        self.register_buffer("text_index", relative_position_index(text_grid) + n_img,
                             persistent=False)  # (T_max, T_max) rows of ``text``, after image's
        self.t2i, self.i2t = n_img + n_txt, n_img + n_txt + 1

    def index(self, T: int, N1: int) -> Tensor:
        """Table rows (T+N1, T+N1) for T text tokens then N1 (0 or 1+N) image tokens."""
        t, v = self.text_index[:T, :T], self.image_index[:N1, :N1]
        top = torch.cat([t, t.new_full((T, N1), self.t2i)], dim=1)  # text queries
        return torch.cat([top, torch.cat([v.new_full((N1, T), self.i2t), v], dim=1)])

    def forward(self, T: int, N1: int) -> Tensor:
        """(depth, H, T+N1, T+N1): the bias of every layer for [text; image]."""
        table = torch.cat([self.image, self.text, self.cross], dim=1)  # (depth, rows, H)
        return table[:, self.index(T, N1)].permute(0, 3, 1, 2)
