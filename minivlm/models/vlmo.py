"""VLMo, VL-BEiT and BEiT-3: one Multiway transformer for images, texts and pairs.

VLMo (Bao et al. 2022, "VLMo: Unified Vision-Language Pre-Training with Mixture-of-Modality-
Experts") replaces the separate image and text towers of CLIP/ALBEF by one stack of *MoME*
blocks (§2.1, :class:`~minivlm.nn.blocks.MultiwayBlock`): every token goes through the same
self-attention, then through the feed-forward *expert* of its modality -- V-FFN for image
tokens, L-FFN for text tokens and, in the top F layers of a fused pair only, VL-FFN::

    image   (B, C, H, W) -> [I_CLS; patches] + pos + type[V]                    (B, 1+N, D)
    text    (B, T) ids   -> LN(word + pos) + type[L]                            (B, T, D)
    image-only  : all L layers, every token -> V-FFN            (image encoder)
    text-only   : all L layers, every token -> L-FFN            (text encoder)
    fusion      : [text; image], full attention; layers < L-F: text -> L-FFN, image -> V-FFN;
                  layers >= L-F: every token -> VL-FFN          (fusion encoder)
    ITC  = symmetric InfoNCE on proj(text[T_CLS]) · proj(image[I_CLS]) / τ      (dual mode)
    ITM  = CE(head(tanh(pool(fusion[T_CLS]))), match?) on positives and hard negatives
    MLM  = CE on masked words, fusion mode (text read with the image)

Because the weights are shared, the same model is a *dual encoder* (embed every image once,
rank by cosine: CLIP's cost) and a *fusion encoder* (ViLT's cost and cross-modal attention).
Stage-wise pre-training (§2.3, :meth:`VLMo.set_stage`): image-only masked image modelling
trains attention and V-FFN; text-only MLM then trains L-FFN with the attention **frozen**;
pairs finally train everything. BEiT-3 (Wang et al. 2023, §2.2) keeps the block and uses one
objective, masked data modelling (:meth:`VLMo.mdm`): masked visual tokens (BEiT's, lecture 7)
on images, masked words on texts, both on pairs. VL-BEiT (Bao et al. 2022b) trains the same
three maskings on a shared transformer.

Positions (``VLMoConfig.position``). ``"absolute"`` (default): learned tables added to the
embeddings, as VLMo §2.1 writes its input representations and as BEiT-3 does (one table per
modality). ``"relative"``: what VLMo's released Base/Large code runs instead, no absolute tables
at all but a learned score per layer and head added to the attention logits
(:class:`MultiwayPositionBias`): BEiT's 2-D table over patch offsets (dy, dx) for image tokens,
a 1-D table over word offsets for text tokens (each with 3 rows for its CLS), and one score each
for text -> image and image -> text in a fused pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from minivlm.nn.attention import padding_mask
from minivlm.nn.bert import BertMLMHead, check_len, embedding_layer, init_weights
from minivlm.nn.blocks import MultiwayBlock
from minivlm.nn.config import divisible, in_vocab, one_of
from minivlm.nn.relpos import MultiwayPositionBias
from minivlm.nn.vit import ViTSizes
from minivlm.objectives import (
    mask_tokens,
    masked_cross_entropy,
    same_pair_mask,
    sample_hard_negatives,
)
from minivlm.utils import raise_first

Tensor = torch.Tensor

__all__ = ["EXPERTS", "VISION", "LANGUAGE", "VL", "STAGES", "MultiwayPositionBias", "VLMo",
           "VLMoConfig", "VLMoOutput", "itc_loss", "stage_plan"]  # fmt: skip

VISION, LANGUAGE, VL = 0, 1, 2  # expert ids: V-FFN, L-FFN, VL-FFN (also the modality types)
EXPERTS = ("V-FFN", "L-FFN", "VL-FFN")
STAGES = ("image", "text", "pair")


@dataclass
class VLMoConfig(ViTSizes):
    """Sizes of VLMo (defaults: VLMo-Base, §3.1: ViT-B/16 width and depth at 224 px, the
    :class:`~minivlm.nn.vit.ViTSizes` defaults, BERT's uncased vocabulary, 40 text positions,
    VL-FFN in the top ``vl_layers`` = 2 of 12 layers, layer scale 0.1 as BEiT). ``embed_dim``:
    ITC projection size; ``visual_vocab_size``: the visual tokens of masked image modelling
    (BEiT's 8,192; 0 = no MIM head);
    ``mask_token_id`` / ``special_token_ids``: the tokenizer's [MASK] and the ids MLM never
    masks (BERT's by default); ``mlm_prob``: masked fraction of words in pair pre-training;
    ``position``: ``"absolute"`` or ``"relative"`` (see the module docstring).

    Parameter count of ``vlmo_base`` (the paper quotes 175M for VLMo-Base; it gives no
    breakdown, so the count is derived from the sizes above): a layer has shared attention
    4·768² + 4·768 and LayerNorm 2·768 (2,363,904), and per expert LayerNorm + MLP
    2·768·3072 + 3072 + 3·768 (4,723,968): 10 layers with V/L-FFN (11,811,840 each) and 2 with
    V/L/VL-FFN (16,535,808 each) = 151,208,448; embeddings: words 30,522·768 + 40 positions
    + LayerNorm (23,473,152), patch conv 3·16²·768 + 768, CLS, 197 positions, [M], 2 modality
    rows (744,960), final LayerNorm (1,536): **175,428,096**. The pre-training heads add
    8,694,077 (ITC projections 2·768², temperature, ITM pooler and classifier, MLM transform
    (decoder tied to the words) and the 8,192-way MIM classifier): 184,122,173 in all. With
    ``position="relative"`` the 197 + 40 position rows (182,016) give way to 12 layers x 12 heads
    x (27² + 3 image + 2·40 text + 2 cross = 814 rows) = 117,216: 175,363,296 without heads.
    """

    vocab_size: int = 30522
    max_text_len: int = 40
    pad_id: int = 0
    vl_layers: int = 2
    layer_scale: float = 0.1
    embed_dim: int = 768
    temp: float = 0.07
    visual_vocab_size: int = 8192
    mask_token_id: int = 103
    special_token_ids: tuple[int, ...] = (0, 100, 101, 102, 103)
    mlm_prob: float = 0.15
    position: str = "absolute"

    def __post_init__(self) -> None:
        checks = [
            divisible(self, "dim", "num_heads"),
            (0 <= self.vl_layers <= self.depth,
             f"vl_layers must be in 0..depth={self.depth}, got {self.vl_layers}"),
            divisible(self, "image_size", "patch_size"),
            in_vocab(self, "mask_token_id", self.vocab_size),
            one_of(self, "position", ("absolute", "relative")),
            (self.position == "absolute" or self.max_text_len >= 2,
             f"position='relative' needs max_text_len >= 2 (CLS + a word), got "
             f"{self.max_text_len}"),
        ]  # fmt: skip
        raise_first("VLMoConfig: ", checks)

    @property
    def vl_from(self) -> int:
        """Index of the first layer with a VL-FFN (L - F)."""
        return self.depth - self.vl_layers


@dataclass
class VLMoOutput:
    """``loss`` = sum of the parts given; ``hidden`` the final (normed) tokens of the last
    encoder run; ``routes`` one (T,) or (B, T) expert-id tensor per layer of that run;
    ``attentions`` one (B, H, T, T) map per layer with ``need_weights``."""

    loss: Tensor | None = None
    loss_itc: Tensor | None = None
    loss_itm: Tensor | None = None
    loss_mlm: Tensor | None = None
    loss_mim: Tensor | None = None
    hidden: Tensor | None = None
    routes: list[Tensor] | None = None
    attentions: list[Tensor] | None = None
    itm_logits: Tensor | None = None
    mlm_logits: Tensor | None = None
    mim_logits: Tensor | None = None


def itc_loss(text_feat: Tensor, image_feat: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE (VLMo §2.2, as CLIP): normalised (B, E) features, pair i matches i."""
    logits = logit_scale.exp() * F.normalize(text_feat, dim=-1) @ F.normalize(image_feat, dim=-1).T
    labels = torch.arange(len(logits), device=logits.device)  # (B,)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def stage_plan(names: list[str], stage: str) -> dict[str, bool]:
    """Which parameters train in each stage of VLMo's pre-training (§2.3), by name:

    * ``"image"``: image embeddings, the shared attention (with its LayerNorm, layer scale and
      the final LayerNorm), V-FFN, the MIM head, the image rows of a relative position bias;
    * ``"text"``: word embeddings, L-FFN, the MLM head, the text rows of a relative position bias
      (VLMo's code trains its bias table in the text stage) -- the attention and V-FFN stay frozen;
    * ``"pair"``: everything (the only stage with text -> image bias scores).

    The modality-type table (one row per modality) trains in both unimodal stages; the ITC/ITM
    heads only with pairs. Expert e of block i is ``blocks.i.ffns.e`` and ``blocks.i.norms.e``.
    """
    if stage not in STAGES:
        raise ValueError(f"VLMo.set_stage: stage must be one of {STAGES}, got {stage!r}")
    image = ("patch_embed", "cls_token", "pos_embed", "mask_embed", "mim_head", "rel_pos.image")
    text = ("text_embeddings", "mlm_head", "rel_pos.text")
    out = {}
    for name in names:
        parts = name.split(".")
        block = parts[0] == "blocks"
        expert = int(parts[3]) if block and parts[2] in ("ffns", "norms") else None
        shared = name.startswith("norm.") or (block and expert is None)  # attention, γ, LN
        both = name.startswith("modality")
        if stage == "pair":
            out[name] = True
        elif stage == "image":
            out[name] = name.startswith(image) or expert == VISION or shared or both
        else:
            out[name] = name.startswith(text) or expert == LANGUAGE or both
    return out


class VLMo(nn.Module):
    """Multiway transformer with the three uses of VLMo (§2.1) and BEiT-3's MDM (§2.2)."""

    def __init__(self, config: VLMoConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = replace(config or VLMoConfig(), **overrides)
        self.config = cfg
        D = cfg.dim
        # text: BERT's embedding layer (word + position, LayerNorm): a BertEncoder of 0 layers
        self.text_embeddings = embedding_layer(cfg, type_vocab_size=0)
        # image: ViT's patch embedding, CLS, positions, and BEiT's [M] embedding for MIM
        self.patch_embed = nn.Conv2d(cfg.in_chans, D, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        rel = cfg.position == "relative"
        self.pos_embed = None if rel else nn.Parameter(torch.zeros(1, 1 + cfg.num_patches, D))
        self.mask_embed = nn.Parameter(torch.zeros(1, 1, D))
        self.modality_embeddings = nn.Embedding(2, D)  # row VISION = 0, row LANGUAGE = 1
        self.blocks = nn.ModuleList(
            MultiwayBlock(D, cfg.num_heads, 3 if i >= cfg.vl_from else 2, mlp_hidden=cfg.mlp_hidden,
                          act=cfg.act, eps=cfg.eps, layer_scale=cfg.layer_scale)
            for i in range(cfg.depth)
        )  # fmt: skip
        self.norm = nn.LayerNorm(D, eps=cfg.eps)
        # relative: no absolute tables at all (VLMo's code); the bias carries every position
        self.rel_pos = MultiwayPositionBias(cfg) if rel else None
        if rel:
            self.text_embeddings.position_embeddings = None
        # heads: ITC projections and temperature, ITM pooler + classifier, MLM (tied), MIM
        self.text_proj = nn.Linear(D, cfg.embed_dim, bias=False)
        self.image_proj = nn.Linear(D, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temp)))
        self.pooler = nn.Linear(D, D)
        self.itm_head = nn.Linear(D, 2)
        self.mlm_head = BertMLMHead(D, cfg.vocab_size, act=cfg.act, eps=cfg.eps)
        self.mim_head = nn.Linear(D, cfg.visual_vocab_size) if cfg.visual_vocab_size else None
        init_weights(self)
        for p in (self.cls_token, self.pos_embed, self.mask_embed):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        self.mlm_head.tie_weights(self.text_embeddings.word_embeddings)

    # -- embeddings ---------------------------------------------------------

    def embed_text(self, input_ids: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, D): LN(word + position) + type[L] (LN(word) + type[L] with
        relative positions)."""
        te = self.text_embeddings
        if self.rel_pos is None:
            x = te.embed(input_ids)  # (B, T, D)
        else:
            check_len("VLMo", input_ids.shape[-1], te.config)
            x = te.embed_drop(te.embed_norm(te.word_embeddings(input_ids)))  # (B, T, D)
        return x + self.modality_embeddings.weight[LANGUAGE]

    def embed_image(self, pixel_values: Tensor, bool_masked_pos: Tensor | None = None) -> Tensor:
        """(B, C, H, W) -> (B, 1+N, D); patches where ``bool_masked_pos`` (B, N) is True are
        replaced by the [M] embedding before the positions are added (BEiT §2.3)."""
        cfg = self.config
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (
                cfg.in_chans, cfg.image_size, cfg.image_size):
            raise ValueError(f"VLMo: expected pixel_values of shape (B, {cfg.in_chans}, "
                             f"{cfg.image_size}, {cfg.image_size}), got "
                             f"{tuple(pixel_values.shape)}")  # fmt: skip
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)  # (B, N, D)
        if bool_masked_pos is not None:
            if tuple(bool_masked_pos.shape) != x.shape[:2]:
                raise ValueError(f"VLMo: expected bool_masked_pos of shape {tuple(x.shape[:2])}"
                                 f" (one flag per patch), got {tuple(bool_masked_pos.shape)}")
            x = torch.where(bool_masked_pos[..., None].bool(), self.mask_embed.to(x.dtype), x)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)  # (B, 1+N, D)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return x + self.modality_embeddings.weight[VISION]  # (B, 1+N, D)

    # -- the encoder, one routing per use ------------------------------------

    def routes(self, T: int, N1: int, mode: str) -> list[Tensor]:
        """Expert id per position (T + N1,) for each layer: ``"fusion"`` (text L, image V
        below layer L-F, VL above) or ``"dual"`` (text L, image V everywhere)."""
        if mode not in ("fusion", "dual"):
            raise ValueError(f"VLMo: mode must be 'fusion' or 'dual', got {mode!r}")
        split = torch.tensor([LANGUAGE] * T + [VISION] * N1)  # (T+1+N,)
        vl = torch.full((T + N1,), VL)
        return [vl if (mode == "fusion" and i >= self.config.vl_from) else split
                for i in range(self.config.depth)]  # fmt: skip

    def run(self, x: Tensor, routes: list[int | Tensor], mask: Tensor | None = None,
            need_weights: bool = False, T: int = 0) -> VLMoOutput:  # fmt: skip
        """The blocks with one route per layer, then the final LayerNorm: (B, L, D). ``x`` holds
        T text tokens, then image tokens (for the relative position bias); ``mask``: boolean
        (B, 1, 1, L) or (B, L, L), True = may attend."""
        attns: list[Tensor] | None = [] if need_weights else None
        masks = [mask] * len(self.blocks)
        if self.rel_pos is not None:  # additive float masks: bias, -inf where not allowed
            bias = self.rel_pos(T, x.shape[1] - T)  # (depth, H, L, L)
            keep = None if mask is None else (mask if mask.dim() == 4 else mask[:, None])
            masks = [b[None] if keep is None else b[None].masked_fill(~keep, float("-inf"))
                     for b in bias]  # fmt: skip
        for blk, route, m in zip(self.blocks, routes, masks, strict=True):
            x = blk(x, route, mask=m, need_weights=need_weights)
            if attns is not None:
                attns.append(blk.last_attn)
        routes_t = [torch.as_tensor(r).expand(x.shape[1]) if torch.as_tensor(r).dim() == 0
                    else torch.as_tensor(r) for r in routes]  # fmt: skip
        return VLMoOutput(hidden=self.norm(x), routes=routes_t, attentions=attns)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                    need_weights: bool = False) -> VLMoOutput:  # fmt: skip
        """Text-only use: every layer's L-FFN; hidden (B, T, D)."""
        mask = None if attention_mask is None else padding_mask(attention_mask)
        return self.run(self.embed_text(input_ids), [LANGUAGE] * self.config.depth, mask,
                        need_weights, T=input_ids.shape[1])  # fmt: skip

    def encode_image(self, pixel_values: Tensor, bool_masked_pos: Tensor | None = None,
                     need_weights: bool = False) -> VLMoOutput:  # fmt: skip
        """Image-only use: every layer's V-FFN; hidden (B, 1+N, D)."""
        return self.run(self.embed_image(pixel_values, bool_masked_pos),
                        [VISION] * self.config.depth, None, need_weights)  # fmt: skip

    def encode_pair(self, input_ids: Tensor, pixel_values: Tensor,
                    attention_mask: Tensor | None = None, mode: str = "fusion",
                    bool_masked_pos: Tensor | None = None,
                    need_weights: bool = False) -> VLMoOutput:  # fmt: skip
        """[text; image] through one stack, hidden (B, T+1+N, D). ``"fusion"``: full attention,
        VL-FFN in the top F layers. ``"dual"``: each modality attends only to itself and keeps
        its own expert, so the result equals :meth:`encode_text` and :meth:`encode_image`."""
        if len(input_ids) != len(pixel_values):
            raise ValueError(f"VLMo: input_ids hold {len(input_ids)} captions but pixel_values "
                             f"{len(pixel_values)} images; pass one image per caption")
        text, image = self.embed_text(input_ids), self.embed_image(pixel_values, bool_masked_pos)
        B, T, N1 = len(text), text.shape[1], image.shape[1]
        keys = torch.ones(B, T + N1, dtype=torch.bool, device=text.device)
        if attention_mask is not None:
            keys[:, :T] = attention_mask.bool()
        mask = keys[:, None, :].expand(B, T + N1, T + N1)  # (B, L, L) query row may see key col
        if mode == "dual":
            is_text = torch.arange(T + N1, device=text.device) < T  # (L,)
            mask = mask & (is_text[:, None] == is_text[None, :])  # block-diagonal
        return self.run(torch.cat([text, image], dim=1), self.routes(T, N1, mode), mask,
                        need_weights, T=T)  # fmt: skip

    # -- the two scoring modes ---------------------------------------------

    def text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Dual mode, text side: proj(text[T_CLS]) (B, E), unnormalised."""
        return self.text_proj(self.encode_text(input_ids, attention_mask).hidden[:, 0])

    def image_features(self, pixel_values: Tensor) -> Tensor:
        """Dual mode, image side: proj(image[I_CLS]) (B, E), unnormalised."""
        return self.image_proj(self.encode_image(pixel_values).hidden[:, 0])

    def itm_logits(self, input_ids: Tensor, pixel_values: Tensor,
                   attention_mask: Tensor | None = None) -> Tensor:  # fmt: skip
        """Fusion mode: (B, 2) match logits (column 1 = match) from the fused T_CLS."""
        h = self.encode_pair(input_ids, pixel_values, attention_mask).hidden
        return self.itm_head(torch.tanh(self.pooler(h[:, 0])))

    # -- pre-training ------------------------------------------------------------

    def forward(self, input_ids: Tensor, pixel_values: Tensor,
                attention_mask: Tensor | None = None, index: Tensor | None = None,
                mlm_input_ids: Tensor | None = None, mlm_labels: Tensor | None = None,
                generator: torch.Generator | None = None) -> VLMoOutput:  # fmt: skip
        """Pair stage (§2.2): ITC in dual mode; ITM on B positives + 2B hard negatives
        (drawn ∝ exp(ITC similarity), never a duplicate pair: ``index`` (B,) image ids);
        MLM on the masked captions with their images. The three fusion batches run as one.
        input_ids (B, T), pixel_values (B, C, H, W), attention_mask (B, T) 1/0. MLM masks
        ``mlm_prob`` of the words (BERT's 80/10/10) unless ``mlm_input_ids`` and ``mlm_labels``
        (B, T) give another masking (-100 = not scored)."""
        cfg = self.config
        B = len(input_ids)
        am = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
        t_feat, i_feat = self.text_features(input_ids, am), self.image_features(pixel_values)
        loss_itc = itc_loss(t_feat, i_feat, self.logit_scale)
        with torch.no_grad():
            sim = F.normalize(i_feat, dim=-1) @ F.normalize(t_feat, dim=-1).T  # (B, B) i2t
            same = same_pair_mask(input_ids, am, index, where="VLMo.forward")
            neg_text, neg_image = sample_hard_negatives(sim, sim.T, same, generator)
        if (mlm_input_ids is None) != (mlm_labels is None):
            raise ValueError("VLMo.forward: pass mlm_input_ids and mlm_labels together")
        if mlm_input_ids is None:
            masked, mlm_labels = mask_tokens(input_ids, cfg.mask_token_id, cfg.vocab_size,
                                             cfg.special_token_ids, cfg.mlm_prob, generator)
        elif mlm_input_ids.shape != input_ids.shape or mlm_labels.shape != input_ids.shape:
            raise ValueError(f"VLMo.forward: expected mlm_input_ids and mlm_labels of shape "
                             f"{tuple(input_ids.shape)} like input_ids")
        else:
            masked = mlm_input_ids
        ids = torch.cat([input_ids, input_ids[neg_text], input_ids, masked])  # (4B, T)
        ams = torch.cat([am, am[neg_text], am, am])
        px = torch.cat([pixel_values, pixel_values, pixel_values[neg_image], pixel_values])
        h = self.encode_pair(ids, px, ams).hidden  # (4B, T+1+N, D)
        itm = self.itm_head(torch.tanh(self.pooler(h[: 3 * B, 0])))  # (3B, 2)
        itm_labels = torch.cat([torch.ones(B), torch.zeros(2 * B)]).long().to(itm.device)
        mlm_logits = self.mlm_head(h[3 * B:, : ids.shape[1]])  # (B, T, vocab)
        out = VLMoOutput(loss_itc=loss_itc, loss_itm=F.cross_entropy(itm, itm_labels),
                         loss_mlm=masked_cross_entropy(mlm_logits, mlm_labels), itm_logits=itm,
                         mlm_logits=mlm_logits)  # fmt: skip
        out.loss = out.loss_itc + out.loss_itm + out.loss_mlm
        return out

    def mdm(self, input_ids: Tensor | None = None, pixel_values: Tensor | None = None,
            attention_mask: Tensor | None = None, mlm_labels: Tensor | None = None,
            bool_masked_pos: Tensor | None = None, image_labels: Tensor | None = None,
            need_weights: bool = False) -> VLMoOutput:  # fmt: skip
        """BEiT-3's masked data modelling (§2.2) on whatever is given: text only (MLM, L-FFN
        path; VLMo's text stage), image only (MIM on visual tokens, V-FFN path; VLMo's image
        stage), or a pair (fusion; both losses). ``input_ids`` are already masked,
        ``mlm_labels`` (B, T) hold the hidden ids (-100 elsewhere); ``bool_masked_pos`` (B, N)
        marks masked patches and ``image_labels`` (B, N) their visual-token ids."""
        if input_ids is None and pixel_values is None:
            raise ValueError("VLMo.mdm: pass input_ids (B, T), pixel_values (B, C, H, W) or both")
        if pixel_values is not None and (bool_masked_pos is None) != (image_labels is None):
            raise ValueError("VLMo.mdm: pass bool_masked_pos and image_labels together")
        if image_labels is not None and self.mim_head is None:
            raise ValueError("VLMo.mdm: image_labels given but visual_vocab_size=0 (no MIM head)")
        if input_ids is None:
            out = self.encode_image(pixel_values, bool_masked_pos, need_weights)
            T = 0
        elif pixel_values is None:
            out = self.encode_text(input_ids, attention_mask, need_weights)
            T = input_ids.shape[1]
        else:
            out = self.encode_pair(input_ids, pixel_values, attention_mask, "fusion",
                                   bool_masked_pos, need_weights)  # fmt: skip
            T = input_ids.shape[1]
        losses = []
        if input_ids is not None and mlm_labels is not None:
            out.mlm_logits = self.mlm_head(out.hidden[:, :T])  # (B, T, vocab)
            out.loss_mlm = masked_cross_entropy(out.mlm_logits, mlm_labels)
            losses.append(out.loss_mlm)
        if pixel_values is not None and image_labels is not None:
            out.mim_logits = self.mim_head(out.hidden[:, T + 1:])  # (B, N, visual vocab)
            labels = image_labels.masked_fill(~bool_masked_pos.bool(), -100)
            out.loss_mim = masked_cross_entropy(out.mim_logits, labels)
            losses.append(out.loss_mim)
        if losses:
            out.loss = sum(losses[1:], losses[0])
        return out

    # -- stage-wise pre-training (§2.3) ---------------------------------------------

    def stage_parameters(self, stage: str) -> dict[str, bool]:
        """name -> trainable in ``stage`` (:func:`stage_plan` over this model's parameters)."""
        return stage_plan([n for n, _ in self.named_parameters()], stage)

    def set_stage(self, stage: str) -> list[str]:
        """Set ``requires_grad`` for ``stage`` and return the names of the frozen parameters."""
        plan = self.stage_parameters(stage)
        for name, p in self.named_parameters():
            p.requires_grad_(plan[name])
        return [n for n, on in plan.items() if not on]
