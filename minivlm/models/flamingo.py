"""Flamingo (Alayrac et al. 2022, "Flamingo: a Visual Language Model for Few-Shot Learning").

A frozen vision encoder and a frozen language model, bridged by two new, trainable parts (§2.1,
Figure 3)::

    V_n   = ViT(image_n)                       # (B, N_img, S, d_v)  all tokens, no final norm
    R_n   = PerceiverResampler(V_n)            # (B, N_img, L, d_v)  L learned latents (§2.1)
    x_0   = E[input_ids]                       # (B, T, D)
    before every `cross_layer_interval`-th frozen LM block (§2.2, Figure 4):
    x    += tanh(α_xattn) · XAttn(RMSNorm(x), R, mask)     # text queries, image keys/values
    x    += tanh(α_dense) · FFW(RMSNorm(x))
    x     = FrozenBlock(x)                                  # causal self-attention + MLP
    logits = W_out · RMSNorm(x)                # (B, T, V + V_extra)

The gates α start at 0 (§2.2), so at initialisation the model *is* the language model, to
the bit. In an interleaved sequence (§2.3, Figure 7) each text token cross-attends only to the
image that most recently precedes it (:func:`image_attention_mask`); earlier images reach it
only through the LM's own self-attention. Trainable: the resampler, the gated layers and
``additional_vocab_size`` new token rows (IDEFICS's ``<image>``-style tokens); the vision
encoder and the LM stay frozen (:meth:`Flamingo.freeze_pretrained`).

Read in order: :class:`FlamingoConfig`, :func:`image_attention_mask`,
:class:`PerceiverResampler`, :class:`GatedCrossAttentionBlock`, :class:`Flamingo`, presets.
Checkpoint conversion (``transformers.IdeficsForVisionText2Text``, the open reproduction)
lives in :mod:`minivlm.interop.flamingo`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

from minivlm.nn.attention import MultiHeadAttention
from minivlm.nn.blocks import MLP, RMSNorm, SwiGLU
from minivlm.nn.lm import DecoderLM, LMConfig, lm_loss
from minivlm.nn.parts import config_around, needs_grad
from minivlm.nn.vit import ViT, ViTConfig

Tensor = torch.Tensor

__all__ = ["Flamingo", "FlamingoConfig", "FlamingoOutput", "GatedCrossAttentionBlock",
           "PerceiverResampler", "image_attention_mask"]

IMAGE_TOKEN_ID = 7  # <image> in minivlm.data.tokenizer


def _tiny_vision() -> ViTConfig:
    """shapes_clip's image encoder (zoo): 64 px, 16 px patches, CLIP-style pre-norm ViT."""
    return ViTConfig(image_size=64, patch_size=16, dim=128, depth=3, num_heads=4, mlp_hidden=256,
                     act="quick_gelu", eps=1e-5, pre_norm=True, patch_bias=False)


@dataclass
class FlamingoConfig:
    """Sizes and switches (defaults: ``flamingo_tiny``, on the zoo's shapes-world parts).

    vision / text: the frozen encoder (:class:`ViTConfig`; a dict is merged into shapes_clip's)
        and LM (:class:`LMConfig`; a dict overrides its defaults, lm_tiny's sizes).
    cross_layer_interval: a gated block before LM blocks 0, k, 2k, ... (Flamingo-80B: every
        7th; §2.2 and Appendix B.1.1: Flamingo-3B every block, 9B every 4th).
    use_resampler: the Perceiver Resampler (§2.1); without it the text reads all ViT tokens.
    resampler_latents / depth / heads / head_dim / mlp_hidden: its sizes (Flamingo: 64 latents,
        6 layers, Appendix B.1.1); mlp_hidden defaults to 4·d_v.
    xattn_mlp_hidden: the gated FFW's SwiGLU width (default: the LM's).
    alpha_type: "float" (one gate per sub-layer, the paper) or "vector" (one per channel).
    additional_vocab_size: new trainable token rows after the LM's vocabulary.
    """

    vision: ViTConfig = field(default_factory=_tiny_vision)
    text: LMConfig = field(default_factory=LMConfig)  # lm_tiny's sizes
    cross_layer_interval: int = 1
    use_resampler: bool = True
    resampler_latents: int = 8
    resampler_depth: int = 1
    resampler_heads: int = 4
    resampler_head_dim: int = 32
    resampler_mlp_hidden: int | None = None
    resampler_eps: float = 1e-5
    xattn_mlp_hidden: int | None = None
    alpha_type: str = "float"
    alpha_init: float = 0.0
    additional_vocab_size: int = 0
    image_token_id: int = IMAGE_TOKEN_ID

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = ViTConfig(**{**asdict(_tiny_vision()), **self.vision})
        if isinstance(self.text, dict):
            self.text = LMConfig(**self.text)
        if not isinstance(self.vision, ViTConfig) or not isinstance(self.text, LMConfig):
            raise TypeError("FlamingoConfig: vision must be a ViTConfig (or dict) and text an "
                            f"LMConfig (or dict), got {type(self.vision).__name__}, "
                            f"{type(self.text).__name__}")
        k = self.cross_layer_interval
        if not isinstance(k, int) or not 1 <= k <= self.text.depth:
            raise ValueError(f"FlamingoConfig.cross_layer_interval: expected an int in "
                             f"[1, {self.text.depth}] (the LM's depth), got {k!r}")
        if self.alpha_type not in ("float", "vector"):
            raise ValueError(f"FlamingoConfig.alpha_type: expected 'float' or 'vector', "
                             f"got {self.alpha_type!r}")
        if self.additional_vocab_size < 0:
            raise ValueError("FlamingoConfig.additional_vocab_size must be >= 0, "
                             f"got {self.additional_vocab_size}")
        if not 0 <= self.image_token_id < self.vocab_size:
            raise ValueError(f"FlamingoConfig.image_token_id={self.image_token_id} is outside "
                             f"the vocabulary [0, {self.vocab_size})")

    @property
    def vocab_size(self) -> int:
        """The LM's vocabulary plus the new trainable rows."""
        return self.text.vocab_size + self.additional_vocab_size

    @property
    def num_cross_layers(self) -> int:
        return self.text.depth // self.cross_layer_interval


@dataclass
class FlamingoOutput:
    """loss (labels given): next-token cross-entropy; logits (B, T, V + V_extra);
    image_features (B, N_img, L, d_v) what the text cross-attends to; xattn_weights: per gated
    block (B, H, T, N_img·L) when ``need_weights``."""

    loss: Tensor | None
    logits: Tensor
    image_features: Tensor | None = None
    xattn_weights: list[Tensor] | None = None


# ---------------------------------------------------------------------------- the mask (§2.3)


def image_attention_mask(input_ids: Tensor, image_token_id: int, num_images: int | None = None,
                         mode: str = "previous") -> Tensor:
    """Which image each text token may cross-attend to: boolean (B, T, N_img).

    Image n is the n-th ``image_token_id`` of the row. ``mode="previous"`` (Flamingo, §2.3):
    token t sees only the most recent image at or before t, none before the first image.
    ``mode="all"`` (the ablation): token t sees every image at or before t.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"image_attention_mask: expected input_ids (B, T), "
                         f"got {tuple(input_ids.shape)}")
    if mode not in ("previous", "all"):
        raise ValueError(f"image_attention_mask: mode must be 'previous' or 'all', got {mode!r}")
    count = (input_ids == image_token_id).long().cumsum(dim=1)  # (B, T) images seen so far
    n_max = int(count[:, -1].max()) if input_ids.numel() else 0
    num_images = n_max if num_images is None else num_images
    if n_max > num_images:
        raise ValueError(f"image_attention_mask: a row holds {n_max} image tokens "
                         f"(id {image_token_id}) but num_images={num_images}")
    n = torch.arange(num_images, device=input_ids.device)  # (N_img,)
    if mode == "previous":
        return (count - 1)[..., None] == n  # (B, T, N_img): exactly the latest image
    return n < count[..., None]  # (B, T, N_img): every image so far


# ---------------------------------------------------------------------------- the resampler


class PerceiverResampler(nn.Module):
    """L learned latents read a variable number of visual tokens (§2.1, Figure 5).

    Each layer: the latents query the concatenation [x; latents] (so they also attend to each
    other), then a ReLU MLP; both residual. Output: LayerNorm(latents), (B, L, D).
    """

    def __init__(self, dim: int, num_latents: int, depth: int, num_heads: int, head_dim: int,
                 mlp_hidden: int | None = None, eps: float = 1e-5) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))  # (L, D), as IDEFICS
        self.layers = nn.ModuleList()
        for _ in range(depth):
            layer = nn.Module()
            layer.norm_x = nn.LayerNorm(dim, eps=eps)
            layer.norm_latents = nn.LayerNorm(dim, eps=eps)
            layer.attn = MultiHeadAttention(dim, num_heads, head_dim=head_dim, qkv_bias=False,
                                            out_bias=False)
            layer.norm_mlp = nn.LayerNorm(dim, eps=eps)
            layer.mlp = MLP(dim, mlp_hidden or 4 * dim, act="relu", bias=False)
            self.layers.append(layer)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.last_attn: list[Tensor] = []

    def forward(self, x: Tensor, need_weights: bool = False) -> Tensor:
        """x: (B, S, D) visual tokens -> (B, L, D). With ``need_weights`` the attention of the
        latents over [x; latents], (B, H, L, S+L) per layer, is kept in ``last_attn``."""
        lat = self.latents.expand(x.shape[0], -1, -1)  # (B, L, D)
        self.last_attn = []
        for layer in self.layers:
            q = layer.norm_latents(lat)  # (B, L, D)
            kv = torch.cat([layer.norm_x(x), q], dim=1)  # (B, S+L, D)
            a, w = layer.attn(q, kv, need_weights=need_weights)
            if need_weights:
                self.last_attn.append(w)  # (B, H, L, S+L)
            lat = lat + a
            lat = lat + layer.mlp(layer.norm_mlp(lat))
        return self.norm(lat)


# ---------------------------------------------------------------------------- gated block (§2.2)


class GatedCrossAttentionBlock(nn.Module):
    """GATED XATTN-DENSE (§2.2, Figure 4): tanh-gated cross-attention, then a tanh-gated FFW.

        x = x + tanh(α_xattn) · XAttn(RMSNorm(x), images)    (zero for tokens that see no image)
        x = x + tanh(α_dense) · FFW(RMSNorm(x))

    α starts at ``alpha_init`` (0: the block is the identity, the LM is untouched).
    """

    def __init__(self, dim: int, num_heads: int, kv_dim: int, mlp_hidden: int, eps: float = 1e-6,
                 alpha_type: str = "float", alpha_init: float = 0.0) -> None:
        super().__init__()
        shape = (1,) if alpha_type == "float" else (1, 1, dim)
        self.norm_xattn = RMSNorm(dim, eps=eps)
        self.xattn = MultiHeadAttention(dim, num_heads, kv_dim=kv_dim, qkv_bias=False,
                                        out_bias=False)
        self.norm_dense = RMSNorm(dim, eps=eps)
        self.mlp = SwiGLU(dim, mlp_hidden)
        self.alpha_xattn = nn.Parameter(torch.full(shape, float(alpha_init)))
        self.alpha_dense = nn.Parameter(torch.full(shape, float(alpha_init)))
        self.last_attn: Tensor | None = None

    def forward(self, x: Tensor, images: Tensor, mask: Tensor, need_weights: bool = False
                ) -> Tensor:
        """x (B, T, D); images (B, M, kv_dim) all images' tokens in a row; mask (B, T, M) bool,
        True where token t may attend to image token m -> (B, T, D)."""
        a, self.last_attn = self.xattn(self.norm_xattn(x), images, mask=mask[:, None],
                                       need_weights=need_weights)  # (B, T, D)
        a = a.masked_fill(~mask.any(dim=-1)[..., None], 0.0)  # tokens that see no image
        x = x + torch.tanh(self.alpha_xattn) * a
        return x + torch.tanh(self.alpha_dense) * self.mlp(self.norm_dense(x))


# ---------------------------------------------------------------------------- the model


class Flamingo(nn.Module):
    """Frozen ViT + Perceiver Resampler + gated cross-attention into a frozen LM (§2).

    Submodules: ``vision_tower`` (:class:`ViT`), ``resampler`` (or None), ``xattn``
    (one :class:`GatedCrossAttentionBlock` per ``cross_layer_interval`` LM blocks), ``lm``
    (:class:`DecoderLM`), ``extra_embed`` / ``extra_head`` (new vocabulary rows, or None).
    Pass trained parts as ``vision_encoder=`` / ``language_model=`` (used as they are, not
    copied); without ``config`` the sizes come from them.
    """

    def __init__(self, config: FlamingoConfig | None = None, *, vision_encoder: ViT | None = None,
                 language_model: DecoderLM | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config_around("Flamingo", FlamingoConfig, config, overrides, vision_encoder,
                            language_model)  # fmt: skip
        self.config = cfg
        self.vision_tower = vision_encoder if vision_encoder is not None else ViT(cfg.vision)
        dv, t = cfg.vision.dim, cfg.text
        self.resampler = (PerceiverResampler(dv, cfg.resampler_latents, cfg.resampler_depth,
                                             cfg.resampler_heads, cfg.resampler_head_dim,
                                             cfg.resampler_mlp_hidden, cfg.resampler_eps)
                          if cfg.use_resampler else None)
        self.xattn = nn.ModuleList(
            GatedCrossAttentionBlock(t.dim, t.num_heads, dv, cfg.xattn_mlp_hidden or t.mlp_hidden,
                                     t.eps, cfg.alpha_type, cfg.alpha_init)
            for _ in range(cfg.num_cross_layers))
        for blk in self.xattn:  # the LM's initialisation for the new projections
            for m in blk.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=t.init_std)
        self.lm = language_model if language_model is not None else DecoderLM(t)
        extra = cfg.additional_vocab_size
        self.extra_embed = nn.Embedding(extra, t.dim) if extra else None
        self.extra_head = nn.Linear(t.dim, extra, bias=False) if extra else None

    def freeze_pretrained(self) -> Flamingo:
        """Freeze the vision encoder and the LM (§2: only the new parts learn)."""
        self.vision_tower.requires_grad_(False)
        self.lm.requires_grad_(False)
        return self

    def gates(self) -> Tensor:
        """(num_cross_layers, 2): mean tanh(α_xattn), tanh(α_dense) of every gated block."""
        return torch.stack([torch.stack([torch.tanh(b.alpha_xattn).mean(),
                                         torch.tanh(b.alpha_dense).mean()]) for b in self.xattn])

    # -- images ---------------------------------------------------------------

    def vision_tokens(self, pixel_values: Tensor) -> Tensor:
        """(B, N_img, C, H, W) -> ViT tokens of the last block, CLS included, no final norm:
        (B, N_img, S, d_v). Runs without gradient when the tower and pixels need none."""
        if pixel_values.dim() != 5:
            raise ValueError("Flamingo: expected pixel_values of shape (B, N_img, C, H, W), got "
                             f"{tuple(pixel_values.shape)}")
        B, N = pixel_values.shape[:2]
        vit = self.vision_tower
        with torch.set_grad_enabled(needs_grad(vit, pixel_values)):
            x = vit.embed(pixel_values.flatten(0, 1))  # (B·N_img, S, d_v)
            for blk in vit.blocks:
                x = blk(x)
        return x.unflatten(0, (B, N))  # (B, N_img, S, d_v)

    def resample(self, tokens: Tensor, need_weights: bool = False) -> Tensor:
        """(B, N_img, S, d_v) -> (B, N_img, L, d_v) (or unchanged without a resampler)."""
        if self.resampler is None:
            return tokens
        B, N = tokens.shape[:2]
        return self.resampler(tokens.flatten(0, 1), need_weights).unflatten(0, (B, N))

    # -- text -----------------------------------------------------------------

    def embed(self, input_ids: Tensor) -> Tensor:
        """(B, T) ids over LM + extra vocabulary -> (B, T, D)."""
        V, Vx = self.config.text.vocab_size, self.config.vocab_size
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= Vx):
            raise ValueError(f"Flamingo: token ids must lie in [0, {Vx}) (LM vocabulary {V} + "
                             f"{Vx - V} extra), got values in [{int(input_ids.min())}, "
                             f"{int(input_ids.max())}]")
        x = self.lm.embed(input_ids.clamp(max=V - 1))  # (B, T, D)
        if self.extra_embed is None:
            return x
        extra = self.extra_embed((input_ids - V).clamp(min=0))  # (B, T, D)
        return torch.where((input_ids >= V)[..., None], extra, x)

    def forward(self, input_ids: Tensor, pixel_values: Tensor | None = None,
                image_attention_mask: Tensor | None = None, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, *, vision_tokens: Tensor | None = None,
                need_weights: bool = False) -> FlamingoOutput:
        """input_ids (B, T); pixel_values (B, N_img, C, H, W) (or precomputed ``vision_tokens``
        (B, N_img, S, d_v)); image_attention_mask (B, T, N_img), 1 where token t may see image
        n (default: :func:`image_attention_mask` of the ``<image>`` tokens); attention_mask
        (B, T) right padding; labels (B, T), -100 = no loss (shifted inside)."""
        x = self.embed(input_ids)  # (B, T, D)
        B, T, _ = x.shape
        lm = self.lm
        feats = None
        if pixel_values is not None or vision_tokens is not None:
            tok = self.vision_tokens(pixel_values) if vision_tokens is None else vision_tokens
            feats = self.resample(tok, need_weights)  # (B, N_img, L, d_v)
            N, L = feats.shape[1:3]
            if image_attention_mask is None:
                image_attention_mask = image_attention_mask_for(self, input_ids, N)
            if image_attention_mask.shape != (B, T, N):
                raise ValueError(f"Flamingo: expected image_attention_mask of shape ({B}, {T}, "
                                 f"{N}), got {tuple(image_attention_mask.shape)}")
            images = feats.flatten(1, 2)  # (B, N_img·L, d_v)
            xmask = image_attention_mask.bool().repeat_interleave(L, dim=2)  # (B, T, N_img·L)
        if T > lm.config.max_len:
            raise ValueError(f"Flamingo: sequence length {T} exceeds max_len {lm.config.max_len}")
        rope = lm.rotary(torch.arange(T, device=x.device))  # (1, 1, T, hd) each
        mask = lm.build_mask(attention_mask, T, 0, x.device)  # (B|1, 1, T, T) causal & padding
        weights: list[Tensor] = []
        k = self.config.cross_layer_interval
        for i, block in enumerate(lm.blocks):
            if i % k == 0 and feats is not None:
                gated = self.xattn[i // k]
                x = gated(x, images, xmask, need_weights)
                if need_weights:
                    weights.append(gated.last_attn)  # (B, H, T, N_img·L)
            x = block(x, mask=mask, rope=rope)  # frozen LM block
        h = lm.norm(x)  # (B, T, D)
        logits = lm.lm_head(h)  # (B, T, V)
        if self.extra_head is not None:
            logits = torch.cat([logits, self.extra_head(h)], dim=-1)  # (B, T, V + V_extra)
        loss = lm_loss(logits, labels) if labels is not None else None
        return FlamingoOutput(loss, logits, feats, weights if need_weights else None)

    @classmethod
    def from_hf(cls, model: nn.Module) -> Flamingo:
        """Copy a ``transformers.IdeficsForVisionText2Text`` (:mod:`minivlm.interop.flamingo`)."""
        from minivlm.interop.flamingo import flamingo_from_hf

        return flamingo_from_hf(cls, FlamingoConfig, model)


def image_attention_mask_for(model: Flamingo, input_ids: Tensor, num_images: int) -> Tensor:
    """The default mask of ``model``: each token sees the latest ``<image>`` before it."""
    return image_attention_mask(input_ids, model.config.image_token_id, num_images)
