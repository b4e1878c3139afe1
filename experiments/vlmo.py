"""Lecture 8 over seeds: VLMo's two modes (binding, ranking time) and the frozen-attention
text stage.

Runs :func:`minivlm.recipes.vlmo.run` (the code of ``notebooks/08_vlmo_beit3.ipynb``) for each
seed. Per seed it records lecture 2's binding accuracy in dual and fusion mode, of the
``shapes_vilt``-seeded VLMo before and after the pair stage (ITC + ITM on hard negatives +
colour-word MLM); the wall time of ranking 256 images for one caption in each mode; and the
held-out masked-word accuracy and loss of the three text-stage arms (image-stage attention
frozen, random attention frozen, everything free) after one masked-image-modelling stage.

Regenerate the committed results (about 1.5 CPU minutes per seed, one thread; the zoo's
``shapes_vilt`` is built first if it is not cached)::

  python experiments/vlmo.py --seeds 0 1 2 --out experiments/results/vlmo.json

The same with VLMo's relative position bias in the transfer experiment's model (the released
code's scheme; the ViLT-seeded model keeps ViLT's absolute tables, so its numbers repeat)::

  python experiments/vlmo.py --seeds 0 1 2 --position relative \\
      --out experiments/results/vlmo_relpos.json

It refuses to overwrite an existing results file unless ``--force`` is given; the file is
rewritten atomically after every seed, with ``"complete": false`` until the last one. The size
options below exist for smoke tests; the committed results use their defaults.
"""

from __future__ import annotations

import sys

from minivlm.recipes import vlmo as R
from minivlm.utils import ResultsFile, experiment_parser


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__, seeds=R.SEEDS)
    ap.add_argument("--pair-steps", type=int, default=40)
    ap.add_argument("--image-steps", type=int, default=100)
    ap.add_argument("--text-steps", type=int, default=250)
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--position", choices=("absolute", "relative"), default="absolute",
                    help="position scheme of the transfer experiment's VLMo")
    ap.add_argument("--n-test", type=int, default=400, help="held-out binding scenes")
    ap.add_argument("--rank-images", type=int, default=256, help="images ranked for the timing")
    ap.add_argument("--n-images", type=int, default=1500, help="image-stage scenes")
    ap.add_argument("--tokenizer-steps", type=int, default=60)
    args = ap.parse_args(argv)
    recipe = dict(pair_steps=args.pair_steps, image_steps=args.image_steps,
                  text_steps=args.text_steps, n_train=args.n_train, position=args.position,
                  n_test=args.n_test, n_rank=args.rank_images, n_images=args.n_images,
                  tokenizer_steps=args.tokenizer_steps)
    fields = {"seeds": args.seeds, "recipe": recipe,
              "parameters": {n: R.parameter_counts(n) for n in ("vlmo_tiny", "vlmo_base")}}
    res = ResultsFile.start("vlmo", args, argv, fields, summarize=R.summarize)
    if res is None:
        return 2

    def report(seed: int, run: dict) -> str:
        b, t = run["binding"]["vlmo"], run["transfer"]
        return (f"seed {seed}: region dual {b['dual']['region']:.3f} fusion "
                f"{b['fusion']['region']:.3f} | fusion/dual time "
                f"{run['timing']['fusion'] / run['timing']['dual']:.0f}x | text MLM acc "
                + " / ".join(f"{t[a]['acc']:.3f}" for a in R.ARMS)
                + f" | {run['cpu_seconds']:.0f} s")

    res.run(args.seeds, lambda seed: R.run(seed, **recipe), report)
    res.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
