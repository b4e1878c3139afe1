"""Which LLaVA training stage matters, and which projector? (LLaVA §4.2, §5.1; LLaVA-1.5 §3)

The command line over :mod:`minivlm.recipes.llava_stages` (the code lecture 5 runs live), over
seeds; see that module for the arms and the recipe.

  python experiments/llava_stages.py --out experiments/results/llava_stages.json

It refuses to overwrite an existing results file unless ``--force`` is given. The file is
rewritten atomically after every seed, with ``"complete": false`` until the last one.
``--random-parts`` swaps the zoo's pretrained parts for tiny random ones (a smoke test).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import asdict
from typing import Any

import torch

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
from minivlm.utils import add_results_args, refuse_overwrite, write_json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_results_args(ap, default="experiments/results/llava_stages.json")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    d = Recipe()
    for name in ("n_train", "n_test", "s1_steps", "s2_steps"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name),
                        help=f"default {getattr(d, name)} (the notebook's)")  # fmt: skip
    ap.add_argument("--random-parts", action="store_true",
                    help="tiny random ViT and LM instead of the zoo's (smoke tests)")  # fmt: skip
    args = ap.parse_args(argv)
    out = args.out
    if refuse_overwrite(out, args.force, "llava_stages"):
        return 2
    torch.set_num_threads(1)  # deterministic and cheap on a shared CPU
    recipe = Recipe(n_train=args.n_train, n_test=args.n_test, s1_steps=args.s1_steps,
                    s2_steps=args.s2_steps)  # fmt: skip
    if args.random_parts:
        vit, lm = random_parts()
    else:
        from minivlm import zoo

        vit = zoo.load_image_encoder(verbose=False)
        lm = zoo.load("shapes_lm", verbose=False)
    command = "python experiments/llava_stages.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    results: dict[str, Any] = {
        "command": command, "complete": False, "recipe": asdict(recipe),
        "parts": "random (smoke test)" if args.random_parts else "zoo: shapes_clip + shapes_lm",
        "seeds": list(args.seeds), "arms": list(ARMS), "qtypes": list(QTYPES),
        "metric": "exact-match accuracy of greedy answers on held-out one-object scenes "
                  f"(world seed {TEST_SEED} + seed)",
        "torch": torch.__version__, "python": platform.python_version(), "runs": [],
    }  # fmt: skip
    t0 = time.perf_counter()
    for k, seed in enumerate(args.seeds):
        record = run_seed(vit, lm, seed, recipe)
        results["runs"].append(record)
        results["complete"] = k == len(args.seeds) - 1
        results["summary"] = summarize(results["runs"])
        results["total_wall_s"] = round(time.perf_counter() - t0, 1)
        write_json(out, results)
        a = record["acc"]
        print(f"[{k + 1}/{len(args.seeds)}] seed {seed}: colour/all  stage 1 only "
              f"{a['stage 1 only']['color']:.2f}/{a['stage 1 only']['all']:.2f}, stage 2 only "
              f"{a['stage 2 only']['color']:.2f}/{a['stage 2 only']['all']:.2f}, both "
              f"{a['stage 1 + 2']['color']:.2f}/{a['stage 1 + 2']['all']:.2f} "
              f"({record['cpu_s']:.0f} s CPU, {record['wall_s']:.0f} s wall)",
              flush=True)  # fmt: skip
    print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
