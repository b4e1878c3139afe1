"""Checkpoints (atomic save, ``weights_only`` load), random states and what an exact resume
needs: the saved config compared with the new one."""

from __future__ import annotations

import dataclasses
import os
import random
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from minivlm.train.config import TrainConfig
from minivlm.utils import atomic_write, seed_everything

CHECKPOINT_FORMAT = "minivlm-checkpoint"
CHECKPOINT_VERSION = 1

# Config fields that may change between a run and its resume without a warning.
_RESUME_FREE_FIELDS = {
    "steps",
    "log_every",
    "eval_every",
    "ckpt_every",
    "ckpt_path",
    "progress",
    "compile",
    "num_workers",
}


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA, if in use) random states, in a form that
    ``torch.load(weights_only=True)`` can read back."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (
            str(np_state[0]),
            [int(x) for x in np_state[1]],
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ),
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif hasattr(model, "module") and type(model).__name__ == "DistributedDataParallel":
            model = model.module
        else:
            return model


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    step: int = 0,
    config: TrainConfig | Mapping[str, Any] | None = None,
    scheduler_state: Mapping[str, Any] | None = None,
    data_state: Mapping[str, Any] | None = None,
    history: Mapping[str, list[float]] | None = None,
    rng: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a training checkpoint atomically (a crash never leaves a half-written file).

    Holds the model and optimizer state dicts, the step, the schedule state, the random
    states (``rng`` or, by default, the current ones: Python, NumPy, torch, CUDA), the data
    position (epoch, batch within epoch, and for a plain iterable the random states at the
    start of that epoch), the config as a dict and the history. Only plain containers and
    tensors are stored, so :func:`load_checkpoint` reads it with ``weights_only=True``.
    This function overwrites ``path``: :func:`train` decides whether that is allowed.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": int(step),
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": dict(scheduler_state) if scheduler_state is not None else None,
        "rng": dict(rng) if rng is not None else rng_state(),
        "data": dict(data_state) if data_state is not None else None,
        "config": dict(config) if config is not None else None,
        "history": {k: [float(x) for x in v] for k, v in (history or {}).items()},
        "extra": dict(extra) if extra is not None else None,
    }
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    map_location: str | torch.device = "cpu",
    restore_rng: bool = False,
    strict: bool = True,
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Loads the weights into ``model`` and the state into ``optimizer`` when given, restores
    the random states when ``restore_rng``, and returns the whole checkpoint dict
    (``step``, ``config``, ``history``, ``data``, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_checkpoint: no checkpoint file at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # re-raised with the file named
        raise ValueError(f"load_checkpoint: {path} is not a readable torch checkpoint: {e}") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"load_checkpoint: {path} is not a minivlm training checkpoint "
            f"(expected a dict with format={CHECKPOINT_FORMAT!r}; for bare weights use "
            "model.load_state_dict(torch.load(path)))"
        )
    if model is not None:
        try:
            unwrap(model).load_state_dict(state["model"], strict=strict)
        except RuntimeError as e:
            raise ValueError(
                f"load_checkpoint: the weights in {path} do not fit {type(model).__name__}: {e}"
            ) from e
    if optimizer is not None:
        if state.get("optimizer") is None:
            raise ValueError(f"load_checkpoint: {path} holds no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    if restore_rng:
        set_rng_state(state["rng"])
    return state


def warn_config_changes(saved: Mapping[str, Any] | None, config: TrainConfig, path: Path) -> None:
    if not saved:
        return
    now = dataclasses.asdict(config)
    changed = sorted(
        k
        for k in now
        if k not in _RESUME_FREE_FIELDS and k in saved and _norm(saved[k]) != _norm(now[k])
    )
    if changed:
        warnings.warn(
            f"train: resuming from {path} with a config that differs in {changed}; the run "
            "will not match an uninterrupted one",
            stacklevel=4,
        )


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def start_or_resume(
    ckpt: Path | None,
    resume: bool,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    source: Any,
) -> tuple[int, dict[str, list[float]]]:
    """``(step, history)`` to start from: the checkpoint's when ``ckpt`` exists (weights,
    optimizer, data position and random states restored), else ``(0, {})`` after seeding
    every RNG with ``config.seed``. ``resume=False`` refuses to overwrite an existing one."""
    if ckpt is None or not ckpt.exists():
        seed_everything(config.seed)
        return 0, {}
    if not resume:
        raise FileExistsError(
            f"train: checkpoint {ckpt} already exists and resume=False; delete it, choose "
            "another TrainConfig.ckpt_path, or pass resume=True to continue from it"
        )
    state = load_checkpoint(ckpt, model, optimizer)
    warn_config_changes(state.get("config"), config, ckpt)
    step = int(state["step"])
    source.restore(step, state.get("data"))  # may consume random numbers: restore after
    set_rng_state(state["rng"])
    return step, {k: list(v) for k, v in state["history"].items()}


def write_checkpoint(
    ckpt: Path | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    step: int,
    source: Any,
    history: Mapping[str, list[float]],
    rank: int,
    world: int,
) -> None:
    """The loop's checkpoint at ``step``: written by rank 0, the other ranks wait for it."""
    if ckpt is None:
        return
    if rank == 0:
        save_checkpoint(
            ckpt,
            model,
            optimizer,
            step=step,
            config=config,
            scheduler_state={"kind": "warmup_cosine", "step": step},
            data_state=source.state(),
            history=history,
        )
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
