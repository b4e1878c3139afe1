"""Momentum encoders and feature queues (He et al. 2020, MoCo §3.1-3.2; Li et al. 2021, ALBEF §3.3).

A momentum encoder is an exponential moving average (EMA) of the online weights; its features of
the last K examples wait in a queue, so that the contrastive loss sees K + B candidates instead
of B. ALBEF and BLIP use both (:class:`MomentumQueues`, or :func:`ema_update_` and
:func:`enqueue_` directly); ALBEF and BLIP-2 share the learnable temperature, clamped one way
(:class:`ClampedTemperature`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from minivlm.objectives.distillation import distill_targets

Tensor = torch.Tensor

__all__ = ["ClampedTemperature", "MomentumQueues", "concat_all_gather", "ema_update_", "enqueue_"]


@torch.no_grad()
def ema_update_(pairs: list[tuple[Tensor, Tensor]], momentum: float) -> None:
    """Momentum (EMA) update in place (MoCo §3.2, ALBEF §3.3): ``p_m ← m·p_m + (1 − m)·p`` for
    each (p, p_m) pair."""
    for p, p_m in pairs:
        p_m.mul_(momentum).add_(p.detach(), alpha=1.0 - momentum)


@torch.no_grad()
def enqueue_(queue: Tensor, ptr: Tensor, feats: Tensor) -> None:
    """MoCo §3.1 / ALBEF §3.3 queue: write (B, E) ``feats`` into the (E, K) ring buffer
    ``queue`` from column ``ptr``.

    Columns ``ptr, ptr+1, ...`` (mod K) receive the batch, wrapping around the end, and
    ``ptr`` becomes ``(ptr + B) % K``. The paper's code asserts ``K % B == 0`` so that a
    batch never straddles the end; this works for any B (for B > K only the last K
    features survive, as if written one by one).
    """
    E, K = queue.shape
    if feats.dim() != 2 or feats.shape[1] != E:
        raise ValueError(f"enqueue_: expected features of shape (B, {E}), got {tuple(feats.shape)}")
    B = feats.shape[0]
    start = int(ptr)
    if B > K:  # earlier ones would be overwritten within this same batch
        start = (start + B - K) % K
        feats = feats[B - K :]
    cols = (start + torch.arange(feats.shape[0], device=queue.device)) % K  # (min(B, K),)
    queue[:, cols] = feats.t().to(queue.dtype)
    ptr.fill_((int(ptr) + B) % K)


class ClampedTemperature:
    """A learnable ITC temperature ``temp`` kept in [``config.temp_min``, ``config.temp_max``],
    clamped one way (ALBEF's and BLIP-2's code): in place at the start of every training step,
    and the τ a forward uses is the clamped value. Mixed into an ``nn.Module``."""

    @torch.no_grad()
    def clamp_temp_(self) -> None:
        """Clamp τ in place to [temp_min, temp_max] (the papers' code does it every step)."""
        self.temp.clamp_(self.config.temp_min, self.config.temp_max)  # type: ignore[attr-defined]

    @property
    def temperature(self) -> float:
        """τ after the clamp."""
        cfg = self.config  # type: ignore[attr-defined]
        return float(self.temp.detach().clamp(cfg.temp_min, cfg.temp_max))  # type: ignore[attr-defined]

    def step_temperature(self) -> Tensor:
        """The τ of this forward: clamped in place first in training mode, then read clamped."""
        if self.training:  # type: ignore[attr-defined]
            self.clamp_temp_()
        cfg = self.config  # type: ignore[attr-defined]
        return self.temp.clamp(cfg.temp_min, cfg.temp_max)  # type: ignore[attr-defined]


class MomentumQueues:
    """The momentum (EMA) model and its feature queues (MoCo §3; ALBEF §3.3), mixed into an
    ``nn.Module`` whose ``momentum_names`` modules get a deep-copied momentum twin.

    Call :meth:`init_momentum` in ``__init__`` after the online modules exist: it adds
    ``momentum`` (a ``ModuleDict`` deep copy, no gradients, always in eval mode) and the buffers
    ``image_queue``/``text_queue`` (E, K) of random unit columns and ``queue_ptr``. The EMA
    coefficient is ``config.momentum``.
    """

    momentum_names: tuple[str, ...] = ()

    def init_momentum(self, embed_dim: int, queue_size: int) -> None:
        """Deep-copy the online modules (one copy, so that ties inside them stay tied) and
        register the (E, K) queues and their pointer."""
        self.momentum = copy.deepcopy(self._online()).requires_grad_(False).eval()
        E, K = embed_dim, queue_size
        self.register_buffer("image_queue", F.normalize(torch.randn(E, K), dim=0))
        self.register_buffer("text_queue", F.normalize(torch.randn(E, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def _online(self) -> torch.nn.ModuleDict:
        return torch.nn.ModuleDict({name: getattr(self, name) for name in self.momentum_names})

    def train(self, mode: bool = True) -> Any:
        """Set the training mode; the momentum model always stays in eval mode."""
        super().train(mode)  # type: ignore[misc]
        self.momentum.eval()
        return self

    def momentum_modules(self) -> list[torch.nn.Module]:
        """The momentum (EMA) copies, in the order of ``momentum_names``."""
        return list(self.momentum.values())

    def momentum_pairs(self) -> Iterator[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
        """(online parameter, momentum parameter) pairs, each shared tensor once (a tied
        decoder / word embeddings would otherwise be averaged twice)."""
        return zip(self._online().parameters(), self.momentum.parameters(), strict=True)

    @torch.no_grad()
    def copy_params_to_momentum(self) -> None:
        """Make the momentum model equal to the online one (e.g. after loading weights)."""
        for p, p_m in self.momentum_pairs():
            p_m.copy_(p)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """EMA step: ``param_m = m · param_m + (1 − m) · param`` for every momentum parameter."""
        ema_update_(list(self.momentum_pairs()), self.config.momentum)  # type: ignore[attr-defined]

    @torch.no_grad()
    def dequeue_and_enqueue(self, image_feat_m: Tensor, text_feat_m: Tensor) -> None:
        """Push (B, E) momentum features (gathered over processes) into both queues; the oldest
        entries are overwritten, wrapping around the end of the queue (:func:`enqueue_`)."""
        image_feat_m, text_feat_m = concat_all_gather(image_feat_m), concat_all_gather(text_feat_m)
        if image_feat_m.shape != text_feat_m.shape:
            raise ValueError(f"{type(self).__name__}.dequeue_and_enqueue: image and text features "
                             f"must have the same shape (B, E), got {tuple(image_feat_m.shape)} "
                             f"and {tuple(text_feat_m.shape)}")  # fmt: skip
        enqueue_(self.image_queue, self.queue_ptr.clone(), image_feat_m)
        enqueue_(self.text_queue, self.queue_ptr, text_feat_m)

    @torch.no_grad()
    def with_queues(self, image_feat_m: Tensor, text_feat_m: Tensor) -> tuple[Tensor, Tensor]:
        """[momentum batch; queue] features, (E, B+K) each: images, texts."""
        return (torch.cat([image_feat_m.t(), self.image_queue.float()], 1),
                torch.cat([text_feat_m.t(), self.text_queue.float()], 1))  # fmt: skip

    @torch.no_grad()
    def itc_targets(self, image_feat_m: Tensor, text_feat_m: Tensor, temp: Tensor | float,
                    alpha: float) -> tuple[Tensor, Tensor]:  # fmt: skip
        """ITC targets (ALBEF §3.3 Eq. 6) over [momentum batch; queue], (B, B+K) each: i2t,
        t2i (:func:`distill_targets`; ``alpha`` <= 0: one-hot)."""
        image_all, text_all = self.with_queues(image_feat_m, text_feat_m)  # (E, B+K) each
        if alpha <= 0:  # plain one-hot targets: column i is the positive of row i
            onehot = distill_targets(image_feat_m.new_zeros(len(text_feat_m), text_all.shape[1]), 0)
            return onehot, onehot
        return (distill_targets(image_feat_m @ text_all / temp, alpha),
                distill_targets(text_feat_m @ image_all / temp, alpha))  # fmt: skip


def concat_all_gather(t: Tensor) -> Tensor:
    """Concatenate ``t`` over all processes (the paper's ``concat_all_gather``), if any."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)
