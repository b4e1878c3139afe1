"""ViLT: one transformer over words and patches (Kim et al. 2021, "ViLT: Vision-and-Language
Transformer Without Convolution or Region Supervision").

Earlier vision-and-language models ran a CNN or an object detector over the image and spent
most of their time there. ViLT drops both: an image is cut into 32x32 patches that are
linearly embedded exactly as in ViT, the caption is embedded as in BERT, and a *single*
ViT-style transformer reads the concatenation ``[text; image]`` (a "single-stream" model,
§3.1). Everything the two modalities learn about each other is learned in the
attention layers of that one transformer.

Read top to bottom: :class:`ViLTConfig`, :class:`ViLTOutput`, :func:`build_single_stream_input`
([text; image] + modality types, joint mask), :class:`ViLT` (embeddings -> blocks -> heads).

Training batches (``mask_tokens``, ``sample_itm_negatives`` -- re-exported here --,
``itm_loss_with_negatives``, ``make_pretraining_batch``) and word-patch alignment by optimal
transport (``wasserstein_distance``, ``wpa_loss``) are shared in :mod:`minivlm.objectives`.
``ViLT.from_hf`` calls :mod:`minivlm.interop.vilt`; the presets (``vilt_tiny``, ``vilt_b32``)
are in :mod:`minivlm.presets`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from minivlm.nn.attention import padding_mask
from minivlm.nn.bert import BertEncoder, BertMLMHead, TextConfig, init_weights
from minivlm.nn.blocks import TransformerBlock, get_activation
from minivlm.nn.config import MLPHidden, TransformerSizes, divisible, one_of
from minivlm.nn.vit import PatchGrid, check_padded_images, embed_padded_images
from minivlm.objectives import (
    mask_tokens,
    masked_cross_entropy,
    sample_itm_negatives,
    wasserstein_distance,
    wpa_loss,
)
from minivlm.utils import raise_first

Tensor = torch.Tensor

__all__ = [
    "ViLT",
    "ViLTConfig",
    "ViLTOutput",
    "build_single_stream_input",
    "mask_tokens",
    "sample_itm_negatives",
]

TEXT_TYPE, IMAGE_TYPE = 0, 1  # modality-type ids (§3.1): t^type for words, v^type for patches


# ---------------------------------------------------------------------------
# Configuration and outputs
# ---------------------------------------------------------------------------


@dataclass
class ViLTConfig(TransformerSizes, PatchGrid, MLPHidden):
    """Sizes and switches of ViLT (defaults: ViLT-B/32 as Hugging Face's ``ViltConfig()``: the
    :class:`~minivlm.nn.config.TransformerSizes` defaults, BERT's LayerNorm eps 1e-12, with the
    MLP width from ``mlp_ratio``, and a :class:`~minivlm.nn.vit.PatchGrid` of 384 px, 32 px).

    Text (BERT's embedding layer): ``vocab_size`` words, ``max_text_len`` learned positions
    (40 in the paper's code), ``type_vocab_size`` segments (always 0 here). Image (ViT's):
    ``patch_size`` patches, positions learned for an ``image_size`` square, interpolated to
    other sizes. ``depth`` pre-norm blocks of width ``dim``; pooler ``tanh(dense(h_first))``.

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
    image_size: int = 384  # PatchGrid's field, ViLT's default
    patch_size: int = 32  # PatchGrid's field, ViLT's default
    mlp_ratio: float = 4.0
    mlp_hidden: int | None = None  # TransformerSizes' field; None: int(dim * mlp_ratio)
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
        checks = [
            divisible(self, "dim", "num_heads"),
            (self.image_size >= self.patch_size,
             f"image_size {self.image_size} is smaller than patch_size {self.patch_size}"),
            (self.modality_type_vocab_size >= 2, "modality_type_vocab_size must be >= 2 "
             f"(text 0, image 1), got {self.modality_type_vocab_size}"),
            one_of(self, "vqa_loss", ("bce", "ce")),
            (self.num_answers >= 0, f"num_answers must be >= 0, got {self.num_answers}"),
            (self.pooler or not (self.itm_head or self.num_answers), "the ITM and VQA heads read "
             "the pooled output; set pooler=True or itm_head=False, num_answers=0"),
        ]  # fmt: skip
        raise_first("ViLTConfig: ", checks)
        get_activation(self.act)  # raises a clear error for an unknown name


@dataclass
class ViLTOutput:
    """What :meth:`ViLT.forward` returns: ``loss`` = ``loss_itm + loss_mlm + loss_vqa +
    wpa_weight * loss_wpa`` over the targets given (None without); ``last_hidden_state``
    (B, L = T+1+N, D) after the final LayerNorm: T text tokens, the image CLS, N patches in
    raster order (``text_len`` = T); ``pooler_output`` (B, D) ``tanh(dense(h[:, 0]))``; head
    outputs ``itm_logits`` (B, 2), ``mlm_logits`` (B, T, vocab), ``vqa_logits`` (B, A) (None
    without the head); ``attentions``, one (B, H, L, L) map per layer with ``need_weights``;
    ``joint_mask`` (B, L) 1/0 for real tokens (text ``attention_mask``, then the image's)."""

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
    checks = [
        (image_embeds.shape[0] == B and image_embeds.shape[2] == D,
         f"image_embeds must have shape ({B}, 1+N, {D}) to match text_embeds "
         f"{tuple(text_embeds.shape)}, got {tuple(image_embeds.shape)}"),
        (tuple(text_mask.shape) == (B, T),
         f"expected text_mask of shape ({B}, {T}), got {tuple(text_mask.shape)}"),
        (tuple(image_mask.shape) == tuple(image_embeds.shape[:2]), "expected image_mask of shape "
         f"{tuple(image_embeds.shape[:2])}, got {tuple(image_mask.shape)}"),
        (type_embedding.embedding_dim == D,
         f"type_embedding has width {type_embedding.embedding_dim}, expected {D}"),
    ]  # fmt: skip
    raise_first("build_single_stream_input: ", checks)
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
    real pixels of images padded at the right and bottom (as ``ViltImageProcessor``). Every
    patch is kept, in raster order (HF and the paper's code sample them); padding is masked.
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
        """ViLT's init: BERT's (:func:`~minivlm.nn.bert.init_weights`: normal(0, 0.02) linears
        and embeddings, zero biases and padding row, unit LayerNorms), truncated normal
        positions and CLS (the patch Conv2d keeps PyTorch's)."""
        init_weights(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    # -- embeddings ---------------------------------------------------------

    def embed_image(
        self, pixel_values: Tensor, pixel_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) images -> image tokens (B, 1+N, D) and their 1/0 mask (B, 1+N):
        [image CLS + pos[0]; patch_i + pos_i] (ViT's embedding, §3.1), patches in raster
        order, positions resized to each image's real patch grid
        (:func:`~minivlm.nn.vit.embed_padded_images`)."""
        check_padded_images(pixel_values, pixel_mask, self.config.in_chans,
                            self.config.patch_size, "ViLT")  # fmt: skip
        image, mask = embed_padded_images(pixel_values, pixel_mask, self.patch_embed,
                                          self.cls_token, self.pos_embed, "ViLT")  # fmt: skip
        return self.image_drop(image), mask  # (B, 1+N, D), (B, 1+N)

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
        images = isinstance(pixel_values, Tensor) and pixel_values.dim() == 4
        n_img = len(pixel_values) if images else B  # other inputs: checked in embed_image
        checks = [
            (T <= self.config.max_text_len, f"captions of {T} tokens exceed max_text_len "
             f"{self.config.max_text_len} (the learned text positions); truncate them"),
            (attention_mask is None or tuple(attention_mask.shape) == (B, T),
             f"expected attention_mask of shape ({B}, {T}) like input_ids, got "
             f"{tuple(getattr(attention_mask, 'shape', ()))}"),
            (n_img == B, f"input_ids hold {B} captions but pixel_values {n_img} images; pass one "
             "image per caption"),
        ]  # fmt: skip
        raise_first("ViLT: ", checks)

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
        for name, labels, logits, shape in (("itm", itm, out.itm_logits, (B,)),
                                            ("mlm", mlm, out.mlm_logits, (B, T))):  # fmt: skip
            if labels is not None and logits is None:
                raise ValueError(f"ViLT: {name}_labels given but the model has no "
                                 f"{name.upper()} head ({name}_head)")  # fmt: skip
            if labels is not None and tuple(labels.shape) != shape:
                raise ValueError(f"ViLT: expected {name}_labels of shape {shape}"
                                 f"{' like input_ids' if name == 'mlm' else ''}, got "
                                 f"{tuple(labels.shape)}")  # fmt: skip
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
            raise ValueError(f"ViLT: expected vqa_labels as answer ids (B,) or float soft scores "
                             f"({B}, {A}), got {vqa.dtype} {tuple(vqa.shape)}")  # fmt: skip

    # -- losses -------------------------------------------------------------

    def _itm_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Image-text matching (§3.2): 2-way cross-entropy on the pooled token."""
        return masked_cross_entropy(logits, labels.long())

    def _mlm_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Masked language modelling (§3.2): predict the original ids at masked positions."""
        return masked_cross_entropy(logits.flatten(0, 1), labels.flatten().long())

    def _vqa_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """VQA as answer classification (§4, VQAv2). Soft scores (B, A) with ``vqa_loss="bce"``:
        the paper's binary cross-entropy per answer, times A (as its code, after BAN). Answer
        ids (B,) are one-hot for BCE or used directly by ``vqa_loss="ce"``; -100 skips a row."""
        A = logits.shape[1]
        if labels.dim() == 1 and not labels.is_floating_point():  # answer ids (B,)
            keep = labels != -100
            if self.config.vqa_loss == "ce":
                return masked_cross_entropy(logits, labels)
            if not bool(keep.any()):
                return logits.sum() * 0.0
            target = F.one_hot(labels[keep], A).to(logits.dtype)  # (B', A)
            return F.binary_cross_entropy_with_logits(logits[keep], target) * A
        if self.config.vqa_loss == "ce":  # soft-target cross-entropy
            return F.cross_entropy(logits, labels / labels.sum(-1, keepdim=True).clamp_min(1e-12))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype)) * A

    def _wpa_loss(self, x: Tensor, joint: Tensor, T: int, itm_labels: Tensor) -> Tensor:
        """Word-patch alignment on the ITM rows (:func:`~minivlm.objectives.wpa_loss`); as in
        the paper's code, the text [CLS], the last real text token ([SEP]) and the image CLS
        do not take part."""
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
        """Build a ViLT with the config and weights of a Hugging Face ``ViltModel`` (or a
        ``Vilt...For...`` task model, its head copied too; details in
        :func:`minivlm.interop.vilt.vilt_from_hf`)."""
        from minivlm.interop.vilt import vilt_from_hf

        return vilt_from_hf(cls, ViLTConfig, model)

