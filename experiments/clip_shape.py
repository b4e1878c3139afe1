"""What does it take for CLIP to learn *shape* on the shapes world? (lecture 1, section 8)

A thin command line over :mod:`minivlm.recipes.clip_shape` (the recipe, its data and its scoring
live there, shared with notebook 01); this file runs it over seeds and writes the results JSON.
Regenerate the committed results::

  python experiments/clip_shape.py --out experiments/results/clip_shape.json --force

Without ``--force`` it refuses to overwrite ``--out``; the file is rewritten atomically after
every run (``"complete": false`` until the last).
"""

from __future__ import annotations

from minivlm.recipes.clip_shape import DATA, SEEDS, TOWERS, run, summarize
from minivlm.utils import ResultsFile, experiment_parser


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__, seeds=SEEDS)
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--towers", nargs="+", default=list(TOWERS), choices=list(TOWERS))
    args = ap.parse_args(argv)
    fields = dict(steps=args.steps, seeds=args.seeds, n_train=args.n_train)
    res = ResultsFile.start("clip_shape", args, argv, fields, summarize=summarize)
    if res is None:
        return 2
    jobs = [(t, d, mo, s) for t in args.towers for d, mo in DATA.items() for s in args.seeds]
    res.run(jobs, lambda j: run(j[0], j[2], j[3], args.steps, args.n_train)[0],
            lambda j, r: f"{j[0]:3s} {j[1]:11s} seed {j[3]}: zero-shot shape "
                         f"{r['zero_shot_shape']:.3f} colour {r['zero_shot_color']:.3f} probe "
                         f"{r['probe_shape']:.3f} ({r['cpu_seconds']:.0f} s CPU)")  # fmt: skip
    for name, cell in res.finish()["summary"].items():
        print(f"{name:18s} zero-shot shape {cell['zero_shot_shape_mean']:.3f} ± "
              f"{cell['zero_shot_shape_std']:.3f}, probe {cell['probe_shape_mean']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
