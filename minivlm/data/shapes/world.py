"""The generator :class:`ShapesWorld` (samples and places objects, draws them) and the data
set it returns, :class:`ShapesData` (images, scenes, and every text view of them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from minivlm.data.shapes.draw import pixel_values, render
from minivlm.data.shapes.language import (
    caption_truth,
    describe,
    scene_captions,
    scene_dialogue,
    scene_hard_negatives,
    scene_vqa,
)
from minivlm.data.shapes.scenes import (
    ANSWERS,
    BORDER,
    CLASSIFICATION_TASKS,
    COLORS,
    MAX_OBJECTS,
    NUMBER_WORDS,
    OBJECT_GAP,
    SHAPE_EXTENT,
    SHAPES,
    SIZE_RADIUS,
    SIZES,
    Background,
    Obj,
    Scene,
)


# ---------------------------------------------------------------------------- generator
class ShapesWorld:
    """Samples scenes and draws them.

    Args:
        image_size: side of the square images in pixels (>= 32; the world is designed at 64).
        min_objects, max_objects: number of objects per image, uniform in [min, max] (max <= 6;
            crowded scenes that cannot be placed with large objects are redrawn all small).
        colors, shapes, sizes: restrict the attributes (default: all of ``COLORS``, ``SHAPES``,
            ``SIZES``); class ids in ``labels`` always index the full lists.
        exclude: (colour, shape) pairs never drawn, e.g. ``[("red", "circle")]`` to hold a
            combination out for a compositional-generalisation test.
    """

    def __init__(
        self,
        image_size: int = 64,
        min_objects: int = 1,
        max_objects: int = 4,
        colors: Sequence[str] | None = None,
        shapes: Sequence[str] | None = None,
        sizes: Sequence[str] | None = None,
        exclude: Iterable[tuple[str, str]] = (),
    ) -> None:
        if not isinstance(image_size, int) or image_size < 32:
            raise ValueError(f"image_size must be an int >= 32, got {image_size!r}")
        self.image_size = image_size
        self.colors = self._pick("colors", colors, list(COLORS))
        self.shapes = self._pick("shapes", shapes, SHAPES)
        self.sizes = self._pick("sizes", sizes, SIZES)
        self.exclude = {tuple(p) for p in exclude}
        for c, s in self.exclude:
            if c not in COLORS or s not in SHAPES:
                raise ValueError(f"exclude: ({c!r}, {s!r}) is not a (colour, shape) pair")
        self.min_objects, self.max_objects = self._check_counts(min_objects, max_objects)

    @staticmethod
    def _pick(name: str, given: Sequence[str] | None, allowed: Sequence[str]) -> list[str]:
        if given is None:
            return list(allowed)
        given = list(given)
        bad = [g for g in given if g not in allowed]
        if bad or not given:
            raise ValueError(f"{name} must be a non-empty subset of {list(allowed)}, got {given}")
        return [a for a in allowed if a in given]  # canonical order

    def _check_counts(self, lo: int, hi: int) -> tuple[int, int]:
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi <= MAX_OBJECTS):
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got {lo}, {hi}"
            )
        combos = len(self.colors) * len(self.shapes) - len(
            [p for p in self.exclude if p[0] in self.colors and p[1] in self.shapes]
        )
        if combos < hi:
            raise ValueError(
                f"only {combos} (colour, shape) pairs allowed; cannot place {hi} objects"
            )
        return lo, hi

    def __repr__(self) -> str:
        return (
            f"ShapesWorld(image_size={self.image_size}, objects={self.min_objects}..."
            f"{self.max_objects}, colors={self.colors}, shapes={self.shapes}, sizes={self.sizes})"
        )

    def sample_scenes(
        self, n: int, seed: int = 0, min_objects: int | None = None, max_objects: int | None = None
    ) -> list[Scene]:
        """Sample ``n`` scenes (no pixels). Vectorised over scenes; deterministic by ``seed``."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        lo, hi = self._check_counts(
            self.min_objects if min_objects is None else min_objects,
            self.max_objects if max_objects is None else max_objects,
        )
        S = self.image_size
        rng = np.random.default_rng(seed)
        J = hi
        counts = rng.integers(lo, hi + 1, size=n)  # (n,)
        valid = np.arange(J)[None, :] < counts[:, None]  # (n, J)
        nc, ns = len(self.colors), len(self.shapes)
        banned = np.zeros((nc, ns), dtype=bool)
        for c, s in self.exclude:
            if c in self.colors and s in self.shapes:
                banned[self.colors.index(c), self.shapes.index(s)] = True
        col = np.zeros((n, J), dtype=np.int64)
        shp = np.zeros((n, J), dtype=np.int64)
        for j in range(J):  # (colour, shape) unique within an image and not excluded
            c, s = rng.integers(nc, size=n), rng.integers(ns, size=n)
            while True:
                bad = banned[c, s] | ((col[:, :j] == c[:, None]) & (shp[:, :j] == s[:, None])).any(
                    1
                )
                if not bad.any():
                    break
                c[bad], s[bad] = rng.integers(nc, size=bad.sum()), rng.integers(ns, size=bad.sum())
            col[:, j], shp[:, j] = c, s
        siz = rng.integers(len(self.sizes), size=(n, J))
        extent_of = np.array(
            [[SIZE_RADIUS[z] * SHAPE_EXTENT[s] * S for z in self.sizes] for s in self.shapes]
        )  # (shapes, sizes) half-width in pixels
        xs, ys = np.zeros((n, J)), np.zeros((n, J))
        todo = np.arange(n)
        for attempt in range(200):
            if attempt == 100:  # crowded leftovers: make every object small
                siz[todo] = 0
            ext = extent_of[shp[todo], siz[todo]]  # (K, J)
            x, y, ok = self._place(rng, ext, valid[todo], S)
            xs[todo], ys[todo] = x, y
            todo = todo[~ok]
            if len(todo) == 0:
                break
        else:
            raise RuntimeError(f"could not place {hi} objects without overlap in {S}x{S} images")
        # background
        grey = rng.integers(30, 201, size=n)
        tint = rng.integers(-6, 7, size=(n, 3))
        angle, amp = rng.uniform(0, 2 * np.pi, size=n), rng.uniform(0, 30, size=n)
        noise = rng.integers(0, 5, size=n)
        scene_seeds = rng.integers(0, 2**31, size=n)
        xs, ys = np.round(xs, 2), np.round(ys, 2)
        scenes = []
        for i in range(n):
            objs = [
                Obj(
                    self.colors[col[i, j]],
                    self.shapes[shp[i, j]],
                    self.sizes[siz[i, j]],
                    float(xs[i, j]),
                    float(ys[i, j]),
                )
                for j in range(counts[i])
            ]
            objs.sort(key=lambda o: (o.x, o.y))
            bg = Background(
                tuple(int(v) for v in np.clip(grey[i] + tint[i], 0, 255)),
                (
                    round(float(amp[i] * np.cos(angle[i])), 2),
                    round(float(amp[i] * np.sin(angle[i])), 2),
                ),
                int(noise[i]),
            )
            scenes.append(Scene(objs, bg, S, int(scene_seeds[i])))
        return scenes

    @staticmethod
    def _place(
        rng: np.random.Generator, ext: np.ndarray, valid: np.ndarray, S: int, trials: int = 32
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Place objects one slot at a time: ``trials`` candidate centres per scene, keep the
        first whose box is ``OBJECT_GAP`` away from the boxes already placed. (K, J) arrays."""
        K, J = ext.shape
        gap = OBJECT_GAP * S
        xs, ys = np.zeros((K, J)), np.zeros((K, J))
        ok = np.ones(K, dtype=bool)
        rows = np.arange(K)
        for j in range(J):
            lo = ext[:, j] + BORDER
            span = (S - 2 * lo)[:, None]
            cx = lo[:, None] + rng.random((K, trials)) * span  # (K, T)
            cy = lo[:, None] + rng.random((K, trials)) * span
            good = np.ones((K, trials), dtype=bool)
            for k in range(j):
                sep = (ext[:, j] + ext[:, k] + gap)[:, None]
                apart = (np.abs(cx - xs[:, k, None]) >= sep) | (np.abs(cy - ys[:, k, None]) >= sep)
                good &= apart | ~valid[:, k, None]
            first = good.argmax(1)
            xs[:, j], ys[:, j] = cx[rows, first], cy[rows, first]
            ok &= good.any(1) | ~valid[:, j]
        return xs, ys, ok

    def render(self, scenes: Sequence[Scene], seed: int = 0) -> torch.Tensor:
        """Draw scenes (e.g. edited ones) -> uint8 (N, 3, S, S); see module ``render``."""
        return render(scenes, seed)

    def generate(
        self, n: int, seed: int = 0, min_objects: int | None = None, max_objects: int | None = None
    ) -> ShapesData:
        """``n`` images with their scenes; the same seed gives the same bytes."""
        scenes = self.sample_scenes(n, seed, min_objects, max_objects)
        hi = self.max_objects if max_objects is None else max_objects
        return ShapesData(render(scenes, seed), scenes, seed, self.colors, self.shapes, hi)


# ---------------------------------------------------------------------------- dataset object
@dataclass
class ShapesData:
    """Images (uint8, (N, 3, H, W)) and the scenes they show, with every kind of text about them.

    ``colors``/``shapes``/``max_objects`` describe the world it was drawn from; negatives and
    "no" questions only use these.
    """

    images: torch.Tensor
    scenes: list[Scene]
    seed: int = 0
    colors: list[str] = field(default_factory=lambda: list(COLORS))
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    max_objects: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8:
            raise TypeError("ShapesData.images must be a uint8 tensor (N, 3, H, W)")
        if self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got {tuple(self.images.shape)}")
        if len(self.scenes) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.scenes)} scenes")

    def __len__(self) -> int:
        return len(self.scenes)

    def __repr__(self) -> str:
        return f"ShapesData(n={len(self)}, image_size={self.image_size}, seed={self.seed})"

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def pixel_values(self, idx: Any = slice(None)) -> torch.Tensor:
        """Normalised float images for ``idx`` (default all): (N, 3, H, W) in [-1, 1]."""
        return pixel_values(self.images[idx])

    def subset(self, idx: Any) -> ShapesData:
        """A new ShapesData with the items ``idx`` (slice, list, array or bool/long tensor)."""
        if isinstance(idx, slice):
            positions = list(range(len(self)))[idx]
        else:
            t = torch.as_tensor(np.asarray(idx))
            if t.dtype == torch.bool:
                if t.shape != (len(self),):
                    raise ValueError(f"boolean index must have shape ({len(self)},)")
                t = t.nonzero().flatten()
            positions = t.reshape(-1).tolist()
            bad = [i for i in positions if not -len(self) <= i < len(self)]
            if bad:
                raise IndexError(f"index {bad[0]} is out of range for {len(self)} items")
            positions = [int(i) % len(self) for i in positions]
        images = self.images[torch.tensor(positions, dtype=torch.long)]
        return ShapesData(
            images,
            [self.scenes[i] for i in positions],
            self.seed,
            list(self.colors),
            list(self.shapes),
            self.max_objects,
        )

    # --- text
    def captions(self, i: int) -> list[str]:
        """All true captions of image i (several templates); ``captions(i)[0] == caption(i)``."""
        return scene_captions(self.scenes[i])

    def caption(self, i: int) -> str:
        """The canonical caption: every object with size, colour and shape, left to right."""
        return describe(self.scenes[i], size=True)

    def hard_negatives(self, i: int) -> dict[str, tuple[str, str]]:
        """``{kind: (positive, negative)}`` for the applicable ``NEGATIVE_KINDS``."""
        return scene_hard_negatives(self.scenes[i], self.colors, self.shapes, self.max_objects)

    def vqa(self, i: int) -> list[tuple[str, str, str]]:
        """(question, answer, qtype) triples; answers are in ``answer_vocab``."""
        return scene_vqa(self.scenes[i], self.colors, self.shapes)

    @property
    def answer_vocab(self) -> list[str]:
        """Every possible VQA answer, sorted (the same list for every world: ``ANSWERS``)."""
        return list(ANSWERS)

    def dialogue(self, i: int, task: str | None = None) -> list[dict[str, str]]:
        """LLaVA-style conversation about image i (task from ``DIALOGUE_TASKS`` or by seed)."""
        return scene_dialogue(self.scenes[i], task, self.colors, self.shapes)

    def truth(self, i: int, text: str) -> bool | None:
        """``caption_truth`` for image i."""
        return caption_truth(self.scenes[i], text)

    # --- classification
    @staticmethod
    def class_names(task: str) -> list[str]:
        """Names of the classes of ``labels(task)`` in id order."""
        if task == "shape":
            return list(SHAPES)
        if task == "color":
            return list(COLORS)
        if task == "size":
            return list(SIZES)
        if task == "count":
            return list(NUMBER_WORDS)
        raise ValueError(f"unknown task {task!r}; expected one of {CLASSIFICATION_TASKS}")

    def labels(self, task: str) -> torch.Tensor:
        """LongTensor (N,) of class ids: ``"shape"``/``"color"``/``"size"`` of the main object
        (the largest, leftmost among equals), or ``"count"`` = number of objects (id = count,
        so ``class_names("count")[id]`` is its word)."""
        names = self.class_names(task)
        if task == "count":
            values = [len(sc.objects) for sc in self.scenes]
        else:
            values = [names.index(getattr(sc.main_object, task)) for sc in self.scenes]
        return torch.tensor(values, dtype=torch.long)
