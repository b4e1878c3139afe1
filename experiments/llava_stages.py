"""Which LLaVA training stage matters, and which projector? (LLaVA §4.2, §5.1; LLaVA-1.5 §3)

The command line over :mod:`minivlm.recipes.llava_stages` (the code lecture 5 runs live), over
seeds; see that module for the arms and the recipe.

  python experiments/llava_stages.py --out experiments/results/llava_stages.json

It refuses to overwrite an existing results file unless ``--force`` is given. The file is
rewritten atomically after every seed, with ``"complete": false`` until the last one.
``--random-parts`` swaps the zoo's pretrained parts for tiny random ones (a smoke test).
"""

from __future__ import annotations

from dataclasses import asdict

from minivlm.data import QTYPES
from minivlm.recipes.llava_stages import (
    ARMS,
    SEEDS,
    TEST_SEED,
    Recipe,
    print_table,
    random_parts,
    run_seed,
    summarize,
)
from minivlm.utils import ResultsFile, experiment_parser


def report(seed: int, record: dict) -> str:
    a = record["acc"]
    return (f"seed {seed}: colour/all  stage 1 only "
            f"{a['stage 1 only']['color']:.2f}/{a['stage 1 only']['all']:.2f}, stage 2 only "
            f"{a['stage 2 only']['color']:.2f}/{a['stage 2 only']['all']:.2f}, both "
            f"{a['stage 1 + 2']['color']:.2f}/{a['stage 1 + 2']['all']:.2f} "
            f"({record['cpu_s']:.0f} s CPU, {record['wall_s']:.0f} s wall)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__, "experiments/results/llava_stages.json", SEEDS)
    d = Recipe()
    for name in ("n_train", "n_test", "s1_steps", "s2_steps"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name),
                        help=f"default {getattr(d, name)} (the notebook's)")  # fmt: skip
    ap.add_argument("--random-parts", action="store_true",
                    help="tiny random ViT and LM instead of the zoo's (smoke tests)")  # fmt: skip
    args = ap.parse_args(argv)
    recipe = Recipe(n_train=args.n_train, n_test=args.n_test, s1_steps=args.s1_steps,
                    s2_steps=args.s2_steps)  # fmt: skip
    fields = {
        "recipe": asdict(recipe),
        "parts": "random (smoke test)" if args.random_parts else "zoo: shapes_clip + shapes_lm",
        "seeds": list(args.seeds), "arms": list(ARMS), "qtypes": list(QTYPES),
        "metric": "exact-match accuracy of greedy answers on held-out one-object scenes "
                  f"(world seed {TEST_SEED} + seed)",
    }  # fmt: skip
    res = ResultsFile.start("llava_stages", args, argv, fields, summarize=summarize)
    if res is None:
        return 2
    if args.random_parts:
        vit, lm = random_parts()
    else:
        from minivlm import zoo

        vit = zoo.load_image_encoder(verbose=False)
        lm = zoo.load("shapes_lm", verbose=False)
    res.run(args.seeds, lambda seed: run_seed(vit, lm, seed, recipe), report)
    print_table(res.finish())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
