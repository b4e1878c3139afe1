"""LXMERT: two streams, then a cross-modality encoder (Tan & Bansal 2019, "LXMERT: Learning
Cross-Modality Encoder Representations from Transformers").

Before ViT, an image reached a vision-language transformer as a *set of detected objects*: a
Faster R-CNN proposes boxes, and each box's RoI-pooled CNN feature (2048-d) plus its
normalised position (x1, y1, x2, y2) is one visual token. LXMERT (§2) reads them with three
encoders:

    language encoder            l_layers BERT layers over the words            (B, T, D)
    object-relationship encoder r_layers BERT layers over the regions          (B, N, D)
    cross-modality encoder      x_layers of: cross-attention both ways (one shared module),
                                then self-attention and an MLP per stream

Region embedding (§2.1): ``(LN(W_f f + b_f) + LN(W_p p + b_p)) / 2`` -- no order, the box
position is the only "where". Every layer is post-norm BERT. The pooled output is BERT's
``tanh(W h_[CLS])`` on the *language* stream after the cross layers.

Read: :class:`LxmertConfig`, :class:`LxmertOutput`, :class:`CrossModalityLayer`,
:class:`Lxmert`. ``Lxmert.from_hf`` calls :mod:`minivlm.interop.lxmert`; presets
(``lxmert_tiny``, ``lxmert_base``) are in :mod:`minivlm.presets`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from minivlm.nn.attention import MultiHeadAttention
from minivlm.nn.bert import BertEncoder, TextConfig, init_weights, key_mask
from minivlm.nn.blocks import TransformerBlock
from minivlm.nn.config import divisible
from minivlm.utils import raise_first

Tensor = torch.Tensor

__all__ = ["CrossModalityLayer", "Lxmert", "LxmertConfig", "LxmertOutput"]


@dataclass
class LxmertConfig:
    """Sizes of LXMERT (defaults: the paper's, Hugging Face's ``LxmertConfig()``): 9 language,
    5 object-relationship and 5 cross-modality layers of width 768; 2048-d region features
    with 4-d boxes."""

    vocab_size: int = 30522
    max_len: int = 512
    type_vocab_size: int = 2
    dim: int = 768
    num_heads: int = 12
    mlp_hidden: int = 3072
    l_layers: int = 9
    r_layers: int = 5
    x_layers: int = 5
    visual_feat_dim: int = 2048
    visual_pos_dim: int = 4
    act: str = "gelu"
    eps: float = 1e-12
    dropout: float = 0.0

    def __post_init__(self) -> None:
        raise_first("LxmertConfig: ", [
            divisible(self, "dim", "num_heads"),
            (min(self.l_layers, self.r_layers, self.x_layers) >= 0, "layer counts must be >= 0"),
            (self.visual_feat_dim > 0 and self.visual_pos_dim > 0,
             "visual_feat_dim and visual_pos_dim must be positive"),
        ])  # fmt: skip

    def text_config(self) -> TextConfig:
        return TextConfig(vocab_size=self.vocab_size, max_len=self.max_len, dim=self.dim,
                          depth=self.l_layers, num_heads=self.num_heads,
                          mlp_hidden=self.mlp_hidden, act=self.act, eps=self.eps,
                          type_vocab_size=self.type_vocab_size, dropout=self.dropout)  # fmt: skip


@dataclass
class LxmertOutput:
    """``language_output`` (B, T, D), ``vision_output`` (B, N, D) after the last cross layer;
    ``pooled_output`` (B, D) = tanh(dense(language_output[:, 0]))."""

    language_output: Tensor
    vision_output: Tensor
    pooled_output: Tensor


def _block(cfg: LxmertConfig) -> TransformerBlock:
    """One post-norm BERT layer of width ``dim``."""
    return TransformerBlock(cfg.dim, cfg.num_heads, mlp_hidden=cfg.mlp_hidden, eps=cfg.eps,
                            mlp=cfg.act, prenorm=False, dropout=cfg.dropout)  # fmt: skip


class CrossModalityLayer(nn.Module):
    """One cross-modality layer (§2.2, Fig. 1 right)::

        l = LN(l + XAttn(l -> v));   v = LN(v + XAttn(v -> l))      # the same XAttn + LN
        l = LN(l + SelfAttn(l));     v = LN(v + SelfAttn(v))
        l = LN(l + MLP(l));          v = LN(v + MLP(v))

    Both directions share one cross-attention module and its LayerNorm, as in the original
    code; the self-attention and MLP sub-layers are :class:`TransformerBlock` steps.
    """

    def __init__(self, cfg: LxmertConfig) -> None:
        super().__init__()
        self.cross_attn = MultiHeadAttention(cfg.dim, cfg.num_heads, dropout=cfg.dropout)
        self.cross_norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.lang = _block(cfg)
        self.visn = _block(cfg)

    def cross(self, x: Tensor, ctx: Tensor, ctx_mask: Tensor | None,
              need_weights: bool = False) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        a, w = self.cross_attn(x, ctx, mask=ctx_mask, need_weights=need_weights)
        return self.cross_norm(x + self.drop(a)), w

    def forward(self, lang: Tensor, lang_mask: Tensor | None, visn: Tensor,
                visn_mask: Tensor | None, need_weights: bool = False):  # fmt: skip
        """lang (B, T, D), visn (B, N, D); masks (B, 1, 1, T|N) bool or None."""
        l2, w = self.cross(lang, visn, visn_mask, need_weights)  # words read regions
        v2, _ = self.cross(visn, lang, lang_mask)  # regions read words
        lang = self.lang.mlp_step(self.lang.self_attention_step(l2, lang_mask))
        visn = self.visn.mlp_step(self.visn.self_attention_step(v2, visn_mask))
        return lang, visn, w


class Lxmert(nn.Module):
    """Language encoder + object-relationship encoder + cross-modality encoder (LXMERT §2)."""

    def __init__(self, config: LxmertConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = replace(config or LxmertConfig(), **overrides)
        self.config = cfg
        self.lang = BertEncoder(cfg.text_config())  # embeddings + l_layers
        self.visn_fc = nn.Linear(cfg.visual_feat_dim, cfg.dim)
        self.visn_norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.box_fc = nn.Linear(cfg.visual_pos_dim, cfg.dim)
        self.box_norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.r_layers = nn.ModuleList(_block(cfg) for _ in range(cfg.r_layers))
        self.x_layers = nn.ModuleList(CrossModalityLayer(cfg) for _ in range(cfg.x_layers))
        self.pooler = nn.Linear(cfg.dim, cfg.dim)
        init_weights(self)
        self.cross_attentions: list[Tensor] = []

    def embed_regions(self, visual_feats: Tensor, visual_pos: Tensor) -> Tensor:
        """(B, N, F) features and (B, N, P) boxes -> (B, N, D) = mean of the two LN'd parts."""
        cfg = self.config
        if visual_feats.dim() != 3 or visual_feats.shape[-1] != cfg.visual_feat_dim:
            raise ValueError(f"Lxmert: expected visual_feats (B, N, {cfg.visual_feat_dim}), "
                             f"got {tuple(visual_feats.shape)}")  # fmt: skip
        if visual_pos.shape[:2] != visual_feats.shape[:2] or (
            visual_pos.shape[-1] != cfg.visual_pos_dim
        ):
            raise ValueError(
                f"Lxmert: expected visual_pos ({visual_feats.shape[0]}, {visual_feats.shape[1]}, "
                f"{cfg.visual_pos_dim}) (normalised x1, y1, x2, y2), got {tuple(visual_pos.shape)}"
            )
        x = self.visn_norm(self.visn_fc(visual_feats))  # (B, N, D)
        y = self.box_norm(self.box_fc(visual_pos))  # (B, N, D)
        return self.drop((x + y) / 2)

    def forward(
        self,
        input_ids: Tensor,
        visual_feats: Tensor,
        visual_pos: Tensor,
        attention_mask: Tensor | None = None,
        visual_attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        need_weights: bool = False,
    ) -> LxmertOutput:
        """input_ids (B, T); visual_feats (B, N, F); visual_pos (B, N, P) normalised boxes;
        masks (B, T) / (B, N), 1 = real. ``need_weights`` keeps the words->regions
        cross-attention maps of each cross layer in ``self.cross_attentions``."""
        B, T = input_ids.shape
        N = visual_feats.shape[1]
        v = self.embed_regions(visual_feats, visual_pos)  # (B, N, D)
        lang_mask = key_mask("Lxmert", attention_mask, B, T, "attention_mask")  # (B,1,1,T)
        visn_mask = key_mask("Lxmert", visual_attention_mask, B, N, "visual_attention_mask")
        lang = self.lang(input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state  # (B, T, D)
        for block in self.r_layers:
            v = block(v, visn_mask)
        self.cross_attentions = []
        for layer in self.x_layers:
            lang, v, w = layer(lang, lang_mask, v, visn_mask, need_weights)
            if need_weights:
                self.cross_attentions.append(w)  # (B, H, T, N)
        pooled = torch.tanh(self.pooler(lang[:, 0]))  # (B, D)
        return LxmertOutput(language_output=lang, vision_output=v, pooled_output=pooled)

    @classmethod
    def from_hf(cls, model: nn.Module) -> Lxmert:
        """Copy a ``transformers.LxmertModel`` (or a model holding one as ``.lxmert``)."""
        from minivlm.interop.lxmert import lxmert_from_hf

        return lxmert_from_hf(cls, LxmertConfig, model)
