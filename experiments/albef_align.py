"""Align before fuse: ALBEF's fusion encoder trained with and without ITC (ALBEF §6.1, Table 1).

The command line over :mod:`minivlm.recipes.albef_align` (lecture 3's section 4), over seeds;
see that module for the arms and the metrics.

  python experiments/albef_align.py --out experiments/results/albef_align.json

It refuses to overwrite an existing results file unless ``--force`` is given, and rewrites it
atomically after every run (``"complete": false`` until the last one).
"""

from __future__ import annotations

from minivlm.data import ShapesWorld
from minivlm.recipes.albef_align import (
    ARMS,
    FUSION_MODEL,
    SEEDS,
    STEPS,
    run_arm,
    summarize,
    test_set,
)
from minivlm.recipes.albef_noise import MODEL, RunConfig, eval_pairs
from minivlm.utils import ResultsFile, experiment_parser


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__, "experiments/results/albef_align.json", SEEDS)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--n-train", type=int, default=RunConfig().n_train)
    args = ap.parse_args(argv)
    fields = {"model": {**MODEL, **FUSION_MODEL}, "arms": ARMS, "steps": args.steps,
              "seeds": list(args.seeds)}  # fmt: skip
    res = ResultsFile.start("albef_align", args, argv, fields, summarize=summarize)
    if res is None:
        return 2
    data = ShapesWorld().generate(args.n_train, seed=0)
    evalset, test = eval_pairs(), test_set()

    def report(job: tuple, r: dict) -> str:
        return (f"seed {job[0]} {job[1]:20s} R@1 {r['r1']:.3f}  ITM vs wrong colour "
                f"{r['itm_vs_wrong_colour']:.3f}, vs other scene "
                f"{r['itm_vs_other_scene']:.3f}  MLM colour {r['mlm_colour']:.3f}")  # fmt: skip

    res.run([(s, name, w) for s in args.seeds for name, w in ARMS.items()],
            lambda j: run_arm(j[2], j[0], args.steps, data, evalset, test)[0], report)
    res.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
