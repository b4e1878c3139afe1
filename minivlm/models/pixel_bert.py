"""Pixel-BERT: CNN grid features straight into BERT (Huang et al. 2020, "Pixel-BERT: Aligning
Image Pixels with Text by Deep Multi-Modal Transformers").

Region features (LXMERT, UNITER) need a detector trained on a fixed set of object classes.
Pixel-BERT (§3) drops it: a CNN (ResNet) turns the image into a feature map, whose cells --
"pixels" -- are flattened in raster order and become the visual tokens::

    v_k = W f_k + s_v          f_k: the C-d feature of cell k,  s_v: one learned vector

``s_v`` (the shared "semantic embedding", §3.3) marks every pixel token as visual, as BERT's
segment embedding marks a sentence; it is the same for all cells, so it acts as a bias. No
position is added: where a cell is must come from the CNN (its zero padding tells the border
cells apart). Words and pixels then go through one BERT, trained end to end with the CNN.

**Random pixel sampling** (§3.4): in pre-training only a random subset of the cells of each
image (``sample_pixels``) enters the transformer -- cheaper, and a form of dropout that makes
the model rely on incomplete visual input; at test time every cell is used.

Preset: ``pixel_bert_tiny`` (shapes world). The paper's ResNet-50/152 backbones use bottleneck
blocks, which :mod:`minivlm.nn.convnet` does not build, so there is no published-size preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from minivlm.nn.bert import BertEncoder, BertMLMHead, BertSizes, init_weights
from minivlm.nn.config import as_part, divisible
from minivlm.nn.convnet import ResNet, ResNetConfig
from minivlm.utils import raise_first

Tensor = torch.Tensor

__all__ = ["PixelBert", "PixelBertConfig", "PixelBertOutput", "sample_pixels"]


@dataclass
class PixelBertConfig(BertSizes):
    """Pixel-BERT: a ResNet (``cnn``, :class:`~minivlm.nn.convnet.ResNetConfig`) and a BERT of
    ``depth`` layers of width ``dim`` (:class:`~minivlm.nn.bert.BertSizes`, BERT-base).
    ``sample_pixels`` cells per image in training (0: all)."""

    cnn: ResNetConfig = field(default_factory=ResNetConfig)
    sample_pixels: int = 0

    def __post_init__(self) -> None:
        self.cnn = as_part("PixelBertConfig", "cnn", self.cnn, ResNetConfig)
        raise_first("PixelBertConfig: ", [
            divisible(self, "dim", "num_heads"),
            (self.sample_pixels >= 0, f"sample_pixels must be >= 0, got {self.sample_pixels}"),
        ])  # fmt: skip


@dataclass
class PixelBertOutput:
    """``loss`` (MLM + ITM over the targets given), ``last_hidden_state`` (B, T+K, D) with the
    T words first, ``mlm_logits`` (B, T, V), ``itm_logits`` (B, 2), ``pixel_index`` (B, K)
    the raster indices of the cells that entered."""

    loss: Tensor | None
    last_hidden_state: Tensor
    mlm_logits: Tensor
    itm_logits: Tensor
    pixel_index: Tensor
    loss_mlm: Tensor | None = None
    loss_itm: Tensor | None = None


def sample_pixels(pixels: Tensor, k: int, generator: torch.Generator | None = None
                  ) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Random pixel sampling (§3.4): keep ``k`` of the M cells of each image, a fresh random
    subset per image, in raster order. (B, M, D) -> ((B, k, D), indices (B, k))."""
    B, M, _ = pixels.shape
    if not 0 < k <= M:
        raise ValueError(f"sample_pixels: k must be in 1..{M} (the grid's cells), got {k}")
    noise = torch.rand(B, M, generator=generator, device=pixels.device)
    idx = noise.argsort(dim=1)[:, :k].sort(dim=1).values  # (B, k)
    return pixels.gather(1, idx[..., None].expand(-1, -1, pixels.shape[-1])), idx


class PixelBert(nn.Module):
    """ResNet grid -> pixel tokens (+ s_v) -> one BERT over [words; pixels], MLM and ITM."""

    def __init__(self, config: PixelBertConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = replace(config or PixelBertConfig(), **overrides)
        self.config = cfg
        D = cfg.dim
        self.cnn = ResNet(cfg.cnn)
        self.bert = BertEncoder(cfg.text_config())
        self.pixel_proj = nn.Linear(cfg.cnn.dim, D)
        self.visual_embed = nn.Parameter(torch.zeros(D))  # s_v, shared by every cell
        self.pixel_norm = nn.LayerNorm(D, eps=cfg.eps)
        self.pooler = nn.Linear(D, D)
        self.itm_head = nn.Linear(D, 2)
        self.mlm_head = BertMLMHead(D, cfg.vocab_size, act=cfg.act, eps=cfg.eps)
        for m in (self.pixel_proj, self.pixel_norm, self.pooler, self.itm_head):
            init_weights(m)
        self.mlm_head.tie_weights(self.bert.word_embeddings)

    def pixel_tokens(
        self, pixel_values: Tensor, k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """(B, C, H, W) -> pixel tokens (B, K, D) and their raster indices (B, K); ``k`` cells
        sampled per image (default: ``sample_pixels`` in training, all in eval)."""
        grid = self.cnn.features(pixel_values)  # (B, C', h, w)
        f = grid.flatten(2).transpose(1, 2)  # (B, M = h*w, C') raster order
        v = self.pixel_norm(self.pixel_proj(f) + self.visual_embed)  # (B, M, D)
        if k is None:
            k = self.config.sample_pixels if self.training else 0
        if k and k < v.shape[1]:
            return sample_pixels(v, k, generator)
        return v, torch.arange(v.shape[1]).expand(v.shape[0], -1)

    def forward(
        self,
        input_ids: Tensor,
        pixel_values: Tensor,
        attention_mask: Tensor | None = None,
        mlm_labels: Tensor | None = None,
        itm_labels: Tensor | None = None,
        num_pixels: int | None = None,
        generator: torch.Generator | None = None,
    ) -> PixelBertOutput:
        """input_ids (B, T), pixel_values (B, 3, H, W); ``num_pixels`` overrides the number
        of sampled cells (0 = all). Targets: ``mlm_labels`` (B, T), ``itm_labels`` (B,)."""
        B, T = input_ids.shape
        am = torch.ones(B, T, dtype=torch.long) if attention_mask is None else attention_mask
        v, idx = self.pixel_tokens(pixel_values, num_pixels, generator)  # (B, K, D)
        x = torch.cat([self.bert.embed(input_ids), v], dim=1)  # (B, T+K, D)
        joint = torch.cat([am, am.new_ones(B, v.shape[1])], dim=1)
        h = self.bert.forward_layers(x, joint).last_hidden_state  # (B, T+K, D)
        out = PixelBertOutput(None, h, self.mlm_head(h[:, :T]),
                              self.itm_head(torch.tanh(self.pooler(h[:, 0]))), idx)  # fmt: skip
        losses = []
        if mlm_labels is not None:
            out.loss_mlm = F.cross_entropy(out.mlm_logits.flatten(0, 1), mlm_labels.flatten())
            losses.append(out.loss_mlm)
        if itm_labels is not None:
            out.loss_itm = F.cross_entropy(out.itm_logits, itm_labels)
            losses.append(out.loss_itm)
        out.loss = sum(losses) if losses else None
        return out
