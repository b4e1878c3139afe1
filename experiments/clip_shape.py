"""What does it take for CLIP to learn *shape* on the shapes world? (lecture 1, section 8)

Notebook 01's ``clip_tiny`` (a 3-block ViT over 16x16 patches) learns colour in 150 steps
but not shape: zero-shot shape accuracy and a linear probe of shape from its image embedding
both stay at chance. Two suspects, crossed in a 2x2 grid and run over seeds:

* **the image tower** -- ``clip_tiny`` (ViT) versus ``clip_tiny_cnn`` (the same text tower
  with a 3-stage CNN, :class:`minivlm.nn.convnet.ConvNet`; CLIP §2.4 trains ResNets too). The
  ViT paper (§3.1) says a ViT lacks a CNN's locality and translation equivariance and must
  learn them from data; notebook 00 shows the same ViT failing at supervised shape
  classification where a small CNN succeeds.
* **the data** -- scenes with 1-4 objects (notebook 01's training set) versus one object
  per scene. Contrastive learning learns what tells the captions of a batch apart: with
  several objects per scene the colours, sizes and count already identify nearly every
  caption among 64, so shape earns little; with one object, two captions in a batch often
  share colour and size and differ only in the shape word.

For each run: zero-shot colour and shape accuracy on 300 held-out one-object images (the
prompt ensemble of notebook 01: "a {colour} {shape}" and "a {size} {colour} {shape}" over all
colours and sizes), and a linear probe of shape from the frozen image embeddings (200 fit,
100 scored). Regenerate the committed results (4 cells x 3 seeds x 700 steps, about 10
minutes of CPU time in one thread)::

  python experiments/clip_shape.py --out experiments/results/clip_shape.json

It refuses to overwrite ``--out`` unless ``--force`` is given; the file is written atomically.
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import minivlm
from minivlm.data import COLORS, SHAPES, SIZES, CaptionDataset, ShapesWorld, shapes_tokenizer
from minivlm.eval import linear_probe
from minivlm.models.clip import build_zero_shot_classifier, zero_shot_predict
from minivlm.train import TrainConfig, train
from minivlm.utils import add_results_args, refuse_overwrite, write_json

TOWERS = {"vit": "clip_tiny", "cnn": "clip_tiny_cnn"}
DATA = {"1-4 objects": 4, "1 object": 1}  # max objects per training scene
SEEDS = (0, 1, 2)


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def prompt_templates(task: str) -> list:
    """Notebook 01's ensemble for ``task`` ("color" or "shape"): the other attribute(s) vary."""
    if task == "shape":
        return [lambda s, c=c: _a(f"{c} {s}") for c in COLORS] + [
            lambda s, c=c, z=z: _a(f"{z} {c} {s}") for c in COLORS for z in SIZES
        ]
    return [lambda c, s=s: _a(f"{c} {s}") for s in SHAPES] + [
        lambda c, s=s, z=z: _a(f"{z} {c} {s}") for s in SHAPES for z in SIZES
    ]


def run(
    tower: str,
    max_objects: int,
    seed: int,
    steps: int,
    n_train: int = 4000,
    lr: float = 1e-3,
    batch_size: int = 64,
    **overrides: Any,
) -> tuple[dict[str, Any], torch.nn.Module]:
    """Train one CLIP and measure it: returns (record, model). Deterministic given ``seed``
    on one CPU thread (notebook 01 calls this for its live run). ``overrides`` go to
    ``create_model`` (e.g. ``vision_widths=(16, 32, 64)``)."""
    if tower not in TOWERS:
        raise ValueError(f"run: tower must be one of {sorted(TOWERS)}, got {tower!r}")
    tok, world = shapes_tokenizer(), ShapesWorld()
    data = world.generate(n_train, seed=seed, max_objects=max_objects)
    single = world.generate(300, seed=seed + 200, min_objects=1, max_objects=1)
    minivlm.seed_everything(seed)
    if tower == "vit":  # notebook 01's clip_tiny: 16x16 patches
        overrides = {"patch_size": 16, **overrides}
    model = minivlm.create_model(TOWERS[tower], vocab_size=tok.vocab_size, **overrides)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=10, seed=seed,
                      progress=False)  # fmt: skip
    t0 = time.process_time()
    res = train(model, CaptionDataset(data, tok), cfg, device="cpu")
    cpu = time.process_time() - t0
    model.eval()
    px = single.pixel_values()
    out: dict[str, Any] = dict(tower=tower, max_objects=max_objects, seed=seed, steps=steps,
                               cpu_seconds=round(cpu, 1),
                               final_loss=float(np.mean(res.history["loss"][-10:])))  # fmt: skip
    classes = {"color": list(COLORS), "shape": list(SHAPES)}
    for task, names in classes.items():
        w = build_zero_shot_classifier(model, tok, names, prompt_templates(task))
        _, pred = zero_shot_predict(model, px, w)
        y = torch.as_tensor(single.labels(task))
        out[f"zero_shot_{task}"] = (pred == y).float().mean().item()
    with torch.no_grad():
        feats = F.normalize(model.encode_image(px), dim=-1)  # (300, E)
    out["probe_shape"] = linear_probe(feats, single.labels("shape"), n_train=200)
    return out, model


def summarize(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and std over seeds of each (tower, data) cell."""
    table: dict[str, dict[str, float]] = {}
    for tower in TOWERS:
        for data_name, mo in DATA.items():
            rows = [r for r in runs if r["tower"] == tower and r["max_objects"] == mo]
            if not rows:
                continue
            cell = {"n": len(rows)}
            for key in ("zero_shot_shape", "zero_shot_color", "probe_shape"):
                v = np.array([r[key] for r in rows])
                cell[f"{key}_mean"], cell[f"{key}_std"] = float(v.mean()), float(v.std())
            table[f"{tower}, {data_name}"] = cell
    return table


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
