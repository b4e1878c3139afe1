"""A LLaVA small enough to train inside a graded check: exercise 05's projector training.

Lecture 5 joins the zoo's frozen ``shapes_clip`` image encoder and the pretrained
``shapes_lm`` with a new projector and trains it in two stages (LLaVA §4.2). Exercise 05 asks
the learner to write that training step with *their own* label masking and splicing: only the
projector learns (the language model and the vision tower stay frozen, as in LLaVA's stage 1),
on one-turn chats about one-object scenes, and the trained model is scored by how often it
answers the held-out question "what color is the object?" with the right colour.

Two kinds of training chats share the held-out test (``chats(task, ...)``):

* ``"caption"``: "describe the image." -> the scene's caption (LLaVA's stage-1 data, feature
  alignment on image-caption pairs);
* ``"color"``:   "what color is the object?" -> the colour word (instruction data of the kind
  LLaVA's stage 2 uses, reduced to one question).

The accuracy is the first token the model would generate after "assistant:" (greedy, the whole
vocabulary), compared with the colour word, on 200 held-out scenes; chance among the six colours
is 1/6, and the language model alone answers from its prior. The frozen tower runs once per
image: the features are part of the data (``LLaVA.vision_features``), so a training step runs
only projector and language model (about 0.05 s at batch 16 on one CPU thread).

The zoo components are loaded (built the first time, about 50 s) and the data are made once per
process and seed (``functools.lru_cache``); a graded check's child process inherits them.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch

import minivlm
from minivlm.data import COLORS, ShapesWorld, encode_chat, shapes_tokenizer
from minivlm.models.llava import LLaVA
from minivlm.recipes import clip_tau

TASKS = ("caption", "color")
QUESTION = {"caption": "describe the image.", "color": "what color is the object?"}
TEST_SEED = 20_000  # held-out scenes: world seed TEST_SEED + seed


@dataclass(frozen=True)
class AlignRun:
    """The exercise's budget: projector only, AdamW, linear warm-up."""

    n_train: int = 400  # one-object training scenes
    n_test: int = 200  # held-out scenes
    steps: int = 30
    batch_size: int = 16
    lr: float = 1e-2
    warmup: int = 5


@functools.lru_cache(maxsize=1)
def parts() -> tuple[torch.nn.Module, torch.nn.Module]:
    """The zoo's frozen image encoder (``shapes_clip``'s ViT) and language model (``shapes_lm``)."""
    from minivlm import zoo

    return zoo.load_image_encoder(verbose=False), zoo.load("shapes_lm", verbose=False)


def new_llava(seed: int) -> LLaVA:
    """The zoo's ViT (shared) and a copy of its LM, both frozen, joined by a fresh
    ``mlp2x_gelu`` projector drawn from ``seed``; only the projector requires grad (LLaVA's
    stage 1)."""
    vit, lm = parts()
    minivlm.seed_everything(seed)
    model = LLaVA(vision_encoder=vit, language_model=copy.deepcopy(lm),  # a run cannot touch
                  projector_type="mlp2x_gelu")  # the shared LM, even one that unfreezes it
    return model.freeze_for_stage(1)


@functools.lru_cache(maxsize=8)
def _data(task: str, seed: int, run: AlignRun) -> dict:
    tok = shapes_tokenizer()
    world = ShapesWorld(max_objects=1)
    train, test = world.generate(run.n_train, seed=seed), world.generate(run.n_test,
                                                                        seed=TEST_SEED + seed)
    model = new_llava(seed)
    N = model.num_image_tokens

    def chat(question: str, answer: str | None = None) -> dict:
        turns = [{"from": "human", "value": "<image>\n" + question}]
        if answer is not None:
            turns.append({"from": "gpt", "value": answer})
        return encode_chat(tok, turns, N, add_generation_prompt=answer is None)

    answers = [train.caption(i) if task == "caption" else train.scenes[i].objects[0].color
               for i in range(run.n_train)]
    batch = tok.pad([chat(QUESTION[task], a)["input_ids"] for a in answers])
    prompts = tok.pad([chat(QUESTION["color"])["input_ids"] for _ in range(run.n_test)])
    with torch.no_grad():
        feats, test_feats = (model.vision_features(d.pixel_values()) for d in (train, test))
    return {
        "input_ids": batch["input_ids"],  # (n, T) right-padded chats
        "attention_mask": batch["attention_mask"],  # (n, T)
        "features": feats,  # (n, N, d_v) the frozen tower's features, one image per chat
        "test_input_ids": prompts["input_ids"],  # (m, T') prompts ending with "assistant:"
        "test_features": test_feats,  # (m, N, d_v)
        "test_colour": torch.tensor([tok.encode(test.scenes[i].objects[0].color)[0]
                                     for i in range(run.n_test)]),  # (m,) colour word ids
        "assistant_header": tok.encode("assistant:"),
        "eos_id": tok.eos_id,
        "image_token_id": model.config.image_token_id,
    }


def chats(task: str, seed: int, run: AlignRun | None = None) -> dict:
    """The training chats of ``task`` ("caption" or "color") on the scenes of ``seed`` and the
    held-out colour questions, tokenised with the chat template of lecture 5 ("user: <image>×N
    ... assistant: ...[EOS]"). A dict of tensors (see the keys' comments); the same call
    returns the same (cached) tensors, so treat them as read-only."""
    if task not in TASKS:
        raise ValueError(f"chats: task must be one of {TASKS}, got {task!r}")
    return _data(task, seed, run or AlignRun())


def batches(seed: int, n: int, run: AlignRun | None = None):
    """``run.steps`` index batches of ``run.batch_size``, drawn with replacement from
    ``range(n)`` (exercise 01's :func:`minivlm.recipes.clip_tau.batches`)."""
    run = run or AlignRun()
    return clip_tau.batches(seed, n, run.steps, run.batch_size)


@torch.no_grad()
def colour_accuracy(model: LLaVA, data: dict) -> float:
    """Held-out: the share of prompts "what color is the object?" whose greedy first answer
    token is the object's colour word (chance among the colours 1/6)."""
    ids = data["test_input_ids"]  # (m, T')
    embeds = model.lm.embed(ids)  # (m, T', D)
    feats = model.projector(data["test_features"])  # (m, N, D)
    slots = ids == data["image_token_id"]  # N per row (the prompts are built that way)
    embeds[slots] = feats.reshape(-1, feats.shape[-1]).to(embeds.dtype)  # reading order
    am = (ids != shapes_tokenizer().pad_id).long()
    logits = model.lm(inputs_embeds=embeds, attention_mask=am).logits  # (m, T', V)
    last = am.sum(1) - 1  # the position of "assistant:"'s ":" (right padding)
    first = logits[torch.arange(len(ids)), last].argmax(-1)  # (m,)
    return float((first == data["test_colour"]).float().mean())


def lm_alone_accuracy(seed: int, run: AlignRun | None = None) -> float:
    """The same test without training: the fresh projector's features (random visual words)."""
    return colour_accuracy(new_llava(seed), chats("color", seed, run))


def colour_ids() -> torch.Tensor:
    """The ids of the six colour words."""
    tok = shapes_tokenizer()
    return torch.tensor([tok.encode(c)[0] for c in COLORS])


def reference_assistant_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                               assistant_header: list[int], eos_id: int) -> torch.Tensor:
    """LLaVA's targets (§4.2): the answers' tokens and their [EOS], -100 elsewhere, (B, T)."""
    h = len(assistant_header)
    labels = torch.full_like(input_ids, -100)
    for b in range(input_ids.shape[0]):
        ids, inside = input_ids[b].tolist(), False
        for t in range(int(attention_mask[b].sum())):
            if not inside and t >= h and ids[t - h:t] == list(assistant_header):
                inside = True
            if inside:
                labels[b, t] = ids[t]
                inside = ids[t] != eos_id
    return labels


def reference_train_projector(task: str, seed: int) -> torch.Tensor:
    """Exercise 05's training run, the reference: the projector of :func:`new_llava` trained
    alone on ``chats(task, seed)`` with assistant-only labels (AdamW, ``run.lr`` after a linear
    warm-up of ``run.warmup`` steps, the batches of :func:`batches`). Returns
    ``tensor([held-out colour accuracy])``."""
    from minivlm.models.llava import merge_image_features

    run = AlignRun()
    data = chats(task, seed, run)
    model = new_llava(seed)
    labels = reference_assistant_labels(data["input_ids"], data["attention_mask"],
                                        data["assistant_header"], data["eos_id"])  # fmt: skip
    opt = torch.optim.AdamW(model.projector.parameters(), lr=run.lr)
    for step, idx in enumerate(batches(seed, len(labels), run)):
        for group in opt.param_groups:
            group["lr"] = run.lr * min(1.0, (step + 1) / run.warmup)
        ids = data["input_ids"][idx]  # (b, T)
        embeds = merge_image_features(model.lm.embed(ids), ids,
                                      model.projector(data["features"][idx]),
                                      data["image_token_id"])  # (b, T, D)  # fmt: skip
        loss = model.lm(inputs_embeds=embeds, attention_mask=data["attention_mask"][idx],
                        labels=labels[idx]).loss  # fmt: skip
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.tensor([colour_accuracy(model, data)])
