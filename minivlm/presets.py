"""Every preset of every model, in the style of ``timm.create_model``.

    >>> import minivlm
    >>> minivlm.list_models("clip*")
    ['clip_tiny', 'clip_tiny_cnn', 'clip_vit_b16', 'clip_vit_b32', 'clip_vit_l14']
    >>> model = minivlm.create_model("clip_tiny", vocab_size=81, text_depth=2)

A preset is a family (which model class and config it builds, :data:`FAMILIES`) plus the
values that differ from the config's defaults (:data:`PRESETS`). Keyword overrides go through
one router (:func:`preset_config`): a config field, ``<part>_<field>`` for a model made of parts
(``vision_depth=2``, ``text_vocab_size=99``), a nested ``<part>=dict(...)`` merged into the
preset's, or a family's shortcut (``image_size`` goes to the vision part). Published sizes
keep the original's parameter count (the tests count them).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

__all__ = ["FAMILIES", "PRESETS", "create_model", "list_models", "preset_config"]


def _load(path: str) -> Any:
    """``"package.module:attr.sub"`` -> the object (imported on first use)."""
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


@dataclass(frozen=True)
class Lazy:
    """A preset value computed when the model is built, unless an override replaces it."""

    fn: Callable[[], Any]
    about: str


def _shapes_answers() -> int:
    from minivlm.data.shapes import ANSWERS

    return len(ANSWERS)


def _shapes_vocab() -> int:
    from minivlm.data.tokenizer import shapes_tokenizer

    return len(shapes_tokenizer())


@dataclass(frozen=True)
class Family:
    """How a family's presets become a model.

    model / config: ``"module:Name"`` of the model class and its config dataclass.
    parts: part name -> ``"module:builder"`` of the part's config (a model built of parts);
        a preset may name another builder with ``"<part>_builder"``.
    shortcuts: flat key -> the parts it goes to (``image_size`` -> vision).
    optional: parts that may be ``None`` (BLIP-2 without a language model).
    """

    model: str
    config: str
    parts: dict[str, str] = field(default_factory=dict)
    shortcuts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    optional: tuple[str, ...] = ()


_VISION = ("vision",)
_IMAGE = {"image_size": _VISION, "patch_size": _VISION, "in_chans": _VISION}  # ViT input sizes


def _encoders(model: str, config: str, vision: str, text: str) -> Family:
    """An image encoder and a text encoder (ALBEF, BLIP, CoCa): parts ``vision`` and ``text``
    built by the given config builders; ``max_len`` goes to the text part, the ViT input sizes
    to the vision part."""
    return Family(model, config, parts={"vision": vision, "text": text},
                  shortcuts={"max_len": ("text",), **_IMAGE})  # fmt: skip


def _vision_lm(model: str, config: str) -> Family:
    """A CLIP-style ViT feeding a decoder LM (LLaVA, Flamingo): ``vocab_size`` goes to the LM,
    ``image_size`` to the ViT."""
    return Family(model, config,
                  parts={"vision": "minivlm.nn.vit:clip_vision_config",
                         "text": "minivlm.nn.lm:LMConfig"},
                  shortcuts={"vocab_size": ("text",), "image_size": _VISION})  # fmt: skip


FAMILIES: dict[str, Family] = {
    "vit": Family("minivlm.nn.vit:ViT", "minivlm.nn.vit:ViTConfig"),
    "bert": Family("minivlm.nn.bert:BertEncoder", "minivlm.nn.bert:TextConfig"),
    "causal_text": Family(
        "minivlm.nn.causal_text:CausalTextEncoder", "minivlm.nn.bert:TextConfig.clip"
    ),
    "lm": Family("minivlm.nn.lm:DecoderLM", "minivlm.nn.lm:LMConfig"),
    "clip": Family(
        "minivlm.models.clip:CLIP", "minivlm.models.clip:CLIPConfig",
        parts={"vision": "minivlm.nn.vit:clip_vision_config",
               "text": "minivlm.nn.bert:TextConfig.clip"},
        shortcuts={"vocab_size": ("text",), "max_len": ("text",), **_IMAGE},
    ),  # fmt: skip
    "vilt": Family("minivlm.models.vilt:ViLT", "minivlm.models.vilt:ViLTConfig"),
    "albef": _encoders("minivlm.models.albef:ALBEF", "minivlm.models.albef:ALBEFConfig",
                       "minivlm.models.albef:albef_vision_config", "minivlm.nn.bert:TextConfig"),
    "blip": _encoders("minivlm.models.blip:Blip", "minivlm.models.blip:BlipConfig",
                      "minivlm.models.blip:blip_vision_config",
                      "minivlm.models.blip:blip_text_config"),
    "coca": _encoders("minivlm.models.coca:CoCa", "minivlm.models.coca:CoCaConfig",
                      "minivlm.models.coca:coca_vision_config",
                      "minivlm.models.coca:coca_text_config"),
    "blip2": Family(
        "minivlm.models.blip2:Blip2", "minivlm.models.blip2:Blip2Config",
        parts={"vision": "minivlm.models.blip2:blip2_vision_config",
               "qformer": "minivlm.models.blip2:QFormerConfig",
               "lm": "minivlm.nn.lm:LMConfig"},
        shortcuts={**_IMAGE, "num_query_tokens": ("qformer",), "max_len": ("qformer",),
                   "vocab_size": ("qformer", "lm")},
        optional=("lm",),
    ),  # fmt: skip
    "llava": _vision_lm("minivlm.models.llava:LLaVA", "minivlm.models.llava:LlavaConfig"),
    "flamingo": _vision_lm("minivlm.models.flamingo:Flamingo",
                           "minivlm.models.flamingo:FlamingoConfig"),
    "qwen2_vl": Family(
        "minivlm.models.qwen_vl:Qwen2VL", "minivlm.models.qwen_vl:Qwen2VLConfig",
        parts={"lm": "minivlm.nn.lm:MRopeLMConfig"}, shortcuts={"vocab_size": ("lm",)},
    ),
    "mae": Family("minivlm.models.mae:MAE", "minivlm.models.mae:MAEConfig"),
    "beit": Family("minivlm.models.beit:Beit", "minivlm.models.beit:BeitConfig"),
    "resnet": Family("minivlm.nn.convnet:ResNet", "minivlm.nn.convnet:ResNetConfig"),
    "lxmert": Family("minivlm.models.lxmert:Lxmert", "minivlm.models.lxmert:LxmertConfig"),
    "uniter": Family("minivlm.models.uniter:Uniter", "minivlm.models.uniter:UniterConfig"),
    "pixel_bert": Family("minivlm.models.pixel_bert:PixelBert",
                         "minivlm.models.pixel_bert:PixelBertConfig"),
    "vlmo": Family("minivlm.models.vlmo:VLMo", "minivlm.models.vlmo:VLMoConfig"),
}

# the shapes-world text tower of both tiny CLIP presets ([EOS] = 6 in minivlm.data.tokenizer)
_CLIP_TINY_TEXT = dict(
    vocab_size=256, max_len=32, dim=128, depth=3, num_heads=4, mlp_hidden=256, eos_token_id=6
)
# clip_tiny's image encoder (64 px shapes-world images, 8x8 patches of 8 px), also LLaVA's
_CLIP_TINY_VISION = dict(image_size=64, patch_size=8, dim=128, depth=3, num_heads=4,
                         mlp_hidden=256)  # fmt: skip
# Llama-2-7B's shape (Touvron et al. 2023b): 6,738,415,616 parameters
_LLAMA2_7B = dict(vocab_size=32000, dim=4096, depth=32, num_heads=32, num_kv_heads=32,
                  mlp_hidden=11008, max_len=4096, eps=1e-5, pad_id=None, bos_id=1, eos_id=2)

# name -> (family, values that differ from the config's defaults)
_QWEN_TINY_LM = dict(vocab_size=Lazy(_shapes_vocab, "len(shapes_tokenizer())"), dim=64, depth=2,
                     num_heads=4, num_kv_heads=2, mlp_hidden=128, max_len=512, rope_base=10.0,
                     attention_bias=True, out_bias=False, mrope_section=(2, 3, 3))
# Qwen2 LMs: GQA with 2 key/value heads, q/k/v bias, rope_theta 1e6, M-RoPE 16/24/24, tied
_QWEN_LM_BASE = dict(vocab_size=151936, num_kv_heads=2, rope_base=1e6, eps=1e-6,
                     tie_embeddings=True, pad_id=None, bos_id=None, eos_id=None,
                     attention_bias=True, out_bias=False, mrope_section=(16, 24, 24))

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    # ---- ViT (Dosovitskiy et al. 2021)
    # 64x64 shapes-world images: 8x8 grid of 8-px patches, a few seconds per epoch on a CPU
    "vit_tiny_shapes": ("vit", dict(image_size=64, patch_size=8, dim=128, depth=4, num_heads=4)),
    # the published sizes (ViT Table 1); ViT-B/16 has 85.8M parameters without a head
    "vit_b16": ("vit", dict(image_size=224, patch_size=16, dim=768, depth=12, num_heads=12)),
    "vit_b32": ("vit", dict(image_size=224, patch_size=32, dim=768, depth=12, num_heads=12)),
    "vit_l14": ("vit", dict(image_size=224, patch_size=14, dim=1024, depth=24, num_heads=16)),
    # ---- text encoders
    # 2 layers of width 128 (the size of Turc et al. 2019's "BERT-Tiny"), small vocabulary;
    # [PAD] = 0 as in minivlm.data.tokenizer; pass vocab_size=tok.vocab_size
    "bert_tiny": ("bert", dict(vocab_size=1000, max_len=64, dim=128, depth=2, num_heads=2)),
    # BERT-base (Devlin et al. 2019, §3): 110M parameters with the pooler
    "bert_base": ("bert", dict(pooler=True)),
    # [EOS] = 6 in minivlm.data.tokenizer; pass vocab_size=tok.vocab_size
    "causal_text_tiny": ("causal_text", dict(vocab_size=1000, max_len=32, dim=128, depth=2,
                                             num_heads=4, eos_token_id=6)),  # fmt: skip
    # CLIP ViT-B/32's text transformer (63M parameters)
    "causal_text_b": ("causal_text", dict()),
    # ---- decoder-only LMs
    # tiny Llama-style LM for the shapes world (vocab 256 by default; override vocab_size)
    "lm_tiny": ("lm", dict()),
    # build it on the meta device to inspect it without memory:
    # ``with torch.device("meta"): m = create_model("llama2_7b")``
    "llama2_7b": ("lm", _LLAMA2_7B),
    # ---- CLIP (Radford et al. 2021)
    # 64x64 shapes-world images (8x8 patches of 8 px), MLPs 2x wide (not 4x): 14 GFLOP per
    # training step at batch 64 (captions of ~24 tokens), about 0.1 s on 2 CPU cores.
    "clip_tiny": ("clip", dict(vision=_CLIP_TINY_VISION, text=_CLIP_TINY_TEXT, embed_dim=128)),
    # clip_tiny's text tower with a 3-stage CNN image tower (ConvNetConfig; CLIP's ResNets,
    # §2.4, at shapes-world size): it learns shape, which the tiny ViT does not (notebook 01)
    "clip_tiny_cnn": ("clip", dict(
        vision=dict(image_size=64, widths=(32, 32, 64)), text=_CLIP_TINY_TEXT, embed_dim=128,
        vision_builder="minivlm.nn.convnet:ConvNetConfig",
    )),  # fmt: skip
    # the published models (widths and depths: CLIP Table 20); parameters, as counted by
    # transformers.CLIPModel: ViT-B/32 151,277,313, ViT-B/16 149,620,737, ViT-L/14 427,616,513
    "clip_vit_b32": ("clip", dict()),
    "clip_vit_b16": ("clip", dict(vision=dict(patch_size=16))),
    "clip_vit_l14": ("clip", dict(
        vision=dict(patch_size=14, dim=1024, depth=24, num_heads=16),
        text=dict(dim=768, depth=12, num_heads=12), embed_dim=768,
    )),  # fmt: skip
    # ---- ViLT (Kim et al. 2021)
    # shapes world: 64x64 images -> 8x8 patches of 8 px, captions of at most 32 tokens;
    # vocab_size covers minivlm's shapes tokenizer (pass vocab_size=tok.vocab_size);
    # num_answers defaults to the shapes world's answer list (minivlm.data.shapes.ANSWERS).
    "vilt_tiny": ("vilt", dict(
        vocab_size=256, max_text_len=32, image_size=64, patch_size=8, dim=128, depth=4,
        num_heads=4, num_answers=Lazy(_shapes_answers, "len(minivlm.data.shapes.ANSWERS)"),
    )),  # fmt: skip
    # ViLT-B/32 (§4): ViT-B/32 width and depth, 40 text positions, 384 px images. The
    # backbone alone (HF ViltModel(ViltConfig()), pooler included); add heads with
    # create_model("vilt_b32", itm_head=True, mlm_head=True) for pre-training.
    "vilt_b32": ("vilt", dict(itm_head=False, mlm_head=False, num_answers=0)),
    # ---- ALBEF (Li et al. 2021)
    # shapes world: 64x64 images -> 8x8 patches of 8 px; BERT of width 128 with 2 text + 2
    # fusion layers; MLPs 2x wide as in clip_tiny. vocab_size covers minivlm's shapes
    # tokenizer (pass vocab_size=tok.vocab_size), whose [MASK] is 4 and whose special tokens
    # are ids 0..7. α ramps over the first 30 steps (~one epoch of 2000 scenes at batch 64).
    "albef_tiny": ("albef", dict(
        vision=dict(image_size=64, patch_size=8, dim=128, depth=3, num_heads=4, mlp_hidden=256),
        text=dict(vocab_size=256, max_len=64, dim=128, depth=4, num_heads=4, mlp_hidden=256),
        fusion_from=2, embed_dim=64, queue_size=1024, alpha_warmup_steps=30, mask_token_id=4,
        special_token_ids=tuple(range(8)),
    )),  # fmt: skip
    # the paper's model (§4): ViT-B/16 at 256 px + BERT-base (6 text + 6 fusion layers),
    # E = 256, a queue of 65,536; ~210M trainable parameters (plus as many in the EMA copy)
    "albef_base": ("albef", dict()),
    # ---- BLIP (Li et al. 2022)
    # shapes world: 64x64 images -> 8x8 patches of 8 px; a BERT of width 128 whose 3 layers all
    # cross-attend (the image-grounded passes) and a decoder self-attention per layer. vocab_size
    # covers minivlm's shapes tokenizer (pass vocab_size=tok.vocab_size): [CLS] 2 starts ITC
    # text, [BOS] 5 is [DEC], [SEP] 3 ends a caption; the tokenizer has no [ENC], so its
    # <image> token 7 (never in a caption) plays it.
    "blip_tiny": ("blip", dict(
        vision=dict(image_size=64, patch_size=8, dim=128, depth=3, num_heads=4, mlp_hidden=256),
        text=dict(vocab_size=256, max_len=64, dim=128, depth=3, num_heads=4, mlp_hidden=256),
        embed_dim=64, queue_size=1024, cls_token_id=2, enc_token_id=7, dec_token_id=5,
        sep_token_id=3,
    )),  # fmt: skip
    # ViT-B/16 at 384 px + BLIP's BERT-base: the retrieval model as transformers ships it
    # (BlipForImageTextRetrieval(BlipConfig()), 223,744,258 parameters: no decoder, no momentum
    # encoders, no learned τ). The pre-training MED: create_model("blip_base", decoder=True,
    # use_momentum=True, learn_temp=True).
    "blip_base": ("blip", dict(decoder=False, use_momentum=False, learn_temp=False)),
    # ---- CoCa (Yu et al. 2022)
    # shapes world: 64x64 images, 8-px patches; pooler of 1 + 16 queries; 2 unimodal + 2
    # multimodal text layers of width 128. [BOS] 5 and [EOS] 6 of minivlm's shapes tokenizer.
    "coca_tiny": ("coca", dict(
        vision=dict(image_size=64, patch_size=8, dim=128, depth=3, num_heads=4, mlp_hidden=256),
        text=dict(vocab_size=256, max_len=32, dim=128, depth=2, num_heads=4, mlp_hidden=256),
        embed_dim=128, decoder_depth=2, n_queries=17, pooler_heads=4, bos_id=5, eos_id=6,
    )),  # fmt: skip
    # open_clip's coca_ViT-B-32: 253,560,065 parameters, as open_clip.create_model counts them
    "coca_vit_b32": ("coca", dict()),
    # ---- BLIP-2 (Li et al. 2023)
    # shapes world: 64x64 images -> 8x8 patches of 8 px; a frozen ViT of width 96; a Q-Former
    # of width 96 with 4 layers (cross-attention in layers 0 and 2) and 8 queries; a frozen
    # lm_tiny-sized LM. vocab_size covers minivlm's shapes tokenizer (pass
    # vocab_size=tok.vocab_size): [PAD] 0, [CLS] 2 starts Q-Former text, [BOS] 5 is [DEC].
    "blip2_tiny": ("blip2", dict(
        vision=dict(image_size=64, patch_size=8, dim=96, depth=2, num_heads=4, mlp_hidden=192),
        qformer=dict(dim=96, depth=4, num_heads=4, mlp_hidden=192, cross_attention_freq=2,
                     num_query_tokens=8, vocab_size=256, max_len=64),
        lm=dict(vocab_size=256, dim=128, depth=2, num_heads=4, num_kv_heads=2, mlp_hidden=256,
                max_len=128),
        embed_dim=64, dec_token_id=5,
    )),  # fmt: skip
    # the paper's stage-1 model (§3.1, §4): frozen ViT-g/14 (HF's 39 layers) + the Q-Former
    # initialised from BERT-base (12 layers, cross-attention every 2nd) with 32 queries; no
    # LM. Without its text side (qformer_text=False) the Q-Former has exactly the 105,137,664
    # parameters of transformers.Blip2QFormerModel(Blip2QFormerConfig()).
    "blip2_qformer_base": ("blip2", dict(lm=None)),
    # ---- LLaVA (Liu et al. 2023, 2024)
    # shapes world: clip_tiny's ViT (64 px, 64 patches -> N = 64 image tokens), lm_tiny's LM
    # (dim 128, 4 layers, GQA 4/2 heads); vocab_size = len(shapes_tokenizer()) unless overridden
    "llava_tiny": ("llava", dict(
        vision=_CLIP_TINY_VISION,
        text=dict(vocab_size=Lazy(_shapes_vocab, "len(shapes_tokenizer())")),
    )),  # fmt: skip
    # LLaVA-1.5-7B (§3.2, Table 1): CLIP ViT-L/14 at 336 px (N = 576), Vicuna-7B (Llama-2-7B
    # shape, vocabulary 32,064 in llava-hf with <image> = 32000, pad = 32001), MLP projector
    "llava_1_5_7b": ("llava", dict(
        vision=dict(image_size=336, patch_size=14, dim=1024, depth=24, num_heads=16,
                    mlp_hidden=4096),
        text=dict(_LLAMA2_7B, vocab_size=32064, pad_id=32001),
        image_token_id=32000,
    )),  # fmt: skip
    # ---- Flamingo (Alayrac et al. 2022)
    # shapes world: shapes_clip's ViT (64 px, 16-px patches), lm_tiny's LM, 8 latents, a gated
    # block before every LM block. No published size: Chinchilla and NFNet-F6 are unreleased.
    "flamingo_tiny": ("flamingo", dict(
        vision=dict(image_size=64, patch_size=16, dim=128, depth=3, num_heads=4, mlp_hidden=256),
    )),  # fmt: skip
    # ---- Qwen2-VL (Wang et al. 2024) / Qwen2.5-VL (Bai et al. 2025)
    # shapes world: 8-px patches, 2x2 merge (a 64-px image -> 16 LM tokens), 2-block vision
    # encoder and 2-layer LM of width 64, M-RoPE sections 2/3/3 of the 8 frequencies per head
    "qwen2_vl_tiny": ("qwen2_vl", dict(lm=_QWEN_TINY_LM)),
    # the same with Qwen2.5-VL's vision blocks (RMSNorm, SwiGLU) and 32-px windows (2x2 merged
    # tokens) in block 0, full attention in block 1
    "qwen2_5_vl_tiny": ("qwen2_vl", dict(
        lm=_QWEN_TINY_LM, vision_norm="rmsnorm", vision_mlp="swiglu", window_size=32,
        fullatt_blocks=(1,),
    )),  # fmt: skip
    # Qwen2-VL-2B: 675M-parameter ViT (32 x 1280, 14-px patches of 2 frames) + Qwen2-1.5B, tied
    # embeddings: 2,208,985,600 parameters, as Qwen2VLForConditionalGeneration counts them
    "qwen2_vl_2b": ("qwen2_vl", dict(
        lm=dict(_QWEN_LM_BASE, dim=1536, depth=28, num_heads=12, mlp_hidden=8960,
                max_len=32768),
        patch_size=14, temporal_patch_size=2, vision_dim=1280, vision_depth=32, vision_heads=16,
        vision_mlp_hidden=5120, image_token_id=151655, vision_start_id=151652,
        vision_end_id=151653,
    )),  # fmt: skip
    # Qwen2.5-VL-3B: windowed ViT (112-px windows, full attention in blocks 7/15/23/31, RMSNorm,
    # SwiGLU 3420) + Qwen2.5-3B, tied embeddings: 3,754,622,976 parameters
    "qwen2_5_vl_3b": ("qwen2_vl", dict(
        lm=dict(_QWEN_LM_BASE, dim=2048, depth=36, num_heads=16, mlp_hidden=11008,
                max_len=128000),
        patch_size=14, temporal_patch_size=2, vision_dim=1280, vision_depth=32, vision_heads=16,
        vision_mlp_hidden=3420, vision_norm="rmsnorm", vision_mlp="swiglu", window_size=112,
        fullatt_blocks=(7, 15, 23, 31), image_token_id=151655, vision_start_id=151652,
        vision_end_id=151653,
    )),  # fmt: skip
    # ---- MAE (He et al. 2022)
    # 64-px shapes world, 8x8 grid of 8-px patches; a 2-block encoder of width 64 and a
    # 1-block decoder of width 32 (lecture 7 pre-trains it in a few seconds per 100 steps)
    "mae_tiny": ("mae", dict(image_size=64, patch_size=8, dim=64, depth=2, num_heads=4,
                             mlp_hidden=128, decoder_dim=32, decoder_depth=1, decoder_heads=2,
                             decoder_mlp_hidden=64)),  # fmt: skip
    # ViT-B/16 encoder with the paper's 8 x 512 decoder: ViTMAEForPreTraining(ViTMAEConfig()),
    # 111,907,840 parameters (the two frozen sin-cos tables included, as HF counts them)
    "mae_vit_b16": ("mae", dict()),
    # ---- BEiT (Bao et al. 2022)
    # 64-px shapes world, 8x8 grid of 8-px patches, a 64-entry VQ codebook (lecture 7)
    "beit_tiny": ("beit", dict(image_size=64, patch_size=8, dim=64, depth=2, num_heads=4,
                               mlp_hidden=128, vocab_size=64)),  # fmt: skip
    # BEiT-B/16 pre-training layout: BeitForMaskedImageModeling(BeitConfig(use_mask_token=True,
    # use_shared_relative_position_bias=True)), 91,965,776 parameters
    "beit_base_pt": ("beit", dict()),
    # ---- Lecture 11: before ViT (region and grid features)
    # 64-px shapes world: a 13-conv ResNet (3 stages of 2 basic blocks, 8x8 output grid) and
    # its plain twin of the same depth (He et al. 2016, §4.1)
    "resnet_tiny": ("resnet", dict()),
    "plain_cnn_tiny": ("resnet", dict(residual=False)),
    # LXMERT (Tan & Bansal 2019): tiny for the shapes world (region features of 48 values:
    # RoI-Align 2x2 over a 12-channel map); base = LxmertModel(LxmertConfig()), 207,936,768
    "lxmert_tiny": ("lxmert", dict(vocab_size=256, max_len=32, dim=64, num_heads=4,
                                   mlp_hidden=128, l_layers=2, r_layers=1, x_layers=2,
                                   visual_feat_dim=48)),  # fmt: skip
    "lxmert_base": ("lxmert", dict()),
    # UNITER (Chen et al. 2020): tiny single stream of width 64 over words and shapes-world
    # regions (48-d RoI features, 7-d boxes, 5 region classes = the shapes); base = §4's
    # UNITER-base (BERT-base cased, 2048-d features, 1601 VG classes)
    "uniter_tiny": ("uniter", dict(vocab_size=256, max_len=32, dim=64, depth=2, num_heads=4,
                                   mlp_hidden=128, region_feat_dim=48,
                                   num_region_classes=5)),  # fmt: skip
    "uniter_base": ("uniter", dict()),
    # Pixel-BERT (Huang et al. 2020): resnet_tiny's grid (8x8 cells of 64 channels) into a
    # BERT of width 64 (the same as uniter_tiny's)
    "pixel_bert_tiny": ("pixel_bert", dict(vocab_size=256, max_len=32, dim=64, depth=2,
                                           num_heads=4, mlp_hidden=128)),  # fmt: skip
    # ---- VLMo (Bao et al. 2022) / BEiT-3 (Wang et al. 2023)
    # shapes world: vilt_tiny's sizes (64 px, 16-px patches, width 128, 4 layers, MLP 512, 24
    # text positions, LayerNorm eps 1e-12) so that lecture 2's shapes_vilt can seed it; VL-FFN
    # in the top layer; a 64-entry visual vocabulary (lecture 7's VQ tokens); shapes tokenizer
    # ids ([MASK] 4, specials 0..7), vocab_size = len(shapes_tokenizer()).
    "vlmo_tiny": ("vlmo", dict(
        vocab_size=Lazy(_shapes_vocab, "len(shapes_tokenizer())"), max_text_len=24,
        image_size=64, patch_size=16, dim=128, depth=4, num_heads=4, mlp_hidden=512,
        vl_layers=1, eps=1e-12, layer_scale=0.0, embed_dim=64, visual_vocab_size=64,
        mask_token_id=4, special_token_ids=tuple(range(8)),
    )),  # fmt: skip
    # VLMo-Base (§3.1), see VLMoConfig and models/vlmo.py: 12 Multiway layers of width 768
    # (VL-FFN in the top 2), 224 px / 16-px patches, BERT's 30,522 words, 40 positions
    "vlmo_base": ("vlmo", dict()),
}


def _fields(obj: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(obj)}


def _as_dict(name: str, key: str, value: Any) -> dict[str, Any]:
    """A nested override: a dict, or a config dataclass turned into one."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if not isinstance(value, dict):
        raise TypeError(
            f"{name}: override {key!r} must be a dict or a config dataclass, "
            f"got {type(value).__name__}"
        )
    return value


def _resolve(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v.fn() if isinstance(v, Lazy) else v for k, v in values.items()}


def preset_config(name: str, **overrides: Any) -> Any:
    """The config of preset ``name`` with keyword ``overrides`` applied (see module doc)."""
    family = FAMILIES[PRESETS[name][0]]
    preset = dict(PRESETS[name][1])
    config_cls = _load(family.config)
    builders = {p: _load(preset.pop(f"{p}_builder", b)) for p, b in family.parts.items()}
    parts = {p: dict(preset.pop(p, None) or {}) for p in family.parts}
    present = {p: PRESETS[name][1].get(p, {}) is not None for p in family.parts}
    top = preset
    top_fields = (_fields(config_cls) if dataclasses.is_dataclass(config_cls)
                  else _fields(config_cls())) - set(family.parts)  # fmt: skip
    part_fields = {p: _fields(b()) for p, b in builders.items()}
    for key, value in overrides.items():
        if key in parts:
            if value is None and key in family.optional:
                present[key] = False
                continue
            parts[key].update(_as_dict(name, key, value))
            present[key] = True
        elif key in top_fields:
            top[key] = value
        elif key in family.shortcuts:
            for p in family.shortcuts[key]:
                parts[p][key] = value
        elif any(key.startswith(p + "_") and key[len(p) + 1 :] in part_fields[p] for p in parts):
            part, sub = key.split("_", 1)
            parts[part][sub] = value
            present[part] = True
        else:
            raise ValueError(
                f"{name}: unknown override {key!r}; expected a {family.config.split(':')[1]} field "
                f"{sorted(top_fields)}"
                + "".join(f", {p}_<field of {p}>" for p in parts)
                + (f", or one of {sorted(family.shortcuts)}" if family.shortcuts else "")
            )
    if not parts:
        return config_cls(**_resolve(top))
    try:
        built = {p: builders[p](**_resolve(parts[p])) if present[p] else None for p in parts}
        return config_cls(**built, **_resolve(top))
    except TypeError as e:
        raise ValueError(f"{name}: bad override ({e})") from e


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the presets matching a shell-style ``pattern``."""
    return sorted(n for n in PRESETS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build preset ``name``; keyword ``overrides`` change its config (:func:`preset_config`)."""
    if name not in PRESETS:
        close = [n for n in PRESETS if name.split("_")[0] in n]
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}; expected one of minivlm.list_models() "
            f"({len(PRESETS)} registered).{hint}"
        )
    return _load(FAMILIES[PRESETS[name][0]].model)(preset_config(name, **overrides))

