"""Shared by the parity tests: tiny random reference models (no download, no checkpoint)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn


def random_reference(build: Callable[[], nn.Module], seed: int = 0, scale: float = 0.3
                     ) -> nn.Module:
    """``build()`` under ``seed``, in eval mode, with every parameter (positions and mask
    tokens too) redrawn from N(0, scale²): no zero or unit initialisation can hide a wrongly
    mapped weight."""
    torch.manual_seed(seed)
    model = build().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn_like(p))
    return model
