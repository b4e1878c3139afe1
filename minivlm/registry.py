"""A tiny model registry in the style of ``timm.create_model``.

Each model file registers factory functions with :func:`register_model`::

    @register_model("clip_tiny")
    def clip_tiny(**overrides) -> CLIP:
        return CLIP(CLIPConfig(**{**TINY, **overrides}))

``create_model(name, **overrides)`` then builds it; ``list_models()`` lists names.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
from collections.abc import Callable
from typing import Any

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

# Modules whose import registers models. Listed explicitly so that a learner can
# see where every name comes from; a missing module is skipped (work in progress).
_MODEL_MODULES = (
    "minivlm.nn.vit",
    "minivlm.nn.text",
    "minivlm.nn.lm",
    "minivlm.models",
)


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``fn(**overrides) -> nn.Module`` under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model name {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def _load_all() -> None:
    for mod in _MODEL_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # tolerate only the module itself being absent
            if e.name != mod:
                raise


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of registered models matching a shell-style ``pattern``."""
    _load_all()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **overrides) -> nn.Module:
    """Build the registered model ``name``; keyword ``overrides`` change its config."""
    _load_all()
    if name not in _REGISTRY:
        close = [n for n in _REGISTRY if name.split("_")[0] in n]
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}; expected one of minivlm.list_models() "
            f"({len(_REGISTRY)} registered).{hint}"
        )
    return _REGISTRY[name](**overrides)


def split_overrides(
    name: str,
    preset: dict[str, Any],
    overrides: dict[str, Any],
    *,
    config_name: str,
    top_fields: set[str],
    text_shortcuts: set[str],
    vision_shortcuts: set[str],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Route a dual-encoder preset's flat ``create_model`` overrides to its parts.

    ``preset`` holds top-level fields plus nested ``vision``/``text`` dicts. Overrides may be
    top-level config fields, ``vision_<field>`` / ``text_<field>``, nested ``vision=`` /
    ``text=`` dicts or config dataclasses (merged into the preset's), or the given shortcuts
    (e.g. ``image_size`` goes to vision, ``vocab_size`` to text). Returns (top, vision, text)
    keyword dicts; an unknown key raises a ValueError listing what is accepted.
    """
    top = {k: v for k, v in preset.items() if k not in ("vision", "text")}
    vision, text = dict(preset.get("vision", {})), dict(preset.get("text", {}))
    for key, value in overrides.items():
        if key in ("vision", "text"):
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            if not isinstance(value, dict):
                raise TypeError(
                    f"{name}: override {key!r} must be a dict or a config dataclass, "
                    f"got {type(value).__name__}"
                )
            (vision if key == "vision" else text).update(value)
        elif key in top_fields:
            top[key] = value
        elif key.startswith("vision_"):
            vision[key[len("vision_") :]] = value
        elif key.startswith("text_"):
            text[key[len("text_") :]] = value
        elif key in text_shortcuts:
            text[key] = value
        elif key in vision_shortcuts:
            vision[key] = value
        else:
            raise ValueError(
                f"{name}: unknown override {key!r}; expected a {config_name} field "
                f"{sorted(top_fields)}, vision_<ViTConfig field>, text_<TextConfig field>, "
                f"or one of {sorted(text_shortcuts | vision_shortcuts)}"
            )
    return top, vision, text
