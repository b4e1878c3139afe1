"""Does momentum distillation make ALBEF robust to noisy captions? (ALBEF §3.3, Li et al. 2021)

The experiment that lecture 3 (``notebooks/03_albef_momentum_distillation.ipynb``) loads.
A fraction ``p`` of the training captions is corrupted -- the caption of image i is replaced by
the caption of another, random image, as in badly aligned web alt-text -- and the same ALBEF
is trained with one-hot ITC targets (``distill=False``) and with momentum distillation
(``distill=True``: targets ``α · softmax(s_m / τ) + (1 − α) · one-hot`` from the EMA model).
Held-out retrieval R@1 on clean pairs is measured every 100 steps.

Regenerate the committed results (the main grid: 3 noise levels x 2 x 3 seeds = 18 runs of
400 steps, about 6 minutes of CPU time in one process and one thread; 10-30 minutes of wall
time on a busy 2-core machine), then add the ablations (15 more runs, about 8 minutes of CPU)::

  python experiments/albef_noise.py --out experiments/results/albef_noise.json
  python experiments/albef_noise.py --out experiments/results/albef_noise.json --resume --ablations

It refuses to overwrite an existing results file unless ``--force`` is given (``--resume``
keeps the runs already there and runs only the missing ones). The file is rewritten
atomically after every run, with ``"complete": false`` until the last one, and a table of
mean ± std over seeds is printed at the end. Every run is deterministic given its seed (one
CPU thread): the seed draws which captions are corrupted and what replaces them, the initial
weights and the data order; the runs with and without distillation at one seed share all
three, so their difference is a paired comparison.

Choices made for a 2-core CPU, each one stated in the lecture:

* **ITC only** (``itm_weight = mlm_weight = 0``). Retrieval is what ITC trains, and the
  distilled ITC targets are where §3.3's argument about noisy pairs lives; ITM and MLM triple
  the cost of a step. (The paper distils MLM too.)
* **A small model from scratch** (ViT and BERT of width 64, 16x16-pixel patches, 2 text + 1
  fusion layers) with a fan-in initialisation (:func:`init_from_scratch_`). The paper starts
  from pre-trained DeiT and BERT; from BERT's std-0.02 init the text [CLS] hardly depends on
  the words and ITC with a queue collapses to one direction (R@1 stays at chance).
* **Short-horizon momentum and queue**: ``momentum = 0.9`` and a queue of one batch (64)
  instead of 0.995 and 65,536. At 0.995 the EMA model is still ~20% its random initial
  weights after 300 steps, and a queue that outnumbers the batch starts as random vectors;
  both slowed learning a lot at a few hundred steps on clean captions. The ablations measure,
  at 50 % noise, the paper's momentum 0.995 (with and without MoD) and a larger α = 0.7, and
  at 30 % noise training 2.5x longer (1,000 steps). (Under 50 % noise 0.995 turned out the
  better choice: see the lecture's section 5.)
* **Fixed τ = 0.07** (the paper's initial value; ``temp_min = temp_max``). A learnable τ with
  lr 1e-3 drops to ~0.01 within 200 steps, where the soft targets are nearly one-hot and the
  comparison would mostly measure τ.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import minivlm
from minivlm.data import CaptionDataset, ShapesData, ShapesWorld, shapes_tokenizer
from minivlm.eval import retrieval_metrics
from minivlm.models.albef import ALBEF
from minivlm.train import TrainConfig, train

NOISE_LEVELS = (0.0, 0.3, 0.5)
SEEDS = (0, 1, 2)
# BERT-style text: [CLS] ... [SEP], as ALBEF's text encoder reads it
TEXT_KW = dict(add_cls=True, add_sep=True, add_bos=False, add_eos=False)

# The model of the sweep: albef_tiny made ~4x smaller (see the module docstring).
MODEL = dict(
    vision_dim=64, vision_depth=2, vision_mlp_hidden=128, patch_size=16,
    text_dim=64, text_depth=3, text_mlp_hidden=128, fusion_from=2,
    embed_dim=64, queue_size=64, momentum=0.9, alpha=0.4,
    temp=0.07, temp_min=0.07, temp_max=0.07, itm_weight=0.0, mlm_weight=0.0,
)  # fmt: skip


@dataclass
class RunConfig:
    """One training run: noise level, distillation on/off, seed, and the training budget."""

    noise: float = 0.5
    distill: bool = True
    seed: int = 0
    steps: int = 400
    batch_size: int = 64
    lr: float = 1e-3
    n_train: int = 2000
    eval_every: int = 100
    model: dict[str, Any] = field(default_factory=dict)  # overrides of MODEL


def corrupt_captions(n: int, noise: float, seed: int) -> np.ndarray:
    """Which caption each of ``n`` training images gets: ``src[i] = i`` for a clean pair, else
    the index of another image (never i itself). Exactly ``round(noise · n)`` images, drawn at
    random from ``seed``, are corrupted."""
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"corrupt_captions: noise must be a fraction in [0, 1], got {noise}")
    rng = np.random.default_rng([seed, 1234])
    src = np.arange(n)
    bad = rng.permutation(n)[: round(noise * n)]
    src[bad] = (bad + rng.integers(1, n, len(bad))) % n  # a shift of 1..n-1: never itself
    return src


class NoisyCaptionDataset(CaptionDataset):
    """:class:`CaptionDataset` (canonical captions) where image i is paired with the caption
    of image ``src[i]`` (:func:`corrupt_captions`)."""

    def __init__(self, data: ShapesData, tokenizer: Any, src: np.ndarray, **text: Any) -> None:
        super().__init__(data, tokenizer, mode="fixed", **text)
        if len(src) != len(data):
            raise ValueError(
                f"NoisyCaptionDataset: src must have one entry per image ({len(data)}), "
                f"got {len(src)}"
            )
        self.src = np.asarray(src)

    def text(self, k: int) -> str:
        return self.data.caption(int(self.src[k]))


def eval_pairs(n: int = 256, seed: int = 1, world: ShapesWorld | None = None
               ) -> tuple[torch.Tensor, list[str]]:  # fmt: skip
    """``n`` held-out (image, canonical caption) pairs with pairwise distinct captions, so that
    R@1 has exactly one right answer in both directions: (n, 3, 64, 64) images, n captions.
    ``world``: the scenes' world (default ``ShapesWorld()``)."""
    data = (world or ShapesWorld()).generate(2 * n, seed=seed)
    seen: set[str] = set()
    keep = []
    for i in range(len(data)):
        c = data.caption(i)
        if c not in seen:
            seen.add(c)
            keep.append(i)
    if len(keep) < n:
        raise ValueError(f"eval_pairs: only {len(keep)} distinct captions among {2 * n} scenes")
    keep = keep[:n]
    return data.pixel_values(keep), [data.caption(i) for i in keep]


@torch.no_grad()
def init_from_scratch_(model: ALBEF) -> ALBEF:
    """Fan-in initialisation for training from scratch (replaces BERT/ViT's std-0.02 init).

    Width D, depth L: q/k/v ~ N(0, 1/fan_in), residual outputs (attention ``out_proj``,
    ``mlp.fc2``) ~ N(0, 1/(fan_in · 2L)), ``mlp.fc1`` ~ N(0, 1/D), image CLS token, positions
    and both projections ~ N(0, 1/D) -- CLIP's released init. Then the momentum model is
    reset to a copy of the online one.
    """
    for enc in (model.image_encoder, model.text_encoder):
        D, L = enc.config.dim, enc.config.depth
        for blk in enc.blocks:
            attns = [blk.attn] + ([blk.cross_attn] if getattr(blk, "cross_attn", None) else [])
            for att in attns:
                for lin in (att.q_proj, att.k_proj, att.v_proj):
                    torch.nn.init.normal_(lin.weight, std=lin.in_features**-0.5)
                torch.nn.init.normal_(att.out_proj.weight, std=(D * 2 * L) ** -0.5)
            torch.nn.init.normal_(blk.mlp.fc1.weight, std=D**-0.5)
            torch.nn.init.normal_(blk.mlp.fc2.weight, std=(blk.mlp.fc2.in_features * 2 * L) ** -0.5)
    vit = model.image_encoder
    torch.nn.init.normal_(vit.cls_token, std=vit.config.dim**-0.5)
    torch.nn.init.normal_(vit.pos_embed, std=vit.config.dim**-0.5)
    torch.nn.init.normal_(model.vision_proj.weight, std=vit.config.dim**-0.5)
    torch.nn.init.normal_(model.text_proj.weight, std=model.config.text.dim**-0.5)
    model.copy_params_to_momentum()
    return model


def make_model(vocab_size: int, seed: int, **overrides: Any) -> ALBEF:
    """The sweep's ALBEF (:data:`MODEL` + overrides), seeded and initialised."""
    minivlm.seed_everything(seed)
    model = minivlm.create_model("albef_tiny", vocab_size=vocab_size, **{**MODEL, **overrides})
    return init_from_scratch_(model)


@torch.no_grad()
def retrieval_r1(model: ALBEF, tok: Any, images: torch.Tensor, captions: list[str]) -> dict:
    """ITC retrieval on held-out pairs: cosine(image, caption) ranks; R@1 and R@5 both ways."""
    was_training = model.training
    model.eval()
    t = tok(captions, **TEXT_KW)
    sim = model.encode_image(images) @ model.encode_text(t["input_ids"], t["attention_mask"]).T
    model.train(was_training)
    r = retrieval_metrics(sim, ks=(1, 5))  # (N, N) diagonal ground truth
    return {k: r[k] for k in ("mean_R@1", "i2t_R@1", "t2i_R@1", "mean_R@5", "chance_R@1")}


def run(cfg: RunConfig, data: ShapesData | None = None, evalset: tuple | None = None,
        progress: bool = False) -> tuple[dict[str, Any], ALBEF]:  # fmt: skip
    """Train one model and return (record, model); the record holds the R@1 curve."""
    tok = shapes_tokenizer()
    data = data if data is not None else ShapesWorld().generate(cfg.n_train, seed=0)
    images, captions = evalset if evalset is not None else eval_pairs()
    src = corrupt_captions(len(data), cfg.noise, cfg.seed)
    ds = NoisyCaptionDataset(data, tok, src, **TEXT_KW)
    warm = len(data) // cfg.batch_size  # α ramps from 0 over the first epoch, as in the paper
    model = make_model(tok.vocab_size, cfg.seed, distill=cfg.distill, alpha_warmup_steps=warm,
                       **cfg.model)  # fmt: skip
    tc = TrainConfig(steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, warmup_steps=20,
                     eval_every=cfg.eval_every, seed=cfg.seed, progress=progress,
                     log_every=cfg.eval_every)  # fmt: skip
    t0, c0 = time.perf_counter(), time.process_time()
    res = train(model, ds, tc, device="cpu",
                eval_fn=lambda m: retrieval_r1(m, tok, images, captions))  # fmt: skip
    h = res.history
    record = {
        "noise": cfg.noise, "distill": cfg.distill, "seed": cfg.seed, "steps": cfg.steps,
        "model": cfg.model, "corrupted": int((src != np.arange(len(src))).sum()),
        "eval_step": [int(s) for s in h["eval_step"]],
        "r1": [round(v, 5) for v in h["eval_mean_R@1"]],
        "i2t_r1": [round(v, 5) for v in h["eval_i2t_R@1"]],
        "t2i_r1": [round(v, 5) for v in h["eval_t2i_R@1"]],
        "r5": [round(v, 5) for v in h["eval_mean_R@5"]],
        "final_loss": round(float(np.mean(h["loss"][-20:])), 4),
        "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
    }  # fmt: skip
    return record, model


@torch.no_grad()
def momentum_features(model: ALBEF, px: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(B, E) normalised image and text [CLS] features of ALBEF's momentum (EMA) model (§3.3)."""
    _, image_feat_m, text_feat_m = model.momentum_features(px, ids, mask)
    return image_feat_m, text_feat_m


def sweep_configs(steps: int, seeds: tuple[int, ...]) -> list[tuple[str, RunConfig]]:
    """(section, config) of every run: the main grid, then the ablations."""
    out = [
        ("main", RunConfig(noise=p, distill=d, seed=s, steps=steps))
        for s in seeds
        for p in NOISE_LEVELS
        for d in (False, True)
    ]  # seed outermost: a sweep cut short still holds whole seeds
    # name: (model overrides, distill arms, noise, steps)
    ablations = {
        "alpha=0.7": (dict(alpha=0.7), (True,), 0.5, steps),
        "momentum=0.995": (dict(momentum=0.995), (False, True), 0.5, steps),
        "steps=1000": ({}, (False, True), 0.3, 1000),
    }
    for name, (over, arms, noise, n_steps) in ablations.items():
        out += [
            (name, RunConfig(noise=noise, distill=d, seed=s, steps=n_steps, model=over))
            for s in seeds
            for d in arms
        ]
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{"<section> noise=<p> distill=<d>": {mean, std, n, ...}}`` of the final mean R@1."""
    groups: dict[str, list[float]] = {}
    for r in runs:
        key = f"{r['section']} noise={r['noise']} distill={r['distill']}"
        groups.setdefault(key, []).append(r["r1"][-1])
    return {k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1
                else 0.0, "n": len(v), "values": v} for k, v in groups.items()}  # fmt: skip


def print_table(results: dict[str, Any], file: Any = sys.stdout) -> None:
    """Final held-out mean R@1 (mean ± std over seeds), and the paired MoD − one-hot gain."""
    runs = results["runs"]
    print(
        f"{'section':16s} {'noise':>5s} {'one-hot R@1':>14s} {'MoD R@1':>14s} {'paired gain':>14s}",
        file=file,
    )
    sections = list(dict.fromkeys(r["section"] for r in runs))
    for sec in sections:
        for p in dict.fromkeys(r["noise"] for r in runs if r["section"] == sec):
            by = {(r["distill"], r["seed"]): r["r1"][-1] for r in runs
                  if r["section"] == sec and r["noise"] == p}  # fmt: skip
            cells = []
            for d in (False, True):
                v = [x for (dd, _), x in by.items() if dd == d]
                cells.append(f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.3f}"
                             if v else "-")  # fmt: skip
            gains = [by[True, s] - by[False, s] for (d, s) in by if d and (False, s) in by]
            g = (f"{np.mean(gains):+.3f} ± {np.std(gains, ddof=1) if len(gains) > 1 else 0:.3f}"
                 if gains else "-")  # fmt: skip
            print(f"{sec:16s} {p:5.1f} {cells[0]:>14s} {cells[1]:>14s} {g:>14s}", file=file)


# ----------------------------------------------------------------------------- exercise 03's
# "implement, train, explain" part: ITC with queues and momentum distillation on two small
# towers over fixed input features, so that a run trains in a second or two of CPU. The image
# tower reads the mean colour of each of the 4x4 patches, the text tower a bag of words; each
# is a two-layer MLP into a shared 32-d space. The momentum copies, the queues, the targets and
# the loss are ALBEF's (§3.2-3.3).


@dataclass
class SmallRun:
    """The budget of exercise 03's training part."""

    n_train: int = 600
    n_eval: int = 48
    steps: int = 150
    batch_size: int = 32
    lr: float = 3e-3
    embed_dim: int = 32
    queue_size: int = 64
    momentum: float = 0.9
    temp: float = 0.07


def patch_colours(px: torch.Tensor, patch: int = 16) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3 * (H/patch) * (W/patch)): the mean colour of every patch."""
    return F.avg_pool2d(px, patch).flatten(1)


def bag_of_words(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, T) ids -> (B, V) word counts (special tokens included; they are the same for all)."""
    return F.one_hot(ids, vocab_size).sum(1).float()


def small_data(noise: float, seed: int, run: SmallRun | None = None) -> dict[str, torch.Tensor]:
    """Input features of one-object scenes whose captions are corrupted with probability
    ``noise`` (:func:`corrupt_captions`, drawn from ``seed``): ``image`` (n, 48) patch colours,
    ``text`` (n, V) bags of words of the (possibly wrong) training captions; ``eval_image`` /
    ``eval_text`` for held-out clean pairs with pairwise distinct captions. The scenes are fixed
    (world seeds 0 and 1)."""
    run = run or SmallRun()
    tok = shapes_tokenizer()
    world = ShapesWorld(max_objects=1)
    data = world.generate(run.n_train, seed=0)
    src = corrupt_captions(run.n_train, noise, seed)
    held = world.generate(4 * run.n_eval, seed=1)
    first: dict[str, int] = {}
    for i in range(len(held)):
        first.setdefault(held.caption(i), i)
    keep = sorted(first.values())[: run.n_eval]  # one scene per distinct caption
    text = tok([data.caption(int(j)) for j in src], **TEXT_KW)["input_ids"]
    eval_text = tok([held.caption(i) for i in keep], **TEXT_KW)["input_ids"]
    return {"image": patch_colours(data.pixel_values()),
            "text": bag_of_words(text, tok.vocab_size),
            "eval_image": patch_colours(held.pixel_values(keep)),
            "eval_text": bag_of_words(eval_text, tok.vocab_size)}  # fmt: skip


class SmallTowers(torch.nn.Module):
    """Two MLP towers into a shared normalised space, their momentum copies and two queues."""

    def __init__(self, image_dim: int, text_dim: int, run: SmallRun | None = None) -> None:
        super().__init__()
        run = run or SmallRun()
        E, H = run.embed_dim, 64

        def mlp(d: int) -> torch.nn.Module:
            return torch.nn.Sequential(torch.nn.Linear(d, H), torch.nn.GELU(),
                                       torch.nn.Linear(H, E))  # fmt: skip

        self.image_tower, self.text_tower = mlp(image_dim), mlp(text_dim)
        self.image_tower_m = copy.deepcopy(self.image_tower).requires_grad_(False)
        self.text_tower_m = copy.deepcopy(self.text_tower).requires_grad_(False)
        self.register_buffer("image_queue", F.normalize(torch.randn(E, run.queue_size), dim=0))
        self.register_buffer("text_queue", F.normalize(torch.randn(E, run.queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def features(self, image: torch.Tensor, text: torch.Tensor, momentum: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """(B, E) normalised image and text features (of the momentum copies if asked)."""
        it, tt = ((self.image_tower_m, self.text_tower_m) if momentum
                  else (self.image_tower, self.text_tower))  # fmt: skip
        return F.normalize(it(image), dim=-1), F.normalize(tt(text), dim=-1)

    def momentum_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(online, momentum) parameter pairs for the EMA update."""
        online = [*self.image_tower.parameters(), *self.text_tower.parameters()]
        moment = [*self.image_tower_m.parameters(), *self.text_tower_m.parameters()]
        return list(zip(online, moment, strict=True))


def small_model(seed: int, data: dict[str, torch.Tensor], run: SmallRun | None = None
                ) -> SmallTowers:  # fmt: skip
    """The exercise's towers, seeded."""
    minivlm.seed_everything(seed)
    return SmallTowers(data["image"].shape[1], data["text"].shape[1], run)


@torch.no_grad()
def small_r1(model: SmallTowers, data: dict[str, torch.Tensor]) -> float:
    """Mean of image->text and text->image R@1 on the held-out pairs."""
    img, txt = model.features(data["eval_image"], data["eval_text"])
    sim = img @ txt.T  # (n, n)
    gt = torch.arange(len(sim))
    return float(((sim.argmax(1) == gt).float().mean() + (sim.argmax(0) == gt).float().mean()) / 2)


def reference_mod_itc_loss(image_feat: torch.Tensor, text_feat: torch.Tensor,
                           image_feat_m: torch.Tensor, text_feat_m: torch.Tensor,
                           image_queue: torch.Tensor, text_queue: torch.Tensor, temp: float,
                           alpha: float) -> torch.Tensor:  # fmt: skip
    """ALBEF's ITC loss with queues and momentum distillation (§3.2 Eq. 1-3, §3.3 Eq. 6).

    Features (B, E) normalised; queues (E, K). The positive of row i is column i of
    ``[batch; queue]``; the targets mix the momentum model's softmax (weight ``alpha``) with
    the one-hot labels. Returns the mean of the image->text and text->image soft
    cross-entropies, a scalar.
    """
    text_all = torch.cat([text_feat_m.t(), text_queue], dim=1)  # (E, B+K)
    image_all = torch.cat([image_feat_m.t(), image_queue], dim=1)  # (E, B+K)
    B, n = image_feat.shape[0], text_all.shape[1]
    with torch.no_grad():  # the targets, in the features' dtype
        onehot = torch.eye(B, n, dtype=image_feat.dtype)  # the positive of row i: column i
        t_i2t = alpha * (image_feat_m @ text_all / temp).softmax(1) + (1 - alpha) * onehot
        t_t2i = alpha * (text_feat_m @ image_all / temp).softmax(1) + (1 - alpha) * onehot
    l_i2t = -(t_i2t * (image_feat @ text_all / temp).log_softmax(1)).sum(1).mean()
    l_t2i = -(t_t2i * (text_feat @ image_all / temp).log_softmax(1)).sum(1).mean()
    return (l_i2t + l_t2i) / 2


def reference_train_noisy_itc(noise: float, alpha: float, seed: int,
                              loss_fn: Any = None) -> torch.Tensor:  # fmt: skip
    """Exercise 03's training run, the reference: :class:`SmallTowers` trained with ITC (+ MoD
    when ``alpha`` > 0) on captions with a fraction ``noise`` corrupted. Each step: online
    features, EMA update, momentum features, loss, optimizer step, enqueue (the paper's order).
    Returns ``tensor([held-out R@1])``."""
    from minivlm.objectives import ema_update_, enqueue_

    loss_fn = loss_fn or reference_mod_itc_loss
    run = SmallRun()
    data = small_data(noise, seed, run)
    model = small_model(seed, data, run)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=run.lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(run.steps):
        idx = torch.randint(run.n_train, (run.batch_size,), generator=gen)
        img, txt = model.features(data["image"][idx], data["text"][idx])  # (B, E)
        with torch.no_grad():
            ema_update_(model.momentum_pairs(), run.momentum)
            img_m, txt_m = model.features(data["image"][idx], data["text"][idx], momentum=True)
        loss = loss_fn(img, txt, img_m, txt_m, model.image_queue, model.text_queue, run.temp,
                       alpha)  # fmt: skip
        opt.zero_grad()
        loss.backward()
        opt.step()
        ptr = model.queue_ptr.clone()
        enqueue_(model.image_queue, ptr, img_m)
        enqueue_(model.text_queue, model.queue_ptr, txt_m)
    return torch.tensor([small_r1(model, data)])
