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

Where it lives: ``scenes.py`` (the vocabulary, geometry and :class:`Scene`), ``language.py``
(captions, hard negatives, VQA, dialogues, :func:`caption_truth`), ``draw.py`` (:func:`render`,
:func:`pixel_values`, :func:`to_image`) and ``world.py`` (:class:`ShapesWorld`,
:class:`ShapesData`); every name is importable from ``minivlm.data.shapes``.
"""

from minivlm.data.shapes.draw import pixel_values, render, to_image
from minivlm.data.shapes.language import (
    caption_truth,
    scene_captions,
    scene_dialogue,
    scene_hard_negatives,
    scene_vqa,
    vocabulary,
)
from minivlm.data.shapes.scenes import (
    ANSWERS,
    CHAT_ROLES,
    CLASSIFICATION_TASKS,
    COLORS,
    DIALOGUE_TASKS,
    NEGATIVE_KINDS,
    NUMBER_WORDS,
    QTYPES,
    REGIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    Background,
    Obj,
    Scene,
)
from minivlm.data.shapes.scenes import BORDER as BORDER
from minivlm.data.shapes.scenes import MAX_OBJECTS as MAX_OBJECTS
from minivlm.data.shapes.scenes import OBJECT_GAP as OBJECT_GAP
from minivlm.data.shapes.scenes import PLURALS as PLURALS
from minivlm.data.shapes.scenes import RELATION_MARGIN as RELATION_MARGIN
from minivlm.data.shapes.scenes import SHAPE_EXTENT as SHAPE_EXTENT
from minivlm.data.shapes.scenes import SIZE_RADIUS as SIZE_RADIUS
from minivlm.data.shapes.world import ShapesData, ShapesWorld

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
