"""Exercise 05, "implement, train, explain": LLaVA's projector trained with the learner's own
labels and splicing.

The learner writes ``train_projector(task, seed)``: the zoo's frozen image encoder and language
model joined by a fresh projector (``llava_align.new_llava(seed)``); only the projector learns
(LLaVA's stage 1, §4.2), on the chats of ``llava_align.chats(task, seed)`` ("caption": "describe
the image." -> the caption, LLaVA's alignment data; "color": "what color is the object?" -> the
colour word), with labels from *their* ``assistant_labels`` and image features spliced in by
*their* ``merge_image_features``; it returns the held-out accuracy on the colour question.

The check trains the "color" task on one seed and compares what the learner's model *achieves*
with the reference run on the same seed, with a margin of 0.06 (seeds 0-2: the reference reaches
0.37-0.43; the untrained model answers 0.12-0.16, a run whose loss also covers the prompt and
the image tokens 0.17-0.19). The zoo components must be built (``minivlm zoo build``, done by
``make test`` before the unit tests); about two seconds of CPU per run on one thread.
"""

from __future__ import annotations

import torch

from minivlm.grading.checks._common import TRAINING_TIMEOUT, cached_run, draw_seed
from minivlm.grading.checks.ex05_llava import EXERCISE
from minivlm.grading.core import Case, exercise_checks

MARGIN = 0.06  # accuracy on 200 held-out questions
register_check = exercise_checks(EXERCISE)
_ref_train_projector = cached_run("minivlm.recipes.llava_align:reference_train_projector")


def _explain_train(case: Case, got: list, expected: list) -> str | None:
    acc, ref = float(got[0]), float(expected[0])
    if acc < 0.25 < ref:
        return ("your projector did not learn to answer (the untrained model is at 0.12-0.16): "
                "are the labels -100 everywhere but the answers (your assistant_labels, not "
                "input_ids: a loss on the prompt and the <image> tokens teaches the projector "
                "to predict the prompt)? are they aligned with input_ids, labels[t] = "
                "input_ids[t]? (the language model shifts them itself: labels shifted by one "
                "more train position t to predict token t+2) does every step run "
                "opt.zero_grad(), loss.backward() and opt.step() on the projector's parameters?")
    return ("your projector learned, but not like the reference: same recipe? the labels of "
            "all chats from assistant_labels, AdamW(model.projector.parameters(), lr=run.lr) "
            "with the warm-up lr = run.lr * min(1, (step + 1) / run.warmup), the batches of "
            "small.batches(seed, n, run), and the language model's loss (labels=...)")


@register_check(
    "train_projector(task, seed)", _ref_train_projector, points=3,
    returns="(1,) held-out colour accuracy",
    library=("minivlm.recipes.llava_align:reference_train_projector",
             "minivlm.recipes.llava_align:reference_assistant_labels",
             "minivlm.models.llava:merge_image_features"),
    explain=_explain_train,
    min_timeout=TRAINING_TIMEOUT,
)
def train_projector_cases(gen: torch.Generator):
    seed = draw_seed(gen)
    yield Case(f'task "color", seed {seed}', "color", seed, atol=MARGIN, rtol=0.0, grad=False,
               hint=f"the held-out colour accuracy of your trained projector differs from the "
                    f"reference's by more than {MARGIN}")
