"""The *shapes world*: procedural images with captions, hard negatives, VQA and dialogues.

Every experiment in the course trains on this world because it is tiny, fast to make, and every
statement about an image can be checked exactly. An image (64x64 RGB by default) shows 1-4
non-overlapping objects on a grey background::

    colours  red, orange, yellow, green, blue, purple   (``COLORS``: name -> RGB, saturated)
    shapes   circle, square, triangle, diamond, cross   (``SHAPES``)
    sizes    small, large                               (``SIZES``: radius 9% / 15% of the image)
    regions  top left, top, top right, left, center, right, bottom left, bottom, bottom right
             (thirds of the image; ``REGIONS``)
    relations  left of, right of, above, below           (``RELATIONS``)

Rules that make the language exact:

* Objects never overlap: their bounding boxes are at least 5% of the image apart.
* A (colour, shape) pair appears at most once per image, so "the red circle" always names one
  object.
* A relation such as "a left of b" is stated only when the centres differ by at least 15% of the
  image along that axis (``RELATION_MARGIN``); captions use the axis with the larger gap.
* Object pixels have exactly the object's colour (only the 1-pixel anti-aliased rim mixes with the
  background); backgrounds are grey (level 30..200, tint of at most 6 per channel, a soft linear
  gradient and faint noise), never a colour that could be mistaken for an object.
* ``Scene.objects`` are listed left to right. The *main object* (used by ``labels("shape")`` and
  ``labels("color")``) is the largest one, the leftmost among equally large ones.

Text templates (all lower case; numbers are words "one".."six"; "a"/"an" agree)::

    caption(i)        "a small red circle"                                  (one object)
                      "two objects: a small red circle and a large blue square"
    captions(i) also  "two objects: a red circle and a blue square"        (no sizes)
                      "there are two shapes" / "there is one shape"
                      "a small red circle in the top left"                 (one per object)
                      "a red circle left of a blue square"                 (one per pair)
    hard_negatives(i) {kind: (positive, negative)} for the kinds that apply:
        swap_attribute  "two objects: a small blue circle and a large red square"
        swap_relation   "a blue square left of a red circle"
        wrong_count     "there are three shapes"
        wrong_color     "two objects: a small green circle and a large blue square"
        wrong_shape     "two objects: a small red cross and a large blue square"
    vqa(i)            (question, answer, qtype) with qtype in ``QTYPES``:
        color     "what color is the circle?" -> "red"
        shape     "what shape is the blue object?" -> "square"
        count     "how many shapes are there?" / "how many red shapes are there?" /
                  "how many circles are there?" -> "two"
        position  "where is the red circle?" -> "top left"
        yes/no    "is there a red circle?" / "is the red circle left of the blue square?" /
                  "is the blue square large?" -> "yes" | "no"
    dialogue(i)       LLaVA-style turns for the tasks in ``DIALOGUE_TASKS``
                      [{"from": "human", "value": "<image>\\nwhere is the red circle?"},
                       {"from": "gpt", "value": "the red circle is in the top left."}]

``caption_truth(scene, text)`` parses any caption of these forms back and says whether it is true
of the scene: use it to score generated captions.

Generation is vectorised (numpy for scene sampling, torch for drawing masks of every object of
one shape at once in small windows) and deterministic by seed: ``ShapesWorld().generate(10_000)``
takes about a second on 2 CPU cores.

    >>> data = ShapesWorld().generate(1000, seed=0)
    >>> data.images.shape, data.images.dtype          # (1000, 3, 64, 64), torch.uint8
    >>> data.caption(0), data.vqa(0)[0], data.labels("count")[:5]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "COLORS",
    "SHAPES",
    "SIZES",
    "RELATIONS",
    "REGIONS",
    "NUMBER_WORDS",
    "QTYPES",
    "NEGATIVE_KINDS",
    "DIALOGUE_TASKS",
    "CLASSIFICATION_TASKS",
    "ANSWERS",
    "CHAT_ROLES",
    "Obj",
    "Background",
    "Scene",
    "ShapesWorld",
    "ShapesData",
    "vocabulary",
    "caption_truth",
    "render",
    "scene_captions",
    "scene_hard_negatives",
    "scene_vqa",
    "scene_dialogue",
    "pixel_values",
    "to_image",
]

# ---------------------------------------------------------------------------- the world
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "orange": (245, 125, 20),
    "yellow": (240, 215, 35),
    "green": (45, 170, 70),
    "blue": (45, 95, 230),
    "purple": (150, 65, 205),
}
SHAPES: list[str] = ["circle", "square", "triangle", "diamond", "cross"]
SIZES: list[str] = ["small", "large"]
RELATIONS: list[str] = ["left of", "right of", "above", "below"]
REGIONS: list[str] = [
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
]  # fmt: skip
NUMBER_WORDS: list[str] = ["zero", "one", "two", "three", "four", "five", "six"]
MAX_OBJECTS = len(NUMBER_WORDS) - 1
PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "cross": "crosses",
}
QTYPES: tuple[str, ...] = ("color", "shape", "count", "position", "yes/no")
NEGATIVE_KINDS: tuple[str, ...] = (
    "swap_attribute",
    "swap_relation",
    "wrong_count",
    "wrong_color",
    "wrong_shape",
)
DIALOGUE_TASKS: tuple[str, ...] = ("describe", "count", "locate", "compare", "yes/no", "multi")
CLASSIFICATION_TASKS: tuple[str, ...] = ("shape", "color", "size", "count")
# The chat format of ``datasets.DialogueDataset`` names the speakers with these words.
CHAT_ROLES: dict[str, str] = {"human": "user", "gpt": "assistant"}

# Geometry, as fractions of the image size. The radius of an object is SIZE_RADIUS[size] * S;
# a shape's bounding box has half-width SHAPE_EXTENT[shape] * radius.
SIZE_RADIUS: dict[str, float] = {"small": 0.09, "large": 0.15}
SHAPE_EXTENT: dict[str, float] = {
    "circle": 1.0,
    "square": 0.85,
    "triangle": 1.1,
    "diamond": 1.15,
    "cross": 1.0,
}
RELATION_MARGIN = 0.15  # centres must differ by this much (x S) for a relation to be stated
OBJECT_GAP = 0.05  # minimum gap between bounding boxes (x S)
BORDER = 1.5  # pixels kept free between a bounding box and the image border

ANSWERS: list[str] = sorted(
    set(COLORS) | set(SHAPES) | set(NUMBER_WORDS) | set(REGIONS) | {"yes", "no"}
)


# ---------------------------------------------------------------------------- scenes
@dataclass
class Obj:
    """One object: attribute names and its centre (x to the right, y down, in pixels)."""

    color: str
    shape: str
    size: str
    x: float
    y: float

    @property
    def name(self) -> str:
        """'red circle'."""
        return f"{self.color} {self.shape}"


@dataclass
class Background:
    """Grey base colour, linear gradient (grey levels across the image in x and y), noise level."""

    color: tuple[int, int, int]
    gradient: tuple[float, float] = (0.0, 0.0)
    noise: int = 0


@dataclass
class Scene:
    """What an image shows. ``objects`` are sorted left to right when generated."""

    objects: list[Obj]
    background: Background = field(default_factory=lambda: Background((128, 128, 128)))
    image_size: int = 64
    seed: int = 0  # seeds the choice among templates, so text is a function of the scene alone

    # --- geometry
    def radius(self, obj: Obj) -> float:
        return SIZE_RADIUS[obj.size] * self.image_size

    def region(self, obj: Obj) -> str:
        """One of ``REGIONS`` from the thirds of the image."""
        third = self.image_size / 3
        h = "left" if obj.x < third else "right" if obj.x >= 2 * third else ""
        v = "top" if obj.y < third else "bottom" if obj.y >= 2 * third else ""
        return f"{v} {h}".strip() or "center"

    def holds(self, a: Obj, relation: str, b: Obj) -> bool:
        """True when "a <relation> b" holds with the margin (``RELATION_MARGIN`` x image size)."""
        m = RELATION_MARGIN * self.image_size
        if relation == "left of":
            return b.x - a.x >= m
        if relation == "right of":
            return a.x - b.x >= m
        if relation == "above":
            return b.y - a.y >= m
        if relation == "below":
            return a.y - b.y >= m
        raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")

    def relation(self, a: Obj, b: Obj) -> str | None:
        """The relation of a to b along the axis where they are further apart, if it holds."""
        dx, dy = b.x - a.x, b.y - a.y
        if abs(dx) >= abs(dy):
            rel = "left of" if dx > 0 else "right of"
        else:
            rel = "above" if dy > 0 else "below"
        return rel if self.holds(a, rel, b) else None

    # --- look-ups
    def find(self, color: str, shape: str, size: str | None = None) -> list[Obj]:
        return [
            o
            for o in self.objects
            if o.color == color and o.shape == shape and (size is None or o.size == size)
        ]

    def count(self, color: str | None = None, shape: str | None = None) -> int:
        return sum(
            (color is None or o.color == color) and (shape is None or o.shape == shape)
            for o in self.objects
        )

    @property
    def main_object(self) -> Obj:
        """The largest object; the leftmost (first listed) among equally large ones."""
        rank = {s: i for i, s in enumerate(SIZES)}
        return max(self.objects, key=lambda o: (rank[o.size], -self.objects.index(o)))

    def rng(self, salt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, salt])


# ---------------------------------------------------------------------------- phrases
def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _np(o: Obj, size: bool = False) -> str:
    """'a small red circle' / 'an orange square'."""
    return _a(f"{o.size} {o.name}" if size else o.name)


def _region_phrase(region: str) -> str:
    if region == "center":
        return "in the center"
    if region in ("left", "right"):
        return f"on the {region}"
    if region in ("top", "bottom"):
        return f"at the {region}"
    return f"in the {region}"


def _listing(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _count_sentence(n: int, noun: str = "shape") -> str:
    return f"there is one {noun}" if n == 1 else f"there are {NUMBER_WORDS[n]} {noun}s"


def _describe(scene: Scene, size: bool = True, objs: Sequence[Obj] | None = None) -> str:
    objs = scene.objects if objs is None else objs
    parts = [_np(o, size) for o in objs]
    return parts[0] if len(parts) == 1 else f"{NUMBER_WORDS[len(parts)]} objects: {_listing(parts)}"


def _pairs(scene: Scene) -> list[tuple[Obj, str, Obj]]:
    """(a, relation, b) for every pair (a listed before b) with a clear relation."""
    out = []
    for a, b in itertools.combinations(scene.objects, 2):
        rel = scene.relation(a, b)
        if rel is not None:
            out.append((a, rel, b))
    return out


_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _oriented(scene: Scene) -> list[tuple[Obj, str, Obj]]:
    """Each clear pair, stated from a or from b (a coin flip seeded by the scene, so captions,
    negatives and questions state a pair the same way)."""
    rng = scene.rng(10)
    return [(a, r, b) if rng.random() < 0.5 else (b, _OPPOSITE[r], a) for a, r, b in _pairs(scene)]


def scene_captions(scene: Scene) -> list[str]:
    """Every caption template that is true of the scene; the first is the canonical one."""
    n = len(scene.objects)
    caps = [_describe(scene, size=True), _describe(scene, size=False), _count_sentence(n)]
    caps += [f"{_np(o, True)} {_region_phrase(scene.region(o))}" for o in scene.objects]
    caps += [f"{_np(a)} {r} {_np(b)}" for a, r, b in _oriented(scene)]
    return list(dict.fromkeys(caps))  # drop duplicates, keep order


def scene_hard_negatives(
    scene: Scene,
    colors: Sequence[str] | None = None,
    shapes: Sequence[str] | None = None,
    max_objects: int = 4,
) -> dict[str, tuple[str, str]]:
    """``{kind: (positive, negative)}``: a true caption and a minimally edited false one.

    The negative keeps the template of its positive, so only looking at the image tells them
    apart. Kinds that cannot apply (e.g. ``swap_relation`` with one object) are left out.
    Wrong colours/shapes come from ``colors``/``shapes`` (the world's), wrong counts from
    1..``max_objects``, so a negative never uses a word its world's positives never use.
    """
    colors = list(COLORS) if colors is None else list(colors)
    shapes = list(SHAPES) if shapes is None else list(shapes)
    rng = scene.rng(1)
    objs = scene.objects
    n = len(objs)
    present = {(o.color, o.shape) for o in objs}
    canonical = _describe(scene, size=True)
    out: dict[str, tuple[str, str]] = {}

    # swap_attribute: exchange the colours of two objects of different colour and shape
    swaps = [
        (i, j)
        for i, j in itertools.combinations(range(n), 2)
        if objs[i].color != objs[j].color
        and objs[i].shape != objs[j].shape
        and not {(objs[j].color, objs[i].shape), (objs[i].color, objs[j].shape)} <= present
    ]
    if swaps:
        i, j = swaps[rng.integers(len(swaps))]
        edited = list(objs)
        edited[i] = Obj(objs[j].color, objs[i].shape, objs[i].size, objs[i].x, objs[i].y)
        edited[j] = Obj(objs[i].color, objs[j].shape, objs[j].size, objs[j].x, objs[j].y)
        out["swap_attribute"] = (canonical, _describe(scene, True, edited))

    # swap_relation: "a left of b" -> "b left of a"
    pairs = _oriented(scene)
    if pairs:
        a, r, b = pairs[rng.integers(len(pairs))]
        out["swap_relation"] = (f"{_np(a)} {r} {_np(b)}", f"{_np(b)} {r} {_np(a)}")

    # wrong_count: another number of shapes
    wrong = [k for k in range(1, max(max_objects, 2) + 1) if k != n]
    out["wrong_count"] = (_count_sentence(n), _count_sentence(int(rng.choice(wrong))))

    # wrong_color / wrong_shape: change one attribute of one object to one absent from the scene
    for kind, choices in (("wrong_color", colors), ("wrong_shape", shapes)):
        options = []
        for i, o in enumerate(objs):
            for v in choices:
                c, s = (v, o.shape) if kind == "wrong_color" else (o.color, v)
                if v not in (o.color, o.shape) and (c, s) not in present:
                    options.append((i, c, s))
        if options:
            i, c, s = options[rng.integers(len(options))]
            edited = list(objs)
            edited[i] = Obj(c, s, objs[i].size, objs[i].x, objs[i].y)
            out[kind] = (canonical, _describe(scene, True, edited))
    return out


def scene_vqa(
    scene: Scene, colors: Sequence[str] | None = None, shapes: Sequence[str] | None = None
) -> list[tuple[str, str, str]]:
    """(question, answer, qtype) triples, all answers in ``ANSWERS``."""
    colors = list(COLORS) if colors is None else list(colors)
    shapes = list(SHAPES) if shapes is None else list(shapes)
    rng = scene.rng(2)
    objs = scene.objects
    qa: list[tuple[str, str, str]] = []
    for o in objs:
        qa.append((f"where is the {o.name}?", scene.region(o), "position"))
        if scene.count(shape=o.shape) == 1:
            qa.append((f"what color is the {o.shape}?", o.color, "color"))
        elif sum(p.shape == o.shape and p.size == o.size for p in objs) == 1:
            qa.append((f"what color is the {o.size} {o.shape}?", o.color, "color"))
        if scene.count(color=o.color) == 1:
            qa.append((f"what shape is the {o.color} object?", o.shape, "shape"))
    # counting
    qa.append(("how many shapes are there?", NUMBER_WORDS[len(objs)], "count"))
    present_c = sorted({o.color for o in objs}, key=colors.index)
    absent_c = [c for c in colors if c not in present_c]
    for group in (present_c, absent_c):
        if group:
            c = group[rng.integers(len(group))]
            qa.append(
                (f"how many {c} shapes are there?", NUMBER_WORDS[scene.count(color=c)], "count")
            )
    s = objs[rng.integers(len(objs))].shape
    qa.append((f"how many {PLURALS[s]} are there?", NUMBER_WORDS[scene.count(shape=s)], "count"))
    # yes/no: existence, size, relation
    o = objs[rng.integers(len(objs))]
    qa.append((f"is there {_np(o)}?", "yes", "yes/no"))
    absent = [(c, s) for c in colors for s in shapes if not scene.find(c, s)]
    if absent:
        c, s = absent[rng.integers(len(absent))]
        qa.append((f"is there {_a(f'{c} {s}')}?", "no", "yes/no"))
    o = objs[rng.integers(len(objs))]
    size = SIZES[rng.integers(len(SIZES))]
    qa.append((f"is the {o.name} {size}?", "yes" if o.size == size else "no", "yes/no"))
    pairs = _oriented(scene)
    if pairs:
        a, r, b = pairs[rng.integers(len(pairs))]
        qa.append((f"is the {a.name} {r} the {b.name}?", "yes", "yes/no"))
        if rng.random() < 0.5:
            qa.append((f"is the {b.name} {r} the {a.name}?", "no", "yes/no"))
        else:
            qa.append((f"is the {a.name} {_OPPOSITE[r]} the {b.name}?", "no", "yes/no"))
    return qa


def _dialogue_turn(
    scene: Scene, task: str, rng: np.random.Generator, colors: Sequence[str], shapes: Sequence[str]
) -> tuple[str, str]:
    objs = scene.objects
    n = len(objs)
    if task == "describe":
        q = ["describe the image.", "what is in the image?", "what do you see?"][rng.integers(3)]
        located = [f"{_np(o, True)} {_region_phrase(scene.region(o))}" for o in objs]
        if n == 1:
            return q, f"the image shows {located[0]}."
        return q, f"the image shows {NUMBER_WORDS[n]} shapes: {_listing(located)}."
    if task == "count":
        q = ["how many shapes are in the image?", "how many objects are there?"][rng.integers(2)]
        return q, _count_sentence(n) + "."
    if task == "locate":
        o = objs[rng.integers(n)]
        return f"where is the {o.name}?", f"the {o.name} is {_region_phrase(scene.region(o))}."
    if task == "compare":
        if n < 2:
            raise ValueError("the compare task needs a scene with at least two objects")
        i, j = rng.choice(n, size=2, replace=False)
        a, b = objs[i], objs[j]
        rel = scene.relation(a, b)
        if rel is None or rng.random() < 0.5:
            q = f"which is bigger, the {a.name} or the {b.name}?"
            if a.size == b.size:
                return q, "they are the same size."
            big = a if SIZES.index(a.size) > SIZES.index(b.size) else b
            return q, f"the {big.name} is bigger."
        options = "left or right of" if rel in ("left of", "right of") else "above or below"
        return f"is the {a.name} {options} the {b.name}?", f"the {a.name} is {rel} the {b.name}."
    if task == "yes/no":
        absent = [(c, s) for c in colors for s in shapes if not scene.find(c, s)]
        if rng.random() < 0.5 or not absent:
            o = objs[rng.integers(n)]
            c, s = o.color, o.shape
        else:
            c, s = absent[rng.integers(len(absent))]
        thing = f"{c} {s}"
        if scene.find(c, s):
            return f"is there {_a(thing)}?", f"yes, there is {_a(thing)}."
        return f"is there {_a(thing)}?", f"no, there is no {thing}."
    raise ValueError(f"unknown dialogue task {task!r}; expected one of {DIALOGUE_TASKS}")


def scene_dialogue(
    scene: Scene,
    task: str | None = None,
    colors: Sequence[str] | None = None,
    shapes: Sequence[str] | None = None,
) -> list[dict[str, str]]:
    """LLaVA-style turns; the first human turn starts with ``"<image>\\n"``.

    ``task=None`` picks one of ``DIALOGUE_TASKS`` from the scene's seed.
    """
    colors = list(COLORS) if colors is None else list(colors)
    shapes = list(SHAPES) if shapes is None else list(shapes)
    rng = scene.rng(3)
    tasks = [t for t in DIALOGUE_TASKS if t != "compare" or len(scene.objects) >= 2]
    if task is None:
        task = tasks[rng.integers(len(tasks))]
    if task not in DIALOGUE_TASKS:
        raise ValueError(f"unknown dialogue task {task!r}; expected one of {DIALOGUE_TASKS}")
    if task == "multi":
        first = ["describe", "count"][rng.integers(2)]
        rest = [t for t in tasks if t not in ("multi", first)]
        k = 1 + int(rng.integers(2))
        plan = [first] + [rest[i] for i in rng.choice(len(rest), size=k, replace=False)]
    else:
        plan = [task]
    turns: list[dict[str, str]] = []
    for t in plan:
        q, a = _dialogue_turn(scene, t, rng, colors, shapes)
        if not turns:
            q = "<image>\n" + q
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return turns


# ---------------------------------------------------------------------------- checking text
_RELATION_WORDS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}


def _parse_np(w: list[str], i: int) -> tuple[dict[str, Any], int] | None:
    """Parse '[a|an|the] [size] colour shape [in/on/at the region]' starting at w[i]."""
    if i < len(w) and w[i] in ("a", "an", "the"):
        i += 1
    spec: dict[str, Any] = {"size": None, "region": None}
    if i < len(w) and w[i] in SIZES:
        spec["size"] = w[i]
        i += 1
    if i + 1 >= len(w) or w[i] not in COLORS or w[i + 1] not in SHAPES:
        return None
    spec["color"], spec["shape"] = w[i], w[i + 1]
    i += 2
    if i + 2 < len(w) and w[i] in ("in", "on", "at") and w[i + 1] == "the":
        for k in (2, 1):
            region = " ".join(w[i + 2 : i + 2 + k])
            phrase = " ".join(w[i : i + 2 + k])
            if i + 2 + k <= len(w) and region in REGIONS and _region_phrase(region) == phrase:
                spec["region"] = region
                return spec, i + 2 + k
        return None
    return spec, i


def _matches(scene: Scene, o: Obj, spec: dict[str, Any]) -> bool:
    return (
        o.color == spec["color"]
        and o.shape == spec["shape"]
        and (spec["size"] is None or o.size == spec["size"])
        and (spec["region"] is None or scene.region(o) == spec["region"])
    )


def caption_truth(scene: Scene, text: str) -> bool | None:
    """Is ``text`` (in one of the caption templates) true of ``scene``? None if not parseable.

    Understands "there is one shape" / "there are N shapes", "N objects: a ..., a ... and a ..."
    (must list exactly the scene's objects), "a [size] colour shape [region phrase]" (such an
    object exists) and "a colour shape <relation> a colour shape".
    """
    w = text.lower().replace(",", " , ").replace(":", " : ").replace(".", " ").split()
    if not w:
        return None
    n = len(scene.objects)
    if w[:2] in (["there", "is"], ["there", "are"]):
        if (
            len(w) == 4
            and w[2] in NUMBER_WORDS
            and w[3] in ("shape", "shapes", "object", "objects")
        ):
            k = NUMBER_WORDS.index(w[2])
            if (w[1] == "is") != (k == 1) or w[3].endswith("s") != (k != 1):
                return None
            return k == n
        return None
    if len(w) > 2 and w[0] in NUMBER_WORDS and w[1] in ("objects", "shapes") and w[2] == ":":
        specs, i = [], 3
        while i < len(w):
            parsed = _parse_np(w, i)
            if parsed is None:
                return None
            spec, i = parsed
            specs.append(spec)
            if i < len(w):
                if w[i] not in (",", "and"):
                    return None
                i += 1
        if len(specs) != NUMBER_WORDS.index(w[0]):
            return None
        if len(specs) != n:
            return False
        return any(
            all(_matches(scene, o, s) for o, s in zip(perm, specs, strict=True))
            for perm in itertools.permutations(scene.objects)
        )
    parsed = _parse_np(w, 0)
    if parsed is None:
        return None
    spec, i = parsed
    if i == len(w):
        return any(_matches(scene, o, spec) for o in scene.objects)
    if w[i] in _RELATION_WORDS:
        rel = _RELATION_WORDS[w[i]]
        i += 2 if rel.endswith(" of") else 1
        if rel.endswith(" of") and w[i - 1] != "of":
            return None
        parsed = _parse_np(w, i)
        if parsed is None or parsed[1] != len(w):
            return None
        spec_b = parsed[0]
        return any(
            a is not b
            and _matches(scene, a, spec)
            and _matches(scene, b, spec_b)
            and scene.holds(a, rel, b)
            for a in scene.objects
            for b in scene.objects
        )
    return None


def vocabulary() -> list[str]:
    """Every word any template can produce (captions, negatives, VQA, dialogues, chat roles).

    Sorted, so a tokenizer built from it has the same ids everywhere. Punctuation is not
    included (``tokenizer.PUNCTUATION``).
    """
    words = set(COLORS) | set(SHAPES) | set(PLURALS.values()) | set(SIZES) | set(NUMBER_WORDS)
    for phrase in REGIONS + RELATIONS + [_region_phrase(r) for r in REGIONS]:
        words.update(phrase.split())
    words.update(CHAT_ROLES.values())
    words.update(
        "a an the and there is are shape shapes object objects image shows "
        "what where how many color is in of yes no describe do you see "
        "which bigger or they same size left right above below".split()
    )
    return sorted(words)


# ---------------------------------------------------------------------------- pixels
def pixel_values(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 images (..., 3, H, W) -> float32 in [-1, 1]: ``(x / 255 - 0.5) / 0.5``."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError(
            f"pixel_values expects a uint8 tensor (..., 3, H, W), got "
            f"{getattr(images, 'dtype', type(images).__name__)}"
        )
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"pixel_values expects (..., 3, H, W), got shape {tuple(images.shape)}")
    return (images.float() / 255.0 - 0.5) / 0.5


def to_image(x: torch.Tensor) -> np.ndarray:
    """Inverse of ``pixel_values`` for plotting: (3, H, W) or (B, 3, H, W) -> float (..., H, W, 3)
    in [0, 1] for ``plt.imshow``. uint8 input is divided by 255."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"to_image expects (3, H, W) or (B, 3, H, W), got {tuple(x.shape)}")
    x = x.detach().cpu()
    img = x.float() / 255.0 if x.dtype == torch.uint8 else x.float() * 0.5 + 0.5
    return img.clamp(0, 1).movedim(-3, -1).numpy()


# ---------------------------------------------------------------------------- drawing
def _signed_distance(
    shape: str, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor
) -> torch.Tensor:
    """Approximate signed distance in pixels (< 0 inside) of pixel offsets from a shape centre.

    dx, dy: (M, P, P) offsets of pixel centres; r: (M, 1, 1) radii. Exact inside and along edges,
    which is what the 1-pixel anti-aliasing ``alpha = clamp(0.5 - d, 0, 1)`` needs.
    """
    ax, ay = dx.abs(), dy.abs()
    if shape == "circle":
        return torch.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return torch.maximum(ax, ay) - SHAPE_EXTENT["square"] * r
    if shape == "diamond":
        return (ax + ay - SHAPE_EXTENT["diamond"] * r) * (1 / math.sqrt(2))
    if shape == "triangle":  # apex up at (0, -a), base y = +a from x = -a to a
        a = SHAPE_EXTENT["triangle"] * r
        return torch.maximum(dy - a, (2 * ax - dy - a) * (1 / math.sqrt(5)))
    if shape == "cross":
        arm, half = SHAPE_EXTENT["cross"] * r, 0.34 * r
        return torch.minimum(torch.maximum(ax - arm, ay - half), torch.maximum(ax - half, ay - arm))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


_CHUNK = 1024


def render(scenes: Sequence[Scene], seed: int = 0) -> torch.Tensor:
    """Draw scenes -> uint8 (N, 3, S, S). Deterministic given the scenes and ``seed`` (noise).

    Each object is drawn in a small window around its centre: the masks of all objects of one
    shape in a chunk of images are computed in one tensor op, then added into the canvas.
    """
    if not scenes:
        raise ValueError("render needs at least one scene")
    S = scenes[0].image_size
    if any(sc.image_size != S for sc in scenes):
        raise ValueError("all scenes must have the same image_size")
    max_r = max(SIZE_RADIUS.values()) * max(SHAPE_EXTENT.values()) * S
    P = min(S, 2 * math.ceil(max_r + 1.5) + 1)  # window side
    ramp = (torch.arange(S, dtype=torch.float32) + 0.5 - S / 2) / S  # (S,) in [-0.5, 0.5]
    win = torch.arange(P)
    channel = torch.arange(3)
    out = torch.empty(len(scenes), 3, S, S, dtype=torch.uint8)
    for k, start in enumerate(range(0, len(scenes), _CHUNK)):
        chunk = scenes[start : start + _CHUNK]
        B = len(chunk)
        # background: grey base + linear gradient + noise
        base = torch.tensor([sc.background.color for sc in chunk], dtype=torch.float32)  # (B, 3)
        grad = torch.tensor([sc.background.gradient for sc in chunk], dtype=torch.float32)
        amp = torch.tensor([sc.background.noise for sc in chunk], dtype=torch.float32) / 4
        gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, k]).integers(2**62)))
        shade = torch.randint(-4, 5, (B, S, S), generator=gen, dtype=torch.int8).float()
        shade.mul_(amp[:, None, None])
        shade += grad[:, 0, None, None] * ramp[None, None, :]  # (B, S, S)
        shade += grad[:, 1, None, None] * ramp[None, :, None]
        img = base[:, :, None, None] + shade[:, None]  # (B, 3, S, S)

        # objects: flatten (image index, centre, radius, shape, colour)
        b_idx, cx, cy, rad, shp, rgb = [], [], [], [], [], []
        for b, sc in enumerate(chunk):
            for o in sc.objects:
                b_idx.append(b)
                cx.append(o.x)
                cy.append(o.y)
                rad.append(SIZE_RADIUS[o.size] * S)
                shp.append(o.shape)
                rgb.append(COLORS[o.color])
        if b_idx:
            M = len(b_idx)
            bt = torch.tensor(b_idx)
            cxt = torch.tensor(cx, dtype=torch.float32)
            cyt = torch.tensor(cy, dtype=torch.float32)
            x0 = (cxt.floor().long() - P // 2).clamp(0, S - P)  # (M,) window corner
            y0 = (cyt.floor().long() - P // 2).clamp(0, S - P)
            xs = x0[:, None] + win  # (M, P) pixel columns
            ys = y0[:, None] + win
            dx = (xs.float() + 0.5 - cxt[:, None])[:, None, :]  # (M, 1, P)
            dy = (ys.float() + 0.5 - cyt[:, None])[:, :, None]  # (M, P, 1)
            r = torch.tensor(rad, dtype=torch.float32)[:, None, None]  # (M, 1, 1)
            dist = torch.empty(M, P, P)
            shp_arr = np.array(shp)
            for s in sorted(set(shp)):
                sel = torch.from_numpy(np.flatnonzero(shp_arr == s))
                dist[sel] = _signed_distance(s, dx[sel], dy[sel], r[sel])
            alpha = dist.neg_().add_(0.5).clamp_(0, 1)  # (M, P, P) coverage, anti-aliased rim
            pix = ys[:, :, None] * S + xs[:, None, :]  # (M, P, P) pixel index in an image
            # objects never overlap, so summing coverage and colour gives the composite
            cover = torch.zeros(B * S * S)
            cover.index_add_(0, (bt[:, None, None] * (S * S) + pix).reshape(-1), alpha.reshape(-1))
            colors = torch.tensor(rgb, dtype=torch.float32)  # (M, 3)
            paint = torch.zeros(B * 3 * S * S)
            flat = (bt[:, None] * 3 + channel)[:, :, None, None] * (S * S) + pix[:, None]
            paint.index_add_(
                0, flat.reshape(-1), (alpha[:, None] * colors[:, :, None, None]).reshape(-1)
            )  # (M, 3, P, P) values
            img.mul_(1 - cover.view(B, 1, S, S).clamp_(max=1.0)).add_(paint.view(B, 3, S, S))
        out[start : start + B] = img.round_().clamp_(0, 255)
    return out


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
        return _describe(self.scenes[i], size=True)

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
