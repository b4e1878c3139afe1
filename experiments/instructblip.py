"""InstructBLIP vs plain BLIP-2 from the same stage-1 Q-Former, over seeds (Dai et al. 2023, §2.3).

The command line over :mod:`minivlm.recipes.instructblip` (the code of lecture 4's sections 4
and 5), run for several seeds; see that module for the recipe.

  python experiments/instructblip.py --out experiments/results/instructblip.json

It refuses to overwrite an existing results file unless ``--force`` is given, and writes it
atomically after every seed (``"complete": false`` until the last one).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

import torch

from minivlm import zoo
from minivlm.recipes.instructblip import INSTRUCTIONS, SEEDS, STAGE1, STAGE2, run_seed, summarize
from minivlm.utils import add_results_args, refuse_overwrite, write_json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_results_args(ap, default="experiments/results/instructblip.json")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = ap.parse_args(argv)
    out = args.out
    if refuse_overwrite(out, args.force, "instructblip"):
        return 2
    torch.set_num_threads(1)  # deterministic and cheap on a shared CPU
    vit = zoo.load_image_encoder(verbose=False)
    lm = zoo.load("shapes_lm", verbose=False)
    results: dict[str, Any] = {
        "command": "python experiments/instructblip.py "
                   + " ".join(sys.argv[1:] if argv is None else argv),
        "complete": False, "stage1": STAGE1, "stage2": STAGE2,
        "instructions": list(INSTRUCTIONS), "torch": torch.__version__,
        "python": platform.python_version(), "runs": [],
    }  # fmt: skip
    t0 = time.perf_counter()
    for k, seed in enumerate(args.seeds):
        record = run_seed(seed, vit, lm)
        results["runs"].append(record)
        results["complete"] = k == len(args.seeds) - 1
        results["summary"] = summarize(results["runs"])
        results["total_wall_s"] = round(time.perf_counter() - t0, 1)
        write_json(out, results)
        acc = {n: record[n]["accuracy"] for n in ("BLIP-2", "InstructBLIP")}
        print(f"seed {seed}: " + "; ".join(
            f"{n} " + " ".join(f"{kk} {v:.3f}" for kk, v in a.items()) for n, a in acc.items()),
            flush=True)  # fmt: skip
    print(json.dumps(results["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
