"""InstructBLIP vs plain BLIP-2 from the same stage-1 Q-Former, over seeds (Dai et al. 2023, §2.3).

The command line over :mod:`minivlm.recipes.instructblip` (the code of lecture 4's sections 4
and 5), run for several seeds; see that module for the recipe.

  python experiments/instructblip.py --out experiments/results/instructblip.json

It refuses to overwrite an existing results file unless ``--force`` is given, and writes it
atomically after every seed (``"complete": false`` until the last one).
"""

from __future__ import annotations

import json

from minivlm import zoo
from minivlm.recipes.instructblip import INSTRUCTIONS, SEEDS, STAGE1, STAGE2, run_seed, summarize
from minivlm.utils import ResultsFile, experiment_parser


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__, "experiments/results/instructblip.json", SEEDS)
    args = ap.parse_args(argv)
    fields = {"stage1": STAGE1, "stage2": STAGE2, "instructions": list(INSTRUCTIONS)}
    res = ResultsFile.start("instructblip", args, argv, fields, summarize=summarize)
    if res is None:
        return 2
    vit = zoo.load_image_encoder(verbose=False)
    lm = zoo.load("shapes_lm", verbose=False)

    def report(seed: int, record: dict) -> str:
        acc = {n: record[n]["accuracy"] for n in ("BLIP-2", "InstructBLIP")}
        return f"seed {seed}: " + "; ".join(
            f"{n} " + " ".join(f"{k} {v:.3f}" for k, v in a.items()) for n, a in acc.items())

    res.run(args.seeds, lambda seed: run_seed(seed, vit, lm), report)
    print(json.dumps(res.finish()["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
