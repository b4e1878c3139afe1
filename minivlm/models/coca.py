"""CoCa (Yu et al. 2022, "CoCa: Contrastive Captioners are Image-Text Foundation Models").

One image encoder and one text decoder trained with two losses at once (§3.2, Figure 2). The
decoder's first half is *unimodal* (causal self-attention only, no image) and its second half
*multimodal* (causal self-attention + cross-attention to the image)::

    tokens   = ViT(I)                                             # (B, 1+P, Dv)
    pooled   = LN(AttnPool(tokens; 1 + N queries))                # (B, 1+N, E)
    img_emb  = pooled[:, 0] @ W_img            img_tokens = pooled[:, 1:]   # captioner's N
    u        = UnimodalDecoder([w1 .. wT, CLS])                   # causal, CLS appended last
    txt_emb  = LN(u[:, -1]) @ W_txt                               # CLS saw the whole caption
    logits   = MultimodalDecoder(u[:, :-1], img_tokens) @ W_vocab # causal + cross-attention
    L_con    = ½ (CE(s · img_emb @ txt_embᵀ, diag) + CE(.ᵀ, diag))          # embeddings normalised
    L_cap    = CE(logits[:, t], w_{t+1}), padding ignored
    loss     = λ_cap · L_cap + λ_con · L_con                      # λ_cap = 2, λ_con = 1 (§4)

The appended [CLS] must see every real word and no padding: its key mask is the padding mask
(:func:`cls_text_mask`). The pooler follows open_clip's CoCa, the reference the parity tests
use: one attentional pooler with 1 + N queries whose first output is the contrastive embedding
(the paper uses two poolers, 1 and 256 queries; the queries never attend to each other, so the
one difference is shared key/value weights). ``CoCa.from_open_clip`` copies an
``open_clip.coca_model.CoCa`` (:mod:`minivlm.interop.coca`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from minivlm.nn.attention import MultiHeadAttention, causal_mask
from minivlm.nn.bert import TextConfig, check_ids, init_weights, run_blocks, text_blocks
from minivlm.nn.blocks import MLP
from minivlm.nn.config import as_part, divisible, in_vocab
from minivlm.nn.decoding import generate
from minivlm.nn.vit import ViT, ViTConfig, clip_vision_config
from minivlm.utils import raise_first

Tensor = torch.Tensor

__all__ = ["CoCa", "CoCaConfig", "CoCaOutput", "cls_text_mask", "coca_loss"]


# --- Configuration -----------------------------------------------------------------------------


def coca_vision_config(**overrides: Any) -> ViTConfig:
    """open_clip's CoCa ViT: CLIP's layout with GELU and no final norm (the pooler normalises)."""
    return clip_vision_config(**{**dict(act="gelu", final_norm=False), **overrides})


def coca_text_config(**overrides: Any) -> TextConfig:
    """The unimodal text decoder: CLIP's causal text transformer, GELU, 76 positions + [CLS]."""
    return TextConfig.clip(**{**dict(act="gelu", max_len=76, eos_token_id=None), **overrides})


@dataclass
class CoCaConfig:
    """Sizes and switches of CoCa (defaults: open_clip's ``coca_ViT-B-32``).

    vision / text: ViT and unimodal text decoder (dicts are merged into the defaults).
    decoder_depth / decoder_heads / decoder_mlp_hidden: the multimodal decoder, of the text width
        (0 heads / hidden: the text's). embed_dim E: contrastive space, pooler width.
    n_queries: pooler queries; query 0 gives the contrastive embedding, the other N the
        captioner's image tokens. pooler_heads: heads of the pooler.
    caption_weight / contrastive_weight: λ_cap, λ_con (the paper: 2 and 1).
    legacy_cls_mask: open_clip's original mask for the appended [CLS], shifted by one (it misses
        itself and sees the first pad); False: the correct one (open_clip ``correct_cls_mask``).
    """

    vision: ViTConfig = field(default_factory=coca_vision_config)
    text: TextConfig = field(default_factory=coca_text_config)
    vocab_size: int | None = None
    embed_dim: int = 512
    decoder_depth: int = 12
    decoder_heads: int = 0
    decoder_mlp_hidden: int = 0
    n_queries: int = 256
    pooler_heads: int = 8
    logit_scale: float = math.log(1 / 0.07)
    pad_id: int = 0
    bos_id: int = 49406
    eos_id: int = 49407
    caption_weight: float = 2.0
    contrastive_weight: float = 1.0
    legacy_cls_mask: bool = False

    def __post_init__(self) -> None:
        self.vision = as_part("CoCaConfig", "vision", self.vision, coca_vision_config, ViTConfig)
        self.text = as_part("CoCaConfig", "text", self.text, coca_text_config, TextConfig)
        if self.vocab_size is not None:
            self.text = replace(self.text, vocab_size=self.vocab_size)
        self.decoder_heads = self.decoder_heads or self.text.num_heads
        self.decoder_mlp_hidden = self.decoder_mlp_hidden or self.text.hidden
        V = self.text.vocab_size
        raise_first("CoCaConfig: ", [
            (self.text.causal and self.text.prenorm, "text must be causal and pre-norm"),
            (self.vision.class_token, "vision.class_token must be True"),
            (self.n_queries >= 2,
             f"n_queries must be >= 2 (1 contrastive + N), got {self.n_queries}"),
            divisible(self, "embed_dim", "pooler_heads"),
            (self.text.dim % self.decoder_heads == 0,
             f"text.dim {self.text.dim} is not divisible by decoder_heads {self.decoder_heads}"),
            (self.decoder_depth >= 1, f"decoder_depth must be >= 1, got {self.decoder_depth}"),
            *[in_vocab(self, k, V) for k in ("pad_id", "bos_id", "eos_id")],
        ])  # fmt: skip


@dataclass
class CoCaOutput:
    """:meth:`CoCa.forward`: normalised ``image_embeds``/``text_embeds`` (B, E), captioning
    ``logits`` (B, T-1, V) for ``input_ids[:, :-1]``; with ``return_loss``, ``loss`` =
    λ_cap · ``loss_caption`` + λ_con · ``loss_contrastive``."""

    image_embeds: Tensor
    text_embeds: Tensor
    logits: Tensor
    logit_scale: Tensor
    loss: Tensor | None = None
    loss_caption: Tensor | None = None
    loss_contrastive: Tensor | None = None


# --- Masks and the loss --------------------------------------------------------------------------


def cls_text_mask(input_ids: Tensor, pad_id: int = 0, legacy: bool = False) -> Tensor:
    """Self-attention mask of the unimodal decoder over [w1 .. wT, CLS]: (B, T+1, T+1) bool,
    causal AND no padding keys, so the appended [CLS] (last row) sees every real word and itself.
    ``legacy``: open_clip's original, shifted key mask (see :class:`CoCaConfig`)."""
    B, T = input_ids.shape
    real = input_ids != pad_id  # (B, T)
    cls = real.new_ones(B, 1)
    keys = torch.cat([cls, real] if legacy else [real, cls], 1)  # (B, T+1)
    return causal_mask(T + 1, input_ids.device)[None] & keys[:, None, :]  # (B, T+1, T+1)


def coca_loss(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor, logits: Tensor,
              labels: Tensor, pad_id: int = 0, caption_weight: float = 2.0,
              contrastive_weight: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """CoCa's loss (§3.2 Eq. 4): (loss, caption, contrastive). Embeddings (B, E) normalised,
    ``logit_scale`` the log inverse temperature; logits (B, T-1, V) predict labels (B, T-1), the
    caption ids shifted by one, whose ``pad_id`` positions are ignored."""
    sim = logit_scale.exp() * image_embeds @ text_embeds.t()  # (B, B)
    target = torch.arange(len(sim), device=sim.device)
    con = (F.cross_entropy(sim.float(), target) + F.cross_entropy(sim.t().float(), target)) / 2
    cap = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=pad_id)
    return caption_weight * cap + contrastive_weight * con, cap, con


# --- Modules -------------------------------------------------------------------------------------


class AttentionalPooler(nn.Module):
    """Learned queries (n, E) cross-attend to LN(image tokens): (B, S, Dv) -> (B, n, E) (§3.2)."""

    def __init__(self, dim: int, kv_dim: int, num_heads: int, n_queries: int, eps: float) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, dim) * dim**-0.5)
        self.norm_q = nn.LayerNorm(dim, eps=eps)
        self.norm_kv = nn.LayerNorm(kv_dim, eps=eps)
        self.attn = MultiHeadAttention(dim, num_heads, kv_dim=kv_dim)

    def forward(self, x: Tensor, need_weights: bool = False) -> Tensor:
        q = self.norm_q(self.query).expand(len(x), -1, -1)  # (B, n, E)
        out, self.last_attn = self.attn(q, self.norm_kv(x), need_weights=need_weights)
        return out  # (B, n, E)


class CrossAttentionBlock(nn.Module):
    """Multimodal layer's second half (pre-norm): x += Attn(LN(x), LN(image)); x += MLP(LN(x))."""

    def __init__(self, dim: int, kv_dim: int, num_heads: int, hidden: int, act: str, eps: float
                 ) -> None:  # fmt: skip
        super().__init__()
        self.norm_q = nn.LayerNorm(dim, eps=eps)
        self.norm_kv = nn.LayerNorm(kv_dim, eps=eps)
        self.attn = MultiHeadAttention(dim, num_heads, kv_dim=kv_dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, hidden, act=act)

    def forward(self, x: Tensor, image: Tensor, need_weights: bool = False) -> Tensor:
        a, self.last_attn = self.attn(self.norm_q(x), self.norm_kv(image),
                                      need_weights=need_weights)
        x = x + a  # (B, T, D)
        return x + self.mlp(self.norm2(x))


class CoCa(nn.Module):
    """CoCa: ``image_encoder`` (ViT) + ``pooler`` + ``ln_post`` + ``image_proj``; the unimodal
    ``token_embedding``, ``cls_emb``, ``pos_embed``, ``text_blocks``, ``text_norm``,
    ``text_proj``; the multimodal ``decoder_self`` / ``decoder_cross`` layers, ``decoder_norm``,
    ``lm_proj``; ``logit_scale`` (log inverse temperature)."""

    def __init__(self, config: CoCaConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config or CoCaConfig()
        self.config = cfg = replace(cfg, **overrides) if overrides else cfg
        t, E, D, eps = cfg.text, cfg.embed_dim, cfg.text.dim, cfg.text.eps
        self.image_encoder = ViT(cfg.vision)
        self.pooler = AttentionalPooler(E, cfg.vision.dim, cfg.pooler_heads, cfg.n_queries, eps)
        self.ln_post = nn.LayerNorm(E, eps=eps)
        self.image_proj = nn.Linear(E, E, bias=False)
        self.token_embedding = nn.Embedding(t.vocab_size, D)
        self.cls_emb = nn.Parameter(torch.randn(D) * 0.01)
        self.pos_embed = nn.Parameter(torch.randn(t.max_len + 1, D) * 0.01)
        self.text_blocks = text_blocks(t)
        self.text_norm = nn.LayerNorm(D, eps=eps)
        self.text_proj = nn.Linear(D, E, bias=False)
        dec = replace(t, depth=cfg.decoder_depth, num_heads=cfg.decoder_heads,
                      mlp_hidden=cfg.decoder_mlp_hidden, cross_attention_from=None)  # fmt: skip
        self.decoder_self = text_blocks(dec)
        self.decoder_cross = nn.ModuleList(
            CrossAttentionBlock(D, E, cfg.decoder_heads, cfg.decoder_mlp_hidden, t.act, eps)
            for _ in range(cfg.decoder_depth))  # fmt: skip
        self.decoder_norm = nn.LayerNorm(D, eps=eps)
        self.lm_proj = nn.Linear(D, t.vocab_size, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale)))
        init_weights(nn.ModuleList([*self.text_blocks, *self.decoder_self, *self.decoder_cross,
                                    self.token_embedding, self.text_proj, self.lm_proj,
                                    self.image_proj]))  # fmt: skip

    # -- the image side ----------------------------------------------------------------------

    def encode_image_tokens(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> unnormalised contrastive embedding (B, E), captioner tokens (B, N, E)."""
        pooled = self.ln_post(self.pooler(self.image_encoder(pixel_values)))  # (B, 1+N, E)
        return self.image_proj(pooled[:, 0]), pooled[:, 1:]

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """(B, E) normalised image embedding."""
        return F.normalize(self.encode_image_tokens(pixel_values)[0], dim=-1)

    # -- the text side -------------------------------------------------------------------------

    def unimodal(self, input_ids: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor]:
        """Unimodal decoder over [ids, CLS]: (unnormalised text embedding (B, E), word tokens
        (B, T, D), before the final norm, for the multimodal decoder)."""
        cfg = self.config
        check_ids("CoCa", input_ids, cfg.text)
        B, T = input_ids.shape
        if T > cfg.text.max_len:
            raise ValueError(f"CoCa: text length {T} exceeds max_len {cfg.text.max_len}")
        x = torch.cat([self.token_embedding(input_ids), self.cls_emb.expand(B, 1, -1)], 1)
        x = x + self.pos_embed[: T + 1]  # (B, T+1, D)
        mask = cls_text_mask(input_ids, cfg.pad_id, cfg.legacy_cls_mask)[:, None]  # (B,1,T+1,T+1)
        x = run_blocks(self.text_blocks, x, mask, None, None, need_weights, False, "CoCa")[0]
        return self.text_proj(self.text_norm(x[:, -1])), x[:, :-1]

    def encode_text(self, input_ids: Tensor) -> Tensor:
        """(B, T) ids -> (B, E) normalised text embedding (the appended [CLS])."""
        return F.normalize(self.unimodal(input_ids)[0], dim=-1)

    def multimodal(self, tokens: Tensor, image_tokens: Tensor, need_weights: bool = False
                   ) -> Tensor:  # fmt: skip
        """Multimodal decoder: word tokens (B, T, D) + image tokens (B, N, E) -> logits (B, T, V).
        Causal self-attention (no padding mask: pads only follow the words), then cross-attention
        to the image, in every layer. ``need_weights``: ``self.last_cross``, (B, H, T, N) each."""
        mask = causal_mask(tokens.shape[1], tokens.device)
        x, cross = tokens, []
        for sa, ca in zip(self.decoder_self, self.decoder_cross, strict=True):
            x = sa(x, mask=mask, need_weights=need_weights)
            x = ca(x, image_tokens, need_weights)
            cross.append(ca.last_attn)
        self.last_cross = cross if need_weights else None
        return self.lm_proj(self.decoder_norm(x))

    # -- both jobs -----------------------------------------------------------------------------

    def forward(self, pixel_values: Tensor, input_ids: Tensor, return_loss: bool = False
                ) -> CoCaOutput:  # fmt: skip
        """Images (B, C, H, W) and captions (B, T) ([BOS] w1 .. [EOS], right padding with
        ``pad_id``): both embeddings and the captioning logits for ``input_ids[:, :-1]``."""
        if len(pixel_values) != len(input_ids):
            raise ValueError(f"CoCa.forward: expected as many images as captions, got "
                             f"{len(pixel_values)} and {len(input_ids)}")  # fmt: skip
        img, img_tokens = self.encode_image_tokens(pixel_values)
        txt, tokens = self.unimodal(input_ids)
        logits = self.multimodal(tokens[:, :-1], img_tokens)  # (B, T-1, V)
        out = CoCaOutput(F.normalize(img, dim=-1), F.normalize(txt, dim=-1), logits,
                         self.logit_scale)  # fmt: skip
        if return_loss:
            cfg = self.config
            out.loss, out.loss_caption, out.loss_contrastive = coca_loss(
                out.image_embeds, out.text_embeds, self.logit_scale, logits, input_ids[:, 1:],
                cfg.pad_id, cfg.caption_weight, cfg.contrastive_weight)  # fmt: skip
        return out

    @torch.no_grad()
    def generate(self, pixel_values: Tensor, method: str = "beam", max_new_tokens: int = 30,
                 num_beams: int = 3, top_p: float = 0.9,
                 generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
        """Caption images: [BOS] then up to ``max_new_tokens`` tokens, stopping at [EOS]
        (:func:`minivlm.nn.decoding.generate`). Returns (B, 1+L) ids."""
        cfg = self.config
        _, img_tokens = self.encode_image_tokens(pixel_values)

        def next_logits(ids: Tensor, rows: Tensor) -> Tensor:
            return self.multimodal(self.unimodal(ids)[1], img_tokens[rows])[:, -1]

        start = torch.full((len(img_tokens), 1), cfg.bos_id, device=img_tokens.device)
        return generate(next_logits, start, max_new_tokens, cfg.eos_id, method, num_beams, top_p,
                        pad_id=cfg.pad_id, generator=generator)  # fmt: skip

    @classmethod
    def from_open_clip(cls, model: nn.Module) -> CoCa:
        """Copy an ``open_clip.coca_model.CoCa`` (see :mod:`minivlm.interop.coca`)."""
        from minivlm.interop.coca import coca_from_open_clip

        return coca_from_open_clip(cls, CoCaConfig, model)
