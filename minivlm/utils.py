"""Small helpers shared across the package: device choice, seeding, atomic writes."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

_DEVICE: torch.device | None = None


def device() -> torch.device:
    """The device picked once per process: CUDA, then MPS, then CPU.

    Set ``MINIVLM_DEVICE=cpu`` (or ``cuda:1``...) to override.
    """
    global _DEVICE
    if _DEVICE is None:
        env = os.environ.get("MINIVLM_DEVICE")
        if env:
            _DEVICE = torch.device(env)
        elif torch.cuda.is_available():
            _DEVICE = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            _DEVICE = torch.device("mps")
        else:
            _DEVICE = torch.device("cpu")
    return _DEVICE


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch.Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically rename onto ``path``.

    A crash half-way leaves any previous file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (one space, trailing newline) atomically to ``path``."""
    text = json.dumps(obj, indent=1)
    return atomic_write(path, lambda p: p.write_text(text + "\n"))


def add_results_args(ap: argparse.ArgumentParser, default: str | None = None) -> None:
    """The ``--out`` results file (required unless ``default`` is given) and ``--force``,
    as every script in ``experiments/`` takes them."""
    ap.add_argument(
        "--out",
        type=Path,
        default=default,
        required=default is None,
        help="results JSON to write (refused if it exists, unless --force)",
    )
    ap.add_argument("--force", action="store_true", help="overwrite an existing --out")


def refuse_overwrite(out: Path, allowed: bool, prog: str, alternative: str = "") -> bool:
    """True, after saying why on stderr, when ``out`` exists and overwriting is not
    ``allowed`` (experiment results are never overwritten unasked); the caller exits 2.
    ``alternative`` names another flag that would allow it (" or --resume ...")."""
    if out.exists() and not allowed:
        print(f"{prog}: {out} exists; pass --force to overwrite it{alternative}", file=sys.stderr)
        return True
    return False


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def raise_first(prefix: str, checks: list[tuple[bool, str]]) -> None:
    """Raise ``ValueError(prefix + message)`` for the first ``(ok, message)`` whose ``ok`` is
    false: the models' input and config checks are written as such tables, after the math."""
    for ok, msg in checks:
        if not ok:
            raise ValueError(f"{prefix}{msg}")
