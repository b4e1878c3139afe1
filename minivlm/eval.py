"""Evaluation metrics of the surveyed tasks: retrieval R@K, zero-shot and plain
classification accuracy, VQA accuracy, image-text matching accuracy, and a linear probe of
frozen features.

All metrics return plain Python floats (fractions in [0, 1], not percentages).

Ties are broken *against* the model everywhere: a ground truth counts as ranked first only
if every other candidate scores strictly lower. A collapsed model that gives every pair the
same score therefore gets R@1 = 0 (not 1), and ``itm_accuracy`` counts a tie as a miss.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "classification_accuracy",
    "embed_dataset",
    "itm_accuracy",
    "linear_probe",
    "normalize_answer",
    "retrieval_metrics",
    "vqa_accuracy",
    "zero_shot_accuracy",
]

ArrayLike = torch.Tensor | np.ndarray | Sequence[Any]


def _as_float_tensor(x: ArrayLike, name: str, ndim: int | tuple[int, ...]) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    t = t.detach().to("cpu")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold numbers, got dtype {t.dtype}")
    t = t.double()
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if t.ndim not in dims:
        raise ValueError(
            f"{name} must have {' or '.join(map(str, dims))} dims, got {tuple(t.shape)}"
        )
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN")
    return t


def _as_index_tensor(x: ArrayLike, name: str, n: int | None) -> torch.Tensor:
    """Integer class indices as a flat long tensor, all in [0, n) (n None: only >= 0)."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to("cpu")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer indices, got dtype {t.dtype}")
    t = t.long().reshape(-1)
    if t.numel() and (t.min() < 0 or (n is not None and t.max() >= n)):
        bound = "inf" if n is None else n
        raise ValueError(f"{name} holds indices outside [0, {bound}): min {t.min()}, max {t.max()}")
    return t


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive ints, got {ks}")
    return ks


# --------------------------------------------------------------------------- retrieval


def retrieval_metrics(
    sim: ArrayLike,
    img_to_txt_gt: ArrayLike | Sequence[Sequence[int]] | None = None,
    ks: Iterable[int] = (1, 5, 10),
) -> dict[str, float]:
    """Image-text retrieval Recall@K in both directions, as reported for Flickr30K/COCO
    (CLIP Sec. 3.1, ALBEF Sec. 5, BLIP Sec. 5.1).

    Args:
        sim: ``(N_img, N_txt)`` similarity scores, higher = more similar.
        img_to_txt_gt: which texts describe which image. ``None``: the diagonal (text ``j``
            belongs to image ``j``; needs ``N_img == N_txt``). A flat int sequence of length
            ``N_txt``: the image index of every text (several captions per image, e.g. COCO's
            five). A sequence of ``N_img`` int sequences: the text indices of every image.
        ks: the K values.

    Returns:
        ``i2t_R@K``: fraction of images whose best-ranked ground-truth text is in the top K of
        all texts; ``t2i_R@K``: fraction of texts whose image is in the top K of all images;
        ``mean_R@K`` (their mean); ``mean_recall`` (mean over all directions and K;
        ``rsum`` is the sum, as in the papers, over fractions); ``i2t_medr`` / ``t2i_medr``
        (median 1-based rank of the ground truth) and ``chance_R@K``: the expected R@K of a
        random ranking, averaged over both directions (``K / N`` for the diagonal case).

    Ties count against the model (see module docstring): the rank of a ground truth is the
    number of *other* candidates scoring greater than or equal to it.
    """
    s = _as_float_tensor(sim, "retrieval_metrics: sim", 2)  # (N_img, N_txt)
    n_img, n_txt = s.shape
    if n_img == 0 or n_txt == 0:
        raise ValueError(f"retrieval_metrics: sim is empty, shape {tuple(s.shape)}")
    ks = _check_ks(ks)
    txt2img = _text_to_image(img_to_txt_gt, n_img, n_txt)  # (N_txt,)
    gt = torch.zeros(n_img, n_txt, dtype=torch.bool)
    gt[txt2img, torch.arange(n_txt)] = True  # (N_img, N_txt) True where text j describes image i
    no_caption = (~gt.any(1)).nonzero().flatten()
    if no_caption.numel():
        raise ValueError(
            f"retrieval_metrics: images {no_caption.tolist()[:10]} have no ground-truth text; "
            "drop them from sim or fix img_to_txt_gt"
        )

    # text -> image: rank of the true image among all images (0 = first)
    gt_score_t = s[txt2img, torch.arange(n_txt)]  # (N_txt,)
    t2i_rank = (s >= gt_score_t[None, :]).sum(0) - 1  # (N_txt,) minus the gt itself
    # image -> text: rank of its best-scored true text among the non-ground-truth texts
    best_gt_i = s.masked_fill(~gt, float("-inf")).max(1).values  # (N_img,)
    i2t_rank = ((s >= best_gt_i[:, None]) & ~gt).sum(1)  # (N_img,)

    out: dict[str, float] = {}
    n_gt = gt.sum(1).double()  # (N_img,) captions per image
    for k in ks:
        i2t = (i2t_rank < k).double().mean().item()
        t2i = (t2i_rank < k).double().mean().item()
        out[f"i2t_R@{k}"] = i2t
        out[f"t2i_R@{k}"] = t2i
        out[f"mean_R@{k}"] = (i2t + t2i) / 2
    for k in ks:
        # random ranking: P(one of g true texts among the top k of n) = 1 - C(n-g, k)/C(n, k)
        chance_i2t = (1.0 - _comb_ratio(n_txt, n_gt, k)).mean().item()
        chance_t2i = min(k, n_img) / n_img
        out[f"chance_R@{k}"] = (chance_i2t + chance_t2i) / 2
    recalls = [out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in ks]
    out["rsum"] = float(sum(recalls))
    out["mean_recall"] = out["rsum"] / len(recalls)
    out["i2t_medr"] = float(np.median(i2t_rank.numpy() + 1))
    out["t2i_medr"] = float(np.median(t2i_rank.numpy() + 1))
    return out


def _comb_ratio(n: int, g: torch.Tensor, k: int) -> torch.Tensor:
    """C(n - g, k) / C(n, k) for each g: the chance that k random picks miss all g."""
    out = torch.ones_like(g)
    for i in range(min(k, n)):
        out = out * ((n - g - i).clamp(min=0) / (n - i))
    return out


def _text_to_image(gt: Any, n_img: int, n_txt: int) -> torch.Tensor:
    name = "retrieval_metrics: img_to_txt_gt"
    if gt is None:
        if n_img != n_txt:
            raise ValueError(
                f"retrieval_metrics: sim is {n_img}x{n_txt}, not square, so the diagonal ground "
                "truth does not apply; pass img_to_txt_gt (the image index of every text)"
            )
        return torch.arange(n_txt)
    nested = (
        not isinstance(gt, torch.Tensor | np.ndarray)
        and len(gt) > 0
        and all(isinstance(x, Sequence | np.ndarray | torch.Tensor) for x in gt)
    )
    if nested:  # per image, its texts
        if len(gt) != n_img:
            raise ValueError(f"{name}: got a list for {len(gt)} images, sim has {n_img}")
        t2i = torch.full((n_txt,), -1, dtype=torch.long)
        for i, texts in enumerate(gt):
            for j in _as_index_tensor(texts, name, n_txt).tolist():
                if t2i[j] >= 0 and t2i[j] != i:
                    raise ValueError(f"{name}: text {j} is listed under images {t2i[j]} and {i}")
                t2i[j] = i
        if (t2i < 0).any():
            missing = (t2i < 0).nonzero().flatten().tolist()[:10]
            raise ValueError(f"{name}: texts {missing} belong to no image")
        return t2i
    t2i = _as_index_tensor(gt, name, n_img)
    if t2i.numel() != n_txt:
        raise ValueError(
            f"{name}: expected the image index of each of the {n_txt} texts, got {t2i.numel()} "
            "values"
        )
    return t2i


# --------------------------------------------------------------------------- classification


def classification_accuracy(logits: ArrayLike, labels: ArrayLike, k: int = 1) -> float:
    """Top-``k`` accuracy of ``logits (N, C)`` against integer ``labels (N,)``.

    A sample is correct when fewer than ``k`` *other* classes score ``>=`` its true class
    (ties count against the model).
    """
    z = _as_float_tensor(logits, "classification_accuracy: logits", 2)  # (N, C)
    n, c = z.shape
    y = _as_index_tensor(labels, "classification_accuracy: labels", c)
    if y.numel() != n:
        raise ValueError(f"classification_accuracy: {n} rows of logits but {y.numel()} labels")
    if n == 0:
        raise ValueError("classification_accuracy: no samples")
    _check_ks((k,))
    true = z[torch.arange(n), y]  # (N,)
    rank = (z >= true[:, None]).sum(1) - 1  # (N,) other classes at or above the true one
    return (rank < k).double().mean().item()


def linear_probe(features: ArrayLike, labels: ArrayLike, n_train: int, l2: float = 1e-3) -> float:
    """Is a class *linearly readable* from frozen features? Held-out accuracy of a probe.

    Multinomial logistic regression (L-BFGS, 200 iterations, penalty ``l2 * ||W||^2``) is fit
    on the first ``n_train`` rows of ``features (N, D)`` / ``labels (N,)`` and scored on the
    rest (argmax). The usual way to ask what an encoder has learned without its other tower
    (CLIP §3.2 reports linear-probe results too). Deterministic: the probe's initial weights
    come from a fixed seed without touching the global random state.
    """
    x = _as_float_tensor(features, "linear_probe: features", 2).float()  # (N, D)
    y = _as_index_tensor(labels, "linear_probe: labels", None)
    if y.numel() != x.shape[0]:
        raise ValueError(f"linear_probe: {x.shape[0]} rows of features but {y.numel()} labels")
    if not 0 < n_train < x.shape[0]:
        raise ValueError(
            f"linear_probe: n_train must leave rows on both sides, got {n_train} of {x.shape[0]}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        probe = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(probe(x[:n_train]), y[:n_train]) + l2 * probe.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return (probe(x[n_train:]).argmax(-1) == y[n_train:]).float().mean().item()


def zero_shot_accuracy(
    image_emb: ArrayLike,
    class_text_emb: ArrayLike,
    labels: ArrayLike,
    k: int = 1,
) -> float:
    """CLIP zero-shot classification (CLIP Sec. 3.1.2): each image takes the class whose text
    embedding is most cosine-similar; returns top-``k`` accuracy.

    Args:
        image_emb: ``(N, D)`` image embeddings (normalised here).
        class_text_emb: ``(C, D)`` one text embedding per class, or ``(C, P, D)`` for ``P``
            prompt templates per class: the normalised prompts are averaged and renormalised,
            CLIP's prompt ensembling (Sec. 3.1.4).
        labels: ``(N,)`` true class indices.
    """
    img = _as_float_tensor(image_emb, "zero_shot_accuracy: image_emb", 2)
    txt = _as_float_tensor(class_text_emb, "zero_shot_accuracy: class_text_emb", (2, 3))
    if img.shape[-1] != txt.shape[-1]:
        raise ValueError(
            f"zero_shot_accuracy: image_emb has dim {img.shape[-1]} but class_text_emb has dim "
            f"{txt.shape[-1]}"
        )
    txt = F.normalize(txt, dim=-1)
    if txt.ndim == 3:  # (C, P, D) -> (C, D)
        txt = F.normalize(txt.mean(1), dim=-1)
    logits = F.normalize(img, dim=-1) @ txt.T  # (N, C) cosine similarities
    return classification_accuracy(logits, labels, k=k)


def itm_accuracy(scores_pos: ArrayLike, scores_neg: ArrayLike) -> float:
    """Fraction of pairs where the matching pair outscores its hard negative(s) (e.g. the
    ITM head's match logit for the true caption vs. a caption with a swapped attribute).

    ``scores_pos`` is ``(N,)``; ``scores_neg`` is ``(N,)`` or ``(N, M)`` for ``M`` negatives
    per positive, which must all score strictly lower. A tie is a miss.
    """
    pos = _as_float_tensor(scores_pos, "itm_accuracy: scores_pos", 1)  # (N,)
    neg = _as_float_tensor(scores_neg, "itm_accuracy: scores_neg", (1, 2))
    if neg.ndim == 1:
        neg = neg[:, None]  # (N, 1)
    if neg.shape[0] != pos.shape[0]:
        raise ValueError(
            f"itm_accuracy: {pos.shape[0]} positive scores but {neg.shape[0]} rows of negatives"
        )
    if pos.numel() == 0:
        raise ValueError("itm_accuracy: no scores")
    return (pos[:, None] > neg).all(1).double().mean().item()


# --------------------------------------------------------------------------- VQA

_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"[^\w\s']")


def normalize_answer(answer: str) -> str:
    """A light version of the official VQA answer normalisation: lower case, punctuation
    and articles dropped, number words as digits (``"Two."`` -> ``"2"``)."""
    if not isinstance(answer, str):
        raise TypeError(f"normalize_answer: expected a str, got {type(answer).__name__}")
    words = _PUNCT.sub(" ", answer.lower()).split()
    return " ".join(_NUMBER_WORDS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(
    pred_answers: Sequence[str],
    gt_answers: Sequence[str] | Sequence[Sequence[str]],
    qtypes: Sequence[str] | None = None,
) -> dict[str, float]:
    """VQA accuracy (Antol et al. 2015; the metric of ViLT, ALBEF, BLIP, BLIP-2, LLaVA).

    With several human answers per question (a list of str per question; VQAv2 has 10) the
    score is the VQA soft score ``min(#humans who gave the predicted answer / 3, 1)``; with a
    single str per question it is exact match. Answers are compared after
    :func:`normalize_answer`.

    Returns ``{"overall": acc}`` plus one entry per question type when ``qtypes`` is given
    (e.g. ``{"overall": 0.7, "color": 0.9, "count": 0.4}``).
    """
    if isinstance(pred_answers, str) or isinstance(gt_answers, str):
        raise TypeError("vqa_accuracy: pass sequences of answers, not a single string")
    if len(pred_answers) != len(gt_answers):
        raise ValueError(
            f"vqa_accuracy: {len(pred_answers)} predictions but {len(gt_answers)} ground truths"
        )
    if len(pred_answers) == 0:
        raise ValueError("vqa_accuracy: no questions")
    if qtypes is not None and len(qtypes) != len(pred_answers):
        raise ValueError(f"vqa_accuracy: {len(qtypes)} qtypes for {len(pred_answers)} questions")
    scores = []
    for pred, gts in zip(pred_answers, gt_answers):
        p = normalize_answer(pred)
        if isinstance(gts, str):
            scores.append(float(p == normalize_answer(gts)))
        else:
            if len(gts) == 0:
                raise ValueError("vqa_accuracy: a question has an empty list of answers")
            hits = sum(p == normalize_answer(g) for g in gts)
            scores.append(min(hits / 3.0, 1.0))
    out = {"overall": float(np.mean(scores))}
    if qtypes is not None:
        by: dict[str, list[float]] = defaultdict(list)
        for t, sc in zip(qtypes, scores):
            by[str(t)].append(sc)
        if "overall" in by:
            raise ValueError("vqa_accuracy: 'overall' cannot be a question type name")
        out.update({t: float(np.mean(v)) for t, v in sorted(by.items())})
    return out


# --------------------------------------------------------------------------- embeddings


@torch.no_grad()
def embed_dataset(
    model_fn: Callable[[Any], Any],
    loader: Iterable[Any],
    device: torch.device | str | None = None,
) -> Any:
    """Run ``model_fn(batch)`` over every batch under ``torch.no_grad`` and concatenate the
    outputs along dim 0 on the CPU.

    ``model_fn`` may return a tensor, a tuple/list of tensors or a dict of tensors; the result
    has the same structure. Batches are moved to ``device`` first when it is given. Put the
    model in ``eval()`` mode yourself, e.g.
    ``embed_dataset(lambda b: model.encode_image(b["pixel_values"]), loader)``.
    """
    from minivlm.train import to_device

    chunks: list[Any] = []
    for batch in loader:
        if device is not None:
            batch = to_device(batch, device)
        chunks.append(_to_cpu(model_fn(batch)))
    if not chunks:
        raise ValueError("embed_dataset: the loader yielded no batches")
    first = chunks[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(chunks)
    if isinstance(first, dict):
        return {k: torch.cat([c[k] for c in chunks]) for k in first}
    if isinstance(first, list | tuple):
        return type(first)(torch.cat([c[i] for c in chunks]) for i in range(len(first)))
    raise TypeError(
        f"embed_dataset: model_fn must return a tensor, tuple or dict of tensors, got "
        f"{type(first).__name__}"
    )


def _to_cpu(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_to_cpu(v) for v in x)
    return x
