"""Align before fuse: ALBEF's fusion encoder trained with and without ITC (ALBEF §6.1, Table 1).

The command line over :mod:`minivlm.recipes.albef_align` (lecture 3's section 4), over seeds;
see that module for the arms and the metrics.

  python experiments/albef_align.py --out experiments/results/albef_align.json

It refuses to overwrite an existing results file unless ``--force`` is given, and rewrites it
atomically after every run (``"complete": false`` until the last one).
"""

from __future__ import annotations

import argparse
import platform
import sys
from typing import Any

import torch

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
from minivlm.utils import add_results_args, refuse_overwrite, write_json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_results_args(ap, default="experiments/results/albef_align.json")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--n-train", type=int, default=RunConfig().n_train)
    args = ap.parse_args(argv)
    if refuse_overwrite(args.out, args.force, "albef_align"):
        return 2
    torch.set_num_threads(1)  # deterministic and cheap on a shared CPU
    data = ShapesWorld().generate(args.n_train, seed=0)
    evalset, test = eval_pairs(), test_set()
    results: dict[str, Any] = {
        "command": "python experiments/albef_align.py "
                   + " ".join(sys.argv[1:] if argv is None else argv),
        "complete": False, "model": {**MODEL, **FUSION_MODEL}, "arms": ARMS,
        "steps": args.steps, "seeds": list(args.seeds), "torch": torch.__version__,
        "python": platform.python_version(), "runs": [],
    }  # fmt: skip
    jobs = [(s, name, w) for s in args.seeds for name, w in ARMS.items()]
    for k, (seed, name, w) in enumerate(jobs):
        record, _ = run_arm(w, seed, args.steps, data, evalset, test)
        results["runs"].append(record)
        results["complete"] = k == len(jobs) - 1
        results["summary"] = summarize(results["runs"])
        write_json(args.out, results)
        print(f"[{k + 1}/{len(jobs)}] seed {seed} {name:20s} R@1 {record['r1']:.3f}  ITM vs "
              f"wrong colour {record['itm_vs_wrong_colour']:.3f}, vs other scene "
              f"{record['itm_vs_other_scene']:.3f}  MLM colour {record['mlm_colour']:.3f}",
              flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
