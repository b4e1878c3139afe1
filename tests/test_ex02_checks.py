"""Exercise 02 (ViLT) checks: right solutions pass; deliberately broken ones fail with a message
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
    summary_prefix,
)

from minivlm.grading import check, get_check, list_checks
from minivlm.grading.student import generate_student
from minivlm.models.vilt import build_single_stream_input as lib_build

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "exercises" / "02_vilt_fusion.ipynb"
EXERCISE = "02_vilt_fusion"
SEED = 1234


# ----------------------------------------------------------------------------- single stream
def make_stream(*, order="text_first", types=(0, 1), add_types=True, mask_order="text_first",
                ones_mask=False, squeeze=False, float32=False):
    def build_single_stream_input(text_embeds, image_embeds, text_mask, image_mask,
                                  type_embedding):
        B, T, _ = text_embeds.shape
        N1 = image_embeds.shape[1]
        text, image = text_embeds, image_embeds
        if float32:
            text, image = text.float(), image.float()
        if add_types:
            text = text + type_embedding(torch.full((B, T), types[0], dtype=torch.long))
            image = image + type_embedding(torch.full((B, N1), types[1], dtype=torch.long))
        x = torch.cat([text, image] if order == "text_first" else [image, text], dim=1)
        masks = [text_mask, image_mask.to(text_mask.dtype)]
        mask = torch.cat(masks if mask_order == "text_first" else masks[::-1], dim=1)
        if ones_mask:
            mask = torch.ones_like(mask)
        if squeeze:
            x, mask = x.squeeze(), mask.squeeze()
        if float32:
            x = x.float()
        return x, mask

    return build_single_stream_input


def stream_by_weight_rows(text_embeds, image_embeds, text_mask, image_mask, type_embedding):
    """A right solution that indexes the embedding table instead of calling it."""
    w = type_embedding.weight  # (2, D)
    x = torch.cat([text_embeds + w[0], image_embeds + w[1]], dim=1)
    return x, torch.cat([text_mask, image_mask.to(text_mask.dtype)], dim=1)


# ----------------------------------------------------------------------------- ITM loss
def make_itm(*, flip=False, dim=1, reduce="mean", by_softplus=False):
    def itm_loss(pos_logits, neg_logits):
        if by_softplus:  # 2-way CE = softplus of the other class's margin
            return torch.cat([F.softplus(pos_logits[:, 0] - pos_logits[:, 1]),
                              F.softplus(neg_logits[:, 1] - neg_logits[:, 0])]).mean()
        logits = torch.cat([pos_logits, neg_logits])
        labels = torch.cat([torch.ones(len(pos_logits)), torch.zeros(len(neg_logits))]).long()
        if flip:
            labels = 1 - labels
        logp = logits.log_softmax(dim=dim)
        nll = -logp.gather(1, labels[:, None])[:, 0]  # (B+M,)
        if reduce == "mean":
            return nll.mean()
        if reduce == "all":  # mean over rows and the 2 classes
            return -(logp * F.one_hot(labels, 2)).mean()
        if reduce == "means":
            return (nll[: len(pos_logits)].mean() + nll[len(pos_logits):].mean()) / 2
        return nll.sum()

    return itm_loss


RIGHT = [
    ("build_single_stream_input", lib_build),
    ("build_single_stream_input", make_stream()),
    ("build_single_stream_input", stream_by_weight_rows),
    ("itm_loss", make_itm()),
    ("itm_loss", make_itm(by_softplus=True)),
    ("itm_loss", lambda p, n: F.cross_entropy(
        torch.cat([p, n]), torch.cat([torch.ones(len(p)), torch.zeros(len(n))]).long())),
]


@pytest.mark.parametrize("name,fn", RIGHT, ids=[f"{n}-{i}" for i, (n, _) in enumerate(RIGHT)])
def test_right_solutions_pass(name, fn):
    # the library's own function is right too; graded, it would earn 0 (not self-written)
    r = check(name, fn, seed=SEED, allow_library=True)
    assert r.passed, str(r)
    assert r.points == r.max_points == get_check(name).points
    assert r.status == "passed"


BROKEN = [
    ("build_single_stream_input", make_stream(order="image_first", mask_order="image_first"),
     ["values differ", "image comes first", "text [CLS]"]),
    ("build_single_stream_input", make_stream(order="image_first"),
     ["values differ", "image comes first", "same order"]),
    ("build_single_stream_input", make_stream(types=(1, 0)),
     ["values differ", "modality-type ids are swapped"]),
    ("build_single_stream_input", make_stream(add_types=False),
     ["values differ", "no modality-type embedding was added"]),
    ("build_single_stream_input", make_stream(mask_order="image_first"),
     ["mask", "wrong order"]),
    ("build_single_stream_input", make_stream(ones_mask=True),
     ["mask", "all ones", "padded"]),
    ("build_single_stream_input", make_stream(squeeze=True), ["batch of size 1"]),
    ("build_single_stream_input", make_stream(float32=True), ["dtype float32 but expected "
                                                              "float64"]),
    ("itm_loss", make_itm(flip=True), ["values differ", "labels are flipped"]),
    ("itm_loss", make_itm(dim=0), ["values differ", "over the batch (dim=0)"]),
    ("itm_loss", make_itm(reduce="all"), ["values differ", "over the 2 classes as well"]),
    ("itm_loss", make_itm(reduce="means"), ["values differ", "M != B", "all B+M pairs"]),
    ("itm_loss", make_itm(reduce="sum"), ["values differ", "take their mean"]),
]


@pytest.mark.parametrize("name,fn,words", BROKEN,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BROKEN)])
def test_broken_solutions_fail_with_a_pointed_message(name, fn, words):
    assert_broken_fails_pointedly(name, fn, words, SEED, kind=summary_prefix)


def test_exercise_02_registers_its_checks():
    names = [c.name for c in list_checks(EXERCISE)]
    assert names == ["build_single_stream_input", "itm_loss", "whole_word_choice",
                     "corrupt_chosen", "mask_colour_words", "train_colour_mlm"]
    assert sum(c.points for c in list_checks(EXERCISE)) == 13
    for c in list_checks(EXERCISE)[:2]:
        assert c.grad, c.name


# ----------------------------------------------------------------------------- the notebooks
def test_source_passes_all_checks_and_student_fails_them_cleanly():
    stu_code = assert_source_passes_student_fails(SOURCE, EXERCISE, 6, timeout=60, seed=SEED)
    assert "BEGIN SOLUTION" not in stu_code and "torch.cat([text" not in stu_code
    assert "def build_single_stream_input(text_embeds" in stu_code
    assert "def itm_loss(pos_logits" in stu_code
    assert "def whole_word_choice(continuation" in stu_code and ".cumsum(" not in stu_code
    assert "def corrupt_chosen(input_ids" in stu_code and "to_random =" not in stu_code
    assert "def mask_colour_words(input_ids" in stu_code
    assert "def train_colour_mlm(num_objects" in stu_code and "opt.step()" not in stu_code


def test_committed_student_notebook_is_up_to_date():
    assert generate_student(SOURCE, check=True).status == "unchanged", (
        "run `python -m minivlm student exercises/02_vilt_fusion.ipynb`")


# ----------------------------------------------------------------------------- part 3: masking
from minivlm.grading.checks.ex02_vilt_mlm import _mask_variant  # noqa: E402
from minivlm.recipes import vilt_mlm  # noqa: E402


def mask_by_comparison(input_ids, colour_ids, mask_id):
    """Right, written differently: a broadcast comparison and torch.where."""
    hide = (input_ids[..., None] == colour_ids).any(-1)  # (B, T)
    return (torch.where(hide, torch.full_like(input_ids, mask_id), input_ids),
            torch.where(hide, input_ids, torch.full_like(input_ids, -100)))


def mask_in_place(input_ids, colour_ids, mask_id):
    hide = torch.isin(input_ids, colour_ids)
    labels = input_ids.masked_fill(~hide, -100)
    input_ids[hide] = mask_id  # changes the caller's tensor
    return input_ids, labels


def test_mask_colour_words_right_ways_pass():
    assert check("mask_colour_words", vilt_mlm.reference_mask_colour_words, seed=SEED,
                 allow_library=True).passed
    r = check("mask_colour_words", mask_by_comparison, seed=SEED)
    assert r.passed and r.points == 2, str(r)


@pytest.mark.parametrize("kind, words", [
    ("first_only", ["masked_ids", "every colour word"]),
    ("labels_everywhere", ["labels", "-100"]),
    ("labels_are_mask", ["labels", "original word"]),
    ("inverted", ["labels", "inverted"]),
    ("ignore_zero", ["labels", "not 0"]),
    ("not_masked", ["masked_ids", "input is unchanged"]),
    ("mask_all", ["masked_ids", "every token was masked"]),
])
def test_mask_colour_words_broken_fails_pointedly(kind, words):
    assert_broken_fails_pointedly("mask_colour_words", _mask_variant(kind), words, SEED,
                                  kind=summary_prefix)


def test_mask_colour_words_in_place_fails():
    r = check("mask_colour_words", mask_in_place, seed=SEED)
    assert not r.passed and "in place" in r.summary, str(r)


# ----------------------------------------------------------------------------- part 3: training
def make_train(kind="right"):
    """The exercise's training loop with one deliberate mistake."""

    def train_colour_mlm(num_objects, seed):
        run = vilt_mlm.MLMRun()
        data = vilt_mlm.scenes(num_objects, seed, run)
        model = vilt_mlm.new_vilt(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=run.lr)
        model.train()
        for idx in vilt_mlm.batches(seed, len(data["input_ids"]), run):
            if kind == "untrained":
                break
            ids = data["input_ids"][idx]
            masked, labels = mask_by_comparison(ids, data["colour_ids"], data["mask_id"])
            if kind == "unmasked":  # the colour words stay visible: the model copies them
                masked = ids
            out = model(input_ids=masked, attention_mask=data["attention_mask"][idx],
                        pixel_values=data["pixel_values"][idx], mlm_labels=labels)
            loss = out.loss_mlm  # the model's own MLM loss: the same cross-entropy
            opt.zero_grad()
            loss.backward()
            opt.step()
        return torch.tensor([vilt_mlm.colour_accuracy(model, data)])

    return train_colour_mlm


def test_train_check_fails_broken_loops():
    # the right loop passes in test_source_passes_all_checks_and_student_fails_them_cleanly
    # (the notebook's solution, through the grader's call monitor); here the monitor is off
    torch.set_num_threads(1)
    broken = {kind: make_train(kind) for kind in ("unmasked", "untrained")}
    assert_trained_broken_fail("train_colour_mlm", broken, "did not learn the colours", SEED)


def test_train_check_untouched_is_not_attempted():
    assert_untouched_is_not_attempted("train_colour_mlm", "num_objects, seed", SEED)


# ----------------------------------------------------------------------------- part 3: whole words
from minivlm.grading.checks.ex02_vilt_masking import (  # noqa: E402
    _choice_variant,
    _corrupt_variant,
)


def choice_by_loop(continuation, special, word_noise, prob):
    """Right, written as a learner might: walk each row, counting the words."""
    chosen = torch.zeros_like(special)
    for b in range(continuation.shape[0]):
        k = -1
        for t in range(continuation.shape[1]):
            k += int(not continuation[b, t])
            chosen[b, t] = bool(word_noise[b, k] < prob) and not bool(special[b, t])
    return chosen


def corrupt_by_clone(input_ids, chosen, how, random_ids, mask_id):
    """Right, written with a copy and boolean indexing."""
    masked = input_ids.clone()
    masked[chosen & (how < 0.8)] = mask_id
    rnd = chosen & (how >= 0.8) & (how < 0.9)
    masked[rnd] = random_ids[rnd]
    labels = torch.full_like(input_ids, -100)
    labels[chosen] = input_ids[chosen]
    return masked, labels


def _hint(summary: str) -> str:
    """The hint a failed check ends its summary with (the numbers before it vary by seed)."""
    return summary.split("(hint: ")[-1][:40]


def test_whole_word_checks_pass_right_ways():
    from minivlm import objectives

    for name, fn in [("whole_word_choice", objectives.whole_word_choice),
                     ("corrupt_chosen", objectives.corrupt_chosen)]:
        assert check(name, fn, seed=SEED, allow_library=True).passed  # the library's own
    for name, fn in [("whole_word_choice", choice_by_loop),
                     ("corrupt_chosen", corrupt_by_clone)]:
        r = check(name, fn, seed=SEED)
        assert r.passed and r.points == get_check(name).points, str(r)


@pytest.mark.parametrize("kind, words", [
    ("per_piece", ["drawn on its own", "masks pieces, not words"]),
    ("off_by_one", ["off by one", "subtract 1"]),
    ("count_pieces", ["counted the '##' pieces"]),
    ("first_piece_only", ["only the first piece"]),
    ("above", ["below prob"]),
    ("special_too", ["special tokens never are"]),
])
def test_whole_word_choice_broken_fails_pointedly(kind, words):
    assert_broken_fails_pointedly("whole_word_choice", _choice_variant(kind), words, SEED,
                                  kind=_hint)


@pytest.mark.parametrize("kind, words", [
    ("labels_at_mask_only", ["labels", "every chosen position"]),
    ("swap_random_keep", ["masked_ids", "swapped"]),
    ("all_mask", ["masked_ids", "keeps 10 % unchanged"]),
    ("ignore_chosen", ["masked_ids", "not chosen were replaced"]),
    ("labels_are_inputs", ["labels", "corrupted ids"]),
    ("ignore_zero", ["labels", "not 0"]),
])
def test_corrupt_chosen_broken_fails_pointedly(kind, words):
    assert_broken_fails_pointedly("corrupt_chosen", _corrupt_variant(kind), words, SEED,
                                  kind=summary_prefix)


def test_corrupt_chosen_in_place_fails():
    def in_place(input_ids, chosen, how, random_ids, mask_id):
        labels = input_ids.masked_fill(~chosen, -100)
        input_ids[chosen & (how < 0.8)] = mask_id  # changes the caller's tensor
        rnd = chosen & (how >= 0.8) & (how < 0.9)
        input_ids[rnd] = random_ids[rnd]
        return input_ids, labels

    r = check("corrupt_chosen", in_place, seed=SEED)
    assert not r.passed and "in place" in r.summary, str(r)
