"""What the loop reports: a tqdm progress bar on rank 0 and the per-step history (loss,
lr, grad norm, ``loss_*`` parts, evaluations), moved to the host in one sync every
``log_every`` steps and averaged over DDP ranks."""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch

from minivlm.train.config import TrainConfig


def progress_bar(config: TrainConfig, show: bool, initial: int) -> Any:
    """A tqdm bar over ``config.steps`` (None when hidden): plain text by default, since it
    survives being saved in a notebook; ``progress="auto"`` gives ``tqdm.auto``."""
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


class TrainLog:
    """The run's history plus the values of the steps not yet moved to the host."""

    def __init__(self, history: Mapping[str, list[float]], bar: Any, world: int) -> None:
        self.history: defaultdict[str, list[float]] = defaultdict(list)
        self.history.update({k: list(v) for k, v in history.items()})
        self.bar, self.world = bar, world
        self.pending: list[tuple[int, dict[str, torch.Tensor]]] = []

    def record(self, step: int, lr: float, values: dict[str, torch.Tensor]) -> None:
        """Keep this step's device tensors (no sync) and its learning rate."""
        self.history["lr"].append(lr)
        self.pending.append((step, values))
        if self.bar is not None:
            self.bar.update(1)

    def flush(self) -> None:
        """Move the pending per-step values to the host (one sync), averaged over ranks."""
        if not self.pending:
            return
        flat = torch.stack([v for _, rec in self.pending for v in rec.values()])
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(flat)
            flat = flat / self.world
        values = iter(flat.tolist())
        for s, rec in self.pending:
            for k in rec:
                v = next(values)
                if k == "loss" and not math.isfinite(v):
                    raise FloatingPointError(
                        f"train: the loss is {v} at step {s}; lower TrainConfig.lr, check the "
                        "inputs, or try precision='fp32'"
                    )
                self.history[k].append(v)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{self.history['loss'][-1]:.4f}",
                lr=f"{self.history['lr'][-1]:.2e}",
                refresh=False,
            )
        self.pending.clear()

    def record_eval(self, step: int, results: Mapping[str, float]) -> None:
        """Store ``eval_fn``'s results as ``eval_step`` / ``eval_<metric>`` and print them."""
        if not isinstance(results, Mapping):
            raise TypeError(
                f"train: eval_fn must return a dict of floats, got {type(results).__name__}"
            )
        self.history["eval_step"].append(float(step))
        for k, v in results.items():
            self.history[f"eval_{k}"].append(float(v))
        if self.bar is not None:
            self.bar.write(
                f"step {step}: " + ", ".join(f"{k}={float(v):.4g}" for k, v in results.items())
            )

    def last_eval(self) -> int:
        """The step of the last evaluation, -1 when none."""
        return int(self.history["eval_step"][-1]) if self.history.get("eval_step") else -1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
