"""Flamingo on the shapes world: gates at 0, few-shot with vs without interleaved data, and the
interleaved mask (Alayrac et al. 2022, §2.2-2.3, §3; lecture 9).

The multi-seed experiment behind the "How we know" tables of ``notebooks/09_flamingo.ipynb``.
Per seed it runs :mod:`minivlm.recipes.flamingo` on the zoo's frozen parts:

    arm                       trained on                                 measured
    gates at 0                (nothing)                                  logits == LM's, bitwise
    interleaved               few-shot episodes (1-4 shots)              few-shot accuracy 0/1/2/4
    pairs only                one image + its colour word                few-shot accuracy 0/1/2/4
    mask: previous image      3-image colour sequences, Flamingo's mask  accuracy per image n
    mask: every image         the same, each token sees all images so far accuracy per image n

The mask arms run without the resampler and with the gates at a larger learning rate
(``rf.MASK_MODEL``, ``rf.MASK_GATE_LR``), as the notebook does, to learn in 80 steps.

Regenerate (3 seeds; about 3 minutes of CPU time, single-threaded)::

  python experiments/flamingo.py --out experiments/results/flamingo.json

It refuses to overwrite an existing file unless ``--force``; the file is rewritten atomically
after every seed with ``"complete": false`` until the last.
"""

from __future__ import annotations

import sys

import numpy as np

from minivlm.recipes import flamingo as rf
from minivlm.utils import ResultsFile, experiment_parser


def one_seed(parts: rf.Parts, seed: int, steps: int, mask_steps: int, n_eval: int) -> dict:
    res: dict = {"seed": seed, "gates_at_zero_bit_identical": rf.gate_zero_check(parts, seed)}
    for arm, kind in (("interleaved", "episodes"), ("pairs only", "pairs")):
        model = rf.make_model(parts, seed)
        hist = rf.train(model, parts, kind, steps=steps, seed=seed)
        acc = rf.few_shot_accuracy(model, parts, n=n_eval, seed=seed)
        res[arm] = {"few_shot": {str(k): v for k, v in acc.items()},
                    "final_gates": hist["gates"][-1].tolist(),
                    "final_loss": float(hist["loss"][-20:].mean())}
    for arm, mode in (("mask: previous image", "previous"), ("mask: every image", "all")):
        model = rf.make_model(parts, seed, **rf.MASK_MODEL)
        rf.train(model, parts, "captions", steps=mask_steps, seed=seed, mode=mode,
                 gate_lr=rf.MASK_GATE_LR)
        res[arm] = rf.position_accuracy(model, parts, mode, n=n_eval, seed=seed)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--mask-steps", type=int, default=80)
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--bank", type=int, default=300)
    args = ap.parse_args(argv)
    res = ResultsFile.start("flamingo", args, argv, {}, key="seeds")
    if res is None:
        return 2
    res.run(args.seeds,
            lambda seed: one_seed(rf.setup(bank=args.bank, heldout=args.n_eval, seed=seed), seed,
                                  args.steps, args.mask_steps, args.n_eval),
            res.seed_done)  # fmt: skip
    out = res.finish()
    for arm in ("interleaved", "pairs only"):
        rows = np.array([[s[arm]["few_shot"][str(k)] for k in rf.SHOTS] for s in out["seeds"]])
        print(f"{arm:12s}", "  ".join(f"{k}-shot {m:.2f}±{d:.2f}" for k, m, d in
                                      zip(rf.SHOTS, rows.mean(0), rows.std(0), strict=True)))
    for arm in ("mask: previous image", "mask: every image"):
        rows = np.array([s[arm] for s in out["seeds"]])
        print(f"{arm:22s}", "  ".join(f"image {i + 1}: {m:.2f}" for i, m in
                                      enumerate(rows.mean(0))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
