"""Re-grading gives the same marks: correct but different float32 solutions (rsqrt, x / norm,
F.normalize, einsum vs matmul, a hand-written log-sum-exp) pass on every seed, because the
expected values come from the reference in float64 and the tolerance allows for float32
rounding of the size the reference itself makes (with headroom)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minivlm.grading import core
from minivlm.grading.sandbox import RunStatus, call_one, dumps_safe, loads_safe


def n_rsqrt(x):
    return x * (x * x).sum(-1, keepdim=True).rsqrt()


def n_div(x):
    return x / x.norm(dim=-1, keepdim=True)


def n_normalize(x):
    return F.normalize(x, dim=-1)


def n_vector_norm(x):
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


NORMS = [n_rsqrt, n_div, n_normalize, n_vector_norm]


def predict(norm, how):
    def zero_shot_predict(image_embeds, weights, logit_scale):
        img = norm(image_embeds)
        sim = torch.einsum("be,ce->bc", img, weights) if how == "einsum" else img @ weights.T
        return (logit_scale.exp() * sim).softmax(dim=-1)

    return zero_shot_predict


def predict_via_log_softmax(image_embeds, weights, logit_scale):
    return torch.log_softmax(logit_scale.exp() * n_div(image_embeds) @ weights.mT, -1).exp()


def loss(norm, how):
    def clip_loss(image_embeds, text_embeds, logit_scale):
        i, t = norm(image_embeds), norm(text_embeds)
        s = torch.einsum("ie,te->it", i, t) if how == "einsum" else i @ t.T
        logits = s * logit_scale.exp()
        y = torch.arange(logits.shape[0])
        return (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y)) / 2

    return clip_loss


def loss_logsumexp(image_embeds, text_embeds, logit_scale):
    logits = logit_scale.exp() * n_rsqrt(image_embeds) @ n_rsqrt(text_embeds).T
    d = logits.diagonal()
    return ((logits.logsumexp(1) - d).mean() + (logits.logsumexp(0) - d).mean()) / 2


def classifier(norm):
    def zero_shot_classifier(class_text_embeds):
        return norm(norm(class_text_embeds).mean(dim=1))

    return zero_shot_classifier


def classifier_sum(class_text_embeds):
    return n_rsqrt(n_div(class_text_embeds).sum(1))


SOLUTIONS = {
    "zero_shot_predict": [predict(n, h) for n in NORMS for h in ("matmul", "einsum")]
    + [predict_via_log_softmax],
    "clip_loss": [loss(n, h) for n in NORMS[:3] for h in ("matmul", "einsum")]
    + [loss_logsumexp],
    "zero_shot_classifier": [classifier(n) for n in NORMS] + [classifier_sum],
}


#: the most different variants of each function, for the 100-seed run with a margin
DIFFERENT = {
    "zero_shot_predict": [predict(n_rsqrt, "einsum"), predict(n_normalize, "matmul"),
                          predict_via_log_softmax],
    "clip_loss": [loss(n_rsqrt, "einsum"), loss_logsumexp],
    "zero_shot_classifier": [classifier(n_rsqrt), classifier_sum],
}


def failures(seeds: range, solutions: dict | None = None) -> list[str]:
    """Grade every solution on every seed (the reference runs once per seed and check);
    the descriptions of the ones that lost points."""
    bad = []
    for name, fns in (solutions or SOLUTIONS).items():
        chk = core.get_check(name)
        ref = chk.resolve_reference()
        for seed in seeds:
            gen = torch.Generator().manual_seed(seed)
            prepared = [core._prepare(chk, ref, c, gen) for c in chk.cases(gen)]
            for k, fn in enumerate(fns):
                outcomes = [loads_safe(dumps_safe(call_one(fn, p.call))) for p in prepared]
                r = core._judge(chk, prepared, outcomes, RunStatus("done", 0.0), 5.0, seed)
                if not r.passed:
                    bad.append(f"{name} solution {k} seed {seed}: {r.summary}")
    return bad


def test_correct_variants_pass_on_every_seed_quick():
    assert failures(range(12)) == []


@pytest.mark.slow
def test_correct_variants_pass_with_a_third_of_the_tolerance_to_spare(monkeypatch):
    """The most different variants on 100 seeds, graded with 2/3 of every tolerance (rtol,
    atol and the float32-noise headroom): each correct answer must be 1.5x inside the real
    limit, a margin, not just a pass. About 10 s of CPU; it replaced a pass/fail run on 300
    seeds (40 s). Measured when it was written: at 2/3 of the tolerance no failure on
    seeds 0-99 (nor at full tolerance on 300 seeds); at 1/2 one of 2,100 gradings (seed 59,
    a float32 gradient) failed, so the margin is real but not large."""
    tolerance = core._tolerance
    monkeypatch.setattr(core, "_tolerance",
                        lambda case, dtype: tuple(t / 1.5 for t in tolerance(case, dtype)))
    monkeypatch.setattr(core, "NOISE_HEADROOM", core.NOISE_HEADROOM / 1.5)
    assert failures(range(100), DIFFERENT) == []


def test_grading_seed_is_fixed_per_check():
    assert core.stable_seed("clip_loss") == core.stable_seed("clip_loss")
    assert core.stable_seed("clip_loss") != core.stable_seed("zero_shot_predict")


def test_a_wrong_solution_still_fails_on_every_seed():
    # the headroom must not let the classic mistakes through
    wrong = predict(lambda x: x, "matmul")  # embeddings not normalised
    chk = core.get_check("zero_shot_predict")
    for seed in range(12):
        r = core.evaluate(chk, lambda calls, t: ([dumps_safe(call_one(wrong, c))
                                                  for c in calls], RunStatus("done", 0.0)),
                          seed=seed)
        assert not r.passed and "not normalised" in r.summary, r.summary
