"""BLIP (Li et al. 2022, "BLIP: Bootstrapping Language-Image Pre-training for Unified
Vision-Language Understanding and Generation").

The multimodal mixture of encoder-decoder (MED, §3.1, Figure 2): one ViT and one BERT-shaped
text transformer run in three ways, each with its own loss (§3.2)::

    unimodal text encoder    [CLS] w1 .. wn [SEP]   bidirectional, no cross-attention  -> ITC
    image-grounded encoder   [ENC] w1 .. wn [SEP]   bidirectional, cross-attends image -> ITM
    image-grounded decoder   [DEC] w1 .. wn [SEP]   causal,        cross-attends image -> LM

    image_feat = norm(vision_proj(ViT(I)[CLS]));  text_feat = norm(text_proj(text[CLS]))
    L_itc = ALBEF's ITC with momentum encoders, queues and soft targets (objectives)
    L_itm = CE(itm_head(encoder[ENC]), match?) on B positives and 2B hard negatives
    L_lm  = CE(lm_head(decoder)[:, t], w_{t+1}) with label smoothing 0.1, padding ignored
    loss  = L_itc + L_itm + L_lm

Encoder and decoder share every parameter except the self-attention layers (§3.1: "the
differences between encoding and decoding tasks are best captured by the SA layers"): the
embeddings, cross-attention and feed-forward layers are one set of weights here, and the
decoder adds its own self-attention (``decoder_attn``) and LM head. Note 002 of the survey says
BLIP "replaces MLM by LM"; the paper keeps ITC and ITM beside it, and so does this file.

CapFilt (§3.3) is the captioner (the decoder, :meth:`Blip.generate`: greedy, beam or nucleus)
plus the filter (the encoder's ITM head, :meth:`Blip.itm_score`); lecture 6's recipe runs it.
``Blip.from_hf`` copies ``transformers.BlipForImageTextRetrieval`` (:mod:`minivlm.interop.blip`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from minivlm.nn.attention import MultiHeadAttention, causal_mask, padding_mask
from minivlm.nn.bert import BertEncoder, BertMLMHead, TextConfig, check_ids
from minivlm.nn.config import MomentumDistillation, as_part, in_vocab, temp_in_range
from minivlm.nn.decoding import generate
from minivlm.nn.vit import ViT, ViTConfig
from minivlm.objectives import (
    concat_all_gather,
    distill_targets,
    ema_update_,
    enqueue_,
    same_pair_mask,
    sample_hard_negatives,
    soft_cross_entropy,
)
from minivlm.utils import raise_first

Tensor = torch.Tensor

__all__ = ["MODES", "Blip", "BlipConfig", "BlipOutput", "decoder_inputs", "med_mask"]

MODES = ("text", "encoder", "decoder")  # the three MED passes


# --- Configuration -----------------------------------------------------------------------------


def blip_vision_config(**overrides: Any) -> ViTConfig:
    """BLIP's ViT-B/16 at 384 px (HF ``BlipVisionConfig``: LayerNorm eps 1e-5, final LN)."""
    return ViTConfig(**{**dict(image_size=384, patch_size=16, eps=1e-5), **overrides})


def blip_text_config(**overrides: Any) -> TextConfig:
    """BLIP's BERT-base (HF ``BlipTextConfig``): 30,524 words ([DEC] 30522, [ENC] 30523 added to
    BERT's), 8 heads, no token types, cross-attention in every layer."""
    base = dict(vocab_size=30524, num_heads=8, type_vocab_size=0)
    return TextConfig(**{**base, **overrides})


@dataclass
class BlipConfig(MomentumDistillation):
    """Sizes and switches of BLIP (defaults: ViT-B/16 + BERT-base, the paper's base model).

    vision / text: the ViT and the BERT (dicts are merged into the defaults); every text layer
        cross-attends to the image (``kv_dim`` = ViT width, set here). vocab_size overrides text.
    decoder: build the decoder's own self-attention and LM head (False: the retrieval model,
        ITC + ITM, as ``BlipForImageTextRetrieval``).
    embed_dim, temp, temp_min, temp_max, queue_size, momentum, alpha: ITC as ALBEF's
        (:class:`~minivlm.nn.config.MomentumDistillation`), BLIP's queue 57,600 long.
    use_momentum: ALBEF's momentum encoders, queues of ``queue_size`` and soft ITC targets with
        weight ``alpha`` (§3.2); False: in-batch ITC with one-hot targets, no EMA copy.
    learn_temp: τ is a parameter (clamped to [temp_min, temp_max]); False: a fixed buffer.
    cls/enc/dec/sep/pad ids: [CLS] starts ITC text, [ENC] replaces it for ITM, [DEC] for LM;
        decoding stops at [SEP]. Defaults: BERT + BLIP's two added tokens.
    label_smoothing: of the LM loss (0.1, the released code). *_weight: loss = weighted sum.
    """

    vision: ViTConfig = field(default_factory=blip_vision_config)
    text: TextConfig = field(default_factory=blip_text_config)
    vocab_size: int | None = None
    decoder: bool = True
    use_momentum: bool = True
    queue_size: int = 57600  # MomentumDistillation's field, BLIP's default
    learn_temp: bool = True
    cls_token_id: int = 101
    enc_token_id: int = 30523
    dec_token_id: int = 30522
    sep_token_id: int = 102
    pad_token_id: int = 0
    label_smoothing: float = 0.1
    itc_weight: float = 1.0
    itm_weight: float = 1.0
    lm_weight: float = 1.0

    def __post_init__(self) -> None:
        self.vision = as_part("BlipConfig", "vision", self.vision, blip_vision_config, ViTConfig)
        self.text = as_part("BlipConfig", "text", self.text, blip_text_config, TextConfig)
        text = dict(cross_attention_from=0, cross_attention_freq=1, cross_attention_layers=None,
                    kv_dim=self.vision.dim, causal=False)  # fmt: skip
        if self.vocab_size is not None:
            text["vocab_size"] = self.vocab_size
        self.text = replace(self.text, **text)
        V = self.text.vocab_size
        raise_first("BlipConfig: ", [
            (self.vision.class_token, "vision.class_token must be True (ITC reads the image CLS)"),
            (not self.text.prenorm, "text must be post-norm (BERT)"),
            *[in_vocab(self, k, V) for k in ("cls_token_id", "enc_token_id", "dec_token_id",
                                             "sep_token_id", "pad_token_id")],
            (self.queue_size >= 1, f"queue_size must be >= 1, got {self.queue_size}"),
            (0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}"),
            temp_in_range(self),
        ])  # fmt: skip


@dataclass
class BlipOutput:
    """:meth:`Blip.forward`: ``loss`` and its parts; ``sim_i2t``/``sim_t2i`` (B, B[+K]) ITC
    logits; ``itm_logits`` (3B, 2) for [positives; (image i, hard text); (hard image, text i)]
    with ``itm_labels``; ``lm_logits`` (B, T, V) and ``lm_labels`` (B, T) (-100 = ignored)."""

    loss: Tensor
    loss_itc: Tensor
    loss_itm: Tensor
    loss_lm: Tensor
    sim_i2t: Tensor | None = None
    sim_t2i: Tensor | None = None
    itm_logits: Tensor | None = None
    itm_labels: Tensor | None = None
    lm_logits: Tensor | None = None
    lm_labels: Tensor | None = None


# --- The masks of the three passes --------------------------------------------------------------


def med_mask(mode: str, attention_mask: Tensor) -> Tensor:
    """Self-attention mask of MED pass ``mode`` (:data:`MODES`): (B, 1, T, T) bool, True where a
    query may attend a key. Both encoders see every real token; the decoder only earlier ones."""
    if mode not in MODES:
        raise ValueError(f"med_mask: mode must be one of {MODES}, got {mode!r}")
    B, T = attention_mask.shape
    mask = padding_mask(attention_mask).expand(B, 1, T, T)  # (B, 1, T, T) keys that are tokens
    if mode == "decoder":
        mask = mask & causal_mask(T, attention_mask.device)
    return mask


def decoder_inputs(input_ids: Tensor, attention_mask: Tensor, dec_token_id: int
                   ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """The decoder's inputs (§3.2, LM): [DEC] replaces the first token; the self-attention mask is
    causal AND padding, (B, T, T); labels are the ids with -100 at padding and at [DEC] (nothing
    predicts it). Position t is trained to predict ``labels[:, t+1]``."""
    ids = input_ids.clone()
    ids[:, 0] = dec_token_id
    mask = med_mask("decoder", attention_mask)[:, 0]  # (B, T, T)
    labels = ids.masked_fill(attention_mask == 0, -100)
    labels[:, 0] = -100
    return ids, mask, labels


# --- The model ---------------------------------------------------------------------------------

MOMENTUM_MODULES = ("image_encoder", "vision_proj", "text_encoder", "text_proj")


class DecoderSelfAttention(nn.Module):
    """The one part the decoder does not share (§3.1): causal self-attention + its post-norm."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(dim, num_heads)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor, mask: Tensor, need_weights: bool = False) -> Tensor:
        a, self.last_attn = self.attn(x, mask=mask, need_weights=need_weights)
        return self.norm(x + a)  # (B, T, D)


class Blip(nn.Module):
    """BLIP's MED (§3.1-3.2). Modules: ``image_encoder`` (ViT), ``text_encoder`` (BERT, every
    layer with cross-attention), ``vision_proj``/``text_proj``, ``itm_head``; with ``decoder``,
    ``decoder_attn`` (one causal self-attention per layer) and ``lm_head`` (tied to the word
    embeddings); with ``use_momentum``, ``momentum`` (EMA copies of :data:`MOMENTUM_MODULES`) and
    the queues. ``temp`` is τ."""

    def __init__(self, config: BlipConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config or BlipConfig()
        self.config = cfg = replace(cfg, **overrides) if overrides else cfg
        E, Dv, Dt, T = cfg.embed_dim, cfg.vision.dim, cfg.text.dim, cfg.text
        self.image_encoder = ViT(cfg.vision)
        self.text_encoder = BertEncoder(cfg.text)
        self.vision_proj = nn.Linear(Dv, E)
        self.text_proj = nn.Linear(Dt, E)
        self.itm_head = nn.Linear(Dt, 2)
        if cfg.decoder:
            self.decoder_attn = nn.ModuleList(DecoderSelfAttention(Dt, T.num_heads, T.eps)
                                              for _ in range(T.depth))  # fmt: skip
            self.lm_head = BertMLMHead(Dt, T.vocab_size, act=T.act, eps=T.eps,
                                       tie_to=self.text_encoder.word_embeddings)  # fmt: skip
        temp = torch.tensor(float(cfg.temp))
        if cfg.learn_temp:
            self.temp = nn.Parameter(temp)
        else:
            self.register_buffer("temp", temp)
        if cfg.use_momentum:
            online = nn.ModuleDict({n: getattr(self, n) for n in MOMENTUM_MODULES})
            self.momentum = copy.deepcopy(online).requires_grad_(False).eval()
            self.register_buffer("image_queue", F.normalize(torch.randn(E, cfg.queue_size), dim=0))
            self.register_buffer("text_queue", F.normalize(torch.randn(E, cfg.queue_size), dim=0))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def train(self, mode: bool = True) -> Blip:
        super().train(mode)
        if self.config.use_momentum:
            self.momentum.eval()
        return self

    def momentum_pairs(self) -> list[tuple[Tensor, Tensor]]:
        """(online, momentum) parameter pairs for the EMA update."""
        online = [p for n in MOMENTUM_MODULES for p in getattr(self, n).parameters()]
        return list(zip(online, self.momentum.parameters(), strict=True))

    @torch.no_grad()
    def copy_params_to_momentum(self) -> None:
        """Make the momentum encoders equal to the online ones (e.g. after loading weights); no-op
        without momentum encoders."""
        if not self.config.use_momentum:
            return
        for p, p_m in self.momentum_pairs():
            p_m.copy_(p)

    # -- the three MED passes ---------------------------------------------------------------

    def med(self, input_ids: Tensor, attention_mask: Tensor | None = None,
            image_embeds: Tensor | None = None, mode: str = "text",
            encoder: BertEncoder | None = None, need_weights: bool = False) -> Tensor:  # fmt: skip
        """One MED pass over ids (B, T) as given (the caller puts [CLS]/[ENC]/[DEC] first):
        ``"text"`` skips cross-attention; ``"encoder"`` and ``"decoder"`` cross-attend to
        ``image_embeds`` (B, S, Dv); ``"decoder"`` swaps in the causal ``decoder_attn``.
        Returns (B, T, Dt). With ``need_weights``, ``self.last_attentions`` holds each layer's
        (self, cross) maps. ``encoder``: the BERT to run (the momentum copy for ITC targets)."""
        enc = encoder if encoder is not None else self.text_encoder
        check_ids("Blip", input_ids, enc.config)
        if mode not in MODES:
            raise ValueError(f"Blip.med: mode must be one of {MODES}, got {mode!r}")
        if mode != "text" and image_embeds is None:
            raise ValueError(f"Blip.med: mode {mode!r} cross-attends; pass image_embeds (B, S, Dv)")
        if mode == "decoder" and not self.config.decoder:
            raise ValueError("Blip.med: this model was built with decoder=False")
        mask = med_mask(mode, _ones(input_ids, attention_mask))  # (B, 1, T, T)
        x = enc.embed(input_ids)  # (B, T, Dt)
        maps = []
        for i, blk in enumerate(enc.blocks):
            if mode == "decoder":  # the decoder's own causal self-attention, then shared layers
                x = self.decoder_attn[i](x, mask, need_weights)
                self_map = self.decoder_attn[i].last_attn
            else:
                x = blk.self_attention_step(x, mask, need_weights)
                self_map = blk.last_attn
            if mode != "text":
                x = blk.cross_attention_step(x, image_embeds, None, need_weights)
            x = blk.mlp_step(x)
            maps.append((self_map, blk.last_cross_attn if mode != "text" else None))
        self.last_attentions = maps if need_weights else None
        return x

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, E) projected, unnormalised image CLS (as CLIP's encode_image)."""
        return self.vision_proj(self.image_encoder(pixel_values)[:, 0])

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, T) ids ([CLS] first) -> (B, E) projected, unnormalised unimodal text [CLS]."""
        return self.text_proj(self.med(input_ids, attention_mask, mode="text")[:, 0])

    def itm_logits(self, input_ids: Tensor, pixel_values: Tensor,
                   attention_mask: Tensor | None = None) -> Tensor:  # fmt: skip
        """(B, 2) ITM logits (column 1 = match) of the image-grounded encoder's first token,
        ids used as given (HF's retrieval model does not swap in [ENC]; :meth:`itm_score` does)."""
        image = self.image_encoder(pixel_values)  # (B, 1+N, Dv)
        return self.itm_head(self.med(input_ids, attention_mask, image, "encoder")[:, 0])

    @torch.no_grad()
    def itm_score(self, input_ids: Tensor, pixel_values: Tensor,
                  attention_mask: Tensor | None = None) -> Tensor:  # fmt: skip
        """(B,) P(match) of caption i for image i with [ENC] first, as trained: CapFilt's filter."""
        ids = input_ids.clone()
        ids[:, 0] = self.config.enc_token_id
        return self.itm_logits(ids, pixel_values, attention_mask).float().softmax(-1)[:, 1]

    def lm_logits(self, input_ids: Tensor, pixel_values: Tensor | None = None,
                  attention_mask: Tensor | None = None, image_embeds: Tensor | None = None,
                  need_weights: bool = False) -> Tensor:  # fmt: skip
        """(B, T, V) next-token logits of the image-grounded decoder, ids as given ([DEC] first)."""
        if image_embeds is None:
            image_embeds = self.image_encoder(pixel_values)
        h = self.med(input_ids, attention_mask, image_embeds, "decoder", need_weights=need_weights)
        return self.lm_head(h)

    @torch.no_grad()
    def generate(self, pixel_values: Tensor, method: str = "beam", max_new_tokens: int = 30,
                 num_beams: int = 3, top_p: float = 0.9,
                 generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
        """Caption images (B, C, H, W): [DEC] then up to ``max_new_tokens`` tokens, stopping at
        [SEP]; ``method`` greedy, beam or nucleus (:func:`minivlm.nn.decoding.generate`).
        Returns (B, 1+L) ids, padded after [SEP]."""
        cfg = self.config
        image = self.image_encoder(pixel_values)  # (B, 1+N, Dv) once for every step

        def next_logits(ids: Tensor, rows: Tensor) -> Tensor:
            return self.lm_logits(ids, image_embeds=image[rows])[:, -1]  # (N, V)

        start = torch.full((len(image), 1), cfg.dec_token_id, device=image.device)
        return generate(next_logits, start, max_new_tokens, cfg.sep_token_id, method, num_beams,
                        top_p, pad_id=cfg.pad_token_id, generator=generator)  # fmt: skip

    # -- pre-training forward (§3.2) ----------------------------------------------------------

    def forward(self, pixel_values: Tensor | None = None, input_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, index: Tensor | None = None
                ) -> BlipOutput:  # fmt: skip
        """One pre-training step on B matching pairs: pixel_values (B, C, H, W), input_ids (B, T)
        as the tokenizer gives them ([CLS] w1 .. wn [SEP], right padding). ``index`` (B,)
        optional image ids (another caption of the same image is no hard negative). In
        training mode with ``use_momentum`` it updates the EMA copies and the queues."""
        if pixel_values is None or input_ids is None or len(pixel_values) != len(input_ids):
            raise ValueError("Blip.forward: expected pixel_values (B, C, H, W) and input_ids "
                             "(B, T) for B matching pairs")  # fmt: skip
        if len(input_ids) < 2:
            raise ValueError("Blip.forward: ITM needs at least 2 pairs per batch")
        cfg = self.config
        mask = _ones(input_ids, attention_mask)
        if cfg.learn_temp and self.training:
            with torch.no_grad():
                self.temp.clamp_(cfg.temp_min, cfg.temp_max)
        temp = self.temp.clamp(cfg.temp_min, cfg.temp_max)
        image_embeds = self.image_encoder(pixel_values)  # (B, 1+N, Dv)
        image_feat = F.normalize(self.vision_proj(image_embeds[:, 0]).float(), dim=-1)  # (B, E)
        text_cls = self.med(input_ids, mask, mode="text")[:, 0]
        text_feat = F.normalize(self.text_proj(text_cls).float(), dim=-1)  # (B, E)
        out = self.itc_loss(image_feat, text_feat, pixel_values, input_ids, mask, temp)
        zero = out.loss_itc * 0.0
        out.loss_itm = out.loss_lm = zero
        if cfg.itm_weight:
            self.itm_loss(out, image_embeds, input_ids, mask, index)
        if cfg.lm_weight and cfg.decoder:
            ids, _, out.lm_labels = decoder_inputs(input_ids, mask, cfg.dec_token_id)
            out.lm_logits = self.lm_logits(ids, attention_mask=mask, image_embeds=image_embeds)
            out.loss_lm = F.cross_entropy(out.lm_logits[:, :-1].flatten(0, 1).float(),
                                          out.lm_labels[:, 1:].flatten(), ignore_index=-100,
                                          label_smoothing=cfg.label_smoothing)  # fmt: skip
        out.loss = (cfg.itc_weight * out.loss_itc + cfg.itm_weight * out.loss_itm
                    + cfg.lm_weight * out.loss_lm)  # fmt: skip
        return out

    def itc_loss(self, image_feat: Tensor, text_feat: Tensor, pixel_values: Tensor,
                 input_ids: Tensor, mask: Tensor, temp: Tensor) -> BlipOutput:  # fmt: skip
        """ITC (§3.2): with momentum encoders, against [momentum batch; queue] with soft targets
        (ALBEF §3.3); without, in-batch with one-hot targets."""
        cfg = self.config
        if not cfg.use_momentum:
            sim_i2t = image_feat @ text_feat.t() / temp  # (B, B)
            sim_t2i = sim_i2t.t()
            labels = torch.arange(len(sim_i2t), device=sim_i2t.device)
            loss = (F.cross_entropy(sim_i2t, labels) + F.cross_entropy(sim_t2i, labels)) / 2
            return BlipOutput(loss, loss, loss, loss, sim_i2t=sim_i2t, sim_t2i=sim_t2i)
        with torch.no_grad():
            if self.training:
                ema_update_(self.momentum_pairs(), cfg.momentum)
            m = self.momentum
            image_m = m.vision_proj(m.image_encoder(pixel_values)[:, 0])
            image_feat_m = F.normalize(image_m.float(), dim=-1)  # (B, E)
            text_m = self.med(input_ids, mask, mode="text", encoder=m.text_encoder)[:, 0]
            text_feat_m = F.normalize(m.text_proj(text_m).float(), dim=-1)  # (B, E)
            image_all = torch.cat([image_feat_m.t(), self.image_queue.float()], 1)  # (E, B+K)
            text_all = torch.cat([text_feat_m.t(), self.text_queue.float()], 1)  # (E, B+K)
            t_i2t = distill_targets(image_feat_m @ text_all / temp, cfg.alpha)  # (B, B+K)
            t_t2i = distill_targets(text_feat_m @ image_all / temp, cfg.alpha)
        sim_i2t = image_feat @ text_all / temp  # (B, B+K)
        sim_t2i = text_feat @ image_all / temp
        loss = (soft_cross_entropy(sim_i2t, t_i2t) + soft_cross_entropy(sim_t2i, t_t2i)) / 2
        if self.training:
            img_m, txt_m = concat_all_gather(image_feat_m), concat_all_gather(text_feat_m)
            enqueue_(self.image_queue, self.queue_ptr.clone(), img_m)
            enqueue_(self.text_queue, self.queue_ptr, txt_m)
        return BlipOutput(loss, loss, loss, loss, sim_i2t=sim_i2t, sim_t2i=sim_t2i)

    def itm_loss(self, out: BlipOutput, image_embeds: Tensor, input_ids: Tensor, mask: Tensor,
                 index: Tensor | None) -> None:  # fmt: skip
        """ITM (§3.2) with [ENC] first, on B positives and 2B hard negatives (ALBEF's sampling)."""
        B = len(input_ids)
        ids = input_ids.clone()
        ids[:, 0] = self.config.enc_token_id
        neg_t, neg_i = sample_hard_negatives(out.sim_i2t.detach(), out.sim_t2i.detach(),
                                             same_pair_mask(input_ids, mask, index))  # fmt: skip
        ids_all = torch.cat([ids, ids[neg_t], ids])  # (3B, T)
        mask_all = torch.cat([mask, mask[neg_t], mask])
        image_all = torch.cat([image_embeds, image_embeds, image_embeds[neg_i]])  # (3B, S, Dv)
        fused = self.med(ids_all, mask_all, image_all, "encoder")
        out.itm_logits = self.itm_head(fused[:, 0])  # (3B, 2)
        out.itm_labels = (torch.arange(3 * B, device=ids.device) < B).long()
        out.loss_itm = F.cross_entropy(out.itm_logits.float(), out.itm_labels)

    @classmethod
    def from_hf(cls, model: nn.Module) -> Blip:
        """Copy a ``transformers.BlipForImageTextRetrieval`` (the retrieval model: no decoder, no
        momentum encoders, fixed τ); see :mod:`minivlm.interop.blip`."""
        from minivlm.interop.blip import blip_from_hf

        return blip_from_hf(cls, BlipConfig, model)


def _ones(input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    return torch.ones_like(input_ids) if attention_mask is None else attention_mask
