"""One training loop for every minivlm model (see :mod:`minivlm.train.loop`).

``from minivlm.train import train, TrainConfig, ...`` is the public surface; the pieces live in
``config.py`` (run settings, schedule, optimizer groups), ``batches.py`` (sampling, sharding,
devices), ``state.py`` (checkpoints, RNG, exact resume), ``log.py`` (progress, history),
``fast.py`` (the bf16 / fused / compile fast path) and ``loop.py`` (the step loop).
"""

from minivlm.train.batches import init_distributed, to_device
from minivlm.train.config import TrainConfig, TrainResult, default_param_groups, lr_at
from minivlm.train.loop import train
from minivlm.train.state import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
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
