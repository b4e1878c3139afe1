"""Exercise 11 (before ViT) checks: right solutions pass; deliberately broken ones fail with a
message that names the mistake; the instructor source passes every check and its generated
student version fails them as "not attempted"."""

from __future__ import annotations

from pathlib import Path

import torch
from exercise_helpers import assert_broken_fails_pointedly, assert_source_passes_student_fails

from minivlm.grading import check

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "exercises" / "11_region_era.ipynb"
EXERCISE = "11_region_era"
SEED = 1234


def test_source_passes_and_student_is_not_attempted():
    assert_source_passes_student_fails(SOURCE, EXERCISE, 3)


# ----------------------------------------------------------------------------- RoI-Align
def make_roi(how="right"):
    """A learner's loop-free RoI-Align; ``how`` breaks one thing."""

    def roi_align_box(features, box, output_size, sampling_ratio):
        C, H, W = features.shape
        S, R = output_size, sampling_ratio
        x1, y1, x2, y2 = box.tolist() if how == "python_floats" else box.unbind()
        off = 0.0 if how == "corners" else 0.5
        step = torch.arange(S * R, dtype=features.dtype)
        frac = (step + off) / (S * R)  # equal to (k + (r + off) / R) / S
        xs, ys = x1 + (x2 - x1) * frac, y1 + (y2 - y1) * frac
        if how == "swap_xy":
            xs, ys = ys, xs
        shift = 0.0 if how == "unaligned" else 0.5
        xs, ys = (xs - shift).clamp(0, W - 1), (ys - shift).clamp(0, H - 1)
        if how == "nearest":
            v = features[:, ys.round().long()][:, :, xs.round().long()]
        else:
            x0, y0 = xs.floor().long(), ys.floor().long()
            x1i, y1i = (x0 + 1).clamp(max=W - 1), (y0 + 1).clamp(max=H - 1)
            lx, ly = (xs - x0)[None, None], (ys - y0)[None, :, None]
            rows0, rows1 = features[:, y0], features[:, y1i]  # (C, S*R, W)
            top = rows0[:, :, x0] * (1 - lx) + rows0[:, :, x1i] * lx
            bot = rows1[:, :, x0] * (1 - lx) + rows1[:, :, x1i] * lx
            v = top * (1 - ly) + bot * ly  # (C, S*R, S*R)
        v = v.view(C, S, R, S, R)
        return v.amax(dim=(2, 4)) if how == "max" else v.mean(dim=(2, 4))

    return roi_align_box


def test_roi_right_passes_and_box_must_stay_a_tensor():
    assert check("roi_align_box", make_roi()).passed
    r = check("roi_align_box", make_roi("python_floats"))  # right values, no gradient for box
    assert not r.passed and "autograd" in r.message


def test_roi_broken_versions_fail():
    assert_broken_fails_pointedly("roi_align_box", make_roi("nearest"), ["bilinear"], SEED)
    assert_broken_fails_pointedly("roi_align_box", make_roi("unaligned"), ["half-cell"], SEED)
    assert_broken_fails_pointedly("roi_align_box", make_roi("corners"), ["(r + 0.5) / R"], SEED)
    assert_broken_fails_pointedly("roi_align_box", make_roi("max"), ["averages"], SEED)
    assert_broken_fails_pointedly("roi_align_box", make_roi("swap_xy"), ["swapped"], SEED)


# ----------------------------------------------------------------------------- IPOT
def make_ipot(how="right"):
    def ipot(cost, x_mask, y_mask, beta, iters):
        B, M, N = cost.shape
        plans = []
        for i in range(B):  # a learner's per-example loop over the real tokens
            xm, ym = x_mask[i], y_mask[i]
            c = cost[i][xm][:, ym]
            m, n = c.shape
            mu = torch.full((m,), 1.0 if how == "unnormalised" else 1.0 / m, dtype=cost.dtype)
            nu = torch.full((n,), 1.0 if how == "unnormalised" else 1.0 / n, dtype=cost.dtype)
            G = torch.exp((c if how == "sign" else -c) / beta)
            P = torch.ones_like(c)
            a = mu.clone()
            for _ in range(iters - 1 if how == "off_by_one" else iters):
                Q = G if how == "sinkhorn" else G * P
                b = nu / (Q.T @ a)
                a = mu / (Q @ b)
                P = a[:, None] * Q * b[None, :]
            full = torch.zeros(M, N, dtype=cost.dtype)
            full[xm.nonzero()[:, 0][:, None], ym.nonzero()[:, 0][None, :]] = P
            plans.append(full)
        return torch.stack(plans)

    return ipot


def test_ipot_right_variants_pass():
    assert check("ipot", make_ipot()).passed


def test_ipot_broken_versions_fail():
    assert_broken_fails_pointedly("ipot", make_ipot("sinkhorn"), ["Sinkhorn"], SEED)
    assert_broken_fails_pointedly("ipot", make_ipot("sign"), ["exp(-C / beta)"], SEED)
    assert_broken_fails_pointedly("ipot", make_ipot("unnormalised"), ["distributions"], SEED)
    r = check("ipot", make_ipot("off_by_one"), seed=SEED)
    assert not r.passed and r.points == 0, str(r)


# ----------------------------------------------------------------------------- region KL
def make_kl(how="right"):
    def region_kl_loss(region_logits, detector_probs, masked):
        p = torch.softmax(region_logits, dim=-1)
        q = detector_probs
        if how == "reverse":
            per = (p * (p.log() - q.log())).sum(-1)
        elif how == "ce":
            per = -(q * p.log()).sum(-1)
        else:
            per = torch.nn.functional.kl_div(region_logits.log_softmax(-1), q,
                                             reduction="none").sum(-1)
        if how == "all":
            return per.mean()
        if how == "sum":
            return per[masked].sum()
        if how == "unmasked":  # the regions the model saw
            return per[~masked].mean()
        if how == "per_image":  # a mean per image, then over the images that have one
            means = [per[b][masked[b]].mean() for b in range(len(per)) if masked[b].any()]
            return torch.stack(means).mean()
        return per[masked].mean()

    return region_kl_loss


def test_kl_right_passes():
    assert check("region_kl_loss", make_kl()).passed


def test_kl_broken_versions_fail():
    assert_broken_fails_pointedly("region_kl_loss", make_kl("reverse"), ["wrong way"], SEED)
    assert_broken_fails_pointedly("region_kl_loss", make_kl("ce"), ["cross-entropy"], SEED)
    assert_broken_fails_pointedly("region_kl_loss", make_kl("all"), ["masked regions"], SEED)
    assert_broken_fails_pointedly("region_kl_loss", make_kl("sum"), ["summed"], SEED)
    assert_broken_fails_pointedly("region_kl_loss", make_kl("unmasked"), ["NOT masked"], SEED)
    assert_broken_fails_pointedly("region_kl_loss", make_kl("per_image"), ["per image"], SEED)
