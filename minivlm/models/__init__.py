"""One file per surveyed model. Importing this package registers every model."""

import importlib

# Each entry is a model file; importing it registers its presets.
_MODEL_FILES = ["clip", "vilt", "albef", "blip2", "llava", "flamingo"]

for _name in _MODEL_FILES:
    try:
        importlib.import_module(f"minivlm.models.{_name}")
    except ModuleNotFoundError as e:  # only tolerate the file itself being absent
        if e.name != f"minivlm.models.{_name}":
            raise
