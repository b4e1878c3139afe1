"""What does it take for CLIP to learn *shape* on the shapes world? (lecture 1, section 8)

A thin command line over :mod:`minivlm.recipes.clip_shape` (the recipe, its data and its scoring
live there, shared with notebook 01); this file runs it over seeds and writes the results JSON.
Regenerate the committed results::

  python experiments/clip_shape.py --out experiments/results/clip_shape.json --force

Without ``--force`` it refuses to overwrite ``--out``; the file is written atomically.
"""

from __future__ import annotations

import argparse
import platform

import torch

from minivlm.recipes.clip_shape import DATA, SEEDS, TOWERS, run, summarize
from minivlm.utils import add_results_args, refuse_overwrite, write_json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_results_args(ap)
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--towers", nargs="+", default=list(TOWERS), choices=list(TOWERS))
    args = ap.parse_args(argv)
    if refuse_overwrite(args.out, args.force, "clip_shape"):
        return 2
    torch.set_num_threads(1)
    runs = []
    for tower in args.towers:
        for data_name, mo in DATA.items():
            for seed in args.seeds:
                r, _ = run(tower, mo, seed, args.steps, args.n_train)
                runs.append(r)
                print(f"{tower:3s} {data_name:11s} seed {seed}: zero-shot shape "
                      f"{r['zero_shot_shape']:.3f} colour {r['zero_shot_color']:.3f} probe "
                      f"{r['probe_shape']:.3f} ({r['cpu_seconds']:.0f} s CPU)", flush=True)
    result = dict(
        experiment="clip_shape", steps=args.steps, seeds=args.seeds, n_train=args.n_train,
        torch=torch.__version__, machine=platform.machine(), runs=runs, summary=summarize(runs),
    )  # fmt: skip
    write_json(args.out, result)
    for name, cell in result["summary"].items():
        print(f"{name:18s} zero-shot shape {cell['zero_shot_shape_mean']:.3f} ± "
              f"{cell['zero_shot_shape_std']:.3f}, probe {cell['probe_shape_mean']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
