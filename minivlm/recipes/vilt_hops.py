"""Which part of binding does a from-scratch ViLT fail to learn? (lecture 2, section 4b)

Notebook 02 finds that a tiny ViLT trained for a few hundred steps binds nothing: on a
two-object scene, its [MASK] in "a large [MASK] circle in the top left" reads *a* colour off
the image, but not the colour of the object at the named place. Binding needs two abilities
at once -- read a word, and look where that word says -- so this script trains the same
``vilt_tiny`` from scratch on three minimal tasks that separate them, on two-object scenes
whose objects have different colours and centres at least 8 pixels apart in x:

* ``fixed query``   text "[MASK]", answer: the colour of the *left* object. One place to
                    look, always the same: no word to read.
* ``text only``     text "left [MASK]" or "right [MASK]", answer: that word. No image needed.
* ``word decides``  text "left [MASK]" or "right [MASK]", answer: the colour of the object
                    on that side. The word decides where to look: binding in its smallest form.

A model that reads "a colour of the image" without looking at the right place scores 0.5 on
both colour tasks (one of the image's two colours); the text task has two answers (0.5).
Each run: AdamW, lr 1e-3 (30 warm-up steps, cosine decay), gradients clipped at norm 1, batch
32, the answer read by the MLM head at the [MASK] restricted to the candidate words; held-out
accuracy on 300-odd scenes every ``--eval-every`` steps.

Why can the model do each half but not both? In "word decides" the two words ask for opposite
things of the same attention weights: "left" rows reward keys that make left objects stand
out, "right" rows the opposite, so while the [MASK]'s query hardly depends on the word the
two pulls cancel and the keys never learn *where*; and the query only learns to depend on the
word once the keys say where. Both start small (ViLT inits the patch positions with std 0.02),
so training sits on that saddle. The *curriculum* arms test this on "word decides" (patch 16,
``--curriculum-steps`` in all): a fixed-query warm-up (the keys learn where without a word to
cancel them), larger patch positions at init (std 0.5), and both.

Regenerate the committed results (grid: 3 tasks x 2 patch sizes x 3 seeds x 600 steps;
curriculum: 3 arms x 3 seeds x 1000 steps; about 21 minutes of CPU time in one thread)::

  python experiments/vilt_hops.py --out experiments/results/vilt_hops.json

The command line ``experiments/vilt_hops.py`` runs this recipe over seeds; it refuses to overwrite
``--out`` unless ``--force`` is given and writes the file atomically.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import minivlm
from minivlm.data import COLORS, ShapesWorld, shapes_tokenizer
from minivlm.recipes.vilt_binding import ClippedAdamW

TASKS = ("fixed query", "text only", "word decides")
PATCHES = (16, 8)  # notebook 02's ViLT cuts 16x16 patches; the vilt_tiny preset 8x8
SEEDS = (0, 1, 2)
# curriculum arms ("word decides", patch 16): (fixed-query warm-up?, patch-position init std)
CURRICULUM = ((True, None), (False, 0.5), (True, 0.5))
CURRICULUM_WARMUP = 400  # steps of the fixed-query task before "word decides"
MIN_DX = 8.0  # pixels between the two centres in x, so that "left" is never ambiguous


def two_object_split(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Two-object scenes with two colours and centres >= MIN_DX apart in x: pixels (m, 3,
    64, 64) and the colour index (into COLORS) of the left and of the right object, (m,)."""
    data = ShapesWorld(min_objects=2, max_objects=2).generate(n, seed=seed)
    names = list(COLORS)
    keep, left, right = [], [], []
    for i, scene in enumerate(data.scenes):
        a, b = sorted(scene.objects, key=lambda o: o.x)
        if a.color != b.color and b.x - a.x >= MIN_DX:
            keep.append(i)
            left.append(names.index(a.color))
            right.append(names.index(b.color))
    return {"pixels": data.pixel_values(keep), "left": torch.tensor(left),
            "right": torch.tensor(right)}  # fmt: skip


class Task:
    """Builds the text, the candidate answer ids and the targets of one task."""

    def __init__(self, name: str, tok: Any) -> None:
        if name not in TASKS:
            raise ValueError(f"Task: name must be one of {TASKS}, got {name!r}")
        self.name = name
        word = {w: tok.encode(w)[0] for w in ("left", "right")}
        self.sides = torch.tensor([word["left"], word["right"]])  # (2,)
        self.colours = torch.tensor([tok.encode(c)[0] for c in COLORS])  # (6,)
        self.bos, self.mask, self.eos = tok.bos_id, tok.mask_id, tok.eos_id

    def text(self, side: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(B, T) ids and the [MASK] position; side 0 = left, 1 = right (unused by 'fixed')."""
        B = len(side)
        if self.name == "fixed query":
            return torch.tensor([[self.bos, self.mask, self.eos]]).expand(B, -1), 1
        cols = [torch.full((B,), self.bos), self.sides[side], torch.full((B,), self.mask),
                torch.full((B,), self.eos)]  # fmt: skip
        return torch.stack(cols, 1), 2

    def candidates(self) -> torch.Tensor:
        return self.sides if self.name == "text only" else self.colours

    def target(self, split: dict[str, torch.Tensor], idx: torch.Tensor, side: torch.Tensor):
        """Index into candidates() of the right answer, (B,)."""
        if self.name == "fixed query":
            return split["left"][idx]
        if self.name == "text only":
            return side
        return torch.where(side.bool(), split["right"][idx], split["left"][idx])


def logits(model: torch.nn.Module, task: Task, pixels: torch.Tensor, side: torch.Tensor):
    """The MLM head's scores of the candidate words at the [MASK], (B, n_candidates)."""
    ids, slot = task.text(side)
    out = model(input_ids=ids, pixel_values=pixels)
    return out.mlm_logits[:, slot][:, task.candidates()]


@torch.no_grad()
def accuracy(model: torch.nn.Module, task: Task, split: dict[str, torch.Tensor]) -> float:
    """Held-out accuracy; scenes alternate between asking for the left and the right side."""
    model.eval()
    idx = torch.arange(len(split["left"]))
    side = idx % 2
    pred = logits(model, task, split["pixels"], side).argmax(-1)
    model.train()
    return float((pred == task.target(split, idx, side)).float().mean())


def run(
    task_name: str,
    patch: int,
    seed: int,
    steps: int,
    eval_every: int = 100,
    n_train: int = 3000,
    lr: float = 1e-3,
    batch_size: int = 32,
    fixed_first: int = 0,
    pos_std: float | None = None,
) -> dict[str, Any]:
    """Train one vilt_tiny from scratch on one task; returns the held-out accuracy curve.
    Deterministic given ``seed`` on one CPU thread.

    ``fixed_first`` > 0 spends the first that many of the ``steps`` on the fixed-query task (a
    warm-up); ``pos_std`` re-draws the patch-position table from a truncated normal with that
    standard deviation (ViLT's init: 0.02)."""
    tok = shapes_tokenizer()
    train_split, test_split = two_object_split(n_train, seed), two_object_split(500, seed + 1000)
    task, warm_task = Task(task_name, tok), Task("fixed query", tok)
    minivlm.seed_everything(seed)
    model = minivlm.create_model("vilt_tiny", vocab_size=tok.vocab_size, max_text_len=8,
                                 patch_size=patch, num_answers=0)  # fmt: skip
    if pos_std is not None:
        nn.init.trunc_normal_(model.pos_embed, std=pos_std, a=-3 * pos_std, b=3 * pos_std)
    opt = ClippedAdamW(model, lr, steps, warmup=max(1, min(30, steps // 10)))
    gen = torch.Generator().manual_seed(seed)
    curve, losses = [], []
    t0 = time.process_time()
    for step in range(1, steps + 1):
        idx = torch.randint(len(train_split["left"]), (batch_size,), generator=gen)
        side = torch.randint(2, (batch_size,), generator=gen)
        now = warm_task if step <= fixed_first else task
        scores = logits(model, now, train_split["pixels"][idx], side)  # (B, n_candidates)
        loss = F.cross_entropy(scores, now.target(train_split, idx, side))
        losses.append(opt.step(loss))
        if step % eval_every == 0 or step == steps:
            curve.append({"step": step, "acc": round(accuracy(model, task, test_split), 4),
                          "train_loss": round(float(np.mean(losses[-20:])), 4)})  # fmt: skip
    return dict(task=task_name, patch=patch, seed=seed, steps=steps, fixed_first=fixed_first,
                pos_std=pos_std, n_test=len(test_split["left"]), curve=curve,
                cpu_seconds=round(time.process_time() - t0, 1),
                final_acc=curve[-1]["acc"])  # fmt: skip


def arm_name(r: dict[str, Any]) -> str:
    """'word decides, patch 16' for the grid; the curriculum arms add what they change."""
    name = f"{r['task']}, patch {r['patch']}"
    if r.get("fixed_first") or r.get("pos_std") is not None:
        name += f", {r['fixed_first']} warm-up steps, position std {r['pos_std'] or 0.02}"
    return name


def summarize(runs: list[dict]) -> dict[str, dict[str, Any]]:
    """Per arm (task, patch, curriculum): final accuracy of each seed, their mean and min."""
    table: dict[str, dict[str, Any]] = {}
    for r in runs:
        table.setdefault(arm_name(r), {"final_acc": []})["final_acc"].append(r["final_acc"])
    for cell in table.values():
        cell["mean"], cell["min"] = float(np.mean(cell["final_acc"])), min(cell["final_acc"])
    return table
