"""Where the loop's batches come from: its own sampler over a map-style ``Dataset``
(one permutation per epoch from ``(seed, epoch)``), or a re-iterated user iterable; DDP
sharding of each global batch; moving batches to the device."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from minivlm.train.config import TrainConfig
from minivlm.train.state import rng_state, set_rng_state
from minivlm.utils import device as default_device


def _mix_seed(*parts: int) -> int:
    """A 63-bit seed derived from several ints (e.g. seed and epoch), well spread."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


def _is_map_dataset(data: Any) -> bool:
    return (
        isinstance(data, Dataset)
        and not isinstance(data, IterableDataset)
        and hasattr(data, "__len__")
    )


class DatasetBatches:
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
                stacklevel=4,
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
        return {"kind": "dataset", "epoch": self.epoch, "pos": self.pos, "n": self.n,
                "batch_size": self.config.batch_size}  # fmt: skip


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


class IterableBatches:
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
        return shard(batch, self.rank, self.world) if self.world > 1 else batch

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
        return {"kind": "iterable", "epoch": self.epoch, "pos": self.pos,
                "epoch_rng": self.epoch_rng}  # fmt: skip


def shard(batch: Any, rank: int, world: int) -> Any:
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
        return {k: shard(v, rank, world) for k, v in batch.items()}
    if isinstance(batch, list) and len(batch) % world == 0:
        per = len(batch) // world
        return batch[rank * per : (rank + 1) * per]
    return batch


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


def make_source(
    data: Dataset | Iterable[Mapping[str, Any]],
    config: TrainConfig,
    collate_fn: Callable[[list[Any]], Any] | None,
    rank: int,
    world: int,
) -> DatasetBatches | IterableBatches:
    """The loop's batch source for ``data``: its own sampler over a map-style ``Dataset``
    (collated by ``collate_fn``, else the dataset's ``collate``, else torch's default), or
    a re-iterated iterable of batch dicts."""
    if _is_map_dataset(data):
        if collate_fn is None and callable(getattr(data, "collate", None)):
            collate_fn = data.collate  # type: ignore[union-attr]
        return DatasetBatches(data, config, collate_fn, rank, world)  # type: ignore[arg-type]
    if isinstance(data, Iterable):
        if collate_fn is not None:
            raise ValueError(
                "train: collate_fn is only used with a Dataset; a DataLoader has its own"
            )
        return IterableBatches(data, rank, world)
    raise TypeError(
        "train: data must be a map-style torch Dataset or an iterable of batch dicts "
        f"(e.g. a DataLoader), got {type(data).__name__}"
    )


def pick_device(device: torch.device | str | None, world: int) -> torch.device:
    """``device`` if given; ``cuda:LOCAL_RANK`` under torchrun with CUDA; else
    ``minivlm.device()``."""
    if device is not None:
        return torch.device(device)
    if world > 1 and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return default_device()
