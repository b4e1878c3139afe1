"""LLaVA (Liu et al. 2023, "Visual Instruction Tuning"; LLaVA-1.5: Liu et al. 2024, "Improved
Baselines with Visual Instruction Tuning").

A frozen CLIP image encoder, a small projector and a decoder-only language model. The image
becomes a row of "visual words" that sit in the prompt where ``<image>`` was (§4.1, Figure 1)::

    H_v = ViT_{layer}(X_v)[:, 1:]          # (B, N, d_v)  penultimate layer, CLS dropped (§5.2)
    E_v = W(H_v)                           # (B, N, D)    linear (LLaVA) or MLP (LLaVA-1.5 §3.2)
    E   = E_text[ids], with the N <image> slots of each row replaced by E_v
    logits = LM(inputs_embeds=E)           # (B, T, V)    Vicuna / Llama, causal

Training has two stages (§4.2): (1) feature alignment, where only the projector ``W`` learns
(image-caption pairs turned into one-turn chats), and (2) end-to-end instruction tuning, where
projector and language model learn and the vision tower stays frozen
(:meth:`LLaVA.freeze_for_stage`). The loss is next-token cross-entropy on the assistant's
answers only (§4.2, Table 2: only the assistant's tokens enter the loss).

Read top to bottom: :class:`LlavaConfig`, the projector (:func:`build_projector`), splicing image
features into the text (:func:`merge_image_features`), the model :class:`LLaVA` with
``generate`` and ``from_hf``. The chat template (:class:`ChatTemplate`, :class:`LlavaCollator`)
and prompt preprocessing (:func:`~minivlm.data.chat.expand_image_tokens`) live in
:mod:`minivlm.data.chat` (the first two re-exported here); the presets ``llava_tiny`` /
``llava_1_5_7b`` are in :mod:`minivlm.presets`.

As with current Hugging Face processors, ``input_ids`` already hold one ``<image>`` token per
image feature (``N = num_image_tokens``); the model swaps them for the projected features.
Padding is on the right.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from minivlm.data.chat import (
    IMAGE_TOKEN_ID,
    SHAPES_CHAT,
    VICUNA_V1,
    ChatTemplate,
    LlavaCollator,
)
from minivlm.nn.blocks import MLP, get_activation
from minivlm.nn.config import as_part
from minivlm.nn.lm import DecoderLM, LMConfig
from minivlm.nn.parts import config_around, needs_grad
from minivlm.nn.vit import ViT, ViTConfig, clip_vision_config
from minivlm.utils import raise_first

Tensor = torch.Tensor

__all__ = [
    "IMAGE_TOKEN_ID",
    "SHAPES_CHAT",
    "VICUNA_V1",
    "LLaVA",
    "ChatTemplate",
    "LlavaCollator",
    "LlavaConfig",
    "LlavaOutput",
    "build_projector",
    "merge_image_features",
]

PROJECTOR_TYPES = ("linear", "mlp2x_gelu")


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


def _tiny_vision() -> ViTConfig:
    """clip_tiny's image encoder: 64 px shapes-world images, 8x8 patches of 8 px."""
    return clip_vision_config(image_size=64, patch_size=8, dim=128, depth=3, num_heads=4,
                              mlp_hidden=256)  # fmt: skip


@dataclass
class LlavaConfig:
    """Sizes and switches of LLaVA (defaults: ``llava_tiny``'s sizes, vocabulary 256).

    vision: the CLIP image encoder (:func:`~minivlm.nn.vit.clip_vision_config`; a dict
        is merged into it). text: the language model (:class:`~minivlm.nn.lm.LMConfig`; a dict
        is merged into the ``lm_tiny`` defaults).
    projector_type: "linear" (LLaVA, §4.1) or "mlp2x_gelu" (LLaVA-1.5, §3.2: Linear-GELU-Linear).
    projector_act: the MLP's activation (HF's ``projector_hidden_act``), default exact GELU.
    vision_feature_layer: which ViT layer feeds the projector, indexing the depth+1 hidden
        states (0 = embeddings, -1 = last block, -2 = penultimate: LLaVA's choice, 0.96
        points better than the last layer on ScienceQA, §5.2); a list concatenates several
        layers along the feature axis.
    vision_feature_select_strategy: "default" drops the CLS token (N = patches), "full" keeps it.
    image_token_id: the ``<image>`` placeholder id in ``input_ids`` (7 in minivlm.data).
    """

    vision: ViTConfig = field(default_factory=_tiny_vision)
    text: LMConfig = field(default_factory=LMConfig)
    projector_type: str = "mlp2x_gelu"
    projector_act: str = "gelu"
    projector_bias: bool = True
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: str = "default"
    image_token_id: int = IMAGE_TOKEN_ID

    def __post_init__(self) -> None:
        self.vision = as_part("LlavaConfig", "vision", self.vision, clip_vision_config, ViTConfig)
        self.text = as_part("LlavaConfig", "text", self.text, LMConfig)
        self._check()

    def _check(self) -> None:
        """A clear error for parts of the wrong type or values out of range."""
        get_activation(self.projector_act)  # a clear error for an unknown name
        n, strategy = self.vision.depth + 1, self.vision_feature_select_strategy
        checks = [
            (self.projector_type in PROJECTOR_TYPES, f".projector_type: expected one of "
             f"{PROJECTOR_TYPES}, got {self.projector_type!r}"),
            (strategy in ("default", "full"), ".vision_feature_select_strategy: expected "
             f"'default' (drop CLS) or 'full', got {strategy!r}"),
            (strategy != "default" or self.vision.class_token, ": select strategy 'default' drops "
             "the CLS token, but the vision config has class_token=False; use 'full'"),
            (all(isinstance(v, int) and -n <= v < n for v in self.feature_layers_raw),
             f".vision_feature_layer: expected ints in [{-n}, {n - 1}] (the {n} hidden states of "
             f"a depth-{n - 1} ViT), got {self.vision_feature_layer!r}"),
            (0 <= self.image_token_id < self.text.vocab_size, f".image_token_id="
             f"{self.image_token_id} is outside the language model's vocabulary "
             f"[0, {self.text.vocab_size})"),
        ]  # fmt: skip
        raise_first("LlavaConfig", checks)

    @property
    def feature_layers_raw(self) -> list[int]:
        v = self.vision_feature_layer
        return list(v) if isinstance(v, (list, tuple)) else [v]

    @property
    def feature_layers(self) -> list[int]:
        """The vision feature layers as non-negative indices into the depth+1 hidden states."""
        n = self.vision.depth + 1
        return [layer % n for layer in self.feature_layers_raw]

    @property
    def num_image_tokens(self) -> int:
        """N: image features (= ``<image>`` tokens) per image at the configured image size."""
        drop_cls = self.vision_feature_select_strategy == "default"
        return self.vision.num_patches + self.vision.num_prefix_tokens * (not drop_cls)

    @property
    def projector_in_dim(self) -> int:
        return self.vision.dim * len(self.feature_layers_raw)


@dataclass
class LlavaOutput:
    """What :meth:`LLaVA.forward` returns.

    loss: next-token cross-entropy over labels != -100 (when ``labels`` are given).
    logits: (B, T, V). image_features: (B_img, N, D) projected image features (or None).
    hidden_states: (B, T, D) after the language model's final norm.
    """

    loss: Tensor | None
    logits: Tensor
    image_features: Tensor | None = None
    hidden_states: Tensor | None = None


# ---------------------------------------------------------------------------
# Projector
# ---------------------------------------------------------------------------


def build_projector(
    kind: str, in_dim: int, out_dim: int, act: str = "gelu", bias: bool = True
) -> nn.Module:
    """The vision-language connector W: (..., d_v) -> (..., D).

    "linear": one ``nn.Linear`` (LLaVA, §4.1). "mlp2x_gelu": ``fc1`` Linear(d_v, D), GELU,
    ``fc2`` Linear(D, D) (LLaVA-1.5, §3.2). For CLIP ViT-L (1024) into Vicuna-7B (4096) they
    have 4,198,400 and 20,979,712 parameters.
    """
    if kind == "linear":
        return nn.Linear(in_dim, out_dim, bias=bias)
    if kind == "mlp2x_gelu":
        return MLP(in_dim, out_dim, act=act, bias=bias, out_dim=out_dim)
    raise ValueError(f"build_projector: expected kind in {PROJECTOR_TYPES}, got {kind!r}")


# ---------------------------------------------------------------------------
# Image tokens in the text
# ---------------------------------------------------------------------------


def merge_image_features(
    inputs_embeds: Tensor,
    input_ids: Tensor,
    image_features: Tensor,
    image_token_id: int = IMAGE_TOKEN_ID,
) -> Tensor:
    """Put image features in the ``<image>`` slots of the token embeddings.

    inputs_embeds (B, T, D) token embeddings; input_ids (B, T) with ``image_token_id`` at the
    slots; image_features (B_img, N, D). Images fill the slots in reading order (row by row,
    left to right), N slots per image, as Hugging Face's ``masked_scatter`` does: usually
    B_img == B and each row holds exactly N slots; a row may also hold k*N slots for k images.
    Returns new embeddings (B, T, D); a wrong number of slots raises ValueError naming the row.
    """
    if input_ids.shape != inputs_embeds.shape[:2]:
        raise ValueError(
            f"merge_image_features: input_ids {tuple(input_ids.shape)} and "
            f"inputs_embeds {tuple(inputs_embeds.shape)} disagree on (B, T)"
        )
    if image_features.dim() != 3 or image_features.shape[-1] != inputs_embeds.shape[-1]:
        raise ValueError(
            f"merge_image_features: expected image_features of shape (B_img, N, "
            f"{inputs_embeds.shape[-1]}), got {tuple(image_features.shape)}"
        )
    slots = input_ids == image_token_id  # (B, T)
    per_row = slots.sum(dim=1).tolist()  # image tokens in each row
    n_img, N = image_features.shape[:2]
    one_each = n_img == input_ids.shape[0]  # the common case: one image per row
    total_ok = sum(per_row) == n_img * N
    for r, got in enumerate(per_row):
        # a row holds whole images; with one image per row, name the row whose count is off
        if got % N or (one_each and not total_ok and got != N):
            want = f"{N}" if one_each else f"a multiple of {N}"
            raise ValueError(
                f"merge_image_features: batch row {r}: expected {want} image tokens (id "
                f"{image_token_id}, one per image feature), got {got}; build the prompt with "
                f"num_image_tokens={N} or minivlm.data.chat.expand_image_tokens(...)"
            )
    if not total_ok:
        raise ValueError(
            f"merge_image_features: expected {n_img} images x {N} = {n_img * N} image tokens "
            f"in the batch, got {sum(per_row)} (per row: {per_row})"
        )
    feats = image_features.to(inputs_embeds.dtype).reshape(-1, image_features.shape[-1])
    out = inputs_embeds.clone()
    out[slots] = feats  # boolean indexing visits the slots in row-major order, like masked_scatter
    return out


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


class LLaVA(nn.Module):
    """LLaVA: CLIP ViT -> projector -> image features spliced into a Llama-style LM (§4.1).

    Submodules: ``vision_tower`` (:class:`~minivlm.nn.vit.ViT`), ``projector`` (Linear or
    MLP ``fc1``/``fc2``) and ``lm`` (:class:`~minivlm.nn.lm.DecoderLM`).

    LLaVA starts from a trained CLIP ViT and a trained LM (§4.1): pass them as
    ``vision_encoder=`` / ``language_model=`` and they are used as they are (not copied), and
    only the projector is new. Without ``config`` the sizes are taken from those modules
    (``LLaVA(vision_encoder=vit, language_model=lm, projector_type="linear")``); with a
    ``config`` its ``vision`` / ``text`` must equal the modules' configs, else ValueError
    names the fields that differ (width, depth, vocabulary, ...).
    """

    def __init__(
        self,
        config: LlavaConfig | None = None,
        *,
        vision_encoder: ViT | None = None,
        language_model: DecoderLM | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        cfg = config_around("LLaVA", LlavaConfig, config, overrides, vision_encoder, language_model)
        self.config = cfg
        self.vision_tower = vision_encoder if vision_encoder is not None else ViT(cfg.vision)
        self.projector = build_projector(
            cfg.projector_type,
            cfg.projector_in_dim,
            cfg.text.dim,
            cfg.projector_act,
            cfg.projector_bias,
        )
        self.lm = language_model if language_model is not None else DecoderLM(cfg.text)

    @property
    def num_image_tokens(self) -> int:
        """N: image tokens per image (= features after the select strategy)."""
        return self.config.num_image_tokens

    # -- images ---------------------------------------------------------------

    def vision_features(self, pixel_values: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, d_v * layers): the chosen ViT layer(s), CLS dropped or kept.

        Only the blocks up to the deepest chosen layer run (the last block's output is not
        needed for the default penultimate layer). Without any trainable vision parameter and
        pixels that need no gradient, the tower runs under ``torch.no_grad``.
        """
        vit, cfg = self.vision_tower, self.config
        layers = cfg.feature_layers
        with torch.set_grad_enabled(needs_grad(vit, pixel_values)):
            x = vit.embed(pixel_values)  # (B, P+N, d_v), input of block 0 = hidden state 0
            hidden = {0: x}
            for i, blk in enumerate(vit.blocks[: max(layers)], start=1):
                x = blk(x)
                hidden[i] = x
            feats = [hidden[layer] for layer in layers]  # each (B, P+N, d_v)
            if cfg.vision_feature_select_strategy == "default":
                feats = [f[:, vit.num_prefix_tokens :] for f in feats]  # drop CLS: (B, N, d_v)
        return torch.cat(feats, dim=-1)

    def encode_images(self, pixel_values: Tensor) -> Tensor:
        """(B, C, H, W) -> projected image features (B, N, D) in the LM's embedding space."""
        return self.projector(self.vision_features(pixel_values))  # (B, N, D)

    def embed_inputs(
        self, input_ids: Tensor, pixel_values: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Token embeddings (B, T, D) with image features in the ``<image>`` slots.

        Returns ``(inputs_embeds, image_features or None)``.
        """
        embeds = self.lm.embed(input_ids)  # (B, T, D), checks dtype and vocabulary
        image_id = self.config.image_token_id
        if pixel_values is None:
            n = int((input_ids == image_id).sum())
            if n:
                raise ValueError(
                    f"LLaVA: input_ids hold {n} image tokens (id {image_id}) but "
                    "no pixel_values were given"
                )
            return embeds, None
        feats = self.encode_images(pixel_values)  # (B_img, N, D)
        return merge_image_features(embeds, input_ids, feats, image_id), feats

    # -- forward --------------------------------------------------------------

    def forward(
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> LlavaOutput:
        """input_ids (B, T) with N ``<image>`` tokens per image, pixel_values (B_img, C, H, W),
        attention_mask (B, T) right-padded, labels (B, T) with -100 where no loss (shifted
        inside).
        """
        embeds, feats = self.embed_inputs(input_ids, pixel_values)
        out = self.lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)
        return LlavaOutput(
            loss=out.loss, logits=out.logits, image_features=feats, hidden_states=out.hidden_states
        )

    # -- two-stage training (§4.2) ---------------------------------------------

    def freeze_for_stage(self, stage: int) -> LLaVA:
        """Stage 1 (feature alignment): only the projector learns. Stage 2 (instruction
        tuning): projector and language model learn. The vision tower is frozen in both."""
        if stage not in (1, 2):
            raise ValueError(f"LLaVA.freeze_for_stage: expected stage 1 or 2, got {stage!r}")
        self.vision_tower.requires_grad_(False)
        self.projector.requires_grad_(True)
        self.lm.requires_grad_(stage == 2)
        return self

    def trainable_parameters(self) -> dict[str, int]:
        """Trainable parameter counts per part: vision_tower, projector, lm."""
        return {
            name: sum(p.numel() for p in getattr(self, name).parameters() if p.requires_grad)
            for name in ("vision_tower", "projector", "lm")
        }

    # -- generation -----------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        max_new_tokens: int = 20,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        attention_mask: Tensor | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Answer a prompt; returns only the new tokens, LongTensor (B, T_new).

        The prompt (usually ending with "ASSISTANT:") is embedded with its image features and
        continued by :meth:`DecoderLM.generate` with a KV cache: greedy at ``temperature=0``,
        else temperature / top-k / top-p sampling. Right-padded prompts need
        ``attention_mask``; rows stop at ``eos_id`` (default the LM's).
        """
        embeds, _ = self.embed_inputs(input_ids, pixel_values)
        return self.lm.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_id=eos_id,
            generator=generator,
        )

    # -- checkpoints (converters in minivlm.interop.llava) ------------------------

    @classmethod
    def from_hf(cls, model: nn.Module) -> LLaVA:
        """Copy a ``transformers.LlavaForConditionalGeneration`` (CLIP vision tower, Llama LM):
        ``model(input_ids, pixel_values, attention_mask).logits`` then equal HF's."""
        from minivlm.interop.llava import llava_from_hf

        return llava_from_hf(cls, LlavaConfig, model)

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> LLaVA:
        """Load e.g. ``"llava-hf/llava-1.5-7b-hf"`` with ``transformers`` and copy it (needs the
        network the first time, or a local folder written by ``save_pretrained``)."""
        from minivlm.interop.llava import llava_from_pretrained

        return llava_from_pretrained(cls, name_or_path, **kwargs)
