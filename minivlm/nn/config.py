"""What the config dataclasses share, written once: the field groups, parts given as dicts, the
usual rules, and the MLP width (:class:`MLPHidden`).

A field group is a small dataclass that configs name as a base, so that a field has one meaning
and one declaration: :class:`TransformerSizes` (``dim``, ``depth``, ``num_heads``,
``mlp_hidden``, ``act``, ``eps``), :class:`~minivlm.nn.vit.PatchGrid` (``image_size``,
``patch_size``, ``in_chans``), :class:`ContrastiveHead` (ITC's ``embed_dim`` and clamped
``temp``) and :class:`MomentumDistillation` (ALBEF's queues, EMA and soft-target weight). A config
re-declares a group's field only to change its default (a ViT's ``eps: float = 1e-6``): the
field keeps its name, type and place. A dataclass lists the fields of its bases first (the last
base's first), then its own; configs are built by keyword, so the order shows only in ``repr``.

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
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ContrastiveHead",
    "MLPHidden",
    "MomentumDistillation",
    "TransformerSizes",
    "as_part",
    "divisible",
    "in_vocab",
    "one_of",
    "temp_in_range",
]


@dataclass
class TransformerSizes:
    """The sizes of a stack of transformer blocks (defaults: BERT-base's: 12 blocks of width 768,
    12 heads, MLP 3072, GELU, LayerNorm eps 1e-12), each block a
    :class:`~minivlm.nn.blocks.TransformerBlock`. A base of the text, ViT, ViLT and Q-Former
    configs and of :class:`~minivlm.nn.bert.BertSizes` and :class:`~minivlm.nn.vit.ViTSizes`."""

    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_hidden: int = 3072
    act: str = "gelu"  # the MLP's activation, a name of minivlm.nn.blocks.get_activation
    eps: float = 1e-12


@dataclass
class ContrastiveHead:
    """Image-text contrastive (ITC) learning as ALBEF (§3.1 and its code) sets it up, and BLIP and
    BLIP-2 after it: projections to an ``embed_dim`` space (256) and a learnable temperature
    ``temp`` (0.07) that the model clamps to [``temp_min``, ``temp_max``] (0.001, 0.5; ALBEF and
    BLIP-2 with :class:`~minivlm.objectives.ClampedTemperature`)."""

    embed_dim: int = 256
    temp: float = 0.07
    temp_min: float = 0.001
    temp_max: float = 0.5


@dataclass
class MomentumDistillation(ContrastiveHead):
    """ITC with ALBEF's momentum distillation (§3.3), also BLIP's: ``queue_size`` momentum
    features kept per modality (65,536), the EMA coefficient ``momentum`` of the momentum model
    (0.995) and the weight ``alpha`` of its soft targets (0.4;
    :func:`~minivlm.objectives.distill_targets`; ALBEF's queues and EMA model:
    :class:`~minivlm.objectives.MomentumQueues`)."""

    queue_size: int = 65536
    momentum: float = 0.995
    alpha: float = 0.4


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


def either(names: list[str]) -> str:
    """``"a, b or c"``: the alternatives an error message names."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


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
        raise TypeError(f"{owner}.{name}: expected {either(names)}, got {type(value).__name__}")
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
    return value in choices, f"{name} must be {either([repr(c) for c in choices])}, got {value!r}"


def temp_in_range(cfg: ContrastiveHead) -> tuple[bool, str]:
    """Row: the temperature starts inside its clamp (BLIP, BLIP-2; ALBEF asks only ``temp > 0``)."""
    return 0.0 < cfg.temp_min <= cfg.temp <= cfg.temp_max, (
        f"need 0 < temp_min <= temp <= temp_max, got {cfg.temp_min}, {cfg.temp}, {cfg.temp_max}"
    )
