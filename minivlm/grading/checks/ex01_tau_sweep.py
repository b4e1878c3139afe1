"""Exercise 01, "implement, train, explain": a τ sweep trained with the learner's own loss.

The learner writes ``tau_sweep(taus, seed)``: for each τ, train ``clip_tau.TinyTowers(seed)``
with *their* ``clip_loss`` (Adam, lr 2e-2, the batches of ``clip_tau.batches(seed, n)``,
logit_scale = log(1/τ) fixed) on ``clip_tau.toy_pairs(seed)`` and return the held-out zero-shot
accuracies, one per τ. The check trains the same sweep with the reference loss and compares
what the two sweeps *achieve*, with a margin (0.08 accuracy per τ) that absorbs legitimate
differences (operation order, another way to write the loop) but not a loss that does not train
or a temperature that is not applied. About one second of CPU per sweep on one thread.

Measured with the right loop and only the loss changed (toy seeds 0, 1, 2 and 9775, the seed the
tests draw; largest accuracy gap to the reference sweep): logit_scale used without .exp() 0.22-0.24
and embeddings not normalised 0.14-0.21 (both fail), the text->image half alone 0.10-0.17 (fails).
Not caught here: the image->text half alone, or both halves over the rows, 0.01-0.05 (the held-out
accuracy is image->text classification, which that half trains), and a loss summed rather than
averaged over the batch, 0.000 (Adam's steps do not depend on the loss's scale). These are why the
loss is the learner's ``clip_loss``, graded on its own by ``ex01_clip``'s check, which names each.
"""

from __future__ import annotations

import torch

from minivlm.grading.checks._common import draw_seed
from minivlm.grading.checks.ex01_clip import EXERCISE, _ref_clip_loss
from minivlm.grading.core import Case, exercise_checks
from minivlm.recipes import clip_tau

register_check = exercise_checks(EXERCISE)
MARGIN = 0.08  # accuracy; seeds 0-3: τ = 0.1 beats τ = 1 by >= 0.13, chance is 1/60


def _ref_tau_sweep(taus: torch.Tensor, seed: int) -> torch.Tensor:
    return clip_tau.sweep(_ref_clip_loss, taus, seed)


def _explain(case: Case, got: list, expected: list) -> str | None:
    g, e = got[0], expected[0]
    if float(g.max()) < 0.1:
        return ("none of your models learned (accuracy near chance, 1/60): does your training "
                "loop call opt.zero_grad(), loss.backward() and opt.step() every step, and does "
                "your clip_loss pass its own check? (a flipped sign pushes the pairs apart)")
    if float(g.max() - g.min()) < 0.05:
        return ("your accuracies hardly depend on τ: pass logit_scale = log(1/τ) of *each* τ "
                "to clip_loss (a tensor), and train a fresh TinyTowers(seed) for each τ")
    worst = int((g - e).abs().argmax())
    return (f"at τ = {float(case.args[0][worst]):g} your model reached {float(g[worst]):.3f}, a "
            f"correct sweep {float(e[worst]):.3f}: is each τ trained from a fresh "
            "TinyTowers(seed), with clip_tau.batches(seed, n), Adam and lr 2e-2? and does "
            "check('clip_loss', clip_loss) pass? (a loss that uses logit_scale without .exp(), "
            "or forgets to normalise the embeddings, trains, but not like this)")


def _sweep_variant(*, sign: float = 1.0, tau: str = "each", fresh: bool = True,
                   zero_grad: bool = True, loss_fn=None):
    """A wrong sweep (for the tests and the hints): one step of the recipe changed.
    ``loss_fn``: the clip_loss it trains with (default: the reference's)."""
    loss_fn = loss_fn or _ref_clip_loss
    import math

    def tau_sweep(taus: torch.Tensor, seed: int) -> torch.Tensor:
        data = clip_tau.toy_pairs(seed)
        out, model = [], clip_tau.TinyTowers(seed)
        for t in taus.tolist():
            if fresh:
                model = clip_tau.TinyTowers(seed)
            opt = torch.optim.Adam(model.parameters(), lr=clip_tau.LR)
            s = torch.tensor(math.log(1 / (t if tau == "each" else 0.07)))
            for idx in clip_tau.batches(seed, len(data.train_img)):
                loss = sign * loss_fn(*model(data.train_img[idx], data.train_txt[idx]), s)
                if zero_grad:
                    opt.zero_grad()
                loss.backward()
                opt.step()
            out.append(clip_tau.accuracy(model, data))
        return torch.tensor(out)

    return tau_sweep


@register_check(
    "tau_sweep(taus, seed)", _ref_tau_sweep, points=3,
    returns="(T,) one held-out accuracy per τ",
    explain=_explain,
)
def tau_sweep_cases(gen: torch.Generator):
    seed = draw_seed(gen, high=10_000)
    yield Case(f"τ = 1, 0.1, 0.01 on the toy of seed {seed}", torch.tensor([1.0, 0.1, 0.01]),
               seed, atol=MARGIN, rtol=0.0, grad=False)
