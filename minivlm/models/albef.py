"""ALBEF (Li et al. 2021, "Align before Fuse: Vision and Language Representation Learning with
Momentum Distillation").

Three encoders (§3.1, Figure 1): a ViT image encoder, a BERT whose first ``fusion_from``
layers read the text alone (the *text encoder*) and whose remaining layers add
cross-attention to the image tokens (the *multimodal fusion encoder*; 6 + 6 in the paper).
Image and text are **aligned before they are fused**: an image-text contrastive loss (ITC)
on the two CLS tokens comes first, then the fusion encoder is trained with image-text
matching (ITM) on hard negatives and masked language modelling (MLM) conditioned on the
image (§3.2). A momentum (EMA) copy of the unimodal encoders supplies a large queue of
negatives for ITC (as MoCo) and, with momentum distillation (§3.3), soft pseudo-targets that
forgive noisy web captions::

    image_feat = norm(vision_proj(ViT(I)[CLS]))                 # (B, E)
    text_feat  = norm(text_proj(BERT_text(T)[CLS]))             # (B, E)
    with no_grad: momentum_update(); *_feat_m from the EMA model; *_all = [*_feat_m; queue]
    sim_i2t = image_feat @ text_all / τ   sim_t2i = text_feat @ image_all / τ    # (B, B+K)
    targets = α · softmax(sim_m) + (1 − α) · one-hot                              # §3.3 Eq. 6
    L_itc = ½ (H(targets_i2t, sim_i2t) + H(targets_t2i, sim_t2i))
    L_itm = CE(itm_head(fusion[CLS]), match?) on B positives and 2B hard negatives
    L_mlm = (1 − α) CE(mlm logits, masked ids) + α H(softmax(momentum mlm logits), mlm logits)
    loss  = L_itc + L_itm + L_mlm ;  enqueue(image_feat_m, text_feat_m)

Read top to bottom: :class:`ALBEFConfig`, :class:`ALBEF` (momentum copy, encoders, notebook
hooks ``soft_targets``, ``itm_score``, ``fusion``) and ``forward``. Masking, hard negatives, soft
targets, EMA and queues are shared :mod:`minivlm.objectives`; Grad-CAM :mod:`minivlm.interpret`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from minivlm.nn.bert import BertEncoder, BertMLMHead, TextConfig, TextOutput
from minivlm.nn.config import MomentumDistillation, as_part, in_vocab
from minivlm.nn.vit import ViT, ViTConfig
from minivlm.objectives import (
    ClampedTemperature,
    MomentumQueues,
    hard_negative_rows,
    mask_tokens,
    mlm_distill_loss,
    same_pair_mask,
    sample_hard_negatives,
    soft_cross_entropy,
)
from minivlm.utils import raise_first

Tensor = torch.Tensor

__all__ = ["ALBEF", "ALBEFConfig", "ALBEFOutput", "MOMENTUM_MODULES"]

# BERT-base-uncased ids: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103
_BERT_SPECIAL_IDS = (0, 100, 101, 102, 103)


# --- Configuration -----------------------------------------------------------------------------


def albef_vision_config(**overrides: Any) -> ViTConfig:
    """ALBEF's image encoder: ViT-B/16 (DeiT weights in the paper), 256 px pre-training crops
    (§4), LayerNorm eps 1e-6."""
    return ViTConfig(**{**dict(image_size=256, patch_size=16), **overrides})


@dataclass
class ALBEFConfig(MomentumDistillation):
    """Sizes and switches of ALBEF (defaults: the paper's ViT-B/16 + BERT-base 6+6 model).

    vision: the ViT (:func:`albef_vision_config`); text: the BERT (a :class:`TextConfig`,
        BERT-base by default; dicts are merged into the defaults). BERT layers
        ``0..fusion_from-1`` are the text encoder, the rest the fusion encoder, cross-attending
        to the image tokens (``kv_dim`` = the ViT width, set here). vocab_size: overrides
        ``text.vocab_size`` when given.
    embed_dim: size E of the shared normalised embedding space (256). temp: learnable τ (0.07),
        clamped to [temp_min, temp_max] at the start of every forward (the paper's code).
    queue_size: K momentum features kept per modality (65,536). momentum: EMA coefficient m
        (0.995). alpha: distillation weight α (0.4), ramped from 0 over the first
        ``alpha_warmup_steps`` steps (the paper: the first epoch; 0 = no ramp); ``distill=False``
        trains on one-hot targets only (§3.3 off). These seven, from ``embed_dim``, are the
        fields of :class:`~minivlm.nn.config.MomentumDistillation`.
    mlm_probability: BERT masking rate (0.15); ``mask_token_id`` and ``special_token_ids``
        (never masked or drawn as replacements) are BERT-base-uncased's by default.
    itm_exclude_duplicates: hard negatives also skip copies of the positive caption and, given
        ``index``, images with the same index (false negatives); never the positive itself.
    itc_weight, itm_weight, mlm_weight: loss = the weighted sum (all 1; 0 skips that part).
    """

    vision: ViTConfig = field(default_factory=albef_vision_config)
    text: TextConfig = field(default_factory=TextConfig)
    fusion_from: int = 6
    vocab_size: int | None = None
    alpha_warmup_steps: int = 0
    distill: bool = True
    mlm_probability: float = 0.15
    mask_token_id: int = 103
    special_token_ids: tuple[int, ...] = _BERT_SPECIAL_IDS
    itm_exclude_duplicates: bool = True
    itc_weight: float = 1.0
    itm_weight: float = 1.0
    mlm_weight: float = 1.0

    def __post_init__(self) -> None:
        self.vision = as_part("ALBEFConfig", "vision", self.vision, albef_vision_config, ViTConfig)
        self.text = as_part("ALBEFConfig", "text", self.text, TextConfig)
        self._check_parts()
        # BERT layers fusion_from.. cross-attend to every ViT token
        text = dict(cross_attention_from=self.fusion_from, cross_attention_freq=1,
                    cross_attention_layers=None, kv_dim=self.vision.dim)  # fmt: skip
        if self.vocab_size is not None:
            text["vocab_size"] = self.vocab_size
        self.text = replace(self.text, **text)
        self.special_token_ids = tuple(int(i) for i in self.special_token_ids)
        self._check_values()

    @property
    def num_fusion_layers(self) -> int:
        return self.text.depth - self.fusion_from

    def _check_parts(self) -> None:
        checks = [
            (not self.text.causal, ".text: ALBEF's BERT is bidirectional; causal must be False"),
            (self.vision.class_token, ".vision: ALBEF reads the image CLS token; class_token=True"),
            (1 <= self.fusion_from < self.text.depth,
             f": fusion_from must be in 1..{self.text.depth - 1} (text depth {self.text.depth}) "
             f"so that both text and fusion layers exist, got {self.fusion_from}"),
        ]  # fmt: skip
        raise_first("ALBEFConfig", checks)

    def _check_values(self) -> None:
        checks = [
            (self.embed_dim >= 1, f"embed_dim must be >= 1, got {self.embed_dim}"),
            (self.queue_size >= 1, f"queue_size must be >= 1, got {self.queue_size}"),
            (0.0 <= self.momentum <= 1.0, f"momentum must be in [0, 1], got {self.momentum}"),
            (0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}"),
            (self.alpha_warmup_steps >= 0,
             f"alpha_warmup_steps must be >= 0, got {self.alpha_warmup_steps}"),
            (0.0 < self.temp_min <= self.temp_max,
             f"need 0 < temp_min <= temp_max, got {self.temp_min}, {self.temp_max}"),
            (self.temp > 0, f"temp must be > 0, got {self.temp}"),
            (0.0 <= self.mlm_probability <= 1.0,
             f"mlm_probability must be in [0, 1], got {self.mlm_probability}"),
            in_vocab(self, "mask_token_id", self.text.vocab_size),
        ]  # fmt: skip
        raise_first("ALBEFConfig: ", checks)


@dataclass
class ALBEFOutput:
    """:meth:`ALBEF.forward`'s result: ``loss`` (weighted sum), ``alpha`` (0 without distill), τ;
    ``sim_i2t``/``sim_t2i`` (B, B+K) vs [momentum batch; queue] / τ with ITC targets (rows sum
    to 1); ``itm_logits`` (3B, 2) for [positives; (image i, negative text); (negative image,
    text i)], ``itm_labels`` [1]*B + [0]*2B, negatives ``neg_*_idx`` (B,); ``mlm_logits``
    (B, T, V), ``mlm_labels`` (B, T) (original ids where masked, else -100)."""

    loss: Tensor
    loss_itc: Tensor
    loss_itm: Tensor
    loss_mlm: Tensor
    alpha: float = 0.0
    temperature: Tensor | None = None
    sim_i2t: Tensor | None = None
    sim_t2i: Tensor | None = None
    itc_targets_i2t: Tensor | None = None
    itc_targets_t2i: Tensor | None = None
    itm_logits: Tensor | None = None
    itm_labels: Tensor | None = None
    neg_text_idx: Tensor | None = None
    neg_image_idx: Tensor | None = None
    mlm_logits: Tensor | None = None
    mlm_labels: Tensor | None = None


# --- The model ---------------------------------------------------------------------------------

# The modules that the momentum (EMA) model copies, §3.3
MOMENTUM_MODULES = ("image_encoder", "vision_proj", "text_encoder", "text_proj", "mlm_head")


class ALBEF(MomentumQueues, ClampedTemperature, nn.Module):
    """ALBEF (§3): align (ITC with a momentum queue) before fusing (ITM + MLM).

    Modules: ``image_encoder`` (ViT), ``text_encoder`` (BERT: layers < ``fusion_from`` text-only,
    the rest cross-attend to the image), ``vision_proj`` / ``text_proj`` (Linear to E),
    ``itm_head`` (Linear(D, 2)), ``mlm_head`` (tied to the word embeddings), the temperature
    ``temp``; ``momentum``, a deep copy of the :data:`MOMENTUM_MODULES` (no gradients, eval
    mode, updated by EMA); buffers ``image_queue``/``text_queue`` (E, K), ``queue_ptr``,
    ``num_steps`` (training steps seen, for the α ramp). The momentum model's methods
    (``momentum_update``, ``momentum_pairs``, ``dequeue_and_enqueue``, ``itc_targets``, ...)
    come from :class:`~minivlm.objectives.MomentumQueues`, the clamped τ (``clamp_temp_``,
    ``temperature``) from :class:`~minivlm.objectives.ClampedTemperature`.
    """

    momentum_names = MOMENTUM_MODULES

    def __init__(self, config: ALBEFConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config or ALBEFConfig()
        self.config = cfg = replace(cfg, **overrides) if overrides else cfg
        E, Dv, Dt = cfg.embed_dim, cfg.vision.dim, cfg.text.dim
        self.image_encoder = ViT(cfg.vision)
        self.text_encoder = BertEncoder(cfg.text)
        self.vision_proj = nn.Linear(Dv, E)
        self.text_proj = nn.Linear(Dt, E)
        self.itm_head = nn.Linear(Dt, 2)
        self.mlm_head = BertMLMHead(Dt, cfg.text.vocab_size, act=cfg.text.act, eps=cfg.text.eps,
                                    tie_to=self.text_encoder.word_embeddings)  # fmt: skip
        self.temp = nn.Parameter(torch.tensor(float(cfg.temp)))
        # The momentum model: one deepcopy, so that its MLM decoder stays tied to its word
        # embeddings. Its parameters get no gradient and the optimizer never sees them. Queues
        # of momentum features, (E, K) as in the paper's code: random unit columns.
        self.init_momentum(E, cfg.queue_size)
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))

    # -- α (τ: :class:`ClampedTemperature`; momentum model and queues: :class:`MomentumQueues`)

    def current_alpha(self) -> float:
        """Scheduled α: ``alpha · min(1, num_steps / alpha_warmup_steps)`` (0 without distill)."""
        cfg, ramp = self.config, self.config.alpha_warmup_steps
        if not cfg.distill:
            return 0.0
        return cfg.alpha * min(1.0, int(self.num_steps) / ramp) if ramp > 0 else cfg.alpha

    def on_after_step(self, step: int, total: int | None = None) -> None:
        """Hook of ``minivlm.train.train``: record the completed steps (α ramp). Every training
        forward counts a step too (and does the EMA update), so a custom loop need not call it."""
        self.num_steps.fill_(int(step))

    # -- encoders: each takes the module set to run, ``self`` or ``self.momentum`` ----------

    @staticmethod
    def feat(proj: nn.Module, embeds: Tensor) -> Tensor:
        """(B, L, D) tokens -> (B, E) L2-normalised projection of the CLS (first) token."""
        return F.normalize(proj(embeds[:, 0]).float(), dim=-1)

    def text_embeds(self, enc: BertEncoder, input_ids: Tensor, mask: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, Dt) output of the text-only layers (0..fusion_from-1)."""
        x = enc.embed(input_ids)  # (B, T, Dt)
        return enc.forward_layers(x, mask, end=self.config.fusion_from).last_hidden_state

    def fuse(self, enc: BertEncoder, text_embeds: Tensor, mask: Tensor, image_embeds: Tensor,
             need_weights: bool = False) -> TextOutput:  # fmt: skip
        """Fusion layers (fusion_from..depth-1): text (B, T, Dt) cross-attends image (B, S, Dv)."""
        return enc.forward_layers(text_embeds, mask, encoder_hidden_states=image_embeds,
                                  start=self.config.fusion_from, need_weights=need_weights)

    def mlm_logits(self, net: nn.Module, input_ids: Tensor, mask: Tensor, image_embeds: Tensor
                   ) -> Tensor:  # fmt: skip
        """All BERT layers of ``net`` on (masked) ids with the image, then its MLM head:
        (B, T, V)."""
        h = net.text_encoder(input_ids, mask, encoder_hidden_states=image_embeds)
        return net.mlm_head(h.last_hidden_state)

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, E) L2-normalised projected image CLS (for retrieval)."""
        return self.feat(self.vision_proj, self.image_encoder(pixel_values))

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, T) ids -> (B, E) L2-normalised projected text CLS from the text-only layers."""
        mask = _mask(input_ids, attention_mask)
        return self.feat(self.text_proj, self.text_embeds(self.text_encoder, input_ids, mask))

    def fusion(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None,
               need_weights: bool = False) -> TextOutput:  # fmt: skip
        """Run image, text and fusion encoders; ``last_hidden_state`` (B, T, Dt) is the
        multimodal text, and with ``need_weights`` ``cross_attentions`` holds one (B, H, T, 1+N)
        map per fusion layer (image CLS first, then the patches in raster order)."""
        mask = _mask(input_ids, attention_mask)
        text = self.text_embeds(self.text_encoder, input_ids, mask)
        return self.fuse(self.text_encoder, text, mask, self.image_encoder(pixel_values),
                         need_weights)  # fmt: skip

    def itm_logits(self, pixel_values: Tensor, input_ids: Tensor,
                   attention_mask: Tensor | None = None) -> Tensor:  # fmt: skip
        """(B, 2) ITM logits (column 1 = "matches") of the fusion CLS token."""
        fused = self.fusion(pixel_values, input_ids, attention_mask).last_hidden_state
        return self.itm_head(fused[:, 0])

    def itm_score(self, pixel_values: Tensor, input_ids: Tensor,
                  attention_mask: Tensor | None = None) -> Tensor:  # fmt: skip
        """(B,) probability that caption i matches image i, from the ITM head."""
        return self.itm_logits(pixel_values, input_ids, attention_mask).float().softmax(-1)[:, 1]

    @torch.no_grad()
    def momentum_features(self, pixel_values: Tensor, input_ids: Tensor, mask: Tensor
                          ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """The momentum model's image tokens (B, 1+N, Dv) and features (B, E), (B, E)."""
        m = self.momentum
        image_embeds_m = m.image_encoder(pixel_values)  # (B, 1+N, Dv)
        text_feat_m = self.feat(m.text_proj, self.text_embeds(m.text_encoder, input_ids, mask))
        return image_embeds_m, self.feat(m.vision_proj, image_embeds_m), text_feat_m

    @torch.no_grad()
    def soft_targets(self, pixel_values: Tensor, input_ids: Tensor,
                     attention_mask: Tensor | None = None, alpha: float | None = None,
                     direction: str = "i2t") -> Tensor:  # fmt: skip
        """The momentum model's ITC pseudo-targets (§3.3), (B, B+K), rows summing to 1: row i is
        ``alpha · softmax(s_m(I_i, ·) / τ) + (1 − alpha) · one-hot(i)`` over the batch's texts
        then the K queued ones (``direction="t2i"``: each text over the images). ``alpha``
        defaults to ``config.alpha`` (no warm-up ramp). Updates nothing (no EMA, no enqueue)."""
        if direction not in ("i2t", "t2i"):
            raise ValueError(f"soft_targets: direction must be 'i2t' or 't2i', got {direction!r}")
        alpha = self.config.alpha if alpha is None else float(alpha)
        _, image_feat_m, text_feat_m = self.momentum_features(
            pixel_values, input_ids, _mask(input_ids, attention_mask))
        targets = self.itc_targets(image_feat_m, text_feat_m, self.temperature, alpha)
        return targets[0 if direction == "i2t" else 1]

    # -- training forward and its losses -----------------------------------------------------

    def forward(self, pixel_values: Tensor | None = None, input_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, alpha: float | None = None,
                index: Tensor | None = None) -> ALBEFOutput:  # fmt: skip
        """ALBEF's pre-training step (§3.2-3.3) on B matching (image, caption) pairs:
        pixel_values (B, C, H, W), input_ids (B, T) starting with [CLS], attention_mask (B, T).

        ``alpha``: distillation weight for this call (default: :meth:`current_alpha`).
        ``index`` (B,), optional image ids: another caption of the same image is never drawn as
        a hard negative. In training mode the call also does the EMA update (first), enqueues
        the momentum features (last) and counts a step; in eval mode it changes no state."""
        self._check_forward(pixel_values, input_ids)
        cfg = self.config
        alpha = (self.current_alpha() if alpha is None else float(alpha)) if cfg.distill else 0.0
        mask = _mask(input_ids, attention_mask)  # (B, T)
        temp = self.step_temperature()  # clamped in place first when training
        # unimodal encoders: online, then the momentum model after its EMA step
        image_embeds = self.image_encoder(pixel_values)  # (B, 1+N, Dv)
        text_embeds = self.text_embeds(self.text_encoder, input_ids, mask)  # (B, T, Dt)
        image_feat = self.feat(self.vision_proj, image_embeds)  # (B, E)
        text_feat = self.feat(self.text_proj, text_embeds)  # (B, E)
        if self.training:
            self.momentum_update()
        image_embeds_m, image_feat_m, text_feat_m = self.momentum_features(
            pixel_values, input_ids, mask)  # (B, 1+N, Dv), (B, E), (B, E)

        out = self.itc_loss(image_feat, text_feat, image_feat_m, text_feat_m, temp, alpha)
        zero = out.loss_itc * 0.0
        out.loss_itm = out.loss_mlm = zero
        if cfg.itm_weight:
            self.itm_loss(out, image_embeds, text_embeds, input_ids, mask, index)
        if cfg.mlm_weight:
            self.mlm_loss(out, input_ids, mask, image_embeds, image_embeds_m, alpha)
        if not cfg.itc_weight:
            out.loss_itc = zero
        out.loss = (cfg.itc_weight * out.loss_itc + cfg.itm_weight * out.loss_itm
                    + cfg.mlm_weight * out.loss_mlm)  # fmt: skip
        if self.training:
            self.dequeue_and_enqueue(image_feat_m, text_feat_m)
            self.num_steps.add_(1)
        return out

    def itc_loss(self, image_feat: Tensor, text_feat: Tensor, image_feat_m: Tensor,
                 text_feat_m: Tensor, temp: Tensor, alpha: float) -> ALBEFOutput:  # fmt: skip
        """ITC (§3.2 Eq. 1-3) against [momentum batch; queue] with (distilled) soft targets;
        starts the :class:`ALBEFOutput` that the other losses fill in."""
        t_i2t, t_t2i = self.itc_targets(image_feat_m, text_feat_m, temp, alpha)  # (B, B+K) x 2
        image_all, text_all = self.with_queues(image_feat_m, text_feat_m)  # (E, B+K) each
        sim_i2t = image_feat @ text_all / temp  # (B, B+K)
        sim_t2i = text_feat @ image_all / temp  # (B, B+K)
        loss = (soft_cross_entropy(sim_i2t, t_i2t) + soft_cross_entropy(sim_t2i, t_t2i)) / 2
        return ALBEFOutput(loss=loss, loss_itc=loss, loss_itm=loss, loss_mlm=loss, alpha=alpha,
                           temperature=temp.detach(), sim_i2t=sim_i2t, sim_t2i=sim_t2i,
                           itc_targets_i2t=t_i2t, itc_targets_t2i=t_t2i)  # fmt: skip

    def itm_loss(self, out: ALBEFOutput, image_embeds: Tensor, text_embeds: Tensor,
                 input_ids: Tensor, mask: Tensor, index: Tensor | None) -> None:  # fmt: skip
        """ITM (§3.2) on B positives and 2B hard negatives drawn from the ITC similarities."""
        exclude = None
        if self.config.itm_exclude_duplicates:  # (B, B) pairs that would be false negatives
            exclude = same_pair_mask(input_ids, mask, index)
        neg_t, neg_i = sample_hard_negatives(out.sim_i2t, out.sim_t2i, exclude)  # (B,), (B,)
        # rows: positives (I_i, T_i); (I_i, hard-negative text); (hard-negative image, T_i)
        text_all, mask_all, image_all, out.itm_labels = hard_negative_rows(
            text_embeds, mask, image_embeds, neg_t, neg_i)  # (3B, T, Dt), (3B, T), (3B, S, Dv)
        fused = self.fuse(self.text_encoder, text_all, mask_all, image_all).last_hidden_state
        out.itm_logits = self.itm_head(fused[:, 0])  # (3B, 2); labels [1]*B + [0]*2B
        out.loss_itm = F.cross_entropy(out.itm_logits.float(), out.itm_labels)
        out.neg_text_idx, out.neg_image_idx = neg_t, neg_i

    def mlm_loss(self, out: ALBEFOutput, input_ids: Tensor, mask: Tensor, image_embeds: Tensor,
                 image_embeds_m: Tensor, alpha: float) -> None:  # fmt: skip
        """MLM conditioned on the image (§3.2), distilled from the momentum model (§3.3)."""
        cfg = self.config
        masked_ids, out.mlm_labels = mask_tokens(
            input_ids, cfg.mask_token_id, cfg.text.vocab_size, cfg.special_token_ids,
            cfg.mlm_probability,
        )  # fmt: skip
        out.mlm_logits = self.mlm_logits(self, masked_ids, mask, image_embeds)  # (B, T, V)
        soft = None
        if alpha > 0:
            with torch.no_grad():  # (B, T, V) the momentum model's predicted distribution
                soft = self.mlm_logits(self.momentum, masked_ids, mask, image_embeds_m)
                soft = soft.float().softmax(-1)
        out.loss_mlm = mlm_distill_loss(out.mlm_logits, out.mlm_labels, soft, alpha)

    def _check_forward(self, pixel_values: Tensor | None, input_ids: Tensor | None) -> None:
        if pixel_values is None or input_ids is None:
            raise ValueError("ALBEF.forward: expected pixel_values (B, C, H, W) and input_ids "
                             "(B, T); use encode_image / encode_text for one modality")  # fmt: skip
        B = input_ids.shape[0]
        if pixel_values.shape[0] != B:
            raise ValueError("ALBEF.forward: expected as many images as captions (matching "
                             f"pairs), got {pixel_values.shape[0]} images and {B} captions")
        if B < 2:
            raise ValueError(f"ALBEF.forward: ITM needs at least 2 pairs per batch, got B={B}")


def _mask(input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    return torch.ones_like(input_ids) if attention_mask is None else attention_mask
