"""Exercise 02, whole-word masking (ViLT, Kim et al. 2021, §3.3) and BERT's 80/10/10.

The learner writes

* ``whole_word_choice(continuation, special, word_noise, prob)``: which tokens MLM hides, one
  draw per *word*: the k-th word of a row (counting every token that is not a "##" piece as the
  start of a word) is chosen when ``word_noise[b, k] < prob``, and then every piece of it is;
  special tokens never are;
* ``corrupt_chosen(input_ids, chosen, how, random_ids, mask_id)``: BERT's replacement of the
  chosen tokens (80 % [MASK], 10 % a random id, 10 % unchanged) and the labels (the original id
  at every chosen position, -100 elsewhere).

The random numbers are arguments, so a right answer is exact (as in MAE's ``random_masking`` of
exercise 07); the library composes the same two steps in ``minivlm.objectives.mask_tokens``.
"""

from __future__ import annotations

import torch

from minivlm.grading.checks.ex02_vilt import EXERCISE
from minivlm.grading.core import Case, exercise_checks

Tensor = torch.Tensor
SPECIAL = {"cls": 2, "sep": 3, "pad": 0}
register_check = exercise_checks(EXERCISE)


# ----------------------------------------------------------------------------- word choice
def _choice_variant(kind: str):
    """A wrong whole-word choice: one step of the recipe changed."""

    def whole_word_choice(continuation, special, word_noise, prob):
        starts = ~continuation
        word = starts.long().cumsum(1) - 1  # (B, T)
        if kind == "per_piece":  # every piece its own draw: masks pieces, not words
            return (word_noise < prob) & ~special
        if kind == "off_by_one":  # words counted from 1
            word = (word + 1).clamp_max(word_noise.shape[1] - 1)
        if kind == "count_pieces":  # counts the continuation pieces instead of the starts
            word = continuation.long().cumsum(1)
        chosen = word_noise.gather(1, word) < prob
        if kind == "first_piece_only":
            chosen = chosen & starts
        if kind == "above":  # a word is chosen when its draw is *above* prob
            chosen = word_noise.gather(1, word) >= prob
        if kind == "special_too":
            return chosen
        return chosen & ~special

    return whole_word_choice


def _explain_choice(case: Case, got: list, expected: list) -> str | None:
    chosen = got[0]
    continuation, special = case.args[0], case.args[1]
    if chosen.dtype == torch.bool and bool((chosen & special).any()):
        return "a special token ([CLS], [SEP], [PAD]) was chosen: special tokens never are"
    word = (~continuation).long().cumsum(1) - 1
    c = chosen.bool()
    for b in range(c.shape[0]):
        for w in word[b].unique():
            if c[b][word[b] == w].unique().numel() > 1:
                return ("the pieces of one word got different answers: every piece of a word "
                        "takes its word's draw, word_noise[b, k] for the k-th word")
    return None


@register_check(
    "whole_word_choice(continuation, special, word_noise, prob)",
    "minivlm.objectives:whole_word_choice", points=2,
    returns="(B, T) bool",
    precise=False,  # a comparison with prob: the float32 reference is exact
    library=("minivlm.objectives:mask_tokens",),
    mistakes=[
        ("each piece was drawn on its own (word_noise at the token's position): that masks "
         "pieces, not words; count the words with a cumulative sum of the word starts and give "
         "every piece the draw of its word", _choice_variant("per_piece")),
        ("the word index is off by one: the first word ([CLS]) is word 0, so subtract 1 from "
         "the cumulative sum of the word starts", _choice_variant("off_by_one")),
        ("you counted the '##' pieces: a word starts at every token that is *not* a "
         "continuation, so count ~continuation", _choice_variant("count_pieces")),
        ("only the first piece of a chosen word was chosen: all of its pieces must be hidden "
         "together, or the model completes 'gi [MASK] ##fe' from the text alone",
         _choice_variant("first_piece_only")),
        ("a word is chosen when its draw is below prob (probability prob), not above it",
         _choice_variant("above")),
        ("a special token ([CLS], [SEP], [PAD]) was chosen: special tokens never are",
         _choice_variant("special_too")),
    ],
    explain=_explain_choice,
)
def whole_word_choice_cases(gen: torch.Generator):
    def rows(B: int, T: int, prob: float, *, pieces: float = 0.45, dtype=torch.float32,
             label: str, hint: str | None = None) -> Case:
        continuation = torch.zeros(B, T, dtype=torch.bool)
        special = torch.zeros(B, T, dtype=torch.bool)
        for b in range(B):  # [CLS] words... [SEP] [PAD]...
            L = int(torch.randint(max(3, T // 2), T + 1, (1,), generator=gen))
            if b == 0:
                L = T  # one row without padding
            continuation[b, 2:L - 1] = torch.rand(L - 3, generator=gen) < pieces
            special[b, 0] = special[b, L - 1] = True
            special[b, L:] = True
        noise = torch.rand(B, T, generator=gen, dtype=dtype)
        return Case(label, continuation, special, noise, prob, hint=hint)

    yield rows(4, 12, 0.5, label="4 captions of up to 12 WordPiece tokens, prob 0.5")
    yield rows(6, 16, 0.15, label="6 captions, the usual prob 0.15")
    yield rows(1, 9, 0.5, label="a batch of one caption",
               hint="with B = 1, .squeeze() drops the batch axis; keep (B, T)")
    yield rows(3, 10, 0.5, pieces=0.0, label="no '##' pieces: every token is a word",
               hint="without continuation pieces, word k is token k")
    yield rows(3, 14, 0.5, pieces=0.8, label="long words (most tokens are '##' pieces)")
    yield rows(3, 8, 1.0, label="prob 1: every word is chosen",
               hint="with prob 1 every token except the special ones is chosen")
    yield rows(3, 8, 0.0, label="prob 0: nothing is chosen")
    yield rows(2, 11, 0.5, dtype=torch.float64, label="float64 word_noise")


# ----------------------------------------------------------------------------- 80/10/10
def _corrupt_variant(kind: str):
    """A wrong replacement: one step of the recipe changed."""

    def corrupt_chosen(input_ids, chosen, how, random_ids, mask_id):
        to_mask, to_random = how < 0.8, (how >= 0.8) & (how < 0.9)
        if kind == "swap_random_keep":  # random above 0.9, unchanged in [0.8, 0.9)
            to_random = how >= 0.9
        if kind == "all_mask":  # no 10 % random, no 10 % unchanged
            to_mask, to_random = torch.ones_like(to_mask), torch.zeros_like(to_random)
        if kind != "ignore_chosen":  # replaces tokens that were not chosen too
            to_mask, to_random = to_mask & chosen, to_random & chosen
        masked = torch.where(to_random, random_ids, input_ids.masked_fill(to_mask, mask_id))
        labels = input_ids.masked_fill(~chosen, -100)
        if kind == "labels_at_mask_only":
            labels = input_ids.masked_fill(~to_mask, -100)
        elif kind == "labels_are_inputs":
            labels = masked.masked_fill(~chosen, -100)
        elif kind == "ignore_zero":
            labels = input_ids.masked_fill(~chosen, 0)
        return masked, labels

    return corrupt_chosen


@register_check(
    "corrupt_chosen(input_ids, chosen, how, random_ids, mask_id)",
    "minivlm.objectives:corrupt_chosen", points=1,
    returns={"masked_ids": "(B, T)", "labels": "(B, T)"},
    precise=False,  # comparisons with 0.8 and 0.9: the float32 reference is exact
    library=("minivlm.objectives:mask_tokens",),
    mistakes=[
        ("the labels are set only where [MASK] was written: the model must also predict the "
         "10 % replaced by a random id and the 10 % left unchanged, so every chosen position "
         "gets its original id", _corrupt_variant("labels_at_mask_only")),
        ("the random id and the unchanged token are swapped: 0.8 <= how < 0.9 takes random_ids, "
         "how >= 0.9 keeps the token", _corrupt_variant("swap_random_keep")),
        ("every chosen token became [MASK]: BERT keeps 10 % unchanged and replaces 10 % by a "
         "random id (how >= 0.8), so that [MASK], never seen at test time, is not the only "
         "signal", _corrupt_variant("all_mask")),
        ("tokens that were not chosen were replaced too: only chosen positions change",
         _corrupt_variant("ignore_chosen")),
        ("the labels hold the corrupted ids: the target of a chosen position is the original "
         "token", _corrupt_variant("labels_are_inputs")),
        ("the positions without a target must be -100 (F.cross_entropy's ignore_index), not 0",
         _corrupt_variant("ignore_zero")),
    ],
)
def corrupt_chosen_cases(gen: torch.Generator):
    def case(B: int, T: int, label: str, *, p: float = 0.5, mask_id: int = 4,
             hint: str | None = None) -> Case:
        ids = torch.randint(5, 60, (B, T), generator=gen)
        chosen = torch.rand(B, T, generator=gen) < p
        how = torch.rand(B, T, generator=gen)
        random_ids = torch.randint(5, 60, (B, T), generator=gen)
        random_ids[random_ids == ids] = 60  # a random id never equals the token it replaces
        return Case(label, ids, chosen, how, random_ids, mask_id, hint=hint)

    yield case(4, 16, "4 rows of 16 tokens, half of them chosen")
    yield case(1, 30, "a batch of one row", hint="with B = 1, .squeeze() drops the batch axis")
    yield case(3, 9, "nothing chosen", p=0.0,
               hint="no position is chosen: nothing changes and every label is -100")
    yield case(3, 40, "every token chosen", p=1.0)
    yield case(3, 12, "mask_id 3", mask_id=3, hint="use the mask_id argument, not a fixed id")
    ids = torch.arange(5, 17).reshape(2, 6)
    how = torch.tensor([[0.0, 0.79, 0.8, 0.85, 0.9, 0.95]] * 2, dtype=torch.float64)
    yield Case("how on the boundaries (0.8 and 0.9), everything chosen", ids,
               torch.ones(2, 6, dtype=torch.bool), how, ids + 40, 4,
               hint="how < 0.8: [MASK]; 0.8 <= how < 0.9: random_ids; how >= 0.9: unchanged")
