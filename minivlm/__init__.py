"""minivlm: vision-language models from scratch, for a course you can run on a laptop CPU.

    >>> import minivlm
    >>> model = minivlm.create_model("clip_tiny")
    >>> minivlm.list_models("clip*")
"""

from minivlm.presets import create_model, list_models
from minivlm.utils import atomic_write, count_parameters, device, seed_everything

__version__ = "0.1.0"

__all__ = [
    "atomic_write",
    "count_parameters",
    "create_model",
    "device",
    "list_models",
    "seed_everything",
]
