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
from minivlm.data.shapes import *  # noqa: F403 (the shapes world: every name in its __all__)
from minivlm.data.shapes import __all__ as _SHAPES_NAMES
from minivlm.data.tokenizer import SPECIAL_TOKENS, HFTokenizerAdapter, Tokenizer, shapes_tokenizer

__all__ = [
    "IGNORE_INDEX",
    "SHAPES_CHAT",
    "SPECIAL_TOKENS",
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
    "Tokenizer",
    "VICUNA_V1",
    "VQADataset",
    "encode_chat",
    "image_transform",
    "load_image",
    "make_loader",
    "move_to",
    "shapes_tokenizer",
    *_SHAPES_NAMES,
]
