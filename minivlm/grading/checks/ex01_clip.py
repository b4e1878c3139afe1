"""Checks of exercise 01 (CLIP): the symmetric contrastive loss and zero-shot classification.

References (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision"): the loss of §2.3 / Figure 3 with the learned temperature of §2.5, written with
``minivlm.models.clip.contrastive_logits``; zero-shot classification (§3.1.2) with prompt
ensembling (§3.1.4), as in ``minivlm.models.clip.build_zero_shot_classifier``. The references
here keep the input's dtype (``minivlm.models.clip.clip_loss`` computes the cross-entropy in
float32 so that it is safe under bf16 autocast). The "mistakes" are wrong versions whose
output, when it equals the learner's, names the mistake.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minivlm.grading.core import Case, exercise_checks

Tensor = torch.Tensor
EXERCISE = "01_clip_contrastive"
register_check = exercise_checks(EXERCISE)
LOG_INV_007 = math.log(1 / 0.07)  # CLIP's initial logit_scale (§2.5)


def _logits(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor) -> Tensor:
    from minivlm.models.clip import contrastive_logits

    img = F.normalize(image_embeds, dim=-1)  # (N, E) unit rows
    txt = F.normalize(text_embeds, dim=-1)  # (N, E)
    return contrastive_logits(img, txt, logit_scale)  # (N, N) = exp(s) * cosines


def _scaled(sim: Tensor, logit_scale: Tensor, how: str) -> Tensor:
    """Cosines turned into logits, as the reference does ("exp": times exp(logit_scale) =
    1/τ) or as a mistake does: "raw" times logit_scale, "tau" divided by it, "divide"
    divided by exp(logit_scale), "none" not scaled."""
    return {"exp": logit_scale.exp() * sim, "raw": logit_scale * sim, "tau": sim / logit_scale,
            "divide": sim / logit_scale.exp(), "none": sim}[how]


# ----------------------------------------------------------------------------- clip_loss
def _ref_clip_loss(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor) -> Tensor:
    logits = _logits(image_embeds, text_embeds, logit_scale)  # (N, N) rows: images
    targets = torch.arange(logits.shape[0])  # pair i is the positive of row i and column i
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def _loss_variant(*, scale: str = "exp", normalise: str = "both", direction: str = "both",
                  reduction: str = "mean", combine: str = "mean", softmax: str = "rows",
                  targets: str = "diagonal", sign: float = 1.0):
    """A wrong CLIP loss: the formula with one step changed."""

    def clip_loss(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor) -> Tensor:
        img, txt = image_embeds, text_embeds
        if normalise in ("both", "image"):
            img = F.normalize(img, dim=-1)
        if normalise in ("both", "text"):
            txt = F.normalize(txt, dim=-1)
        if normalise == "columns":
            img, txt = F.normalize(img, dim=0), F.normalize(txt, dim=0)
        sim = img @ txt.T  # (N, N)
        logits = _scaled(sim, logit_scale, scale)
        n = logits.shape[0]
        if softmax == "matrix":  # one softmax over all N*N entries
            logp = logits.reshape(-1).log_softmax(0).reshape(n, n)
            per = -logp.diagonal()
            loss = per.mean() if reduction == "mean" else per.sum()
            return sign * loss
        t = torch.arange(n) if targets == "diagonal" else torch.zeros(n, dtype=torch.long)
        i2t = F.cross_entropy(logits, t, reduction=reduction)
        t2i = F.cross_entropy(logits.T, t, reduction=reduction)
        if direction == "i2t":
            loss = i2t
        elif direction == "t2i":
            loss = t2i
        else:
            loss = (i2t + t2i) / 2 if combine == "mean" else i2t + t2i
        return sign * loss

    return clip_loss


@register_check(
    "clip_loss(image_embeds, text_embeds, logit_scale)", _ref_clip_loss, points=3, grad=True,
    returns="() a scalar",
    mistakes=[
        ("the sign is flipped: the loss is the cross-entropy -log p(positive), which is >= 0; "
         "minimising your value would push the matching pairs apart",
         _loss_variant(sign=-1.0)),
        ("you multiplied the cosines by logit_scale itself; logit_scale is log(1/τ), so the "
         "logits are exp(logit_scale) * cosine (use logit_scale.exp())",
         _loss_variant(scale="raw")),
        ("you divided the cosines by logit_scale as if it were τ; logit_scale = log(1/τ), so "
         "multiply by exp(logit_scale) = 1/τ", _loss_variant(scale="tau")),
        ("you divided by exp(logit_scale); exp(logit_scale) = 1/τ is the inverse temperature, "
         "so multiply: logits = exp(logit_scale) * cosine", _loss_variant(scale="divide")),
        ("the embeddings are not normalised: divide each row by its L2 norm (dim=-1) so that "
         "image @ text.T holds cosine similarities", _loss_variant(normalise="none")),
        ("only the image embeddings are normalised; normalise the text embeddings too",
         _loss_variant(normalise="image")),
        ("only the text embeddings are normalised; normalise the image embeddings too",
         _loss_variant(normalise="text")),
        ("you normalised the columns (dim=0); normalise each embedding, i.e. each row "
         "(dim=-1)", _loss_variant(normalise="columns")),
        ("your loss is only the image->text half (softmax over each row). The second half "
         "classifies each caption among the images: cross-entropy over the columns "
         "(logits.T, or a softmax over dim=0); average the two",
         _loss_variant(direction="i2t")),
        ("your loss is only the text->image half (softmax over each column). Add the "
         "image->text half, cross-entropy over the rows, and average the two",
         _loss_variant(direction="t2i")),
        ("you summed the two halves; CLIP averages them: (loss_i2t + loss_t2i) / 2",
         _loss_variant(combine="sum")),
        ("you summed the cross-entropy over the batch; take the mean over the N pairs "
         "(F.cross_entropy's default reduction='mean')", _loss_variant(reduction="sum")),
        ("you summed over the batch and over the two halves; take the mean of each half and "
         "average the two", _loss_variant(reduction="sum", combine="sum")),
        ("your softmax runs over all N*N entries of the matrix at once; it must run over each "
         "row (image->text) and each column (text->image) separately",
         _loss_variant(softmax="matrix")),
        ("wrong targets: the positive of row i (and of column i) is pair i, so the targets are "
         "torch.arange(N), not zeros", _loss_variant(targets="zeros")),
    ],
)
def clip_loss_cases(gen: torch.Generator):
    def embeds(n: int, e: int, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        img = torch.randn(n, e, generator=gen, dtype=dtype)
        txt = img + 0.8 * torch.randn(n, e, generator=gen, dtype=dtype)  # related pairs
        return img * 3.0, txt * 0.5  # norms far from 1

    def s(value: float, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.tensor(value, dtype=dtype)

    yield Case("8 pairs, E=16, logit_scale = log(1/0.07)", *embeds(8, 16), s(LOG_INV_007))
    yield Case("a batch of size 1", *embeds(1, 8), s(LOG_INV_007),
               hint="with N = 1 the only caption is the right one, so the loss is 0; "
                    ".squeeze() removes the batch axis you need here")
    yield Case("τ = 1 (logit_scale = 0), 5 pairs, E=32", *embeds(5, 32), s(0.0))
    sizes = torch.rand(2, 6, 1, generator=gen) * 5 + 0.1  # every row its own norm
    yield Case("τ = 0.5 (logit_scale = log 2), embeddings of different sizes",
               torch.randn(6, 12, generator=gen) * sizes[0],
               torch.randn(6, 12, generator=gen) * sizes[1], s(math.log(2.0)))
    img = torch.randn(1, 8, generator=gen) + 0.1 * torch.randn(5, 8, generator=gen)
    yield Case("logit_scale = log(100) (CLIP's clamp), all cosines close to 1",
               img, img + 0.05 * torch.randn(5, 8, generator=gen), s(math.log(100.0)),
               hint="logits reach 100 and exp(100) overflows float32: use F.cross_entropy "
                    "(or log_softmax / logsumexp), which subtracts the maximum first")
    yield Case("float64 embeddings and logit_scale", *embeds(6, 16, torch.float64),
               s(LOG_INV_007, torch.float64))


# ----------------------------------------------------------------------------- zero-shot weights
def _ref_zero_shot_classifier(class_text_embeds: Tensor) -> Tensor:
    prompts = F.normalize(class_text_embeds, dim=-1)  # (C, P, E) each prompt unit length
    return F.normalize(prompts.mean(dim=1), dim=-1)  # (C, E) average, back on the sphere


@register_check(
    "zero_shot_classifier(class_text_embeds)", _ref_zero_shot_classifier, points=2, grad=True,
    returns="(C, E)",
    mistakes=[
        ("the average of unit vectors is shorter than 1: renormalise the mean so that each "
         "class weight is a unit vector again (normalise, average, normalise)",
         lambda x: F.normalize(x, dim=-1).mean(dim=1)),
        ("you averaged the raw prompt embeddings, so a prompt with a large norm outweighs the "
         "others: normalise each prompt first, then average, then renormalise",
         lambda x: F.normalize(x.mean(dim=1), dim=-1)),
        ("nothing is normalised: normalise each prompt embedding (dim=-1), average over the "
         "prompts, normalise the result", lambda x: x.mean(dim=1)),
        ("you used only the first prompt of each class; average over all P prompts (dim=1)",
         lambda x: F.normalize(x[:, 0], dim=-1)),
        ("you normalised over the prompts (dim=1); normalise each prompt's embedding, the "
         "last axis (dim=-1)",
         lambda x: F.normalize(F.normalize(x, dim=1).mean(dim=1), dim=-1)),
        ("you averaged over the classes (dim=0); average over the prompts of each class "
         "(dim=1) to get one (E,) weight per class",
         lambda x: F.normalize(F.normalize(x, dim=-1).mean(dim=0), dim=-1)),
        ("you summed the prompts without renormalising; average them and renormalise",
         lambda x: F.normalize(x, dim=-1).sum(dim=1)),
    ],
)
def zero_shot_classifier_cases(gen: torch.Generator):
    def prompts(c: int, p: int, e: int, dtype: torch.dtype = torch.float32) -> Tensor:
        x = torch.randn(c, p, e, generator=gen, dtype=dtype)
        norms = torch.exp(torch.randn(c, p, 1, generator=gen, dtype=dtype) * 1.5)  # 0.05..20
        return x * norms

    yield Case("5 classes, 4 prompts each, E=16", prompts(5, 4, 16))
    yield Case("3 classes, 7 prompts, E=8 (C != P)", prompts(3, 7, 8),
               hint="the input is (C, P, E): average over dim 1, the prompts")
    yield Case("a single prompt per class (P = 1)", prompts(4, 1, 8),
               hint="with one prompt the weight is just that prompt's normalised embedding; "
                    "keep the class axis even when P = 1 (no .squeeze())")
    yield Case("a single class (C = 1)", prompts(1, 5, 8),
               hint="with C = 1, .squeeze() removes the class axis you must keep")
    yield Case("float64 embeddings", prompts(6, 3, 32, torch.float64))


# ----------------------------------------------------------------------------- zero-shot predict
def _ref_zero_shot_predict(image_embeds: Tensor, weights: Tensor, logit_scale: Tensor) -> Tensor:
    from minivlm.models.clip import contrastive_logits

    img = F.normalize(image_embeds, dim=-1)  # (B, E)
    logits = contrastive_logits(img, weights, logit_scale)  # (B, C) = exp(s) * cosines
    return logits.softmax(dim=-1)  # (B, C) each image's distribution over the classes


def _predict_variant(*, scale: str = "exp", normalise: bool = True, dim: int = -1,
                     output: str = "softmax", transpose: bool = False):
    def zero_shot_predict(image_embeds: Tensor, weights: Tensor, logit_scale: Tensor) -> Tensor:
        img = F.normalize(image_embeds, dim=-1) if normalise else image_embeds
        sim = img @ weights.T  # (B, C)
        logits = _scaled(sim, logit_scale, scale)
        if transpose:
            logits = logits.T
        if output == "logits":
            return logits
        if output == "log_softmax":
            return logits.log_softmax(dim=dim)
        return logits.softmax(dim=dim)

    return zero_shot_predict


@register_check(
    "zero_shot_predict(image_embeds, weights, logit_scale)",
    _ref_zero_shot_predict, points=1, grad=True,
    returns="(B, C)",
    mistakes=[
        ("softmax over the wrong axis: each image's probabilities over the C classes (the "
         "last axis, dim=-1) must sum to 1", _predict_variant(dim=0)),
        ("you return (C, B); return one row per image: (B, C) = image_embeds @ weights.T",
         _predict_variant(transpose=True)),
        ("the image embeddings are not normalised: divide each by its L2 norm (dim=-1) so "
         "that the scores are cosine similarities", _predict_variant(normalise=False)),
        ("the cosines were not scaled: multiply them by exp(logit_scale) = 1/τ before the "
         "softmax", _predict_variant(scale="none")),
        ("you multiplied by logit_scale itself; logit_scale = log(1/τ), so scale by "
         "exp(logit_scale)", _predict_variant(scale="raw")),
        ("you divided by exp(logit_scale); it is 1/τ, so multiply",
         _predict_variant(scale="divide")),
        ("you return the logits; return probabilities: softmax over the classes (dim=-1)",
         _predict_variant(output="logits")),
        ("you return log-probabilities (log_softmax); return probabilities (softmax)",
         _predict_variant(output="log_softmax")),
    ],
)
def zero_shot_predict_cases(gen: torch.Generator):
    def weights(c: int, e: int, dtype: torch.dtype = torch.float32) -> Tensor:
        return F.normalize(torch.randn(c, e, generator=gen, dtype=dtype), dim=-1)

    def images(b: int, e: int, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.randn(b, e, generator=gen, dtype=dtype) * 4.0

    s = torch.tensor(LOG_INV_007)
    yield Case("6 images, 4 classes, E=16", images(6, 16), weights(4, 16), s,
               hint="B != C here: the output is (B, C), one row per image")
    yield Case("a single image (B = 1)", images(1, 8), weights(5, 8), s,
               hint="with B = 1, .squeeze() removes the image axis you need")
    yield Case("3 images, 10 classes, τ = 1 (logit_scale = 0)", images(3, 8), weights(10, 8),
               torch.tensor(0.0))
    w = F.normalize(torch.randn(1, 8, generator=gen) + 0.15 * torch.randn(3, 8, generator=gen),
                    dim=-1)  # (3, 8) three similar classes: all cosines close to 1
    yield Case("logit_scale = log(100), similar classes, images close to one of them",
               w[[0, 2, 1, 0]] * 5 + 0.01 * torch.randn(4, 8, generator=gen), w,
               torch.tensor(math.log(100.0)),
               hint="logits reach 100 and exp(100) overflows float32: use torch.softmax, "
                    "which subtracts the maximum first")
    yield Case("float64 inputs", images(5, 16, torch.float64), weights(7, 16, torch.float64),
               torch.tensor(LOG_INV_007, dtype=torch.float64))
