"""Does a ViLT that has learned *where* bind colours to places? (lecture 2, section 4c)

Section 4 of notebook 02 scores binding pairs (a true caption against the same words bound
differently, e.g. "a small red diamond at the top" vs "a small blue diamond at the top") and
finds a ViLT trained from ViLT's cold start at chance. Section 4b (``vilt_hops.py``) finds why
on a minimal task: the look-up "look where the word says" sits on a saddle, and a fixed-query
warm-up together with louder patch positions gets it off. This script tries that recipe on the
notebook's own binding test, over seeds, next to a cold-start ViLT and CLIP with the same data
and steps:

* ``vilt warm-up``   vilt_tiny (16x16 patches), patch positions drawn with std 0.5; for the
                     first ``--warmup`` steps the text is "[MASK] [MASK]" and the answers are
                     the colours of the left and of the top object (a *where* in x and in y,
                     with no word to read); then colour-word MLM on binding captions.
* ``vilt cold``      the same model and MLM steps from ViLT's init (std 0.02), no warm-up.
* ``clip``           clip_tiny (16x16 patches), the symmetric contrastive loss on the same
                     (image, caption) batches, as many steps.

Data: 3,000 two-object training scenes; every step draws 32 scenes whose two objects differ in
colour and one true binding caption of each (section 1's kinds: region, relation, size), and
hides every colour word for MLM. Scoring on the held-out two-object scenes of the notebook
(seed 1000 + seed): ViLT by the MLM pseudo-log-likelihood of the colour words, CLIP by cosine;
a pair counts when the true caption scores higher (chance 0.5). AdamW, lr 1e-3 (30 warm-up
steps, cosine decay), gradients clipped at norm 1, batch 32, one CPU thread, deterministic.

Regenerate the committed results (3 arms x 3 seeds x 1,600 steps, about 13 minutes of CPU
time in one thread)::

  python experiments/vilt_binding.py --out experiments/results/vilt_binding.json

It refuses to overwrite ``--out`` unless ``--force`` is given; the file is written atomically.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import minivlm
from minivlm.data import COLORS, SIZES, ShapesWorld, caption_truth, shapes_tokenizer
from minivlm.data.shapes import REGIONS
from minivlm.utils import atomic_write

KINDS = ("region", "relation", "size")  # the binding kinds a 16x16 patch can see
ARMS = ("vilt warm-up", "vilt cold", "clip")
SEEDS = (0, 1, 2)
MAX_LEN = 24  # notebook 02's text length (longest caption: 14 tokens with [BOS]/[EOS])


def recolour(text: str, old: str, new: str) -> str:
    """Replace the colour word ``old`` by ``new`` in a caption, fixing the article before it."""
    w = text.split()
    k = w.index(old)
    art = k - 2 if w[k - 1] in SIZES else k - 1  # "a (large) red ..."
    w[k] = new
    w[art] = "an" if w[art + 1][0] in "aeiou" else "a"
    return " ".join(w)


def binding_pairs(data: Any, i: int, with_shape: bool = False) -> dict[str, tuple[str, str]]:
    """{kind: (true caption, hard negative)} for a two-object scene with two colours (notebook
    02, section 1). ``with_shape`` adds the library's ``swap_attribute`` (colour <-> shape).
    Every negative is checked false and every positive true with ``caption_truth``."""
    scene = data.scenes[i]
    if len(scene.objects) != 2 or scene.objects[0].color == scene.objects[1].color:
        return {}
    a, b = scene.objects
    out = {}
    if scene.region(a) != scene.region(b):  # colour <-> position: "a large red circle in ..."
        o, other = (a, b) if i % 2 == 0 else (b, a)
        words = " ".join(REGIONS).split()
        named = [c for c in data.captions(i) if o.color in c.split() and o.shape in c.split()]
        cap = next(c for c in named if c.split()[-1] in words)
        out["region"] = (cap, recolour(cap, o.color, other.color))
    if "swap_relation" in data.hard_negatives(i):  # "a red circle left of a blue square"
        out["relation"] = data.hard_negatives(i)["swap_relation"]
    if a.size != b.size:  # colour <-> size: swap "small" and "large"
        cap = data.caption(i)
        swap = {"small": "large", "large": "small"}
        out["size"] = (cap, " ".join(swap.get(w, w) for w in cap.split()))
    if with_shape and "swap_attribute" in data.hard_negatives(i):
        out["swap_attribute"] = data.hard_negatives(i)["swap_attribute"]
    for pos, neg in out.values():
        assert caption_truth(scene, pos) is True and caption_truth(scene, neg) is False, (pos, neg)
    return out


def test_pairs(data: Any, kinds: tuple[str, ...] = KINDS) -> dict[str, list[tuple[int, str, str]]]:
    """kind -> [(scene index, true caption, hard negative)] over a data set."""
    out: dict[str, list[tuple[int, str, str]]] = {k: [] for k in kinds}
    for i in range(len(data)):
        for kind, (pos, neg) in binding_pairs(data, i, "swap_attribute" in kinds).items():
            if kind in out:
                out[kind].append((i, pos, neg))
    return out


class Text:
    """Tokenising and colour masking with the shapes tokenizer."""

    def __init__(self) -> None:
        self.tok = shapes_tokenizer()
        self.colour_ids = torch.tensor([self.tok.encode(c)[0] for c in COLORS])  # (6,)

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tok(list(texts), max_length=MAX_LEN, add_bos=True, add_eos=True)
        return enc["input_ids"], enc["attention_mask"]

    def mask_colours(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every colour word -> [MASK]; labels = the hidden ids, -100 elsewhere, both (B, T)."""
        hide = torch.isin(ids, self.colour_ids)
        return ids.masked_fill(hide, self.tok.mask_id), ids.masked_fill(~hide, -100)


def vilt_mlm_score(model: nn.Module, text: Text, ids, am, px) -> torch.Tensor:
    """Pseudo-log-likelihood of the colour words (mask them all, sum log p at the slots), (n,)."""
    masked, labels = text.mask_colours(ids)
    out = model(input_ids=masked, attention_mask=am, pixel_values=px)
    logp = out.mlm_logits.log_softmax(-1)  # (n, T, V)
    slots = labels != -100
    return (logp.gather(-1, labels.clamp_min(0)[..., None])[..., 0] * slots).sum(1)


def clip_score(model: nn.Module, text: Text, ids, am, px) -> torch.Tensor:
    t = F.normalize(model.encode_text(ids, am), dim=-1)
    return (t * F.normalize(model.encode_image(px), dim=-1)).sum(-1)  # (n,) cosine


@torch.no_grad()
def pair_accuracy(score, text: Text, pairs: dict[str, list], data: Any) -> dict[str, float]:
    """Per kind: the fraction of pairs whose true caption scores above its negative;
    ``score(ids, attention_mask, pixels) -> (n,)``."""
    acc = {}
    for kind, rows in pairs.items():
        idx, pos, neg = zip(*rows, strict=True)
        px = data.pixel_values(list(idx))
        right = score(*text.encode(list(pos)), px) > score(*text.encode(list(neg)), px)
        acc[kind] = float(right.float().mean())
    return acc


def run(
    arm: str,
    seed: int,
    steps: int = 1600,
    warmup: int = 400,
    n_train: int = 3000,
    lr: float = 1e-3,
    batch_size: int = 32,
    pos_std: float = 0.5,
) -> tuple[dict[str, Any], nn.Module]:
    """Train one arm and score it on the held-out binding pairs: (record, model)."""
    if arm not in ARMS:
        raise ValueError(f"run: arm must be one of {ARMS}, got {arm!r}")
    text = Text()
    world = ShapesWorld(min_objects=2, max_objects=2)
    train, test = world.generate(n_train, seed=seed), world.generate(400, seed=1000 + seed)
    pairs = {i: p for i in range(len(train)) if (p := binding_pairs(train, i))}
    scenes = sorted(pairs)
    pixels = train.pixel_values()  # (n_train, 3, 64, 64)
    names = list(COLORS)
    minivlm.seed_everything(seed)
    if arm == "clip":
        model = minivlm.create_model("clip_tiny", vocab_size=text.tok.vocab_size,
                                     max_len=MAX_LEN, patch_size=16)  # fmt: skip
    else:
        model = minivlm.create_model("vilt_tiny", vocab_size=text.tok.vocab_size,
                                     max_text_len=MAX_LEN, patch_size=16,
                                     num_answers=0)  # fmt: skip
        if arm == "vilt warm-up":
            nn.init.trunc_normal_(model.pos_embed, std=pos_std, a=-3 * pos_std, b=3 * pos_std)
    warm = warmup if arm == "vilt warm-up" else 0
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 30) * 0.5 * (1 + np.cos(np.pi * s / steps))
    )
    gen = torch.Generator().manual_seed(seed)
    warm_ids = torch.tensor([[text.tok.bos_id, text.tok.mask_id, text.tok.mask_id,
                              text.tok.eos_id]] * batch_size)  # fmt: skip
    losses = []
    t0 = time.process_time()
    for step in range(1, steps + 1):
        batch = [scenes[j] for j in torch.randint(len(scenes), (batch_size,), generator=gen)]
        caps = []
        for i in batch:
            kinds = list(pairs[i])
            caps.append(pairs[i][kinds[int(torch.randint(len(kinds), (1,), generator=gen))]][0])
        ids, am = text.encode(caps)
        px = pixels[batch]
        if step <= warm:  # "[MASK] [MASK]" -> colours of the left and of the top object
            objs = [train.scenes[i].objects for i in batch]
            left = torch.tensor([names.index(min(o, key=lambda x: x.x).color) for o in objs])
            top = torch.tensor([names.index(min(o, key=lambda x: x.y).color) for o in objs])
            logits = model(input_ids=warm_ids, pixel_values=px).mlm_logits  # (B, 4, V)
            cols = logits[:, 1:3][..., text.colour_ids]  # (B, 2, 6)
            loss = F.cross_entropy(cols[:, 0], left) + F.cross_entropy(cols[:, 1], top)
        elif arm == "clip":
            loss = model(input_ids=ids, attention_mask=am, pixel_values=px).loss
        else:
            masked, labels = text.mask_colours(ids)
            out = model(input_ids=masked, attention_mask=am, pixel_values=px)
            loss = F.cross_entropy(out.mlm_logits.flatten(0, 1), labels.flatten())
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    cpu = time.process_time() - t0
    model.eval()
    scorer = clip_score if arm == "clip" else vilt_mlm_score
    acc = pair_accuracy(lambda *a: scorer(model, text, *a), text, test_pairs(test), test)
    record = dict(arm=arm, seed=seed, steps=steps, warmup=warm, cpu_seconds=round(cpu, 1),
                  final_loss=round(float(np.mean(losses[-20:])), 4),
                  **{k: round(v, 4) for k, v in acc.items()})  # fmt: skip
    return record, model


def summarize(runs: list[dict]) -> dict[str, dict[str, Any]]:
    """Per arm and kind: the seeds' accuracies, their mean and min."""
    table: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        rows = [r for r in runs if r["arm"] == arm]
        if rows:
            table[arm] = {}
            for k in KINDS:
                v = [r[k] for r in rows]
                table[arm][k] = {"acc": v, "mean": float(np.mean(v)), "min": min(v)}
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="results JSON to write")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --out")
    ap.add_argument("--steps", type=int, default=1600, help="steps of each run, warm-up included")
    ap.add_argument("--warmup", type=int, default=400, help="warm-up steps of 'vilt warm-up'")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--n-train", type=int, default=3000)
    args = ap.parse_args(argv)
    if args.out.exists() and not args.force:
        print(f"{args.out} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    runs = []
    for arm in args.arms:
        for seed in args.seeds:
            r, _ = run(arm, seed, args.steps, args.warmup, args.n_train)
            runs.append(r)
            print(f"{arm:12s} seed {seed}: " + ", ".join(f"{k} {r[k]:.3f}" for k in KINDS)
                  + f" ({r['cpu_seconds']:.0f} s CPU)", flush=True)  # fmt: skip
    result = dict(
        experiment="vilt_binding", steps=args.steps, warmup=args.warmup, seeds=args.seeds,
        n_train=args.n_train, torch=torch.__version__, machine=platform.machine(), runs=runs,
        summary=summarize(runs),
    )  # fmt: skip
    text = json.dumps(result, indent=1)
    atomic_write(args.out, lambda p: p.write_text(text + "\n"))
    for arm, cell in result["summary"].items():
        print(f"{arm:12s} " + ", ".join(f"{k} {cell[k]['mean']:.3f} (min {cell[k]['min']:.3f})"
                                        for k in KINDS))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
