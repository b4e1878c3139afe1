"""Does momentum distillation make ALBEF robust to noisy captions? (ALBEF §3.3, Li et al. 2021)

The command line over :mod:`minivlm.recipes.albef_noise` (the code lecture 3 runs live), over
noise levels, distillation on/off and seeds; see that module for the design and the choices.

  python experiments/albef_noise.py --out experiments/results/albef_noise.json
  python experiments/albef_noise.py --out experiments/results/albef_noise.json --resume --ablations

It refuses to overwrite an existing results file unless ``--force`` is given (``--resume``
keeps the runs already there and runs only the missing ones).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace

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
from minivlm.utils import ResultsFile, experiment_parser, refuse_overwrite


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__, "experiments/results/albef_noise.json", SEEDS)
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in --out and run only the missing ones (e.g. after an "
        "interruption, or to add --ablations to a finished main sweep)",
    )
    ap.add_argument("--steps", type=int, default=400)
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
    data = ShapesWorld().generate(RunConfig().n_train, seed=0)
    evalset = eval_pairs()
    fields = {
        "model": MODEL, "run_defaults": asdict(replace(RunConfig(), steps=args.steps)),
        "noise_levels": list(NOISE_LEVELS), "seeds": list(args.seeds),
        "eval": {"pairs": len(evalset[1]), "world_seed": 1, "metric": "mean of i2t and t2i R@1"},
    }  # fmt: skip
    res = ResultsFile("albef_noise", out, fields, args=args, argv=argv, summarize=summarize)
    if args.resume and out.exists():
        old = json.loads(out.read_text())
        for key in ("model", "run_defaults", "seeds"):
            if old.get(key) != res.data[key]:
                raise ValueError(
                    f"albef_noise --resume: {out} was made with {key}={old.get(key)}, this "
                    f"call would use {res.data[key]}; use another --out or --force"
                )
        commands = old["command"] if isinstance(old["command"], list) else [old["command"]]
        res.data["command"] = [*commands, res.data["command"]]
        res.data["runs"] = old["runs"]
        done = {(r["section"], r["noise"], r["distill"], r["seed"]) for r in old["runs"]}
        configs = [(sec, c) for sec, c in configs if (sec, c.noise, c.distill, c.seed) not in done]

    def one(job: tuple[str, RunConfig]) -> dict:
        record, _ = run(job[1], data, evalset)
        return {**record, "section": job[0]}

    res.run(configs, one,
            lambda job, r: f"{job[0]:15s} noise={job[1].noise} distill={job[1].distill!s:5s} "
                           f"seed={job[1].seed}: R@1 {' '.join(f'{v:.3f}' for v in r['r1'])} "
                           f"({r['cpu_s']:.0f} s CPU, {r['wall_s']:.0f} s wall)")  # fmt: skip
    if not configs:
        print("albef_noise: nothing left to run", file=sys.stderr)
    print_table(res.finish())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
