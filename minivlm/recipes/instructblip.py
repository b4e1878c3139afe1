"""InstructBLIP vs plain BLIP-2 from the same stage-1 Q-Former, over seeds (Dai et al. 2023, §2.3).

The multi-seed version of sections 4-5 of lecture 4 (``notebooks/04_qformer_masks.ipynb``), with
the notebook's recipe step for step, so seed 0 reproduces the notebook's printed numbers:

* stage 1 (BLIP-2 §3.2): the notebook's 8-query Q-Former (width 96, 4 layers) over the zoo's
  frozen ``shapes_clip`` encoder, ITC + ITM + ITG for 100 steps on 1,500 single-object scenes
  (``seed 200 + s``); the weights are saved;
* stage 2 (§3.3), twice from those weights: plain BLIP-2 (queries alone) and InstructBLIP
  (``instruct=True``: the prompt joins the queries in the Q-Former's self-attention), 150
  steps, lr 3e-3, batch 32, on three instructions per training scene -- colour ("what color
  is the circle?"), size ("is the red circle large?", yes/no) and position ("where is the red
  circle?", 9 regions) -- with the zoo's frozen ``shapes_lm``;
* held-out (200 scenes, ``seed 950 + s``): greedy-answer accuracy per instruction; the
  queries' cross-attention over [CLS; 4x4 patches] in the last cross-attention layer
  (averaged over heads and queries) and the mean total-variation distance between the maps of
  two instructions; the change of the query outputs when the 16 patch tokens are shuffled;
  ridge probes of the object's region on the frozen tokens (flattened, patches shuffled, mean
  of the patches) and on InstructBLIP's query outputs for the position instruction.

Regenerate the committed results (3 seeds, about 2 minutes of CPU time in one thread; the zoo
must be cached or is built first, about 50 s)::

  python experiments/instructblip.py --out experiments/results/instructblip.json

It refuses to overwrite an existing results file unless ``--force`` is given, and writes it
atomically after every seed (``"complete": false`` until the last one).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import minivlm
from minivlm.data import (
    CaptionDataset,
    ShapesData,
    ShapesWorld,
    encode_chat,
    pixel_values,
    shapes_tokenizer,
)
from minivlm.data.shapes import REGIONS
from minivlm.models.blip2 import Blip2, Blip2Config, Blip2Stage2, QFormerConfig
from minivlm.nn.lm import IGNORE_INDEX
from minivlm.train import TrainConfig, train

SEEDS = (0, 1, 2)
INSTRUCTIONS = ("colour", "size", "position")
STAGE1 = dict(steps=100, lr=1e-3, batch_size=32, warmup_steps=10)
STAGE2 = dict(steps=150, lr=3e-3, batch_size=32, warmup_steps=10)
TOK = shapes_tokenizer()


def make_blip2(vit: torch.nn.Module, lm: torch.nn.Module, seed: int, instruct: bool) -> Blip2:
    """The notebook's model: 8 queries, Q-Former width 96, depth 4, over the zoo components."""
    minivlm.seed_everything(seed)
    cfg = Blip2Config(
        vision=vit.config,
        qformer=QFormerConfig(dim=96, depth=4, num_heads=4, mlp_hidden=192, num_query_tokens=8,
                              vocab_size=TOK.vocab_size, max_len=64),
        lm=lm.config, embed_dim=64, dec_token_id=TOK.bos_id, instruct=instruct,
    )  # fmt: skip
    return Blip2(cfg, vision_encoder=vit, language_model=lm)


def instruction_qa(data: ShapesData, i: int, kind: str) -> tuple[str, str]:
    """(question, answer) of one instruction type about the single object of scene i."""
    for q, a, qtype in data.vqa(i):
        size_question = q.startswith("is the ") and q.endswith(("small?", "large?"))
        if ((kind == "colour" and qtype == "color") or (kind == "size" and size_question)
                or (kind == "position" and qtype == "position")):  # fmt: skip
            return q, a
    raise ValueError(f"instruction_qa: scene {i} has no {kind!r} question")


class InstructionMix(torch.utils.data.Dataset):
    """Per scene, the three instructions with their answers (chat format, loss on the answer)."""

    def __init__(self, data: ShapesData) -> None:
        self.data, self.items = data, []
        for i in range(len(data)):
            for kind in INSTRUCTIONS:
                q, a = instruction_qa(data, i, kind)
                chat = encode_chat(TOK, [{"from": "human", "value": q},
                                         {"from": "gpt", "value": a}])  # fmt: skip
                self.items.append((i, chat["input_ids"], chat["labels"]))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple[int, list[int], list[int]]:
        return self.items[k]

    def collate(self, items: list[tuple[int, list[int], list[int]]]) -> dict[str, torch.Tensor]:
        B, T = len(items), max(len(it[1]) for it in items)
        ids = torch.zeros(B, T, dtype=torch.long)  # right-padded with [PAD] = 0
        labels = torch.full((B, T), IGNORE_INDEX)
        mask = torch.zeros(B, T, dtype=torch.long)
        for r, (_, x, y) in enumerate(items):
            ids[r, : len(x)], labels[r, : len(y)], mask[r, : len(x)] = (
                torch.tensor(x), torch.tensor(y), 1)  # fmt: skip
        px = pixel_values(self.data.images[[it[0] for it in items]])
        return {"pixel_values": px, "input_ids": ids, "attention_mask": mask, "labels": labels}


def chat_prompts(questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded generation prompts (B, P) and their 1/0 mask."""
    prompts = [encode_chat(TOK, [{"from": "human", "value": q}], add_generation_prompt=True)
               ["input_ids"] for q in questions]  # fmt: skip
    ids = torch.zeros(len(prompts), max(map(len, prompts)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, : len(p)], mask[r, : len(p)] = torch.tensor(p), 1
    return ids, mask


def prompts_for(data: ShapesData, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    return chat_prompts([instruction_qa(data, i, kind)[0] for i in range(len(data))])


def most_frequent(words: list[str]) -> float:
    """Accuracy of always giving the most frequent answer."""
    return max(words.count(w) for w in set(words)) / len(words)


@torch.no_grad()
def answers_and_maps(model: Blip2, data: ShapesData) -> dict[str, Any]:
    """Greedy-answer accuracy per instruction, the position answers, and the (B, 17) last-layer
    cross-attention maps per instruction (heads and queries averaged)."""
    model.eval()
    px = pixel_values(data.images)
    image_embeds = model.encode_image(px)  # (B, 17, 128)
    B = len(data)
    acc, maps, position_answers = {}, {}, []
    for kind in INSTRUCTIONS:
        truth = [instruction_qa(data, i, kind)[1] for i in range(B)]
        ids, mask = prompts_for(data, kind)
        answers = [a.strip() for a in TOK.batch_decode(model.generate(px, ids, mask,
                                                                      max_new_tokens=3))]
        acc[kind] = float(np.mean([p == t for p, t in zip(answers, truth, strict=True)]))
        if kind == "position":
            position_answers = answers
        qids, qmask = (ids, mask) if model.config.instruct else (None, None)
        out = model.qformer(model.query_tokens.expand(B, -1, -1), qids, qmask, image_embeds,
                            mask="itm", need_weights=True)  # fmt: skip
        maps[kind] = out.cross_attentions[-1].mean(dim=(1, 2))  # (B, H, Q, 17) -> (B, 17)
    acc["mean"] = float(np.mean([acc[k] for k in INSTRUCTIONS]))
    tv = {f"{a} vs {b}": round(float(0.5 * (maps[a] - maps[b]).abs().sum(-1).mean()), 4)
          for a, b in itertools.combinations(INSTRUCTIONS, 2)}  # fmt: skip
    model.train()
    return {
        "accuracy": {k: round(v, 4) for k, v in acc.items()},
        "mean_tv_between_instructions": tv,
        "cls_weight": {k: round(float(v[:, 0].mean()), 4) for k, v in maps.items()},
        "position_answers": dict(Counter(position_answers).most_common(3)),
    }


def region_probe(x_train: torch.Tensor, x_test: torch.Tensor, y_train: torch.Tensor,
                 y_test: torch.Tensor, lam: float = 15.0) -> float:
    """Held-out accuracy of a ridge-regression probe (one-hot targets) of the region."""
    xtr, xte = x_train.flatten(1), x_test.flatten(1)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = ((x - mu) / sd for x in (xtr, xte))
    xtr, xte = (torch.cat([x, torch.ones(len(x), 1)], 1) for x in (xtr, xte))
    targets = F.one_hot(y_train, len(REGIONS)).float()  # (N, 9)
    w = torch.linalg.solve(xtr.T @ xtr + lam * torch.eye(xtr.shape[1]), xtr.T @ targets)
    return float(((xte @ w).argmax(1) == y_test).float().mean())


def shuffle_patches(tokens: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Every image's 16 patch tokens in a random order ([CLS] stays first)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.argsort(torch.rand(tokens.shape[0], 16, generator=g), dim=1) + 1  # (B, 16)
    order = torch.cat([torch.zeros(len(order), 1, dtype=torch.long), order], dim=1)  # (B, 17)
    return tokens.gather(1, order[..., None].expand(-1, -1, tokens.shape[-1]))


@torch.no_grad()
def position_analysis(model: Blip2, train_data: ShapesData, test_data: ShapesData) -> dict:
    """Order-blindness of the Q-Former and region probes (InstructBLIP, position prompt)."""
    model.eval()

    def regions(data: ShapesData) -> torch.Tensor:
        return torch.tensor([REGIONS.index(instruction_qa(data, i, "position")[1])
                             for i in range(len(data))])  # fmt: skip

    def queries(data: ShapesData, image_tokens: torch.Tensor) -> torch.Tensor:
        ids, mask = prompts_for(data, "position")
        return model.qformer(model.query_tokens.expand(len(data), -1, -1), ids, mask,
                             image_tokens, mask="itm").query_output  # (B, Q, 96)

    tok_tr = model.encode_image(pixel_values(train_data.images))  # (N, 17, 128) frozen
    tok_te = model.encode_image(pixel_values(test_data.images))
    z_te = queries(test_data, tok_te)
    change = (queries(test_data, shuffle_patches(tok_te)) - z_te).abs().max().item()
    y_tr, y_te = regions(train_data), regions(test_data)
    probes = {
        "frozen tokens, flattened": region_probe(tok_tr, tok_te, y_tr, y_te),
        "frozen tokens, patches shuffled": region_probe(
            shuffle_patches(tok_tr, 1), shuffle_patches(tok_te, 2), y_tr, y_te),
        "frozen tokens, mean of the 16 patches": region_probe(
            tok_tr[:, 1:].mean(1), tok_te[:, 1:].mean(1), y_tr, y_te),
        "InstructBLIP query outputs": region_probe(queries(train_data, tok_tr), z_te, y_tr, y_te),
    }  # fmt: skip
    model.train()
    return {"shuffle_max_change": change, "region_probes": {k: round(v, 4)
                                                            for k, v in probes.items()}}


def run_seed(seed: int, vit: torch.nn.Module, lm: torch.nn.Module) -> dict[str, Any]:
    """Stage 1 once, then stage 2 for BLIP-2 and InstructBLIP from the same weights."""
    world = ShapesWorld()
    train_data = world.generate(1500, seed=200 + seed, min_objects=1, max_objects=1)
    test_data = world.generate(200, seed=950 + seed, min_objects=1, max_objects=1)
    model = make_blip2(vit, lm, seed, instruct=False)
    c0 = time.process_time()
    train(model, CaptionDataset(train_data, TOK, add_cls=True, add_bos=False, add_eos=True),
          TrainConfig(**STAGE1, seed=seed, progress=False))  # fmt: skip
    record: dict[str, Any] = {"seed": seed, "stage1_cpu_s": round(time.process_time() - c0, 1)}
    stage1_state = {k: v.clone() for k, v in model.state_dict().items()}
    mix = InstructionMix(train_data)
    record["most_frequent_answer"] = {
        kind: most_frequent([instruction_qa(test_data, i, kind)[1] for i in range(200)])
        for kind in INSTRUCTIONS
    }
    for name, instruct in (("BLIP-2", False), ("InstructBLIP", True)):
        model = make_blip2(vit, lm, seed, instruct=instruct)
        model.load_state_dict(stage1_state)  # the same stage-1 Q-Former
        c0 = time.process_time()
        train(Blip2Stage2(model), mix, TrainConfig(**STAGE2, seed=seed, progress=False))
        record[name] = {"stage2_cpu_s": round(time.process_time() - c0, 1),
                        **answers_and_maps(model, test_data)}  # fmt: skip
    record["position"] = position_analysis(model, train_data, test_data)  # InstructBLIP
    return record


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-seed margins of InstructBLIP over BLIP-2 and the smallest over seeds."""
    margins = {k: [round(r["InstructBLIP"]["accuracy"][k] - r["BLIP-2"]["accuracy"][k], 4)
                   for r in runs] for k in (*INSTRUCTIONS, "mean")}  # fmt: skip
    tv = [max(r["InstructBLIP"]["mean_tv_between_instructions"].values()) for r in runs]
    return {"seeds": [r["seed"] for r in runs], "instruct_minus_plain": margins,
            "min_margin": {k: min(v) for k, v in margins.items()},
            "largest_mean_tv_instruct": tv,
            "largest_mean_tv_plain": [max(r["BLIP-2"]["mean_tv_between_instructions"].values())
                                      for r in runs]}  # fmt: skip
