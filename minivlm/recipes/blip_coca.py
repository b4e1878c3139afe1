"""Lecture 6's experiments: BLIP's CapFilt on noisy captions (§3.3) and CoCa's one model for two
jobs (§3.2); ``notebooks/06_blip_coca.ipynb`` runs them live, ``experiments/blip_coca.py`` over
seeds.

**CapFilt.** Lecture 3's corrupted-caption set-up (:func:`~minivlm.recipes.albef_noise.
corrupt_captions`: a fraction of the "web" captions belongs to another image, and the shapes
world knows which) on one- and two-object scenes. A small clean, "human-annotated" set plays
COCO. As in §3.3, a BLIP (ITC + ITM + LM) learns on the clean set; its decoder captions every web
image (nucleus sampling or beam search), its ITM head scores the web captions and the synthetic
ones, and pairs below ``threshold`` are dropped. A new retrieval model is then trained on
(a) clean + all web pairs, (b) clean + the web pairs the filter keeps, (c) that plus the kept
synthetic captions; held-out R@1 on clean pairs is compared. For the ablations of
``experiments/blip_coca.py --ablation`` an arm can also be "oracle" (clean + exactly the web pairs
whose caption is right, from the known corruptions), "random" (clean + as many web pairs as the
filter keeps, drawn at random), "clean" (the clean pairs alone), and take its own number of
retrieval steps ("oracle@300"); ``eval_sets`` > 1 adds R@1 over more held-out sets.

**CoCa.** The same small CoCa trained with λ_cap = 2, λ_con = 1 (the paper), contrastive only
(λ_cap = 0) and captioning only (λ_con = 0), same steps and data: zero-shot retrieval R@1 from the
embeddings and caption quality from the decoder.

Choices made for a 2-core CPU (each stated in the lecture): models of width 64 from scratch with
lecture 3's fan-in init (the paper starts from pre-trained ViT and BERT and pre-trains on 129M
pairs before CapFilt: here the captioner and the filter learn on the clean set alone); no
momentum encoders (``use_momentum=False``: lecture 3 found the EMA and queue slow at a few
hundred steps); fixed τ = 0.07; the retrieval models are trained with ITC only (what R@1 measures).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

import minivlm
from minivlm.data import ShapesWorld, shapes_tokenizer
from minivlm.eval import retrieval_metrics
from minivlm.models.blip import Blip
from minivlm.models.coca import CoCa
from minivlm.nn.attention import MultiHeadAttention
from minivlm.nn.blocks import MLP
from minivlm.nn.parts import MethodModule
from minivlm.recipes.albef_noise import corrupt_captions, eval_pairs, init_from_scratch_
from minivlm.train import TrainConfig, train

Tensor = torch.Tensor

# BLIP reads BERT-style text ([CLS] .. [SEP]); CoCa GPT-style ([BOS] .. [EOS])
BLIP_TEXT = dict(add_cls=True, add_sep=True, add_bos=False, add_eos=False)
COCA_TEXT = dict(add_bos=True, add_eos=True, add_cls=False, add_sep=False)
WORLD = dict(max_objects=1)  # one object per scene: 60 distinct captions
_SMALL = dict(patch_size=16, vision=dict(dim=64, depth=2, num_heads=4, mlp_hidden=128))
BLIP_MODEL = dict(_SMALL, text=dict(dim=64, depth=2, num_heads=4, mlp_hidden=128), embed_dim=64,
                  use_momentum=False, temp=0.07, temp_min=0.07, temp_max=0.07)  # fmt: skip
COCA_MODEL = dict(_SMALL, text=dict(dim=64, depth=1, num_heads=4, mlp_hidden=128), embed_dim=64,
                  decoder_depth=1, n_queries=9, pooler_heads=4)  # fmt: skip


@dataclass
class CapFiltConfig:
    """One CapFilt run: data sizes, noise, budgets, the filter threshold and the seed."""

    n_web: int = 1000
    n_clean: int = 300
    noise: float = 0.5
    seed: int = 0
    captioner_steps: int = 200
    retrieval_steps: int = 100
    batch_size: int = 32
    lr: float = 2e-3
    threshold: float | None = None  # None: calibrated on the clean set (see run_capfilt)
    keep_clean: float = 0.9
    top_p: float = 0.9
    methods: tuple[str, ...] = ("nucleus", "beam")
    retrain: tuple[str, ...] = ("noisy", "filtered", "filtered+nucleus")
    n_eval: int = 40
    eval_sets: int = 1  # > 1: also R@1 on more held-out sets of n_eval pairs, "r1_sets"


@dataclass
class CoCaConfig:
    """One run of the CoCa comparison."""

    n_train: int = 1000
    steps: int = 150
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    n_eval: int = 40
    arms: tuple[tuple[str, float, float], ...] = (
        ("CoCa (2·cap + 1·con)", 2.0, 1.0), ("contrastive only", 0.0, 1.0),
        ("captioning only", 1.0, 0.0))  # fmt: skip


class Pairs(torch.utils.data.Dataset):
    """Image-caption pairs held as tensors: item k -> {name: tensor[k]}."""

    def __init__(self, **tensors: Tensor) -> None:
        n = {len(t) for t in tensors.values()}
        if len(n) != 1:
            raise ValueError(f"Pairs: all tensors need the same length, got {sorted(n)}")
        self.t = tensors

    def __len__(self) -> int:
        return len(next(iter(self.t.values())))

    def __getitem__(self, k: int) -> dict[str, Tensor]:
        return {name: t[k] for name, t in self.t.items()}


def tokenize(captions: list[str], text: dict[str, bool], length: int = 16) -> dict[str, Tensor]:
    """Captions -> padded ids and mask of one fixed length (so that datasets concatenate)."""
    t = shapes_tokenizer()(captions, max_length=length, **text)
    ids, mask = t["input_ids"], t["attention_mask"]
    if ids.shape[1] > length:
        raise ValueError(f"tokenize: a caption has {ids.shape[1]} tokens, more than {length}")
    pad = length - ids.shape[1]
    return {"input_ids": torch.nn.functional.pad(ids, (0, pad)),
            "attention_mask": torch.nn.functional.pad(mask, (0, pad))}  # fmt: skip


def make_data(cfg: CapFiltConfig) -> dict[str, Any]:
    """Web images with corrupted captions (``src``), the clean set, the held-out pairs."""
    world = ShapesWorld(**WORLD)
    web, clean = world.generate(cfg.n_web, seed=0), world.generate(cfg.n_clean, seed=2)
    src = corrupt_captions(cfg.n_web, cfg.noise, cfg.seed)
    images, captions = eval_pairs(cfg.n_eval, world=world)
    true = [web.caption(i) for i in range(len(web))]
    caps = [true[int(j)] for j in src]
    return {"web_px": web.pixel_values(), "web_true": true, "web_caps": caps,
            "corrupted": np.array([c != t for c, t in zip(caps, true, strict=True)]),
            "clean_px": clean.pixel_values(),
            "clean_caps": [clean.caption(i) for i in range(len(clean))],
            "eval_px": images, "eval_caps": captions}  # fmt: skip


def make_blip(seed: int, **overrides: Any) -> Blip:
    """The lecture's small BLIP (:data:`BLIP_MODEL`), seeded, lecture 3's fan-in init."""
    minivlm.seed_everything(seed)
    model = minivlm.create_model("blip_tiny", vocab_size=shapes_tokenizer().vocab_size,
                                 **{**BLIP_MODEL, **overrides})  # fmt: skip
    return init_from_scratch_(model)


def fit(model: torch.nn.Module, data: Pairs, steps: int, batch_size: int, lr: float, seed: int
        ) -> list[float]:  # fmt: skip
    """Train with minivlm's loop (AdamW, 10 warm-up steps, cosine); returns the loss curve."""
    tc = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, warmup_steps=10, seed=seed,
                     progress=False, log_every=10)  # fmt: skip
    return [float(v) for v in train(model, data, tc, device="cpu").history["loss"]]


@torch.no_grad()
def itc_r1(model: Blip | CoCa, images: Tensor, captions: list[str]) -> float:
    """Mean of image->text and text->image R@1 from the contrastive embeddings."""
    model.eval()
    if isinstance(model, CoCa):
        ids = tokenize(captions, COCA_TEXT)["input_ids"]
        sim = model.encode_image(images) @ model.encode_text(ids).T
    else:
        t = tokenize(captions, BLIP_TEXT)
        sim = model.encode_image(images) @ model.encode_text(t["input_ids"], t["attention_mask"]).T
    return float(retrieval_metrics(sim, ks=(1,))["mean_R@1"])


@torch.no_grad()
def caption(model: Blip | CoCa, images: Tensor, method: str = "greedy", top_p: float = 0.9,
            seed: int = 0, chunk: int = 250) -> list[str]:  # fmt: skip
    """Generated captions (strings) for images, in chunks."""
    model.eval()
    g, out = torch.Generator().manual_seed(seed), []
    for i in range(0, len(images), chunk):
        ids = model.generate(images[i : i + chunk], method, max_new_tokens=16, top_p=top_p,
                             generator=g)  # fmt: skip
        out += shapes_tokenizer().batch_decode(ids)
    return out


@torch.no_grad()
def itm_scores(model: Blip, images: Tensor, captions: list[str], chunk: int = 500) -> Tensor:
    """The filter: P(match) of each (image, caption) pair from the ITM head, ([ENC] first)."""
    model.eval()
    t = tokenize(captions, BLIP_TEXT)
    return torch.cat([model.itm_score(t["input_ids"][i : i + chunk], images[i : i + chunk],
                                      t["attention_mask"][i : i + chunk])
                      for i in range(0, len(images), chunk)])  # fmt: skip


def precision_recall(removed: np.ndarray, corrupted: np.ndarray) -> tuple[float, float]:
    """The filter as a detector of corrupted pairs: precision and recall of what it removes."""
    tp = float((removed & corrupted).sum())
    return tp / max(int(removed.sum()), 1), tp / max(int(corrupted.sum()), 1)


def web_selection(arm: str, keep: np.ndarray, corrupted: np.ndarray, seed: int) -> np.ndarray:
    """Which web pairs a retrained model sees: all ("noisy"), the filter's ("filtered"), exactly
    the right ones ("oracle"), as many as the filter keeps at random ("random"), none ("clean")."""
    if arm == "random":
        sel = np.zeros(len(keep), bool)
        sel[np.random.default_rng([seed, 4321]).permutation(len(keep))[: int(keep.sum())]] = True
        return sel
    select = {"noisy": np.ones(len(keep), bool), "filtered": keep, "oracle": ~corrupted,
              "clean": np.zeros(len(keep), bool)}  # fmt: skip
    if arm not in select:
        raise ValueError(f"run_capfilt: unknown retrain arm {arm!r}; expected one of "
                         f"{sorted([*select, 'random'])}, optionally +nucleus/+beam and @steps")
    return select[arm]


def run_capfilt(cfg: CapFiltConfig, data: dict[str, Any] | None = None) -> tuple[dict, Blip]:
    """CapFilt end to end (module docstring); returns (record, the captioner-filter BLIP)."""
    data = data or make_data(cfg)
    t0 = time.process_time()
    clean = Pairs(pixel_values=data["clean_px"], **tokenize(data["clean_caps"], BLIP_TEXT))
    capfilt = make_blip(cfg.seed)
    loss = fit(capfilt, clean, cfg.captioner_steps, cfg.batch_size, cfg.lr, cfg.seed)
    threshold = cfg.threshold
    if threshold is None:  # keep a ``keep_clean`` share of the clean pairs: no web labels used
        clean_scores = itm_scores(capfilt, data["clean_px"], data["clean_caps"]).numpy()
        threshold = float(np.quantile(clean_scores, 1.0 - cfg.keep_clean))
    scores = itm_scores(capfilt, data["web_px"], data["web_caps"]).numpy()
    keep = scores > threshold
    prec, rec = precision_recall(~keep, data["corrupted"])
    rec_ = {"config": asdict(cfg), "captioner_loss": loss[-1], "threshold": threshold,
            "filter_precision": prec,
            "filter_recall": rec, "kept_web": float(keep.mean()),
            "noise_left": float(data["corrupted"][keep].mean()) if keep.any() else 0.0,
            "captions": {}, "r1": {}}  # fmt: skip
    synth: dict[str, tuple[list[str], np.ndarray]] = {}
    for method in cfg.methods:
        caps = caption(capfilt, data["web_px"], method, cfg.top_p, cfg.seed)
        ok = itm_scores(capfilt, data["web_px"], caps).numpy() > threshold
        synth[method] = (caps, ok)
        rec_["captions"][method] = {
            "exact": float(np.mean([c == t for c, t in zip(caps, data["web_true"], strict=True)])),
            "distinct": len(set(caps)) / len(caps), "kept": float(ok.mean()),
            "exact_kept": float(np.mean([c == t for c, t, o in zip(caps, data["web_true"], ok,
                                                                   strict=True) if o] or [0.0])),
            "examples": caps[:6]}  # fmt: skip
    more: list[tuple[Tensor, list[str]]] = []  # held-out sets 2.. (eval_pairs seeds 2, 3, ...,
    for k in range(2, 100):  # skipping a seed whose 80 scenes hold fewer than n_eval captions)
        if len(more) == cfg.eval_sets - 1:
            break
        try:
            more.append(eval_pairs(cfg.n_eval, seed=k, world=ShapesWorld(**WORLD)))
        except ValueError:
            continue

    def score(arm: str, model: Blip) -> None:
        rec_["r1"][arm] = itc_r1(model, data["eval_px"], data["eval_caps"])
        if more:
            rec_.setdefault("r1_sets", {})[arm] = [rec_["r1"][arm]] + [
                itc_r1(model, px, caps) for px, caps in more]

    score("captioner", capfilt)
    for arm in cfg.retrain:
        name, _, steps = arm.partition("@")
        px, caps = [data["clean_px"]], list(data["clean_caps"])
        sel = web_selection(name.split("+")[0], keep, data["corrupted"], cfg.seed)
        px.append(data["web_px"][torch.from_numpy(sel)])
        caps += [c for c, s in zip(data["web_caps"], sel, strict=True) if s]
        if "+" in name:
            s_caps, ok = synth[name.split("+")[1]]
            px.append(data["web_px"][torch.from_numpy(ok)])
            caps += [c for c, o in zip(s_caps, ok, strict=True) if o]
        pairs = Pairs(pixel_values=torch.cat(px), **tokenize(caps, BLIP_TEXT))
        model = make_blip(cfg.seed + 100, itm_weight=0.0, lm_weight=0.0, decoder=False)
        fit(model, pairs, int(steps or cfg.retrieval_steps), cfg.batch_size, cfg.lr, cfg.seed)
        score(arm, model)
        rec_.setdefault("pairs", {})[arm] = len(pairs)
    rec_["cpu_s"] = round(time.process_time() - t0, 1)
    return rec_, capfilt


# ------------------------------------------------------------------------------- CoCa


@torch.no_grad()
def fan_in_init_(model: torch.nn.Module) -> torch.nn.Module:
    """Lecture 3's fan-in initialisation for any model built of minivlm attention and MLP layers:
    q/k/v and ``fc1`` ~ N(0, 1/fan_in), residual outputs (``out_proj``, ``fc2``) ~
    N(0, 1/(2 · fan_in · L)) with L the number of such layers. From BERT's std-0.02 init a
    contrastive text embedding hardly depends on the words (lecture 3)."""
    attns = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    mlps = [m for m in model.modules() if isinstance(m, MLP)]
    L = max(len(mlps), 1)
    for a in attns:
        for lin in (a.q_proj, a.k_proj, a.v_proj):
            torch.nn.init.normal_(lin.weight, std=lin.in_features**-0.5)
        torch.nn.init.normal_(a.out_proj.weight, std=(a.out_proj.in_features * 2 * L) ** -0.5)
    for m in mlps:
        torch.nn.init.normal_(m.fc1.weight, std=m.fc1.in_features**-0.5)
        torch.nn.init.normal_(m.fc2.weight, std=(m.fc2.in_features * 2 * L) ** -0.5)
    return model


def make_coca(seed: int, caption_weight: float, contrastive_weight: float) -> CoCa:
    """The lecture's small CoCa (:data:`COCA_MODEL`), seeded, fan-in init, the two weights."""
    minivlm.seed_everything(seed)
    model = minivlm.create_model("coca_tiny", vocab_size=shapes_tokenizer().vocab_size,
                                 caption_weight=caption_weight,
                                 contrastive_weight=contrastive_weight, **COCA_MODEL)  # fmt: skip
    for p in (model.text_proj.weight, model.image_proj.weight):
        torch.nn.init.normal_(p, std=p.shape[1] ** -0.5)
    return fan_in_init_(model)


@torch.no_grad()
def caption_scores(model: CoCa, images: Tensor, captions: list[str]) -> dict[str, float]:
    """Teacher-forced next-token accuracy on the true captions, and exact match of greedy ones."""
    model.eval()
    ids = tokenize(captions, COCA_TEXT)["input_ids"]
    logits = model(images, ids).logits  # (B, T-1, V)
    real = ids[:, 1:] != 0
    acc = float((logits.argmax(-1) == ids[:, 1:])[real].float().mean())
    greedy = caption(model, images, "greedy")
    exact = float(np.mean([g == c for g, c in zip(greedy, captions, strict=True)]))
    return {"token_acc": acc, "exact": exact, "examples": greedy[:4]}


def run_coca(cfg: CoCaConfig) -> tuple[dict[str, Any], dict[str, CoCa]]:
    """Train the three arms; returns ({arm: scores}, {arm: model})."""
    world = ShapesWorld(**WORLD)
    data = world.generate(cfg.n_train, seed=0)
    pairs = Pairs(pixel_values=data.pixel_values(),
                  input_ids=tokenize([data.caption(i) for i in range(len(data))],
                                     COCA_TEXT)["input_ids"])  # fmt: skip
    images, captions = eval_pairs(cfg.n_eval, world=world)
    out, models = {}, {}
    for name, lam_cap, lam_con in cfg.arms:
        c0 = time.process_time()
        model = make_coca(cfg.seed, lam_cap, lam_con)
        with_loss = MethodModule(model, "forward", return_loss=True)  # CoCa's loss, to train
        loss = fit(with_loss, pairs, cfg.steps, cfg.batch_size, cfg.lr, cfg.seed)
        out[name] = {"caption_weight": lam_cap, "contrastive_weight": lam_con,
                     "r1": itc_r1(model, images, captions),
                     **caption_scores(model, images, captions), "final_loss": loss[-1],
                     "cpu_s": round(time.process_time() - c0, 1)}  # fmt: skip
        models[name] = model
    return out, models
