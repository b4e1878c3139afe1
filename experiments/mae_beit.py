"""Lecture 7 over seeds: MAE at four mask ratios, shape with and without pre-training, BEiT.

Runs :func:`minivlm.recipes.mae_beit.run` (the code of ``notebooks/07_mae_beit.ipynb``, same
budget) for each seed and, with ``--long-steps N``, one longer MAE run per seed (75 %, N steps
of 64 images) to ask whether the result is only a matter of budget. Per seed it records the
linear-probe accuracies (colour, shape) of raw pixels, the random-init encoder, MAE at 15/50/75/90 %
and BEiT; the MAE losses; where the loss sits (object vs background patches); the shape fine-tune
from MAE vs from scratch; the encoder's time with all vs 25 % of the patches; the codebook usage.

Regenerate the committed results (about 1 CPU minute per seed, plus ~1.5 for the
``--long-steps 1000`` run of seed 0; one thread)::

  python experiments/mae_beit.py --seeds 0 1 2 --long-steps 1000 --long-seeds 0 \\
      --out experiments/results/mae_beit.json

It refuses to overwrite an existing results file unless ``--force`` is given; the file is
rewritten atomically after every seed, with ``"complete": false`` until the last one.
"""

from __future__ import annotations

import sys
import time

from minivlm.recipes import mae_beit as R
from minivlm.utils import ResultsFile, experiment_parser


def long_run(seed: int, steps: int, n_pretrain: int, n_probe: int, n_probe_train: int) -> dict:
    """MAE 75 % for ``steps`` steps of 64 images: probe, loss split, shape fine-tune."""
    data = R.make_data(seed, n_pretrain, n_probe, n_probe_train)
    mae, hist = R.pretrain_mae(data, 0.75, steps=steps, batch_size=64, seed=seed)
    return {"steps": steps, "batch_size": 64, "loss": sum(hist[-10:]) / len(hist[-10:]),
            "probe": R.probe(R.features(mae, data.probe), data),
            "why": R.object_vs_background_error(mae, data, 0.75, seed),
            "finetune_shape": R.finetune(mae.encoder, data, "shape", seed=seed)}


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__)
    ap.add_argument("--steps", type=int, default=120, help="pre-training steps (MAE and BEiT)")
    ap.add_argument("--ft-steps", type=int, default=80)
    ap.add_argument("--tokenizer-steps", type=int, default=200)
    ap.add_argument("--n-pretrain", type=int, default=2000)
    ap.add_argument("--n-probe", type=int, default=1200)
    ap.add_argument("--n-probe-train", type=int, default=800)
    ap.add_argument("--long-steps", type=int, default=0, help="also a longer MAE run (0: none)")
    ap.add_argument("--long-seeds", type=int, nargs="*", default=None,
                    help="the seeds that get the longer run (default: every seed)")
    args = ap.parse_args(argv)
    sizes = dict(n_pretrain=args.n_pretrain, n_probe=args.n_probe,
                 n_probe_train=args.n_probe_train)
    recipe = dict(steps=args.steps, ft_steps=args.ft_steps, tokenizer_steps=args.tokenizer_steps,
                  **sizes, long_steps=args.long_steps, long_seeds=args.long_seeds)
    res = ResultsFile.start("mae_beit", args, argv, {"seeds": args.seeds, "recipe": recipe})
    if res is None:
        return 2

    def one_seed(seed: int) -> dict:
        t0 = time.process_time()
        run = R.run(seed, steps=args.steps, ft_steps=args.ft_steps,
                    tokenizer_steps=args.tokenizer_steps, **sizes)
        if args.long_steps and (args.long_seeds is None or seed in args.long_seeds):
            run["long"] = long_run(seed, args.long_steps, **sizes)
        run["cpu_seconds"] = time.process_time() - t0
        return run

    def report(seed: int, run: dict) -> str:
        p = run["probe"]
        return (f"seed {seed}: MAE75 colour {p['MAE 75%']['color']:.3f} shape "
                f"{p['MAE 75%']['shape']:.3f} | random colour {p['random init']['color']:.3f} | "
                f"ft MAE {run['finetune_shape']['MAE 75%']:.3f} scratch "
                f"{run['finetune_shape']['scratch']:.3f} | {run['cpu_seconds']:.0f} s")

    res.run(args.seeds, one_seed, report)
    res.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
