"""The shapes world's vocabulary of things (colours, shapes, sizes, regions, relations),
its geometry constants and the scene objects: :class:`Obj`, :class:`Background`, :class:`Scene`
(relations, regions, counts, lookup).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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
# The chat format of ``chat.DialogueDataset`` (``encode_chat``) names the speakers with these words.
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
