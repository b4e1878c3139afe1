"""A tiny model registry in the style of ``timm.create_model``.

Each model file registers factory functions with :func:`register_model`::

    @register_model("clip_tiny")
    def clip_tiny(**overrides) -> CLIP:
        return CLIP(CLIPConfig(**{**TINY, **overrides}))

``create_model(name, **overrides)`` then builds it; ``list_models()`` lists names.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable

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
