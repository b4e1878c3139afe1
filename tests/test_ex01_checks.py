"""Exercise 01 (CLIP) checks: right solutions pass; deliberately broken ones fail with a message
that names the mistake; the instructor source passes every check and its generated student
version fails them as "not attempted"."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from exercise_helpers import (
    assert_broken_fails_pointedly,
    assert_source_passes_student_fails,
    assert_untouched_is_not_attempted,
)

from minivlm.grading import check, get_check, list_checks
from minivlm.grading.student import generate_student
from minivlm.models.clip import clip_loss as lib_clip_loss
from minivlm.models.clip import contrastive_logits

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "exercises" / "01_clip_contrastive.ipynb"
EXERCISE = "01_clip_contrastive"
SEED = 1234


# ----------------------------------------------------------------------------- clip_loss
def make_loss(*, scale="exp", normalise="both", direction="both", reduction="mean",
              combine="mean", sign=1.0, targets="arange", float32=False, squeeze=False,
              no_grad_scale=False, naive_softmax=False, by_hand=False):
    def clip_loss(image_embeds, text_embeds, logit_scale):
        if float32:
            image_embeds, text_embeds = image_embeds.float(), text_embeds.float()
            logit_scale = logit_scale.float()
        img, txt = image_embeds, text_embeds
        if normalise in ("both", "image"):
            img = img / img.norm(dim=-1, keepdim=True)
        if normalise in ("both", "text"):
            txt = txt / txt.norm(dim=-1, keepdim=True)
        sim = img @ txt.T
        if squeeze:
            sim = sim.squeeze()
        s = math.exp(logit_scale) if no_grad_scale else logit_scale.exp()
        logits = {"exp": s * sim, "raw": logit_scale * sim, "tau": sim / logit_scale,
                  "divide": sim / s}[scale]
        n = img.shape[0]
        if naive_softmax:  # exp / sum by hand: overflows for logits near 100 in float32
            p = logits.exp() / logits.exp().sum(1, keepdim=True)
            q = logits.exp() / logits.exp().sum(0, keepdim=True)
            return -(p.diagonal().log().mean() + q.diagonal().log().mean()) / 2
        if by_hand:  # a right solution without F.cross_entropy
            i2t = -logits.log_softmax(dim=1).diagonal().mean()
            t2i = -logits.log_softmax(dim=0).diagonal().mean()
            return (i2t + t2i) / 2
        t = torch.arange(n) if targets == "arange" else torch.zeros(n, dtype=torch.long)
        i2t = F.cross_entropy(logits, t, reduction=reduction)
        t2i = F.cross_entropy(logits.T, t, reduction=reduction)
        if direction == "i2t":
            loss = i2t
        elif direction == "t2i":
            loss = t2i
        elif direction == "same_axis":  # forgot to transpose for the second half
            loss = (i2t + F.cross_entropy(logits, t, reduction=reduction)) / 2
        else:
            loss = (i2t + t2i) / 2 if combine == "mean" else i2t + t2i
        return sign * loss

    return clip_loss


def loss_via_library(image_embeds, text_embeds, logit_scale):  # minivlm's (float32) loss
    logits = contrastive_logits(F.normalize(image_embeds, dim=-1),
                                F.normalize(text_embeds, dim=-1), logit_scale)
    return lib_clip_loss(logits)


def loss_returns_float(image_embeds, text_embeds, logit_scale):
    return make_loss()(image_embeds, text_embeds, logit_scale).item()


# ----------------------------------------------------------------------------- zero-shot weights
def make_classifier(*, first_norm=True, renorm=True, mean_dim=1, norm_dim=-1, reduce="mean",
                    squeeze=False, float32=False):
    def zero_shot_classifier(class_text_embeds):
        x = class_text_embeds.float() if float32 else class_text_embeds
        if first_norm:
            x = x / x.norm(dim=norm_dim, keepdim=True)
        w = x.mean(dim=mean_dim) if reduce == "mean" else x.sum(dim=mean_dim)
        if renorm:
            w = w / w.norm(dim=-1, keepdim=True)
        return w.squeeze() if squeeze else w

    return zero_shot_classifier


# ----------------------------------------------------------------------------- zero-shot predict
def make_predict(*, dim=-1, normalise=True, scale="exp", output="softmax", transpose=False,
                 naive=False, detach=False):
    def zero_shot_predict(image_embeds, weights, logit_scale):
        img = F.normalize(image_embeds, dim=-1) if normalise else image_embeds
        if detach:
            img = img.detach()
        sim = img @ weights.T
        logits = {"exp": logit_scale.exp() * sim, "none": sim}[scale]
        if transpose:
            logits = logits.T
        if output == "logits":
            return logits
        if naive:
            return logits.exp() / logits.exp().sum(dim, keepdim=True)
        return logits.softmax(dim=dim)

    return zero_shot_predict


RIGHT = [
    ("clip_loss", make_loss()),
    ("clip_loss", make_loss(by_hand=True)),
    ("zero_shot_classifier", make_classifier()),
    ("zero_shot_classifier",
     lambda x: F.normalize(F.normalize(x, dim=2).sum(1), dim=1)),  # sum then renormalise: same
    ("zero_shot_predict", make_predict()),
    ("zero_shot_predict",
     lambda img, w, s: torch.softmax(img @ w.T / img.norm(dim=1, keepdim=True) * s.exp(), 1)),
]


@pytest.mark.parametrize("name,fn", RIGHT, ids=[f"{n}-{i}" for i, (n, _) in enumerate(RIGHT)])
def test_right_solutions_pass(name, fn):
    # the library's own function is right too; graded, it would earn 0 (not self-written)
    r = check(name, fn, seed=SEED, allow_library=True)
    assert r.passed, str(r)
    assert r.points == r.max_points == get_check(name).points
    assert r.status == "passed"


def test_reference_agrees_with_the_library_loss_in_float32():
    """The check's reference is minivlm's CLIP loss (which computes in float32)."""
    ref = get_check("clip_loss").resolve_reference()
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(7, 12, generator=g), torch.randn(7, 12, generator=g)
    s = torch.tensor(math.log(1 / 0.07))
    assert torch.allclose(ref(img, txt, s), loss_via_library(img, txt, s), atol=1e-6)
    # and the float64 reference keeps float64 (the library's casts down on purpose)
    assert ref(img.double(), txt.double(), s.double()).dtype == torch.float64
    assert check("clip_loss", loss_via_library, seed=SEED,
                 allow_library=True).summary.startswith("dtype float32")
    assert check("clip_loss", loss_via_library, seed=SEED).status == "library"


# (check, broken function, words the message must contain)
BROKEN = [
    ("clip_loss", make_loss(sign=-1.0), ["values differ", "sign is flipped"]),
    ("clip_loss", make_loss(scale="raw"), ["values differ", "logit_scale itself",
                                           "logit_scale.exp()"]),
    ("clip_loss", make_loss(scale="tau"), ["values differ", "as if it were τ"]),
    ("clip_loss", make_loss(scale="divide"), ["values differ", "divided by exp(logit_scale)",
                                              "multiply"]),
    ("clip_loss", make_loss(normalise="none"), ["values differ", "not normalised"]),
    ("clip_loss", make_loss(normalise="image"), ["values differ", "normalise the text"]),
    ("clip_loss", make_loss(direction="i2t"), ["values differ", "only the image->text half",
                                               "over the columns"]),
    ("clip_loss", make_loss(direction="t2i"), ["values differ", "only the text->image half"]),
    ("clip_loss", make_loss(direction="same_axis"), ["values differ",
                                                     "only the image->text half", "logits.T"]),
    ("clip_loss", make_loss(combine="sum"), ["values differ", "summed the two halves"]),
    ("clip_loss", make_loss(reduction="sum"), ["values differ", "summed the cross-entropy over "
                                               "the batch", "mean"]),
    ("clip_loss", make_loss(targets="zeros"), ["values differ", "torch.arange(N)"]),
    ("clip_loss", make_loss(float32=True), ["dtype float32 but expected float64",
                                            "don't convert to float32"]),
    ("clip_loss", make_loss(squeeze=True), ["batch of size 1"]),
    ("clip_loss", make_loss(no_grad_scale=True), ["values match",
                                                  "does not depend on logit_scale"]),
    ("clip_loss", make_loss(naive_softmax=True), ["log(100)", "NaN", "overflows float32",
                                                  "F.cross_entropy"]),
    ("clip_loss", loss_returns_float, ["returned", "expected a torch.Tensor"]),
    ("zero_shot_classifier", make_classifier(renorm=False), ["values differ",
                                                             "renormalise the mean"]),
    ("zero_shot_classifier", make_classifier(first_norm=False), ["values differ",
                                                                 "averaged the raw prompt"]),
    ("zero_shot_classifier", make_classifier(first_norm=False, renorm=False),
     ["values differ", "nothing is normalised"]),
    ("zero_shot_classifier", make_classifier(norm_dim=1), ["values differ",
                                                           "normalised over the prompts"]),
    ("zero_shot_classifier", make_classifier(mean_dim=0), ["output shape (4, 16) but expected "
                                                           "(5, 16) = (C, E)", "classes (dim=0)"]),
    ("zero_shot_classifier", make_classifier(reduce="sum", renorm=False),
     ["values differ", "summed the prompts"]),
    ("zero_shot_classifier", make_classifier(squeeze=True), ["C = 1", "output shape"]),
    ("zero_shot_classifier", make_classifier(float32=True), ["dtype float32 but expected "
                                                             "float64"]),
    ("zero_shot_predict", make_predict(dim=0), ["values differ", "softmax over the wrong axis"]),
    ("zero_shot_predict", make_predict(transpose=True), ["output shape (4, 6) but expected "
                                                         "(6, 4) = (B, C)", "return (C, B)"]),
    ("zero_shot_predict", make_predict(normalise=False), ["values differ", "not normalised"]),
    ("zero_shot_predict", make_predict(scale="none"), ["values differ", "not scaled"]),
    ("zero_shot_predict", make_predict(output="logits"), ["values differ", "return the logits"]),
    ("zero_shot_predict", make_predict(naive=True), ["log(100)", "NaN", "torch.softmax"]),
    ("zero_shot_predict", make_predict(detach=True), ["values match",
                                                      "does not depend on image_embeds"]),
]


@pytest.mark.parametrize("name,fn,words", BROKEN,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BROKEN)])
def test_broken_solutions_fail_with_a_pointed_message(name, fn, words):
    assert_broken_fails_pointedly(name, fn, words, SEED)


def test_exercise_01_registers_its_checks():
    names = [c.name for c in list_checks(EXERCISE)]
    assert names == ["clip_loss", "zero_shot_classifier", "zero_shot_predict", "tau_sweep"]
    assert sum(c.points for c in list_checks(EXERCISE)) == 9
    for c in list_checks(EXERCISE)[:3]:
        assert c.grad, c.name  # every function check compares gradients too


# ----------------------------------------------------------------------------- tau_sweep
# "implement, train, explain": graded on what the learner's trained models achieve
@pytest.mark.usefixtures("reuse_references")  # the reference sweep trains once per seed
def test_tau_sweep_right_passes_and_shows_the_temperature_effect():
    from minivlm.grading.checks.ex01_tau_sweep import _ref_tau_sweep

    r = check("tau_sweep", _ref_tau_sweep, seed=SEED, timeout=60, allow_library=True)
    assert r.passed and r.points == 3, str(r)
    acc = _ref_tau_sweep(torch.tensor([1.0, 0.1, 0.01]), 0)
    assert acc[1] > acc[0] + 0.1 and acc[1] > acc[2] and acc[0] > 5 / 60  # τ matters, learns


@pytest.mark.parametrize("variant,words", [
    (dict(sign=-1.0), ["values differ", "none of your models learned", "flipped sign"]),
    (dict(tau="fixed"), ["values differ", "hardly depend on τ"]),
    (dict(zero_grad=False), ["values differ", "at τ =", "a correct sweep"]),
    (dict(loss_fn=make_loss(scale="raw")), ["values differ", "without .exp()"]),
    (dict(loss_fn=make_loss(normalise="none")), ["values differ", "normalise the embeddings"]),
], ids=["sign", "fixed-tau", "no-zero-grad", "loss-no-exp", "loss-not-normalised"])
@pytest.mark.usefixtures("reuse_references")
def test_tau_sweep_broken_fails(variant, words):
    from minivlm.grading.checks.ex01_tau_sweep import _sweep_variant

    r = check("tau_sweep", _sweep_variant(**variant), seed=SEED, timeout=60,
              allow_library=True)
    assert not r.passed and r.points == 0, str(r)
    for w in words:
        assert w in r.message, f"{w!r} not in:\n{r.message}"


@pytest.mark.usefixtures("reuse_references")
def test_tau_sweep_untouched_is_not_attempted():
    assert_untouched_is_not_attempted("tau_sweep", "taus, seed", SEED)


# ----------------------------------------------------------------------------- the notebooks
@pytest.mark.usefixtures("reuse_references")  # the sweep's reference: once, shared with above
def test_source_passes_all_checks_and_student_fails_them_cleanly():
    stu_code = assert_source_passes_student_fails(SOURCE, EXERCISE, 4, seed=SEED)
    assert "BEGIN SOLUTION" not in stu_code and "logit_scale.exp()" not in stu_code
    assert "def clip_loss(image_embeds" in stu_code and "symmetric contrastive loss" in stu_code
    assert "clip_loss_by_hand" not in stu_code  # the solution-tagged cell is dropped


def test_committed_student_notebook_is_up_to_date():
    assert generate_student(SOURCE, check=True).status == "unchanged", (
        "run `python -m minivlm student exercises/01_clip_contrastive.ipynb`")
