"""A contrastive toy small enough to train inside a graded check: the τ sweep of exercise 01.

Lecture 01 §4 finds that the temperature decides how well the same CLIP trains (held-out R@1:
τ ≈ 0.07 ahead of τ = 0.01, ahead of τ = 1). Exercise 01 asks the learner to reproduce
that with *their own* loss, in about a second of CPU: 60 "scenes" (6 colours x 5 shapes x 2
sizes) whose image features mix a strong colour direction, a weaker size direction and a faint
shape direction under noise, and captions as bags of attribute words; two linear towers map
both to 16 dimensions. A model is scored by zero-shot accuracy over the 60 captions (chance
1/60). Seeds 0-3, 40 steps: τ = 1 reaches 0.24-0.26, τ = 0.1 0.39-0.43, τ = 0.01 0.34-0.39.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minivlm.train.fast import precision_autocast

COLOURS, SHAPES, SIZES = 6, 5, 2
NUM_CLASSES = COLOURS * SHAPES * SIZES  # 60 distinct captions
FEATURES, EMBED = 48, 16
NOISE = 1.5
STEPS, BATCH, LR = 40, 64, 2e-2


@dataclass
class ToyPairs:
    """Training pairs ``train_img`` (n, 48) / ``train_txt`` (n, 13); held-out ``test_img`` with
    their caption class ``test_cls`` (m,); ``class_txt`` (60, 13): every caption once."""

    train_img: torch.Tensor
    train_txt: torch.Tensor
    test_img: torch.Tensor
    test_cls: torch.Tensor
    class_txt: torch.Tensor


def _words(c: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Bag of attribute words: one-hot colour, size and shape side by side, (n, 13)."""
    return torch.cat([F.one_hot(c, COLOURS), F.one_hot(z, SIZES), F.one_hot(s, SHAPES)], 1).float()


def toy_pairs(seed: int, n_train: int = 2000, n_test: int = 500) -> ToyPairs:
    """The toy data set of ``seed``: image features = attributes (colour 1.0, size 0.5, shape
    0.25) through a fixed random map to 48 dimensions, plus Gaussian noise of std 1.5."""
    g = torch.Generator().manual_seed(seed)
    fixed = torch.Generator().manual_seed(99)  # the same feature map for every seed
    proj = torch.randn(COLOURS + SIZES + SHAPES, FEATURES, generator=fixed)  # (13, 48)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = torch.randint(COLOURS, (n,), generator=g)
        s = torch.randint(SHAPES, (n,), generator=g)
        z = torch.randint(SIZES, (n,), generator=g)
        attrs = torch.cat([F.one_hot(c, COLOURS) * 1.0, F.one_hot(z, SIZES) * 0.5,
                           F.one_hot(s, SHAPES) * 0.25], 1)  # fmt: skip
        img = attrs @ proj + NOISE * torch.randn(n, FEATURES, generator=g)  # (n, 48)
        return img, _words(c, s, z), (c * SHAPES + s) * SIZES + z

    tr_img, tr_txt, _ = draw(n_train)
    te_img, _, te_cls = draw(n_test)
    k = torch.arange(NUM_CLASSES)
    classes = _words(k // (SHAPES * SIZES), (k // SIZES) % SHAPES, k % SIZES)  # (60, 13)
    return ToyPairs(tr_img, tr_txt, te_img, te_cls, classes)


class TinyTowers(nn.Module):
    """Two linear towers (image 48 -> 16, text 13 -> 16), initialised from ``seed``."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.image = nn.Linear(FEATURES, EMBED)
        self.text = nn.Linear(COLOURS + SIZES + SHAPES, EMBED)

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(img), self.text(txt)  # (B, 16), (B, 16), not normalised


def batches(seed: int, n: int, steps: int = STEPS, batch: int = BATCH) -> Iterator[torch.Tensor]:
    """``steps`` index batches of size ``batch`` drawn with replacement from ``range(n)``."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield torch.randint(n, (batch,), generator=g)


@torch.no_grad()
def accuracy(model: TinyTowers, data: ToyPairs) -> float:
    """Zero-shot accuracy: each held-out image against the 60 captions (chance 1/60)."""
    img = F.normalize(model.image(data.test_img), dim=-1)  # (m, 16)
    txt = F.normalize(model.text(data.class_txt), dim=-1)  # (60, 16)
    return float(((img @ txt.T).argmax(1) == data.test_cls).float().mean())


def sweep(loss_fn, taus: torch.Tensor, seed: int, precision: str = "fp32") -> torch.Tensor:
    """Train one ``TinyTowers(seed)`` per τ with ``loss_fn(img, txt, logit_scale)`` (Adam, lr
    2e-2, ``batches(seed, n)``, logit_scale = log(1/τ) fixed) and return the accuracies (T,).
    ``precision="bf16"``: forward and loss under bf16 autocast where the CPU has native bf16
    (:func:`minivlm.train.fast.precision_autocast`)."""
    data = toy_pairs(seed)
    out = []
    for tau in taus.tolist():
        model = TinyTowers(seed)
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        logit_scale = torch.tensor(math.log(1.0 / tau))
        for idx in batches(seed, len(data.train_img)):
            with precision_autocast(precision):
                loss = loss_fn(*model(data.train_img[idx], data.train_txt[idx]), logit_scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out.append(accuracy(model, data))
    return torch.tensor(out)
