"""BLIP-2 (Li et al. 2023, "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image
Encoders and Large Language Models") and InstructBLIP (Dai et al. 2023).

A frozen image encoder and a frozen language model are bridged by a small trainable
**Q-Former** (§3.1, Figure 2; :mod:`minivlm.nn.qformer`): learned queries that share
self-attention with the text and alone cross-attend to the image, under one mask per objective
(:func:`qformer_masks`).

Stage 1 (§3.2, :meth:`Blip2.stage1`) trains the Q-Former on the frozen image encoder::

    Z = QFormer(queries | image)                          # (B, Q, D) query outputs
    t = QFormer(text)[CLS]                                # (B, D)
    s(I, T) = max_q cos(vision_proj(Z_q), text_proj(t)) / τ       # ITC, the best query
    L_itc = CE over the batch (both directions)
    L_itm = CE(mean_q itm_head(QFormer([queries; text] | image)_q), match?)  hard negatives
    L_itg = next-token CE of the text under the ITG mask ([DEC] replaces [CLS])

Stage 2 (§3.3, :meth:`Blip2.stage2`) projects Z with one linear layer into the frozen LM's
embedding space, where it is a *soft prompt* in front of the text, and trains with the LM loss;
:meth:`Blip2.generate` captions or answers from it. InstructBLIP also feeds the instruction to
the Q-Former (self-attention over [queries; instruction]), so the extracted visual features
depend on it ("instruction-aware visual feature extraction").

Read top to bottom: config and outputs, :class:`Blip2` (encoders, ``stage1`` = ``forward``,
``stage2``, ``generate``, input checks), :class:`Blip2Stage2` (stage 2 for
``minivlm.train.train``). The best-query score ``itc_similarity`` lives with the Q-Former in
:mod:`minivlm.nn.qformer`; hard negatives and the clamped τ come from :mod:`minivlm.objectives`,
``from_hf`` from :mod:`minivlm.interop.blip2`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from minivlm.nn.bert import BertMLMHead, init_weights
from minivlm.nn.config import ContrastiveHead, as_part, temp_in_range
from minivlm.nn.lm import IGNORE_INDEX, DecoderLM, LMConfig
from minivlm.nn.qformer import QFormer, QFormerConfig, QFormerOutput, itc_similarity, qformer_masks
from minivlm.nn.vit import ViT, ViTConfig
from minivlm.objectives import (
    ClampedTemperature,
    hard_negative_rows,
    same_pair_mask,
    sample_hard_negatives,
)
from minivlm.utils import raise_first

Tensor = torch.Tensor

__all__ = [
    "Blip2",
    "Blip2Config",
    "Blip2Output",
    "Blip2Stage1Output",
    "Blip2Stage2",
    "QFormer",
    "QFormerConfig",
    "QFormerOutput",
    "blip2_vision_config",
    "itc_similarity",
    "qformer_masks",
]


# ---------------------------------------------------------------------------
# Configuration and outputs
# ---------------------------------------------------------------------------


def blip2_vision_config(**overrides: Any) -> ViTConfig:
    """BLIP-2's frozen image encoder: EVA-CLIP ViT-g/14 without its last layer (§3.4): width
    1408, 39 layers, 16 heads, MLP 6144, 224 px, LayerNorm eps 1e-6, and a final LayerNorm
    on every token (HF ``post_layernorm``, LAVIS ``ln_vision``)."""
    base = dict(image_size=224, patch_size=14, dim=1408, depth=39, num_heads=16,
                mlp_hidden=6144, eps=1e-6, final_norm=True, pre_norm=False)  # fmt: skip
    return ViTConfig(**{**base, **overrides})


@dataclass
class Blip2Config(ContrastiveHead):
    """Sizes and switches of BLIP-2 (defaults: ViT-g/14 + the paper's Q-Former, no LM).

    vision: the frozen image encoder (:func:`blip2_vision_config`); qformer: a
        :class:`QFormerConfig`; lm: the frozen stage-2 decoder (:class:`~minivlm.nn.lm.LMConfig`;
        ``None``: stage 1 only, no ``language_model`` / ``language_projection``). Dicts are
        merged into the defaults.
    embed_dim: ITC embedding size E (256). temp: learnable ITC temperature τ (0.07), clamped to
        [temp_min, temp_max] as in the paper's code (these four: ALBEF's,
        :class:`~minivlm.nn.config.ContrastiveHead`). label_smoothing: for ITC and ITG (0.1).
    dec_token_id: the id that replaces the first ([CLS]) token for ITG (LAVIS's [DEC]).
    itm_exclude_duplicates: never draw a copy of the positive caption (or, given ``index``,
        another caption of the same image) as its hard negative.
    itc_weight, itm_weight, itg_weight: stage 1's loss = the weighted sum (all 1 in the paper).
    instruct: InstructBLIP: the instruction also enters the Q-Former (needs ``qformer.text``).
    freeze_vision, freeze_lm: the frozen parts (True in the paper) get no gradients and stay
        in eval mode.
    """

    vision: ViTConfig = field(default_factory=blip2_vision_config)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    lm: LMConfig | None = None
    label_smoothing: float = 0.1
    dec_token_id: int = 30522
    itm_exclude_duplicates: bool = True
    itc_weight: float = 1.0
    itm_weight: float = 1.0
    itg_weight: float = 1.0
    instruct: bool = False
    freeze_vision: bool = True
    freeze_lm: bool = True

    def __post_init__(self) -> None:
        self.vision = as_part("Blip2Config", "vision", self.vision, blip2_vision_config, ViTConfig)
        self.qformer = as_part("Blip2Config", "qformer", self.qformer, QFormerConfig)
        self.lm = as_part("Blip2Config", "lm", self.lm, LMConfig, LMConfig, type(None))
        checks = [
            (not self.instruct or self.qformer.text,
             "instruct=True needs the Q-Former's text side"),
            (not self.qformer.text or 0 <= self.dec_token_id < self.qformer.vocab_size,
             f"dec_token_id {self.dec_token_id} is outside the Q-Former vocabulary "
             f"0..{self.qformer.vocab_size - 1}"),
            temp_in_range(self),
        ]  # fmt: skip
        raise_first("Blip2Config: ", checks)


@dataclass
class Blip2Stage1Output:
    """What :meth:`Blip2.stage1` returns: ``loss`` (the weighted sum of the three); ``sim_i2t``
    (B, B) max-over-queries similarities / τ (``sim_t2i`` its transpose); ``itm_logits`` (3B, 2)
    for [positives; (image i, hard-negative text); (hard-negative image, text i)] with
    ``itm_labels`` [1]*B + [0]*2B; ``itg_logits`` (B, T, V); ``query_output`` (B, Q, D) (ITC)."""

    loss: Tensor
    loss_itc: Tensor
    loss_itm: Tensor
    loss_itg: Tensor
    temperature: Tensor
    sim_i2t: Tensor
    sim_t2i: Tensor
    itm_logits: Tensor
    itm_labels: Tensor
    neg_text_idx: Tensor
    neg_image_idx: Tensor
    itg_logits: Tensor
    query_output: Tensor


@dataclass
class Blip2Output:
    """:meth:`Blip2.stage2`'s LM ``loss`` (None without labels), ``logits`` (B, Q+T, V_lm)."""

    loss: Tensor | None
    logits: Tensor


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


class Blip2(ClampedTemperature, nn.Module):
    """BLIP-2: frozen ViT -> Q-Former (learned queries) -> linear -> frozen decoder LM.

    Modules: ``vision_encoder`` (:class:`~minivlm.nn.vit.ViT`, frozen), ``query_tokens``
    (1, Q, D), ``qformer`` (:class:`QFormer`); stage 1: ``vision_proj``, ``text_proj`` (to E),
    ``itm_head`` (Linear(D, 2)), ``itg_head`` (BERT LM head tied to the Q-Former's word
    embeddings), ``temp``; stage 2: ``language_projection`` (Linear(D, D_lm)) and
    ``language_model`` (:class:`~minivlm.nn.lm.DecoderLM`, frozen). A trained image encoder or
    LM can be passed in (``vision_encoder=``, ``language_model=``).
    """

    def __init__(
        self,
        config: Blip2Config | None = None,
        *,
        vision_encoder: ViT | None = None,
        language_model: DecoderLM | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        cfg = config or Blip2Config()
        cfg = replace(cfg, **overrides) if overrides else cfg
        if vision_encoder is not None:
            cfg = replace(cfg, vision=vision_encoder.config)
        if language_model is not None:
            cfg = replace(cfg, lm=language_model.config)
        self.config = cfg
        qc, D = cfg.qformer, cfg.qformer.dim
        self.vision_encoder = vision_encoder if vision_encoder is not None else ViT(cfg.vision)
        self.query_tokens = nn.Parameter(torch.zeros(1, qc.num_query_tokens, D))
        nn.init.normal_(self.query_tokens, std=0.02)  # BERT's initializer_range, as LAVIS
        self.qformer = QFormer(qc, kv_dim=cfg.vision.dim)
        if qc.text:
            self.vision_proj = nn.Linear(D, cfg.embed_dim)
            self.text_proj = nn.Linear(D, cfg.embed_dim)
            self.itm_head = nn.Linear(D, 2)
            self.itg_head = BertMLMHead(D, qc.vocab_size, act=qc.act, eps=qc.eps,
                                        tie_to=self.qformer.word_embeddings)  # fmt: skip
            init_weights(nn.ModuleList([self.vision_proj, self.text_proj, self.itm_head]))
            self.temp = nn.Parameter(torch.tensor(float(cfg.temp)))
        self.language_model: DecoderLM | None = None
        if cfg.lm is not None:
            self.language_model = language_model or DecoderLM(cfg.lm)
            self.language_projection = nn.Linear(D, cfg.lm.dim)
        if cfg.freeze_vision:
            self.vision_encoder.requires_grad_(False)
        if cfg.freeze_lm and self.language_model is not None:
            self.language_model.requires_grad_(False)
        self.train()

    def frozen_modules(self) -> list[nn.Module]:
        """The frozen image encoder / LM (always in eval mode, no gradients)."""
        mods = [self.vision_encoder] if self.config.freeze_vision else []
        if self.config.freeze_lm and self.language_model is not None:
            mods.append(self.language_model)
        return mods

    def train(self, mode: bool = True) -> Blip2:
        """Set the training mode; frozen modules stay in eval mode (as the paper's code)."""
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self

    def no_weight_decay(self) -> set[str]:
        return {"query_tokens", "temp"}

    # -- encoders ------------------------------------------------------------------------

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 1+N, Dv) frozen image features (all tokens, final-normed)."""
        if self.config.freeze_vision:
            with torch.no_grad():
                return self.vision_encoder(pixel_values)
        return self.vision_encoder(pixel_values)

    def _queries(self, B: int) -> Tensor:
        return self.query_tokens.expand(B, -1, -1)  # (B, Q, D)

    def query_features(self, pixel_values: Tensor, qformer_input_ids: Tensor | None = None,
                       qformer_attention_mask: Tensor | None = None) -> Tensor:  # fmt: skip
        """The Q-Former's query outputs (B, Q, D): queries that cross-attended the image.

        With ``config.instruct`` (InstructBLIP), ``qformer_input_ids`` (B, I) -- the
        instruction -- join the queries in self-attention (all see all); otherwise the queries
        run alone, as Hugging Face's ``Blip2ForConditionalGeneration``.
        """
        self._check_instruction(qformer_input_ids)
        image_embeds = self.encode_image(pixel_values)  # (B, 1+N, Dv)
        out = self.qformer(self._queries(image_embeds.shape[0]), qformer_input_ids,
                           qformer_attention_mask, image_embeds, mask="itm")  # fmt: skip
        return out.query_output

    def soft_prompt(self, pixel_values: Tensor, qformer_input_ids: Tensor | None = None,
                    qformer_attention_mask: Tensor | None = None) -> Tensor:  # fmt: skip
        """(B, C, H, W) -> (B, Q, D_lm): projected query outputs, the LM's soft visual prompt."""
        self._check_has_lm("soft_prompt")
        z = self.query_features(pixel_values, qformer_input_ids, qformer_attention_mask)
        return self.language_projection(z)

    # -- stage 1: Q-Former pre-training (§3.2) ----------------------------------------------

    def forward(self, pixel_values: Tensor | None = None, input_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, index: Tensor | None = None
                ) -> Blip2Stage1Output:  # fmt: skip
        """Stage 1 (:meth:`stage1`); stage 2 is trained through :class:`Blip2Stage2`."""
        return self.stage1(pixel_values, input_ids, attention_mask, index)

    def stage1(self, pixel_values: Tensor | None, input_ids: Tensor | None,
               attention_mask: Tensor | None = None, index: Tensor | None = None
               ) -> Blip2Stage1Output:  # fmt: skip
        """Q-Former pre-training (§3.2) on B matching pairs; ``input_ids`` start with [CLS].

        One Q-Former pass per objective, each under its mask: ITC (the batch), ITM (3B rows:
        positives, and hard negatives drawn as in ALBEF), ITG ([DEC] replaces [CLS]).
        ``index`` (B,), optional image ids: another caption of the same image is never a
        hard negative.
        """
        B = self._check_stage1(pixel_values, input_ids)
        cfg, ls = self.config, self.config.label_smoothing
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask  # (B, T)
        temp = self.step_temperature()  # clamped in place first when training
        image_embeds = self.encode_image(pixel_values)  # (B, 1+N, Dv)
        queries = self._queries(B)  # (B, Q, D)

        # ---- ITC: queries and text cannot see each other
        out = self.qformer(queries, input_ids, mask, image_embeds, mask="itc")
        image_feats = F.normalize(self.vision_proj(out.query_output).float(), dim=-1)  # (B, Q, E)
        text_feat = F.normalize(self.text_proj(out.text_output[:, 0]).float(), dim=-1)  # (B, E)
        sim_i2t = itc_similarity(image_feats, text_feat) / temp  # (B, B)
        sim_t2i = sim_i2t.t()  # text j vs image i: the same best-query similarity
        targets = torch.arange(B, device=sim_i2t.device)
        loss_itc = (F.cross_entropy(sim_i2t, targets, label_smoothing=ls)
                    + F.cross_entropy(sim_t2i, targets, label_smoothing=ls)) / 2  # fmt: skip

        # ---- ITM: queries and text see each other; hard negatives from the ITC similarities
        exclude = None
        if cfg.itm_exclude_duplicates:
            exclude = same_pair_mask(input_ids, mask, index, where="Blip2.forward")  # (B, B)
        neg_t, neg_i = sample_hard_negatives(sim_i2t, sim_t2i, exclude)  # (B,), (B,)
        ids_all, mask_all, image_all, itm_labels = hard_negative_rows(
            input_ids, mask, image_embeds, neg_t, neg_i)  # (3B, T), (3B, T), (3B, S, Dv), (3B,)
        out_itm = self.qformer(self._queries(3 * B), ids_all, mask_all, image_all, mask="itm")
        itm_logits = self.itm_head(out_itm.query_output).mean(dim=1)  # (3B, 2): mean over queries
        loss_itm = F.cross_entropy(itm_logits.float(), itm_labels)

        # ---- ITG: text generated from the queries, causally
        dec_ids = input_ids.clone()
        dec_ids[:, 0] = cfg.dec_token_id  # [DEC] starts the decoding
        itg_labels = dec_ids.masked_fill(mask == 0, IGNORE_INDEX)  # (B, T)
        out_itg = self.qformer(queries, dec_ids, mask, image_embeds, mask="itg")
        itg_logits = self.itg_head(out_itg.text_output)  # (B, T, V)
        V = itg_logits.shape[-1]
        loss_itg = F.cross_entropy(
            itg_logits[:, :-1].reshape(-1, V).float(), itg_labels[:, 1:].reshape(-1),
            ignore_index=IGNORE_INDEX, label_smoothing=ls,
        )  # fmt: skip  position t predicts token t+1

        loss = cfg.itc_weight * loss_itc + cfg.itm_weight * loss_itm + cfg.itg_weight * loss_itg
        return Blip2Stage1Output(
            loss=loss, loss_itc=loss_itc, loss_itm=loss_itm, loss_itg=loss_itg,
            temperature=temp.detach(), sim_i2t=sim_i2t, sim_t2i=sim_t2i, itm_logits=itm_logits,
            itm_labels=itm_labels, neg_text_idx=neg_t, neg_image_idx=neg_i,
            itg_logits=itg_logits, query_output=out.query_output,
        )  # fmt: skip

    # -- stage 2: the soft prompt into the frozen LM (§3.3) ---------------------------------

    def stage2(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None,
               labels: Tensor | None = None, qformer_input_ids: Tensor | None = None,
               qformer_attention_mask: Tensor | None = None) -> Blip2Output:  # fmt: skip
        """Vision-to-language generative training (§3.3): the LM loss on the text after the soft
        prompt. ``input_ids`` (B, T) are LM tokens (right-padded); ``labels`` (B, T) default to
        ``input_ids`` with padding set to -100 (prompts can be masked with -100 too). With
        ``instruct`` and no ``qformer_input_ids``, the instruction is the prompt prefix (the
        leading -100 labels)."""
        B = self._check_stage2(pixel_values, input_ids, attention_mask, labels)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask  # (B, T)
        if labels is None:
            labels = input_ids.masked_fill(mask == 0, IGNORE_INDEX)
        if self.config.instruct and qformer_input_ids is None:
            prompt = ((labels == IGNORE_INDEX) & (mask == 1)).long().cumprod(dim=1)  # (B, T)
            n = max(int(prompt.sum(1).max()), 1)
            qformer_input_ids = input_ids[:, :n] * prompt[:, :n]  # (B, n) the instruction
            qformer_attention_mask = prompt[:, :n]
        soft = self.soft_prompt(pixel_values, qformer_input_ids, qformer_attention_mask)
        lm, Q = self.language_model, soft.shape[1]  # soft: (B, Q, D_lm)
        embeds = torch.cat([soft.to(lm.embed_tokens.weight.dtype), lm.embed(input_ids)], 1)
        full_mask = torch.cat([mask.new_ones(B, Q), mask], dim=1)  # (B, Q+T)
        full_labels = torch.cat([labels.new_full((B, Q), IGNORE_INDEX), labels], dim=1)
        out = lm(inputs_embeds=embeds, attention_mask=full_mask, labels=full_labels)
        return Blip2Output(loss=out.loss, logits=out.logits)

    @torch.no_grad()
    def generate(self, pixel_values: Tensor, prompt_ids: Tensor | None = None,
                 prompt_mask: Tensor | None = None, qformer_input_ids: Tensor | None = None,
                 qformer_attention_mask: Tensor | None = None, max_new_tokens: int = 20,
                 temperature: float = 0.0, **kwargs: Any) -> Tensor:  # fmt: skip
        """Caption (no prompt: the LM starts from [BOS]) or answer (``prompt_ids`` (B, P),
        right-padded with ``prompt_mask``) each image; returns the new tokens (B, T_new).

        Greedy by default; ``temperature``, ``top_k``, ``top_p``, ``generator``, ``eos_id``
        go to :meth:`DecoderLM.generate`. With ``instruct``, the Q-Former reads
        ``qformer_input_ids`` (default: the prompt).
        """
        self._check_generate(pixel_values, prompt_ids)
        lm, B = self.language_model, pixel_values.shape[0]
        if prompt_ids is None:
            prompt_ids = torch.full((B, 1), lm.config.bos_id, dtype=torch.long,
                                    device=pixel_values.device)  # fmt: skip
        if prompt_mask is None:
            prompt_mask = torch.ones_like(prompt_ids)
        if self.config.instruct and qformer_input_ids is None:
            qformer_input_ids, qformer_attention_mask = prompt_ids, prompt_mask
        soft = self.soft_prompt(pixel_values, qformer_input_ids, qformer_attention_mask)
        embeds = torch.cat([soft.to(lm.embed_tokens.weight.dtype), lm.embed(prompt_ids)], 1)
        mask = torch.cat([prompt_mask.new_ones(B, soft.shape[1]), prompt_mask], dim=1)
        return lm.generate(inputs_embeds=embeds, attention_mask=mask,
                           max_new_tokens=max_new_tokens, temperature=temperature, **kwargs)

    @classmethod
    def from_hf(cls, model: nn.Module, with_language_model: bool = True) -> Blip2:
        """Copy a ``transformers.Blip2ForConditionalGeneration`` (see
        :func:`minivlm.interop.blip2.blip2_from_hf`): ``query_features`` then equals HF's
        Q-Former output. Only a Llama LM is copied; for OPT / T5 checkpoints pass
        ``with_language_model=False`` (image encoder, queries and Q-Former only)."""
        from minivlm.interop.blip2 import blip2_from_hf

        return blip2_from_hf(cls, Blip2Config, model, with_language_model)

    # -- input checks --------------------------------------------------------------------

    def _check_pair(self, name: str, pixel_values: Tensor | None, input_ids: Tensor | None) -> int:
        if pixel_values is None or input_ids is None:
            raise ValueError(f"Blip2.{name}: expected pixel_values (B, C, H, W) and input_ids "
                             "(B, T)")  # fmt: skip
        if input_ids.dim() != 2:
            raise ValueError(f"Blip2.{name}: expected input_ids of shape (B, T), got "
                             f"{tuple(input_ids.shape)}")  # fmt: skip
        if pixel_values.dim() != 4 or pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(f"Blip2.{name}: expected pixel_values of shape "
                             f"({input_ids.shape[0]}, C, H, W) (one image per text), got "
                             f"{tuple(pixel_values.shape)}")  # fmt: skip
        return input_ids.shape[0]

    def _check_stage1(self, pixel_values: Tensor | None, input_ids: Tensor | None) -> int:
        if not self.config.qformer.text:
            raise ValueError("Blip2.stage1: this Q-Former has no text side (qformer.text)")
        B = self._check_pair("forward", pixel_values, input_ids)
        if B < 2:
            raise ValueError(f"Blip2.forward: ITC/ITM need at least 2 pairs per batch, got B={B}")
        return B

    def _check_stage2(self, pixel_values: Tensor, input_ids: Tensor,
                      attention_mask: Tensor | None, labels: Tensor | None) -> int:  # fmt: skip
        self._check_has_lm("stage2")
        B = self._check_pair("forward", pixel_values, input_ids)
        for name, t in (("attention_mask", attention_mask), ("labels", labels)):
            if t is not None and t.shape != input_ids.shape:
                raise ValueError(f"Blip2.forward: expected {name} of shape "
                                 f"{tuple(input_ids.shape)}, got {tuple(t.shape)}")  # fmt: skip
        return B

    def _check_has_lm(self, name: str) -> None:
        if self.language_model is None:
            raise ValueError(f"Blip2.{name}: this model has no language model (config.lm is None)")

    def _check_instruction(self, qformer_input_ids: Tensor | None) -> None:
        if (qformer_input_ids is not None) != self.config.instruct:
            raise ValueError("Blip2.query_features: instruct=True needs the instruction as "
                             "qformer_input_ids (B, I)" if self.config.instruct else
                             "Blip2.query_features: qformer_input_ids are only used with "
                             "instruct=True")  # fmt: skip

    def _check_generate(self, pixel_values: Tensor, prompt_ids: Tensor | None) -> None:
        self._check_has_lm("generate")
        B = pixel_values.shape[0]
        if prompt_ids is None and self.language_model.config.bos_id is None:
            raise ValueError("Blip2.generate: pass prompt_ids (the LM config has no bos_id)")
        if prompt_ids is not None and (prompt_ids.dim() != 2 or prompt_ids.shape[0] != B):
            raise ValueError(f"Blip2.generate: expected prompt_ids of shape ({B}, P), got "
                             f"{tuple(prompt_ids.shape)}")  # fmt: skip


class Blip2Stage2(nn.Module):
    """BLIP-2's stage 2 as a module to train: ``forward`` is :meth:`Blip2.stage2` of the wrapped
    model (same parameters; ``train(Blip2Stage2(model), ...)`` updates ``model``)."""

    def __init__(self, model: Blip2) -> None:
        super().__init__()
        model._check_has_lm("stage2")
        self.model = model

    def no_weight_decay(self) -> set[str]:
        return {f"model.{name}" for name in self.model.no_weight_decay()}

    def forward(self, pixel_values: Tensor, input_ids: Tensor,
                attention_mask: Tensor | None = None, labels: Tensor | None = None,
                qformer_input_ids: Tensor | None = None,
                qformer_attention_mask: Tensor | None = None) -> Blip2Output:  # fmt: skip
        return self.model.stage2(pixel_values, input_ids, attention_mask, labels,
                                 qformer_input_ids, qformer_attention_mask)  # fmt: skip
