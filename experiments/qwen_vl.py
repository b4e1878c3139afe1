"""Qwen2-VL / Qwen2.5-VL on the shapes world: tokens vs resolution, M-RoPE vs 1-D positions,
forgetting without text-only data, window vs full attention (lecture 10).

The multi-seed experiment behind the "How we know" tables of ``notebooks/10_qwen_vl.ipynb``.
Per seed it runs :mod:`minivlm.recipes.qwen_vl`:

    arm                   model / data                                   measured
    windowed, full        qwen2_5_vl_tiny with / without windows,        colour accuracy at
                          one small shape, 16/32/64 px mixed,            16 / 32 / 64 px;
                          warm-up + cosine learning rate                 final loss
    windowed const,       the same at a constant learning rate           the same
    full const
    mrope, 1d             qwen2_vl_tiny without vision blocks,           left / top accuracy
                          "left / top shape" on 3x3..4x4 canvases,       per grid, unseen incl.;
                          warm-up + cosine learning rate                 final loss
    mrope const, 1d const the same at a constant learning rate           the same
    mrope breakdown,      the mrope / mrope const models, examples       accuracy by where the
    mrope const breakdown split by the other axis                        answer lies on it
    mrope probes          the mrope model with the text after the image  left / top accuracy
                          resumed at start + 4 or 6 (not + max(h, w)),   on 3x3, 2x6, 3x6, 6x2
                          and / or no column index on the image tokens
    mrope swap            trained with rows on the width section's       left / top accuracy
                          frequencies and columns on the height's        per grid; final loss
    text 0, text 0.5      shapes_lm inside Qwen2VL, VQA tuning with      caption perplexity
                          0 or half of each batch text-only              before / after

The "const" arms are the recipe's first version (constant 3e-3), kept to show why it was
replaced: with it seed 2 never learned the position task, and three small-shape runs (windowed
seeds 3 and 4, full seed 4) read the colour at only 0.36-0.52. Regenerate (seeds 0-4; about
8 minutes of CPU time, single-threaded)::

  python experiments/qwen_vl.py --out experiments/results/qwen_vl.json

It refuses to overwrite an existing file unless ``--force``; the file is rewritten atomically
after every seed with ``"complete": false`` until the last.
"""

from __future__ import annotations

from minivlm.recipes import qwen_vl as rq
from minivlm.utils import ResultsFile, experiment_parser


def one_seed(seed: int, steps: int, position_steps: int, forget_steps: int, n_eval: int,
             scenes: int = 300) -> dict:
    res: dict = {"seed": seed}
    for arm, window, warmup in (("windowed", True, 15), ("full", False, 15),
                                ("windowed const", True, None), ("full const", False, None)):
        model = rq.small_object_model(window, seed)
        loss = rq.train_small_object(model, steps=steps, seed=seed, warmup=warmup)
        res[arm] = {"accuracy": {str(k): v for k, v in
                                 rq.small_object_accuracy(model, n=n_eval, seed=seed).items()},
                    "final_loss": sum(loss[-10:]) / 10}
    for arm, warmup in (("mrope", 15), ("1d", 15), ("mrope const", None), ("1d const", None)):
        model = rq.position_model(arm.split()[0], seed)
        loss = rq.train_positions(model, steps=position_steps, seed=seed, warmup=warmup)
        res[arm] = {**rq.position_accuracy(model, n=n_eval, seed=seed),
                    "final_loss": sum(loss[-10:]) / len(loss[-10:])}
        if arm.startswith("mrope"):
            res[f"{arm} breakdown"] = {f"{kind} {g[0]}x{g[1]}": rq.position_breakdown(
                model, g, kind, n=n_eval, seed=seed) for kind, g in rq.BREAKDOWN}
        if arm == "mrope":
            res["mrope probes"] = {}
            for name, kw in rq.PROBES.items():
                with rq.probe_positions(model, **kw):
                    res["mrope probes"][name] = rq.position_accuracy(
                        model, grids=rq.PROBE_GRIDS, n=n_eval, seed=seed)
    model = rq.position_model("mrope", seed)
    with rq.probe_positions(model, swap_rows_cols=True):
        loss = rq.train_positions(model, steps=position_steps, seed=seed, warmup=15)
        res["mrope swap"] = {**rq.position_accuracy(model, n=n_eval, seed=seed),
                             "final_loss": sum(loss[-10:]) / len(loss[-10:])}
    for frac in (0.0, 0.5):
        res[f"text {frac}"] = rq.forgetting(frac, steps=forget_steps, seed=seed,
                                                scenes=scenes)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__, seeds=(0, 1, 2, 3, 4))
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--position-steps", type=int, default=150)
    ap.add_argument("--forget-steps", type=int, default=40)
    ap.add_argument("--n-eval", type=int, default=100)
    ap.add_argument("--scenes", type=int, default=300, help="VQA / caption scenes (forgetting)")
    args = ap.parse_args(argv)
    res = ResultsFile.start("qwen_vl", args, argv, {}, key="seeds")
    if res is None:
        return 2
    res.run(args.seeds,
            lambda seed: one_seed(seed, args.steps, args.position_steps, args.forget_steps,
                                  args.n_eval, args.scenes),
            res.seed_done)  # fmt: skip
    res.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
