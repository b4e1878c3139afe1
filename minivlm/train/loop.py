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
2. forward (under bf16 autocast with ``precision="bf16"`` where the device has native bf16,
   see :mod:`minivlm.train.fast`; fp32 by default), backward, gradient clipping;
3. AdamW (Loshchilov & Hutter, "Decoupled weight decay") with no decay on biases,
   norm weights and embeddings by convention (:func:`default_param_groups`), fused on CUDA
   and on the bf16 fast path;
4. ``model.on_after_step(step)`` if the model defines it (EMA / momentum encoders of ALBEF
   and BLIP, ramps such as ALBEF's distillation weight alpha);
5. every ``eval_every`` steps ``eval_fn(model) -> dict[str, float]``, every ``ckpt_every``
   steps an atomic checkpoint.

Data order. Give :func:`train` a map-style ``Dataset`` (primary path): the loop then owns the
sampling, drawing one permutation per epoch from ``(seed, epoch)`` and dropping the last
incomplete batch, so step ``s`` always sees the same samples -- after a resume and under
``torchrun`` alike. A plain iterable of batch dicts (a ``DataLoader``, a list) also works; it is
re-iterated as needed, and a resume replays the interrupted epoch's random states, which is
exact for a ``DataLoader`` with ``num_workers=0`` when the loader's randomness comes from the
torch/NumPy/Python global RNGs or its ``generator`` (the loop saves them at the start of each
epoch and replays the epoch up to the checkpoint). The ``Dataset`` path is exact for any
``num_workers`` as long as the samples are deterministic.

Multi-process. Under ``torchrun`` (or once ``torch.distributed`` is initialised) the same
call wraps the model in ``DistributedDataParallel`` and gives each rank its slice of every
*global* batch of ``batch_size`` samples, so the update equals the single-process one for a
loss that is a mean over samples (``batch_size`` must be divisible by the world size; with a
plain iterable every tensor is split along dim 0). The logged loss is averaged over ranks;
only rank 0 shows progress, evaluates and saves. In-batch contrastive losses (CLIP, ALBEF ITC)
then see only the per-rank negatives unless the model gathers them.

Where things live: :mod:`.config` (``TrainConfig``, schedule, optimizer groups),
:mod:`.batches` (sampling, sharding, devices), :mod:`.state` (checkpoints, RNG, resume),
:mod:`.log` (progress bar, history) and this module (the step loop).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from minivlm.train.batches import init_distributed, make_source, pick_device, to_device
from minivlm.train.config import TrainConfig, TrainResult, lr_at, make_optimizer
from minivlm.train.fast import fused_adamw_ok, use_bf16
from minivlm.train.log import TrainLog, progress_bar
from minivlm.train.state import rng_state, set_rng_state, start_or_resume, write_checkpoint


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
        model: ``forward(**batch)`` returns an object with a scalar ``.loss``; its ``loss_*``
            fields are logged. Optional hooks: ``no_weight_decay()`` (names exempt from weight
            decay) and ``on_after_step(step)`` / ``on_after_step(step, total)`` /
            ``on_step(step, total)``, called after every ``optimizer.step()`` with the number
            of completed steps (EMA and momentum updates, ramps).
        data: a map-style ``Dataset`` (primary path: the loop samples it itself and collates
            with ``collate_fn``, else the dataset's ``collate`` method, else torch's
            ``default_collate``) or an iterable of batch dicts (a ``DataLoader``, a list),
            re-iterated until the steps are done. ``set_epoch(epoch)`` is called, where
            defined, on the dataset (and a DataLoader's dataset and sampler) as each epoch
            starts. Batch entries ``forward`` has no parameter for (e.g. ``index``) are not
            passed to it, unless ``forward`` takes ``**kwargs``.
        config: :class:`TrainConfig` (defaults if None).
        eval_fn: ``eval_fn(model) -> {"metric": float}``, called on rank 0 with the unwrapped
            model in eval mode under ``torch.no_grad``, every ``config.eval_every`` steps and
            after the last step of the call, with its own copy of the random states (it never
            changes the training trajectory).
        device: default ``minivlm.device()`` (``cuda:LOCAL_RANK`` under torchrun with CUDA).
        optimizer: your own (its groups' ``lr`` follow the schedule, scaled by
            ``lr_at(step) / config.lr``); default AdamW over :func:`default_param_groups`.
        param_groups: AdamW groups to use instead of the default ones (e.g. a larger ``lr``
            for a projector); ignored when ``optimizer`` is given.
        resume: when ``config.ckpt_path`` exists, ``True`` resumes from it exactly (weights,
            optimizer, step, random states, data position, history; a finished run returns at
            once); ``False`` raises ``FileExistsError`` rather than overwrite it.
        stop_after: stop once this global step is reached (checkpointing if ``ckpt_path`` is
            set) while the schedule still spans ``config.steps``: a long run in sessions.
    """
    config = _check_args(model, config, stop_after)
    t0 = time.perf_counter()
    rank, world = init_distributed()
    dev = pick_device(device, world)
    model.to(dev)
    use_amp = use_bf16(config, dev)
    if optimizer is None:
        optimizer = make_optimizer(model, config, param_groups, fused_adamw_ok(dev, use_amp))
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    source = make_source(data, config, collate_fn, rank, world)
    ckpt = Path(config.ckpt_path) if config.ckpt_path else None
    step, history = start_or_resume(ckpt, resume, model, optimizer, config, source)
    fwd = _wrap(model, config, dev, world)
    hook, accepted = _step_hook(model), _forward_keys(model)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    log = TrainLog(history, progress_bar(config, rank == 0, min(step, config.steps)), world)
    last_eval, last_ckpt = log.last_eval(), step
    model.train()
    try:
        while step < end:
            lr = lr_at(step, config)
            _set_lr(optimizer, lr, config)
            batch = _prepare(source.next(), accepted, dev)
            log.record(step, lr, _train_step(fwd, batch, optimizer, params, config, dev, use_amp))
            step += 1
            if hook is not None:
                hook(step, config.steps)
            if step % config.log_every == 0 or step == end:
                log.flush()
            if config.eval_every and step % config.eval_every == 0:
                log.flush()
                last_eval = _evaluate(model, eval_fn, step, log, rank)
            if config.ckpt_every and step % config.ckpt_every == 0:
                log.flush()
                write_checkpoint(ckpt, model, optimizer, config, step, source, log.history,
                                 rank, world)  # fmt: skip
                last_ckpt = step
        log.flush()
        if last_eval != step and eval_fn is not None:
            _evaluate(model, eval_fn, step, log, rank)
        if last_ckpt != step:
            write_checkpoint(ckpt, model, optimizer, config, step, source, log.history, rank, world)
    finally:
        log.close()
    seconds = time.perf_counter() - t0
    return TrainResult(dict(log.history), step, seconds, model, optimizer=optimizer)


# --------------------------------------------------------------------------- one step


def _set_lr(optimizer: torch.optim.Optimizer, lr: float, config: TrainConfig) -> None:
    """Scale every group's initial ``lr`` by ``lr / config.lr`` (the schedule's shape)."""
    scale = lr / config.lr if config.lr > 0 else 0.0
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * scale


def _prepare(batch: Any, accepted: set[str] | None, dev: torch.device) -> dict[str, Any]:
    """Check the batch is a dict, keep the keys ``forward`` accepts, move it to ``dev``."""
    if not isinstance(batch, Mapping):
        raise TypeError(
            "train: each batch must be a dict of tensors passed as forward(**batch), got "
            f"{type(batch).__name__}; return dicts from the dataset or collate_fn"
        )
    if accepted is not None:
        batch = {k: v for k, v in batch.items() if k in accepted}
    return to_device(batch, dev)


def _train_step(
    fwd: nn.Module,
    batch: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    params: list[torch.Tensor],
    config: TrainConfig,
    dev: torch.device,
    use_amp: bool,
) -> dict[str, torch.Tensor]:
    """Forward (under bf16 autocast when ``use_amp``), backward, clip, AdamW step; returns
    the step's loss, grad norm and ``loss_*`` parts as device scalars (no host sync)."""
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
    return record


# --------------------------------------------------------------------------- helpers


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
            return functools.partial(_call_hook, fn, takes_total)
    return None


def _call_hook(fn: Callable[..., Any], takes_total: bool, step: int, total: int) -> None:
    fn(step, total) if takes_total else fn(step)


def _check_args(
    model: nn.Module, config: TrainConfig | None, stop_after: int | None
) -> TrainConfig:
    config = config if config is not None else TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train: config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"train: model must be a torch.nn.Module, got {type(model).__name__}")
    if stop_after is not None and (not isinstance(stop_after, int) or stop_after < 1):
        raise ValueError(f"train: stop_after must be a positive int, got {stop_after!r}")
    return config


def _wrap(model: nn.Module, config: TrainConfig, dev: torch.device, world: int) -> nn.Module:
    """The module the loop calls: ``model`` inside DDP (several processes) and
    ``torch.compile`` (``config.compile``) as configured."""
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
    return fwd


def _evaluate(
    model: nn.Module,
    eval_fn: Callable[[nn.Module], Mapping[str, float]] | None,
    step: int,
    log: TrainLog,
    rank: int,
) -> int:
    """Run ``eval_fn`` on rank 0 (eval mode, no grad, random states saved and restored) and
    log its results; returns ``step``, the step of this evaluation."""
    if eval_fn is None or rank != 0:
        return step
    saved = rng_state()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            results = eval_fn(model)
    finally:
        model.train(was_training)
        set_rng_state(saved)
    log.record_eval(step, results)
    return step
