"""What defines a training run: :class:`TrainConfig`, :class:`TrainResult`, the learning-rate
schedule :func:`lr_at` and the AdamW parameter groups."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

_AMP_MODES = ("auto", "bf16", "off")
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved inside every checkpoint).

    ``batch_size`` is the *global* batch and is used when :func:`train` gets a ``Dataset``;
    with a ``DataLoader`` the loader's own batch size applies. ``eval_every`` / ``ckpt_every``
    of 0 mean "only at the end of the call". ``precision``: ``"fp32"`` (default; reproducible
    prints) or ``"bf16"``, the fast path of :mod:`minivlm.train.fast` (bf16 autocast where the
    device has native bf16, else fp32 with a warning; fused AdamW); ``compile``: wrap the model
    in ``torch.compile``. ``amp`` overrides the precision: ``"bf16"`` forces autocast on any
    device (emulated where not native), ``"off"`` forbids it, ``"auto"`` follows ``precision``.
    ``progress``: ``True``/``"text"`` a plain text tqdm bar (reads well in a saved notebook),
    ``"auto"`` ``tqdm.auto`` (a widget in Jupyter), ``False`` none.
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
    precision: str = "fp32"
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
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}"
            )
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


def make_optimizer(
    model: nn.Module,
    config: TrainConfig,
    param_groups: list[dict[str, Any]] | None,
    fused: bool = False,
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
    if fused:
        kwargs["fused"] = True
    elif all(p.device.type == "cpu" for p in model.parameters()):
        # torch's CPU default is a Python loop over the tensors; its foreach path runs the same
        # per-tensor kernels in the same order (the same bits) with less Python per step
        kwargs["foreach"] = True
    return torch.optim.AdamW(
        groups,
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        weight_decay=config.weight_decay,
        **kwargs,
    )
