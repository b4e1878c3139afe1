"""BLIP's CapFilt on noisy captions and CoCa's one model for two jobs, over seeds (lecture 6).

The multi-seed tables of the "How we know" appendix of ``notebooks/06_blip_coca.ipynb``; each
seed runs :mod:`minivlm.recipes.blip_coca` (see that module for the set-up and its choices):

    CapFilt   captioner + filter on the clean set; web captions filtered by ITM; synthetic
              captions by nucleus sampling and by beam search; retrieval models retrained on
              noisy / filtered / filtered + nucleus / filtered + beam data -> held-out R@1,
              filter precision and recall against the known corruptions, caption accuracy
    CoCa      λ_cap·cap + λ_con·con with (2, 1), (0, 1), (1, 0) -> R@1, caption accuracy

Regenerate (3 seeds, about 4 minutes of CPU time, single-threaded)::

  python experiments/blip_coca.py --out experiments/results/blip_coca.json

``--ablation`` runs instead the tests of why CapFilt's R@1 gain does not show (seeds 0-4, about
90 s of CPU per seed): per seed, the live captioner-filter and retrieval models retrained on
noisy / filtered data as above, plus an oracle filter (exactly the
corrupted pairs dropped), a random filter (as many pairs dropped as the filter drops, at random)
and the clean pairs alone, each for 100 and for ``--long-steps`` retrieval steps; R@1 also over
``--eval-sets`` held-out sets of 40 pairs; with ``--strong-steps N`` also a captioner-filter
trained for N steps (a stronger filter) and its filtered arm::

  python experiments/blip_coca.py --ablation --seeds 0 1 2 3 4 \
      --out experiments/results/blip_coca_ablation.json

It refuses to overwrite an existing file unless ``--force``; the file is rewritten atomically
after every seed with ``"complete": false`` until the last.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np

from minivlm.recipes import blip_coca as rb
from minivlm.utils import ResultsFile, experiment_parser

RETRAIN = ("noisy", "filtered", "filtered+nucleus", "filtered+beam")
ABLATE = ("noisy", "filtered", "oracle", "random", "clean")  # each also for --long-steps
STRONG = ("filtered",)  # retrained from the stronger filter (--strong-steps > 0), also long


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__)
    ap.add_argument("--captioner-steps", type=int, default=rb.CapFiltConfig.captioner_steps)
    ap.add_argument("--retrieval-steps", type=int, default=rb.CapFiltConfig.retrieval_steps)
    ap.add_argument("--coca-steps", type=int, default=rb.CoCaConfig.steps)
    ap.add_argument("--n-web", type=int, default=rb.CapFiltConfig.n_web)
    ap.add_argument("--n-clean", type=int, default=rb.CapFiltConfig.n_clean)
    ap.add_argument("--coca-n-train", type=int, default=rb.CoCaConfig.n_train)
    ap.add_argument("--noise", type=float, default=rb.CapFiltConfig.noise)
    ap.add_argument("--ablation", action="store_true",
                    help="the ablations of CapFilt (module docstring) instead of the tables")
    ap.add_argument("--long-steps", type=int, default=300, help="ablation: long retrieval runs")
    ap.add_argument("--strong-steps", type=int, default=0,
                    help="ablation: also a filter trained this many steps (0: none)")
    ap.add_argument("--eval-sets", type=int, default=5, help="ablation: held-out sets of 40")
    args = ap.parse_args(argv)
    if args.ablation:
        return ablation(args, argv)
    res = ResultsFile.start("blip_coca", args, argv, {}, key=("capfilt", "coca"))
    if res is None:
        return 2

    def one_seed(seed: int) -> dict:
        cfg = replace(rb.CapFiltConfig(), seed=seed, captioner_steps=args.captioner_steps,
                      retrieval_steps=args.retrieval_steps, n_web=args.n_web, noise=args.noise,
                      n_clean=args.n_clean, retrain=RETRAIN)  # fmt: skip
        capfilt, _ = rb.run_capfilt(cfg)  # first, as the committed results were made
        coca, _ = rb.run_coca(replace(rb.CoCaConfig(), seed=seed, steps=args.coca_steps,
                                       n_train=args.coca_n_train))
        return {"capfilt": capfilt, "coca": {"seed": seed, "arms": coca}}

    res.run(args.seeds, one_seed, res.seed_done)
    print_tables(res.finish())
    return 0


def ablation(args, argv: list[str] | None) -> int:
    """Per seed: the live captioner-filter with the extra arms, and a stronger filter."""
    res = ResultsFile.start("blip_coca", args, argv, {"ablation": True}, key=("capfilt", "strong"))
    if res is None:
        return 2

    def one_seed(seed: int) -> dict:
        def cfg(steps: int, arms: tuple[str, ...], methods: tuple[str, ...]) -> rb.CapFiltConfig:
            long = tuple(f"{a}@{args.long_steps}" for a in arms)
            return replace(rb.CapFiltConfig(), seed=seed, captioner_steps=steps,
                           retrieval_steps=args.retrieval_steps, n_web=args.n_web,
                           noise=args.noise, n_clean=args.n_clean, eval_sets=args.eval_sets,
                           methods=methods, retrain=arms + long)  # fmt: skip

        base, _ = rb.run_capfilt(cfg(args.captioner_steps, ABLATE, ()))
        if not args.strong_steps:
            return {"capfilt": base, "strong": None}
        return {"capfilt": base, "strong": rb.run_capfilt(cfg(args.strong_steps, STRONG, ()))[0]}

    res.run(args.seeds, one_seed, res.seed_done)
    print_ablation(res.finish())
    return 0


def print_ablation(out: dict) -> None:
    """Mean ± std over seeds of every arm's R@1 (set 1, and over all sets) and the filters."""

    def ms(vals: list[float]) -> str:
        return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0.0:.3f}"

    for part, title in (("capfilt", "live filter"), ("strong", "stronger filter")):
        runs = [r for r in out[part] if r is not None]
        if not runs:
            continue
        print(f"{title} ({runs[0]['config']['captioner_steps']} steps): precision "
              f"{ms([r['filter_precision'] for r in runs])}, recall "
              f"{ms([r['filter_recall'] for r in runs])}, kept {ms([r['kept_web'] for r in runs])}")
        print(f"  {'arm':22s} {'R@1 (set 1)':>15s} {'R@1 (all sets)':>15s}")
        for arm in runs[0]["r1"]:
            big = [np.mean(r["r1_sets"][arm]) for r in runs] if "r1_sets" in runs[0] else [0.0]
            print(f"  {arm:22s} {ms([r['r1'][arm] for r in runs]):>15s} {ms(big):>15s}")


def print_tables(out: dict) -> None:
    """Mean ± std over seeds of the CapFilt and CoCa numbers."""
    runs = out["capfilt"]

    def ms(vals: list[float]) -> str:
        return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0.0:.3f}"

    print("CapFilt: held-out R@1 of the retrained retrieval model")
    for arm in runs[0]["r1"]:
        print(f"  {arm:18s} {ms([r['r1'][arm] for r in runs])}")
    print(f"  filter precision {ms([r['filter_precision'] for r in runs])}, "
          f"recall {ms([r['filter_recall'] for r in runs])}")  # fmt: skip
    for m in runs[0]["captions"]:
        c = [r["captions"][m] for r in runs]
        print(f"  {m:8s} captions: exact {ms([x['exact'] for x in c])}, distinct "
              f"{ms([x['distinct'] for x in c])}, kept {ms([x['kept'] for x in c])}")  # fmt: skip
    print("CoCa: R@1, teacher-forced token accuracy, greedy exact match")
    for arm in out["coca"][0]["arms"]:
        a = [s["arms"][arm] for s in out["coca"]]
        print(f"  {arm:22s} R@1 {ms([x['r1'] for x in a])}  token acc "
              f"{ms([x['token_acc'] for x in a])}  "
              f"exact {ms([x['exact'] for x in a])}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
