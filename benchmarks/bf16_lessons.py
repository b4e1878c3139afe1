"""Does bf16 change what lecture 5 teaches? The LLaVA stages recipe in fp32 and in bf16.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bf16_lessons.py --seed 0
    python benchmarks/bf16_lessons.py --quick          # tiny random parts (a smoke test)

Runs the recipe's central comparison (``minivlm.recipes.llava_stages``, the lecture's settings
``Recipe()``: the zoo's frozen ``shapes_clip`` tower and ``shapes_lm``, MLP projector, stage 1
then stage 2 on the VQA + dialogue mixture) once per precision on one seed, and records the
accuracy after stage 1 and after stage 1 + 2, the final losses and each stage's CPU time.
The other arms of the recipe (linear projector, stage 2 only, the VQA-only ablation) reuse
the same two ``fit`` calls, so they are left out to keep the bf16 run affordable.

bf16 means the recipe's own switch, ``Recipe(precision="bf16")``: bf16 autocast of the
training forward (weights, AdamW and the greedy answers stay fp32). On a CPU without native
bf16 that switch stays in fp32 (and says so); ``--emulate`` (the default here) makes it run
anyway, emulated, so that the numerics can be compared; its times then show what emulated bf16
costs, not what bf16 gains.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minivlm.recipes import llava_stages as ls
from minivlm.train import fast
from minivlm.utils import write_json


@contextlib.contextmanager
def forced_bf16(on: bool) -> Iterator[None]:
    """Make the precision switch treat this CPU as bf16-capable (emulated) while inside."""
    saved = fast.cpu_bf16_support
    if on:
        fast.cpu_bf16_support = lambda: (True, "emulated (forced by benchmarks/bf16_lessons)")
    try:
        yield
    finally:
        fast.cpu_bf16_support = saved


def timed_fit(*args: Any) -> tuple[list[float], float]:
    c0 = time.process_time()
    losses = ls.fit(*args)
    return losses, time.process_time() - c0


def run(vit: torch.nn.Module, lm: torch.nn.Module, seed: int, recipe: ls.Recipe,
        emulate: bool) -> dict[str, Any]:  # fmt: skip
    """Stage 1, then stage 2 of the MLP-projector arm, as ``run_seed`` runs them."""
    c0 = time.process_time()
    s = ls.Setup(vit, lm, seed, recipe)
    q = s.questions
    model = s.build("mlp2x_gelu")
    with forced_bf16(emulate and recipe.precision == "bf16"):
        loss1, cpu1 = timed_fit(s, model, s.stage1, recipe.s1_steps, 1, seed)
        acc1 = ls.accuracy(q, ls.answer(s, model, q))
        loss2, cpu2 = timed_fit(s, model, (s.vqa, s.dialogues), recipe.s2_steps, 2, seed + 1)
    acc2 = ls.accuracy(q, ls.answer(s, model, q))
    return {
        "precision": recipe.precision, "seed": seed,
        "acc": {"stage 1 only": acc1, "stage 1 + 2": acc2},
        "final_loss": {"stage 1": float(np.mean(loss1[-10:])),
                       "stage 2": float(np.mean(loss2[-10:]))},
        "cpu_s": {"stage 1": cpu1, "stage 2": cpu2, "total": time.process_time() - c0},
        "cpu_s_per_step": {"stage 1": cpu1 / recipe.s1_steps, "stage 2": cpu2 / recipe.s2_steps},
    }  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| precision | acc. stage 1 only | acc. stage 1 + 2 | loss stage 1 / 2 (last 10) "
             "| CPU s per step, stage 1 / 2 | CPU s in all |",
             "|---|---:|---:|---|---|---:|"]  # fmt: skip
    for r in rows:
        a, lo, c = r["acc"], r["final_loss"], r["cpu_s_per_step"]
        lines.append(f"| {r['precision']} | {a['stage 1 only']['all']:.3f} | "
                     f"{a['stage 1 + 2']['all']:.3f} | {lo['stage 1']:.3f} / {lo['stage 2']:.3f} "
                     f"| {c['stage 1']:.3f} / {c['stage 2']:.3f} | {r['cpu_s']['total']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    ap.add_argument("--no-emulate", dest="emulate", action="store_false",
                    help="bf16 only where native (here it then stays fp32)")
    ap.add_argument("--s1-steps", type=int, default=None, help="default: the lecture's")
    ap.add_argument("--s2-steps", type=int, default=None, help="default: the lecture's")
    ap.add_argument("--quick", action="store_true",
                    help="tiny random parts, 2 + 2 steps, 16 scenes (a smoke test)")
    ap.add_argument("--out", default="runs/bf16_lessons", help="folder for the JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    recipe = ls.Recipe()
    if args.quick:
        recipe = replace(recipe, n_train=16, n_test=2, s1_steps=2, s2_steps=2, batch_size=4)
        vit, lm = ls.random_parts(0)
    else:
        from minivlm import zoo

        vit = zoo.load_image_encoder(verbose=False)
        lm = zoo.load("shapes_lm", verbose=False)
    for name in ("s1_steps", "s2_steps"):
        if getattr(args, name) is not None:
            if getattr(args, name) < 1:
                ap.error(f"--{name.replace('_', '-')} must be >= 1")
            recipe = replace(recipe, **{name: getattr(args, name)})
    out = Path(args.out) / f"llava_stages_seed{args.seed}{'_quick' if args.quick else ''}.json"
    res: dict[str, Any] = {"recipe": asdict(recipe), "emulate": args.emulate,
                           "native_bf16": fast.cpu_bf16_support(), "rows": []}  # fmt: skip
    for precision in args.precision:
        row = run(vit, lm, args.seed, replace(recipe, precision=precision), args.emulate)
        res["rows"].append(row)
        write_json(out, res)  # after each precision: a stopped run keeps what it measured
        print(table(res["rows"][-1:]).splitlines()[-1], flush=True)
    print(table(res["rows"]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
