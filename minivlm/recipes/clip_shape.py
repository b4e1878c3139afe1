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

The command line ``experiments/clip_shape.py`` runs this recipe over seeds; it refuses to overwrite
``--out`` unless ``--force`` is given and writes the file atomically.
"""

from __future__ import annotations

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
