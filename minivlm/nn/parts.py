"""A vision-language model built around a given image encoder and language model.

LLaVA and Flamingo take a trained :class:`~minivlm.nn.vit.ViT` (``vision_encoder=``) and
:class:`~minivlm.nn.lm.DecoderLM` (``language_model=``), e.g. from the zoo. Their config then
comes from those modules' configs, and a module that does not fit gets a clear error:
:func:`config_around` does both, once for every such model.

The rest serves any model with pretrained or stand-by parts: :class:`FrozenParts` keeps frozen
parts (BLIP-2's image encoder and LM, BLIP's momentum model) without gradients and in eval mode,
:func:`needs_grad` says whether a tower must record gradients at all, and :class:`MethodModule`
turns one method of a model (BLIP-2's ``stage2``) into a module that ``minivlm.train.train`` runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from typing import Any

import torch
import torch.nn as nn

from minivlm.nn.lm import DecoderLM
from minivlm.nn.vit import ViT

__all__ = [
    "FrozenParts",
    "MethodModule",
    "check_same_config",
    "config_around",
    "needs_grad",
    "parts_of",
]

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


# ---------------------------------------------------------------------------
# Frozen parts, and one method as the module to train
# ---------------------------------------------------------------------------


class FrozenParts:
    """Mixed into an ``nn.Module`` (before it in the bases) whose :meth:`frozen_modules` get no
    gradients and stay in eval mode whatever ``train()`` sets (BLIP-2 §3: the frozen image
    encoder and LM; the paper's code does the same)."""

    def frozen_modules(self) -> list[nn.Module]:
        """The parts to keep frozen (none here; a model overrides this)."""
        return []

    def freeze_parts(self) -> None:
        """Turn off the gradients of the frozen parts and put them in eval mode."""
        for m in self.frozen_modules():
            m.requires_grad_(False)
        self.train(self.training)  # type: ignore[attr-defined]

    def train(self, mode: bool = True) -> Any:
        """Set the training mode; the frozen parts stay in eval mode."""
        super().train(mode)  # type: ignore[misc]
        for m in self.frozen_modules():
            m.eval()
        return self


def needs_grad(module: nn.Module, *inputs: torch.Tensor) -> bool:
    """Whether running ``module`` on ``inputs`` must record gradients: grad mode is on and some
    input or parameter of ``module`` requires a gradient (else a frozen tower can run under
    ``torch.no_grad``, and keep no activations)."""
    return torch.is_grad_enabled() and (
        any(x.requires_grad for x in inputs) or any(p.requires_grad for p in module.parameters())
    )


class MethodModule(nn.Module):
    """A module whose ``forward`` is one method of ``model`` (same parameters, under the prefix
    ``model.``), so that ``train(MethodModule(blip2, "stage2"), ...)`` trains ``blip2`` through
    ``blip2.stage2``. Keywords in ``bound`` are fixed (``MethodModule(coca, "forward",
    return_loss=True)``). ``forward`` has the method's signature, so the training loop passes it
    the batch keys that the method takes; ``no_weight_decay`` is the model's, prefixed."""

    def __init__(self, model: nn.Module, method: str, **bound: Any) -> None:
        super().__init__()
        if not callable(getattr(model, method, None)):
            raise ValueError(f"MethodModule: {type(model).__name__} has no method {method!r}")
        self.model = model
        self.method, self.bound = method, bound

    @property
    def forward(self) -> Callable[..., Any]:  # type: ignore[override]
        fn = getattr(self.model, self.method)
        return functools.partial(fn, **self.bound) if self.bound else fn

    def no_weight_decay(self) -> set[str]:
        names = getattr(self.model, "no_weight_decay", set)()
        return {f"model.{name}" for name in names}
