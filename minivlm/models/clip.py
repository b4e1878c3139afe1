"""CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision").

Two encoders map an image and a caption into one embedding space; a batch of N matching
(image, caption) pairs is trained so that each image is most similar to its own caption among
the N captions, and each caption to its own image (§2.3, Figure 3). The paper's pseudocode::

    I_f = image_encoder(I)                      # (N, d_i)   ViT: final-normed CLS token
    T_f = text_encoder(T)                       # (N, d_t)   causal transformer at [EOS]
    I_e = l2_normalize(I_f @ W_i)               # (N, E)     visual_projection
    T_e = l2_normalize(T_f @ W_t)               # (N, E)     text_projection
    logits = I_e @ T_e.T * exp(t)               # (N, N)     t = logit_scale = log(1/τ)
    loss = (CE(logits, arange(N), rows) + CE(logits, arange(N), columns)) / 2

Read top to bottom: :class:`CLIPConfig`, the model :class:`CLIP`, the loss as plain functions
(:func:`contrastive_logits`, :func:`clip_loss`) and zero-shot classification
(:func:`build_zero_shot_classifier`, :func:`zero_shot_predict`). Checkpoint conversion is in
:mod:`minivlm.interop.clip`, the presets in :mod:`minivlm.presets`.

The temperature τ is learned as ``logit_scale = log(1/τ)``, initialised at log(1/0.07) and
clamped so that the logits are scaled by at most 100 (§2.5). Lecture 1 compares it with fixed
temperatures: ``create_model("clip_tiny", temperature=0.1, learn_temperature=False)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from minivlm.nn.bert import TextConfig
from minivlm.nn.causal_text import CausalTextEncoder
from minivlm.nn.config import as_part
from minivlm.nn.convnet import ConvNet, ConvNetConfig
from minivlm.nn.vit import ViT, ViTConfig, clip_vision_config

Tensor = torch.Tensor

__all__ = [
    "CLIP",
    "CLIPConfig",
    "CLIPOutput",
    "build_zero_shot_classifier",
    "clip_loss",
    "clip_loss_parts",
    "clip_vision_config",
    "contrastive_logits",
    "zero_shot_predict",
]


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

_LOGIT_SCALE_INIT = math.log(1 / 0.07)  # τ = 0.07 at the start (§2.5)


@dataclass
class CLIPConfig:
    """Sizes and switches of CLIP (defaults: ViT-B/32, 151,277,313 parameters).

    vision: the image encoder (:func:`clip_vision_config`; a dict is merged into it), or a
        :class:`~minivlm.nn.convnet.ConvNetConfig` for a small convolutional tower (the
        stand-in for CLIP's ResNets, §2.4; preset ``clip_tiny_cnn``).
    text: the text encoder (``TextConfig.clip()``; a dict is merged into it).
    embed_dim: size E of the joint embedding space (the projections' output).
    logit_scale_init: initial log inverse temperature, log(1/0.07) as in §2.5.
    logit_scale_max: the clamp, log(100): logits are scaled by at most 100.
    learn_temperature: False keeps τ at its initial value (no gradient).
    temperature / eos_token_id: shortcuts consumed at init (then None, so there is one setting
        each): ``logit_scale_init = log(1 / temperature)`` (a different logit_scale_init
        raises); ``text.eos_token_id`` (None there: HF's legacy argmax pooling rule).
    """

    vision: ViTConfig | ConvNetConfig = field(default_factory=clip_vision_config)
    text: TextConfig = field(default_factory=TextConfig.clip)
    embed_dim: int = 512
    logit_scale_init: float = _LOGIT_SCALE_INIT
    logit_scale_max: float = math.log(100.0)
    learn_temperature: bool = True
    temperature: float | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        temperature, eos_token_id = self.temperature, self.eos_token_id
        self.temperature = self.eos_token_id = None  # consumed: one source of truth each
        self.vision = as_part("CLIPConfig", "vision", self.vision, clip_vision_config,
                              ViTConfig, ConvNetConfig)  # fmt: skip
        self.text = as_part("CLIPConfig", "text", self.text, TextConfig.clip, TextConfig)
        v = self.vision
        if isinstance(v, ViTConfig) and (
            not (v.class_token and v.global_pool == "token") or v.fc_norm or v.num_classes
        ):
            raise ValueError(
                "CLIPConfig.vision: CLIP's image feature is the final-normed CLS token; use "
                "class_token=True, global_pool='token', fc_norm=False, num_classes=0"
            )
        if not self.text.causal:
            raise ValueError("CLIPConfig.text: CLIP's text encoder is causal; use TextConfig.clip")
        if eos_token_id is not None:
            self.text = replace(self.text, eos_token_id=eos_token_id)
        if self.embed_dim < 1:
            raise ValueError(f"CLIPConfig.embed_dim must be >= 1, got {self.embed_dim}")
        if temperature is not None:
            if not temperature > 0:
                raise ValueError(f"CLIPConfig.temperature must be > 0, got {temperature}")
            if self.logit_scale_init not in (_LOGIT_SCALE_INIT, math.log(1.0 / temperature)):
                raise ValueError(
                    f"CLIPConfig: got temperature={temperature} and logit_scale_init="
                    f"{self.logit_scale_init}; give one (logit_scale_init = log(1/temperature))"
                )
            self.logit_scale_init = math.log(1.0 / temperature)
        if self.logit_scale_init > self.logit_scale_max + 1e-6:
            raise ValueError(
                f"CLIPConfig: logit_scale_init {self.logit_scale_init:.4f} (τ = "
                f"{math.exp(-self.logit_scale_init):.4g}) is above the clamp logit_scale_max "
                f"{self.logit_scale_max:.4f}; raise logit_scale_max too"
            )


@dataclass
class CLIPOutput:
    """What :meth:`CLIP.forward` returns.

    loss: symmetric contrastive loss (None when not computed); loss_i2t / loss_t2i its halves.
    logits_per_image: (B_img, B_txt) = exp(logit_scale) · cos(image_i, text_j).
    logits_per_text: (B_txt, B_img), the transpose.
    image_embeds: (B_img, E) L2-normalised; text_embeds: (B_txt, E) L2-normalised.
    logit_scale: the (clamped) log inverse temperature that scaled the logits.
    """

    loss: Tensor | None
    loss_i2t: Tensor | None
    loss_t2i: Tensor | None
    logits_per_image: Tensor
    logits_per_text: Tensor
    image_embeds: Tensor
    text_embeds: Tensor
    logit_scale: Tensor


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


class CLIP(nn.Module):
    """CLIP: an image encoder and a text encoder trained contrastively (§2.3-2.5).

    image (B, C, H, W) -> ViT -> CLS token after the final LayerNorm (B, d_i)
        -> ``visual_projection`` (no bias) -> (B, E)          ``encode_image``
    ids (B, T) -> causal transformer -> final LayerNorm at the first [EOS] (B, d_t)
        -> ``text_projection`` (no bias) -> (B, E)            ``encode_text``
    ``forward`` normalises both, computes the logits and the symmetric loss.
    """

    def __init__(self, config: CLIPConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config or CLIPConfig()
        if overrides:
            cfg = replace(cfg, **overrides)
        self.config = cfg
        # a ViT (the default) or a small CNN (ConvNetConfig), both with a width ``vision.dim``
        self.image_encoder = (
            ConvNet(cfg.vision) if isinstance(cfg.vision, ConvNetConfig) else ViT(cfg.vision)
        )
        self.text_encoder = CausalTextEncoder(cfg.text)
        self.visual_projection = nn.Linear(cfg.vision.dim, cfg.embed_dim, bias=False)  # W_i
        self.text_projection = nn.Linear(cfg.text.dim, cfg.embed_dim, bias=False)  # W_t
        self.logit_scale = nn.Parameter(
            torch.tensor(float(cfg.logit_scale_init)), requires_grad=cfg.learn_temperature
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """CLIP's initialisation (released code, ``initialize_parameters``), both towers.

        Width D, depth L: q/k/v ~ N(0, D^-1), the two residual-branch outputs (attention
        ``out_proj``, ``mlp.fc2``) ~ N(0, D^-1 / 2L), ``mlp.fc1`` ~ N(0, 1 / 2D), CLS token,
        image positions and the projections ~ N(0, D^-1). Unlike ViT's std-0.02 init, the
        CLS token then sees the patches from the first step. A convolutional image tower keeps
        PyTorch's default (fan-in) init.
        """
        vit = self.image_encoder if isinstance(self.image_encoder, ViT) else None
        for enc in (vit, self.text_encoder):
            if enc is None:
                continue
            D, L = enc.config.dim, enc.config.depth
            attn_std, out_std, fc_std = D**-0.5, D**-0.5 * (2 * L) ** -0.5, (2 * D) ** -0.5
            for blk in enc.blocks:
                for lin in (blk.attn.q_proj, blk.attn.k_proj, blk.attn.v_proj):
                    nn.init.normal_(lin.weight, std=attn_std)
                nn.init.normal_(blk.attn.out_proj.weight, std=out_std)
                nn.init.normal_(blk.mlp.fc1.weight, std=fc_std)
                nn.init.normal_(blk.mlp.fc2.weight, std=out_std)
        D = self.config.vision.dim
        if vit is not None:
            if vit.cls_token is not None:
                nn.init.normal_(vit.cls_token, std=D**-0.5)
            nn.init.normal_(vit.pos_embed, std=D**-0.5)
        nn.init.normal_(self.visual_projection.weight, std=D**-0.5)
        nn.init.normal_(self.text_projection.weight, std=self.config.text.dim**-0.5)
        self.logit_scale.fill_(self.config.logit_scale_init)

    # -- temperature ---------------------------------------------------------

    @property
    def temperature(self) -> float:
        """τ = 1 / exp(logit_scale), after the clamp."""
        return math.exp(-self.clamped_logit_scale().item())

    def clamped_logit_scale(self) -> Tensor:
        """logit_scale clamped at ``logit_scale_max`` (no gradient above the clamp)."""
        return self.logit_scale.clamp(max=self.config.logit_scale_max)

    @torch.no_grad()
    def on_after_step(self, step: int) -> None:
        """After each optimizer step (``minivlm.train`` calls it), clamp the stored parameter
        in place, as CLIP does."""
        if self.logit_scale.requires_grad:
            self.logit_scale.clamp_(max=self.config.logit_scale_max)

    # -- encoders ------------------------------------------------------------

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, E) projected, *unnormalised* image features."""
        if isinstance(self.image_encoder, ConvNet):
            return self.visual_projection(self.image_encoder(pixel_values))  # (B, D) -> (B, E)
        vit = self.image_encoder
        x = vit.embed(pixel_values)  # (B, 1+N, d_i): CLS + patches, positions, pre-norm
        for blk in vit.blocks:
            x = blk(x)
        # CLIP's ln_post on the CLS token only: the same as vit(pixel_values)[:, 0], which
        # normalises every token, without normalising the N patch tokens nobody uses
        pooled = vit.norm(x[:, 0])  # (B, d_i)
        return self.visual_projection(pooled)  # (B, E)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, T) ids (+ (B, T) 1/0 mask) -> (B, E) projected, *unnormalised* text features."""
        hidden = self.text_encoder(input_ids, attention_mask).last_hidden_state  # (B, T, d_t)
        pooled = self.text_encoder.pool(hidden, input_ids)  # (B, d_t) at the first [EOS]
        return self.text_projection(pooled)  # (B, E)

    # -- training forward ----------------------------------------------------

    def forward(
        self,
        pixel_values: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        return_loss: bool | None = None,
    ) -> CLIPOutput:
        """Images (B_img, C, H, W) and captions (B_txt, T) -> :class:`CLIPOutput`.

        ``return_loss``: None computes the loss when B_img == B_txt (row i matches caption
        i); True requires it; False skips it.
        """
        square = self._check_forward(pixel_values, input_ids, return_loss)
        # normalise in float32: logits are scaled by up to 100, bf16 rounding would show
        image_embeds = F.normalize(self.encode_image(pixel_values).float(), dim=-1)  # (Bi, E)
        text_embeds = F.normalize(self.encode_text(input_ids, attention_mask).float(), dim=-1)
        logit_scale = self.clamped_logit_scale()
        logits_per_image = contrastive_logits(image_embeds, text_embeds, logit_scale)  # (Bi, Bt)
        loss = loss_i2t = loss_t2i = None
        if return_loss or (return_loss is None and square):
            loss_i2t, loss_t2i = clip_loss_parts(logits_per_image)
            loss = (loss_i2t + loss_t2i) / 2
        return CLIPOutput(loss, loss_i2t, loss_t2i, logits_per_image, logits_per_image.t(),
                          image_embeds, text_embeds, logit_scale)  # fmt: skip

    def _check_forward(
        self, pixel_values: Tensor | None, input_ids: Tensor | None, return_loss: bool | None
    ) -> bool:
        """Both modalities given; matching pairs when a loss is asked for. Returns whether the
        batch is square (as many images as captions)."""
        if pixel_values is None or input_ids is None:
            raise ValueError(
                "CLIP.forward: expected both pixel_values (B, C, H, W) and input_ids (B, T); "
                "use encode_image / encode_text for one modality"
            )
        square = pixel_values.shape[0] == input_ids.shape[0]
        if return_loss and not square:
            raise ValueError(
                "CLIP.forward: return_loss=True needs as many images as captions (matching "
                f"pairs), got {pixel_values.shape[0]} images and {input_ids.shape[0]} captions"
            )
        return square

    # -- checkpoints (converters in minivlm.interop.clip) -------------------------

    @classmethod
    def from_hf(cls, model: nn.Module) -> CLIP:
        """Copy a ``transformers.CLIPModel``: ``encode_image`` / ``encode_text`` then equal HF's
        ``get_image_features`` / ``get_text_features`` and ``logit_scale`` is HF's."""
        from minivlm.interop.clip import clip_from_hf

        return clip_from_hf(cls, CLIPConfig, model)

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> CLIP:
        """Load a published checkpoint (e.g. ``"openai/clip-vit-base-patch32"``) through
        ``transformers.CLIPModel.from_pretrained`` and copy it (network needed once)."""
        from minivlm.interop.clip import clip_from_pretrained

        return clip_from_pretrained(cls, name_or_path, **kwargs)


# ---------------------------------------------------------------------------
# The contrastive objective (§2.3, Figure 3) as plain functions
# ---------------------------------------------------------------------------


def contrastive_logits(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor) -> Tensor:
    """exp(logit_scale) · image_embeds @ text_embedsᵀ -> (B_img, B_txt) ``logits_per_image``.

    image_embeds (B_img, E) and text_embeds (B_txt, E) must already be L2-normalised, so
    the product is a matrix of cosine similarities; exp(logit_scale) = 1/τ sharpens them.
    """
    if image_embeds.dim() != 2 or text_embeds.dim() != 2:
        raise ValueError(
            "contrastive_logits: expected image_embeds (B_img, E) and text_embeds (B_txt, E), "
            f"got {tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}"
        )
    if image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(
            f"contrastive_logits: embedding sizes differ: images {image_embeds.shape[1]}, "
            f"texts {text_embeds.shape[1]}"
        )
    return logit_scale.exp() * image_embeds @ text_embeds.t()  # (B_img, B_txt)


def clip_loss_parts(logits_per_image: Tensor) -> tuple[Tensor, Tensor]:
    """The two halves of CLIP's loss on a square (N, N) ``logits_per_image``.

    Pair i is the positive for row i and column i (diagonal targets).
    loss_i2t: cross-entropy of each image (row) over the N captions;
    loss_t2i: cross-entropy of each caption (column) over the N images.
    """
    if logits_per_image.dim() != 2 or logits_per_image.shape[0] != logits_per_image.shape[1]:
        raise ValueError(
            "clip_loss: expected square logits_per_image (N, N) of N matching pairs, got "
            f"{tuple(logits_per_image.shape)}"
        )
    logits = logits_per_image.float()  # cross-entropy in float32 even under bf16 autocast
    targets = torch.arange(logits.shape[0], device=logits.device)  # (N,) pair i <-> pair i
    loss_i2t = F.cross_entropy(logits, targets)  # softmax over each row: image -> captions
    loss_t2i = F.cross_entropy(logits.t(), targets)  # over each column: caption -> images
    return loss_i2t, loss_t2i


def clip_loss(logits_per_image: Tensor) -> Tensor:
    """Symmetric InfoNCE (§2.3): mean of the image->text and text->image cross-entropies."""
    loss_i2t, loss_t2i = clip_loss_parts(logits_per_image)
    return (loss_i2t + loss_t2i) / 2


# ---------------------------------------------------------------------------
# Zero-shot classification (§3.1.2) with prompt ensembling (§3.1.4)
# ---------------------------------------------------------------------------

Template = str | Callable[[str], str]


def _fill(template: Template, classname: str) -> str:
    if callable(template):
        return template(classname)
    if "{}" not in template:
        raise ValueError(
            f"build_zero_shot_classifier: template {template!r} has no '{{}}' placeholder for "
            "the class name (e.g. 'a photo of a {}.')"
        )
    return template.format(classname)


@torch.no_grad()
def build_zero_shot_classifier(
    model: CLIP,
    tokenizer: Any,
    classnames: Sequence[str],
    templates: Sequence[Template] | Template,
    batch_size: int = 256,
) -> Tensor:
    """Turn class names into a (C, E) linear classifier of unit-norm class embeddings.

    For each class every template ("a photo of a {}.") is filled with its name, encoded,
    L2-normalised; the P prompt embeddings are averaged and renormalised -- CLIP's prompt
    ensembling (§3.1.4). ``tokenizer(texts, add_bos=True, add_eos=True)`` must return
    ``input_ids`` and ``attention_mask`` (B, T), right-padded (``minivlm.data.tokenizer``).
    """
    if isinstance(templates, str) or callable(templates):
        templates = [templates]
    if isinstance(classnames, str):
        raise TypeError("build_zero_shot_classifier: expected a list of class names, got a str")
    if not classnames or not templates:
        raise ValueError("build_zero_shot_classifier: expected at least one class and template")
    texts = [_fill(t, c) for c in classnames for t in templates]  # (C*P,) class-major
    device = model.logit_scale.device
    was_training = model.training
    model.eval()
    try:
        embs = []
        for s in range(0, len(texts), batch_size):
            batch = tokenizer(texts[s : s + batch_size], add_bos=True, add_eos=True,
                              max_length=model.config.text.max_len)  # fmt: skip
            ids = torch.as_tensor(batch["input_ids"], device=device)
            mask = batch.get("attention_mask")
            mask = None if mask is None else torch.as_tensor(mask, device=device)
            embs.append(F.normalize(model.encode_text(ids, mask).float(), dim=-1))  # (b, E)
    finally:
        model.train(was_training)
    emb = torch.cat(embs).reshape(len(classnames), len(templates), -1)  # (C, P, E)
    return F.normalize(emb.mean(dim=1), dim=-1)  # (C, E)


@torch.no_grad()
def zero_shot_predict(model: CLIP, pixel_values: Tensor, classifier: Tensor) -> tuple[Tensor, ...]:
    """Classify images with a :func:`build_zero_shot_classifier` classifier (C, E).

    Returns ``(logits (B, C), predictions (B,))``: logits = exp(logit_scale) · cos(image, class).
    """
    if classifier.dim() != 2 or classifier.shape[1] != model.config.embed_dim:
        raise ValueError(
            f"zero_shot_predict: expected classifier of shape (C, {model.config.embed_dim}), "
            f"got {tuple(classifier.shape)}"
        )
    was_training = model.training
    model.eval()
    try:
        device = model.logit_scale.device
        img = F.normalize(model.encode_image(pixel_values.to(device)).float(), dim=-1)  # (B, E)
        logits = contrastive_logits(img, classifier.to(device).float(), model.clamped_logit_scale())
    finally:
        model.train(was_training)
    return logits, logits.argmax(dim=-1)
