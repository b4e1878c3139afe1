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

Read top to bottom: :class:`ALBEFConfig`, the pieces as plain functions (:func:`ema_update_`,
:func:`enqueue_`, :func:`distill_targets`, :func:`soft_cross_entropy`,
:func:`sample_hard_negatives`, :func:`mlm_distill_loss`), the model :class:`ALBEF` with
notebook hooks (``soft_targets``, ``itm_score``, ``fusion``, ``gradcam``) and the presets
``albef_tiny`` / ``albef_base``. MLM masking is :func:`minivlm.models.vilt.mask_tokens`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from minivlm.models.vilt import mask_tokens
from minivlm.nn.bert import BertEncoder, BertMLMHead, TextConfig, TextOutput
from minivlm.nn.vit import ViT, ViTConfig

Tensor = torch.Tensor

__all__ = [
    "ALBEF",
    "ALBEFConfig",
    "ALBEFOutput",
    "distill_targets",
    "ema_update_",
    "enqueue_",
    "mlm_distill_loss",
    "sample_hard_negatives",
    "soft_cross_entropy",
]

# BERT-base-uncased ids: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103
_BERT_SPECIAL_IDS = (0, 100, 101, 102, 103)


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


def albef_vision_config(**overrides: Any) -> ViTConfig:
    """ALBEF's image encoder: ViT-B/16 (DeiT weights in the paper), 256 px pre-training crops
    (§4), LayerNorm eps 1e-6."""
    return ViTConfig(**{**dict(image_size=256, patch_size=16), **overrides})


@dataclass
class ALBEFConfig:
    """Sizes and switches of ALBEF (defaults: the paper's ViT-B/16 + BERT-base 6+6 model).

    vision: the ViT (:func:`albef_vision_config`; a dict is merged into it).
    text: the BERT (a :class:`TextConfig`; a dict is merged into BERT-base). Its layers
        ``0..fusion_from-1`` are the text encoder, ``fusion_from..depth-1`` the fusion encoder
        with cross-attention to the image tokens (``kv_dim`` = the ViT width, set here).
    vocab_size: when given, overrides ``text.vocab_size``.
    embed_dim: size E of the shared normalised embedding space (256 in the paper).
    temp: initial learnable temperature τ (0.07), clamped to [temp_min, temp_max] =
        [0.001, 0.5] at the start of every forward, as in the paper's code.
    queue_size: K momentum features kept per modality (65,536 in the paper).
    momentum: EMA coefficient m of the momentum model (0.995).
    alpha: distillation weight α (0.4); ramped linearly from 0 over the first
        ``alpha_warmup_steps`` training steps (the paper: over the first epoch; 0 = no ramp).
    distill: momentum distillation (§3.3) on; False trains on one-hot targets only.
    mlm_probability: BERT masking rate (0.15); ``mask_token_id`` and ``special_token_ids``
        (never masked, never used as random replacements) depend on the tokenizer: the
        defaults are BERT-base-uncased's; the tiny preset uses minivlm's shapes tokenizer.
    itm_exclude_duplicates: hard-negative sampling also skips captions identical to the
        positive one, and images with the same ``index`` when the batch gives one (they
        would be false negatives); the positive itself is always skipped.
    itc_weight, itm_weight, mlm_weight: loss = sum of weighted parts (all 1 in the paper;
        a weight of 0 skips that part).
    """

    vision: ViTConfig = field(default_factory=albef_vision_config)
    text: TextConfig = field(default_factory=TextConfig)
    fusion_from: int = 6
    vocab_size: int | None = None
    embed_dim: int = 256
    temp: float = 0.07
    temp_min: float = 0.001
    temp_max: float = 0.5
    queue_size: int = 65536
    momentum: float = 0.995
    alpha: float = 0.4
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
        if isinstance(self.vision, dict):
            self.vision = albef_vision_config(**self.vision)
        if isinstance(self.text, dict):
            self.text = TextConfig(**self.text)
        if not isinstance(self.vision, ViTConfig):
            raise TypeError(
                "ALBEFConfig.vision: expected a ViTConfig or dict, got "
                f"{type(self.vision).__name__}"
            )
        if not isinstance(self.text, TextConfig):
            raise TypeError(
                f"ALBEFConfig.text: expected a TextConfig or dict, got {type(self.text).__name__}"
            )
        if self.text.causal:
            raise ValueError(
                "ALBEFConfig.text: ALBEF's BERT is bidirectional; causal must be False"
            )
        if not self.vision.class_token:
            raise ValueError(
                "ALBEFConfig.vision: ALBEF reads the image CLS token; class_token=True"
            )
        if not 1 <= self.fusion_from < self.text.depth:
            raise ValueError(
                f"ALBEFConfig: fusion_from must be in 1..{self.text.depth - 1} (text depth "
                f"{self.text.depth}) so that both text and fusion layers exist, got "
                f"{self.fusion_from}"
            )
        text = dict(cross_attention_from=self.fusion_from, cross_attention_freq=1,
                    cross_attention_layers=None, kv_dim=self.vision.dim)  # fmt: skip
        if self.vocab_size is not None:
            text["vocab_size"] = self.vocab_size
        self.text = replace(self.text, **text)
        self.special_token_ids = tuple(int(i) for i in self.special_token_ids)
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
            (0 <= self.mask_token_id < self.text.vocab_size,
             f"mask_token_id {self.mask_token_id} is outside the vocabulary "
             f"0..{self.text.vocab_size - 1}"),
        ]  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"ALBEFConfig: {msg}")

    @property
    def num_fusion_layers(self) -> int:
        return self.text.depth - self.fusion_from


@dataclass
class ALBEFOutput:
    """What :meth:`ALBEF.forward` returns.

    loss: ``itc_weight·loss_itc + itm_weight·loss_itm + mlm_weight·loss_mlm``.
    alpha: the distillation weight used in this step (0 when ``distill`` is off).
    temperature: τ after the clamp.
    sim_i2t, sim_t2i: (B, B+K) online-vs-[momentum batch; queue] similarities / τ.
    itc_targets_i2t, itc_targets_t2i: (B, B+K) the ITC targets (rows sum to 1).
    itm_logits: (3B, 2) for [positives; (image i, hard-negative text); (hard-negative image,
        text i)], with ``itm_labels`` (3B,) = [1]*B + [0]*2B.
    neg_text_idx, neg_image_idx: (B,) the sampled negatives: text for each image, image for
        each text.
    mlm_logits: (B, T, V); mlm_labels: (B, T) original ids at masked positions, else -100.
    """

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


# ---------------------------------------------------------------------------
# The pieces as plain functions
# ---------------------------------------------------------------------------


@torch.no_grad()
def ema_update_(pairs: list[tuple[Tensor, Tensor]], momentum: float) -> None:
    """Momentum (EMA) update in place: ``p_m ← m·p_m + (1 − m)·p`` for each (p, p_m) pair."""
    for p, p_m in pairs:
        p_m.mul_(momentum).add_(p.detach(), alpha=1.0 - momentum)


@torch.no_grad()
def enqueue_(queue: Tensor, ptr: Tensor, feats: Tensor) -> None:
    """Write (B, E) ``feats`` into the (E, K) ring buffer ``queue`` from column ``ptr``.

    Columns ``ptr, ptr+1, ...`` (mod K) receive the batch, wrapping around the end, and
    ``ptr`` becomes ``(ptr + B) % K``. The paper's code asserts ``K % B == 0`` so that a
    batch never straddles the end; this works for any B (for B > K only the last K
    features survive, as if written one by one).
    """
    E, K = queue.shape
    if feats.dim() != 2 or feats.shape[1] != E:
        raise ValueError(f"enqueue_: expected features of shape (B, {E}), got {tuple(feats.shape)}")
    B = feats.shape[0]
    start = int(ptr)
    if B > K:  # earlier ones would be overwritten within this same batch
        start = (start + B - K) % K
        feats = feats[B - K :]
    cols = (start + torch.arange(feats.shape[0], device=queue.device)) % K  # (min(B, K),)
    queue[:, cols] = feats.t().to(queue.dtype)
    ptr.fill_((int(ptr) + B) % K)


def distill_targets(sim_m: Tensor, alpha: float) -> Tensor:
    """ITC targets with momentum distillation (§3.3, Eq. 6): (B, B+K) rows summing to 1.

    ``alpha · softmax(sim_m) + (1 − alpha) · y``, where ``sim_m`` (B, B+K) are the momentum
    model's similarities / τ and y is one-hot at column i for row i (the positive: the batch
    comes first, the queue after). ``alpha = 0`` gives the plain one-hot targets.
    """
    if sim_m.dim() != 2 or sim_m.shape[1] < sim_m.shape[0]:
        raise ValueError(
            f"distill_targets: expected sim_m of shape (B, B+K), got {tuple(sim_m.shape)}"
        )
    onehot = torch.zeros_like(sim_m, dtype=torch.float32)
    onehot.fill_diagonal_(1.0)  # (B, B+K): 1 at (i, i)
    if alpha == 0:
        return onehot
    return alpha * sim_m.float().softmax(dim=1) + (1.0 - alpha) * onehot


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over rows of ``−Σ_j targets_ij · log_softmax(logits)_ij`` (cross-entropy with
    soft targets; equals ``F.cross_entropy`` when the targets are one-hot)."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def sample_hard_negatives(
    sim_i2t: Tensor,
    sim_t2i: Tensor,
    exclude: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Hard negatives for ITM (§3.2): one text per image and one image per text.

    For image i, text j ≠ i is drawn with probability ∝ ``exp(sim_i2t[i, j])`` (softmax
    over the batch, the positive's weight set to 0), so texts that the contrastive model
    finds similar -- hard to tell apart -- are picked more often; likewise an image for
    each text from ``sim_t2i``. Only the first B columns (the batch) of (B, B+K)
    similarities are used. ``exclude`` (B, B) bool marks further pairs that must not be
    drawn (e.g. duplicates of the positive); a row left with no candidate falls back to
    every j ≠ i. The positive is masked with −inf before the softmax, so it can never be
    drawn, however strongly the similarities favour it.

    Returns ``(neg_text_idx, neg_image_idx)``, both (B,) long.
    """
    B = sim_i2t.shape[0]
    if B < 2:
        raise ValueError(f"sample_hard_negatives: need at least 2 pairs in the batch, got B={B}")
    if sim_i2t.dim() != 2 or sim_t2i.shape != sim_i2t.shape or sim_i2t.shape[1] < B:
        raise ValueError(
            "sample_hard_negatives: expected sim_i2t and sim_t2i of the same shape (B, B+K), "
            f"got {tuple(sim_i2t.shape)} and {tuple(sim_t2i.shape)}"
        )
    dev = sim_i2t.device
    eye = torch.eye(B, dtype=torch.bool, device=dev)  # the positives
    blocked = eye
    if exclude is not None:
        if exclude.shape != (B, B):
            raise ValueError(
                f"sample_hard_negatives: expected exclude of shape ({B}, {B}), "
                f"got {tuple(exclude.shape)}"
            )
        blocked = eye | exclude.to(device=dev, dtype=torch.bool)
        empty = blocked.all(dim=1, keepdim=True)  # (B, 1) rows with no candidate left
        blocked = torch.where(empty, eye, blocked)
    out = []
    for sim in (sim_i2t, sim_t2i):
        with torch.no_grad():
            logits = sim[:, :B].detach().float().masked_fill(blocked, float("-inf"))
            weights = logits.softmax(dim=1)  # (B, B), 0 on the blocked pairs
            gd = generator.device if generator is not None else dev
            idx = torch.multinomial(weights.to(gd), 1, generator=generator).squeeze(1)
        out.append(idx.to(dev))
    return out[0], out[1]


def same_pair_mask(input_ids: Tensor, mask: Tensor, index: Tensor | None = None,
                   where: str = "ALBEF.forward") -> Tensor:
    """(B, B) True where pair j would also match pair i: the same caption (ids under the
    mask) or the same image ``index``. Passed as ``exclude`` to :func:`sample_hard_negatives`
    so that a "negative" is never a copy of the positive (used by ALBEF and BLIP-2)."""
    ids = input_ids.masked_fill(mask == 0, -1)  # (B, T)
    same = (ids[:, None, :] == ids[None, :, :]).all(dim=-1)  # (B, B)
    if index is not None:
        if index.shape != input_ids.shape[:1]:
            raise ValueError(
                f"{where}: expected index of shape ({input_ids.shape[0]},), got "
                f"{tuple(index.shape)}"
            )
        same = same | (index[:, None] == index[None, :]).to(same.device)
    return same


def mlm_distill_loss(
    logits: Tensor, labels: Tensor, soft_labels: Tensor | None = None, alpha: float = 0.0
) -> Tensor:
    """MLM loss with momentum distillation (ALBEF §3.3; the paper's code).

    logits (B, T, V), labels (B, T) with -100 where nothing is predicted, soft_labels
    (B, T, V) the momentum model's predicted distribution. Returns
    ``(1 − alpha) · CE(logits, labels) + alpha · H(soft_labels, logits)``, both averaged over
    the masked positions (0, with a gradient path, when none is masked).
    """
    sel = labels != -100  # (B, T)
    if not bool(sel.any()):
        return logits.sum() * 0.0
    lg = logits[sel].float()  # (M, V)
    loss = F.cross_entropy(lg, labels[sel])
    if soft_labels is not None and alpha > 0:
        distill = -(soft_labels[sel].float() * F.log_softmax(lg, dim=-1)).sum(dim=-1).mean()
        loss = (1.0 - alpha) * loss + alpha * distill
    return loss


def _concat_all_gather(t: Tensor) -> Tensor:
    """Concatenate ``t`` over all processes (the paper's ``concat_all_gather``), if any."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------

# (online module, momentum copy) attribute names: what the EMA model holds
_MOMENTUM_PAIRS = (
    ("image_encoder", "image_encoder_m"),
    ("vision_proj", "vision_proj_m"),
    ("text_encoder", "text_encoder_m"),
    ("text_proj", "text_proj_m"),
    ("mlm_head", "mlm_head_m"),
)


class ALBEF(nn.Module):
    """ALBEF (§3): align (ITC with a momentum queue) before fusing (ITM + MLM).

    Modules: ``image_encoder`` (ViT), ``text_encoder`` (BERT; layers < ``fusion_from`` are
    text-only, the rest cross-attend to the image tokens), ``vision_proj`` / ``text_proj``
    (Linear to E), ``itm_head`` (Linear(D, 2)), ``mlm_head`` (tied to the word embeddings),
    the learnable temperature ``temp``; the momentum copies ``*_m`` (no gradients, always in
    eval mode, updated by EMA) and the buffers ``image_queue``/``text_queue`` (E, K),
    ``queue_ptr`` and ``num_steps`` (training steps seen, for the α ramp).
    """

    def __init__(self, config: ALBEFConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config or ALBEFConfig()
        if overrides:
            cfg = replace(cfg, **overrides)
        self.config = cfg
        E, Dv, Dt = cfg.embed_dim, cfg.vision.dim, cfg.text.dim
        self.image_encoder = ViT(cfg.vision)
        self.text_encoder = BertEncoder(cfg.text)
        self.vision_proj = nn.Linear(Dv, E)
        self.text_proj = nn.Linear(Dt, E)
        self.itm_head = nn.Linear(Dt, 2)
        self.mlm_head = BertMLMHead(Dt, cfg.text.vocab_size, act=cfg.text.act, eps=cfg.text.eps,
                                    tie_to=self.text_encoder.word_embeddings)  # fmt: skip
        self.temp = nn.Parameter(torch.tensor(float(cfg.temp)))

        # The momentum model: one deepcopy so that the MLM decoder stays tied to the copied
        # word embeddings. Its parameters get no gradient and the optimizer never sees them.
        online = tuple(getattr(self, a) for a, _ in _MOMENTUM_PAIRS)
        for (_, name_m), mod in zip(_MOMENTUM_PAIRS, copy.deepcopy(online), strict=True):
            mod.requires_grad_(False)
            mod.eval()
            setattr(self, name_m, mod)

        # Queues of momentum features, (E, K) as in the paper's code: random unit columns.
        self.register_buffer("image_queue", F.normalize(torch.randn(E, cfg.queue_size), dim=0))
        self.register_buffer("text_queue", F.normalize(torch.randn(E, cfg.queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))

    # -- momentum model and queues -------------------------------------------

    def train(self, mode: bool = True) -> ALBEF:
        """Set the training mode; the momentum model always stays in eval mode."""
        super().train(mode)
        for _, name_m in _MOMENTUM_PAIRS:
            getattr(self, name_m).eval()
        return self

    def momentum_modules(self) -> list[nn.Module]:
        """The momentum (EMA) copies, in the order of :data:`_MOMENTUM_PAIRS`."""
        return [getattr(self, name_m) for _, name_m in _MOMENTUM_PAIRS]

    def momentum_pairs(self) -> Iterator[tuple[nn.Parameter, nn.Parameter]]:
        """(online parameter, momentum parameter) pairs, each shared tensor once (the tied
        MLM decoder / word embeddings would otherwise be averaged twice)."""
        seen: set[int] = set()
        for name, name_m in _MOMENTUM_PAIRS:
            ps = getattr(self, name).parameters()
            pms = getattr(self, name_m).parameters()
            for p, p_m in zip(ps, pms, strict=True):
                if id(p_m) not in seen:
                    seen.add(id(p_m))
                    yield p, p_m

    @torch.no_grad()
    def copy_params_to_momentum(self) -> None:
        """Make the momentum model equal to the online one (e.g. after loading weights)."""
        for p, p_m in self.momentum_pairs():
            p_m.copy_(p)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """EMA step: ``param_m = m · param_m + (1 − m) · param`` for every momentum parameter."""
        ema_update_(list(self.momentum_pairs()), self.config.momentum)

    @torch.no_grad()
    def dequeue_and_enqueue(self, image_feat_m: Tensor, text_feat_m: Tensor) -> None:
        """Push (B, E) momentum features (gathered over processes) into both queues; the oldest
        entries are overwritten, wrapping around the end of the queue (:func:`enqueue_`)."""
        image_feat_m = _concat_all_gather(image_feat_m)
        text_feat_m = _concat_all_gather(text_feat_m)
        if image_feat_m.shape != text_feat_m.shape:
            raise ValueError(
                "ALBEF.dequeue_and_enqueue: image and text features must have the same shape "
                f"(B, E), got {tuple(image_feat_m.shape)} and {tuple(text_feat_m.shape)}"
            )
        ptr = self.queue_ptr.clone()
        enqueue_(self.image_queue, ptr, image_feat_m)
        enqueue_(self.text_queue, self.queue_ptr, text_feat_m)

    # -- temperature and α ------------------------------------------------------

    @torch.no_grad()
    def clamp_temp_(self) -> None:
        """Clamp τ in place to [temp_min, temp_max] (the paper does it in every forward)."""
        self.temp.clamp_(self.config.temp_min, self.config.temp_max)

    @property
    def temperature(self) -> float:
        """τ after the clamp."""
        return float(self.temp.detach().clamp(self.config.temp_min, self.config.temp_max))

    def current_alpha(self) -> float:
        """Scheduled α: ``alpha · min(1, num_steps / alpha_warmup_steps)`` (0 without distill)."""
        cfg = self.config
        if not cfg.distill:
            return 0.0
        if cfg.alpha_warmup_steps <= 0:
            return cfg.alpha
        return cfg.alpha * min(1.0, int(self.num_steps) / cfg.alpha_warmup_steps)

    def on_after_step(self, step: int, total: int | None = None) -> None:
        """Hook of ``minivlm.train.train``: record the number of completed steps (α ramp).

        The EMA update itself happens inside ``forward`` (before the momentum features are
        computed), in the paper's order; a custom loop need not call this hook, because every
        training-mode forward also counts one step.
        """
        self.num_steps.fill_(int(step))

    # -- encoders ---------------------------------------------------------------

    def _text_mask(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        if attention_mask is None:
            return torch.ones_like(input_ids)
        return attention_mask

    def _image_embeds(self, pixel_values: Tensor, momentum: bool = False) -> Tensor:
        """(B, C, H, W) -> (B, 1+N, Dv) all ViT tokens after the final norm."""
        return (self.image_encoder_m if momentum else self.image_encoder)(pixel_values)

    def _text_embeds(self, input_ids: Tensor, attention_mask: Tensor, momentum: bool = False
                     ) -> Tensor:  # fmt: skip
        """(B, T) ids -> (B, T, Dt) output of the text-only layers (0..fusion_from-1)."""
        enc = self.text_encoder_m if momentum else self.text_encoder
        x = enc.embed(input_ids)  # (B, T, Dt)
        return enc.forward_layers(x, attention_mask, end=self.config.fusion_from).last_hidden_state

    def _fuse(
        self, text_embeds: Tensor, attention_mask: Tensor, image_embeds: Tensor,
        momentum: bool = False, need_weights: bool = False,
    ) -> TextOutput:  # fmt: skip
        """Fusion layers (fusion_from..depth-1): text (B, T, Dt) cross-attends image (B, S, Dv)."""
        enc = self.text_encoder_m if momentum else self.text_encoder
        return enc.forward_layers(
            text_embeds, attention_mask, encoder_hidden_states=image_embeds,
            start=self.config.fusion_from, need_weights=need_weights,
        )  # fmt: skip

    def _image_feat(self, image_embeds: Tensor, momentum: bool = False) -> Tensor:
        proj = self.vision_proj_m if momentum else self.vision_proj
        return F.normalize(proj(image_embeds[:, 0]).float(), dim=-1)  # (B, E)

    def _text_feat(self, text_embeds: Tensor, momentum: bool = False) -> Tensor:
        proj = self.text_proj_m if momentum else self.text_proj
        return F.normalize(proj(text_embeds[:, 0]).float(), dim=-1)  # (B, E)

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, E) L2-normalised projected image CLS (for retrieval)."""
        return self._image_feat(self._image_embeds(pixel_values))

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, T) ids -> (B, E) L2-normalised projected text CLS from the text-only layers."""
        mask = self._text_mask(input_ids, attention_mask)
        return self._text_feat(self._text_embeds(input_ids, mask))

    def fusion(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> TextOutput:
        """Run image, text and fusion encoders; ``last_hidden_state`` (B, T, Dt) is the
        multimodal text, and with ``need_weights`` ``cross_attentions`` holds one (B, H, T, 1+N)
        map per fusion layer (image CLS first, then the patches in raster order)."""
        mask = self._text_mask(input_ids, attention_mask)
        image_embeds = self._image_embeds(pixel_values)
        return self._fuse(self._text_embeds(input_ids, mask), mask, image_embeds,
                          need_weights=need_weights)  # fmt: skip

    def itm_logits(
        self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        """(B, 2) ITM logits (column 1 = "matches") of the fusion CLS token."""
        return self.itm_head(
            self.fusion(pixel_values, input_ids, attention_mask).last_hidden_state[:, 0]
        )

    def itm_score(
        self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        """(B,) probability that caption i matches image i, from the ITM head."""
        return self.itm_logits(pixel_values, input_ids, attention_mask).float().softmax(-1)[:, 1]

    # -- notebook hooks -----------------------------------------------------------

    @torch.no_grad()
    def soft_targets(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        alpha: float | None = None,
        direction: str = "i2t",
    ) -> Tensor:
        """The momentum model's ITC pseudo-targets (§3.3), (B, B+K), rows summing to 1.

        Row i is ``alpha · softmax(s_m(I_i, ·) / τ) + (1 − alpha) · one-hot(i)`` over the B
        texts of the batch then the K queued ones (``direction="t2i"``: each text over the
        images). ``alpha`` defaults to ``config.alpha`` (not the warm-up ramp). Nothing is
        updated: no EMA step, no enqueue.
        """
        if direction not in ("i2t", "t2i"):
            raise ValueError(f"soft_targets: direction must be 'i2t' or 't2i', got {direction!r}")
        alpha = self.config.alpha if alpha is None else float(alpha)
        mask = self._text_mask(input_ids, attention_mask)
        image_feat_m = self._image_feat(self._image_embeds(pixel_values, True), True)
        text_feat_m = self._text_feat(self._text_embeds(input_ids, mask, True), True)
        if direction == "i2t":
            sim_m = image_feat_m @ torch.cat([text_feat_m.t(), self.text_queue.float()], 1)
        else:
            sim_m = text_feat_m @ torch.cat([image_feat_m.t(), self.image_queue.float()], 1)
        return distill_targets(sim_m / self.temperature, alpha)

    def gradcam(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        layer: int | None = None,
    ) -> Tensor:
        """Grad-CAM on cross-attention (ALBEF §5's visualisation), (B, T, N) with N patches.

        For fusion layer ``layer`` (index among the fusion layers, default the 3rd = BERT
        layer 8 as in the paper; with 3 or fewer fusion layers the second-to-last, because in the
        last one only the [CLS] row reaches the ITM head and every word's map is zero), take its
        cross-attention maps A (B, H, T, 1+N) and the gradient of the ITM "match" logit
        w.r.t. them; the map is the mean over heads of ``A · relu(∂score/∂A)`` on the patch
        columns, zero on padded text rows. Entry [b, t, n]: how much word t's attention to
        patch n raises the matching score. Parameter gradients are not touched.
        """
        nf = self.config.num_fusion_layers
        layer = min(2, max(0, nf - 2)) if layer is None else layer
        if not -nf <= layer < nf:
            raise ValueError(
                f"ALBEF.gradcam: layer must index one of the {nf} fusion layers "
                f"(-{nf}..{nf - 1}), got {layer}"
            )
        mask = self._text_mask(input_ids, attention_mask)
        with torch.enable_grad():
            image_embeds = self._image_embeds(pixel_values).detach().requires_grad_(True)
            text_embeds = self._text_embeds(input_ids, mask)
            out = self._fuse(text_embeds, mask, image_embeds, need_weights=True)
            attn = out.cross_attentions[layer]  # (B, H, T, 1+N)
            score = self.itm_head(out.last_hidden_state[:, 0])[:, 1].sum()
            (grad,) = torch.autograd.grad(score, attn)
        cam = attn.detach()[..., 1:] * grad[..., 1:].clamp(min=0)  # (B, H, T, N): patches only
        cam = cam * mask[:, None, :, None].to(cam.dtype)
        return cam.mean(dim=1)  # (B, T, N)

    # -- training forward -------------------------------------------------------

    def forward(
        self,
        pixel_values: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        alpha: float | None = None,
        index: Tensor | None = None,
        **ignored: Any,
    ) -> ALBEFOutput:
        """ALBEF's pre-training step (§3.2-3.3) on B matching (image, caption) pairs.

        pixel_values (B, C, H, W), input_ids (B, T) starting with [CLS], attention_mask
        (B, T). ``alpha``: distillation weight for this call (default: the scheduled
        :meth:`current_alpha`). ``index`` (B,), optional: image ids, so that another caption of
        the same image is never drawn as its hard negative. In training mode the call also
        does the EMA update (first), enqueues the momentum features (last) and counts a step;
        in eval mode it changes no state.
        """
        if pixel_values is None or input_ids is None:
            raise ValueError(
                "ALBEF.forward: expected pixel_values (B, C, H, W) and input_ids (B, T); use "
                "encode_image / encode_text for one modality"
            )
        B = input_ids.shape[0]
        if pixel_values.shape[0] != B:
            raise ValueError(
                f"ALBEF.forward: expected as many images as captions (matching pairs), got "
                f"{pixel_values.shape[0]} images and {B} captions"
            )
        if B < 2:
            raise ValueError(f"ALBEF.forward: ITM needs at least 2 pairs per batch, got B={B}")
        cfg = self.config
        training = self.training
        if alpha is None:
            alpha = self.current_alpha()
        alpha = float(alpha) if cfg.distill else 0.0
        mask = self._text_mask(input_ids, attention_mask)  # (B, T)
        if training:
            self.clamp_temp_()
        temp = self.temp.clamp(cfg.temp_min, cfg.temp_max)

        # ---- unimodal encoders (online)
        image_embeds = self._image_embeds(pixel_values)  # (B, 1+N, Dv)
        image_feat = self._image_feat(image_embeds)  # (B, E)
        text_embeds = self._text_embeds(input_ids, mask)  # (B, T, Dt)
        text_feat = self._text_feat(text_embeds)  # (B, E)

        # ---- momentum features and ITC targets (§3.3)
        with torch.no_grad():
            if training:
                self.momentum_update()
            image_embeds_m = self._image_embeds(pixel_values, momentum=True)  # (B, 1+N, Dv)
            image_feat_m = self._image_feat(image_embeds_m, momentum=True)  # (B, E)
            text_feat_m = self._text_feat(self._text_embeds(input_ids, mask, True), True)
            image_feat_all = torch.cat([image_feat_m.t(), self.image_queue.float()], 1)  # (E, B+K)
            text_feat_all = torch.cat([text_feat_m.t(), self.text_queue.float()], 1)  # (E, B+K)
            if alpha > 0:
                t_i2t = distill_targets(image_feat_m @ text_feat_all / temp, alpha)  # (B, B+K)
                t_t2i = distill_targets(text_feat_m @ image_feat_all / temp, alpha)
            else:  # plain one-hot targets: column i is the positive of row i
                t_i2t = t_t2i = distill_targets(image_feat.new_zeros(B, text_feat_all.shape[1]), 0)

        # ---- ITC (§3.2 Eq. 1-3)
        sim_i2t = image_feat @ text_feat_all / temp  # (B, B+K)
        sim_t2i = text_feat @ image_feat_all / temp  # (B, B+K)
        zero = sim_i2t.sum() * 0.0
        loss_itc = zero
        if cfg.itc_weight:
            loss_itc = (soft_cross_entropy(sim_i2t, t_i2t) + soft_cross_entropy(sim_t2i, t_t2i)) / 2

        # ---- ITM with hard negatives (§3.2)
        loss_itm, itm_logits, itm_labels, neg_t, neg_i = zero, None, None, None, None
        if cfg.itm_weight:
            exclude = (
                same_pair_mask(input_ids, mask, index) if cfg.itm_exclude_duplicates else None
            )
            neg_t, neg_i = sample_hard_negatives(sim_i2t, sim_t2i, exclude)  # (B,), (B,)
            # rows: positives (I_i, T_i); (I_i, hard-negative text); (hard-negative image, T_i)
            text_all = torch.cat([text_embeds, text_embeds[neg_t], text_embeds])  # (3B, T, Dt)
            mask_all = torch.cat([mask, mask[neg_t], mask])  # (3B, T)
            image_all = torch.cat([image_embeds, image_embeds, image_embeds[neg_i]])  # (3B, S, Dv)
            fused = self._fuse(text_all, mask_all, image_all).last_hidden_state  # (3B, T, Dt)
            itm_logits = self.itm_head(fused[:, 0])  # (3B, 2)
            itm_labels = torch.zeros(3 * B, dtype=torch.long, device=fused.device)  # (3B,)
            itm_labels[:B] = 1  # the positives match; the 2B hard negatives do not
            loss_itm = F.cross_entropy(itm_logits.float(), itm_labels)

        # ---- MLM conditioned on the image, distilled from the momentum model (§3.2-3.3)
        loss_mlm, mlm_logits, mlm_labels = zero, None, None
        if cfg.mlm_weight:
            masked_ids, mlm_labels = mask_tokens(
                input_ids, cfg.mask_token_id, cfg.text.vocab_size, cfg.special_token_ids,
                cfg.mlm_probability,
            )  # fmt: skip
            mlm_logits = self._mlm_logits(masked_ids, mask, image_embeds)  # (B, T, V)
            soft = None
            if alpha > 0:
                with torch.no_grad():
                    soft = self._mlm_logits(masked_ids, mask, image_embeds_m, True).float()
                    soft = soft.softmax(dim=-1)  # (B, T, V)
            loss_mlm = mlm_distill_loss(mlm_logits, mlm_labels, soft, alpha)

        loss = cfg.itc_weight * loss_itc + cfg.itm_weight * loss_itm + cfg.mlm_weight * loss_mlm
        if training:
            self.dequeue_and_enqueue(image_feat_m, text_feat_m)
            self.num_steps.add_(1)
        return ALBEFOutput(
            loss=loss, loss_itc=loss_itc, loss_itm=loss_itm, loss_mlm=loss_mlm, alpha=alpha,
            temperature=temp.detach(), sim_i2t=sim_i2t, sim_t2i=sim_t2i, itc_targets_i2t=t_i2t,
            itc_targets_t2i=t_t2i, itm_logits=itm_logits, itm_labels=itm_labels,
            neg_text_idx=neg_t, neg_image_idx=neg_i, mlm_logits=mlm_logits, mlm_labels=mlm_labels,
        )  # fmt: skip

    def _mlm_logits(
        self, input_ids: Tensor, mask: Tensor, image_embeds: Tensor, momentum: bool = False
    ) -> Tensor:
        """All BERT layers on (masked) ids with the image, then the MLM head: (B, T, V)."""
        enc = self.text_encoder_m if momentum else self.text_encoder
        head = self.mlm_head_m if momentum else self.mlm_head
        hidden = enc(input_ids, mask, encoder_hidden_states=image_embeds).last_hidden_state
        return head(hidden)
