"""Which part of binding does a from-scratch ViLT fail to learn? (lecture 2, section 4b)

A thin command line over :mod:`minivlm.recipes.vilt_hops` (the recipe, its data and its scoring
live there, shared with notebook 02); this file runs it over seeds and writes the results JSON.
Regenerate the committed results::

  python experiments/vilt_hops.py --out experiments/results/vilt_hops.json --force

Without ``--force`` it refuses to overwrite ``--out``; the file is rewritten atomically after
every run (``"complete": false`` until the last).
"""

from __future__ import annotations

from minivlm.recipes.vilt_hops import (
    CURRICULUM,
    CURRICULUM_WARMUP,
    PATCHES,
    SEEDS,
    TASKS,
    arm_name,
    run,
    summarize,
)
from minivlm.utils import ResultsFile, experiment_parser


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__, seeds=SEEDS)
    ap.add_argument("--steps", type=int, default=600, help="steps of each grid run")
    ap.add_argument("--curriculum-steps", type=int, default=1000,
                    help="steps of a curriculum run, warm-up included (0: none)")  # fmt: skip
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--patches", type=int, nargs="+", default=list(PATCHES))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--n-train", type=int, default=3000)
    args = ap.parse_args(argv)
    fields = dict(steps=args.steps, curriculum_steps=args.curriculum_steps, seeds=args.seeds,
                  n_train=args.n_train)  # fmt: skip
    res = ResultsFile.start("vilt_hops", args, argv, fields, summarize=summarize)
    if res is None:
        return 2
    jobs = [dict(task_name=t, patch=p, seed=s, steps=args.steps)
            for t in args.tasks for p in args.patches for s in args.seeds]  # fmt: skip
    if args.curriculum_steps:
        warm = min(CURRICULUM_WARMUP, args.curriculum_steps // 2)
        jobs += [dict(task_name="word decides", patch=16, seed=s, steps=args.curriculum_steps,
                      fixed_first=warm if w else 0, pos_std=std)
                 for w, std in CURRICULUM for s in args.seeds]  # fmt: skip
    res.run(jobs, lambda job: run(**job, eval_every=args.eval_every, n_train=args.n_train),
            lambda job, r: f"{arm_name(r)}, seed {r['seed']}: held-out accuracy "
                           + " ".join(f"{c['acc']:.2f}" for c in r["curve"])
                           + f" ({r['cpu_seconds']:.0f} s CPU)")  # fmt: skip
    for name, cell in res.finish()["summary"].items():
        print(f"{name:58s} final accuracy {cell['mean']:.3f} (min {cell['min']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
