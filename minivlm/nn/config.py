"""What the config dataclasses share, written once: parts given as dicts, the usual rules, and
the MLP width (:class:`MLPHidden`).

A model's config is made of parts (``vision=ViTConfig(...)`` or ``vision=dict(depth=2)``):
:func:`as_part` turns a dict into the part's config and rejects anything else with a clear
error. The rules are ``(ok, message)`` rows for :func:`minivlm.utils.raise_first`, so a
``__post_init__`` reads as a table of its rules::

    raise_first("ViLTConfig: ", [
        divisible(self, "dim", "num_heads"),      # "dim 100 is not divisible by num_heads 12"
        one_of(self, "vqa_loss", ("bce", "ce")),  # "vqa_loss must be 'bce' or 'ce', got 'x'"
    ])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["MLPHidden", "as_part", "divisible", "in_vocab", "one_of"]


class MLPHidden:
    """``hidden`` of a config with ``dim``, ``mlp_ratio`` and an optional ``mlp_hidden`` (a base
    of the text, ViT and ViLT configs; it adds no dataclass fields)."""

    dim: int
    mlp_ratio: float
    mlp_hidden: int | None

    @property
    def hidden(self) -> int:
        """The MLP's width: ``mlp_hidden`` when given, else ``int(dim * mlp_ratio)``."""
        return self.mlp_hidden or int(self.dim * self.mlp_ratio)


def as_part(owner: str, name: str, value: Any, build: Callable[..., Any], *types: type) -> Any:
    """``value`` as the config of part ``name`` of ``owner``: a dict goes through ``build``
    (``build(**value)``); the result must be one of ``types`` (default: ``build`` itself when
    it is a class; ``type(None)`` lets the part be left out), else a ``TypeError`` naming
    ``owner.name`` and what it takes."""
    if isinstance(value, dict):
        value = build(**value)
    types = types or ((build,) if isinstance(build, type) else ())
    if types and not isinstance(value, types):
        names = [t.__name__ for t in types if t is not type(None)] + ["dict"]
        names += ["None"] * (type(None) in types)
        expected = ", ".join(names[:-1]) + " or " + names[-1]
        raise TypeError(f"{owner}.{name}: expected {expected}, got {type(value).__name__}")
    return value


def divisible(cfg: Any, name: str, by: str) -> tuple[bool, str]:
    """Row: field ``name`` of ``cfg`` is a multiple of field ``by`` (heads split the width)."""
    a, b = getattr(cfg, name), getattr(cfg, by)
    return a % b == 0, f"{name} {a} is not divisible by {by} {b}"


def in_vocab(cfg: Any, name: str, vocab_size: int) -> tuple[bool, str]:
    """Row: token id field ``name`` of ``cfg`` is a row of a ``vocab_size`` vocabulary."""
    value = getattr(cfg, name)
    return 0 <= value < vocab_size, (
        f"{name} {value} is outside the vocabulary 0..{vocab_size - 1}"
    )


def one_of(cfg: Any, name: str, choices: tuple[str, ...]) -> tuple[bool, str]:
    """Row: field ``name`` of ``cfg`` is one of the named ``choices``."""
    value = getattr(cfg, name)
    names = [repr(c) for c in choices]
    expected = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
    return value in choices, f"{name} must be {expected}, got {value!r}"
