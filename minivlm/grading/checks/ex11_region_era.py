"""Checks of exercise 11 (before ViT): RoI-Align of one box, the IPOT iterations of UNITER's
word-region alignment, and UNITER's region-KL loss (MRC-kl).

References: :func:`minivlm.nn.convnet.roi_align` (He et al. 2017, "Mask R-CNN", §3: bins
without rounding, bilinear samples at regular points inside each bin, averaged; the
"aligned" half-cell shift), :func:`minivlm.objectives.ipot` (Xie et al. 2019, Alg. 1, one
inner step, as UNITER/ViLT use it) and :func:`minivlm.models.uniter.mrc_kl_loss` (Chen et al.
2020, "UNITER", §3.2: KL from the detector's class distribution to the model's, over the
masked regions).
"""

from __future__ import annotations

import torch

from minivlm.grading.core import Case, exercise_checks

Tensor = torch.Tensor
EXERCISE = "11_region_era"
register_check = exercise_checks(EXERCISE)


# ----------------------------------------------------------------------------- RoI-Align
def _ref_roi(features: Tensor, box: Tensor, output_size: int, sampling_ratio: int) -> Tensor:
    from minivlm.nn.convnet import roi_align

    return roi_align(features[None], box[None, None], output_size, 1.0, sampling_ratio)[0, 0]


def _roi_variant(how: str):
    def roi_align_box(features, box, output_size, sampling_ratio):
        C, H, W = features.shape
        S, R = output_size, sampling_ratio
        x1, y1, x2, y2 = box.unbind()
        off = 0.0 if how == "corners" else 0.5
        t = ((torch.arange(S, dtype=features.dtype)[:, None]
              + (torch.arange(R, dtype=features.dtype) + off) / R) / S).flatten()
        xs, ys = x1 + (x2 - x1) * t, y1 + (y2 - y1) * t  # (S*R,)
        if how == "xy":
            xs, ys = ys, xs
        shift = 0.0 if how == "unaligned" else 0.5
        X = (xs[None, :] - shift).expand(S * R, -1)
        Y = (ys[:, None] - shift).expand(-1, S * R)
        X, Y = X.clamp(0, W - 1), Y.clamp(0, H - 1)
        if how == "nearest":
            v = features[:, Y.round().long(), X.round().long()]
        else:
            x0, y0 = X.floor().long(), Y.floor().long()
            x1_, y1_ = (x0 + 1).clamp(max=W - 1), (y0 + 1).clamp(max=H - 1)
            lx, ly = X - x0, Y - y0
            f = features
            v = (f[:, y0, x0] * (1 - ly) * (1 - lx) + f[:, y0, x1_] * (1 - ly) * lx
                 + f[:, y1_, x0] * ly * (1 - lx) + f[:, y1_, x1_] * ly * lx)
        v = v.unflatten(1, (S, R)).unflatten(3, (S, R))  # (C, S, R, S, R)
        return v.amax(dim=(2, 4)) if how == "max" else v.mean(dim=(2, 4))

    return roi_align_box


@register_check(
    "roi_align_box(features, box, output_size, sampling_ratio)", _ref_roi, points=3, grad=True,
    returns="(C, S, S)",
    library=("torchvision.ops:roi_align", "minivlm.nn.convnet:bilinear_sample"),
    mistakes=[
        ("nearest-cell sampling (RoIPool's rounding): RoI-Align reads each sample point by "
         "bilinear interpolation between its four neighbouring cells", _roi_variant("nearest")),
        ("no half-cell shift: cell (i, j) has its centre at (j + 0.5, i + 0.5), so subtract 0.5 "
         "before interpolating (Detectron2's aligned=True)", _roi_variant("unaligned")),
        ("the sample points sit on the bin corners; they are at (r + 0.5) / R inside each bin",
         _roi_variant("corners")),
        ("max over a bin's samples; RoI-Align averages them", _roi_variant("max")),
        ("x and y are swapped: a box is (x1, y1, x2, y2) with x along the width (last axis)",
         _roi_variant("xy")),
    ],
)
def roi_cases(gen: torch.Generator):
    def box(H: int, W: int) -> Tensor:
        x = torch.sort(torch.rand(2, generator=gen) * (W - 1)).values
        y = torch.sort(torch.rand(2, generator=gen) * (H - 1)).values
        return torch.stack([x[0], y[0], x[1] + 0.7, y[1] + 0.7])

    f = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    yield Case("a box inside an 8x8 map, 2x2 bins, 2x2 samples", f(3, 8, 8), box(8, 8), 2, 2)
    yield Case("a non-square map, 3x3 bins, one sample per bin", f(2, 6, 9), box(6, 9), 3, 1,
               hint="with sampling_ratio 1 the sample is the bin's centre")
    yield Case("a box wider than tall, 4x4 bins", f(4, 10, 7), torch.tensor([0.3, 2.2, 6.6, 4.1]),
               4, 2)
    yield Case("a box that crosses the border (clamp to the edge cells)", f(2, 5, 5),
               torch.tensor([-0.8, 1.0, 5.5, 4.2]), 2, 2,
               hint="a sample point up to one cell outside the map takes the border value")


# ----------------------------------------------------------------------------- IPOT
def _ref_ipot(cost: Tensor, x_mask: Tensor, y_mask: Tensor, beta: float, iters: int) -> Tensor:
    from minivlm.objectives import ipot

    return ipot(cost, x_mask, y_mask, beta, iters, k=1)


def _ipot_variant(how: str):
    def ipot(cost, x_mask, y_mask, beta, iters):
        xm, ym = x_mask.to(cost.dtype), y_mask.to(cost.dtype)
        joint = xm[:, :, None] * ym[:, None, :]
        if how == "pad":
            xm, ym, joint = torch.ones_like(xm), torch.ones_like(ym), torch.ones_like(joint)
        mu = xm if how == "unnormalised" else xm / xm.sum(1, keepdim=True)
        nu = ym if how == "unnormalised" else ym / ym.sum(1, keepdim=True)
        G = torch.exp((1 if how == "sign" else -1) * cost / beta) * joint
        P = joint.clone()
        a = mu.clone()
        for _ in range(1 if how == "one_iter" else iters):
            Q = G if how == "sinkhorn" else G * P
            b = nu / (Q.transpose(1, 2) @ a[..., None])[..., 0].clamp_min(1e-30)
            a = mu / (Q @ b[..., None])[..., 0].clamp_min(1e-30)
            P = a[:, :, None] * Q * b[:, None, :]
        return P * joint

    return ipot


@register_check(
    "ipot(cost, x_mask, y_mask, beta, iters)", _ref_ipot, points=3,
    returns="(B, M, N)",
    library=("minivlm.objectives:wasserstein_distance", "minivlm.models.uniter:word_region_plan"),
    mistakes=[
        ("Q = G every step is entropic Sinkhorn; IPOT's proximal step multiplies by the last "
         "plan, Q = G * P_t", _ipot_variant("sinkhorn")),
        ("G = exp(+C / beta) sends mass to the *most* expensive pairs; it is exp(-C / beta)",
         _ipot_variant("sign")),
        ("the marginals must be distributions: uniform 1 / (number of real tokens), not 1",
         _ipot_variant("unnormalised")),
        ("padding takes part: padded words and regions (mask False) must get no mass and not "
         "count in the uniform marginals", _ipot_variant("pad")),
        ("only one outer iteration ran: loop `iters` times", _ipot_variant("one_iter")),
    ],
)
def ipot_cases(gen: torch.Generator):
    def case(label: str, B: int, M: int, N: int, beta: float, iters: int, pad: bool = False,
             **kw) -> Case:
        cost = torch.rand(B, M, N, generator=gen) * 2
        xm, ym = torch.ones(B, M, dtype=torch.bool), torch.ones(B, N, dtype=torch.bool)
        if pad:
            xm[0, M - 2:], ym[-1, N - 1:] = False, False
        return Case(label, cost, xm, ym, beta, iters, **kw)

    yield case("3 words, 2 regions, 20 iterations", 1, 3, 2, 0.5, 20)
    yield case("padding in x and y (batch of 2)", 2, 5, 4, 0.5, 30, pad=True,
               hint="masked tokens: no mass, and the marginals count real tokens only")
    yield case("beta = 0.1, 50 iterations", 2, 4, 6, 0.1, 50, rtol=1e-3, atol=1e-5)
    yield case("a single iteration", 1, 4, 3, 1.0, 1)


# ----------------------------------------------------------------------------- region KL
def _ref_kl(region_logits: Tensor, detector_probs: Tensor, masked: Tensor) -> Tensor:
    from minivlm.models.uniter import mrc_kl_loss

    return mrc_kl_loss(region_logits, detector_probs, masked)


def _kl_variant(how: str):
    def region_kl_loss(region_logits, detector_probs, masked):
        logp = region_logits.log_softmax(-1)
        q = detector_probs
        if how == "reverse":
            per = (logp.exp() * (logp - q.clamp_min(1e-12).log())).sum(-1)
        elif how == "ce":
            per = -(q * logp).sum(-1)
        elif how == "probs":
            per = (q * (q.clamp_min(1e-12).log() - region_logits.softmax(-1))).sum(-1)
        else:
            per = (q * (q.clamp_min(1e-12).log() - logp)).sum(-1)
        m = masked.to(per.dtype)
        if how == "all":
            return per.mean()
        if how == "sum":
            return (per * m).sum()
        if how == "unmasked":
            return (per * (1 - m)).sum() / (1 - m).sum()
        if how == "per_image":  # each image's mean over its masked regions, then the batch's
            return ((per * m).sum(1) / m.sum(1).clamp_min(1)).mean()
        return (per * m).sum() / m.sum()

    return region_kl_loss


@register_check(
    "region_kl_loss(region_logits, detector_probs, masked)", _ref_kl, points=2, grad=True,
    returns="()",
    library=("minivlm.models.uniter:mrc_kl_loss",),
    mistakes=[
        ("KL the wrong way round: MRC-kl is KL(detector || model) = sum q (log q - log p)",
         _kl_variant("reverse")),
        ("this is the cross-entropy -sum q log p; the KL subtracts the detector's entropy "
         "(the gradient is the same, the value is not)", _kl_variant("ce")),
        ("log p must be log_softmax of the logits, not softmax", _kl_variant("probs")),
        ("averaged over every region; only the masked regions count", _kl_variant("all")),
        ("summed over the masked regions; take their mean", _kl_variant("sum")),
        ("averaged over the regions that are NOT masked; masked (True) marks the regions to "
         "score", _kl_variant("unmasked")),
        ("averaged per image, then over the images: take one mean over every masked region "
         "of the batch, (kl * masked).sum() / masked.sum()", _kl_variant("per_image")),
    ],
)
def kl_cases(gen: torch.Generator):
    def case(label: str, B: int, N: int, K: int, p_mask: float = 0.5, sharp: float = 1.0,
             **kw) -> Case:
        logits = torch.randn(B, N, K, generator=gen) * 2
        probs = (torch.randn(B, N, K, generator=gen) * sharp).softmax(-1)
        # no class below 1e-9: where q underflows, q log q's gradient depends on how the 0 log 0
        # limit is written (a clamp or xlogy), which is not what this check is about
        probs = probs.clamp_min(1e-9)
        probs = probs / probs.sum(-1, keepdim=True)
        masked = torch.rand(B, N, generator=gen) < p_mask
        masked[0, 0] = True
        return Case(label, logits, probs, masked, **kw)

    yield case("2 images x 4 regions, 5 classes", 2, 4, 5)
    yield case("one masked region among 6", 1, 6, 3, p_mask=0.0)
    yield case("peaked detector distributions (near one-hot)", 3, 3, 7, sharp=8.0)
    yield case("every region masked", 2, 2, 4, p_mask=1.1)
