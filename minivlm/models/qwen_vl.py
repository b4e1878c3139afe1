"""Qwen-VL (Bai et al. 2023) to Qwen2-VL (Wang et al. 2024) and Qwen2.5-VL (Bai et al. 2025).

**Qwen-VL** squeezes any image into a fixed number of tokens with *one* cross-attention layer
(§2.1, "position-aware vision-language adapter"): 256 learned queries attend to the ViT's patch
features, with 2-D sin-cos positions added to queries and keys (:class:`QwenVLAdapter`).

**Qwen2-VL** drops the fixed size (§2.1, "naive dynamic resolution"): an image of any size
becomes as many 14-px patches as its area needs; each image attends only to itself (packed
images, block-diagonal attention), with 2-D RoPE on (row, column) in the vision encoder; then
each 2×2 window of neighbouring patches is concatenated and projected into *one* LM token::

    x      = W_patch · pixels                       # (Σ t·h·w, D_v)  patches, block-major
    x      = ViT(x; RoPE-2D(row, col), per-image)   # (Σ t·h·w, D_v)
    tokens = MLP(concat of each window's m² patches)  # (Σ t·h·w / m², D)
    logits = LM(text with the image tokens spliced in; M-RoPE)

Multimodal RoPE (M-RoPE, §2.1) gives every LM token three indices (time, row, column): text
tokens share one index on all three, image tokens take (start + frame, start + row,
start + col) in merged units, and text after an image resumes at start + max(h, w)/m. The head's
frequencies are split among the three axes (``LMConfig.mrope_section``).

**Qwen2.5-VL** (§2.1) keeps this and makes the vision encoder cheaper: most blocks attend
within windows of 112 px (8×8 patches), only ``fullatt_blocks`` attend to the whole image;
RMSNorm and SwiGLU replace LayerNorm and the GELU MLP. Patches are regrouped window by window
before the blocks and the merged tokens are put back in their original order after the merger.

Interop (see ``../shared/DESIGN.md``): ``Qwen2VL.from_hf`` copies a
``Qwen2VLForConditionalGeneration`` or ``Qwen2_5_VLForConditionalGeneration``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from minivlm.nn.attention import attend, sectioned_rope
from minivlm.nn.blocks import MLP, TransformerBlock, make_norm
from minivlm.nn.lm import DecoderLM, MRopeLMConfig, lm_loss

Tensor = torch.Tensor


@dataclass
class Qwen2VLConfig:
    """Hyper-parameters of :class:`Qwen2VL` (defaults: the ``qwen2_vl_tiny`` shapes-world model).

    Vision: ``patch_size`` px patches of ``temporal_patch_size`` frames (an image is repeated
    in time), width ``vision_dim``; ``merge_size`` ² patches become one LM token.
    ``window_size`` (px) turns on Qwen2.5-VL's window attention in all blocks but
    ``fullatt_blocks``. ``positions``: ``"mrope"`` (the paper) or ``"1d"`` (plain RoPE over the
    sequence, the ablation of lecture 10).
    """

    lm: MRopeLMConfig = field(default_factory=lambda: MRopeLMConfig(mrope_section=(4, 6, 6)))
    patch_size: int = 8
    temporal_patch_size: int = 1
    in_chans: int = 3
    vision_dim: int = 64
    vision_depth: int = 2
    vision_heads: int = 4
    vision_mlp_hidden: int = 128
    vision_norm: str = "layernorm"  # Qwen2-VL; "rmsnorm" in Qwen2.5-VL
    vision_mlp: str = "quick_gelu"  # Qwen2-VL; "swiglu" in Qwen2.5-VL
    vision_rope_base: float = 10000.0
    merge_size: int = 2
    window_size: int | None = None  # px; Qwen2.5-VL: 112
    fullatt_blocks: tuple[int, ...] = ()
    image_token_id: int = 7  # <image> of the shapes-world tokenizer
    vision_start_id: int = 2  # [CLS] stands for <|vision_start|> in the shapes world
    vision_end_id: int = 3  # [SEP] for <|vision_end|>
    positions: str = "mrope"

    def __post_init__(self) -> None:
        if self.positions not in ("mrope", "1d"):
            raise ValueError(f"Qwen2VLConfig.positions: expected 'mrope' or '1d', "
                             f"got {self.positions!r}")
        if not isinstance(self.lm, MRopeLMConfig):
            raise ValueError(f"Qwen2VLConfig.lm: expected an MRopeLMConfig, got "
                             f"{type(self.lm).__name__}")
        if (self.vision_dim // self.vision_heads) % 4:
            raise ValueError("Qwen2VLConfig: the vision head dim must be a multiple of 4 "
                             "(2-D RoPE splits it between rows and columns)")
        if self.window_size is not None and self.window_size % (self.patch_size * self.merge_size):
            raise ValueError(f"Qwen2VLConfig.window_size {self.window_size} px must be a multiple "
                             f"of patch_size·merge_size = {self.patch_size * self.merge_size}")
        self.fullatt_blocks = tuple(self.fullatt_blocks)

    @property
    def patch_dim(self) -> int:
        return self.in_chans * self.temporal_patch_size * self.patch_size**2


@dataclass
class QwenVLOutput:
    """loss (next-token CE over labels != -100, when labels are given), logits (B, T, V)."""

    loss: Tensor | None
    logits: Tensor


# --------------------------------------------------------------------------- Qwen-VL adapter


def sincos_2d(rows: Tensor, cols: Tensor, dim: int) -> Tensor:
    """2-D sin-cos positions at (possibly fractional) grid points: (N,) rows, cols -> (N, dim).

    Half the channels encode the row, half the column, each as [sin(pos·ω) | cos(pos·ω)]
    with ω_i = 10000^(-i / (dim/4)) (Vaswani et al. §3.5, per axis).
    """
    omega = 10000.0 ** (-torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)
    parts = []
    for pos in (rows, cols):
        angle = pos.double()[:, None] * omega  # (N, dim/4)
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()  # (N, dim)


class QwenVLAdapter(nn.Module):
    """Qwen-VL's vision-language adapter (Bai et al. 2023, §2.1): one cross-attention layer.

    ``num_queries`` learned queries (a √Q × √Q grid) read the ViT's (B, N, kv_dim) patches;
    2-D sin-cos positions are added to queries and keys (not values), the keys' grid rescaled
    onto the queries' so any input resolution lands on the same coordinates. The output is
    always (B, num_queries, dim): the token count no longer follows the image.
    """

    def __init__(self, dim: int, kv_dim: int, num_queries: int = 256, num_heads: int = 8) -> None:
        super().__init__()
        g = math.isqrt(num_queries)
        if g * g != num_queries:
            raise ValueError(f"QwenVLAdapter: num_queries must be a square, got {num_queries}")
        self.dim, self.grid, self.num_heads = dim, g, num_heads
        self.query = nn.Parameter(torch.randn(num_queries, dim) * 0.02)  # (Q, D)
        self.kv_proj = nn.Linear(kv_dim, dim, bias=False)
        self.ln_q, self.ln_kv, self.ln_post = (nn.LayerNorm(dim) for _ in range(3))
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(dim, dim) for _ in range(4))
        self.proj = nn.Linear(dim, dim, bias=False)
        r, c = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        self.register_buffer("query_pos", sincos_2d(r.flatten(), c.flatten(), dim),
                             persistent=False)  # (Q, D)

    def forward(self, x: Tensor, grid_hw: tuple[int, int]) -> Tensor:
        """x: (B, h·w, kv_dim) raster patches of an h×w grid -> (B, Q, D)."""
        h, w = grid_hw
        if x.dim() != 3 or x.shape[1] != h * w:
            raise ValueError(f"QwenVLAdapter: expected x of shape (B, {h * w}, kv_dim) for grid "
                             f"{h}x{w}, got {tuple(x.shape)}")
        B = x.shape[0]
        r, c = torch.meshgrid(torch.arange(h) * (self.grid / h), torch.arange(w) * (self.grid / w),
                              indexing="ij")
        key_pos = sincos_2d(r.flatten(), c.flatten(), self.dim).to(x)  # (N, D)
        kv = self.ln_kv(self.kv_proj(x))  # (B, N, D)
        q = self.ln_q(self.query) + self.query_pos  # (Q, D)
        H = self.num_heads

        def heads(t: Tensor) -> Tensor:  # (B, T, D) -> (B, H, T, D/H)
            return t.view(t.shape[0], t.shape[1], H, -1).transpose(1, 2)

        qh = heads(self.q_proj(q).expand(B, -1, -1))  # (B, H, Q, d)
        kh, vh = heads(self.k_proj(kv + key_pos)), heads(self.v_proj(kv))  # (B, H, N, d)
        out, _ = attend(qh, kh, vh)  # (B, H, Q, d)
        out = self.out_proj(out.transpose(1, 2).reshape(B, -1, self.dim))  # (B, Q, D)
        return self.proj(self.ln_post(out))


# --------------------------------------------------------------------------- patches & positions


def image_to_patches(image: Tensor, patch_size: int, merge_size: int = 2,
                     temporal_patch_size: int = 1) -> tuple[Tensor, Tensor]:
    """One (C, H, W) image -> (pixel rows (h·w, C·tp·p²), grid (1, h, w)) as Qwen2-VL packs it.

    Patches are **block-major**: the m×m patches of each merge window are consecutive (raster
    order inside the window), windows in raster order. Each row is (C, tp, p, p) flattened;
    the image is repeated ``temporal_patch_size`` times in time, as the processor does.
    """
    C, H, W = image.shape
    p, m, tp = patch_size, merge_size, temporal_patch_size
    if H % (p * m) or W % (p * m):
        raise ValueError(f"image_to_patches: H, W = {H}, {W} must be multiples of "
                         f"patch_size·merge_size = {p * m}")
    h, w = H // p, W // p
    x = image[:, None].expand(C, tp, H, W)
    x = x.reshape(C, tp, h // m, m, p, w // m, m, p)  # (C, tp, bh, m, p, bw, m, p)
    x = x.permute(2, 5, 3, 6, 0, 1, 4, 7)  # (bh, bw, m_row, m_col, C, tp, p, p)
    return x.reshape(h * w, C * tp * p * p), torch.tensor([[1, h, w]])


def pack_images(images: list[Tensor], patch_size: int, merge_size: int = 2,
                temporal_patch_size: int = 1) -> tuple[Tensor, Tensor]:
    """Images of different sizes -> (pixel_values (Σ h·w, C·tp·p²), image_grid_thw (n, 3))."""
    packed = [image_to_patches(im, patch_size, merge_size, temporal_patch_size) for im in images]
    return torch.cat([p for p, _ in packed]), torch.cat([g for _, g in packed])


def vision_positions(grid_thw: Tensor, merge_size: int) -> Tensor:
    """(row, col) of every patch in block-major order: (Σ t·h·w, 2)."""
    out = []
    for t, h, w in grid_thw.tolist():
        r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")  # (h, w)
        m = merge_size
        blocks = [z.reshape(h // m, m, w // m, m).transpose(1, 2).flatten() for z in (r, c)]
        out.append(torch.stack(blocks, dim=-1).repeat(t, 1))  # (t·h·w, 2)
    return torch.cat(out)


def window_partition(grid_thw: Tensor, merge_size: int, window: int) -> tuple[Tensor, list[int]]:
    """Qwen2.5-VL's windows over merged tokens (``window`` merged units a side).

    Returns (order, lengths): ``order`` (Σ t·h·w/m²,) lists merged-token indices window by
    window (windows in raster order, tokens raster inside; edge windows are smaller) and
    ``lengths`` the number of *patches* (m² per merged token) in each window.
    """
    order, lengths, offset = [], [], 0
    for t, h, w in grid_thw.tolist():
        gh, gw = h // merge_size, w // merge_size
        idx = torch.arange(t * gh * gw).view(t, gh, gw)
        for f in range(t):
            for r0 in range(0, gh, window):
                for c0 in range(0, gw, window):
                    win = idx[f, r0:r0 + window, c0:c0 + window].flatten()
                    order.append(win + offset)
                    lengths.append(win.numel() * merge_size**2)
        offset += t * gh * gw
    return torch.cat(order), lengths


def mrope_position_ids(input_ids: Tensor, image_grid_thw: Tensor | None, image_token_id: int,
                       merge_size: int, attention_mask: Tensor | None = None) -> Tensor:
    """M-RoPE (time, row, col) indices of every token: (3, B, T) (Qwen2-VL §2.1).

    Text: one index on all three axes, +1 per token. An image of t×h×w patches whose tokens
    start at index s: (s + frame, s + row, s + col) over its t × h/m × w/m merged grid; the
    next text token gets s + max(h, w)/m. Only tokens with ``attention_mask`` 1 count
    (padding keeps index 0). Images are consumed in batch-major order of appearance.
    """
    B, T = input_ids.shape
    pos = torch.zeros(3, B, T, dtype=torch.long)
    grids = [] if image_grid_thw is None else image_grid_thw.tolist()
    k = 0
    for b in range(B):
        keep = (torch.ones(T, dtype=torch.bool) if attention_mask is None
                else attention_mask[b].bool().cpu())
        ids = input_ids[b].cpu()[keep].tolist()
        rows, cur, i = [], 0, 0
        while i < len(ids):
            if ids[i] != image_token_id:
                rows.append(torch.full((3, 1), cur))
                cur, i = cur + 1, i + 1
                continue
            if k >= len(grids):
                raise ValueError(f"mrope_position_ids: row {b} has more images than the "
                                 f"{len(grids)} rows of image_grid_thw")
            t, h, w = grids[k]
            gh, gw = h // merge_size, w // merge_size
            n = t * gh * gw
            if ids[i:i + n] != [image_token_id] * n:
                raise ValueError(f"mrope_position_ids: image {k} (grid {t}x{h}x{w}) needs {n} "
                                 f"consecutive image tokens in row {b}")
            tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(gh), torch.arange(gw),
                                        indexing="ij")
            rows.append(torch.stack([tt.flatten(), hh.flatten(), ww.flatten()]) + cur)
            cur, i, k = cur + max(gh, gw), i + n, k + 1
        if rows:
            pos[:, b, keep] = torch.cat(rows, dim=1)
    if k != len(grids):
        raise ValueError(f"mrope_position_ids: image_grid_thw has {len(grids)} images, the "
                         f"input_ids hold {k}")
    return pos.to(input_ids.device)


# --------------------------------------------------------------------------- vision encoder


class Qwen2VisionEncoder(nn.Module):
    """Packed images -> merged LM tokens (Qwen2-VL / Qwen2.5-VL vision tower + merger)."""

    def __init__(self, c: Qwen2VLConfig) -> None:
        super().__init__()
        self.config = c
        self.patch_embed = nn.Linear(c.patch_dim, c.vision_dim, bias=False)  # the Conv3d
        self.blocks = nn.ModuleList(
            TransformerBlock(c.vision_dim, c.vision_heads, mlp_hidden=c.vision_mlp_hidden,
                             norm=c.vision_norm, eps=1e-6, mlp=c.vision_mlp, mlp_bias=True)
            for _ in range(c.vision_depth))
        hd = c.vision_dim // c.vision_heads
        inv = 1.0 / c.vision_rope_base ** (torch.arange(0, hd // 2, 2).float() / (hd // 2))
        self.register_buffer("inv_freq", torch.cat([inv, inv]), persistent=False)  # rows | cols
        self.merge_norm = make_norm(c.vision_norm, c.vision_dim, 1e-6)
        merged = c.vision_dim * c.merge_size**2
        self.merge_mlp = MLP(merged, merged, act="gelu", out_dim=c.lm.dim)

    def segments(self, grid_thw: Tensor) -> tuple[list[int], Tensor | None, list[int] | None]:
        """(per-frame lengths, window order over merged tokens or None, window lengths)."""
        c = self.config
        full = torch.repeat_interleave(grid_thw[:, 1] * grid_thw[:, 2], grid_thw[:, 0]).tolist()
        if c.window_size is None:
            return full, None, None
        order, lengths = window_partition(grid_thw, c.merge_size,
                                          c.window_size // (c.patch_size * c.merge_size))
        return full, order, lengths

    def forward(self, pixel_values: Tensor, grid_thw: Tensor) -> Tensor:
        """pixel_values (Σ t·h·w, C·tp·p²), grid_thw (n, 3) -> (Σ t·h·w/m², D_lm)."""
        c = self.config
        m2 = c.merge_size**2
        if pixel_values.dim() != 2 or pixel_values.shape[1] != c.patch_dim:
            raise ValueError(f"Qwen2VL: expected pixel_values of shape (patches, {c.patch_dim}), "
                             f"got {tuple(pixel_values.shape)}")
        n = int(grid_thw.prod(-1).sum())
        if pixel_values.shape[0] != n:
            raise ValueError(f"Qwen2VL: image_grid_thw {grid_thw.tolist()} holds {n} patches, "
                             f"pixel_values has {pixel_values.shape[0]} rows")
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # (N, Dv)
        pos = vision_positions(grid_thw, c.merge_size).to(x.device)  # (N, 2)
        full, order, win = self.segments(grid_thw)
        if order is not None:  # regroup patches window by window (m² patches per merged token)
            x = x.view(-1, m2, x.shape[-1])[order].flatten(0, 1)
            pos = pos.view(-1, m2, 2)[order].flatten(0, 1)
        cos, sin = sectioned_rope(pos.T[:, None], self.inv_freq, [self.inv_freq.numel() // 2] * 2)
        rope = (cos[0, 0], sin[0, 0])  # (N, hd) each
        for i, block in enumerate(self.blocks):
            lengths = full if order is None or i in c.fullatt_blocks else win
            x = attend_segments(block, x, lengths, rope)
        x = self.merge_mlp(self.merge_norm(x).view(-1, m2 * x.shape[-1]))  # (N/m², D_lm)
        if order is not None:
            x = x[torch.argsort(order.to(x.device))]  # back to raster order of windows
        return x


def attend_segments(block: TransformerBlock, x: Tensor, lengths: list[int],
                    rope: tuple[Tensor, Tensor]) -> Tensor:
    """Run ``block`` on packed tokens (N, D) where each consecutive segment attends only to
    itself (block-diagonal attention). Equal segments are batched, others masked."""
    N, D = x.shape
    cos, sin = rope  # (N, hd)
    if len(set(lengths)) == 1:  # all the same size: (S, L, D), no mask needed
        S, L = len(lengths), lengths[0]
        r = (cos.view(S, 1, L, -1), sin.view(S, 1, L, -1))
        return block(x.view(S, L, D), rope=r).view(N, D)
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=x.device),
                                  torch.tensor(lengths, device=x.device))  # (N,)
    mask = seg[:, None] == seg[None, :]  # (N, N) block-diagonal
    return block(x[None], mask=mask, rope=(cos[None, None], sin[None, None]))[0]


# --------------------------------------------------------------------------- the model


class Qwen2VL(nn.Module):
    """Qwen2-VL / Qwen2.5-VL: dynamic-resolution vision encoder + M-RoPE decoder LM."""

    def __init__(self, config: Qwen2VLConfig) -> None:
        super().__init__()
        self.config = config
        self.visual = Qwen2VisionEncoder(config)
        self.lm = DecoderLM(config.lm)

    def position_ids(self, input_ids: Tensor, image_grid_thw: Tensor | None,
                     attention_mask: Tensor | None = None) -> Tensor:
        """(3, B, T) M-RoPE ids, or with ``positions="1d"`` the plain running index on all
        three axes (the image's 2-D layout is then invisible to the LM)."""
        c = self.config
        if c.positions == "1d":
            mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
            pos = (mask.cumsum(-1) - 1).clamp(min=0) * mask  # (B, T)
            return pos[None].expand(3, -1, -1)
        return mrope_position_ids(input_ids, image_grid_thw, c.image_token_id, c.merge_size,
                                  attention_mask)

    def forward(self, input_ids: Tensor, pixel_values: Tensor | None = None,
                image_grid_thw: Tensor | None = None, attention_mask: Tensor | None = None,
                labels: Tensor | None = None) -> QwenVLOutput:
        """input_ids (B, T) with t·h·w/m² image tokens per image; pixel_values and
        image_grid_thw as :func:`pack_images` makes them; right padding."""
        c = self.config
        x = self.lm.embed(input_ids)  # (B, T, D)
        is_image = input_ids == c.image_token_id  # (B, T)
        if pixel_values is not None:
            if image_grid_thw is None:
                raise ValueError("Qwen2VL: pixel_values need image_grid_thw (num_images, 3)")
            feats = self.visual(pixel_values, image_grid_thw)  # (Σ tokens, D)
            if int(is_image.sum()) != feats.shape[0]:
                raise ValueError(f"Qwen2VL: input_ids hold {int(is_image.sum())} image tokens, "
                                 f"the images give {feats.shape[0]} "
                                 f"(t·h·w/{c.merge_size**2} per image)")
            x = x.masked_scatter(is_image[..., None], feats.to(x.dtype))  # batch-major order
        elif bool(is_image.any()):
            raise ValueError("Qwen2VL: input_ids hold image tokens but no pixel_values given")
        pos = self.position_ids(input_ids, image_grid_thw, attention_mask)  # (3, B, T)
        out = self.lm(inputs_embeds=x, attention_mask=attention_mask, position_ids=pos)
        loss = lm_loss(out.logits, labels) if labels is not None else None
        return QwenVLOutput(loss=loss, logits=out.logits)

    @classmethod
    def from_hf(cls, hf_model: Any) -> Qwen2VL:
        """Copy a ``transformers`` Qwen2VLForConditionalGeneration or
        Qwen2_5_VLForConditionalGeneration (see :mod:`minivlm.interop.qwen_vl`)."""
        from minivlm.interop.qwen_vl import qwen2vl_from_hf

        return qwen2vl_from_hf(cls, Qwen2VLConfig, hf_model)
