"""Data: the procedural shapes world (``shapes/``), a word-level tokenizer, task datasets
(``datasets.py``), the chat formats and collators (``chat.py``) and loaders for real formats
(``formats.py``).

>>> from minivlm.data import ShapesWorld, shapes_tokenizer, CaptionDataset, make_loader
>>> data = ShapesWorld().generate(2000, seed=0)
>>> loader = make_loader(CaptionDataset(data, shapes_tokenizer()), batch_size=64)
"""

from minivlm.data.chat import (
    SHAPES_CHAT,
    VICUNA_V1,
    ChatTemplate,
    DialogueDataset,
    LlavaCollator,
    encode_chat,
)
from minivlm.data.datasets import (
    IGNORE_INDEX,
    CaptionDataset,
    ClassificationDataset,
    ImageTextCollator,
    ITMDataset,
    VQADataset,
    make_loader,
    move_to,
)
from minivlm.data.formats import (
    CocoCaptions,
    ImageFolderClassification,
    LlavaConversations,
    image_transform,
    load_image,
)
from minivlm.data.shapes import (
    ANSWERS,
    COLORS,
    DIALOGUE_TASKS,
    NEGATIVE_KINDS,
    QTYPES,
    RELATIONS,
    SHAPES,
    SIZES,
    Background,
    Obj,
    Scene,
    ShapesData,
    ShapesWorld,
    caption_truth,
    pixel_values,
    to_image,
    vocabulary,
)
from minivlm.data.tokenizer import SPECIAL_TOKENS, HFTokenizerAdapter, Tokenizer, shapes_tokenizer

__all__ = [
    "ANSWERS",
    "COLORS",
    "DIALOGUE_TASKS",
    "IGNORE_INDEX",
    "SHAPES_CHAT",
    "NEGATIVE_KINDS",
    "QTYPES",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "SPECIAL_TOKENS",
    "Background",
    "ChatTemplate",
    "CaptionDataset",
    "ClassificationDataset",
    "CocoCaptions",
    "DialogueDataset",
    "HFTokenizerAdapter",
    "ITMDataset",
    "ImageFolderClassification",
    "ImageTextCollator",
    "LlavaCollator",
    "LlavaConversations",
    "Obj",
    "Scene",
    "ShapesData",
    "ShapesWorld",
    "Tokenizer",
    "VICUNA_V1",
    "VQADataset",
    "caption_truth",
    "encode_chat",
    "image_transform",
    "load_image",
    "make_loader",
    "move_to",
    "pixel_values",
    "shapes_tokenizer",
    "to_image",
    "vocabulary",
]
