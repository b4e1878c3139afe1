"""A vision-language model built around a given image encoder and language model.

LLaVA and Flamingo take a trained :class:`~minivlm.nn.vit.ViT` (``vision_encoder=``) and
:class:`~minivlm.nn.lm.DecoderLM` (``language_model=``), e.g. from the zoo. Their config then
comes from those modules' configs, and a module that does not fit gets a clear error:
:func:`config_around` does both, once for every such model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from typing import Any

from minivlm.nn.lm import DecoderLM
from minivlm.nn.vit import ViT

__all__ = ["check_same_config", "config_around", "parts_of"]

# keyword -> (the config part it fills, the class it must be, where a learner gets one)
_GIVEN = {
    "vision_encoder": ("vision", ViT, "zoo.load_image_encoder()"),
    "language_model": ("text", DecoderLM, "zoo.load('shapes_lm')"),
}


def parts_of(vision_encoder: Any, language_model: Any) -> dict[str, Any]:
    """The config parts of the given modules: ``{"vision": ..., "text": ...}`` for those given."""
    given = {"vision": vision_encoder, "text": language_model}
    return {k: module.config for k, module in given.items() if module is not None}


def config_around(
    owner: str,
    config_cls: Callable[..., Any],
    config: Any,
    overrides: Mapping[str, Any],
    vision_encoder: Any,
    language_model: Any,
) -> Any:
    """``config`` with ``overrides`` for ``owner`` (a model's name in errors) built around the
    given modules; without ``config``, ``config_cls(vision=..., text=...)`` of their configs.
    A TypeError when a module is not a ViT / DecoderLM, a ValueError naming every field where
    its config differs from the result's ``vision`` / ``text``."""
    given = {"vision_encoder": vision_encoder, "language_model": language_model}
    for name, module in given.items():
        _, cls, example = _GIVEN[name]
        if module is not None and not isinstance(module, cls):
            raise TypeError(
                f"{owner}: {name} must be a {cls.__module__}.{cls.__name__} (e.g. {example}), "
                f"got {type(module).__name__}"
            )
    if config is None:
        config = config_cls(**parts_of(vision_encoder, language_model))
    cfg = replace(config, **overrides) if overrides else config
    for name, module in given.items():
        part = _GIVEN[name][0]
        if module is not None:
            check_same_config(owner, name, module.config, f"config.{part}", getattr(cfg, part))
    return cfg


def check_same_config(owner: str, module_name: str, got: Any, config_name: str, want: Any) -> None:
    """ValueError naming every field where a passed-in module's config differs from the one
    ``owner`` was configured with (``dim`` is the width, ``vocab_size`` the vocabulary)."""
    diff = [
        f"{f.name}: {getattr(got, f.name)!r} vs {getattr(want, f.name)!r}"
        for f in fields(want)
        if getattr(got, f.name) != getattr(want, f.name)
    ]
    if diff:
        raise ValueError(
            f"{owner}: {module_name}'s config does not match {config_name} ({module_name} vs "
            f"{config_name}: {'; '.join(diff)}); leave out config to take the sizes from the "
            "modules, or build it from theirs"
        )
