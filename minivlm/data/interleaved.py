"""Interleaved image-text sequences from the shapes world (Flamingo §2.3, §2.4 "M3W").

Flamingo learns from web pages in which images and text alternate; each text token
cross-attends only to the image just before it. Two small kinds of such sequences here, both
over a *bank* of one-object images (:func:`single_object_bank`), referred to by index so a
frozen encoder can encode the bank once:

* :func:`caption_sequences` — ``[BOS] <image> red . <image> blue . ...``: each image followed
  by its colour word (a pair is the special case of one image per sequence);
* :func:`few_shot_episodes` — ``[BOS] <image> dax . <image> wug . <image> ?``: made-up names
  for colours, drawn afresh for every episode, then a query image whose colour appeared in the
  context; the answer (its name) can only come from the context.

Every builder returns an :class:`Interleaved` batch: ``input_ids`` (E, T), ``labels`` (E, T)
(-100 except the tokens to predict), ``image_index`` (E, N_img) into the bank, in order of the
``<image>`` tokens, and ``answer`` (E,) the token asked about last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from minivlm.data.shapes import COLORS, ShapesWorld, pixel_values
from minivlm.data.tokenizer import Tokenizer

Tensor = torch.Tensor
IGNORE_INDEX = -100

__all__ = ["Interleaved", "caption_sequences", "few_shot_episodes", "single_object_bank"]


@dataclass
class Interleaved:
    """A batch of interleaved sequences (see the module docstring for the fields)."""

    input_ids: Tensor
    labels: Tensor
    image_index: Tensor
    answer: Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: Tensor | slice) -> Interleaved:
        return Interleaved(self.input_ids[rows], self.labels[rows], self.image_index[rows],
                           self.answer[rows])


def single_object_bank(n: int, seed: int = 0, image_size: int = 64) -> tuple[Tensor, Tensor]:
    """``n`` scenes of one object each: pixel values (n, 3, H, W) in [-1, 1] and the colour of
    each object as an index into ``COLORS`` (n,)."""
    data = ShapesWorld(image_size=image_size, min_objects=1, max_objects=1).generate(n, seed=seed)
    colors = torch.tensor([list(COLORS).index(s.objects[0].color) for s in data.scenes])
    return pixel_values(data.images), colors


def _pick_image(rng: np.random.Generator, by_color: list[np.ndarray], color: int,
                avoid: int = -1) -> int:
    pool = by_color[color]
    if len(pool) == 0 or (len(pool) == 1 and pool[0] == avoid):
        raise ValueError(f"bank: too few images of colour {list(COLORS)[color]!r}; "
                         "draw a larger bank")
    while True:
        i = int(pool[rng.integers(len(pool))])
        if i != avoid:
            return i


def _by_color(colors: Tensor) -> list[np.ndarray]:
    c = colors.numpy()
    return [np.flatnonzero(c == k) for k in range(len(COLORS))]


def caption_sequences(colors: Tensor, n: int, images_per_seq: int, tokenizer: Tokenizer,
                      seed: int = 0) -> Interleaved:
    """``n`` sequences ``[BOS] (<image> colour .) x images_per_seq``; colours drawn
    independently (repeats allowed), labels on every colour word; ``answer`` = the last one."""
    if images_per_seq < 1:
        raise ValueError(f"caption_sequences: images_per_seq must be >= 1, got {images_per_seq}")
    rng = np.random.default_rng(seed)
    by_color = _by_color(colors)
    tok = tokenizer.vocab
    words = [tok[c] for c in COLORS]
    ids, labels, index = [], [], []
    for _ in range(n):
        row, lab, img = [tok["[BOS]"]], [IGNORE_INDEX], []
        for _ in range(images_per_seq):
            c = int(rng.integers(len(COLORS)))
            img.append(_pick_image(rng, by_color, c))
            row += [tok["<image>"], words[c], tok["."]]
            lab += [IGNORE_INDEX, words[c], IGNORE_INDEX]
        ids.append(row)
        labels.append(lab)
        index.append(img)
    ids_t = torch.tensor(ids)
    return Interleaved(ids_t, torch.tensor(labels), torch.tensor(index), ids_t[:, -2].clone())


def few_shot_episodes(colors: Tensor, n: int, shots: int, name_ids: list[int],
                      tokenizer: Tokenizer, seed: int = 0) -> Interleaved:
    """``n`` episodes of ``shots`` examples then a query: ``[BOS] (<image> name .) x shots
    <image> name_q``.

    Each episode draws ``shots`` distinct colours and gives them distinct names from
    ``name_ids`` (made-up words: new token ids), fresh every episode; the query shows another
    image of one of those colours. Only the query's name carries a label. With ``shots=0`` the
    query's colour and name are drawn at random (nothing in the context can answer it).
    """
    if not 0 <= shots <= min(len(COLORS), len(name_ids)):
        raise ValueError(f"few_shot_episodes: shots must be in [0, "
                         f"{min(len(COLORS), len(name_ids))}], got {shots}")
    rng = np.random.default_rng(seed)
    by_color = _by_color(colors)
    tok = tokenizer.vocab
    ids, index, answer = [], [], []
    for _ in range(n):
        cols = rng.choice(len(COLORS), size=max(shots, 1), replace=False)
        names = rng.choice(len(name_ids), size=max(shots, 1), replace=False)
        row, img = [tok["[BOS]"]], []
        for c, m in zip(cols[:shots], names[:shots], strict=True):
            img.append(_pick_image(rng, by_color, int(c)))
            row += [tok["<image>"], name_ids[m], tok["."]]
        q = int(rng.integers(len(cols)))
        img.append(_pick_image(rng, by_color, int(cols[q]), avoid=img[q] if shots else -1))
        row += [tok["<image>"], name_ids[names[q]]]
        ids.append(row)
        index.append(img)
        answer.append(name_ids[names[q]])
    ids_t = torch.tensor(ids)
    labels = torch.full_like(ids_t, IGNORE_INDEX)
    labels[:, -1] = ids_t[:, -1]
    return Interleaved(ids_t, labels, torch.tensor(index), torch.tensor(answer))
