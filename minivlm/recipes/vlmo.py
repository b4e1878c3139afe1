"""Lecture 8: one Multiway transformer, two ways to use it, and stage-wise pre-training.

Two experiments on the shapes world, shared by ``notebooks/08_vlmo_beit3.ipynb`` and
``experiments/vlmo.py``:

* **Two modes, one model.** A ``vlmo_tiny`` is seeded from lecture 2's ``shapes_vilt`` (its
  attention copied into the shared attention, its MLP into every expert: VLMo §2.3 likewise
  starts its experts from one pre-trained FFN) and trained on image-caption pairs with VLMo's
  pair objectives (ITC, ITM on hard negatives, MLM). It is then scored on lecture 2's binding
  pairs in *dual* mode (cosine of the two CLS embeddings) and in *fusion* mode (pseudo-log-
  likelihood of the hidden colour words, as lecture 2 scores ViLT), and timed ranking 256
  images for one caption in each mode.
* **Shared attention transfers.** A ``vlmo_tiny`` learns masked image modelling on images only
  (BEiT's objective over lecture 7's VQ visual tokens, 16-px patches); a text stage then trains
  masked language modelling on captions with the attention (and V-FFN) frozen, as VLMo §2.3
  does. Arms: attention from the image stage, frozen; attention at random init, frozen; the
  image-stage model trained freely. Score: held-out masked-word accuracy and loss.

Regenerate the committed multi-seed results (about four minutes of CPU time in one thread)::

  python experiments/vlmo.py --out experiments/results/vlmo.json
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import minivlm
from minivlm.data import ShapesWorld
from minivlm.models.beit import blockwise_mask_batch
from minivlm.models.vlmo import VLMo
from minivlm.nn.blocks import MultiwayBlock, TransformerBlock
from minivlm.nn.parts import MethodModule
from minivlm.objectives import mask_tokens
from minivlm.recipes.mae_beit import train_tokenizer
from minivlm.recipes.vilt_binding import (
    KINDS,
    Text,
    binding_batches,
    pair_accuracy,
    test_pairs,
)
from minivlm.train import TrainConfig, train

ARMS = ("image-stage attention, frozen", "random attention, frozen", "free")
# the transfer experiment's model: vlmo_tiny at half width (4 layers, width 64, MLP 256)
TRANSFER_SIZE = dict(dim=64, mlp_hidden=256, embed_dim=32)
SEEDS = (0, 1, 2)


# ---------------------------------------------------------------------------
# A VLMo seeded from lecture 2's ViLT
# ---------------------------------------------------------------------------


def from_vilt(vilt: nn.Module, **overrides: Any) -> VLMo:
    """A ``vlmo_tiny`` with ``vilt``'s weights: embeddings, shared attention, final norm, ITM
    pooler/head and MLM head copied; ViLT's one MLP (and its LayerNorm) copied into every
    expert (V, L and VL). The text segment embedding (always row 0 in ViLT) is folded into the
    positions; ViLT's modality rows (text 0, image 1) are swapped into VLMo's order. ViLT has
    absolute position tables, so the copy has them too (``position="absolute"``)."""
    if overrides.get("position", "absolute") != "absolute":
        raise ValueError(f"from_vilt: ViLT's positions are absolute tables; got position="
                         f"{overrides['position']!r} (only 'absolute' can take them)")
    c = vilt.config
    model = minivlm.create_model("vlmo_tiny", vocab_size=c.vocab_size, max_text_len=c.max_text_len,
                                 image_size=c.image_size, patch_size=c.patch_size, dim=c.dim,
                                 depth=c.depth, num_heads=c.num_heads, mlp_hidden=c.hidden,
                                 eps=c.eps, **overrides)  # fmt: skip
    src = vilt.state_dict()
    te = "text_embeddings."
    state = {k: v for k, v in src.items()
             if k.split(".")[0] in ("patch_embed", "cls_token", "pos_embed", "norm", "pooler",
                                    "itm_head", "mlm_head") or k.startswith(te)}  # fmt: skip
    state.pop(te + "token_type_embeddings.weight")
    state[te + "position_embeddings.weight"] = (src[te + "position_embeddings.weight"]
                                                + src[te + "token_type_embeddings.weight"][0])
    state["modality_embeddings.weight"] = src["modality_embeddings.weight"][[1, 0]]
    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}."
        for k in ("norm1.weight", "norm1.bias") + tuple(
                f"attn.{n}_proj.{w}" for n in "qkvo" for w in ("weight", "bias")):  # fmt: skip
            k = k.replace("o_proj", "out_proj")
            state[p + k] = src[p + k]
        for e in range(blk.num_experts):
            for w in ("weight", "bias"):
                state[f"{p}norms.{e}.{w}"] = src[f"{p}norm2.{w}"]
                for fc in ("fc1", "fc2"):
                    state[f"{p}ffns.{e}.{fc}.{w}"] = src[f"{p}mlp.{fc}.{w}"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    fresh = ("text_proj", "image_proj", "logit_scale", "mask_embed", "mim_head",
             "mlm_head.decoder.w")  # new in VLMo (the MLM decoder is tied to the words)
    left = [k for k in missing if not k.startswith(fresh)]
    if left or unexpected:
        raise ValueError(f"from_vilt: weights not copied {left}, unexpected {unexpected}")
    return model


# ---------------------------------------------------------------------------
# Two modes: scoring and timing
# ---------------------------------------------------------------------------


def dual_score(model: VLMo, text: Text, ids, am, px) -> torch.Tensor:
    """Dual mode: cosine of the text and image CLS embeddings, (n,)."""
    t = F.normalize(model.text_features(ids, am), dim=-1)
    return (t * F.normalize(model.image_features(px), dim=-1)).sum(-1)


def fusion_score(model: VLMo, text: Text, ids, am, px) -> torch.Tensor:
    """Fusion mode: log-likelihood of the caption's colour words, all hidden at once, read
    with the image (lecture 2's score for ViLT), (n,)."""
    masked, labels = text.mask_colours(ids)
    logp = model.mdm(masked, px, am, mlm_labels=labels).mlm_logits.log_softmax(-1)  # (n, T, V)
    slots = labels != -100
    return (logp.gather(-1, labels.clamp_min(0)[..., None])[..., 0] * slots).sum(1)


@torch.no_grad()
def binding_by_mode(model: VLMo, test: Any, text: Text | None = None) -> dict[str, dict]:
    """{"dual": {kind: acc}, "fusion": {kind: acc}} on the held-out binding pairs (chance 0.5)."""
    text = text or Text()
    model.eval()
    pairs = test_pairs(test, KINDS)
    return {mode: pair_accuracy(lambda *a, f=f: f(model, text, *a), text, pairs, test)
            for mode, f in (("dual", dual_score), ("fusion", fusion_score))}  # fmt: skip


@torch.no_grad()
def dual_retrieval(model: VLMo, test: Any, n: int = 100, text: Text | None = None) -> float:
    """Dual mode, caption -> image R@1 among the first ``n`` held-out scenes (chance 1/n)."""
    text = text or Text()
    model.eval()
    ids, am = text.encode([test.caption(i) for i in range(n)])
    t = F.normalize(model.text_features(ids, am), dim=-1)
    v = F.normalize(model.image_features(test.pixel_values()[:n]), dim=-1)
    return float(((t @ v.T).argmax(-1) == torch.arange(n)).float().mean())


@torch.no_grad()
def ranking_seconds(model: VLMo, images: torch.Tensor, caption: str, text: Text | None = None,
                    repeats: int = 3) -> dict[str, float]:  # fmt: skip
    """Wall seconds to rank ``images`` for one caption (median of ``repeats``): ``dual`` with the
    image embeddings cached (one text pass + a matrix product), ``dual_with_images`` computing
    them too, ``fusion`` (one fused pass per image). Also checks the two modes' outputs."""
    text = text or Text()
    model.eval()
    ids, am = text.encode([caption])
    n = len(images)
    cache = F.normalize(model.image_features(images), dim=-1)  # (n, E), built once

    def dual() -> torch.Tensor:
        return cache @ F.normalize(model.text_features(ids, am), dim=-1)[0]  # (n,)

    def dual_full() -> torch.Tensor:
        return F.normalize(model.image_features(images), dim=-1) @ F.normalize(
            model.text_features(ids, am), dim=-1)[0]

    def fusion() -> torch.Tensor:
        return model.itm_logits(ids.expand(n, -1), images, am.expand(n, -1)).log_softmax(-1)[:, 1]

    out = {}
    for name, fn in (("dual", dual), ("dual_with_images", dual_full), ("fusion", fusion)):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = float(np.median(times))
    return out


def pair_batches(data: Any, steps: int, batch_size: int, seed: int, text: Text) -> list[dict]:
    """``steps`` batches of (true binding caption, image, scene index), drawn with ``seed``;
    MLM hides the colour words, as lecture 2 trained ``shapes_vilt``."""
    batches = binding_batches(data, batch_size, torch.Generator().manual_seed(seed))
    pixels = data.pixel_values()
    out = []
    for _ in range(steps):
        batch, caps = next(batches)
        ids, am = text.encode(caps)
        masked, labels = text.mask_colours(ids)
        out.append({"input_ids": ids, "attention_mask": am, "pixel_values": pixels[batch],
                    "index": torch.tensor(batch), "mlm_input_ids": masked,
                    "mlm_labels": labels})  # fmt: skip
    return out


def train_pairs(model: VLMo, data: Any, steps: int, seed: int, batch_size: int = 16,
                lr: float = 2e-4, text: Text | None = None) -> list[float]:  # fmt: skip
    """VLMo's pair stage (ITC + ITM on hard negatives + MLM), everything trainable."""
    text = text or Text()
    model.set_stage("pair")
    cfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, warmup_steps=max(1, steps // 10),
                      seed=seed, progress=False, log_every=max(1, steps))  # fmt: skip
    res = train(model, pair_batches(data, steps, batch_size, seed, text), cfg, device="cpu")
    return res.history["loss"]


# ---------------------------------------------------------------------------
# Stage-wise pre-training: does attention learned on images serve text?
# ---------------------------------------------------------------------------


def image_stage(model: VLMo, images: torch.Tensor, tokens: torch.Tensor, steps: int, seed: int,
                batch_size: int = 32, lr: float = 1e-3, mask_ratio: float = 0.4) -> list[float]:
    """VLMo's image stage (§2.3): BEiT masked image modelling on images only, blockwise masks of
    ``mask_ratio`` of the patches, targets = visual-token ids ``tokens`` (n, N)."""
    model.set_stage("image")
    g = torch.Generator().manual_seed(seed)
    grid = model.config.image_size // model.config.patch_size
    batches = []
    for s in range(steps):
        i = torch.randint(len(images), (batch_size,), generator=g)
        masks = blockwise_mask_batch(batch_size, grid, mask_ratio, seed=seed * 100_003 + s)
        batches.append({"pixel_values": images[i], "image_labels": tokens[i],
                        "bool_masked_pos": masks})  # fmt: skip
    cfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, warmup_steps=max(1, steps // 10),
                      seed=seed, progress=False, log_every=max(1, steps))  # fmt: skip
    return train(MethodModule(model, "mdm"), batches, cfg, device="cpu").history["loss"]


def masked_captions(ids: torch.Tensor, seed: int, mask_id: int, vocab: int):
    """BERT masking (15 %) of caption ids with a fixed seed: (masked ids, labels)."""
    return mask_tokens(ids, mask_id, vocab, tuple(range(8)), 0.15,
                       torch.Generator().manual_seed(seed))


def text_stage(model: VLMo, ids: torch.Tensor, am: torch.Tensor, steps: int, seed: int,
               free: bool = False, batch_size: int = 32, lr: float = 2e-3) -> list[float]:
    """VLMo's text stage (§2.3): MLM on captions alone; the attention and V-FFN frozen unless
    ``free`` (then everything the text path uses trains)."""
    model.set_stage("pair" if free else "text")
    g = torch.Generator().manual_seed(seed)
    cfg_m = model.config
    batches = []
    for s in range(steps):
        i = torch.randint(len(ids), (batch_size,), generator=g)
        masked, labels = masked_captions(ids[i], seed * 100_003 + s, cfg_m.mask_token_id,
                                         cfg_m.vocab_size)  # fmt: skip
        batches.append({"input_ids": masked, "attention_mask": am[i], "mlm_labels": labels})
    cfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, warmup_steps=max(1, steps // 10),
                      seed=seed, progress=False, log_every=max(1, steps))  # fmt: skip
    return train(MethodModule(model, "mdm"), batches, cfg, device="cpu").history["loss"]


@torch.no_grad()
def heldout_mlm(model: VLMo, ids: torch.Tensor, am: torch.Tensor, seed: int = 0
                ) -> dict[str, float]:  # fmt: skip
    """Masked-word accuracy and loss on held-out captions (text only, a fixed 15 % mask)."""
    model.eval()
    masked, labels = masked_captions(ids, 10_000 + seed, model.config.mask_token_id,
                                     model.config.vocab_size)  # fmt: skip
    out = model.mdm(input_ids=masked, attention_mask=am, mlm_labels=labels)
    sel = labels != -100
    acc = (out.mlm_logits.argmax(-1)[sel] == labels[sel]).float().mean()
    return {"acc": float(acc), "loss": float(out.loss_mlm)}


@dataclass
class TransferData:
    images: torch.Tensor  # (n, 3, 64, 64) image-stage images
    tokens: torch.Tensor  # (n, N) their visual-token ids
    ids: torch.Tensor  # (m, T) text-stage captions
    am: torch.Tensor
    test_ids: torch.Tensor  # held-out captions
    test_am: torch.Tensor


def transfer_data(seed: int, n_images: int = 1500, n_test: int = 300,
                  tokenizer_steps: int = 60, text: Text | None = None) -> TransferData:  # fmt: skip
    """Scenes of 1-3 objects: images + their 16-px VQ tokens for the image stage, all their
    captions for the text stage, captions of other scenes held out."""
    text = text or Text()
    world = ShapesWorld(min_objects=1, max_objects=3)
    train_s, test_s = world.generate(n_images, seed=3000 + seed), world.generate(n_test,
                                                                                 seed=4000 + seed)
    images = train_s.pixel_values()
    vq = train_tokenizer(images, steps=tokenizer_steps, seed=seed, patch_size=16,
                         batch_patches=1024)  # fmt: skip
    tokens = vq.tokenize(images)  # (n, 16)
    ids, am = text.encode([c for i in range(len(train_s)) for c in train_s.captions(i)])
    t_ids, t_am = text.encode([test_s.caption(i) for i in range(len(test_s))])
    return TransferData(images, tokens, ids, am, t_ids, t_am)


def transfer(d: TransferData, seed: int, image_steps: int = 100, text_steps: int = 250,
             text: Text | None = None, **sizes: Any) -> tuple[dict[str, dict], dict[str, VLMo]]:
    """The three text-stage arms (:data:`ARMS`) after one image stage: ({arm: held-out MLM},
    {arm: model}); ``"image stage MIM"`` records the image stage's final loss. The model is
    ``vlmo_tiny`` with :data:`TRANSFER_SIZE` updated by ``sizes`` (e.g. ``position="relative"``:
    the relative position bias trains with the attention in the image stage, its text rows in
    the text stage, see :func:`minivlm.models.vlmo.stage_plan`)."""
    text = text or Text()
    sizes = {"vocab_size": text.tok.vocab_size, **TRANSFER_SIZE, **sizes}
    minivlm.seed_everything(seed)
    imaged = minivlm.create_model("vlmo_tiny", **sizes)
    mim = image_stage(imaged, d.images, d.tokens, image_steps, seed)
    minivlm.seed_everything(seed)
    fresh = minivlm.create_model("vlmo_tiny", **sizes)
    starts = {ARMS[0]: copy.deepcopy(imaged), ARMS[1]: fresh, ARMS[2]: copy.deepcopy(imaged)}
    results: dict[str, dict] = {"image stage MIM": {"loss": float(np.mean(mim[-10:]))}}
    for arm, model in starts.items():
        text_stage(model, d.ids, d.am, text_steps, seed, free=arm == ARMS[2])
        results[arm] = heldout_mlm(model, d.test_ids, d.test_am, seed)
    return results, starts


# ---------------------------------------------------------------------------
# Parameters: one Multiway stack vs separate towers
# ---------------------------------------------------------------------------


def parameter_counts(name: str) -> dict[str, int]:
    """Transformer-layer parameters of preset ``name``: the Multiway stack (shared attention,
    V/L-FFN everywhere, VL-FFN in the top F) vs two separate towers of the same depth and
    width (an image and a text transformer, CLIP-style) and vs three (plus an F-layer fusion
    tower, which is what the fusion use needs on top)."""
    with torch.device("meta"):
        cfg = minivlm.create_model(name).config
        multi = [MultiwayBlock(cfg.dim, cfg.num_heads, 3 if i >= cfg.vl_from else 2,
                               mlp_hidden=cfg.mlp_hidden) for i in range(cfg.depth)]
        one = TransformerBlock(cfg.dim, cfg.num_heads, mlp_hidden=cfg.mlp_hidden)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"multiway": sum(n(b) for b in multi), "two towers": 2 * cfg.depth * n(one),
            "two towers + fusion": (2 * cfg.depth + cfg.vl_layers) * n(one)}


# ---------------------------------------------------------------------------
# One seed of both experiments
# ---------------------------------------------------------------------------


def run(seed: int, pair_steps: int = 40, image_steps: int = 100, text_steps: int = 250,
        n_train: int = 3000, keep_models: bool = False, position: str = "absolute",
        n_test: int = 400, n_rank: int = 256, n_images: int = 1500,
        tokenizer_steps: int = 60) -> dict[str, Any]:  # fmt: skip
    """Both experiments for one seed: {"binding": {"vilt (zoo)"|"vlmo": {mode: {kind: acc}}}
    (before / after the pair stage), "dual_r1_of_100", "timing": seconds, "transfer": {arm:
    {acc, loss}}, "cpu_seconds"} (+ "models"). ``position`` is the transfer model's (the
    ViLT-seeded model keeps ViLT's absolute tables); ``n_test`` held-out binding scenes (the
    first ``n_rank`` are ranked for the timing, the first 100 for R@1), ``n_images`` image-stage
    scenes (a fifth as many held out for the text score), ``tokenizer_steps`` of the VQ."""
    from minivlm import zoo

    text = Text()
    t0 = time.process_time()
    world = ShapesWorld(min_objects=2, max_objects=2)
    train_d, test_d = world.generate(n_train, seed=seed), world.generate(n_test, seed=1000 + seed)
    vilt = zoo.load("shapes_vilt", frozen=True)
    minivlm.seed_everything(seed)
    model = from_vilt(vilt)
    start = binding_by_mode(model, test_d, text)
    losses = train_pairs(model, train_d, pair_steps, seed, text=text)
    binding = {"vilt (zoo)": start, "vlmo": binding_by_mode(model, test_d, text)}
    r1 = dual_retrieval(model, test_d, n=min(100, n_test), text=text)
    timing = ranking_seconds(model, test_d.pixel_values()[:n_rank], test_d.caption(0), text)
    data = transfer_data(seed, n_images, n_images // 5, tokenizer_steps, text)
    tr, tmodels = transfer(data, seed, image_steps, text_steps, text, position=position)
    out = {"seed": seed, "position": position, "pair_steps": pair_steps,
           "pair_loss": float(np.mean(losses[-10:])),
           "binding": binding, "dual_r1_of_100": r1, "timing": timing, "transfer": tr,
           "cpu_seconds": round(time.process_time() - t0, 1)}  # fmt: skip
    if keep_models:
        out["models"] = {"vlmo": model, **tmodels}
    return out


def summarize(runs: list[dict]) -> dict[str, Any]:
    """Means and per-seed values of the binding accuracies and the transfer arms."""
    out: dict[str, Any] = {"binding": {}, "transfer": {}}
    for who in runs[0]["binding"]:
        for mode in ("dual", "fusion"):
            for k in KINDS:
                v = [r["binding"][who][mode][k] for r in runs]
                out["binding"][f"{who} / {mode} / {k}"] = {"values": v, "mean": float(np.mean(v))}
    for arm in ARMS:
        for m in ("acc", "loss"):
            v = [r["transfer"][arm][m] for r in runs]
            out["transfer"][f"{arm} / {m}"] = {"values": v, "mean": float(np.mean(v))}
    ratio = [r["timing"]["fusion"] / r["timing"]["dual"] for r in runs]
    out["fusion_over_dual_time"] = {"values": ratio, "median": float(np.median(ratio))}
    return out
