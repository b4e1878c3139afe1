"""What several exercise checks share: the parts of a check that trains a model.

A training check ("implement, train, explain") runs the learner's training on one seed drawn
from the case generator and compares what it *achieves* with the reference run on the same
seed, within a margin. This module registers no check.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from minivlm.grading.core import _resolve

#: the least time a training run gets: seconds on an idle core, more on a busy one
TRAINING_TIMEOUT = 60.0


def draw_seed(gen: torch.Generator, high: int = 1000) -> int:
    """The seed a training check trains on: drawn from ``gen``, so a gradebook's fixed seed
    (``core.stable_seed``) fixes it too."""
    return int(torch.randint(0, high, (1,), generator=gen))


def cached_run(target: str) -> Callable[..., Any]:
    """The reference training run ``"module:attr"``, imported on first use and cached per
    arguments: the same seed gives the same result, so a gradebook trains it once."""

    @functools.lru_cache(maxsize=16)
    def run(*args: Any, **kwargs: Any) -> Any:
        return _resolve(target)(*args, **kwargs)

    return run
