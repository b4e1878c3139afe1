"""One training loop for every minivlm model.

The contract is small. A model's ``forward(**batch)`` returns an object with a scalar
``loss`` (a dataclass, a dict, or a bare scalar tensor); any other scalar fields whose
names start with ``loss_`` (``loss_itc``, ``loss_itm``, ...) are logged too. A batch is a
dict of tensors; :func:`train` moves it to the device.

    >>> from minivlm.train import TrainConfig, train
    >>> result = train(model, dataset, TrainConfig(steps=200, lr=1e-3, batch_size=32))
    >>> result.history["loss"][-1]

What the loop does, step by step (each piece is a plain function a notebook can call):

1. learning rate from :func:`lr_at` -- linear warm-up then cosine decay to
   ``lr * min_lr_ratio`` (the "SGDR" cosine of Loshchilov & Hutter, as used by CLIP, ALBEF,
   BLIP, LLaVA);
2. forward under bf16 autocast on CUDA (``amp="auto"``), backward, gradient clipping;
3. AdamW (Loshchilov & Hutter, "Decoupled weight decay") with no decay on biases,
   norm weights and embeddings by convention (:func:`default_param_groups`), fused on CUDA;
4. ``model.on_after_step(step)`` if the model defines it (EMA / momentum encoders of ALBEF
   and BLIP, ramps such as ALBEF's distillation weight alpha);
5. every ``eval_every`` steps ``eval_fn(model) -> dict[str, float]``, every ``ckpt_every``
   steps an atomic checkpoint.

Data order. Give :func:`train` a map-style ``Dataset`` (primary path): the loop then owns the
sampling, drawing one permutation per epoch from ``(seed, epoch)`` and dropping the last
incomplete batch, so step ``s`` always sees the same samples -- after a resume and under
``torchrun`` alike. A plain iterable of batch dicts (a ``DataLoader``, a list) also works; it is
re-iterated as needed, and a resume replays the interrupted epoch's random states, which is
exact for a ``DataLoader`` with ``num_workers=0`` (see :func:`train`).

Multi-process. Under ``torchrun`` (or once ``torch.distributed`` is initialised) the same
call wraps the model in ``DistributedDataParallel`` and gives each rank its slice of every
*global* batch of ``batch_size`` samples, so the update equals the single-process one for a
loss that is a mean over samples. Only rank 0 shows progress, evaluates and saves.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import random
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from minivlm.utils import atomic_write, seed_everything
from minivlm.utils import device as default_device

__all__ = [
    "TrainConfig",
    "TrainResult",
    "default_param_groups",
    "init_distributed",
    "load_checkpoint",
    "lr_at",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "to_device",
    "train",
]

CHECKPOINT_FORMAT = "minivlm-checkpoint"
CHECKPOINT_VERSION = 1

_AMP_MODES = ("auto", "bf16", "off")
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


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved inside every checkpoint).

    ``batch_size`` is the *global* batch and is used when :func:`train` gets a ``Dataset``;
    with a ``DataLoader`` the loader's own batch size applies. ``eval_every`` / ``ckpt_every``
    of 0 mean "only at the end of the call". ``amp``: ``"auto"`` (bf16 autocast on CUDA only),
    ``"bf16"`` (on any device) or ``"off"``. ``progress``: ``True``/``"text"`` a plain text
    tqdm bar (reads well in a saved notebook), ``"auto"`` ``tqdm.auto`` (a widget in
    Jupyter), ``False`` none.
    """

    steps: int = 1000
    lr: float = 3e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    batch_size: int = 32
    shuffle: bool = True
    num_workers: int = 0
    log_every: int = 10
    eval_every: int = 0
    ckpt_path: str | None = None
    ckpt_every: int = 0
    compile: bool = False
    amp: str = "auto"
    seed: int = 0
    progress: bool | str = True
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {v!r}")
        for name in ("warmup_steps", "eval_every", "ckpt_every", "num_workers", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"TrainConfig.{name} must be an int >= 0, got {v!r}")
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            raise ValueError(f"TrainConfig.lr must be a finite number >= 0, got {self.lr!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ValueError(f"TrainConfig.grad_clip must be >= 0 or None, got {self.grad_clip}")
        if len(self.betas) != 2:
            raise ValueError(f"TrainConfig.betas must be a pair (beta1, beta2), got {self.betas}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.amp is False or self.amp is None:
            self.amp = "off"
        if self.amp not in _AMP_MODES:
            raise ValueError(f"TrainConfig.amp must be one of {_AMP_MODES}, got {self.amp!r}")
        if self.progress not in (True, False, "text", "auto"):
            raise ValueError(
                f"TrainConfig.progress must be True, False, 'text' or 'auto', got {self.progress!r}"
            )
        if self.ckpt_path is not None:
            self.ckpt_path = os.fspath(self.ckpt_path)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``history`` holds one value per step for ``"loss"``, ``"lr"``, ``"grad_norm"`` (before
    clipping) and every ``loss_*`` part; evaluations are stored as ``"eval_step"`` (the steps
    at which ``eval_fn`` ran) with one ``"eval_<metric>"`` list alongside (see :attr:`evals`).
    A resumed run's history continues the checkpoint's. ``steps_done`` is the global step
    reached; ``seconds`` the wall time of this call; ``model`` the trained (unwrapped) model.
    """

    history: dict[str, list[float]]
    steps_done: int
    seconds: float
    model: nn.Module
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)

    @property
    def evals(self) -> dict[int, dict[str, float]]:
        """Evaluation results keyed by step: ``{step: {"acc": 0.9, ...}}``."""
        steps = self.history.get("eval_step", [])
        out: dict[int, dict[str, float]] = {int(s): {} for s in steps}
        for key, values in self.history.items():
            if key.startswith("eval_") and key != "eval_step":
                for s, v in zip(steps, values):
                    out[int(s)][key[len("eval_") :]] = v
        return out


# --------------------------------------------------------------------------- schedule


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate used for the update of (0-based) ``step``.

    Linear warm-up over ``warmup_steps`` (``lr * (step + 1) / warmup_steps``), then a half
    cosine from ``lr`` down to ``lr * min_lr_ratio``, reached at ``step == config.steps`` and
    held after that.
    """
    if step < 0:
        raise ValueError(f"lr_at: step must be >= 0, got {step}")
    peak, floor = config.lr, config.lr * config.min_lr_ratio
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    decay_steps = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- optimiser


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed weights and everything exempt from weight decay.

    Exempt, by the usual convention (BERT, ViT, CLIP training code): parameters with fewer
    than 2 dimensions (biases, LayerNorm/RMSNorm weights, scalar ``logit_scale``) and those the
    model lists in ``model.no_weight_decay()`` (full parameter names or module-name prefixes,
    as in timm; e.g. ``{"pos_embed", "cls_token", "token_embedding"}``). Frozen parameters
    (``requires_grad=False``) are left out.
    """
    skip: set[str] = set()
    if hasattr(model, "no_weight_decay"):
        skip = set(model.no_weight_decay())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim < 2 or any(name == s or name.startswith(s + ".") for s in skip)
        (no_decay if exempt else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "group": "decay"})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "group": "no_decay"})
    if not groups:
        raise ValueError("train: the model has no trainable parameters (all requires_grad=False)")
    return groups


def _make_optimizer(
    model: nn.Module,
    config: TrainConfig,
    param_groups: list[dict[str, Any]] | None,
    dev: torch.device,
) -> torch.optim.Optimizer:
    if param_groups is None:
        groups = default_param_groups(model, config.weight_decay)
    else:
        if not isinstance(param_groups, list | tuple) or not all(
            isinstance(g, Mapping) and "params" in g for g in param_groups
        ):
            raise TypeError(
                "train: param_groups must be a list of dicts with a 'params' key "
                "(and optionally 'lr', 'weight_decay'), as torch.optim.AdamW takes"
            )
        groups = [dict(g) for g in param_groups]
    kwargs: dict[str, Any] = {}
    if dev.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(
        groups,
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        weight_decay=config.weight_decay,
        **kwargs,
    )


# --------------------------------------------------------------------------- devices, RNG


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Move every tensor in a (nested) dict / list / tuple to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


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


def init_distributed() -> tuple[int, int]:
    """Return ``(rank, world_size)``, initialising ``torch.distributed`` from the
    environment variables ``torchrun`` sets when it is not initialised yet.

    Backend: NCCL with CUDA (each process on ``cuda:LOCAL_RANK``), else gloo. A plain
    ``python script.py`` gives ``(0, 1)`` and touches nothing.
    """
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "RANK" not in os.environ:
            return 0, 1
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif hasattr(model, "module") and type(model).__name__ == "DistributedDataParallel":
            model = model.module
        else:
            return model


# --------------------------------------------------------------------------- checkpoints


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
        "model": _unwrap(model).state_dict(),
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
            _unwrap(model).load_state_dict(state["model"], strict=strict)
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


# --------------------------------------------------------------------------- data


def _mix_seed(*parts: int) -> int:
    """A 63-bit seed derived from several ints (e.g. seed and epoch), well spread."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


def _is_map_dataset(data: Any) -> bool:
    return (
        isinstance(data, Dataset)
        and not isinstance(data, IterableDataset)
        and hasattr(data, "__len__")
    )


class _DatasetBatches:
    """The loop's own sampler: one permutation per epoch from ``(seed, epoch)``; global
    batches of ``batch_size`` (last incomplete one dropped); rank ``r`` of ``w`` keeps the
    ``r``-th contiguous slice of each global batch."""

    def __init__(
        self,
        dataset: Dataset,
        config: TrainConfig,
        collate_fn: Callable[[list[Any]], Any] | None,
        rank: int,
        world: int,
    ) -> None:
        self.dataset, self.config, self.collate_fn = dataset, config, collate_fn
        self.rank, self.world = rank, world
        self.n = len(dataset)  # type: ignore[arg-type]
        self.per_epoch = self.n // config.batch_size
        if self.per_epoch == 0:
            raise ValueError(
                f"train: the dataset has {self.n} samples, fewer than batch_size="
                f"{config.batch_size}; lower TrainConfig.batch_size"
            )
        if config.batch_size % world:
            raise ValueError(
                f"train: batch_size={config.batch_size} (the global batch) must be divisible by "
                f"the number of processes ({world})"
            )
        self.epoch, self.pos = 0, 0
        self._it: Iterator[Any] | None = None

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's index lists for every step of ``epoch``."""
        bs = self.config.batch_size
        if self.config.shuffle:
            g = torch.Generator().manual_seed(_mix_seed(self.config.seed, epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per = bs // self.world
        return [
            order[i * bs + self.rank * per : i * bs + (self.rank + 1) * per]
            for i in range(self.per_epoch)
        ]

    def restore(self, step: int, state: Mapping[str, Any] | None) -> None:
        if state is not None and (state.get("n"), state.get("batch_size")) != (
            self.n,
            self.config.batch_size,
        ):
            warnings.warn(
                f"train: resuming with a dataset of {self.n} samples and batch_size "
                f"{self.config.batch_size}, but the checkpoint was written with "
                f"{state.get('n')} and {state.get('batch_size')}; the data order will differ "
                "from an uninterrupted run",
                stacklevel=3,
            )
        self.epoch, self.pos = divmod(step, self.per_epoch)
        self._it = None

    def _open(self) -> None:
        _set_epoch(self.dataset, self.epoch)
        batches = self.epoch_batches(self.epoch)[self.pos :]
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            collate_fn=self.collate_fn,
            num_workers=self.config.num_workers,
            generator=torch.Generator().manual_seed(_mix_seed(self.config.seed, self.epoch, 1)),
        )
        self._it = iter(loader)

    def next(self) -> Any:
        if self.pos == self.per_epoch:
            self.epoch, self.pos, self._it = self.epoch + 1, 0, None
        if self._it is None:
            self._open()
        batch = next(self._it)  # type: ignore[arg-type]
        self.pos += 1
        return batch

    def state(self) -> dict[str, Any]:
        return {
            "kind": "dataset",
            "epoch": self.epoch,
            "pos": self.pos,
            "n": self.n,
            "batch_size": self.config.batch_size,
        }


def _set_epoch(obj: Any, epoch: int) -> None:
    """Tell a dataset / sampler which epoch starts (the ``set_epoch`` convention of
    ``DistributedSampler`` and of the shapes-world datasets)."""
    fn = getattr(obj, "set_epoch", None)
    if callable(fn):
        fn(epoch)


def _loader_rng_snapshot(data: Any) -> dict[str, Any]:
    """Every random state that can decide the order of the next epoch of ``data``."""
    snap: dict[str, Any] = {"global": rng_state(), "loader": None, "sampler": None}
    gen = getattr(data, "generator", None)
    if isinstance(gen, torch.Generator):
        snap["loader"] = gen.get_state()
    sgen = getattr(getattr(data, "sampler", None), "generator", None)
    if isinstance(sgen, torch.Generator) and sgen is not gen:
        snap["sampler"] = sgen.get_state()
    return snap


def _loader_rng_restore(data: Any, snap: Mapping[str, Any]) -> None:
    set_rng_state(snap["global"])
    gen = getattr(data, "generator", None)
    if snap.get("loader") is not None and isinstance(gen, torch.Generator):
        gen.set_state(snap["loader"])
    sgen = getattr(getattr(data, "sampler", None), "generator", None)
    if snap.get("sampler") is not None and isinstance(sgen, torch.Generator):
        sgen.set_state(snap["sampler"])


class _IterableBatches:
    """Batches from a user iterable (DataLoader, list, ...), re-iterated per epoch. Under DDP
    every rank reads the full global batch and keeps its slice along dim 0."""

    def __init__(self, data: Iterable[Any], rank: int, world: int) -> None:
        self.data, self.rank, self.world = data, rank, world
        self.one_shot = isinstance(data, Iterator)  # a generator cannot be re-iterated
        self.epoch, self.pos = 0, 0
        self.epoch_rng: dict[str, Any] | None = None
        self._it: Iterator[Any] | None = None

    def _open(self) -> None:
        for obj in (self.data, *(getattr(self.data, a, None) for a in ("dataset", "sampler"))):
            _set_epoch(obj, self.epoch)
        self.epoch_rng = None if self.one_shot else _loader_rng_snapshot(self.data)
        self._it = iter(self.data)
        self.pos = 0

    def next(self) -> Any:
        if self._it is None:
            self._open()
        try:
            batch = next(self._it)  # type: ignore[arg-type]
        except StopIteration:
            if self.one_shot:
                raise ValueError(
                    "train: the data iterator ran out of batches before TrainConfig.steps were "
                    "done; pass a Dataset, a DataLoader or a list (they can be re-iterated)"
                ) from None
            if self.pos == 0:
                raise ValueError("train: the data yielded no batches") from None
            self.epoch += 1
            self._open()
            try:
                batch = next(self._it)  # type: ignore[arg-type]
            except StopIteration:
                raise ValueError("train: the data yielded no batches in a new epoch") from None
        self.pos += 1
        return _shard(batch, self.rank, self.world) if self.world > 1 else batch

    def restore(self, step: int, state: Mapping[str, Any] | None) -> None:
        if state is None or state.get("kind") != "iterable":
            raise ValueError(
                "train: the checkpoint was written by a run fed from a Dataset; resume it with "
                "the same Dataset (not a DataLoader / iterable)"
            )
        self.epoch, pos = int(state["epoch"]), int(state["pos"])
        if state.get("epoch_rng") is not None and not self.one_shot:
            _loader_rng_restore(self.data, state["epoch_rng"])
        self._open()
        for i in range(pos):  # replay the part of the epoch already trained on
            try:
                next(self._it)  # type: ignore[arg-type]
            except StopIteration:
                raise ValueError(
                    f"train: the data now yields only {i} batches per epoch but the checkpoint "
                    f"was taken after batch {pos} of epoch {self.epoch}"
                ) from None
        self.pos = pos

    def state(self) -> dict[str, Any]:
        return {
            "kind": "iterable",
            "epoch": self.epoch,
            "pos": self.pos,
            "epoch_rng": self.epoch_rng,
        }


def _shard(batch: Any, rank: int, world: int) -> Any:
    """This rank's contiguous slice, along dim 0, of every tensor / list in a batch."""
    if isinstance(batch, torch.Tensor):
        if batch.ndim == 0:
            return batch
        if batch.shape[0] % world:
            raise ValueError(
                f"train: a batch dimension of {batch.shape[0]} cannot be split evenly over "
                f"{world} processes; make the global batch size divisible by {world}"
            )
        per = batch.shape[0] // world
        return batch[rank * per : (rank + 1) * per]
    if isinstance(batch, Mapping):
        return {k: _shard(v, rank, world) for k, v in batch.items()}
    if isinstance(batch, list) and len(batch) % world == 0:
        per = len(batch) // world
        return batch[rank * per : (rank + 1) * per]
    return batch


# --------------------------------------------------------------------------- the loop


def _loss_and_parts(out: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``loss`` and the scalar ``loss_*`` fields of a model output."""
    if isinstance(out, torch.Tensor):
        loss, items = out, []
    elif isinstance(out, Mapping):
        loss, items = out.get("loss"), list(out.items())
    else:
        loss = getattr(out, "loss", None)
        if dataclasses.is_dataclass(out):
            items = [(f.name, getattr(out, f.name)) for f in dataclasses.fields(out)]
        else:
            items = list(getattr(out, "__dict__", {}).items())
    if loss is None:
        raise ValueError(
            f"train: the model's forward returned {type(out).__name__} with loss=None; the batch "
            "must contain the targets the model needs to compute its loss"
        )
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(
            "train: the model's loss must be a scalar tensor, got "
            f"{type(loss).__name__}{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}"
        )
    if not loss.requires_grad:
        raise ValueError(
            "train: the loss does not require grad (all parameters frozen, or the loss was "
            "computed under torch.no_grad / from detached tensors)"
        )
    parts = {
        k: v.detach().float().reshape(())
        for k, v in items
        if k.startswith("loss_") and isinstance(v, torch.Tensor) and v.numel() == 1
    }
    return loss.reshape(()), parts


def _forward_keys(model: nn.Module) -> set[str] | None:
    """Names ``model.forward`` accepts as keywords, or None when it takes ``**kwargs``
    (then the whole batch is passed)."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None
    kinds = {p.kind for p in sig.parameters.values()}
    if inspect.Parameter.VAR_KEYWORD in kinds:
        return None
    return {
        n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _step_hook(model: nn.Module) -> Callable[[int, int], None] | None:
    """``model.on_after_step(step[, total])`` or ``model.on_step(step, total)``, whichever
    the model defines, called with the number of completed steps."""
    for name in ("on_after_step", "on_step"):
        fn = getattr(model, name, None)
        if callable(fn):
            try:
                params = [
                    p
                    for p in inspect.signature(fn).parameters.values()
                    if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                ]
                takes_total = len(params) >= 2
            except (TypeError, ValueError):
                takes_total = False
            if takes_total:
                return lambda s, t, fn=fn: fn(s, t)
            return lambda s, t, fn=fn: fn(s)
    return None


def _progress_bar(config: TrainConfig, show: bool, initial: int) -> Any:
    if not show or config.progress is False:
        return None
    if config.progress == "auto":
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm  # plain text: survives being saved in a notebook
    return tqdm(
        total=config.steps,
        initial=initial,
        desc="train",
        mininterval=1.0,
        file=sys.stderr,
        dynamic_ncols=True,
    )


def train(
    model: nn.Module,
    data: Dataset | Iterable[Mapping[str, Any]],
    config: TrainConfig | None = None,
    *,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    eval_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
    device: torch.device | str | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    param_groups: list[dict[str, Any]] | None = None,
    resume: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``model`` for ``config.steps`` optimizer steps and return a :class:`TrainResult`.

    Args:
        model: ``forward(**batch)`` returns an object with a scalar ``.loss``; its
            ``loss_*`` fields are logged. Optional hooks: ``no_weight_decay()`` (names exempt
            from weight decay) and ``on_after_step(step)`` / ``on_after_step(step, total)`` /
            ``on_step(step, total)``, called after every ``optimizer.step()`` with the number
            of completed steps (EMA and momentum updates, ramps).
        data: a map-style ``Dataset`` (primary path: the loop samples it itself; samples are
            collated into a dict by ``collate_fn``, else by the dataset's own ``collate``
            method if it has one, else by ``torch.utils.data.default_collate``) or an iterable
            of batch dicts (a ``DataLoader``, a list) re-iterated until the steps are done.
            ``set_epoch(epoch)`` is called, where defined, on the dataset (and on a
            DataLoader's dataset and sampler) as each epoch starts. Batch entries that
            ``forward`` has no parameter for (e.g. ``index``) are not
            passed to it, unless ``forward`` takes ``**kwargs``.
        config: :class:`TrainConfig` (defaults if None).
        eval_fn: ``eval_fn(model) -> {"metric": float}``, called on rank 0 with the unwrapped
            model in eval mode, under ``torch.no_grad``, every ``config.eval_every`` steps and
            after the last step of the call. It runs with its own copy of the random states,
            so evaluating never changes the training trajectory.
        device: default ``minivlm.device()`` (``cuda:LOCAL_RANK`` under torchrun with CUDA).
        optimizer: your own optimizer (its groups' ``lr`` follow the same schedule, scaled by
            ``lr_at(step) / config.lr``); default AdamW over :func:`default_param_groups`.
        param_groups: AdamW parameter groups to use instead of the default ones (e.g. a
            larger ``lr`` for a projector); ignored when ``optimizer`` is given.
        resume: what to do when ``config.ckpt_path`` already exists. ``True`` (default):
            resume from it -- weights, optimizer, step, random states, data position and
            history are restored and the run continues exactly as if never stopped (a run
            already at ``config.steps`` returns at once). ``False``: raise
            ``FileExistsError`` rather than overwrite it.
        stop_after: stop once this global step is reached (checkpointing if ``ckpt_path``
            is set) while the schedule still spans ``config.steps``: a long run can be split
            into sessions.

    Exact resume: guaranteed for the ``Dataset`` path (any ``num_workers`` as long as the
    samples are deterministic). For a ``DataLoader``, the loop saves the random states at the
    start of each epoch (global ones and the loader's ``generator``) and on resume replays the
    epoch up to the checkpoint, which reproduces the order when ``num_workers=0`` and the
    loader's randomness comes from torch/NumPy/Python global RNGs or its ``generator``.

    DDP (under ``torchrun``): the global batch is split over ranks (``batch_size`` must be
    divisible by the world size; with a plain iterable every tensor is split along dim 0), the
    logged loss is averaged over ranks, and only rank 0 shows progress, evaluates and writes
    checkpoints. Note that in-batch contrastive losses (CLIP, ALBEF ITC) then see only the
    per-rank negatives unless the model gathers them.
    """
    config = config if config is not None else TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train: config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"train: model must be a torch.nn.Module, got {type(model).__name__}")
    if stop_after is not None and (not isinstance(stop_after, int) or stop_after < 1):
        raise ValueError(f"train: stop_after must be a positive int, got {stop_after!r}")
    t0 = time.perf_counter()

    rank, world = init_distributed()
    if device is not None:
        dev = torch.device(device)
    elif world > 1 and torch.cuda.is_available():
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        dev = default_device()
    model.to(dev)
    if optimizer is None:
        optimizer = _make_optimizer(model, config, param_groups, dev)
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])

    if _is_map_dataset(data):
        if collate_fn is None and callable(getattr(data, "collate", None)):
            collate_fn = data.collate  # type: ignore[union-attr]
        source: _DatasetBatches | _IterableBatches = _DatasetBatches(
            data,  # type: ignore[arg-type]
            config,
            collate_fn,
            rank,
            world,
        )
    elif isinstance(data, Iterable):
        if collate_fn is not None:
            raise ValueError(
                "train: collate_fn is only used with a Dataset; a DataLoader has its own"
            )
        source = _IterableBatches(data, rank, world)
    else:
        raise TypeError(
            "train: data must be a map-style torch Dataset or an iterable of batch dicts "
            f"(e.g. a DataLoader), got {type(data).__name__}"
        )

    # ---- fresh start or resume
    step = 0
    history: dict[str, list[float]] = defaultdict(list)
    ckpt = Path(config.ckpt_path) if config.ckpt_path else None
    if ckpt is not None and ckpt.exists():
        if not resume:
            raise FileExistsError(
                f"train: checkpoint {ckpt} already exists and resume=False; delete it, choose "
                "another TrainConfig.ckpt_path, or pass resume=True to continue from it"
            )
        state = load_checkpoint(ckpt, model, optimizer)
        _warn_config_changes(state.get("config"), config, ckpt)
        step = int(state["step"])
        history.update({k: list(v) for k, v in state["history"].items()})
        source.restore(step, state.get("data"))  # may consume random numbers: restore after
        set_rng_state(state["rng"])
    else:
        seed_everything(config.seed)

    fwd: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        fwd = DistributedDataParallel(
            model,
            device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=config.find_unused_parameters,
        )
    if config.compile:
        fwd = torch.compile(fwd)  # type: ignore[assignment]
    use_amp = config.amp == "bf16" or (
        config.amp == "auto" and dev.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    hook = _step_hook(model)
    accepted = _forward_keys(model)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    is_main = rank == 0
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    bar = _progress_bar(config, is_main, min(step, config.steps))
    pending: list[tuple[int, dict[str, torch.Tensor]]] = []
    last_eval = int(history["eval_step"][-1]) if history.get("eval_step") else -1
    last_ckpt = step

    def flush() -> None:
        """Move the pending per-step values to the host (one sync), averaged over ranks."""
        if not pending:
            return
        flat = torch.stack([v for _, rec in pending for v in rec.values()])
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(flat)
            flat = flat / world
        values = iter(flat.tolist())
        for s, rec in pending:
            for k in rec:
                v = next(values)
                if k == "loss" and not math.isfinite(v):
                    raise FloatingPointError(
                        f"train: the loss is {v} at step {s}; lower TrainConfig.lr, check the "
                        "inputs, or try amp='off'"
                    )
                history[k].append(v)
        if bar is not None:
            bar.set_postfix(
                loss=f"{history['loss'][-1]:.4f}", lr=f"{history['lr'][-1]:.2e}", refresh=False
            )
        pending.clear()

    def evaluate() -> None:
        nonlocal last_eval
        last_eval = step
        if eval_fn is None or not is_main:
            return
        saved = rng_state()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                results = eval_fn(model)
        finally:
            model.train(was_training)
            set_rng_state(saved)
        if not isinstance(results, Mapping):
            raise TypeError(
                f"train: eval_fn must return a dict of floats, got {type(results).__name__}"
            )
        history["eval_step"].append(float(step))
        for k, v in results.items():
            history[f"eval_{k}"].append(float(v))
        if bar is not None:
            bar.write(
                f"step {step}: " + ", ".join(f"{k}={float(v):.4g}" for k, v in results.items())
            )

    def checkpoint() -> None:
        nonlocal last_ckpt
        last_ckpt = step
        if ckpt is None:
            return
        if is_main:
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

    model.train()
    try:
        while step < end:
            scale = lr_at(step, config) / config.lr if config.lr > 0 else 0.0
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * scale
            batch = source.next()
            if not isinstance(batch, Mapping):
                raise TypeError(
                    "train: each batch must be a dict of tensors passed as forward(**batch), got "
                    f"{type(batch).__name__}; return dicts from the dataset or collate_fn"
                )
            if accepted is not None:
                batch = {k: v for k, v in batch.items() if k in accepted}
            batch = to_device(batch, dev)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                out = fwd(**batch)
            loss, parts = _loss_and_parts(out)
            loss.backward()
            record = {"loss": loss.detach().float()}
            if config.grad_clip:
                norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                record["grad_norm"] = norm.detach().float().reshape(())
            optimizer.step()
            record.update(parts)
            history["lr"].append(lr_at(step, config))
            pending.append((step, record))
            step += 1
            if hook is not None:
                hook(step, config.steps)
            if bar is not None:
                bar.update(1)
            if step % config.log_every == 0 or step == end:
                flush()
            if config.eval_every and step % config.eval_every == 0:
                flush()
                evaluate()
            if config.ckpt_every and step % config.ckpt_every == 0:
                flush()
                checkpoint()
        flush()
        if last_eval != step and eval_fn is not None:
            evaluate()
        if last_ckpt != step:
            checkpoint()
    finally:
        if bar is not None:
            bar.close()
    return TrainResult(
        history=dict(history),
        steps_done=step,
        seconds=time.perf_counter() - t0,
        model=model,
        optimizer=optimizer,
    )


def _warn_config_changes(saved: Mapping[str, Any] | None, config: TrainConfig, path: Path) -> None:
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
            stacklevel=3,
        )


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v
