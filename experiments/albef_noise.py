"""Does momentum distillation make ALBEF robust to noisy captions? (ALBEF §3.3, Li et al. 2021)

The command line over :mod:`minivlm.recipes.albef_noise` (the code lecture 3 runs live), over
noise levels, distillation on/off and seeds; see that module for the design and the choices.

  python experiments/albef_noise.py --out experiments/results/albef_noise.json
  python experiments/albef_noise.py --out experiments/results/albef_noise.json --resume --ablations

It refuses to overwrite an existing results file unless ``--force`` is given (``--resume``
keeps the runs already there and runs only the missing ones).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from typing import Any

import torch

from minivlm.data import ShapesWorld
from minivlm.recipes.albef_noise import (
    MODEL,
    NOISE_LEVELS,
    SEEDS,
    RunConfig,
    eval_pairs,
    print_table,
    run,
    summarize,
    sweep_configs,
)
from minivlm.utils import add_results_args, refuse_overwrite, write_json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_results_args(ap, default="experiments/results/albef_noise.json")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in --out and run only the missing ones (e.g. after an "
        "interruption, or to add --ablations to a finished main sweep)",
    )
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument(
        "--ablations",
        action="store_true",
        help="also run the ablations (50%% noise: alpha 0.7, momentum 0.995; 30%% noise: 1000 "
        "steps)",
    )
    args = ap.parse_args(argv)
    out = args.out
    if refuse_overwrite(out, args.force or args.resume, "albef_noise",
                        " or --resume to add the missing runs"):  # fmt: skip
        return 2
    torch.set_num_threads(1)  # deterministic and cheap on a shared CPU
    configs = sweep_configs(args.steps, tuple(args.seeds))
    if not args.ablations:
        configs = [c for c in configs if c[0] == "main"]
    command = "python experiments/albef_noise.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    data = ShapesWorld().generate(RunConfig().n_train, seed=0)
    evalset = eval_pairs()
    results: dict[str, Any] = {
        "command": command, "complete": False, "model": MODEL,
        "run_defaults": asdict(replace(RunConfig(), steps=args.steps)),
        "noise_levels": list(NOISE_LEVELS), "seeds": list(args.seeds),
        "eval": {"pairs": len(evalset[1]), "world_seed": 1, "metric": "mean of i2t and t2i R@1"},
        "torch": torch.__version__, "python": platform.python_version(), "runs": [],
    }  # fmt: skip
    if args.resume and out.exists():
        old = json.loads(out.read_text())
        for key in ("model", "run_defaults", "seeds"):
            if old.get(key) != results[key]:
                raise ValueError(
                    f"albef_noise --resume: {out} was made with {key}={old.get(key)}, this "
                    f"call would use {results[key]}; use another --out or --force"
                )
        commands = old["command"] if isinstance(old["command"], list) else [old["command"]]
        results["command"] = [*commands, command]
        results["runs"] = old["runs"]
        done = {(r["section"], r["noise"], r["distill"], r["seed"]) for r in old["runs"]}
        configs = [(sec, c) for sec, c in configs if (sec, c.noise, c.distill, c.seed) not in done]
    t0 = time.perf_counter()
    wall0 = float(results.get("total_wall_s", 0.0))
    for k, (section, cfg) in enumerate(configs):
        record, _ = run(cfg, data, evalset)
        record["section"] = section
        results["runs"].append(record)
        results["complete"] = k == len(configs) - 1
        results["summary"] = summarize(results["runs"])
        results["total_wall_s"] = round(wall0 + time.perf_counter() - t0, 1)
        write_json(out, results)
        print(
            f"[{k + 1}/{len(configs)}] {section:15s} noise={cfg.noise} distill={cfg.distill!s:5s}"
            f" seed={cfg.seed}: R@1 {' '.join(f'{v:.3f}' for v in record['r1'])} "
            f"({record['cpu_s']:.0f} s CPU, {record['wall_s']:.0f} s wall)",
            flush=True,
        )
    if not configs:
        print("albef_noise: nothing left to run", file=sys.stderr)
    print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
