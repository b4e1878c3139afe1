"""Figures for the course: similarity heatmaps, attention overlays and rollout, masks, widgets.

Every plotting function accepts torch tensors or NumPy arrays, checks shapes (raising a
``ValueError`` that names the argument and the expected shape) and returns a
``matplotlib.figure.Figure``.

Figures are created with ``matplotlib.figure.Figure`` directly, not through ``pyplot``: they
are not kept in pyplot's global list, so nothing leaks in long notebooks and a figure is
shown exactly once -- when it is the last value of a cell, or passed to ``display(fig)``
(they render themselves as PNG, :class:`VizFigure`, with or without ``%matplotlib inline``).
Functions that take ``ax=`` draw into that Axes instead and return ``ax.figure``.

Patch maps (one value per image patch: attention, saliency, probe accuracy) are drawn by
:func:`patch_map` in every lecture: one flat cell per patch (nearest neighbour, never smoothed),
a colourbar, and the image beside it with the patch grid drawn on.

Maths helpers (no plotting): :func:`upsample_attention`, :func:`softmax_with_temperature`;
:func:`attention_rollout` and :func:`cls_attention_map` live in :mod:`minivlm.interpret` and are
re-exported here.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from minivlm.interpret import _check_grid_hw, attention_rollout, cls_attention_map

__all__ = [
    "VizFigure",
    "attention_overlay",
    "attention_rollout",
    "bar_compare",
    "cls_attention_map",
    "head_grid",
    "image_grid",
    "loss_curves",
    "mask_plot",
    "patch_grid",
    "patch_map",
    "similarity_heatmap",
    "softmax_with_temperature",
    "temperature_slider",
    "token_to_patch_grid",
    "upsample_attention",
]

ArrayLike = Any  # torch.Tensor | np.ndarray | nested sequences of numbers


# --------------------------------------------------------------------------- conversions


def _to_numpy(x: ArrayLike, name: str, dtype: Any = np.float64) -> np.ndarray:
    """Tensor/array/list -> NumPy array (detached, on the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if dtype is not None and x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        arr = x.numpy()
    else:
        try:
            arr = np.asarray(x)
        except Exception as e:  # ragged lists and the like
            raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(x)}") from e
    if arr.dtype == object:
        raise TypeError(f"{name}: expected numbers, got an array of Python objects")
    return arr.astype(dtype) if dtype is not None else arr


def _to_hwc_image(image: ArrayLike, name: str = "image") -> np.ndarray:
    """An image as (H, W, 3) float in [0, 1] for ``imshow``.

    Accepts (3, H, W), (1, H, W), (H, W, 3), (H, W, 4), (H, W, 1) or (H, W); uint8 in
    [0, 255] or float. Floats outside [0, 1] (e.g. mean/std-normalised pixels) are
    min-max rescaled so that the picture is still visible.
    """
    raw = _to_numpy(image, name, dtype=None)
    if raw.ndim == 2:
        raw = raw[..., None]
    if raw.ndim != 3:
        raise ValueError(
            f"{name}: expected an image of shape (3, H, W) or (H, W, 3), got {tuple(raw.shape)}"
        )
    if raw.shape[0] in (1, 3) and raw.shape[2] not in (1, 3, 4):
        raw = np.transpose(raw, (1, 2, 0))  # (C, H, W) -> (H, W, C)
    elif raw.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"{name}: expected an image of shape (3, H, W) or (H, W, 3), got {tuple(raw.shape)}"
        )
    if raw.dtype == np.uint8:
        img = raw.astype(np.float64) / 255.0
    elif raw.dtype == bool:
        img = raw.astype(np.float64)
    else:
        img = raw.astype(np.float64)
        lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
        if lo < 0.0 or hi > 1.0:
            if hi > 1.0 and lo >= 0.0 and hi <= 255.0 and np.issubdtype(raw.dtype, np.integer):
                img = img / 255.0
            else:
                img = (img - lo) / max(hi - lo, 1e-12)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:
        img = img[..., :3]
    return np.clip(img, 0.0, 1.0)


def _grid_from_attn(attn: ArrayLike, name: str, grid_hw: tuple[int, int] | None) -> np.ndarray:
    """(h, w) or (N,) patch weights -> (h, w) array."""
    a = _to_numpy(attn, name)
    if a.ndim == 2:
        if grid_hw is not None and tuple(a.shape) != tuple(grid_hw):
            raise ValueError(f"{name}: expected shape {tuple(grid_hw)}, got {tuple(a.shape)}")
        return a
    if a.ndim != 1:
        raise ValueError(f"{name}: expected (h, w) or (N,) patch weights, got {tuple(a.shape)}")
    if grid_hw is None:
        side = math.isqrt(a.shape[0])
        if side * side != a.shape[0]:
            raise ValueError(
                f"{name}: {a.shape[0]} patch weights is not a square number; "
                "pass a (h, w) array or grid_hw=(h, w)"
            )
        grid_hw = (side, side)
    h, w = grid_hw
    if h * w != a.shape[0]:
        raise ValueError(f"{name}: {a.shape[0]} patch weights do not fill a {h}x{w} grid")
    return a.reshape(h, w)


class VizFigure(Figure):
    """A Figure that shows itself as a (2x resolution) PNG in Jupyter, also when pyplot's inline
    backend has not been activated (minivlm.viz never imports pyplot)."""

    def _repr_png_(self) -> tuple[bytes, dict[str, int]]:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=2 * self.dpi, bbox_inches="tight")
        data = buf.getvalue()
        w, h = struct.unpack(">II", data[16:24])  # IHDR width, height
        return data, {"width": w // 2, "height": h // 2}


def _new_figure(figsize: tuple[float, float]) -> Figure:
    return VizFigure(figsize=figsize, layout="constrained")


def _panels(n: int, ncols: int, panel: float = 2.4) -> tuple[Figure, list[Axes]]:
    """A figure with exactly ``n`` axes laid out on a grid of ``ncols`` columns."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = _new_figure((panel * ncols, panel * nrows + 0.3))
    axes = []
    for i in range(n):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.set_axis_off()
        axes.append(ax)
    return fig, axes


# --------------------------------------------------------------------------- heatmaps


def similarity_heatmap(
    sim: ArrayLike,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    annotate: bool | None = None,
    ax: Axes | None = None,
    *,
    cmap: str = "viridis",
    fmt: str = ".2f",
    colorbar: bool = True,
    xlabel: str | None = None,
    ylabel: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Figure:
    """Labelled heatmap of an (N, M) matrix, e.g. image-text cosine similarities (CLIP §2.3).

    ``annotate`` writes each value in its cell; ``None`` annotates matrices up to 20x20.
    """
    s = _to_numpy(sim, "sim")
    if s.ndim != 2:
        raise ValueError(f"sim: expected a 2-D (N, M) matrix, got shape {tuple(s.shape)}")
    n, m = s.shape
    if row_labels is not None and len(row_labels) != n:
        raise ValueError(f"row_labels: expected {n} labels (rows of sim), got {len(row_labels)}")
    if col_labels is not None and len(col_labels) != m:
        raise ValueError(f"col_labels: expected {m} labels (columns of sim), got {len(col_labels)}")
    if annotate is None:
        annotate = n <= 20 and m <= 20
    if ax is None:
        fig = _new_figure((max(3.5, 0.6 * m + 2.2), max(3.0, 0.5 * n + 1.2)))
        ax = fig.add_subplot()
    fig = ax.figure
    im = ax.imshow(s, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(m), labels=list(col_labels) if col_labels is not None else range(m))
    ax.set_yticks(range(n), labels=list(row_labels) if row_labels is not None else range(n))
    if col_labels is not None and max((len(str(c)) for c in col_labels), default=0) > 3:
        for t in ax.get_xticklabels():
            t.set_rotation(40)
            t.set_ha("right")
    if annotate:
        rgba = im.cmap(im.norm(s))  # (N, M, 4): cell colours, for readable text on top
        light = rgba[..., :3] @ np.array([0.299, 0.587, 0.114]) > 0.5
        for i in range(n):
            for j in range(m):
                ax.text(j, i, format(s[i, j], fmt), ha="center", va="center", fontsize=8,
                        color="black" if light[i, j] else "white")
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if colorbar:
        fig.colorbar(im, ax=ax, shrink=0.85)
    return fig


def mask_plot(
    mask: ArrayLike | Mapping[str, ArrayLike],
    labels: Sequence[str] | tuple[Sequence[str], Sequence[str]] | None = None,
    title: str | None = None,
    *,
    true_color: str = "#2b7bba",
    false_color: str = "#f2f2f2",
    ncols: int = 3,
) -> Figure:
    """Show boolean attention masks: True (row may attend to column) cells are coloured.

    ``mask`` is one (Tq, Tk) mask or a dict ``name -> mask`` (e.g. BLIP-2's Q-Former ITC/ITM/
    ITG masks, §3.2), one panel each. ``labels`` names the positions: one list for square
    masks, or ``(row_labels, col_labels)``.
    """
    masks = dict(mask) if isinstance(mask, Mapping) else {"": mask}
    if not masks:
        raise ValueError("mask: got an empty dict; expected name -> (T, T) boolean mask")
    arrays: dict[str, np.ndarray] = {}
    for name, mk in masks.items():
        a = _to_numpy(mk, f"mask[{name!r}]" if name else "mask", dtype=None)
        if a.ndim != 2:
            raise ValueError(f"mask {name!r}: expected a 2-D (Tq, Tk) mask, got {tuple(a.shape)}")
        if a.dtype != bool:
            if not np.isin(a, (0, 1)).all():
                raise ValueError(f"mask {name!r}: expected a boolean (or 0/1) mask, got {a.dtype}")
            a = a.astype(bool)
        arrays[name] = a
    fig, axes = _panels(len(arrays), ncols, panel=3.4)
    cmap = ListedColormap([false_color, true_color])
    for ax, (name, a) in zip(axes, arrays.items()):
        tq, tk = a.shape
        rows, cols = _mask_labels(labels, tq, tk)
        ax.set_axis_on()
        ax.imshow(a.astype(np.int8), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        # Thin white lines between cells make single positions readable.
        ax.set_xticks(np.arange(-0.5, tk, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, tq, 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.8)
        ax.tick_params(which="minor", length=0)
        fs = 8 if max(tq, tk) <= 16 else 6
        ax.set_xticks(range(tk), labels=cols if cols else range(tk), fontsize=fs, rotation=90)
        ax.set_yticks(range(tq), labels=rows if rows else range(tq), fontsize=fs)
        ax.xaxis.tick_top()
        ax.set_xlabel("key (attended to)", fontsize=8)
        ax.set_ylabel("query (attending)", fontsize=8)
        if name:
            ax.set_title(name, fontsize=11)
    if title:
        fig.suptitle(title)
    return fig


def _mask_labels(labels: Any, tq: int, tk: int) -> tuple[list[str] | None, list[str] | None]:
    if labels is None:
        return None, None
    if (isinstance(labels, tuple) and len(labels) == 2
            and all(isinstance(x, Sequence) and not isinstance(x, str) for x in labels)):
        rows, cols = list(labels[0]), list(labels[1])
    else:
        rows = cols = list(labels)
    if len(rows) != tq or len(cols) != tk:
        raise ValueError(
            f"labels: expected {tq} row and {tk} column labels, got {len(rows)} and {len(cols)}"
        )
    return [str(r) for r in rows], [str(c) for c in cols]


def upsample_attention(attn: ArrayLike, size: tuple[int, int],
                       grid_hw: Sequence[int] | None = None) -> np.ndarray:
    """(h, w) or (N,) patch weights -> (H, W) map by bilinear interpolation, scaled to [0, 1]."""
    g = _grid_from_attn(attn, "attn", None if grid_hw is None else _check_grid_hw(grid_hw))
    t = torch.as_tensor(g, dtype=torch.float32)[None, None]  # (1, 1, h, w)
    up = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()
    lo, hi = float(up.min()), float(up.max())
    return (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)


# --------------------------------------------------------------------------- image figures


def attention_overlay(
    image: ArrayLike,
    attn: ArrayLike,
    alpha: float = 0.5,
    ax: Axes | None = None,
    *,
    grid_hw: Sequence[int] | None = None,
    cmap: str = "jet",
    title: str | None = None,
) -> Figure:
    """An image with patch weights (h, w) or (N,) upsampled bilinearly and drawn over it."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    img = _to_hwc_image(image)
    heat = upsample_attention(attn, img.shape[:2], grid_hw)
    if ax is None:
        fig = _new_figure((4.0, 4.0 * img.shape[0] / img.shape[1] + 0.3))
        ax = fig.add_subplot()
    ax.imshow(img)
    ax.imshow(heat, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax.figure


def head_grid(
    image: ArrayLike,
    attn: ArrayLike,
    grid_hw: Sequence[int],
    *,
    ncols: int = 4,
    alpha: float = 0.5,
    titles: Sequence[str] | None = None,
    cmap: str = "jet",
    title: str | None = None,
) -> Figure:
    """One panel per attention head: attn (H, N) (or (H, h, w)) patch weights over the image."""
    h, w = _check_grid_hw(grid_hw)
    a = _to_numpy(attn, "attn")
    if a.ndim == 3:
        a = a.reshape(a.shape[0], -1)
    if a.ndim != 2 or a.shape[1] != h * w:
        raise ValueError(
            f"attn: expected (num_heads, {h * w}) patch weights for grid_hw=({h}, {w}), "
            f"got {tuple(a.shape)}"
        )
    if titles is not None and len(titles) != a.shape[0]:
        raise ValueError(f"titles: expected {a.shape[0]} titles (one per head), got {len(titles)}")
    img = _to_hwc_image(image)
    fig, axes = _panels(a.shape[0], ncols)
    for i, ax in enumerate(axes):
        attention_overlay(img, a[i].reshape(h, w), alpha=alpha, ax=ax, cmap=cmap,
                          title=titles[i] if titles is not None else f"head {i}")
    if title:
        fig.suptitle(title)
    return fig


def token_to_patch_grid(
    image: ArrayLike,
    attn: ArrayLike,
    tokens: Sequence[str],
    grid_hw: Sequence[int],
    *,
    select: Sequence[int | str] | None = None,
    ncols: int = 4,
    alpha: float = 0.5,
    cmap: str = "jet",
    title: str | None = None,
) -> Figure:
    """For each text token, its attention over the image patches (cross-attention maps).

    attn: (T_text, N_patches) with N_patches = h*w; ``tokens``: the T_text token strings.
    ``select`` keeps only some tokens (by index or by string, first match).
    """
    h, w = _check_grid_hw(grid_hw)
    a = _to_numpy(attn, "attn")
    if a.ndim != 2 or a.shape[1] != h * w:
        raise ValueError(
            f"attn: expected (T_text, {h * w}) text-to-patch weights for grid_hw=({h}, {w}), "
            f"got {tuple(a.shape)}"
        )
    if len(tokens) != a.shape[0]:
        raise ValueError(f"tokens: expected {a.shape[0]} tokens (rows of attn), got {len(tokens)}")
    idx = list(range(len(tokens)))
    if select is not None:
        idx = []
        for s in select:
            if isinstance(s, str):
                if s not in tokens:
                    raise ValueError(f"select: token {s!r} is not in tokens {list(tokens)}")
                idx.append(list(tokens).index(s))
            else:
                if not -len(tokens) <= int(s) < len(tokens):
                    raise ValueError(f"select: index {s} out of range for {len(tokens)} tokens")
                idx.append(int(s) % len(tokens))
        if not idx:
            raise ValueError("select: expected at least one token")
    img = _to_hwc_image(image)
    fig, axes = _panels(len(idx), ncols)
    for ax, i in zip(axes, idx):
        attention_overlay(img, a[i].reshape(h, w), alpha=alpha, ax=ax, cmap=cmap,
                          title=repr(str(tokens[i])))
    if title:
        fig.suptitle(title)
    return fig


def patch_grid(
    image: ArrayLike,
    patch_size: int,
    *,
    gap: int | None = None,
    crop: bool = False,
    number: bool = False,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """The image cut into ``patch_size`` squares drawn apart with white gaps (ViT §3.1).

    H and W must be multiples of ``patch_size`` unless ``crop=True`` (drops the remainder on
    the bottom/right). ``number=True`` writes each patch's raster index.
    """
    if not isinstance(patch_size, int | np.integer) or patch_size <= 0:
        raise ValueError(f"patch_size: expected a positive int, got {patch_size!r}")
    img = _to_hwc_image(image)
    H, W = img.shape[:2]
    p = int(patch_size)
    if crop:
        H, W = H - H % p, W - W % p
        img = img[:H, :W]
    if H == 0 or W == 0 or H % p or W % p:
        raise ValueError(
            f"patch_grid: image size {img.shape[0]}x{img.shape[1]} is not divisible by "
            f"patch_size {p} (resize the image or pass crop=True)"
        )
    gh, gw = H // p, W // p
    g = max(1, p // 8) if gap is None else int(gap)
    canvas = np.ones((gh * p + (gh - 1) * g, gw * p + (gw - 1) * g, 3))
    for i in range(gh):
        for j in range(gw):
            y, x = i * (p + g), j * (p + g)
            canvas[y:y + p, x:x + p] = img[i * p:(i + 1) * p, j * p:(j + 1) * p]
    if ax is None:
        fig = _new_figure((4.5, 4.5 * canvas.shape[0] / canvas.shape[1] + 0.3))
        ax = fig.add_subplot()
    ax.imshow(canvas)
    if number:
        for i in range(gh):
            for j in range(gw):
                ax.text(j * (p + g) + 2, i * (p + g) + 2, str(i * gw + j), fontsize=6,
                        color="white", va="top", ha="left",
                        bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "lw": 0})
    ax.set_axis_off()
    ax.set_title(title if title is not None else f"{gh}x{gw} = {gh * gw} patches of {p}x{p}")
    return ax.figure


def patch_map(
    values: ArrayLike,
    image: ArrayLike | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    *,
    grid_hw: Sequence[int] | None = None,
    title: str | None = None,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    label: str | None = None,
    annotate: bool = False,
    fmt: str = ".2f",
    image_title: str | None = None,
) -> Figure:
    """One value per patch drawn as a flat cell per patch, with a colourbar; the image beside it.

    ``values``: (gh, gw) or (N,) (N a square number unless ``grid_hw=(gh, gw)`` is given), in
    raster order as a ViT lays out its patches (§3.1 of the ViT paper). Cells are drawn nearest
    neighbour, so a 4x4 map shows 16 cells, not a smoothed blob. With ``image`` the picture is
    drawn in its own panel to the left, the patch grid on it, so a cell and its patch line up.
    ``ax``: draw into this Axes (map only) or into two Axes ``(image_ax, map_ax)``; otherwise a
    new figure. ``annotate=True`` writes each value in its cell (``fmt``), for small grids.
    Returns the figure.
    """
    g = _grid_from_attn(values, "values", None if grid_hw is None else _check_grid_hw(grid_hw))
    gh, gw = g.shape
    img = None if image is None else _to_hwc_image(image)
    if ax is None:
        n = 1 if img is None else 2
        fig = _new_figure((3.2 * n + 0.6, 3.0 + (0.3 if title else 0.0)))
        axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    elif isinstance(ax, Axes):
        if img is not None:
            raise ValueError("ax: with an image, pass two Axes (image_ax, map_ax), or ax=None")
        axes = [ax]
    else:
        axes = list(ax)
        want = 1 if img is None else 2
        if len(axes) != want or not all(isinstance(a, Axes) for a in axes):
            raise ValueError(f"ax: expected {want} matplotlib Axes, got {len(axes)} objects")
    map_ax = axes[-1]
    if img is not None:
        iax = axes[0]
        H, W = img.shape[:2]
        iax.imshow(img, extent=(0, W, H, 0))
        for i in range(1, gh):  # patch boundaries, so a cell can be found on the picture
            iax.axhline(i * H / gh, color="white", lw=0.6, alpha=0.8)
        for j in range(1, gw):
            iax.axvline(j * W / gw, color="white", lw=0.6, alpha=0.8)
        iax.set_xticks([])
        iax.set_yticks([])
        if image_title:
            iax.set_title(image_title)
    im = map_ax.imshow(g, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest",
                       extent=(0, gw, gh, 0))
    map_ax.set_xticks([])
    map_ax.set_yticks([])
    if annotate:
        lo, hi = im.get_clim()
        for i in range(gh):
            for j in range(gw):
                dark = (g[i, j] - lo) / (hi - lo) < 0.5 if hi > lo else True
                map_ax.text(j + 0.5, i + 0.5, format(g[i, j], fmt), ha="center", va="center",
                            fontsize=7, color="white" if dark else "black")
    cbar = map_ax.figure.colorbar(im, ax=map_ax, shrink=0.85, fraction=0.07)
    if label:
        cbar.set_label(label)
    if title:
        map_ax.set_title(title)
    return map_ax.figure


def image_grid(
    images: ArrayLike | Sequence[ArrayLike],
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    panel: float = 1.6,
) -> Figure:
    """A grid of images: (N, 3, H, W) / (N, H, W, 3) uint8 or float, or a list of images.

    Normalised floats are shown after undoing ``mean``/``std`` when given, otherwise after a
    per-image min-max rescale.
    """
    if isinstance(images, torch.Tensor | np.ndarray):
        arr = images
        if arr.ndim != 4:
            raise ValueError(
                f"images: expected (N, 3, H, W) or (N, H, W, 3), got {tuple(arr.shape)}"
            )
        seq = [arr[i] for i in range(arr.shape[0])]
    else:
        seq = list(images)
    if not seq:
        raise ValueError("images: expected at least one image")
    if titles is not None and len(titles) != len(seq):
        raise ValueError(f"titles: expected {len(seq)} titles (one per image), got {len(titles)}")
    if (mean is None) != (std is None):
        raise ValueError("mean/std: pass both to undo normalisation, or neither")
    fig, axes = _panels(len(seq), ncols, panel=panel)
    for i, (ax, im) in enumerate(zip(axes, seq)):
        if mean is not None:
            x = _to_numpy(im, f"images[{i}]")
            c_first = x.ndim == 3 and x.shape[0] == len(mean)
            shape = (-1, 1, 1) if c_first else (1, 1, -1)
            x = x * np.asarray(std).reshape(shape) + np.asarray(mean).reshape(shape)
            im = np.clip(x, 0.0, 1.0)
        ax.imshow(_to_hwc_image(im, f"images[{i}]"))
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    return fig


# --------------------------------------------------------------------------- curves and bars


def loss_curves(
    curves: Mapping[str, Sequence[float] | ArrayLike],
    title: str | None = None,
    *,
    xlabel: str = "step",
    ylabel: str = "loss",
    smooth: int = 1,
    logy: bool = False,
    ax: Axes | None = None,
) -> Figure:
    """One line per named curve (e.g. ``{"itc": [...], "itm": [...]}``).

    ``smooth`` > 1 draws a trailing moving average over that many steps on top of the raw,
    faded curve.
    """
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("curves: expected a non-empty dict name -> list of floats")
    if smooth < 1:
        raise ValueError(f"smooth: expected a window >= 1, got {smooth}")
    if ax is None:
        fig = _new_figure((6.0, 3.6))
        ax = fig.add_subplot()
    for name, ys in curves.items():
        y = _to_numpy(ys, f"curves[{name!r}]").reshape(-1)
        x = np.arange(len(y))
        if smooth > 1 and len(y) >= smooth:
            (line,) = ax.plot(x, y, alpha=0.3)
            ys_s = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
            ax.plot(x[smooth - 1:], ys_s, color=line.get_color(), label=str(name))
        else:
            ax.plot(x, y, label=str(name))
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return ax.figure


def bar_compare(
    values: Mapping[str, float] | Mapping[str, Mapping[str, float]],
    title: str | None = None,
    *,
    ylabel: str | None = None,
    annotate: bool = True,
    fmt: str = ".3g",
    ylim: tuple[float, float] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Bars for ``{name: value}``, or grouped bars for ``{group: {series: value}}``
    (e.g. ``{"R@1": {"CLIP": 0.31, "ALBEF": 0.52}, "R@5": {...}}``)."""
    if not isinstance(values, Mapping) or not values:
        raise ValueError("values: expected a non-empty dict name -> number (or -> dict)")
    nested = all(isinstance(v, Mapping) for v in values.values())
    if not nested and any(isinstance(v, Mapping) for v in values.values()):
        raise ValueError("values: mix of numbers and dicts; use one level or two, not both")
    if ax is None:
        fig = _new_figure((max(4.0, 0.9 * len(values) + 2.5), 3.4))
        ax = fig.add_subplot()
    groups = list(values)
    if nested:
        series: list[str] = []
        for g in groups:
            series += [s for s in values[g] if s not in series]  # type: ignore[union-attr]
        width = 0.8 / len(series)
        for k, s in enumerate(series):
            ys = [float(values[g].get(s, np.nan)) for g in groups]  # type: ignore[union-attr]
            xs = np.arange(len(groups)) + (k - (len(series) - 1) / 2) * width
            bars = ax.bar(xs, ys, width=width, label=s)
            if annotate:
                ax.bar_label(bars, labels=[format(y, fmt) for y in ys], fontsize=7)
        ax.legend()
    else:
        ys = [float(_to_numpy(v, f"values[{g!r}]")) for g, v in values.items()]
        bars = ax.bar(range(len(groups)), ys, color=[f"C{i}" for i in range(len(groups))])
        if annotate:
            ax.bar_label(bars, labels=[format(y, fmt) for y in ys], fontsize=8)
    ax.set_xticks(range(len(groups)), labels=[str(g) for g in groups])
    if ylabel:
        ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    return ax.figure


# --------------------------------------------------------------------------- widgets


def softmax_with_temperature(logits: ArrayLike, tau: float) -> np.ndarray:
    """softmax(logits / tau) over the last axis, computed stably (CLIP's τ, §2.5)."""
    if not tau > 0:
        raise ValueError(f"tau: expected a positive temperature, got {tau}")
    z = _to_numpy(logits, "logits") / tau
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def temperature_slider(
    logits_row: ArrayLike,
    labels: Sequence[str],
    taus: tuple[float, float] = (0.005, 2.0),
    value: float = 1.0,
    *,
    title: str = "softmax(logits / τ)",
) -> Any:
    """An ipywidgets VBox: a log-scale τ slider over a bar chart of ``softmax(logits / τ)``.

    The returned widget exposes ``.slider`` (``FloatLogSlider``), ``.probs`` (the current
    probabilities, NumPy (N,)), ``.tau``, ``.figure`` (the matplotlib Figure) and ``.image``
    (an ``ipywidgets.Image`` holding the rendered PNG). Moving the slider -- or setting
    ``widget.slider.value`` -- recomputes everything, also without a running kernel.
    """
    import ipywidgets as widgets

    logits = _to_numpy(logits_row, "logits_row")
    if logits.ndim != 1 or logits.shape[0] == 0:
        raise ValueError(f"logits_row: expected a non-empty (N,) vector, got {tuple(logits.shape)}")
    if len(labels) != logits.shape[0]:
        raise ValueError(f"labels: expected {logits.shape[0]} labels, got {len(labels)}")
    lo, hi = float(taus[0]), float(taus[1])
    if not 0 < lo < hi:
        raise ValueError(f"taus: expected (min, max) with 0 < min < max, got {taus!r}")

    class TemperatureSlider(widgets.VBox):
        """VBox holding the slider and the rendered bar chart."""

    slider = widgets.FloatLogSlider(
        value=min(max(value, lo), hi), base=10, min=math.log10(lo), max=math.log10(hi),
        step=(math.log10(hi) - math.log10(lo)) / 200, description="τ", readout_format=".3f",
        continuous_update=True, layout=widgets.Layout(width="500px"),
    )
    image = widgets.Image(format="png")
    fig = _new_figure((max(4.0, 0.55 * len(labels) + 2.0), 3.0))
    ax = fig.add_subplot()
    bars = ax.bar(range(len(labels)), np.zeros(len(labels)), color="C0")
    ax.set_xticks(range(len(labels)), labels=[str(s) for s in labels], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("probability")
    ax.grid(axis="y", alpha=0.3)
    box = TemperatureSlider([slider, image])
    box.slider, box.image, box.figure, box.logits = slider, image, fig, logits

    def update(change: Any = None) -> None:
        tau = float(slider.value)
        probs = softmax_with_temperature(logits, tau)
        for b, p in zip(bars, probs):
            b.set_height(float(p))
            b.set_color("C3" if p == probs.max() else "C0")
        ax.set_title(f"{title}, τ = {tau:.3g}   (max p = {probs.max():.2f})")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        image.value = buf.getvalue()
        box.probs, box.tau = probs, tau

    slider.observe(update, names="value")
    update()
    return box
