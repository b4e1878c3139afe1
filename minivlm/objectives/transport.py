"""Word-patch alignment by optimal transport (ViLT §3.2), shared by ViLT and UNITER.

UNITER (Chen et al. 2020, §3.2, word-region alignment) measures how far a caption's words are
from its image's regions (ViLT: patches) as an optimal-transport distance, and trains matching
pairs to be close and mismatched pairs far. The transport plan is found with IPOT, the inexact
proximal point method (Xie et al. 2019, Alg. 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = ["cost_matrix_cosine", "ipot", "wasserstein_distance", "wpa_loss"]


def cost_matrix_cosine(x: Tensor, y: Tensor, eps: float = 1e-5) -> Tensor:
    """Cosine distance 1 - cos(x_i, y_j) between every pair: (B, M, D), (B, N, D) -> (B, M, N)."""
    x = F.normalize(x, dim=-1, eps=eps)
    y = F.normalize(y, dim=-1, eps=eps)
    return 1.0 - x @ y.transpose(1, 2)


@torch.no_grad()
def ipot(
    cost: Tensor, x_mask: Tensor, y_mask: Tensor, beta: float = 0.5, iters: int = 50, k: int = 1
) -> Tensor:
    """Inexact proximal point method for optimal transport (Xie et al. 2019, Alg. 1).

    Finds a transport plan P (B, M, N) between uniform distributions over the real tokens of
    x (``x_mask`` (B, M) bool) and of y (``y_mask`` (B, N)) that (approximately) minimises
    <C, P>. Each outer step solves a proximal problem min <C, P> + beta * KL(P || P_t) with
    ``k`` Sinkhorn-style scaling steps:

        G = exp(-C / beta);   Q = G * P_t
        b = nu / (Q^T a);     a = mu / (Q b);    P_{t+1} = diag(a) Q diag(b)

    A small ``k`` (1 in ViLT/UNITER) makes it "inexact"; unlike entropic Sinkhorn, the plan
    still converges to the exact optimum as t grows. Padding gets no mass.
    """
    xm, ym = x_mask.to(cost.dtype), y_mask.to(cost.dtype)  # (B, M), (B, N)
    joint = xm[:, :, None] * ym[:, None, :]  # (B, M, N) 1 where both tokens are real
    mu = xm / xm.sum(1, keepdim=True).clamp_min(1)  # (B, M) uniform over real x tokens
    nu = ym / ym.sum(1, keepdim=True).clamp_min(1)  # (B, N)
    G = torch.exp(-cost / beta) * joint  # (B, M, N)
    P = joint.clone()
    a = mu.clone()
    for _ in range(iters):
        Q = G * P
        for _ in range(k):
            b = nu / (Q.transpose(1, 2) @ a[..., None])[..., 0].clamp_min(1e-30)  # (B, N)
            a = mu / (Q @ b[..., None])[..., 0].clamp_min(1e-30)  # (B, M)
        P = a[:, :, None] * Q * b[:, None, :]
    return P * joint


def wasserstein_distance(
    text_feats: Tensor,
    image_feats: Tensor,
    text_mask: Tensor,
    image_mask: Tensor,
    beta: float = 0.5,
    iters: int = 50,
) -> Tensor:
    """Optimal-transport distance between each caption's words and its image's patches, (B,).

    D = <C, P*> with C the cosine-distance matrix (B, M, N) and P* the IPOT plan; P* is
    treated as a constant, so the gradient is that of <C, P*> (the plan says which word is
    pulled towards which patches). Masked (False) tokens take no part.
    """
    with torch.autocast(text_feats.device.type, enabled=False):  # float32, as ViLT's code
        cost = cost_matrix_cosine(text_feats.float(), image_feats.float())  # (B, M, N)
        joint = text_mask.bool()[:, :, None] & image_mask.bool()[:, None, :]
        cost = cost.masked_fill(~joint, 0.0)
        plan = ipot(cost.detach(), text_mask.bool(), image_mask.bool(), beta, iters)  # (B, M, N)
        return (cost * plan).sum(dim=(1, 2))  # (B,)


def wpa_loss(distance: Tensor, itm_labels: Tensor) -> Tensor:
    """Word-patch alignment loss (ViLT §3.2): pull matching pairs' words and patches together.

    ``(sum of distances of positive pairs - sum over negative pairs) / number of pairs``:
    matching pairs (label 1) minimise their transport distance, mismatched pairs (label 0)
    maximise it. ViLT adds it to ITM with weight 0.1 (``ViLTConfig.wpa_weight``).
    """
    if distance.shape != itm_labels.shape:
        raise ValueError(
            f"wpa_loss: distance {tuple(distance.shape)} and itm_labels "
            f"{tuple(itm_labels.shape)} must have the same shape (B,)"
        )
    if distance.numel() == 0:
        return distance.sum()
    sign = torch.where(itm_labels == 1, 1.0, -1.0).to(distance.dtype)
    return (sign * distance).sum() / distance.numel()
