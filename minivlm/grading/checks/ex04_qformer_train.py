"""Exercise 04, "implement, train, explain": BLIP-2's stage 1 trained with the learner's own masks.

The learner writes the body of ``train_stage1(seed)``'s step: a tiny Q-Former on the zoo's
frozen ``shapes_clip`` tower (``qformer_stage1.new_blip2(seed)``) trained on one-object scenes
with ITC (under *their* ``itc_mask``, scored by *their* ``itc_score``; the loss line, given, is
*their* ``itc_loss(sim, model.temp)``, the symmetric cross-entropy over the learned
temperature) plus ITG (under *their* ``itg_mask``, [DEC] first, position t predicting token
t+1); it returns ``qformer_stage1.evaluate(model, data)``: the held-out colour accuracy read
under the right ITG mask and whether the ITC temperature moved.

The check trains one seed and compares with the reference run on the same seed, with a margin of
0.3. Measured on seeds 0, 1, 2 and 775 (the seed the tests draw; ``tests/test_ex04_checks.py``
feeds the same versions): the reference reaches a colour accuracy of 0.97, 1.0, 0.97, 0.87 and a
correct solution written differently (its float rounding sends training elsewhere) 0.92, 0.995,
0.99, 0.97; a leaky ITG mask (text sees all the text) 0.16, 0.21, 0.31, 0.11 (seeds 0-2 measured
with an earlier copy of the training loop, 775 with the reference's own loop); the ITG loss
subtracted 0.0 on all four; a similarity never divided by the temperature leaves it at 0.07 (the
second number 0 on all four). Not caught here: the colour is still learned under a wrong ITC loss.
Measured with the solution's loop and only the ITC loss changed (seeds 0, 1, 2, each within 0.3 of
the reference; the graded verdict on 775): the image->text half alone 0.995, 0.99, 0.99 (passes on
775); the text->image half alone 0.895, 0.895, 0.99 (fails on 775 by 0.485); both softmaxes over
the rows 0.98, 0.985, 0.99 (passes on 775); both over the columns 0.99, 0.90, 0.86 (fails on 775,
by 0.30 exactly); one softmax over the whole matrix 0.93, 0.785, 0.955 and the two halves summed
0.805, 0.975, 0.92 (both pass on 775). That is why the ITC loss is the learner's ``itc_loss``,
graded on its own by ``ex04_blip2``'s check, which names each of these mistakes, and why the step's
ITC loss line is given. The zoo components must be built (``minivlm zoo build``); about six seconds
of CPU per run on one thread.
"""

from __future__ import annotations

import torch

from minivlm.grading.checks._common import TRAINING_TIMEOUT, cached_run, draw_seed
from minivlm.grading.checks.ex04_blip2 import EXERCISE
from minivlm.grading.core import Case, exercise_checks

MARGIN = 0.3  # colour accuracy on 200 held-out scenes; the second number is 0 or 1
register_check = exercise_checks(EXERCISE)
_ref_train_stage1 = cached_run("minivlm.recipes.qformer_stage1:reference_train_stage1")


def _explain_train(case: Case, got: list, expected: list) -> str | None:
    acc, moved = got[0].tolist()
    ref = float(expected[0][0])
    if acc < 0.5 < ref:
        return (f"your Q-Former does not read the colour from the image (held-out {acc:.2f}, the "
                f"reference {ref:.2f}, chance 0.17): is the ITG pass under your itg_mask, the "
                "text causal (a text token that sees the next one learns to copy it, a low "
                "training loss and nothing learned about the image)? is the loss "
                "loss_itc + loss_itg, both with a plus sign, and does position t predict "
                "token t+1 (logits[:, :-1] against ids[:, 1:])?")
    if moved < 0.5:
        return ("the ITC temperature never moved from 0.07: your itc_loss must divide the "
                "scores by temp before the cross-entropy (does check('itc_loss', itc_loss) "
                "pass?), so that model.temp gets a gradient and is learned")
    return ("your Q-Former learned, but not like the reference: the ITC pass under itc_mask, "
            "sim = itc_score(vision_proj(query outputs), text_proj([CLS] output)), plain "
            "cosines (itc_loss divides by model.temp), the ITG pass with "
            "data['dec_token_id'] replacing [CLS]")


@register_check(
    "train_stage1(seed)", _ref_train_stage1, points=3,
    returns="(2,) held-out colour accuracy, temperature moved (0/1)",
    library=("minivlm.recipes.qformer_stage1:reference_train_stage1",),
    explain=_explain_train,
    min_timeout=TRAINING_TIMEOUT,
)
def train_stage1_cases(gen: torch.Generator):
    seed = draw_seed(gen)
    yield Case(f"seed {seed}", seed, atol=MARGIN, rtol=0.0, grad=False,
               hint=f"the held-out colour accuracy of your trained Q-Former differs from the "
                    f"reference's by more than {MARGIN}, or its temperature did not move")
