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

Each ViLT is then fine-tuned for VQA (``--vqa-steps``, 300: notebook 02's section-8 recipe,
the answer read at an appended [MASK]) and scored by question type against each type's
majority answer (``vqa_by_type``; the notebook calls it for its live model too).

Regenerate the committed results (3 arms x 3 seeds x 1,600 steps, plus the VQA fine-tuning,
about 15 minutes of CPU time in one thread)::

  python experiments/vilt_binding.py --out experiments/results/vilt_binding.json

``experiments/vilt_binding.py`` runs this recipe over seeds; it refuses to overwrite
``--out`` unless ``--force`` is given and writes the file atomically.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import minivlm
from minivlm.data import (
    ANSWERS,
    COLORS,
    QTYPES,
    SIZES,
    ShapesWorld,
    VQADataset,
    caption_truth,
    shapes_tokenizer,
)
from minivlm.data.shapes import REGIONS
from minivlm.train import TrainConfig, train

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


# ---------------------------------------------------------------------------
# VQA on an answer [MASK] (notebook 02, section 8)
# ---------------------------------------------------------------------------


def with_answer_slot(batch: dict[str, torch.Tensor], mask_id: int) -> dict[str, torch.Tensor]:
    """Append a [MASK] after each question's last real token; its position is ``slot``."""
    n = batch["attention_mask"].sum(1)  # (B,) real tokens
    ids, am = F.pad(batch["input_ids"], (0, 1)), F.pad(batch["attention_mask"], (0, 1))
    rows = torch.arange(len(n))
    ids[rows, n], am[rows, n] = mask_id, 1
    return {"input_ids": ids, "attention_mask": am, "pixel_values": batch["pixel_values"],
            "slot": n, "vqa_labels": batch["answer"]}  # fmt: skip


class SlotVQA(nn.Module):
    """ViLT + its VQA head read at the answer [MASK] instead of the pooled [CLS]."""

    def __init__(self, vilt: nn.Module) -> None:
        super().__init__()
        self.vilt = vilt

    def forward(self, input_ids, attention_mask, pixel_values, slot, vqa_labels=None):
        h = self.vilt(input_ids=input_ids, attention_mask=attention_mask,
                      pixel_values=pixel_values).last_hidden_state  # (B, L, D)  # fmt: skip
        logits = self.vilt.vqa_head(h[torch.arange(len(slot)), slot])  # (B, num_answers)
        loss = None if vqa_labels is None else F.cross_entropy(logits, vqa_labels)
        return {"loss": loss, "logits": logits}


class _SlotBatches(torch.utils.data.Dataset):
    def __init__(self, ds: VQADataset, mask_id: int) -> None:
        self.ds, self.mask_id = ds, mask_id

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, k: int):
        return self.ds[k]

    def collate(self, items):
        return with_answer_slot(self.ds.collate(items), self.mask_id)


def vqa_by_type(
    vilt: nn.Module, train_data: Any, test_data: Any, seed: int, steps: int,
    batch_size: int = 32, lr: float = 1e-3,
) -> tuple[dict[str, dict[str, Any]], nn.Module, Any]:  # fmt: skip
    """Copy a pre-trained ViLT into a ViLT with a VQA head (softmax CE over ``ANSWERS``),
    fine-tune it for ``steps`` on ``train_data``'s questions with the head on an appended
    answer [MASK], and score ``test_data``'s: ``({qtype or "all": {n, acc, majority, top}},
    the VQA model, the training result)``. ``majority`` is the accuracy of the most frequent
    training answer of that question type."""
    tok = shapes_tokenizer()
    cfg = vilt.config
    vqa = minivlm.create_model("vilt_tiny", vocab_size=cfg.vocab_size,
                               max_text_len=cfg.max_text_len, patch_size=cfg.patch_size,
                               num_answers=len(ANSWERS), vqa_loss="ce")  # fmt: skip
    vqa.load_state_dict(vilt.state_dict(), strict=False)  # all but the fresh vqa_head
    vqa_train = VQADataset(train_data, tok, max_length=cfg.max_text_len - 1)
    vqa_test = VQADataset(test_data, tok, max_length=cfg.max_text_len - 1)
    cfg_train = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=20,
                            progress=False, seed=seed)  # fmt: skip
    res = train(SlotVQA(vqa), _SlotBatches(vqa_train, tok.mask_id), cfg_train, device="cpu")
    vqa.eval()
    vt = vqa_test.collate([vqa_test[k] for k in range(len(vqa_test))])
    with torch.no_grad():
        b = with_answer_slot(vt, tok.mask_id)
        inputs = {k: v for k, v in b.items() if k != "vqa_labels"}
        pred = torch.cat([SlotVQA(vqa)(**{k: v[c] for k, v in inputs.items()})["logits"].argmax(-1)
                          for c in torch.arange(len(vt["answer"])).split(512)])  # fmt: skip
    train_answers = torch.tensor([a for _, _, a, _ in vqa_train.items])
    train_types = torch.tensor([t for _, _, _, t in vqa_train.items])
    out: dict[str, dict[str, Any]] = {}
    for t, qtype in enumerate(QTYPES):
        sel = vt["qtype"] == t
        top = int(torch.mode(train_answers[train_types == t]).values)  # majority answer
        out[qtype] = {"n": int(sel.sum()),
                      "acc": float((pred[sel] == vt["answer"][sel]).float().mean()),
                      "majority": float((vt["answer"][sel] == top).float().mean()),
                      "top": ANSWERS[top]}  # fmt: skip
    out["all"] = {"n": len(pred), "acc": float((pred == vt["answer"]).float().mean()),
                  "majority": sum(r["majority"] * r["n"] for r in out.values()) / len(pred),
                  "top": "per type"}  # fmt: skip
    return out, vqa, res


def make_model(arm: str, text: Text, pos_std: float = 0.5) -> nn.Module:
    """A fresh model for ``arm`` (seed the RNG first): clip_tiny, or vilt_tiny with 16x16
    patches whose patch positions the warm-up arm draws with std ``pos_std`` (ViLT's: 0.02)."""
    if arm not in ARMS:
        raise ValueError(f"make_model: arm must be one of {ARMS}, got {arm!r}")
    if arm == "clip":
        return minivlm.create_model("clip_tiny", vocab_size=text.tok.vocab_size,
                                    max_len=MAX_LEN, patch_size=16)  # fmt: skip
    model = minivlm.create_model("vilt_tiny", vocab_size=text.tok.vocab_size,
                                 max_text_len=MAX_LEN, patch_size=16, num_answers=0)  # fmt: skip
    if arm == "vilt warm-up":
        nn.init.trunc_normal_(model.pos_embed, std=pos_std, a=-3 * pos_std, b=3 * pos_std)
    return model


def where_loss(model: nn.Module, text: Text, data: Any, batch: list[int],
               pixels: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The two-slot "where" warm-up: text "[BOS] [MASK] [MASK] [EOS]", answers the colour of
    the left and of the top object (a fixed query each: the keys learn x and y, no word to
    read). Cross-entropy over the 6 colour words, summed over the two slots."""
    names = list(COLORS)
    ids = torch.tensor([[text.tok.bos_id, text.tok.mask_id, text.tok.mask_id,
                         text.tok.eos_id]] * len(batch))  # fmt: skip
    objs = [data.scenes[i].objects for i in batch]
    left = torch.tensor([names.index(min(o, key=lambda x: x.x).color) for o in objs])
    top = torch.tensor([names.index(min(o, key=lambda x: x.y).color) for o in objs])
    cols = model(input_ids=ids, pixel_values=pixels).mlm_logits[:, 1:3][..., text.colour_ids]
    return F.cross_entropy(cols[:, 0], left) + F.cross_entropy(cols[:, 1], top)  # (B, 2, 6)


class ClippedAdamW:
    """The optimizer of the hand-written loops of lectures 2 and 11: AdamW (weight decay 0.01),
    a linear warm-up over ``warmup`` steps times a cosine decay to 0 at ``steps``, gradients
    clipped at norm 1."""

    def __init__(self, model: nn.Module, lr: float, steps: int, warmup: int = 30) -> None:
        self.model = model
        # foreach: the same per-tensor kernels in the same order (bit-identical), less Python
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, foreach=True)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * s / steps))
        )

    def step(self, loss: torch.Tensor) -> float:
        """One update from ``loss``; returns its value."""
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        return loss.item()


def binding_batches(
    data: Any, batch_size: int, gen: torch.Generator
) -> Iterator[tuple[list[int], list[str]]]:
    """Endless batches ``(scene indices, captions)`` for training on bindings: ``batch_size``
    scenes drawn with replacement among those with a binding pair, then one pair kind per
    scene, whose true caption is used; every draw comes from ``gen``."""
    pairs = {i: p for i in range(len(data)) if (p := binding_pairs(data, i))}
    scenes = sorted(pairs)
    while True:
        batch = [scenes[j] for j in torch.randint(len(scenes), (batch_size,), generator=gen)]
        caps = []
        for i in batch:
            kinds = list(pairs[i])
            caps.append(pairs[i][kinds[int(torch.randint(len(kinds), (1,), generator=gen))]][0])
        yield batch, caps


def pretrain(
    model: nn.Module,
    data: Any,
    seed: int,
    steps: int,
    warmup: int = 0,
    lr: float = 1e-3,
    batch_size: int = 32,
    text: Text | None = None,
) -> list[float]:
    """Train ``model`` on two-object scenes ``data``: the first ``warmup`` steps the "where"
    task (:func:`where_loss`), then colour-word MLM on one true binding caption per scene (or,
    for a CLIP, its contrastive loss on the same batches). AdamW (weight decay 0.01), linear
    warm-up over 30 steps then cosine decay, gradients clipped at norm 1. Returns the losses."""
    text = text or Text()
    batches = binding_batches(data, batch_size, torch.Generator().manual_seed(seed))
    pixels = data.pixel_values()  # (n, 3, 64, 64)
    is_clip = hasattr(model, "encode_image")
    opt = ClippedAdamW(model, lr, steps)
    losses = []
    model.train()
    for step in range(1, steps + 1):
        batch, caps = next(batches)
        ids, am = text.encode(caps)
        px = pixels[batch]
        if step <= warmup:
            loss = where_loss(model, text, data, batch, px)
        elif is_clip:
            loss = model(input_ids=ids, attention_mask=am, pixel_values=px).loss
        else:
            masked, labels = text.mask_colours(ids)
            out = model(input_ids=masked, attention_mask=am, pixel_values=px)
            loss = F.cross_entropy(out.mlm_logits.flatten(0, 1), labels.flatten())
        losses.append(opt.step(loss))
    model.eval()
    return losses


def binding_accuracy(model: nn.Module, test: Any, text: Text | None = None,
                     kinds: tuple[str, ...] = KINDS) -> dict[str, float]:  # fmt: skip
    """Held-out pair accuracy per binding kind: ViLT by the MLM pseudo-log-likelihood of the
    colour words, CLIP by cosine; chance 0.5."""
    text = text or Text()
    scorer = clip_score if hasattr(model, "encode_image") else vilt_mlm_score
    model.eval()
    return pair_accuracy(lambda *a: scorer(model, text, *a), text, test_pairs(test, kinds), test)


def run(
    arm: str,
    seed: int,
    steps: int = 1600,
    warmup: int = 400,
    n_train: int = 3000,
    lr: float = 1e-3,
    batch_size: int = 32,
    pos_std: float = 0.5,
    vqa_steps: int = 300,
    n_test: int = 400,
) -> tuple[dict[str, Any], nn.Module]:
    """Train one arm and score it on the held-out binding pairs of ``n_test`` scenes:
    (record, model). A ViLT arm is then fine-tuned for ``vqa_steps`` on the training scenes'
    questions and scored by question type (``vqa_by_type``; 0 skips it)."""
    if arm not in ARMS:
        raise ValueError(f"run: arm must be one of {ARMS}, got {arm!r}")
    text = Text()
    world = ShapesWorld(min_objects=2, max_objects=2)
    train, test = world.generate(n_train, seed=seed), world.generate(n_test, seed=1000 + seed)
    minivlm.seed_everything(seed)
    model = make_model(arm, text, pos_std)
    warm = warmup if arm == "vilt warm-up" else 0
    t0 = time.process_time()
    losses = pretrain(model, train, seed, steps, warm, lr, batch_size, text)
    cpu = time.process_time() - t0
    acc = binding_accuracy(model, test, text)
    record = dict(arm=arm, seed=seed, steps=steps, warmup=warm, cpu_seconds=round(cpu, 1),
                  final_loss=round(float(np.mean(losses[-20:])), 4),
                  **{k: round(v, 4) for k, v in acc.items()})  # fmt: skip
    if arm != "clip" and vqa_steps:
        vqa, _, _ = vqa_by_type(model, train, test, seed, vqa_steps)
        record["vqa"] = {q: {"acc": round(r["acc"], 4), "majority": round(r["majority"], 4)}
                         for q, r in vqa.items()}  # fmt: skip
    return record, model


def summarize(runs: list[dict]) -> dict[str, dict[str, Any]]:
    """Per arm and kind: the seeds' accuracies, their mean and min; for the ViLT arms also
    the seeds' VQA accuracy and majority-answer accuracy per question type."""
    table: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        rows = [r for r in runs if r["arm"] == arm]
        if rows:
            table[arm] = {}
            for k in KINDS:
                v = [r[k] for r in rows]
                table[arm][k] = {"acc": v, "mean": float(np.mean(v)), "min": min(v)}
            if all("vqa" in r for r in rows):  # per question type: accuracy and majority
                table[arm]["vqa"] = {q: {m: [r["vqa"][q][m] for r in rows]
                                         for m in ("acc", "majority")}
                                     for q in rows[0]["vqa"]}  # fmt: skip
    return table
