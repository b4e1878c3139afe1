"""Lecture 9 (Flamingo) experiments, shared by ``notebooks/09_flamingo.ipynb`` and
``experiments/flamingo.py``.

All runs wrap the zoo's frozen ``shapes_clip`` ViT and ``shapes_lm`` in a
:class:`~minivlm.models.flamingo.Flamingo`; only the resampler, the gated blocks and the made-up
name tokens learn. The frozen ViT encodes a bank of one-object images once
(:func:`setup`); batches index into it.

* :func:`gate_zero_check` — at α = 0 the model's logits equal the LM's, bit for bit (§2.2).
* :func:`train` — AdamW on the new parts over one of three data kinds: ``"episodes"``
  (interleaved few-shot episodes, 1-4 shots), ``"pairs"`` (one image + its colour word) or
  ``"captions"`` (three images, each followed by its colour word); records tanh(α) per layer.
* :func:`few_shot_accuracy` — accuracy on the query's made-up name, read out among the name
  tokens, with 0/1/2/4 examples in the prompt (§3, Figure 2: few-shot).
* :func:`position_accuracy` — colour-word accuracy for the n-th image of a sequence (§2.3:
  why each token sees only the latest image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from minivlm import zoo
from minivlm.data import shapes_tokenizer
from minivlm.data.interleaved import (
    Interleaved,
    caption_sequences,
    few_shot_episodes,
    single_object_bank,
)
from minivlm.models.flamingo import Flamingo, image_attention_mask

NUM_NAMES = 8
SHOTS = (0, 1, 2, 4)
# The mask ablation's model: no resampler (its randn latents dominate its LayerNorm'd output at
# first, which slows the start) and gates at a larger learning rate, so colour is read in 80 steps.
MASK_MODEL = {"use_resampler": False}
MASK_GATE_LR = 0.1


@dataclass
class Parts:
    """The frozen parts and the encoded image banks (train / held-out)."""

    vit: Any
    lm: Any
    tokenizer: Any
    train_tokens: torch.Tensor  # (n, S, d_v) frozen ViT tokens
    train_colors: torch.Tensor  # (n,)
    test_tokens: torch.Tensor
    test_colors: torch.Tensor
    name_ids: list[int]


def setup(bank: int = 300, heldout: int = 200, seed: int = 0) -> Parts:
    """Load the zoo parts, draw and encode the image banks (held-out images never trained on)."""
    vit, lm, tok = zoo.load_image_encoder(), zoo.load("shapes_lm"), shapes_tokenizer()
    px, col = single_object_bank(bank, seed=1000 + seed)
    pxe, cole = single_object_bank(heldout, seed=2000 + seed)
    probe = Flamingo(vision_encoder=vit, language_model=lm)
    with torch.no_grad():
        tr, te = probe.vision_tokens(px[:, None])[:, 0], probe.vision_tokens(pxe[:, None])[:, 0]
    V = lm.config.vocab_size
    return Parts(vit, lm, tok, tr, col, te, cole, list(range(V, V + NUM_NAMES)))


def make_model(parts: Parts, seed: int = 0, **overrides: Any) -> Flamingo:
    """A Flamingo around the frozen parts with NUM_NAMES new tokens; new parts seeded."""
    torch.manual_seed(seed)
    return Flamingo(vision_encoder=parts.vit, language_model=parts.lm,
                    additional_vocab_size=NUM_NAMES, **overrides).freeze_pretrained()


def run(model: Flamingo, b: Interleaved, tokens: torch.Tensor, mode: str = "previous",
        labels: bool = True, need_weights: bool = False):
    """Forward a batch whose images are rows of ``tokens``, with the given mask ``mode``."""
    n = b.image_index.shape[1]
    mask = image_attention_mask(b.input_ids, model.config.image_token_id, n, mode=mode)
    return model(b.input_ids, image_attention_mask=mask, vision_tokens=tokens[b.image_index],
                 labels=b.labels if labels else None, need_weights=need_weights)


def batch(parts: Parts, kind: str, size: int, seed: int, step: int) -> Interleaved:
    """One training batch of ``kind`` ("episodes", "pairs" or "captions")."""
    s = seed * 1_000_003 + step
    col, tok = parts.train_colors, parts.tokenizer
    if kind == "episodes":
        return few_shot_episodes(col, size, 1 + step % 4, parts.name_ids, tok, seed=s)
    if kind == "pairs":
        return caption_sequences(col, size, 1, tok, seed=s)
    if kind == "captions":
        return caption_sequences(col, size, 3, tok, seed=s)
    raise ValueError(f"batch: kind must be 'episodes', 'pairs' or 'captions', got {kind!r}")


def train(model: Flamingo, parts: Parts, kind: str, steps: int = 150, lr: float = 3e-3,
          batch_size: int = 32, seed: int = 0, mode: str = "previous",
          gate_lr: float | None = None) -> dict[str, Any]:
    """AdamW on the trainable parts (the gates α at ``gate_lr``, default ``lr``); returns
    per-step ``loss`` and ``gates`` (steps+1, L, 2)."""
    gates = [p for n, p in model.named_parameters() if p.requires_grad and ".alpha_" in n]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and ".alpha_" not in n]
    opt = torch.optim.AdamW([{"params": rest}, {"params": gates, "lr": gate_lr or lr}], lr=lr,
                            weight_decay=0.0)
    losses, gates = [], [model.gates().detach().clone()]
    for step in range(steps):
        out = run(model, batch(parts, kind, batch_size, seed, step), parts.train_tokens, mode)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
        gates.append(model.gates().detach().clone())
    return {"loss": np.array(losses), "gates": torch.stack(gates).numpy()}


@torch.no_grad()
def few_shot_accuracy(model: Flamingo, parts: Parts, shots: tuple[int, ...] = SHOTS,
                      n: int = 200, seed: int = 0) -> dict[int, float]:
    """Held-out accuracy on the query's name, argmax among the NUM_NAMES name tokens."""
    acc = {}
    lo = parts.name_ids[0]
    for k in shots:
        e = few_shot_episodes(parts.test_colors, n, k, parts.name_ids, parts.tokenizer,
                              seed=10_000 + seed)
        logits = run(model, e, parts.test_tokens, labels=False).logits[:, -2]  # before the name
        pred = logits[:, lo:lo + NUM_NAMES].argmax(-1) + lo
        acc[k] = (pred == e.answer).float().mean().item()
    return acc


@torch.no_grad()
def position_accuracy(model: Flamingo, parts: Parts, mode: str = "previous", images: int = 3,
                      n: int = 200, seed: int = 0) -> list[float]:
    """Colour-word accuracy for image 1..``images`` of held-out caption sequences."""
    b = caption_sequences(parts.test_colors, n, images, parts.tokenizer, seed=20_000 + seed)
    logits = run(model, b, parts.test_tokens, mode, labels=False).logits
    pos = (b.labels != -100).nonzero()[:, 1].view(n, images)  # colour-word positions
    rows = torch.arange(n)[:, None]
    pred = logits[rows, pos - 1].argmax(-1)  # predicted at the <image> token before each word
    return (pred == b.input_ids[rows, pos]).float().mean(0).tolist()


@torch.no_grad()
def gate_zero_check(parts: Parts, seed: int = 0) -> bool:
    """Freshly built (α = 0): Flamingo's logits equal the bare LM's, bit for bit."""
    model = make_model(parts, seed)
    b = few_shot_episodes(parts.test_colors, 64, 4, parts.name_ids, parts.tokenizer, seed=seed)
    ids = b.input_ids.clamp(max=parts.lm.config.vocab_size - 1)  # the LM has no name tokens
    ours = run(model, Interleaved(ids, b.labels, b.image_index, b.answer), parts.test_tokens,
               labels=False).logits[..., : parts.lm.config.vocab_size]
    return bool(torch.equal(ours, parts.lm(ids).logits))
