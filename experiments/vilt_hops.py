"""Which part of binding does a from-scratch ViLT fail to learn? (lecture 2, section 4b)

A thin command line over :mod:`minivlm.recipes.vilt_hops` (the recipe, its data and its scoring
live there, shared with notebook 02); this file runs it over seeds and writes the results JSON.
Regenerate the committed results::

  python experiments/vilt_hops.py --out experiments/results/vilt_hops.json --force

Without ``--force`` it refuses to overwrite ``--out``; the file is written atomically.
"""

from __future__ import annotations

import argparse
import platform

import torch

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
from minivlm.utils import add_results_args, refuse_overwrite, write_json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_results_args(ap)
    ap.add_argument("--steps", type=int, default=600, help="steps of each grid run")
    ap.add_argument("--curriculum-steps", type=int, default=1000,
                    help="steps of a curriculum run, warm-up included (0: none)")  # fmt: skip
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--patches", type=int, nargs="+", default=list(PATCHES))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--n-train", type=int, default=3000)
    args = ap.parse_args(argv)
    if refuse_overwrite(args.out, args.force, "vilt_hops"):
        return 2
    torch.set_num_threads(1)
    jobs = [dict(task_name=t, patch=p, seed=s, steps=args.steps)
            for t in args.tasks for p in args.patches for s in args.seeds]  # fmt: skip
    if args.curriculum_steps:
        warm = min(CURRICULUM_WARMUP, args.curriculum_steps // 2)
        jobs += [dict(task_name="word decides", patch=16, seed=s, steps=args.curriculum_steps,
                      fixed_first=warm if w else 0, pos_std=std)
                 for w, std in CURRICULUM for s in args.seeds]  # fmt: skip
    runs = []
    for job in jobs:
        r = run(**job, eval_every=args.eval_every, n_train=args.n_train)
        runs.append(r)
        print(
            f"{arm_name(r)}, seed {r['seed']}: held-out accuracy "
            + " ".join(f"{c['acc']:.2f}" for c in r["curve"])
            + f" ({r['cpu_seconds']:.0f} s CPU)",
            flush=True,
        )
    result = dict(
        experiment="vilt_hops", steps=args.steps, curriculum_steps=args.curriculum_steps,
        seeds=args.seeds, n_train=args.n_train, torch=torch.__version__,
        machine=platform.machine(), runs=runs, summary=summarize(runs),
    )  # fmt: skip
    write_json(args.out, result)
    for name, cell in result["summary"].items():
        print(f"{name:58s} final accuracy {cell['mean']:.3f} (min {cell['min']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
