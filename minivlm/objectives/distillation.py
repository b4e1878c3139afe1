"""Soft targets and momentum distillation (Li et al. 2021, ALBEF §3.3), shared by ALBEF and BLIP.

Web captions are noisy, so ALBEF does not train against one-hot targets alone: a momentum
(EMA) copy of the model supplies soft targets, ``alpha · softmax(momentum scores) + (1 − alpha)
· one-hot``, for both the contrastive loss (ITC, Eq. 6) and masked language modelling. BLIP
(Li et al. 2022, §3.2) keeps the same ITC targets. The momentum model and its queues are in
:mod:`minivlm.objectives.momentum`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = ["distill_targets", "mlm_distill_loss", "soft_cross_entropy"]


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """ALBEF §3.3: mean over rows of ``−Σ_j targets_ij · log_softmax(logits)_ij`` (cross-entropy
    with soft targets; equals ``F.cross_entropy`` when the targets are one-hot)."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def distill_targets(sim_m: Tensor, alpha: float) -> Tensor:
    """ITC targets with momentum distillation (ALBEF §3.3, Eq. 6): (B, B+K) rows summing to 1.

    ``alpha · softmax(sim_m) + (1 − alpha) · y``, where ``sim_m`` (B, B+K) are the momentum
    model's similarities / τ and y is one-hot at column i for row i (the positive: the batch
    comes first, the queue after). ``alpha = 0`` gives the plain one-hot targets.
    """
    if sim_m.dim() != 2 or sim_m.shape[1] < sim_m.shape[0]:
        raise ValueError(
            f"distill_targets: expected sim_m of shape (B, B+K), got {tuple(sim_m.shape)}"
        )
    onehot = torch.zeros_like(sim_m, dtype=torch.float32)
    onehot.fill_diagonal_(1.0)  # (B, B+K): 1 at (i, i)
    if alpha == 0:
        return onehot
    return alpha * sim_m.float().softmax(dim=1) + (1.0 - alpha) * onehot


def mlm_distill_loss(
    logits: Tensor, labels: Tensor, soft_labels: Tensor | None = None, alpha: float = 0.0
) -> Tensor:
    """MLM loss with momentum distillation (ALBEF §3.3; the paper's code).

    logits (B, T, V), labels (B, T) with -100 where nothing is predicted, soft_labels
    (B, T, V) the momentum model's predicted distribution. Returns
    ``(1 − alpha) · CE(logits, labels) + alpha · H(soft_labels, logits)``, both averaged over
    the masked positions (0, with a gradient path, when none is masked).
    """
    sel = labels != -100  # (B, T)
    if not bool(sel.any()):
        return logits.sum() * 0.0
    lg = logits[sel].float()  # (M, V)
    loss = F.cross_entropy(lg, labels[sel])
    if soft_labels is not None and alpha > 0:
        distill = -(soft_labels[sel].float() * F.log_softmax(lg, dim=-1)).sum(dim=-1).mean()
        loss = (1.0 - alpha) * loss + alpha * distill
    return loss
