"""Exercise 04 (BLIP-2) checks: right solutions pass; deliberately broken ones fail with a message
that names the mistake; the instructor source passes every check and its generated student
version fails them as "not attempted"."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from exercise_helpers import (
    assert_broken_fails_pointedly,
    assert_source_passes_student_fails,
    assert_trained_broken_fail,
    assert_untouched_is_not_attempted,
)

from minivlm.grading import check, get_check, list_checks
from minivlm.grading.student import generate_student
from minivlm.models.blip2 import itc_similarity, qformer_masks

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "exercises" / "04_qformer_masks.ipynb"
EXERCISE = "04_qformer_masks"
SEED = 1234


# ----------------------------------------------------------------------------- masks
def blocks(Q, T, *, qq=True, qt=False, tq=True, tt="causal", diag=0, text_first=False,
           dtype=torch.bool, transpose=False, invert=False):
    """A learner-style mask from its four blocks, filled with slices."""
    n = Q + T
    m = torch.zeros(n, n, dtype=torch.bool)
    q = slice(T, n) if text_first else slice(0, Q)
    t = slice(0, T) if text_first else slice(Q, n)
    m[q, q] = qq
    m[q, t] = qt
    m[t, q] = tq
    if tt == "causal":
        m[t, t] = torch.ones(T, T, dtype=torch.bool).tril(diagonal=diag)
    else:
        m[t, t] = tt
    if transpose:
        m = m.T
    if invert:
        m = ~m
    return m.to(dtype)


def itc_blocks(Q, T, **kw):
    return blocks(Q, T, **{"tq": False, "tt": True, **kw})


def itg_by_tril(Q, T):  # a right ITG: causal over everything, then the query rows fixed
    m = torch.ones(Q + T, Q + T, dtype=torch.bool).tril()
    m[:Q] = False
    m[:Q, :Q] = True
    return m


def itc_by_compare(Q, T):  # a right ITC: "same modality"
    is_q = torch.arange(Q + T) < Q
    return is_q[:, None] == is_q[None, :]


def itc_block_diag(Q, T):  # a right ITC with torch.block_diag (works for T = 0 too)
    return torch.block_diag(torch.ones(Q, Q), torch.ones(T, T)).bool()


def itg_arith(Q, T):  # a right ITG from index arithmetic
    i = torch.arange(Q + T)[:, None]
    j = torch.arange(Q + T)[None, :]
    return ((i < Q) & (j < Q)) | ((i >= Q) & (j <= i))


def itm_squeezed(Q, T):  # (Q+T, Q+T) ones built from a (1, n) row: right
    return torch.ones(1, Q + T, dtype=torch.bool).expand(Q + T, -1)


# ----------------------------------------------------------------------------- ITC score
def make_score(*, reduce="max", norm=True, norm_text=True, out="ij", scale=1.0, via="einsum",
               squeeze=False, float32=False, detach=False):
    def itc_score(query_embeds, text_embeds):
        q, t = query_embeds, text_embeds
        B, Qn, D = q.shape
        if via == "view":  # flattens the queries with .view: fails on non-contiguous input
            q = q.view(B * Qn, D)
        if float32:
            q, t = q.float(), t.float()
        if norm:
            q = q / q.norm(dim=-1, keepdim=True)
        if norm_text:
            t = t / t.norm(dim=-1, keepdim=True)
        if detach:
            q = q.detach()
        if via == "matmul":  # (B_i, Q, D) @ (D, B_t) -> (B_i, Q, B_t)
            sim = (q @ t.T).permute(0, 2, 1)  # (B_i, B_t, Q)
        elif via == "view":
            sim = (q @ t.T).view(B, Qn, -1).permute(0, 2, 1)
        elif via == "loop":
            sim = torch.stack([torch.stack([q[i] @ t[j] for j in range(t.shape[0])])
                               for i in range(q.shape[0])])  # (B_i, B_t, Q)
        else:
            sim = torch.einsum("iqd,jd->ijq", q, t)
        if reduce == "max":
            s = sim.max(dim=-1).values
        elif reduce == "amax":
            s = sim.amax(dim=-1)
        elif reduce == "mean":
            s = sim.mean(dim=-1)
        elif reduce == "max_d":  # max over D of the elementwise products, then over Q
            s = (q[:, None] * t[None, :, None]).amax(-1).amax(-1)
        elif reduce == "max_texts":
            s = (q @ t.T).max(dim=-1).values  # (B_i, Q)
        elif reduce == "max_images":
            s = sim.max(dim=0).values  # (B_t, Q)
        s = s * scale
        if out == "ji":
            s = s.T
        return s.squeeze() if squeeze else s

    return itc_score


def score_cosine_similarity(query_embeds, text_embeds):  # right, with F.cosine_similarity
    sim = F.cosine_similarity(query_embeds[:, None], text_embeds[None, :, None], dim=-1)
    return sim.max(dim=-1).values  # (B_i, B_t)


def score_via_library(query_embeds, text_embeds):
    return itc_similarity(F.normalize(query_embeds, dim=-1), F.normalize(text_embeds, dim=-1))


# ----------------------------------------------------------------------------- ITC loss
def nll_diagonal(logp):  # -log p(positive), the positives on the diagonal
    return -logp.diagonal().mean()


def make_loss(kind):
    """An ITC loss written the ways a learner might: right ("ce", "log_softmax", "logsumexp")
    or with one mistake. "i2t_only", "t2i_only": one direction; "rows_twice", "cols_twice":
    the second half's softmax over the same axis as the first (log_softmax of logits.T over
    dim=0; F.cross_entropy(logits.T, ...) twice)."""

    def itc_loss(scores, temp):
        logits = scores / temp  # (B, B)
        y = torch.arange(len(scores))
        i2t, t2i = F.cross_entropy(logits, y), F.cross_entropy(logits.T, y)
        return {
            "ce": lambda: (i2t + t2i) / 2,
            "log_softmax": lambda: (nll_diagonal(logits.log_softmax(dim=1))
                                    + nll_diagonal(logits.log_softmax(dim=0))) / 2,
            "logsumexp": lambda: ((logits.logsumexp(1) + logits.logsumexp(0)) / 2
                                  - logits.diagonal()).mean(),
            "i2t_only": lambda: i2t,
            "t2i_only": lambda: t2i,
            "rows_twice": lambda: (nll_diagonal(logits.log_softmax(dim=1))
                                   + nll_diagonal(logits.T.log_softmax(dim=0))) / 2,
            "cols_twice": lambda: (F.cross_entropy(logits.T, y) + t2i) / 2,
            "whole_matrix": lambda: nll_diagonal(logits.flatten().log_softmax(0).view_as(logits)),
            "summed": lambda: i2t + t2i,
            "no_temperature": lambda: (F.cross_entropy(scores, y)
                                       + F.cross_entropy(scores.T, y)) / 2,
            "temperature_detached": lambda: (F.cross_entropy(scores / temp.item(), y)
                                             + F.cross_entropy(scores.T / temp.item(), y)) / 2,
            "sign_flipped": lambda: -(i2t + t2i) / 2,
        }[kind]()

    return itc_loss


RIGHT = [
    ("itc_mask", lambda Q, T: qformer_masks(Q, T)["itc"]),
    ("itc_mask", itc_blocks),
    ("itc_mask", itc_by_compare),
    ("itc_mask", itc_block_diag),
    ("itm_mask", lambda Q, T: qformer_masks(Q, T)["itm"]),
    ("itm_mask", lambda Q, T: torch.ones(Q + T, Q + T, dtype=torch.bool)),
    ("itm_mask", lambda Q, T: torch.ones(Q + T, Q + T) > 0),
    ("itm_mask", itm_squeezed),
    ("itg_mask", lambda Q, T: qformer_masks(Q, T)["itg"]),
    ("itg_mask", blocks),
    ("itg_mask", itg_by_tril),
    ("itg_mask", itg_arith),
    ("itc_score", score_via_library),
    ("itc_score", make_score()),
    ("itc_score", make_score(reduce="amax", via="matmul")),
    ("itc_score", make_score(via="loop")),
    ("itc_score", score_cosine_similarity),
    ("itc_loss", make_loss("ce")),
    ("itc_loss", make_loss("log_softmax")),
    ("itc_loss", make_loss("logsumexp")),
]


@pytest.mark.parametrize("name,fn", RIGHT, ids=[f"{n}-{i}" for i, (n, _) in enumerate(RIGHT)])
def test_right_solutions_pass(name, fn):
    r = check(name, fn, seed=SEED)
    assert r.passed, str(r)
    assert r.points == r.max_points == get_check(name).points
    assert r.status == "passed"


def test_references_are_the_library_functions():
    """The mask checks' references are qformer_masks; the score's is itc_similarity on
    normalised inputs, without a temperature (values are cosines in [-1, 1])."""
    for Q, T in ((4, 6), (1, 1), (5, 0)):
        masks = qformer_masks(Q, T)
        for kind in ("itc", "itm", "itg"):
            got = get_check(f"{kind}_mask").resolve_reference()(Q, T)
            assert got.dtype == torch.bool and torch.equal(got, masks[kind])
    g = torch.Generator().manual_seed(0)
    q, t = torch.randn(3, 4, 8, generator=g) * 5, torch.randn(2, 8, generator=g) * 5
    ref = get_check("itc_score").resolve_reference()(q, t)
    manual = torch.tensor([[max(F.cosine_similarity(q[i, k], t[j], dim=0).item()
                                for k in range(4)) for j in range(2)] for i in range(3)])
    assert ref.shape == (3, 2) and torch.allclose(ref, manual, atol=1e-6)
    assert ref.abs().max() <= 1


# (check, broken function, words the message must contain)
BROKEN = [
    # ITC mask
    ("itc_mask", lambda Q, T: itc_blocks(Q, T, tq=True),
     ["entries differ", "the text can see the queries"]),
    ("itc_mask", lambda Q, T: itc_blocks(Q, T, qt=True),
     ["entries differ", "the queries can see the text"]),
    ("itc_mask", lambda Q, T: itc_blocks(Q, T, qt=True, tq=True), ["that is the ITM mask"]),
    ("itc_mask", lambda Q, T: itc_blocks(Q, T, tt=False), ["only the query block"]),
    ("itc_mask", lambda Q, T: itc_blocks(Q, T, tt="causal"), ["the text part is causal"]),
    ("itc_mask", lambda Q, T: itc_blocks(Q, T, invert=True), ["inverted", "may attend"]),
    ("itc_mask", lambda Q, T: itc_blocks(Q, T, text_first=True),
     ["layout is [queries; text]", "text first"]),
    ("itc_mask", lambda Q, T: itc_blocks(Q, T, dtype=torch.float32),
     ["dtype float32 but expected bool", "dtype=torch.bool"]),
    ("itc_mask", lambda Q, T: itc_blocks(Q, T, dtype=torch.long),
     ["dtype int64 but expected bool"]),
    ("itc_mask", lambda Q, T: torch.ones(Q, T, dtype=torch.bool),
     ["output shape (4, 6) but expected (10, 10)", "square"]),
    ("itc_mask", lambda Q, T: torch.block_diag(torch.ones(Q, Q), torch.ones(T, T)),
     ["dtype float32 but expected bool"]),
    # ITM mask
    ("itm_mask", lambda Q, T: torch.ones(Q + T, Q + T),
     ["dtype float32 but expected bool", "dtype=torch.bool"]),
    ("itm_mask", lambda Q, T: torch.zeros(Q + T, Q + T, dtype=torch.bool),
     ["100 of 100 entries differ", "inverted"]),
    ("itm_mask", itc_blocks, ["that is the ITC mask"]),
    ("itm_mask", blocks, ["that is the ITG mask"]),
    ("itm_mask", lambda Q, T: torch.ones(Q, Q, dtype=torch.bool),
     ["output shape (4, 4)", "not (Q, Q)"]),
    # ITG mask
    ("itg_mask", lambda Q, T: blocks(Q, T, diag=-1),
     ["entries differ", "off by one", "attend to itself"]),
    ("itg_mask", lambda Q, T: blocks(Q, T, diag=1), ["off by one", "into the future"]),
    ("itg_mask", lambda Q, T: blocks(Q, T, qt=True), ["the queries can see the text",
                                                      "information leak"]),
    ("itg_mask", lambda Q, T: torch.ones(Q + T, Q + T, dtype=torch.bool).tril(),
     ["plain causal mask", "queries see all queries"]),
    ("itg_mask", lambda Q, T: blocks(Q, T, tq=False), ["the text cannot see the queries"]),
    ("itg_mask", lambda Q, T: blocks(Q, T, tt=True), ["the text is bi-directional"]),
    ("itg_mask", lambda Q, T: blocks(Q, T, transpose=True), ["transposed"]),
    ("itg_mask", lambda Q, T: blocks(Q, T, invert=True), ["inverted"]),
    ("itg_mask", lambda Q, T: blocks(Q, T, text_first=True), ["layout is [queries; text]"]),
    ("itg_mask", lambda Q, T: blocks(Q, T, dtype=torch.float32),
     ["dtype float32 but expected bool", "dtype=torch.bool"]),
    ("itg_mask", lambda Q, T: qformer_masks(Q, T)["itm"], ["that is the ITM mask"]),
    # ITC score
    ("itc_score", make_score(reduce="mean"), ["values differ", "averaged over the queries",
                                              "max"]),
    ("itc_score", make_score(reduce="max_d"), ["values differ", "max over the embedding axis"]),
    ("itc_score", make_score(reduce="max_texts"),
     ["output shape (5, 4) but expected (5, 3) = (B_img, B_txt)", "max over the texts"]),
    ("itc_score", make_score(reduce="max_images"),
     ["output shape (3, 4) but expected (5, 3)", "max over the images"]),
    ("itc_score", make_score(norm=False, norm_text=False), ["values differ", "not normalised"]),
    ("itc_score", make_score(norm_text=False), ["values differ", "normalise the text"]),
    ("itc_score", make_score(out="ji"), ["output shape (3, 5) but expected (5, 3)",
                                         "(B_txt, B_img)"]),
    ("itc_score", make_score(scale=1 / 0.07), ["values differ", "temperature"]),
    ("itc_score", make_score(squeeze=True), ["output shape", "B_img = 1", ".squeeze()"]),
    ("itc_score", make_score(via="view"), ["raised RuntimeError", "not .view"]),
    ("itc_score", make_score(float32=True), ["dtype float32 but expected float64"]),
    ("itc_score", make_score(detach=True), ["values match",
                                            "does not depend on query_embeds"]),
    # ITC loss: what the training check (part 5) cannot tell from the right loss (see
    # ex04_qformer_train's docstring), caught here by its own check
    ("itc_loss", make_loss("i2t_only"), ["values differ", "image->text half alone"]),
    ("itc_loss", make_loss("t2i_only"), ["values differ", "text->image half alone"]),
    ("itc_loss", make_loss("rows_twice"), ["image->text half alone",
                                           "its softmax runs over the rows again"]),
    ("itc_loss", make_loss("cols_twice"), ["text->image half alone",
                                           "its softmax runs over the columns again"]),
    ("itc_loss", make_loss("whole_matrix"), ["values differ", "all B*B entries"]),
    ("itc_loss", make_loss("summed"), ["values differ", "summed the two halves"]),
    ("itc_loss", make_loss("no_temperature"), ["values differ",
                                               "did not divide by the temperature"]),
    ("itc_loss", make_loss("temperature_detached"), ["values match",
                                                     "does not depend on temp"]),
    ("itc_loss", make_loss("sign_flipped"), ["values differ", "sign is flipped"]),
]


@pytest.mark.parametrize("name,fn,words", BROKEN,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BROKEN)])
def test_broken_solutions_fail_with_a_pointed_message(name, fn, words):
    assert_broken_fails_pointedly(name, fn, words, SEED)


def test_square_and_tiny_batches_are_checked_too():
    """A transposed score is caught on a square batch by its values; the mask checks include
    Q = 1, T = 1 and T = 0, and the score check B = 1 and Q = 1."""
    chk = get_check("itc_score")
    cases = list(chk.cases(torch.Generator().manual_seed(0)))
    shapes = [(tuple(c.args[0].shape), tuple(c.args[1].shape)) for c in cases]
    assert any(q[0] == t[0] for q, t in shapes)  # a square batch
    assert any(q[0] != t[0] for q, t in shapes)  # non-square batches
    assert any(q[1] == 1 for q, _ in shapes)  # Q = 1
    assert any(q[0] == 1 for q, _ in shapes) and any(t[0] == 1 for _, t in shapes)  # B = 1
    square = next(c for c in cases if c.args[0].shape[0] == c.args[1].shape[0])
    got = make_score(out="ji")(*square.args)
    ref = chk.resolve_reference()(*square.args)
    assert got.shape == ref.shape and not torch.allclose(got, ref)
    for kind in ("itc", "itm", "itg"):
        sizes = [c.args for c in get_check(f"{kind}_mask").cases(torch.Generator())]
        assert (1, 1) in sizes and any(q == 1 for q, _ in sizes)
        assert any(t == 1 for _, t in sizes) and any(t == 0 for _, t in sizes)


def test_an_unknown_mask_mistake_names_the_block():
    def leaks_one_entry(Q, T):  # right, except that the last text token sees the first query
        m = itc_blocks(Q, T)
        m[-1, 0] = True
        return m

    r = check("itc_mask", leaks_one_entry, seed=SEED)
    assert not r.passed and "1 of 100 entries differ" in r.message
    assert "text rows x query columns block" in r.message, r.message


def test_an_unknown_score_mistake_gets_a_hint():
    def min_over_queries(query_embeds, text_embeds):
        q, t = F.normalize(query_embeds, dim=-1), F.normalize(text_embeds, dim=-1)
        return torch.einsum("iqd,jd->ijq", q, t).amin(dim=-1)

    r = check("itc_score", min_over_queries, seed=SEED)
    assert not r.passed and "*largest*" in r.message, r.message

    def dot_scaled(query_embeds, text_embeds):  # unnormalised dot product, halved
        return torch.einsum("iqd,jd->ijq", query_embeds, text_embeds).amax(-1) / 2

    r = check("itc_score", dot_scaled, seed=SEED)
    assert not r.passed and "lie in [-1, 1]" in r.message, r.message


def test_exercise_04_registers_its_checks():
    names = [c.name for c in list_checks(EXERCISE)]
    assert names == ["itc_mask", "itm_mask", "itg_mask", "itc_score", "itc_loss", "train_stage1"]
    assert sum(c.points for c in list_checks(EXERCISE)) == 12
    assert get_check("itc_score").grad and get_check("itc_loss").grad


# ----------------------------------------------------------------------------- the notebooks
@pytest.mark.usefixtures("reuse_references")  # the training reference runs once per process
def test_source_passes_all_checks_and_student_fails_them_cleanly():
    stu_code = assert_source_passes_student_fails(SOURCE, EXERCISE, 6, timeout=60, seed=SEED)
    assert "BEGIN SOLUTION" not in stu_code
    for solution in ("is_query[:, None]", ".tril()", "amax(dim=-1)", "F.normalize(query_embeds",
                     "F.cross_entropy(logits.T"):
        assert solution not in stu_code, solution
    for signature in ("def itc_mask(num_query", "def itm_mask(num_query",
                      "def itg_mask(num_query", "def itc_score(query_embeds",
                      "def itc_loss(scores"):
        assert signature in stu_code
    assert "qformer_masks_by_blocks" not in stu_code  # the solution-tagged cell is dropped
    assert "def train_stage1(seed" in stu_code and "loss_itg =" not in stu_code
    # the training step's ITC loss is the learner's checked itc_loss, a given line
    assert "loss_itc = itc_loss(sim, model.temp)" in stu_code


def test_committed_student_notebook_is_up_to_date():
    assert generate_student(SOURCE, check=True).status == "unchanged", (
        "run `python -m minivlm student exercises/04_qformer_masks.ipynb`")


# ----------------------------------------------------------------------------- part 5: training
# (needs the zoo's shapes_clip: `minivlm zoo build`, which `make test` runs first)
def make_train(kind):
    """Exercise 04's training loop (the recipe's reference, the library's masks and score) with
    one deliberate mistake, swapped in through the reference's hooks."""
    from minivlm.recipes import qformer_stage1 as stage1

    def leaky_masks(seed):  # the text sees the whole caption, the future included
        Q, T = stage1.Stage1Run().num_query, stage1.pairs(seed)["input_ids"].shape[1]
        masks = qformer_masks(Q, T)
        masks["itg"][Q:, Q:] = True
        return masks

    mistakes = {
        "leaky_itg_mask": lambda seed: {"masks": leaky_masks(seed)},
        "no_temperature": lambda seed: {"itc_logits": lambda sim, temp: sim},
        "itg_sign_flipped": lambda seed: {"total_loss": lambda itc, itg: itc - itg},
    }

    def train_stage1(seed):
        return stage1.reference_train_stage1(seed, **mistakes[kind](seed))

    return train_stage1


@pytest.mark.usefixtures("reuse_references")
def test_train_check_fails_a_leaky_mask_a_flipped_sign_and_no_temperature():
    # the right loop passes in test_source_passes_all_checks_and_student_fails_them_cleanly
    # (the notebook's solution, through the grader's call monitor); here the monitor is off
    torch.set_num_threads(1)
    assert_trained_broken_fail("train_stage1", {k: make_train(k) for k in (
        "leaky_itg_mask", "itg_sign_flipped")}, "does not read the colour", SEED)
    assert_trained_broken_fail("train_stage1", {"no_temperature": make_train("no_temperature")},
                               "temperature never moved", SEED)


def test_train_check_untouched_is_not_attempted():
    assert_untouched_is_not_attempted("train_stage1", "seed", SEED)
