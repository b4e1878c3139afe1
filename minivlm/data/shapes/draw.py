"""Pixels of the shapes world: :func:`render` draws scenes (vectorised, anti-aliased,
deterministic by seed); :func:`pixel_values` / :func:`to_image` convert to model inputs and back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from minivlm.data.shapes.scenes import COLORS, SHAPE_EXTENT, SHAPES, SIZE_RADIUS, Scene


# ---------------------------------------------------------------------------- pixels
def pixel_values(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 images (..., 3, H, W) -> float32 in [-1, 1]: ``(x / 255 - 0.5) / 0.5``."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError(
            f"pixel_values expects a uint8 tensor (..., 3, H, W), got "
            f"{getattr(images, 'dtype', type(images).__name__)}"
        )
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"pixel_values expects (..., 3, H, W), got shape {tuple(images.shape)}")
    # in place on the new float copy: the same three roundings, without two more (N, 3, H, W)
    # allocations (3x faster on a whole data set)
    return images.float().div_(255.0).sub_(0.5).div_(0.5)


def to_image(x: torch.Tensor) -> np.ndarray:
    """Inverse of ``pixel_values`` for plotting: (3, H, W) or (B, 3, H, W) -> float (..., H, W, 3)
    in [0, 1] for ``plt.imshow``. uint8 input is divided by 255."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"to_image expects (3, H, W) or (B, 3, H, W), got {tuple(x.shape)}")
    x = x.detach().cpu()
    img = x.float() / 255.0 if x.dtype == torch.uint8 else x.float() * 0.5 + 0.5
    return img.clamp(0, 1).movedim(-3, -1).numpy()


# ---------------------------------------------------------------------------- drawing
def _signed_distance(
    shape: str, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor
) -> torch.Tensor:
    """Approximate signed distance in pixels (< 0 inside) of pixel offsets from a shape centre.

    dx, dy: (M, P, P) offsets of pixel centres; r: (M, 1, 1) radii. Exact inside and along edges,
    which is what the 1-pixel anti-aliasing ``alpha = clamp(0.5 - d, 0, 1)`` needs.
    """
    ax, ay = dx.abs(), dy.abs()
    if shape == "circle":
        return torch.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return torch.maximum(ax, ay) - SHAPE_EXTENT["square"] * r
    if shape == "diamond":
        return (ax + ay - SHAPE_EXTENT["diamond"] * r) * (1 / math.sqrt(2))
    if shape == "triangle":  # apex up at (0, -a), base y = +a from x = -a to a
        a = SHAPE_EXTENT["triangle"] * r
        return torch.maximum(dy - a, (2 * ax - dy - a) * (1 / math.sqrt(5)))
    if shape == "cross":
        arm, half = SHAPE_EXTENT["cross"] * r, 0.34 * r
        return torch.minimum(torch.maximum(ax - arm, ay - half), torch.maximum(ax - half, ay - arm))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


_CHUNK = 1024  # images per noise draw (the seed of chunk k is (seed, k): do not change)
_SUB = 128  # images drawn together: small enough for the buffers to stay in cache


def render(scenes: Sequence[Scene], seed: int = 0) -> torch.Tensor:
    """Draw scenes -> uint8 (N, 3, S, S). Deterministic given the scenes and ``seed`` (noise).

    Each object is drawn in a small window around its centre: the masks of all objects of one
    shape in a group of images are computed in one tensor op, then added into the canvas.
    """
    if not scenes:
        raise ValueError("render needs at least one scene")
    S = scenes[0].image_size
    if any(sc.image_size != S for sc in scenes):
        raise ValueError("all scenes must have the same image_size")
    out = torch.empty(len(scenes), 3, S, S, dtype=torch.uint8)
    for k, start in enumerate(range(0, len(scenes), _CHUNK)):
        B = min(_CHUNK, len(scenes) - start)
        gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, k]).integers(2**62)))
        noise = torch.randint(-4, 5, (B, S, S), generator=gen, dtype=torch.int8)  # (B, S, S)
        for sub in range(0, B, _SUB):
            lo = start + sub
            hi = min(lo + _SUB, start + B)
            out[lo:hi] = _draw(scenes[lo:hi], noise[sub : sub + hi - lo], S)
    return out


def _draw(chunk: Sequence[Scene], noise: torch.Tensor, S: int) -> torch.Tensor:
    """Draw a few scenes on their noise (B, S, S) int8 -> uint8 (B, 3, S, S)."""
    max_r = max(SIZE_RADIUS.values()) * max(SHAPE_EXTENT.values()) * S
    P = min(S, 2 * math.ceil(max_r + 1.5) + 1)  # window side
    ramp = (torch.arange(S, dtype=torch.float32) + 0.5 - S / 2) / S  # (S,) in [-0.5, 0.5]
    B = len(chunk)
    # background: grey base + linear gradient + noise
    base = torch.tensor([sc.background.color for sc in chunk], dtype=torch.float32)  # (B, 3)
    grad = torch.tensor([sc.background.gradient for sc in chunk], dtype=torch.float32)
    amp = torch.tensor([sc.background.noise for sc in chunk], dtype=torch.float32) / 4
    shade = noise.float()
    shade.mul_(amp[:, None, None])
    shade += grad[:, 0, None, None] * ramp[None, None, :]  # (B, S, S)
    shade += grad[:, 1, None, None] * ramp[None, :, None]
    img = base[:, :, None, None] + shade[:, None]  # (B, 3, S, S)

    # objects: flatten (image index, centre, radius, shape, colour)
    b_idx, cx, cy, rad, shp, rgb = [], [], [], [], [], []
    for b, sc in enumerate(chunk):
        for o in sc.objects:
            b_idx.append(b)
            cx.append(o.x)
            cy.append(o.y)
            rad.append(SIZE_RADIUS[o.size] * S)
            shp.append(o.shape)
            rgb.append(COLORS[o.color])
    if b_idx:
        M = len(b_idx)
        win = torch.arange(P)
        bt = torch.tensor(b_idx)
        cxt = torch.tensor(cx, dtype=torch.float32)
        cyt = torch.tensor(cy, dtype=torch.float32)
        x0 = (cxt.floor().long() - P // 2).clamp(0, S - P)  # (M,) window corner
        y0 = (cyt.floor().long() - P // 2).clamp(0, S - P)
        xs = x0[:, None] + win  # (M, P) pixel columns
        ys = y0[:, None] + win
        dx = (xs.float() + 0.5 - cxt[:, None])[:, None, :]  # (M, 1, P)
        dy = (ys.float() + 0.5 - cyt[:, None])[:, :, None]  # (M, P, 1)
        r = torch.tensor(rad, dtype=torch.float32)[:, None, None]  # (M, 1, 1)
        dist = torch.empty(M, P, P)
        shp_arr = np.array(shp)
        for s in sorted(set(shp)):
            sel = torch.from_numpy(np.flatnonzero(shp_arr == s))
            dist[sel] = _signed_distance(s, dx[sel], dy[sel], r[sel])
        alpha = dist.neg_().add_(0.5).clamp_(0, 1)  # (M, P, P) coverage, anti-aliased rim
        pix = ys[:, :, None] * S + xs[:, None, :]  # (M, P, P) pixel index in an image
        # objects never overlap, so summing coverage and colour gives the composite
        cover = torch.zeros(B * S * S)
        cover.index_add_(0, (bt[:, None, None] * (S * S) + pix).reshape(-1), alpha.reshape(-1))
        colors = torch.tensor(rgb, dtype=torch.float32)  # (M, 3)
        paint = torch.zeros(B * 3 * S * S)
        flat = (bt[:, None] * 3 + torch.arange(3))[:, :, None, None] * (S * S) + pix[:, None]
        paint.index_add_(
            0, flat.reshape(-1), (alpha[:, None] * colors[:, :, None, None]).reshape(-1)
        )  # (M, 3, P, P) values
        img.mul_(1 - cover.view(B, 1, S, S).clamp_(max=1.0)).add_(paint.view(B, 3, S, S))
    return img.round_().clamp_(0, 255).to(torch.uint8)
