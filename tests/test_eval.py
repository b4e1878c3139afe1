"""Evaluation metrics on hand-made inputs whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minivlm.eval import (
    classification_accuracy,
    embed_dataset,
    itm_accuracy,
    linear_probe,
    normalize_answer,
    retrieval_metrics,
    vqa_accuracy,
    zero_shot_accuracy,
)

# --------------------------------------------------------------------------- retrieval


def test_perfect_and_reversed_similarity():
    n = 12
    perfect = retrieval_metrics(torch.eye(n))
    for key in ("i2t_R@1", "t2i_R@1", "i2t_R@10", "mean_R@5", "mean_recall"):
        assert perfect[key] == 1.0, key
    assert perfect["i2t_medr"] == perfect["t2i_medr"] == 1.0
    assert perfect["rsum"] == 6.0
    reversed_ = retrieval_metrics(-torch.eye(n))  # the true pair scores lowest of all
    for k in (1, 5, 10):
        assert reversed_[f"i2t_R@{k}"] == reversed_[f"t2i_R@{k}"] == 0.0
    assert reversed_["i2t_medr"] == reversed_["t2i_medr"] == n
    assert perfect["chance_R@1"] == pytest.approx(1 / n)
    assert perfect["chance_R@5"] == pytest.approx(5 / n)


def test_rank_two_is_not_recall_at_one():
    """Off-by-one guard: ground truth in 2nd place counts for R@2/R@5, not R@1."""
    sim = torch.eye(4) * 0.5
    sim[:, 0] += 1.0  # text 0 beats every image's own text
    # images 1..3 rank their text 2nd (i2t); text 0's image 0 is first; texts 1..3 first
    r = retrieval_metrics(sim, ks=(1, 2, 5))
    assert r["i2t_R@1"] == pytest.approx(1 / 4)
    assert r["i2t_R@2"] == 1.0 and r["i2t_R@5"] == 1.0
    assert r["i2t_medr"] == 2.0
    sim_t = sim.T.contiguous()  # now image 0 beats every text's own image: t2i ranks 2nd
    r = retrieval_metrics(sim_t, ks=(1, 2))
    assert r["t2i_R@1"] == pytest.approx(1 / 4) and r["t2i_R@2"] == 1.0
    assert r["mean_R@1"] == pytest.approx((r["i2t_R@1"] + r["t2i_R@1"]) / 2)


def test_random_scores_are_near_chance():
    g = torch.Generator().manual_seed(0)
    r = retrieval_metrics(torch.randn(400, 400, generator=g), ks=(1, 10))
    assert r["chance_R@10"] == pytest.approx(10 / 400)
    assert abs(r["t2i_R@10"] - 10 / 400) < 0.02 and abs(r["i2t_R@10"] - 10 / 400) < 0.02


def test_ties_count_against_the_model():
    const = retrieval_metrics(torch.ones(5, 5), ks=(1, 5))
    assert const["i2t_R@1"] == const["t2i_R@1"] == 0.0  # a collapsed model gets no credit
    assert const["i2t_R@5"] == 1.0  # with 4 others tied, the truth is at rank 5
    sim = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    r = retrieval_metrics(sim, ks=(1, 2))
    assert r["i2t_R@1"] == pytest.approx(2 / 3)  # image 0 ties its text with text 1: miss
    assert r["t2i_R@1"] == pytest.approx(2 / 3)  # text 1: images 0 and 1 tie: miss
    assert r["i2t_R@2"] == r["t2i_R@2"] == 1.0


def test_multiple_captions_per_image_both_formats():
    # 2 images, 5 texts: texts 0,1,2 describe image 0; texts 3,4 describe image 1
    txt2img = [0, 0, 0, 1, 1]
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.5, 0.0],  # image 0: its best caption (0.9) is first
            [0.8, 0.7, 0.0, 0.3, 0.6],  # image 1: texts 0, 1 (image 0's) beat its best (0.6)
        ]
    )
    r = retrieval_metrics(sim, txt2img, ks=(1, 3))
    assert r["i2t_R@1"] == 0.5 and r["i2t_R@3"] == 1.0  # image 1's truth is 3rd
    # t2i: text 1 (0.1 vs image 1's 0.7) and text 3 (0.3 vs 0.5) miss; texts 0, 2, 4 hit
    assert r["t2i_R@1"] == pytest.approx(3 / 5)
    nested = retrieval_metrics(sim, [[0, 1, 2], [3, 4]], ks=(1, 3))
    assert nested == r
    assert retrieval_metrics(sim.numpy(), np.array(txt2img), ks=(1, 3)) == r
    # chance with 3 of 5 / 2 of 5 captions: i2t 1 - C(5-g,1)/C(5,1) = g/5
    assert r["chance_R@1"] == pytest.approx(((3 / 5 + 2 / 5) / 2 + 1 / 2) / 2)


def test_retrieval_rejects_bad_input():
    with pytest.raises(ValueError, match="not square"):
        retrieval_metrics(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="2 dims"):
        retrieval_metrics(torch.zeros(4))
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(torch.zeros(2, 3), [0, 1, 2])
    with pytest.raises(ValueError, match="no ground-truth text"):
        retrieval_metrics(torch.zeros(3, 3), [0, 0, 1])
    with pytest.raises(ValueError, match="3 texts"):
        retrieval_metrics(torch.zeros(2, 3), [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.full((2, 2), float("nan")))
    with pytest.raises(ValueError, match="positive ints"):
        retrieval_metrics(torch.eye(2), ks=(0,))


# --------------------------------------------------------------------------- classification


def test_classification_and_zero_shot_accuracy():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 2.0], [5.0, 5.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    # sample 0 right; sample 1 true class 2nd; sample 2 tied with class 0 -> miss at top-1
    assert classification_accuracy(logits, labels) == pytest.approx(1 / 3)
    assert classification_accuracy(logits, labels, k=2) == pytest.approx(1.0)

    classes = torch.eye(3, 4)  # (C, D) class text embeddings along axes
    images = torch.tensor([[5.0, 0.1, 0, 0], [0, 0.2, 3.0, 0], [0.1, 2.0, 0, 0]])
    assert zero_shot_accuracy(images, classes, [0, 2, 1]) == 1.0
    assert zero_shot_accuracy(images, classes, [1, 0, 2]) == 0.0
    assert zero_shot_accuracy(images, classes, [2, 1, 0], k=2) == pytest.approx(2 / 3)
    # prompt ensembling (C, P, D): two prompts per class, averaged after normalising
    prompts = torch.stack([classes, 10 * classes + 0.01], dim=1)  # (3, 2, 4)
    assert zero_shot_accuracy(images, prompts, [0, 2, 1]) == 1.0
    with pytest.raises(ValueError, match="dim"):
        zero_shot_accuracy(images, torch.eye(3), [0, 1, 2])


def test_itm_accuracy():
    pos = torch.tensor([2.0, 1.0, 0.5, 0.0])
    assert itm_accuracy(pos, torch.tensor([1.0, 2.0, 0.5, -1.0])) == 0.5  # tie is a miss
    neg = torch.tensor([[1.0, 1.9], [0.0, 0.5], [0.4, 0.6], [-1.0, -2.0]])  # (N, M)
    assert itm_accuracy(pos, neg) == 0.75
    with pytest.raises(ValueError, match="rows"):
        itm_accuracy(pos, torch.zeros(3))


# --------------------------------------------------------------------------- VQA


def test_vqa_soft_score_and_exact_match():
    assert normalize_answer(" The Two. ") == "2"
    preds = ["red", "two", "yes", "cat"]
    humans = [
        ["red"] * 10,  # 10 agree -> 1
        ["2", "2", "3", "3", "3", "3", "3", "3", "3", "3"],  # 2 of 10 -> 2/3
        ["no"] * 9 + ["yes"],  # 1 of 10 -> 1/3
        ["dog"] * 10,  # 0
    ]
    r = vqa_accuracy(preds, humans, qtypes=["color", "count", "yesno", "what"])
    assert r["color"] == 1.0 and r["count"] == pytest.approx(2 / 3)
    assert r["yesno"] == pytest.approx(1 / 3) and r["what"] == 0.0
    assert r["overall"] == pytest.approx((1 + 2 / 3 + 1 / 3 + 0) / 4)
    exact = vqa_accuracy(["Red", "blue", "3 "], ["red", "green", "three"])
    assert exact == {"overall": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="predictions"):
        vqa_accuracy(["a"], ["a", "b"])
    with pytest.raises(TypeError, match="sequences"):
        vqa_accuracy("red", "red")


# --------------------------------------------------------------------------- embeddings


def test_embed_dataset_concatenates_without_grad():
    lin = torch.nn.Linear(3, 2)
    loader = [{"x": torch.randn(4, 3)}, {"x": torch.randn(2, 3)}]
    grads = []

    def fn(batch):
        grads.append(torch.is_grad_enabled())
        y = lin(batch["x"])
        return {"emb": y, "norm": y.norm(dim=-1)}

    out = embed_dataset(fn, loader, device="cpu")
    assert out["emb"].shape == (6, 2) and out["norm"].shape == (6,)
    assert not out["emb"].requires_grad and grads == [False, False]
    torch.testing.assert_close(out["emb"][4:], lin(loader[1]["x"]).detach())
    pair = embed_dataset(lambda b: (b["x"], b["x"] * 2), loader)
    assert isinstance(pair, tuple) and pair[1].shape == (6, 3)
    with pytest.raises(ValueError, match="no batches"):
        embed_dataset(fn, [])


# --------------------------------------------------------------------------- linear probe


def test_linear_probe_reads_a_linear_class_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    centres = torch.randn(3, 8, generator=g) * 3
    x = centres[y] + torch.randn(300, 8, generator=g)  # (300, 8) separable clusters
    assert linear_probe(x, y, n_train=200) > 0.95
    noise = torch.randn(300, 8, generator=g)  # features that carry no class
    assert linear_probe(noise, y, n_train=200) < 0.6
    # deterministic, and the global random state is left alone
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a = linear_probe(x, y, n_train=200)
    assert torch.rand(1).item() == before.item()
    assert linear_probe(x, y, n_train=200) == a
    # only the held-out rows are scored: a probe fit on rows whose labels are shuffled fails
    y_bad = y.clone()
    y_bad[:200] = y_bad[:200][torch.randperm(200, generator=g)]
    assert linear_probe(x, y_bad, n_train=200) < 0.6


def test_linear_probe_rejects_bad_input():
    x, y = torch.randn(10, 4), torch.arange(10) % 2
    with pytest.raises(ValueError, match="n_train"):
        linear_probe(x, y, n_train=10)
    with pytest.raises(ValueError, match="rows of features"):
        linear_probe(x, y[:9], n_train=5)
    with pytest.raises(TypeError, match="integer indices"):
        linear_probe(x, y.float(), n_train=5)
    with pytest.raises(ValueError, match=r"outside \[0, inf\)"):
        linear_probe(x, y - 1, n_train=5)
