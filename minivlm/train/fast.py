"""The fast path: one switch, ``TrainConfig(precision="bf16", compile=True)``.

* bf16 autocast (matmuls and attention in bfloat16, weights, optimizer state and reductions in
  fp32; no loss scaling is needed, unlike fp16) on CUDA GPUs that support it and on CPUs whose
  instruction set multiplies bf16 natively (x86 AVX512-BF16 or AMX-BF16, ARM BF16). Elsewhere
  bf16 is emulated and slower than fp32, so the run stays in fp32 and a warning says why.
* fused AdamW (one kernel over all parameters) wherever the bf16 path runs, and on CUDA as before.
* ``torch.compile`` of the model when ``compile=True`` (any precision; the first steps pay for
  the compilation).

Attention already takes ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on
a GPU) whenever no attention weights are requested. fp32 stays the default: the notebooks' printed
numbers are then reproducible bit for bit on a CPU.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from minivlm.train.config import TrainConfig


def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU multiplies bf16 natively, and what was found (for messages)."""
    caps = torch.cpu.get_capabilities()
    found = [f for f in ("amx_bf16", "avx512_bf16", "bf16", "sve_bf16") if caps.get(f)]
    if found:
        return True, f"{caps.get('architecture', 'cpu')} with {', '.join(found)}"
    return False, (
        f"this {caps.get('cpu_name') or caps.get('architecture', 'CPU')} has no native bf16 "
        "instructions (x86 AVX512-BF16 / AMX-BF16, ARM BF16); emulated bf16 is slower than fp32"
    )


def bf16_support(dev: torch.device) -> tuple[bool, str]:
    """Whether bf16 autocast pays off on ``dev``, and why (not)."""
    if dev.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, torch.cuda.get_device_name(dev)
        return False, f"{torch.cuda.get_device_name(dev)} has no bf16 support"
    if dev.type == "cpu":
        return cpu_bf16_support()
    return False, f"bf16 autocast is not set up for device type {dev.type!r} here"


def use_bf16(config: TrainConfig, dev: torch.device) -> bool:
    """Whether the loop runs its forward under bf16 autocast.

    ``amp="bf16"`` forces it on any device (emulated where not native: for tests and
    experiments); ``amp="off"`` forbids it; otherwise ``precision`` decides, with a warning
    when ``"bf16"`` was asked for on a device without native bf16.
    """
    if config.amp == "bf16":
        return True
    if config.amp == "off" or config.precision == "fp32":
        return False
    ok, why = bf16_support(dev)
    if not ok:
        warnings.warn(
            f"train: precision='bf16' asked for, but {why}; training stays in fp32",
            stacklevel=3,
        )
    return ok


def fused_adamw_ok(dev: torch.device, bf16: bool) -> bool:
    """Fused AdamW on CUDA (as always) and, on the bf16 fast path, on a CPU too."""
    return dev.type == "cuda" or (bf16 and dev.type == "cpu")


def precision_autocast(precision: str, dev: torch.device | str = "cpu"
                       ) -> contextlib.AbstractContextManager:  # fmt: skip
    """The loop's precision rule for a hand-written training loop (the lecture recipes that
    step their own optimizer): ``with precision_autocast("bf16", dev): loss = ...`` runs bf16
    autocast where :func:`use_bf16` would (native bf16 only; else fp32 with the same warning),
    and ``"fp32"`` is a no-op, so the default path stays bit for bit the plain one."""
    dev = torch.device(dev)
    if use_bf16(TrainConfig(precision=precision), dev):
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
