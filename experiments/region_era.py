"""Before ViT: skip connections, regions vs grids, word-region alignment, random pixel
sampling and what the detector costs (lecture 11).

The multi-seed experiment behind the "How we know" tables of
``notebooks/11_region_era.ipynb``. Per seed it runs :mod:`minivlm.recipes.region_era`:

    depth        ResNet vs plain CNN of the same depth (25 convolutions, no normalisation),
                 and a shallow plain CNN (7): final loss, accuracy, first-layer gradient norm
    binding      uniter (colour-word MLM, --bind-steps: 2,500) on detector regions;
                 uniter+itm / uniter+itm+wra (MLM + ITM, + WRA) and pixel-bert on the ResNet
                 grid with all 64 cells or 16 sampled (--steps: 300): held-out binding
                 accuracy per kind (chance 0.5) and CPU time per step; for the UNITER arms
                 also with jittered (0.2) and dropped (p = 0.5) boxes at test time, and the
                 word->region accuracy of the IPOT plan
    cost         CPU ms per image of the region pipeline, the grid and a patch embedding

Regenerate (3 seeds; about 6 minutes of CPU time, single-threaded)::

  python experiments/region_era.py --out experiments/results/region_era.json

It refuses to overwrite an existing file unless ``--force``; the file is rewritten atomically
after every seed with ``"complete": false`` until the last.
"""

from __future__ import annotations

import sys

import numpy as np

from minivlm.data import ShapesWorld
from minivlm.recipes import region_era as rr
from minivlm.utils import ResultsFile, experiment_parser


def one_seed(seed: int, steps: int, depth_steps: int, arms: list[str], n_train: int = 1500,
             n_test: int = 400, depth_n: int = 1024, bind_steps: int = 2500) -> dict:  # fmt: skip
    res: dict = {"seed": seed, "depth": {}, "binding": {}}
    one = ShapesWorld(min_objects=1, max_objects=1).generate(depth_n, seed=seed)
    for name, kw in (("resnet", dict(residual=True)), ("plain", dict(residual=False)),
                     ("plain shallow", dict(residual=False, blocks=1))):  # fmt: skip
        r = rr.depth_run(seed=seed, steps=depth_steps, data=one, **kw)
        res["depth"][name] = {"depth": r["depth"], "acc": r["acc"],
                              "loss_first": float(np.mean(r["loss"][:5])),
                              "loss_last": float(np.mean(r["loss"][-10:])),
                              "grad0_first": float(np.mean(r["grad0"][:5]))}  # fmt: skip
    data = rr.make_data(seed, n_train, n_test)
    test = data["test"].scenes
    for arm in arms:
        n = bind_steps if arm == "uniter" else steps
        model, hist = rr.train_binding(arm, data, seed, steps=n)
        row = {"steps": n,"clean": rr.binding_accuracy(model, data),
               "cpu_ms_per_step": round(1000 * hist["cpu_per_step"], 1),
               "final_loss": float(np.mean(hist["loss"][-20:]))}  # fmt: skip
        if arm.startswith("uniter"):
            row["jitter 0.2"] = rr.binding_accuracy(model, data,
                                                    det=rr.detect(test, jitter=0.2, seed=seed))
            row["drop 0.5"] = rr.binding_accuracy(model, data,
                                                  det=rr.detect(test, drop=0.5, seed=seed))
            row["wra_accuracy"] = rr.wra_accuracy(model, data)
        res["binding"][arm] = row
    return res


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__)
    ap.add_argument("--steps", type=int, default=300, help="steps of all arms but uniter")
    ap.add_argument("--bind-steps", type=int, default=2500, help="steps of the uniter arm")
    ap.add_argument("--depth-steps", type=int, default=80)
    ap.add_argument("--arms", nargs="+", default=list(rr.ARMS), choices=rr.ARMS)
    ap.add_argument("--n-train", type=int, default=1500)
    ap.add_argument("--depth-n", type=int, default=1024)
    ap.add_argument("--n-test", type=int, default=400)
    ap.add_argument("--cost-images", type=int, default=64)
    args = ap.parse_args(argv)
    res = ResultsFile.start("region_era", args, argv, {}, key="seeds")
    if res is None:
        return 2
    res.run(args.seeds,
            lambda seed: one_seed(seed, args.steps, args.depth_steps, args.arms, args.n_train,
                                  args.n_test, args.depth_n, args.bind_steps),
            res.seed_done)  # fmt: skip
    out = res.finish(cost_ms_per_image=rr.pipeline_cost(args.cost_images))
    for arm in args.arms:
        rows = [s["binding"][arm]["clean"] for s in out["seeds"]]
        print(f"{arm:20s}", "  ".join(f"{k} {np.mean([r[k] for r in rows]):.2f}"
                                      for k in rows[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
