"""ViLT: one transformer over words and patches (Kim et al. 2021, "ViLT: Vision-and-Language
Transformer Without Convolution or Region Supervision").

Earlier vision-and-language models ran a CNN or an object detector over the image and spent
most of their time there. ViLT drops both: an image is cut into 32x32 patches that are
linearly embedded exactly as in ViT, the caption is embedded as in BERT, and a *single*
ViT-style transformer reads the concatenation ``[text; image]`` (a "single-stream" model,
§3.1). Everything the two modalities learn about each other is learned in the
attention layers of that one transformer.

Reading order of this file::

    ViLTConfig, ViLTOutput
    build_single_stream_input   [text; image] + modality-type embeddings, joint padding mask
    ViLT                        embeddings -> pre-norm blocks -> LayerNorm -> pooler -> heads
    mask_tokens                 BERT 80/10/10 masking for MLM
    sample_itm_negatives        image-text matching pairs: positives and swapped negatives
    itm_loss_with_negatives     the ITM objective in one call
    make_pretraining_batch      ITM + MLM pre-training (§3.2) as one forward pass
    cost_matrix_cosine, ipot,
    wasserstein_distance,
    wpa_loss                    word-patch alignment by optimal transport (§3.2)

``ViLT.from_hf`` calls :mod:`minivlm.interop.vilt`; the presets (``vilt_tiny``, ``vilt_b32``)
are in :mod:`minivlm.presets`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from minivlm.nn.attention import padding_mask
from minivlm.nn.bert import BertEncoder, BertMLMHead, TextConfig
from minivlm.nn.blocks import TransformerBlock, get_activation
from minivlm.objectives import mask_tokens, sample_itm_negatives

Tensor = torch.Tensor

__all__ = [
    "ViLT",
    "ViLTConfig",
    "ViLTOutput",
    "build_single_stream_input",
    "cost_matrix_cosine",
    "ipot",
    "itm_loss_with_negatives",
    "make_pretraining_batch",
    "mask_tokens",
    "sample_itm_negatives",
    "wasserstein_distance",
    "wpa_loss",
]

TEXT_TYPE, IMAGE_TYPE = 0, 1  # modality-type ids (§3.1): t^type for words, v^type for patches


# ---------------------------------------------------------------------------
# Configuration and outputs
# ---------------------------------------------------------------------------


@dataclass
class ViLTConfig:
    """Sizes and switches of ViLT (defaults: ViLT-B/32 as Hugging Face's ``ViltConfig()``).

    Text side (BERT's embedding layer): ``vocab_size`` words, ``max_text_len`` learned
    positions (40 in the paper's code), ``type_vocab_size`` BERT segment embeddings (always
    segment 0 here). Image side (ViT's): ``patch_size`` patches, learned positions for an
    ``image_size`` square image, interpolated to other sizes. Transformer: ``depth`` pre-norm
    blocks of width ``dim``. The pooler is BERT's ``tanh(dense(h_first))``.

    Heads (§3.2, §4): ``itm_head`` (image-text matching, 2 classes), ``mlm_head`` (masked
    language modelling, decoder tied to the word embeddings) and a VQA classifier over
    ``num_answers`` answers (0: none). ``vqa_loss`` is ``"bce"`` (the paper: binary
    cross-entropy on soft answer scores, scaled by the number of answers) or ``"ce"``
    (softmax cross-entropy, for single-answer data such as the shapes world).
    ``wpa_weight`` > 0 adds the word-patch alignment loss to ITM batches (the paper's code
    uses 0.1; off by default); ``wpa_beta``/``wpa_iters`` configure its IPOT solver.
    """

    vocab_size: int = 30522
    max_text_len: int = 40
    type_vocab_size: int = 2
    modality_type_vocab_size: int = 2
    pad_id: int | None = 0
    image_size: int = 384
    patch_size: int = 32
    in_chans: int = 3
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    mlp_hidden: int | None = None  # overrides mlp_ratio when given
    act: str = "gelu"
    eps: float = 1e-12
    qkv_bias: bool = True
    dropout: float = 0.0
    pooler: bool = True
    itm_head: bool = True
    mlm_head: bool = True
    num_answers: int = 0
    vqa_loss: str = "bce"
    wpa_weight: float = 0.0
    wpa_beta: float = 0.5
    wpa_iters: int = 50

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(
                f"ViLTConfig: dim {self.dim} is not divisible by num_heads {self.num_heads}"
            )
        if self.image_size < self.patch_size:
            raise ValueError(
                f"ViLTConfig: image_size {self.image_size} is smaller than patch_size "
                f"{self.patch_size}"
            )
        if self.modality_type_vocab_size < 2:
            raise ValueError(
                "ViLTConfig: modality_type_vocab_size must be >= 2 (text 0, image 1), got "
                f"{self.modality_type_vocab_size}"
            )
        if self.vqa_loss not in ("bce", "ce"):
            raise ValueError(f"ViLTConfig: vqa_loss must be 'bce' or 'ce', got {self.vqa_loss!r}")
        if self.num_answers < 0:
            raise ValueError(f"ViLTConfig: num_answers must be >= 0, got {self.num_answers}")
        if not self.pooler and (self.itm_head or self.num_answers):
            raise ValueError(
                "ViLTConfig: the ITM and VQA heads read the pooled output; set pooler=True "
                "or itm_head=False, num_answers=0"
            )
        get_activation(self.act)  # raises a clear error for an unknown name

    @property
    def grid_size(self) -> int:
        """Patches per side of the position table (``image_size // patch_size``)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or int(self.dim * self.mlp_ratio)


@dataclass
class ViLTOutput:
    """What :meth:`ViLT.forward` returns.

    loss: sum of the losses whose targets were given (``loss_itm + loss_mlm + loss_vqa +
        wpa_weight * loss_wpa``); None without targets.
    last_hidden_state: (B, T + 1 + N, D) after the final LayerNorm: the T text tokens first,
        then the image CLS token, then the N patches in raster order.
    pooler_output: (B, D) ``tanh(dense(last_hidden_state[:, 0]))``.
    itm_logits (B, 2), mlm_logits (B, T, vocab), vqa_logits (B, num_answers): head outputs
        (None where the model has no such head).
    attentions: one (B, H, L, L) map per layer when ``need_weights`` (L = T + 1 + N).
    text_len: T, so ``last_hidden_state[:, :text_len]`` are the text tokens.
    joint_mask: (B, L) 1/0 mask of real tokens (text ``attention_mask`` then image mask).
    """

    loss: Tensor | None = None
    loss_itm: Tensor | None = None
    loss_mlm: Tensor | None = None
    loss_vqa: Tensor | None = None
    loss_wpa: Tensor | None = None
    last_hidden_state: Tensor | None = None
    pooler_output: Tensor | None = None
    itm_logits: Tensor | None = None
    mlm_logits: Tensor | None = None
    vqa_logits: Tensor | None = None
    attentions: list[Tensor] | None = None
    text_len: int = 0
    joint_mask: Tensor | None = None


# ---------------------------------------------------------------------------
# The single-stream input (§3.1)
# ---------------------------------------------------------------------------


def build_single_stream_input(
    text_embeds: Tensor,
    image_embeds: Tensor,
    text_mask: Tensor,
    image_mask: Tensor,
    type_embedding: nn.Embedding,
    image_type: int = IMAGE_TYPE,
) -> tuple[Tensor, Tensor]:
    """Concatenate words and patches into ViLT's one input sequence (§3.1).

    Each side gets its modality-type embedding first (``type_embedding`` row 0 for every
    text token, row ``image_type`` = 1 for every image token, the image CLS included), so
    the transformer can tell which modality a token came from; then the text goes first::

        x    = [text_embeds + type[0]; image_embeds + type[1]]      # (B, T+1+N, D)
        mask = [text_mask; image_mask]                                # (B, T+1+N)

    text_embeds (B, T, D), image_embeds (B, 1+N, D); text_mask (B, T), image_mask (B, 1+N)
    are 1 for real tokens and 0 for padding. The mask is returned in ``text_mask``'s dtype.
    """
    if text_embeds.dim() != 3 or image_embeds.dim() != 3:
        raise ValueError(
            "build_single_stream_input: expected text_embeds (B, T, D) and image_embeds "
            f"(B, 1+N, D), got {tuple(text_embeds.shape)} and {tuple(image_embeds.shape)}"
        )
    B, T, D = text_embeds.shape
    if image_embeds.shape[0] != B or image_embeds.shape[2] != D:
        raise ValueError(
            f"build_single_stream_input: image_embeds must have shape ({B}, 1+N, {D}) to match "
            f"text_embeds {tuple(text_embeds.shape)}, got {tuple(image_embeds.shape)}"
        )
    if tuple(text_mask.shape) != (B, T):
        raise ValueError(
            f"build_single_stream_input: expected text_mask of shape ({B}, {T}), "
            f"got {tuple(text_mask.shape)}"
        )
    if tuple(image_mask.shape) != tuple(image_embeds.shape[:2]):
        raise ValueError(
            f"build_single_stream_input: expected image_mask of shape "
            f"{tuple(image_embeds.shape[:2])}, got {tuple(image_mask.shape)}"
        )
    if type_embedding.embedding_dim != D:
        raise ValueError(
            f"build_single_stream_input: type_embedding has width {type_embedding.embedding_dim}"
            f", expected {D}"
        )
    device = text_embeds.device
    text_type = torch.full((B, T), TEXT_TYPE, dtype=torch.long, device=device)
    img_type = torch.full(image_embeds.shape[:2], image_type, dtype=torch.long, device=device)
    text = text_embeds + type_embedding(text_type)  # (B, T, D)
    image = image_embeds + type_embedding(img_type)  # (B, 1+N, D)
    x = torch.cat([text, image], dim=1)  # (B, T+1+N, D): text first, then image
    mask = torch.cat([text_mask, image_mask.to(text_mask.dtype)], dim=1)  # (B, T+1+N)
    return x, mask


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


class ViLT(nn.Module):
    """Vision-and-Language Transformer (§3.1)::

        text  (B, T) ids      -> BERT embeddings: LN(word + position + segment 0)    (B, T, D)
        image (B, 3, H, W)    -> Conv2d(p, stride p) patches, prepend image CLS,
                                 + learned positions (interpolated to the patch grid) (B, 1+N, D)
        z0 = [text + type[0]; image + type[1]]                                     (B, T+1+N, D)
        z  = LayerNorm(depth pre-norm ViT blocks(z0)) under the joint padding mask
        pooled = tanh(W_pool z[:, 0])      (z[:, 0] is the text [CLS] token)
        heads: ITM Linear(D, 2)(pooled); MLM on text tokens; VQA MLP(pooled)

    ``model(input_ids, pixel_values, attention_mask)`` gives the same ``last_hidden_state``
    as Hugging Face's ``ViltModel`` (see :meth:`from_hf`). Images may have another size than
    ``config.image_size`` (divisible by the patch size); ``pixel_mask`` (B, H, W) marks the
    real pixels of images padded at the right and bottom, as ``ViltImageProcessor`` pads.
    Unlike HF (and the paper's code, which can sample at most ``max_image_len`` patches),
    every patch is kept, in raster order; padded patches are masked out instead.
    """

    def __init__(self, config: ViLTConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = replace(config or ViLTConfig(), **overrides)
        self.config = cfg
        D, p = cfg.dim, cfg.patch_size
        # text: BERT's embedding layer (word + position + segment, LayerNorm) = a BertEncoder
        # with no layers; ``text_embeddings.embed(ids)`` -> (B, T, D)
        self.text_embeddings = BertEncoder(
            TextConfig(
                vocab_size=cfg.vocab_size, max_len=cfg.max_text_len, dim=D, depth=0,
                num_heads=cfg.num_heads, eps=cfg.eps, type_vocab_size=cfg.type_vocab_size,
                pad_id=cfg.pad_id, dropout=cfg.dropout,
            )
        )  # fmt: skip
        # image: ViT's patch embedding, CLS token and learned positions for image_size
        self.patch_embed = nn.Conv2d(cfg.in_chans, D, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.num_patches, D))
        self.image_drop = nn.Dropout(cfg.dropout)
        # modality-type embeddings t^type (row 0) and v^type (row 1) (HF: token_type_embeddings)
        self.modality_embeddings = nn.Embedding(cfg.modality_type_vocab_size, D)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                D, cfg.num_heads, mlp_hidden=cfg.hidden, eps=cfg.eps, mlp=cfg.act,
                qkv_bias=cfg.qkv_bias, out_bias=True, mlp_bias=True, prenorm=True,
                dropout=cfg.dropout,
            )
            for _ in range(cfg.depth)
        )  # fmt: skip
        self.norm = nn.LayerNorm(D, eps=cfg.eps)
        self.pooler = nn.Linear(D, D) if cfg.pooler else None
        # heads
        self.itm_head = nn.Linear(D, 2) if cfg.itm_head else None
        self.mlm_head = (
            BertMLMHead(D, cfg.vocab_size, act=cfg.act, eps=cfg.eps) if cfg.mlm_head else None
        )
        self.vqa_head = None
        if cfg.num_answers > 0:  # the paper's VQAv2 classifier (§4): a 2-layer MLP of width 2D
            self.vqa_head = nn.Sequential(
                nn.Linear(D, 2 * D), nn.LayerNorm(2 * D), nn.GELU(),
                nn.Linear(2 * D, cfg.num_answers),
            )  # fmt: skip
        self.reset_parameters()
        if self.mlm_head is not None:  # the MLM decoder shares the word-embedding matrix
            self.mlm_head.tie_weights(self.text_embeddings.word_embeddings)

    def reset_parameters(self) -> None:
        """ViLT's init: normal(0, 0.02) for linears and embeddings, truncated normal
        positions and CLS, unit LayerNorms, zero biases (the patch Conv2d keeps PyTorch's)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        pad = self.text_embeddings.word_embeddings.padding_idx
        if pad is not None:
            with torch.no_grad():
                self.text_embeddings.word_embeddings.weight[pad].zero_()

    # -- embeddings ---------------------------------------------------------

    def _check_images(self, pixel_values: Tensor, pixel_mask: Tensor | None) -> None:
        cfg = self.config
        if not isinstance(pixel_values, Tensor) or pixel_values.dim() != 4:
            shape = (
                tuple(pixel_values.shape)
                if isinstance(pixel_values, Tensor)
                else type(pixel_values).__name__
            )
            raise ValueError(
                f"ViLT: expected pixel_values of shape (B, {cfg.in_chans}, H, W), got {shape}"
            )
        B, C, H, W = pixel_values.shape
        if C != cfg.in_chans:
            raise ValueError(
                f"ViLT: expected {cfg.in_chans} channels in pixel_values (B, C, H, W), got shape "
                f"{tuple(pixel_values.shape)}"
            )
        if not pixel_values.is_floating_point():
            raise TypeError(f"ViLT: expected floating-point pixel_values, got {pixel_values.dtype}")
        if H % cfg.patch_size or W % cfg.patch_size:
            raise ValueError(
                f"ViLT: image size {H}x{W} is not divisible by patch_size {cfg.patch_size}; "
                "pad images at the right/bottom (and pass pixel_mask) as ViltImageProcessor does"
            )
        if pixel_mask is not None and tuple(pixel_mask.shape) != (B, H, W):
            raise ValueError(
                f"ViLT: expected pixel_mask of shape ({B}, {H}, {W}) (1 = real pixel), got "
                f"{tuple(pixel_mask.shape)}"
            )

    def patch_positions(
        self, h: int, w: int, valid_hw: tuple[Tensor, Tensor] | None = None, batch: int = 1
    ) -> Tensor:
        """Learned patch positions for an (h, w) patch grid, (B or 1, h*w, D).

        The (g, g) table learned at ``image_size`` is resized with bilinear interpolation
        (``align_corners=True``, as ViLT's code and HF do). With ``valid_hw`` = per-image
        numbers of real patch rows and columns (B,), (B,), each image gets the table resized
        to its own real region, and zeros at its padding patches.
        """
        g, D = self.config.grid_size, self.config.dim
        table = self.pos_embed[:, 1:].transpose(1, 2).reshape(1, D, g, g)  # (1, D, g, g)

        def resize(size: tuple[int, int]) -> Tensor:
            if size == (g, g):
                return table
            return F.interpolate(table, size=size, mode="bilinear", align_corners=True)

        if valid_hw is None:  # every patch is real: one table for the whole batch
            return resize((h, w)).flatten(2).transpose(1, 2)  # (1, h*w, D)
        vh, vw = valid_hw
        out = table.new_zeros(batch, D, h, w)  # (B, D, h, w), zero at padding patches
        for hv, wv in torch.stack([vh, vw], dim=1).unique(dim=0).tolist():
            rows = ((vh == hv) & (vw == wv)).nonzero().flatten()
            out[rows, :, :hv, :wv] = resize((hv, wv))
        return out.flatten(2).transpose(1, 2)  # (B, h*w, D)

    def embed_image(
        self, pixel_values: Tensor, pixel_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) images -> image tokens (B, 1+N, D) and their 1/0 mask (B, 1+N).

        Tokens: [image CLS + pos[0]; patch_i + pos_i] (ViT's embedding, §3.1), patches in
        raster order. ``pixel_mask`` (B, H, W) is resized to the patch grid (nearest), so a
        patch is padding where the mask is 0 at its sampled pixel (HF's rule).
        """
        self._check_images(pixel_values, pixel_mask)
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # (B, D, h, w)
        B, D, h, w = x.shape
        if pixel_mask is None:
            patch_mask = torch.ones(B, h * w, dtype=torch.long, device=x.device)  # (B, N)
            pos = self.patch_positions(h, w)  # (1, N, D)
        else:
            grid_mask = F.interpolate(pixel_mask[:, None].float(), size=(h, w))[:, 0].long()
            vh = grid_mask[:, :, 0].sum(dim=1)  # (B,) real patch rows (first column)
            vw = grid_mask[:, 0, :].sum(dim=1)  # (B,) real patch columns (first row)
            if bool((vh == 0).any() | (vw == 0).any()):
                bad = ((vh == 0) | (vw == 0)).nonzero().flatten().tolist()
                raise ValueError(
                    f"ViLT: pixel_mask of images {bad} has no real patch at the top left; real "
                    "pixels must start at the top-left corner (padding right/bottom)"
                )
            patch_mask = grid_mask.flatten(1)  # (B, N)
            pos = self.patch_positions(h, w, (vh, vw), batch=B)  # (B, N, D)
        patches = x.flatten(2).transpose(1, 2) + pos  # (B, N, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)  # (B, 1, D)
        image = self.image_drop(torch.cat([cls, patches], dim=1))  # (B, 1+N, D)
        mask = torch.cat([patch_mask.new_ones(B, 1), patch_mask], dim=1)  # (B, 1+N)
        return image, mask

    def embed(
        self,
        input_ids: Tensor,
        pixel_values: Tensor,
        attention_mask: Tensor | None = None,
        pixel_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        image_type: int = IMAGE_TYPE,
    ) -> tuple[Tensor, Tensor]:
        """The transformer's input z0 (B, T+1+N, D) and the joint 1/0 mask (B, T+1+N)."""
        self._check_embed(input_ids, pixel_values, attention_mask)
        text = self.text_embeddings.embed(input_ids, token_type_ids=token_type_ids)  # (B, T, D)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=text.device)
        image, image_mask = self.embed_image(pixel_values, pixel_mask)  # (B, 1+N, D), (B, 1+N)
        return build_single_stream_input(
            text, image, attention_mask.long(), image_mask, self.modality_embeddings, image_type
        )

    def _check_embed(
        self, input_ids: Tensor, pixel_values: Tensor, attention_mask: Tensor | None
    ) -> None:
        """Captions within the learned positions, a mask like them, one image per caption
        (token ids and images are checked where they are embedded)."""
        if not (isinstance(input_ids, Tensor) and input_ids.dim() == 2):
            return  # BertEncoder.embed names the expected shape
        B, T = input_ids.shape
        if T > self.config.max_text_len:
            raise ValueError(
                f"ViLT: captions of {T} tokens exceed max_text_len "
                f"{self.config.max_text_len} (the learned text positions); truncate them"
            )
        if attention_mask is not None and tuple(attention_mask.shape) != (B, T):
            raise ValueError(
                f"ViLT: expected attention_mask of shape ({B}, {T}) like input_ids, got "
                f"{tuple(attention_mask.shape)}"
            )
        if isinstance(pixel_values, Tensor) and pixel_values.dim() == 4 and len(pixel_values) != B:
            raise ValueError(
                f"ViLT: input_ids hold {B} captions but pixel_values {len(pixel_values)} images; "
                "pass one image per caption"
            )

    # -- forward ------------------------------------------------------------

    def forward(
        self,
        input_ids: Tensor,
        pixel_values: Tensor,
        attention_mask: Tensor | None = None,
        pixel_mask: Tensor | None = None,
        itm_labels: Tensor | None = None,
        mlm_labels: Tensor | None = None,
        vqa_labels: Tensor | None = None,
        need_weights: bool = False,
        token_type_ids: Tensor | None = None,
    ) -> ViLTOutput:
        """Encode (caption, image) pairs; with targets, also the losses.

        input_ids (B, T), attention_mask (B, T) 1/0; pixel_values (B, C, H, W), pixel_mask
        (B, H, W) 1/0. Targets: ``itm_labels`` (B,) 1 = matching pair, 0 = not, -100 = no
        ITM loss for that row; ``mlm_labels`` (B, T) original ids at masked positions, -100
        elsewhere (:func:`mask_tokens`); ``vqa_labels`` (B,) answer ids (-100 = skip) or
        (B, num_answers) soft scores. An unknown keyword raises TypeError.
        """
        cfg = self.config
        x, joint = self.embed(input_ids, pixel_values, attention_mask, pixel_mask, token_type_ids)
        T = input_ids.shape[1]
        # (B, 1, 1, L) True where a key is a real token; no mask at all when nothing is padded
        attn_mask = None if bool(joint.all()) else padding_mask(joint)
        attns: list[Tensor] | None = [] if need_weights else None
        for blk in self.blocks:
            x = blk(x, mask=attn_mask, need_weights=need_weights)  # (B, L, D)
            if attns is not None:
                attns.append(blk.last_attn)
        x = self.norm(x)  # (B, T+1+N, D)
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None  # (B, D)

        out = ViLTOutput(last_hidden_state=x, pooler_output=pooled, attentions=attns,
                         text_len=T, joint_mask=joint)  # fmt: skip
        if self.itm_head is not None:
            out.itm_logits = self.itm_head(pooled)  # (B, 2)
        if self.mlm_head is not None:
            out.mlm_logits = self.mlm_head(x[:, :T])  # (B, T, vocab)
        if self.vqa_head is not None:
            out.vqa_logits = self.vqa_head(pooled)  # (B, num_answers)
        self._check_targets(out, itm_labels, mlm_labels, vqa_labels)

        losses: list[Tensor] = []
        if itm_labels is not None:
            out.loss_itm = self._itm_loss(out.itm_logits, itm_labels)
            losses.append(out.loss_itm)
            if cfg.wpa_weight > 0:
                out.loss_wpa = self._wpa_loss(x, joint, T, itm_labels)
                losses.append(cfg.wpa_weight * out.loss_wpa)
        if mlm_labels is not None:
            out.loss_mlm = self._mlm_loss(out.mlm_logits, mlm_labels)
            losses.append(out.loss_mlm)
        if vqa_labels is not None:
            out.loss_vqa = self._vqa_loss(out.vqa_logits, vqa_labels)
            losses.append(out.loss_vqa)
        if losses:
            out.loss = sum(losses[1:], losses[0])
        return out

    def _check_targets(
        self, out: ViLTOutput, itm: Tensor | None, mlm: Tensor | None, vqa: Tensor | None
    ) -> None:
        """Each given target has its head and the shape that head's logits need."""
        B, T = out.last_hidden_state.shape[0], out.text_len
        if itm is not None:
            if out.itm_logits is None:
                raise ValueError("ViLT: itm_labels given but the model has no ITM head (itm_head)")
            if tuple(itm.shape) != (B,):
                raise ValueError(
                    f"ViLT: expected itm_labels of shape ({B},), got {tuple(itm.shape)}"
                )
        if mlm is not None:
            if out.mlm_logits is None:
                raise ValueError("ViLT: mlm_labels given but the model has no MLM head (mlm_head)")
            if tuple(mlm.shape) != (B, T):
                raise ValueError(
                    f"ViLT: expected mlm_labels of shape {(B, T)} like input_ids, "
                    f"got {tuple(mlm.shape)}"
                )
        if vqa is None:
            return
        if out.vqa_logits is None:
            raise ValueError("ViLT: vqa_labels given but the model has no VQA head (num_answers)")
        A = out.vqa_logits.shape[1]
        if vqa.dim() == 1 and not vqa.is_floating_point():
            if vqa.shape[0] != B:
                raise ValueError(f"ViLT: expected vqa_labels of shape ({B},), got {vqa.shape}")
            keep = vqa != -100
            if bool(((vqa[keep] < 0) | (vqa[keep] >= A)).any()):
                raise ValueError(f"ViLT: vqa_labels must be answer ids in 0..{A - 1} (or -100)")
        elif tuple(vqa.shape) != (B, A) or not vqa.is_floating_point():
            raise ValueError(
                f"ViLT: expected vqa_labels as answer ids (B,) or float soft scores ({B}, {A}), "
                f"got {vqa.dtype} {tuple(vqa.shape)}"
            )

    # -- losses -------------------------------------------------------------

    def _itm_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Image-text matching (§3.2): 2-way cross-entropy on the pooled token."""
        return _mean_ce(logits, labels.long())

    def _mlm_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Masked language modelling (§3.2): predict the original ids at masked positions."""
        return _mean_ce(logits.flatten(0, 1), labels.flatten().long())

    def _vqa_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """VQA as answer classification (§4, VQAv2).

        Soft scores (B, A) with ``vqa_loss="bce"``: the paper's binary cross-entropy per
        answer, multiplied by A (as its code, after Kim et al.'s BAN). Answer ids (B,) are
        one-hot for BCE or used directly by cross-entropy (``vqa_loss="ce"``); -100 skips a row.
        """
        A = logits.shape[1]
        if labels.dim() == 1 and not labels.is_floating_point():  # answer ids (B,)
            keep = labels != -100
            if self.config.vqa_loss == "ce":
                return _mean_ce(logits, labels)
            if not bool(keep.any()):
                return logits.sum() * 0.0
            target = F.one_hot(labels[keep], A).to(logits.dtype)  # (B', A)
            return F.binary_cross_entropy_with_logits(logits[keep], target) * A
        if self.config.vqa_loss == "ce":  # soft-target cross-entropy
            return F.cross_entropy(logits, labels / labels.sum(-1, keepdim=True).clamp_min(1e-12))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype)) * A

    def _wpa_loss(self, x: Tensor, joint: Tensor, T: int, itm_labels: Tensor) -> Tensor:
        """Word-patch alignment on the ITM rows (see :func:`wpa_loss`).

        As in the paper's code, the text [CLS] (first token), the last real text token
        ([SEP] in BERT tokenisation) and the image CLS do not take part.
        """
        rows = itm_labels != -100
        text_mask = joint[:, :T].bool().clone()  # (B, T)
        last = text_mask.long().sum(dim=1) - 1  # (B,) index of the last real text token
        text_mask[torch.arange(x.shape[0], device=x.device), last.clamp_min(0)] = False
        text_mask[:, 0] = False
        image_mask = joint[:, T:].bool().clone()  # (B, 1+N)
        image_mask[:, 0] = False
        dist = wasserstein_distance(
            x[rows, :T], x[rows, T:], text_mask[rows], image_mask[rows],
            beta=self.config.wpa_beta, iters=self.config.wpa_iters,
        )  # fmt: skip
        return wpa_loss(dist, itm_labels[rows])

    # -- checkpoints (converter in minivlm.interop.vilt) ---------------------------

    @classmethod
    def from_hf(cls, model: nn.Module) -> ViLT:
        """Build a ViLT with the config and weights of a Hugging Face ``ViltModel``.

        Also accepts the task models, taking ``.vilt`` and copying their head:
        ``ViltForMaskedLM`` -> ``mlm_head`` (tied to the word embeddings, as in HF),
        ``ViltForQuestionAnswering`` -> ``vqa_head``, ``ViltForImageAndTextRetrieval`` ->
        ``itm_head`` with row 1 = HF's ``rank_output`` and row 0 = 0, so
        ``itm_logits[:, 1]`` equals HF's retrieval logit. Other models copy the backbone only.

        ``model(ids, pixels, mask).last_hidden_state`` then equals HF's with its patch
        sampling (``torch.multinomial``) made the identity: HF visits the patches in a random
        order even when it keeps them all, and at most ``max_image_length`` of them when
        that is positive; minivlm keeps all, in raster order.
        """
        from minivlm.interop.vilt import vilt_from_hf

        return vilt_from_hf(cls, ViLTConfig, model)


def _mean_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy averaged over labels != -100; 0 (with a gradient path) when there are none."""
    if not bool((labels != -100).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=-100)


def itm_loss_with_negatives(
    model: ViLT,
    batch: dict[str, Tensor],
    generator: torch.Generator | None = None,
    image_prob: float = 0.5,
) -> ViLTOutput:
    """Run ``model`` on the positives and sampled negatives of ``batch`` (ITM, §3.2).

    Returns the :class:`ViLTOutput` of the 2B pairs of :func:`sample_itm_negatives`;
    its ``loss`` is ``loss_itm`` (plus ``wpa_weight * loss_wpa`` when WPA is on).
    """
    pairs = sample_itm_negatives(batch, generator, image_prob)
    inputs = {k: v for k, v in pairs.items() if k not in ("partner", "swapped_image")}
    return model(**inputs)


def make_pretraining_batch(
    batch: dict[str, Tensor],
    mask_id: int,
    vocab_size: int,
    special_ids: list[int] | tuple[int, ...] | Tensor,
    mlm_prob: float = 0.15,
    image_prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """ViLT's pre-training step (§3.2) as one batch of 3B rows for ``model(**batch)``.

    The paper runs two passes: MLM on masked captions with their own images, and ITM (with
    WPA) on unmasked captions, half of them with a wrong partner. Here they are stacked:
    rows 0..B-1 are the MLM pass (``itm_labels`` = -100), rows B..3B-1 the ITM pass of
    :func:`sample_itm_negatives` (``mlm_labels`` all -100), so ``loss = loss_itm + loss_mlm``.
    """
    ids = batch["input_ids"]
    masked, mlm = mask_tokens(ids, mask_id, vocab_size, special_ids, mlm_prob, generator)
    itm = sample_itm_negatives(batch, generator, image_prob)
    B = ids.shape[0]
    out: dict[str, Tensor] = {}
    for key, value in itm.items():
        if key in ("partner", "swapped_image", "itm_labels"):
            continue
        first = masked if key == "input_ids" else batch[key]
        out[key] = torch.cat([first, value], dim=0)
    out["itm_labels"] = torch.cat([torch.full_like(itm["itm_labels"][:B], -100),
                                   itm["itm_labels"]])  # fmt: skip
    out["mlm_labels"] = torch.cat([mlm, torch.full_like(itm["input_ids"], -100)], dim=0)
    return out


# ---------------------------------------------------------------------------
# Word-patch alignment (§3.2): optimal transport between words and patches
# ---------------------------------------------------------------------------


def cost_matrix_cosine(x: Tensor, y: Tensor, eps: float = 1e-5) -> Tensor:
    """Cosine distance 1 - cos(x_i, y_j) between every pair: (B, M, D), (B, N, D) -> (B, M, N)."""
    x = F.normalize(x, dim=-1, eps=eps)
    y = F.normalize(y, dim=-1, eps=eps)
    return 1.0 - x @ y.transpose(1, 2)


@torch.no_grad()
def ipot(
    cost: Tensor, x_mask: Tensor, y_mask: Tensor, beta: float = 0.5, iters: int = 50, k: int = 1
) -> Tensor:
    """Inexact proximal point method for optimal transport (Xie et al. 2019, Alg. 1).

    Finds a transport plan P (B, M, N) between uniform distributions over the real tokens of
    x (``x_mask`` (B, M) bool) and of y (``y_mask`` (B, N)) that (approximately) minimises
    <C, P>. Each outer step solves a proximal problem min <C, P> + beta * KL(P || P_t) with
    ``k`` Sinkhorn-style scaling steps:

        G = exp(-C / beta);   Q = G * P_t
        b = nu / (Q^T a);     a = mu / (Q b);    P_{t+1} = diag(a) Q diag(b)

    A small ``k`` (1 in ViLT/UNITER) makes it "inexact"; unlike entropic Sinkhorn, the plan
    still converges to the exact optimum as t grows. Padding gets no mass.
    """
    xm, ym = x_mask.to(cost.dtype), y_mask.to(cost.dtype)  # (B, M), (B, N)
    joint = xm[:, :, None] * ym[:, None, :]  # (B, M, N) 1 where both tokens are real
    mu = xm / xm.sum(1, keepdim=True).clamp_min(1)  # (B, M) uniform over real x tokens
    nu = ym / ym.sum(1, keepdim=True).clamp_min(1)  # (B, N)
    G = torch.exp(-cost / beta) * joint  # (B, M, N)
    P = joint.clone()
    a = mu.clone()
    for _ in range(iters):
        Q = G * P
        for _ in range(k):
            b = nu / (Q.transpose(1, 2) @ a[..., None])[..., 0].clamp_min(1e-30)  # (B, N)
            a = mu / (Q @ b[..., None])[..., 0].clamp_min(1e-30)  # (B, M)
        P = a[:, :, None] * Q * b[:, None, :]
    return P * joint


def wasserstein_distance(
    text_feats: Tensor,
    image_feats: Tensor,
    text_mask: Tensor,
    image_mask: Tensor,
    beta: float = 0.5,
    iters: int = 50,
) -> Tensor:
    """Optimal-transport distance between each caption's words and its image's patches, (B,).

    D = <C, P*> with C the cosine-distance matrix (B, M, N) and P* the IPOT plan; P* is
    treated as a constant, so the gradient is that of <C, P*> (the plan says which word is
    pulled towards which patches). Masked (False) tokens take no part.
    """
    with torch.autocast(text_feats.device.type, enabled=False):  # float32, as ViLT's code
        cost = cost_matrix_cosine(text_feats.float(), image_feats.float())  # (B, M, N)
        joint = text_mask.bool()[:, :, None] & image_mask.bool()[:, None, :]
        cost = cost.masked_fill(~joint, 0.0)
        plan = ipot(cost.detach(), text_mask.bool(), image_mask.bool(), beta, iters)  # (B, M, N)
        return (cost * plan).sum(dim=(1, 2))  # (B,)


def wpa_loss(distance: Tensor, itm_labels: Tensor) -> Tensor:
    """Word-patch alignment loss (§3.2): pull matching pairs' words and patches together.

    ``(sum of distances of positive pairs - sum over negative pairs) / number of pairs``:
    matching pairs (label 1) minimise their transport distance, mismatched pairs (label 0)
    maximise it. ViLT adds it to ITM with weight 0.1 (``ViLTConfig.wpa_weight``).
    """
    if distance.shape != itm_labels.shape:
        raise ValueError(
            f"wpa_loss: distance {tuple(distance.shape)} and itm_labels "
            f"{tuple(itm_labels.shape)} must have the same shape (B,)"
        )
    if distance.numel() == 0:
        return distance.sum()
    sign = torch.where(itm_labels == 1, 1.0, -1.0).to(distance.dtype)
    return (sign * distance).sum() / distance.numel()
