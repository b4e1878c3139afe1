"""One training step of every course model: minivlm versus its reference implementation.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/train_step.py              # CPU, size "small"
    python benchmarks/train_step.py --device cuda --size base                 # a GPU
    python benchmarks/train_step.py --device cpu --quick                      # dry run (seconds)

For each model the reference (``transformers``) is built first from one shared size (width,
depth, heads, image, vocabulary, batch: :data:`SIZES`) with dropout off, and minivlm's model is
copied from it with ``from_hf``: same config, same weights, same batch, same parameters
trainable (the parts the lecture freezes are frozen on both sides and the counts compared).
A step is forward with the model's own training loss, backward and AdamW. Both first losses
are printed: they agree, which shows the two steps compute the same thing.

Timing interleaves the two implementations (each repeat times ``--steps`` steps of one, then
of the other, the order alternating) and reports medians over repeats, so load from other
processes hits both alike. FLOPs of one step (forward + backward) are counted with
``torch.utils.flop_counter``; the achieved FLOP/s is compared with the machine's matmul peak,
measured here by timing large matrix products in the same precision. On a CPU, FLOP/s are per
second of this process's CPU time (insensitive to waiting for a core on a shared machine; the
peak is measured the same way); on a GPU, per second of wall time.

Precisions: ``fp32`` (on CUDA with TF32 matmuls) and ``bf16`` (autocast; weights, optimizer
and reductions stay fp32; fused AdamW). bf16 runs where the device has it natively
(:func:`minivlm.train.fast.bf16_support`); elsewhere the row says why it was not run, unless
``--emulate-bf16`` forces it (slow: for checking the path, not for speed).

A new model plugs in with one entry: a function ``(size, device) -> Pair`` decorated with
``@register("name")`` that builds the reference at ``size``, converts it and returns the two
loss closures (see :func:`clip` for the smallest one).
"""

from __future__ import annotations

import argparse
import copy
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minivlm.train.fast import bf16_support, fused_adamw_ok
from minivlm.utils import atomic_write, count_parameters, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling clip_train module
import clip_train  # noqa: E402

# --------------------------------------------------------------------------- sizes and registry


@dataclass(frozen=True)
class Size:
    """One size for every model: each tower (vision, text, Q-Former, LM) gets ``depth`` layers
    of width ``dim``; images ``image`` px in ``patch`` px patches; ``text_len`` text tokens."""

    dim: int
    depth: int
    heads: int
    mlp: int
    image: int
    patch: int
    vocab: int
    text_len: int
    batch: int
    queries: int  # BLIP-2 queries / Flamingo resampler latents


SIZES = {
    "quick": Size(dim=32, depth=2, heads=2, mlp=64, image=32, patch=8, vocab=100, text_len=10,
                  batch=2, queries=4),
    # the CPU table: 64 image patches + 32 text tokens, width 256, 4 layers per tower
    "small": Size(dim=256, depth=4, heads=4, mlp=1024, image=64, patch=8, vocab=1024, text_len=32,
                  batch=16, queries=16),
    # a GPU: ViT-B/16-sized towers (196 patches, width 768, 12 layers), 77 text tokens
    "base": Size(dim=768, depth=12, heads=12, mlp=3072, image=224, patch=16, vocab=32000,
                 text_len=77, batch=32, queries=32),
}  # fmt: skip


@dataclass
class Pair:
    """The two sides of one benchmark row; ``ref`` None when no reference exists."""

    ours: nn.Module
    ours_loss: Callable[[], Tensor]
    ref: nn.Module | None
    ref_loss: Callable[[], Tensor] | None
    reference: str  # what the reference is (or why there is none)


Builder = Callable[[Size, torch.device], Pair]
MODELS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        if name in MODELS:
            raise ValueError(f"train_step: model {name!r} is registered twice")
        MODELS[name] = fn
        return fn

    return deco


# --------------------------------------------------------------------------- helpers


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _text(s: Size, device: torch.device, T: int | None = None, low: int = 4,
          high: int | None = None, seed: int = 1) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Right-padded token ids (B, T) in [low, high) and their 0/1 mask; row lengths T/2..T."""
    T = T or s.text_len
    g = _gen(seed)
    ids = torch.randint(low, high or s.vocab, (s.batch, T), generator=g)
    lengths = torch.randint(T // 2, T + 1, (s.batch,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    return (ids * mask).to(device), mask.to(device)


def _images(s: Size, device: torch.device, *lead: int, seed: int = 2) -> Tensor:
    return torch.randn(*(lead or (s.batch,)), 3, s.image, s.image, generator=_gen(seed)).to(device)


def _freeze(model: nn.Module, keep: Callable[[str], bool]) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(keep(name))


def _same_trainable(pair: Pair, name: str) -> Pair:
    """Refuse to compare steps that update different numbers of parameters."""
    if pair.ref is not None:
        a = count_parameters(pair.ours, trainable_only=True)
        b = count_parameters(pair.ref, trainable_only=True)
        if a != b:
            raise RuntimeError(f"train_step[{name}]: minivlm trains {a:,} parameters, the "
                               f"reference {b:,}; the freezing rules differ")  # fmt: skip
    return pair


def _storages(model: nn.Module) -> set[int]:
    tensors = [*model.parameters(), *model.buffers()]
    return {t.untyped_storage().data_ptr() for t in tensors if t.numel()}


def _convert(hf: nn.Module, cls: Any, device: torch.device, **kw: Any) -> tuple[nn.Module, ...]:
    """``cls.from_hf(hf)``, both on ``device`` in training mode; they must share no tensor
    (else one side's optimizer step would change the other's weights)."""
    ours = cls.from_hf(hf, **kw)
    if _storages(ours) & _storages(hf):
        raise RuntimeError(f"train_step: {cls.__name__}.from_hf shares tensors with the "
                           "reference model; it must copy them")  # fmt: skip
    return hf.to(device).train(), ours.to(device).train()


# --------------------------------------------------------------------------- the models


@register("clip")
def clip(s: Size, device: torch.device) -> Pair:
    from transformers import CLIPConfig, CLIPModel

    from minivlm.models.clip import CLIP

    torch.manual_seed(0)
    tower = dict(hidden_size=s.dim, intermediate_size=s.mlp, num_hidden_layers=s.depth,
                 num_attention_heads=s.heads)  # fmt: skip
    cfg = CLIPConfig(
        vision_config=dict(tower, image_size=s.image, patch_size=s.patch),
        text_config=dict(tower, vocab_size=s.vocab, max_position_embeddings=s.text_len,
                         eos_token_id=2, bos_token_id=1, pad_token_id=0),
        projection_dim=s.dim, attn_implementation="sdpa",
    )  # fmt: skip
    hf, ours = _convert(CLIPModel(cfg), CLIP, device)
    b = clip_train.make_batch(hf, s.batch, device, seed=1)
    return Pair(
        ours, lambda: ours(b["pixel_values"], b["input_ids"], b["attention_mask"]).loss,
        hf, lambda: hf(**b, return_loss=True).loss,
        "transformers CLIPModel (SDPA): contrastive loss",
    )  # fmt: skip


@register("vilt")
def vilt(s: Size, device: torch.device) -> Pair:
    from transformers import ViltConfig, ViltForMaskedLM

    from minivlm.models.vilt import ViLT

    torch.manual_seed(0)
    cfg = ViltConfig(vocab_size=s.vocab, hidden_size=s.dim, num_hidden_layers=s.depth,
                     num_attention_heads=s.heads, intermediate_size=s.mlp, image_size=s.image,
                     patch_size=s.patch, max_position_embeddings=s.text_len,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    hf, ours = _convert(ViltForMaskedLM(cfg), ViLT, device)
    ids, mask = _text(s, device)
    px = _images(s, device)
    g = _gen(3)
    labels = torch.where((torch.rand(ids.shape, generator=g) < 0.15).to(device) & (mask == 1),
                         ids, torch.full_like(ids, -100))  # fmt: skip
    labels[:, 1] = ids[:, 1]  # at least one target per row
    return Pair(
        ours, lambda: ours(ids, px, mask, mlm_labels=labels).loss,
        hf, lambda: hf(input_ids=ids, attention_mask=mask, pixel_values=px, labels=labels).loss,
        "transformers ViltForMaskedLM (eager attention: it has no SDPA path): MLM loss",
    )  # fmt: skip


@register("albef")
def albef(s: Size, device: torch.device) -> Pair:
    import minivlm

    torch.manual_seed(0)
    tower = dict(dim=s.dim, depth=s.depth, num_heads=s.heads, mlp_hidden=s.mlp)
    ours = minivlm.create_model(
        "albef_tiny", vision=dict(tower, image_size=s.image, patch_size=s.patch),
        text=dict(tower, depth=2 * s.depth, vocab_size=s.vocab, max_len=s.text_len),
        fusion_from=s.depth, embed_dim=s.dim, queue_size=4 * s.batch, alpha_warmup_steps=0,
    ).to(device).train()  # fmt: skip
    ids, mask = _text(s, device, low=8)
    ids[:, 0] = 2  # [CLS]
    px = _images(s, device)
    return Pair(ours, lambda: ours(px, ids, mask).loss, None, None,
                "none: ALBEF has no transformers/timm implementation")  # fmt: skip


@register("blip2")
def blip2(s: Size, device: torch.device) -> Pair:
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    from minivlm.models.blip2 import Blip2

    torch.manual_seed(0)
    tower = dict(hidden_size=s.dim, intermediate_size=s.mlp, num_hidden_layers=s.depth,
                 num_attention_heads=s.heads)  # fmt: skip
    image_token = s.vocab - 1
    cfg = Blip2Config(
        vision_config=dict(tower, image_size=s.image, patch_size=s.patch),
        qformer_config=dict(tower, cross_attention_frequency=2, encoder_hidden_size=s.dim,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        text_config=dict(tower, model_type="llama", vocab_size=s.vocab,
                         num_key_value_heads=s.heads, max_position_embeddings=2 * s.text_len
                         + s.queries),
        num_query_tokens=s.queries, image_token_id=image_token,
    )  # fmt: skip
    hf = Blip2ForConditionalGeneration(cfg)
    # stage 2 (§3.3): the image encoder and the LM frozen; queries, Q-Former, projection learn
    _freeze(hf, lambda n: not n.startswith(("vision_model.", "language_model.", "model.vision",
                                            "model.language")))  # fmt: skip
    hf, ours = _convert(hf, Blip2, device)
    ids, mask = _text(s, device, high=image_token)
    px = _images(s, device)
    labels = ids.masked_fill(mask == 0, -100)
    Q = s.queries
    hf_ids = torch.cat([torch.full((s.batch, Q), image_token, device=device), ids], 1)
    hf_mask = torch.cat([torch.ones_like(hf_ids[:, :Q]), mask], 1)
    hf_labels = torch.cat([torch.full_like(hf_ids[:, :Q], -100), labels], 1)
    pair = Pair(
        ours, lambda: ours.stage2(px, ids, mask, labels=labels).loss,
        hf, lambda: hf(pixel_values=px, input_ids=hf_ids, attention_mask=hf_mask,
                       labels=hf_labels).loss,
        "transformers Blip2ForConditionalGeneration, Llama LM: stage-2 LM loss",
    )  # fmt: skip
    return _same_trainable(pair, "blip2")


@register("llava")
def llava(s: Size, device: torch.device) -> Pair:
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from minivlm.models.llava import LLaVA

    torch.manual_seed(0)
    tower = dict(hidden_size=s.dim, intermediate_size=s.mlp, num_hidden_layers=s.depth,
                 num_attention_heads=s.heads)  # fmt: skip
    N = (s.image // s.patch) ** 2
    image_token = s.vocab - 1
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(**tower, image_size=s.image, patch_size=s.patch),
        text_config=LlamaConfig(**tower, vocab_size=s.vocab, num_key_value_heads=s.heads,
                                max_position_embeddings=N + s.text_len, pad_token_id=0),
        image_token_index=image_token, vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )  # fmt: skip
    hf = LlavaForConditionalGeneration(cfg)
    _freeze(hf, lambda n: "vision_tower" not in n)  # stage 2 (§4.2): projector and LM learn
    hf, ours = _convert(hf, LLaVA, device)
    ours.freeze_for_stage(2)
    text, tmask = _text(s, device, high=image_token)
    ids = torch.cat([text[:, :2], torch.full((s.batch, N), image_token, device=device),
                     text[:, 2:]], 1)  # fmt: skip
    mask = torch.cat([tmask[:, :2], torch.ones_like(ids[:, :N]), tmask[:, 2:]], 1)
    labels = ids.masked_fill((mask == 0) | (ids == image_token), -100)
    px = _images(s, device)
    pair = Pair(
        ours, lambda: ours(ids, px, mask, labels=labels).loss,
        hf, lambda: hf(input_ids=ids, pixel_values=px, attention_mask=mask, labels=labels).loss,
        "transformers LlavaForConditionalGeneration (CLIP ViT + Llama): LM loss",
    )  # fmt: skip
    return _same_trainable(pair, "llava")


@register("mae")
def mae(s: Size, device: torch.device) -> Pair:
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    from minivlm.models.mae import MAE

    torch.manual_seed(0)
    cfg = ViTMAEConfig(image_size=s.image, patch_size=s.patch, hidden_size=s.dim,
                       num_hidden_layers=s.depth, num_attention_heads=s.heads,
                       intermediate_size=s.mlp, decoder_hidden_size=s.dim // 2,
                       decoder_num_hidden_layers=max(1, s.depth // 2),
                       decoder_num_attention_heads=s.heads, decoder_intermediate_size=s.mlp // 2,
                       mask_ratio=0.75, norm_pix_loss=True)  # fmt: skip
    hf, ours = _convert(ViTMAEForPreTraining(cfg), MAE, device)
    px = _images(s, device)
    noise = torch.rand(s.batch, (s.image // s.patch) ** 2, generator=_gen(3)).to(device)
    return Pair(ours, lambda: ours(px, noise=noise).loss,
                hf, lambda: hf(px, noise=noise).loss,
                "transformers ViTMAEForPreTraining: masked-pixel loss")  # fmt: skip


@register("beit")
def beit(s: Size, device: torch.device) -> Pair:
    from transformers import BeitConfig, BeitForMaskedImageModeling

    from minivlm.models.beit import Beit, blockwise_mask_batch

    torch.manual_seed(0)
    cfg = BeitConfig(image_size=s.image, patch_size=s.patch, hidden_size=s.dim,
                     num_hidden_layers=s.depth, num_attention_heads=s.heads,
                     intermediate_size=s.mlp, vocab_size=s.vocab, use_mask_token=True,
                     use_shared_relative_position_bias=True, drop_path_rate=0.0,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    hf, ours = _convert(BeitForMaskedImageModeling(cfg), Beit, device)
    grid = s.image // s.patch
    px = _images(s, device)
    masked = blockwise_mask_batch(s.batch, grid, 0.4, seed=0, min_block=2).to(device)
    labels = torch.randint(0, s.vocab, (s.batch, grid * grid), generator=_gen(3)).to(device)
    return Pair(ours, lambda: ours(px, masked, labels).loss,
                hf, lambda: hf(px, bool_masked_pos=masked, labels=labels[masked]).loss,
                "transformers BeitForMaskedImageModeling: masked-token loss")  # fmt: skip


@register("flamingo")
def flamingo(s: Size, device: torch.device) -> Pair:
    from transformers import IdeficsConfig, IdeficsForVisionText2Text

    from minivlm.models.flamingo import Flamingo

    torch.manual_seed(0)
    cfg = IdeficsConfig(
        vocab_size=s.vocab, additional_vocab_size=0, hidden_size=s.dim, intermediate_size=s.mlp,
        num_hidden_layers=s.depth, num_attention_heads=s.heads,
        max_position_embeddings=2 * s.text_len, cross_layer_interval=2, use_resampler=True,
        vision_config=dict(embed_dim=s.dim, image_size=s.image, patch_size=s.patch,
                           intermediate_size=s.mlp, num_hidden_layers=s.depth,
                           num_attention_heads=s.heads),
        perceiver_config=dict(use_resampler=True, resampler_n_latents=s.queries,
                              resampler_depth=2, resampler_n_heads=s.heads,
                              resampler_head_dim=s.dim // s.heads),
    )  # fmt: skip
    hf = IdeficsForVisionText2Text(cfg)
    with torch.no_grad():  # open the tanh gates a little (HF starts them at 0) so the image path
        for n, p in hf.named_parameters():  # shapes the loss on both sides
            if "alpha" in n:
                p.fill_(0.5)
    # Flamingo trains the resampler and the gated cross-attention; vision and LM stay frozen
    _freeze(hf, lambda n: "perceiver_resampler" in n or "gated_cross_attn" in n)
    hf, ours = _convert(hf, Flamingo, device)
    ours.freeze_pretrained()
    ids, mask = _text(s, device)
    px = _images(s, device, s.batch, 1)  # (B, 1 image, C, H, W)
    img_mask = torch.ones(s.batch, s.text_len, 1, dtype=torch.long, device=device)
    labels = ids.masked_fill(mask == 0, -100)
    pair = Pair(
        ours, lambda: ours(ids, px, img_mask, attention_mask=mask, labels=labels).loss,
        hf, lambda: hf(input_ids=ids, pixel_values=px, image_attention_mask=img_mask,
                       attention_mask=mask, labels=labels).loss,
        "transformers IdeficsForVisionText2Text: LM loss",
    )  # fmt: skip
    return _same_trainable(pair, "flamingo")


@register("blip")
def blip(s: Size, device: torch.device) -> Pair:
    from transformers import BlipConfig, BlipForImageTextRetrieval

    from minivlm.models.blip import Blip

    torch.manual_seed(0)
    tower = dict(hidden_size=s.dim, intermediate_size=s.mlp, num_hidden_layers=s.depth,
                 num_attention_heads=s.heads)  # fmt: skip
    cfg = BlipConfig(
        vision_config=dict(tower, image_size=s.image, patch_size=s.patch, attention_dropout=0.0),
        text_config=dict(tower, vocab_size=s.vocab, max_position_embeddings=s.text_len,
                         encoder_hidden_size=s.dim, bos_token_id=1, sep_token_id=3,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        image_text_hidden_size=s.dim,
    )  # fmt: skip
    hf, ours = _convert(BlipForImageTextRetrieval(cfg), Blip, device)
    ids, mask = _text(s, device)
    ids[:, 0] = 2  # [CLS]
    px = _images(s, device)
    # ITC (§3.2, in-batch, fixed τ: the retrieval model has none) + ITM on the B pairs and B
    # negatives (each caption with the next image: fixed, so that both sides see the same
    # pairs; BLIP samples hard ones). HF's retrieval model has no decoder, so no LM loss.
    ids2, mask2 = torch.cat([ids, ids]), torch.cat([mask, mask])
    px2 = torch.cat([px, px.roll(1, 0)])
    itm_labels = (torch.arange(2 * s.batch, device=device) < s.batch).long()
    diag = torch.arange(s.batch, device=device)
    tau = 0.07

    def loss(cos: Tensor, itm: Tensor) -> Tensor:  # (B, B) cosines, (2B, 2) ITM logits
        sim = cos.float() / tau
        itc = (F.cross_entropy(sim, diag) + F.cross_entropy(sim.T, diag)) / 2
        return itc + F.cross_entropy(itm.float(), itm_labels)

    def ours_loss() -> Tensor:
        img = F.normalize(ours.encode_image(px), dim=-1)
        txt = F.normalize(ours.encode_text(ids, mask), dim=-1)
        return loss(img @ txt.T, ours.itm_logits(ids2, px2, mask2))

    def ref_loss() -> Tensor:
        cos = hf(input_ids=ids, pixel_values=px, attention_mask=mask, use_itm_head=False)
        itm = hf(input_ids=ids2, pixel_values=px2, attention_mask=mask2, use_itm_head=True)
        return loss(cos.itm_score, itm.itm_score)

    return Pair(ours, ours_loss, hf, ref_loss,
                "transformers BlipForImageTextRetrieval: ITC + ITM (no decoder in this class)")


@register("coca")
def coca(s: Size, device: torch.device) -> Pair:
    import open_clip
    from open_clip.loss import CoCaLoss

    from minivlm.models.coca import CoCa

    torch.manual_seed(0)
    tower = dict(width=s.dim, heads=s.heads, layers=s.depth, mlp_ratio=s.mlp / s.dim)
    text = dict(tower, context_length=s.text_len, vocab_size=s.vocab)
    ref = open_clip.coca_model.CoCa(
        embed_dim=s.dim, multimodal_cfg=text,
        text_cfg=dict(text, embed_cls=True, output_tokens=True),
        vision_cfg=dict(layers=s.depth, width=s.dim, head_width=s.dim // s.heads,
                        mlp_ratio=s.mlp / s.dim, image_size=s.image, patch_size=s.patch,
                        attentional_pool=True, attn_pooler_heads=s.heads,
                        attn_pooler_queries=s.queries, output_tokens=True),
    )  # fmt: skip
    # open_clip leaves the decoder's output projection uninitialised (torch.empty)
    nn.init.normal_(ref.text_decoder.text_projection, std=s.dim**-0.5)
    ours = CoCa.from_open_clip(ref)
    if _storages(ours) & _storages(ref):
        raise RuntimeError("train_step: CoCa.from_open_clip shares tensors with the reference")
    ref, ours = ref.to(device).train(), ours.to(device).train()
    ids, _ = _text(s, device)  # right padding with pad id 0
    px = _images(s, device)
    cfg = ours.config
    criterion = CoCaLoss(caption_loss_weight=cfg.caption_weight,
                         clip_loss_weight=cfg.contrastive_weight, pad_id=cfg.pad_id)

    def ref_loss() -> Tensor:
        out = ref(px, ids)
        return sum(criterion(out["image_features"], out["text_features"], out["logits"],
                             out["labels"], out["logit_scale"]))  # fmt: skip

    return Pair(ours, lambda: ours(px, ids, return_loss=True).loss, ref, ref_loss,
                "open_clip CoCa + CoCaLoss: contrastive + captioning")


@register("qwen2vl")
def qwen2vl(s: Size, device: torch.device) -> Pair:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from minivlm.models.qwen_vl import Qwen2VL, pack_images

    torch.manual_seed(0)
    half = s.dim // s.heads // 2  # M-RoPE: frequency pairs per head split over (t, h, w)
    section = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    img, start, end, video = s.vocab - 1, s.vocab - 2, s.vocab - 3, s.vocab - 4
    N = (s.image // s.patch) ** 2 // 4  # LM tokens per image after the 2x2 merger
    cfg = Qwen2VLConfig(
        vision_config=dict(depth=s.depth, embed_dim=s.dim, hidden_size=s.dim,
                           num_heads=s.heads, mlp_ratio=s.mlp // s.dim, patch_size=s.patch,
                           temporal_patch_size=2, spatial_merge_size=2),
        text_config=dict(vocab_size=s.vocab, hidden_size=s.dim, intermediate_size=s.mlp,
                         num_hidden_layers=s.depth, num_attention_heads=s.heads,
                         num_key_value_heads=s.heads, max_position_embeddings=4 * (N + s.text_len),
                         rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                              mrope_section=section),
                         bos_token_id=1, eos_token_id=2),
        image_token_id=img, video_token_id=video, vision_start_token_id=start,
        vision_end_token_id=end,
    )  # fmt: skip
    hf, ours = _convert(Qwen2VLForConditionalGeneration(cfg), Qwen2VL, device)
    text, tmask = _text(s, device, high=video)
    B = s.batch
    vis = torch.tensor([start] + [img] * N + [end], device=device).expand(B, -1)
    ids = torch.cat([text[:, :2], vis, text[:, 2:]], 1)
    mask = torch.cat([tmask[:, :2], torch.ones_like(vis), tmask[:, 2:]], 1)
    labels = ids.masked_fill((mask == 0) | (ids >= video), -100)
    px, grid = pack_images(list(_images(s, torch.device("cpu"))), s.patch, 2, 2)
    px, grid = px.to(device), grid.to(device)
    return Pair(
        ours, lambda: ours(ids, px, grid, mask, labels=labels).loss,
        hf, lambda: hf(input_ids=ids, attention_mask=mask, pixel_values=px,
                       image_grid_thw=grid, mm_token_type_ids=(ids == img).long(),
                       labels=labels).loss,
        "transformers Qwen2VLForConditionalGeneration: LM loss, everything trained",
    )  # fmt: skip


class _WithHead(nn.Module):
    """A backbone and a linear head on its pooled output (LXMERT's answer classifier)."""

    def __init__(self, body: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.body, self.head = body, head


@register("lxmert")
def lxmert(s: Size, device: torch.device) -> Pair:
    from transformers import LxmertConfig, LxmertModel

    from minivlm.models.lxmert import Lxmert

    torch.manual_seed(0)
    regions = 36  # LXMERT's 36 detected objects per image; features of width dim stand in for
    cfg = LxmertConfig(  # the detector's 2048
        vocab_size=s.vocab, hidden_size=s.dim, num_attention_heads=s.heads,
        intermediate_size=s.mlp, l_layers=s.depth, r_layers=s.depth,
        x_layers=max(1, s.depth // 2), visual_feat_dim=s.dim, visual_pos_dim=4,
        max_position_embeddings=s.text_len, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    hf, body = _convert(LxmertModel(cfg), Lxmert, device)
    head = nn.Linear(s.dim, s.vocab)  # an answer classifier, copied to both sides
    ref = _WithHead(hf, copy.deepcopy(head)).to(device).train()
    ours = _WithHead(body, head).to(device).train()
    ids, mask = _text(s, device)
    g = _gen(3)
    feats = torch.randn(s.batch, regions, s.dim, generator=g).to(device)
    xy = torch.rand(s.batch, regions, 2, generator=g) * 0.5
    boxes = torch.cat([xy, xy + 0.5 * torch.rand(s.batch, regions, 2, generator=g)], -1)
    boxes = boxes.to(device)  # normalised (x1, y1, x2, y2)
    answers = torch.randint(0, s.vocab, (s.batch,), generator=g).to(device)

    def ours_loss() -> Tensor:
        pooled = body(ids, feats, boxes, mask).pooled_output
        return F.cross_entropy(ours.head(pooled), answers)

    def ref_loss() -> Tensor:
        pooled = hf(input_ids=ids, visual_feats=feats, visual_pos=boxes,
                    attention_mask=mask).pooled_output  # fmt: skip
        return F.cross_entropy(ref.head(pooled), answers)

    return Pair(ours, ours_loss, ref, ref_loss,
                "transformers LxmertModel + a linear answer head: answer CE")


@register("vlmo")
def vlmo(s: Size, device: torch.device) -> Pair:
    import minivlm

    torch.manual_seed(0)
    ours = minivlm.create_model(
        "vlmo_tiny", vocab_size=s.vocab, max_text_len=s.text_len, image_size=s.image,
        patch_size=s.patch, dim=s.dim, depth=s.depth, num_heads=s.heads, mlp_hidden=s.mlp,
        vl_layers=max(1, s.depth // 4), embed_dim=s.dim,
    ).to(device).train()  # fmt: skip
    ids, mask = _text(s, device, low=8)
    ids[:, 0] = 2
    px = _images(s, device)
    return Pair(ours, lambda: ours(ids, px, mask).loss, None, None,
                "none: VLMo has no transformers/timm implementation (ITC + ITM + MLM)")


# --------------------------------------------------------------------------- measuring


def make_step(model: nn.Module, loss_fn: Callable[[], Tensor], device: torch.device,
              bf16: bool) -> Callable[[], Tensor]:  # fmt: skip
    """One training step (forward + loss under autocast when ``bf16``, backward, AdamW)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = fused_adamw_ok(device, bf16)
    kw = {"fused": True} if fused else {}
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.05, **kw)

    def step() -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 7) -> float:
    """The best of ``repeats`` timings of an (n x n) @ (n x n) product, in FLOP/s (per CPU
    second on a CPU, per wall second on a GPU)."""
    g = _gen(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    inner = 1 if device.type == "cpu" else 20
    best = 0.0
    for _ in range(repeats + 1):  # the first is a warm-up
        clip_train._sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(inner):
            a @ b
        clip_train._sync(device)
        dt = (time.process_time() - c0) if device.type == "cpu" else time.perf_counter() - t0
        best = max(best, inner * 2 * n**3 / max(dt, 1e-9))
    return best


def peak_memory(step: Callable[[], Tensor], device: torch.device) -> float | None:
    """GiB allocated at the peak of one step beyond what was held before it (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**30


def time_interleaved(steps: dict[str, Callable[[], Tensor]], n: int, repeats: int,
                     device: torch.device) -> dict[str, dict[str, list[float]]]:  # fmt: skip
    """Per-step wall and CPU seconds of each side, one value per repeat, sides alternating."""
    out = {k: {"wall": [], "cpu": []} for k in steps}
    names = list(steps)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            wall, cpu = clip_train.time_steps(steps[name], n, device)
            out[name]["wall"].append(wall)
            out[name]["cpu"].append(cpu)
    return out


def _cpu_and_children() -> float:
    """CPU seconds of this process and its finished children (inductor's C++ compiler runs)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def bench_model(name: str, size: Size, device: torch.device, precision: str,
                args: argparse.Namespace, peak: float | None) -> dict[str, Any]:  # fmt: skip
    pair = MODELS[name](size, device)
    bf16 = precision == "bf16"
    sides = {"minivlm": (pair.ours, pair.ours_loss)}
    if args.compile:  # minivlm's loss closure (forward + loss) compiled; the backward follows
        eager = MODELS[name](size, device)  # the same seed: a second, uncompiled copy
        sides = {"minivlm": (pair.ours, torch.compile(pair.ours_loss)),
                 "minivlm_eager": (eager.ours, eager.ours_loss)}  # fmt: skip
    if pair.ref is not None:
        sides["reference"] = (pair.ref, pair.ref_loss)
    steps = {k: make_step(m, fn, device, bf16) for k, (m, fn) in sides.items()}
    first: dict[str, float] = {}  # each side's first loss, before any weight has changed
    warm: dict[str, dict[str, list[float]]] = {}  # seconds of the first and warm-up steps
    for k, step in steps.items():
        warm[k] = {"wall": [], "cpu": []}
        for i in range(1 + args.warmup):
            clip_train._sync(device)
            t0, c0 = time.perf_counter(), _cpu_and_children()
            loss = float(step())
            clip_train._sync(device)
            warm[k]["wall"].append(time.perf_counter() - t0)
            warm[k]["cpu"].append(_cpu_and_children() - c0)
            if i == 0:
                first[k] = loss
    # FLOPs are counted on an eager step (a compiled graph's kernels bypass the counter)
    count = {k: v for k, v in steps.items() if k != "minivlm" or not args.compile}
    flops = {k: clip_train.count_flops(step) for k, step in count.items()}
    if args.compile:
        flops["minivlm"] = flops["minivlm_eager"]
    mem = {k: peak_memory(step, device) for k, step in steps.items()}
    t = time_interleaved(steps, args.steps, args.repeats, device)
    clock = "cpu" if device.type == "cpu" else "wall"
    row: dict[str, Any] = {
        "model": name, "precision": precision, "reference_impl": pair.reference,
        "reference_attention": getattr(getattr(pair.ref, "config", None),
                                       "_attn_implementation", None),
        "parameters": count_parameters(pair.ours),
        "trainable": count_parameters(pair.ours, trainable_only=True),
        "first_loss": first, "flops_per_step": flops["minivlm"], "flops": flops,
        "compiled": False,
        "clock_for_flops": clock, "times": t,
    }  # fmt: skip
    for k in steps:
        wall = statistics.median(t[k]["wall"])
        per_s = flops["minivlm"] / statistics.median(t[k][clock])  # model FLOPs, both sides
        row[k] = {"steps_per_s": 1 / wall, "step_ms": 1e3 * wall,
                  "steps_per_cpu_s": 1 / statistics.median(t[k]["cpu"]), "flop_per_s": per_s,
                  "fraction_of_peak": per_s / peak if peak else None,
                  "peak_memory_gib": mem[k]}  # fmt: skip
    for other, key in (("reference", "ratio"), ("minivlm_eager", "compile_ratio")):
        if other in steps:  # > 1: (compiled) minivlm is faster than the other side
            for clk in ("wall", "cpu"):
                ratios = [r / m for r, m in zip(t[other][clk], t["minivlm"][clk])]
                row[f"{key}_{clk}"] = statistics.median(ratios)
                row[f"{key}_{clk}_per_repeat"] = ratios
    if args.compile:  # what the first steps cost beyond steady-state ones: the compilation
        row["compiled"] = True
        row["warmup_step_s"] = warm
        for clk, key in (("wall", "compile_s"), ("cpu", "compile_cpu_s")):
            first_steps = warm["minivlm"][clk]
            row[key] = sum(first_steps) - len(first_steps) * statistics.median(t["minivlm"][clk])
    return row


# --------------------------------------------------------------------------- output


def _fmt_row(r: dict[str, Any]) -> str:
    name = f"{r['model']} | {r['precision']}" + (", compiled" if r.get("compiled") else "")
    m, ref = r["minivlm"], r.get("reference")
    pct = f"{100 * m['fraction_of_peak']:.0f}%" if m["fraction_of_peak"] else "-"
    def steps(side: dict[str, Any]) -> str:  # wall (and, on a CPU, per CPU-second)
        cpu = f" / {side['steps_per_cpu_s']:.2f}" if r["clock_for_flops"] == "cpu" else ""
        return f"{side['steps_per_s']:.2f}{cpu}"

    rsteps = steps(ref) if ref else "-"
    ratio = "no reference"
    if ref:  # medians, and the spread of the CPU-time ratio over repeats
        lo, hi = min(r["ratio_cpu_per_repeat"]), max(r["ratio_cpu_per_repeat"])
        ratio = f"{r['ratio_wall']:.2f}x / {r['ratio_cpu']:.2f}x ({lo:.2f}-{hi:.2f})"
    loss = (f"{r['first_loss']['minivlm']:.4f} / {r['first_loss']['reference']:.4f}" if ref
            else f"{r['first_loss']['minivlm']:.4f}")  # fmt: skip
    if m.get("peak_memory_gib") is not None:
        loss += f" (peak memory {m['peak_memory_gib']:.1f} / {ref['peak_memory_gib']:.1f} GiB)" \
            if ref else f" (peak memory {m['peak_memory_gib']:.1f} GiB)"
    return (f"| {name} | {r['parameters'] / 1e6:.1f}M | {r['flops_per_step'] / 1e9:.2f} | "
            f"{steps(m)} | {rsteps} | {ratio} | {m['flop_per_s'] / 1e9:.1f} | {pct} | "
            f"{loss} |")  # fmt: skip


def table(res: dict[str, Any]) -> str:
    cpu = res["device_type"] == "cpu"
    unit = "per CPU-second" if cpu else "per second"
    sps = "steps/s (wall / per CPU-second)" if cpu else "steps/s"
    head = [
        f"Training step, size {res['size_name']} ({res['size']}), {res['device']}, "
        f"{res['threads']} thread(s), torch {res['torch']}, transformers {res['transformers']}; "
        f"medians of {res['repeats']} interleaved repeats of {res['steps']} step(s)",
        "matmul peak measured here: " + ", ".join(
            f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in res["peak_flop_per_s"].items()),
        f"bf16: {res['bf16_note']}",
        "",
        f"| model | precision | params | GFLOP/step | minivlm {sps} | reference {sps} | "
        f"speed vs reference (wall / CPU time (range over repeats)) | minivlm GFLOP/s ({unit}) "
        f"| of matmul peak | "
        f"first loss minivlm / reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    body, skipped = [], {}
    for r in res["rows"]:
        if "skipped" in r:  # one line per precision not run, not one per model
            skipped.setdefault((r["precision"], r["skipped"]), []).append(r["model"])
        else:
            body.append(_fmt_row(r))
    for (prec, why), names in skipped.items():
        body.append(f"| {', '.join(names)} | {prec} | not run: {why} |" + " |" * 7)
    compiled = [r for r in res["rows"] if r.get("compiled")]
    if compiled:
        body += ["", "torch.compile of minivlm's forward + loss (the reference stays eager): "
                 "compilation = the first steps' time beyond steady-state steps; speed-up "
                 "of compiled over eager minivlm, interleaved medians (wall / CPU time):"]
        body += [f"- {r['model']} {r['precision']}: compilation {r['compile_s']:.1f} s "
                 f"({r['compile_cpu_s']:.1f} s of CPU), "
                 f"steady state {r['compile_ratio_wall']:.2f}x / {r['compile_ratio_cpu']:.2f}x"
                 for r in compiled]  # fmt: skip
    return "\n".join(head + body)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=None, help=f"default: all of {list(MODELS)}")
    ap.add_argument("--size", choices=sorted(SIZES), default=None,
                    help="default: small on a CPU, base on a GPU (quick with --quick)")
    ap.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    ap.add_argument("--emulate-bf16", action="store_true",
                    help="run bf16 even where the device has no native bf16 (slow)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per repeat and side")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile minivlm's forward + loss; adds an eager minivlm side "
                         "and reports the compilation time")  # fmt: skip
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--quick", action="store_true",
                    help="dry run: size quick, 1 step x 2 repeats, no warm-up, small peak matmul")
    ap.add_argument("--out", default="runs/train_step", help="folder for the JSON and table")
    args = ap.parse_args(argv)
    models = args.models or list(MODELS)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {list(MODELS)}")
    if args.quick:
        args.size = args.size or "quick"
        args.steps, args.repeats, args.warmup = 1, 2, 0
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU is visible to torch here")
    args.size = args.size or ("base" if device.type == "cuda" else "small")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile and device.type == "cpu":  # compile in this process (no worker pool), so
        import torch._inductor.config as inductor  # its CPU time is this process's

        inductor.compile_threads = 1
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 rows use TF32 tensor cores
        torch.backends.cudnn.allow_tf32 = True
    size = SIZES[args.size]

    native, why = bf16_support(device)
    run_bf16 = native or args.emulate_bf16
    bf16_note = (f"native ({why})" if native else
                 f"no native bf16 here ({why})" + ("; rows run EMULATED (--emulate-bf16), "
                                                    "their speed means nothing"
                                                    if args.emulate_bf16 else "; rows not run"))
    n = (256 if args.quick else 1024) if device.type == "cpu" else 8192
    peaks = {"fp32": matmul_peak(device, torch.float32, n, 3 if args.quick else 7)}
    if "bf16" in args.precision:  # measured even when emulated: it shows why bf16 is not run
        n_bf16 = n if native else 256  # emulated bf16 is ~50x slower here: a small product
        peaks["bf16"] = matmul_peak(device, torch.bfloat16, n_bf16, 3 if args.quick else 7)
    dev_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"{platform.processor() or platform.machine()} CPU")  # fmt: skip
    print(f"device {dev_name}; bf16: {bf16_note}", flush=True)

    rows: list[dict[str, Any]] = []
    res = {
        "size_name": args.size, "size": asdict(size), "device": dev_name,
        "device_type": device.type, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": None, "steps": args.steps,
        "repeats": args.repeats, "warmup": args.warmup, "compile": args.compile,
        "peak_flop_per_s": peaks,
        "bf16_native": native, "bf16_note": bf16_note, "complete": False, "rows": rows,
    }  # fmt: skip
    stem = Path(args.out) / (f"train_step_{args.size}_{device.type}"
                             + ("_compile" if args.compile else ""))  # fmt: skip
    todo = [(p, m) for p in args.precision for m in models]
    for k, (precision, name) in enumerate(todo):
        if precision == "bf16" and not run_bf16:
            rows.append({"model": name, "precision": precision, "skipped": why})
        else:
            rows.append(bench_model(name, size, device, precision, args, peaks.get(precision)))
            print(_fmt_row(rows[-1]), flush=True)
        if "transformers" in sys.modules:
            res["transformers"] = sys.modules["transformers"].__version__
        res["complete"] = k == len(todo) - 1
        text = table(res)  # written after every row: a run stopped at a time limit keeps them
        write_json(stem.with_suffix(".json"), res)
        atomic_write(stem.with_suffix(".md"), lambda p, text=text: p.write_text(text + "\n"))
    print(text)
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
