"""The shapes world's language: captions, hard-negative captions, VQA pairs and dialogues
generated from a :class:`~minivlm.data.shapes.scenes.Scene`, and :func:`caption_truth`, which
parses a caption back and says whether it is true of a scene.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from minivlm.data.shapes.scenes import (
    CHAT_ROLES,
    COLORS,
    DIALOGUE_TASKS,
    NUMBER_WORDS,
    PLURALS,
    REGIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
)


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


def describe(scene: Scene, size: bool = True, objs: Sequence[Obj] | None = None) -> str:
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
    caps = [describe(scene, size=True), describe(scene, size=False), _count_sentence(n)]
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
    canonical = describe(scene, size=True)
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
        out["swap_attribute"] = (canonical, describe(scene, True, edited))

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
            out[kind] = (canonical, describe(scene, True, edited))
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
