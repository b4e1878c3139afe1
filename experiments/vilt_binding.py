"""Does a ViLT that has learned *where* bind colours to places? (lecture 2, section 4c)

A thin command line over :mod:`minivlm.recipes.vilt_binding` (the recipe, its data and its scoring
live there, shared with notebook 02); this file runs it over seeds and writes the results JSON.
Regenerate the committed results::

  python experiments/vilt_binding.py --out experiments/results/vilt_binding.json --force

Without ``--force`` it refuses to overwrite ``--out``; the file is rewritten atomically after
every run (``"complete": false`` until the last).
"""

from __future__ import annotations

from minivlm.recipes.vilt_binding import ARMS, KINDS, SEEDS, run, summarize
from minivlm.utils import ResultsFile, experiment_parser


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__, seeds=SEEDS)
    ap.add_argument("--steps", type=int, default=1600, help="steps of each run, warm-up included")
    ap.add_argument("--warmup", type=int, default=400, help="warm-up steps of 'vilt warm-up'")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--vqa-steps", type=int, default=300, help="VQA fine-tuning of the ViLTs")
    ap.add_argument("--n-test", type=int, default=400, help="held-out scenes scored")
    args = ap.parse_args(argv)
    fields = dict(steps=args.steps, warmup=args.warmup, seeds=args.seeds, n_train=args.n_train,
                  n_test=args.n_test, vqa_steps=args.vqa_steps)  # fmt: skip
    res = ResultsFile.start("vilt_binding", args, argv, fields, summarize=summarize)
    if res is None:
        return 2
    jobs = [(arm, seed) for arm in args.arms for seed in args.seeds]
    res.run(jobs, lambda j: run(*j, args.steps, args.warmup, args.n_train,
                                vqa_steps=args.vqa_steps, n_test=args.n_test)[0],
            lambda j, r: f"{j[0]:12s} seed {j[1]}: " + ", ".join(f"{k} {r[k]:.3f}" for k in KINDS)
                         + f" ({r['cpu_seconds']:.0f} s CPU)")  # fmt: skip
    for arm, cell in res.finish()["summary"].items():
        print(f"{arm:12s} " + ", ".join(f"{k} {cell[k]['mean']:.3f} (min {cell[k]['min']:.3f})"
                                        for k in KINDS))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
