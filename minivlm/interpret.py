"""Reading a trained model: attention rollout and Grad-CAM maps (no plotting; ``viz`` draws them).

* :func:`attention_rollout` (Abnar & Zuidema 2020, §3) multiplies the head-averaged attention
  of every layer, residual included, to see which input tokens an output token draws on;
  :func:`cls_attention_map` reads the [CLS] row of it as an (h, w) patch map.
* :func:`gradcam` (Selvaraju et al. 2017, §3, on cross-attention as in ALBEF §5) weighs a
  fusion layer's attention to each image patch by the positive part of the gradient of the
  image-text matching score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = Any  # torch.Tensor | np.ndarray | nested sequences of numbers

__all__ = ["attention_rollout", "cls_attention_map", "gradcam"]


def attention_rollout(
    attentions: Sequence[ArrayLike] | torch.Tensor,
    head_fusion: str = "mean",
    add_residual: bool = True,
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020, §3): how much each output token draws on each
    input token through all layers.

    attentions: per layer (B, H, T, T) weights, first layer first (a list, or a stacked
    (L, B, H, T, T) tensor). Per layer the heads are fused (``"mean"``, ``"max"``, ``"min"``),
    the residual stream is added as ``A' = 0.5 A + 0.5 I`` and rows are renormalised to sum
    to 1; then ``rollout = A'_L @ ... @ A'_2 @ A'_1``.

    Returns (B, T, T), float32, on the device of the inputs.
    """
    if isinstance(attentions, torch.Tensor):
        if attentions.dim() != 5:
            raise ValueError(
                "attentions: expected a list of (B, H, T, T) tensors or a stacked (L, B, H, T, T) "
                f"tensor, got a tensor of shape {tuple(attentions.shape)}"
            )
        layers = list(attentions.unbind(0))
    else:
        layers = [a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
                  for a in attentions]
    if not layers:
        raise ValueError("attentions: expected at least one layer of (B, H, T, T) weights")
    fusions = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1),
               "min": lambda a: a.amin(1)}
    if head_fusion not in fusions:
        raise ValueError(f"head_fusion: expected one of {sorted(fusions)}, got {head_fusion!r}")
    shape0 = tuple(layers[0].shape)
    rollout: torch.Tensor | None = None
    for i, a in enumerate(layers):
        if a.dim() != 4 or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"attentions[{i}]: expected (B, H, T, T), got {tuple(a.shape)}")
        if tuple(a.shape) != shape0:
            raise ValueError(
                f"attentions[{i}]: shape {tuple(a.shape)} differs from layer 0's {shape0}"
            )
        a = fusions[head_fusion](a.detach().float())  # (B, T, T)
        if add_residual:
            eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
            a = 0.5 * a + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)  # rows sum to 1
        rollout = a if rollout is None else a @ rollout  # (B, T, T)
    assert rollout is not None
    return rollout


def cls_attention_map(
    rollout: ArrayLike,
    grid_hw: Sequence[int],
    cls_index: int = 0,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """The [CLS] row of a rollout (or of one attention matrix) over the image patches.

    rollout: (B, T, T) or (T, T) with T = num_prefix_tokens + h*w (CLS and other prefix
    tokens first, then patches in raster order, as in ViT). Returns (B, h, w) or (h, w).
    """
    r = rollout if isinstance(rollout, torch.Tensor) else torch.as_tensor(np.asarray(rollout))
    h, w = _check_grid_hw(grid_hw)
    squeeze = r.dim() == 2
    if squeeze:
        r = r[None]
    if r.dim() != 3 or r.shape[-1] != r.shape[-2]:
        raise ValueError(f"rollout: expected (B, T, T) or (T, T), got {tuple(rollout.shape)}")
    T = r.shape[-1]
    if T - num_prefix_tokens != h * w:
        raise ValueError(
            f"rollout: {T} tokens minus {num_prefix_tokens} prefix token(s) is not the "
            f"{h}x{w}={h * w} patches of grid_hw"
        )
    if not -T <= cls_index < T:
        raise ValueError(f"cls_index: {cls_index} is out of range for {T} tokens")
    out = r[:, cls_index, num_prefix_tokens:].reshape(r.shape[0], h, w)  # (B, h, w)
    return out[0] if squeeze else out


def gradcam(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    layer: int | None = None,
) -> torch.Tensor:
    """Grad-CAM on an ALBEF fusion layer's cross-attention (ALBEF §5), (B, T, N), N patches.

    For fusion layer ``layer`` (index among the fusion layers, default the 3rd = BERT layer 8 as
    in the paper; with 3 or fewer fusion layers the second-to-last, because in the last one only
    the [CLS] row reaches the ITM head and every word's map is zero), take its cross-attention
    maps A (B, H, T, 1+N) and the gradient of the ITM "match" logit w.r.t. them; the map is the
    mean over heads of ``A · relu(∂score/∂A)`` on the patch columns, zero on padded text rows.
    Entry [b, t, n]: how much word t's attention to patch n raises the matching score.
    Parameter gradients are not touched. ``model``: a :class:`~minivlm.models.albef.ALBEF`.
    """
    nf = model.config.num_fusion_layers
    layer = min(2, max(0, nf - 2)) if layer is None else layer
    if not -nf <= layer < nf:
        raise ValueError(
            f"gradcam: layer must index one of the {nf} fusion layers (-{nf}..{nf - 1}), "
            f"got {layer}"
        )
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask  # (B, T)
    enc = model.text_encoder
    with torch.enable_grad():
        image_embeds = model.image_encoder(pixel_values).detach().requires_grad_(True)
        text_embeds = model.text_embeds(enc, input_ids, mask)  # (B, T, Dt)
        out = model.fuse(enc, text_embeds, mask, image_embeds, need_weights=True)
        attn = out.cross_attentions[layer]  # (B, H, T, 1+N)
        score = model.itm_head(out.last_hidden_state[:, 0])[:, 1].sum()
        (grad,) = torch.autograd.grad(score, attn)
    cam = attn.detach()[..., 1:] * grad[..., 1:].clamp(min=0)  # (B, H, T, N): patches only
    cam = cam * mask[:, None, :, None].to(cam.dtype)
    return cam.mean(dim=1)  # (B, T, N)


def _check_grid_hw(grid_hw: Sequence[int], name: str = "grid_hw") -> tuple[int, int]:
    if len(grid_hw) != 2 or any(int(g) <= 0 for g in grid_hw):
        raise ValueError(f"{name}: expected (h, w) with positive ints, got {grid_hw!r}")
    return int(grid_hw[0]), int(grid_hw[1])
