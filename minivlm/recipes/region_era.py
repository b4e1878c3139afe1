"""Lecture 11: before ViT -- CNN features, region features, LXMERT / UNITER / Pixel-BERT.

Shared by ``notebooks/11_region_era.ipynb`` and ``experiments/region_era.py``.

* :func:`detect` -- the shapes world's "detector": every object's box (it knows them), with a
  real detector's errors played by ``jitter`` (box corners moved by a fraction of the box
  size) and ``drop`` (a box missed). Boxes are in pixels, objects left to right.
* :func:`region_features` -- RoI-Align (4x4 bins) over the image itself: a 48-d feature per
  box, the stand-in for a frozen Faster R-CNN's pooled features (which, trained on Visual
  Genome's objects and attributes, already separate one object's colour and shape from the
  rest of the image). Plus the 7-d box position.
* :func:`depth_run` -- skip connections make depth trainable: a plain CNN vs the ResNet of the
  same depth on shape classification, loss and first-layer gradient norm per step.
* :func:`train_binding` / :func:`binding_accuracy` -- lecture 2's binding test (colour words
  MLM-trained on binding captions, scored by pseudo-log-likelihood on held-out pairs, chance
  0.5) for UNITER on regions (optionally with ITM + WRA) and Pixel-BERT on the CNN grid
  (optionally with random pixel sampling).
* :func:`wra_accuracy` -- for each colour word, is the region that the IPOT plan sends most
  of its mass to the object of that colour?
* :func:`pipeline_cost` -- CPU time per image: CNN + RoI-Align region pipeline vs Pixel-BERT's
  grid vs ViLT's patch embedding.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import minivlm
from minivlm.data import COLORS, SHAPES, ShapesWorld
from minivlm.data.shapes.scenes import SIZE_RADIUS
from minivlm.models.uniter import word_region_plan
from minivlm.nn.convnet import box_position_features, roi_align
from minivlm.objectives import cost_matrix_cosine, wpa_loss
from minivlm.recipes.vilt_binding import KINDS, ClippedAdamW, Text, binding_pairs, test_pairs

__all__ = ["ARMS", "detect", "region_features", "depth_run", "train_binding",
           "binding_accuracy", "wra_accuracy", "pipeline_cost", "make_data"]  # fmt: skip

ROI_SIZE = 4  # 4x4 bins x 3 colour channels = 48-d region features


# ---------------------------------------------------------------------------
# The "detector" and region features
# ---------------------------------------------------------------------------


def detect(scenes: list, max_regions: int = 2, jitter: float = 0.0, drop: float = 0.0,
           seed: int = 0) -> dict[str, torch.Tensor]:  # fmt: skip
    """Boxes of every object: ``boxes`` (B, N, 4) pixels (x1, y1, x2, y2), ``mask`` (B, N) 1 =
    a box, ``labels`` (B, N) shape index (the detector's class), ``colors`` (B, N) colour
    index (for scoring only). ``jitter``: each corner moves by Normal(0, jitter x box side);
    ``drop``: each box is missed with this probability. Deterministic in ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    B, N = len(scenes), max_regions
    boxes, mask = torch.zeros(B, N, 4), torch.zeros(B, N, dtype=torch.long)
    labels, colors = torch.zeros(B, N, dtype=torch.long), torch.full((B, N), -1)
    names = list(COLORS)
    for i, sc in enumerate(scenes):
        if len(sc.objects) > N:
            raise ValueError(f"detect: scene {i} has {len(sc.objects)} objects > max_regions {N}")
        for j, o in enumerate(sc.objects):
            r = SIZE_RADIUS[o.size] * sc.image_size
            boxes[i, j] = torch.tensor([o.x - r, o.y - r, o.x + r, o.y + r])
            mask[i, j], labels[i, j], colors[i, j] = 1, SHAPES.index(o.shape), names.index(o.color)
    if jitter > 0:
        side = (boxes[..., 2:] - boxes[..., :2]).repeat(1, 1, 2)  # (B, N, 4)
        boxes = boxes + jitter * side * torch.randn(boxes.shape, generator=gen)
        lo = torch.minimum(boxes[..., :2], boxes[..., 2:])  # (B, N, 2) keep x1 <= x2
        hi = torch.maximum(boxes[..., :2], boxes[..., 2:])
        boxes = torch.cat([lo, hi], -1)
    if drop > 0:
        mask = mask * (torch.rand(B, N, generator=gen) >= drop).long()
    boxes = boxes * mask[..., None]
    return {"boxes": boxes, "mask": mask, "labels": labels, "colors": colors}


def region_features(pixel_values: torch.Tensor, det: dict[str, torch.Tensor],
                    image_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(B, 3, H, W) images + :func:`detect` output -> features (B, N, 48) (RoI-Align 4x4 of
    the RGB image, missing boxes zero) and positions (B, N, 7)."""
    f = roi_align(pixel_values, det["boxes"], ROI_SIZE, 1.0, 2).flatten(2)  # (B, N, 48)
    m = det["mask"][..., None].to(f.dtype)
    return f * m, box_position_features(det["boxes"], image_size) * m


# ---------------------------------------------------------------------------
# Skip connections make depth trainable (He et al. 2016, §4.1)
# ---------------------------------------------------------------------------


def depth_run(residual: bool, seed: int = 0, steps: int = 80, blocks: int = 4,
              batch_size: int = 32, lr: float = 3e-3, data: Any = None,
              task: str = "color", opt_name: str = "adam") -> dict[str, Any]:  # fmt: skip
    """Train a ResNet (``residual``) or its plain twin (3 stages x ``blocks`` basic blocks,
    no normalisation, widths 8/16/16, PyTorch's default init) to classify the ``task`` label
    (colour) of one-object scenes at 32 pixels; Adam (or SGD with momentum 0.9), gradients
    clipped at 1. Returns per-step ``loss`` and ``grad0`` (norm of the first convolution's
    gradient before clipping), accuracy ``acc`` on 256 training images and the ``depth``."""
    if data is None:
        data = ShapesWorld(min_objects=1, max_objects=1).generate(1024, seed=seed)
    x, y = F.avg_pool2d(data.pixel_values(), 2), data.labels(task)  # 32-px images
    minivlm.seed_everything(seed)
    net = minivlm.create_model("resnet_tiny", residual=residual, norm="none", blocks=blocks,
                               widths=(8, 16, 16))  # fmt: skip
    head = nn.Linear(16, int(y.max()) + 1)
    params = list(net.parameters()) + list(head.parameters())
    opt = (torch.optim.SGD(params, lr=lr, momentum=0.9) if opt_name == "sgd"
           else torch.optim.Adam(params, lr=lr))  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    loss_h, grad_h = [], []
    for _ in range(steps):
        idx = torch.randint(len(y), (batch_size,), generator=gen)
        logits = head(net(x[idx]))
        loss = F.cross_entropy(logits, y[idx])
        opt.zero_grad()
        loss.backward()
        grad_h.append(float(net.stem[0].weight.grad.norm()))
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss_h.append(loss.item())
    with torch.no_grad():
        acc = float((head(net(x[:256])).argmax(-1) == y[:256]).float().mean())
    return {"loss": loss_h, "grad0": grad_h, "acc": acc, "depth": net.config.depth}


# ---------------------------------------------------------------------------
# Binding: UNITER on regions vs Pixel-BERT on the grid (lecture 2's test)
# ---------------------------------------------------------------------------

ARMS = ("uniter", "uniter+itm", "uniter+itm+wra", "pixel-bert", "pixel-bert sampled")
SAMPLED = 16  # of the 8x8 = 64 grid cells, Pixel-BERT's random pixel sampling arm


def make_data(seed: int, n_train: int = 1500, n_test: int = 400) -> dict[str, Any]:
    """Two-object scenes (train: ``seed``, test: 1000 + ``seed``), their clean detections and
    region features, and the binding scenes/pairs."""
    world = ShapesWorld(min_objects=2, max_objects=2)
    train, test = world.generate(n_train, seed=seed), world.generate(n_test, seed=1000 + seed)
    out: dict[str, Any] = {"train": train, "test": test}
    for name, d in (("train", train), ("test", test)):
        det = detect(d.scenes, seed=seed)
        out[name + "_det"] = det
        out[name + "_regions"] = region_features(d.pixel_values(), det)
    out["pairs"] = {i: p for i in range(n_train) if (p := binding_pairs(train, i))}
    return out


def make_model(arm: str, text: Text, own_wra: bool = False) -> nn.Module:
    """A fresh model for ``arm`` (seed the RNG first); ``own_wra``: the WRA loss is added by
    the caller (with its own IPOT), not by the model."""
    if arm not in ARMS:
        raise ValueError(f"make_model: arm must be one of {ARMS}, got {arm!r}")
    V = text.tok.vocab_size
    if arm.startswith("uniter"):
        wra = 1.0 if arm.endswith("wra") and not own_wra else 0.0
        return minivlm.create_model("uniter_tiny", vocab_size=V, wra_weight=wra)
    k = SAMPLED if arm.endswith("sampled") else 0
    return minivlm.create_model("pixel_bert_tiny", vocab_size=V, sample_pixels=k)


def _mlm_logits(model: nn.Module, ids, am, data: dict, split: str, idx,
                regions: tuple | None = None, det: dict | None = None) -> torch.Tensor:  # fmt: skip
    if hasattr(model, "embed_regions"):
        feats, pos = regions if regions is not None else data[split + "_regions"]
        rm = (det if det is not None else data[split + "_det"])["mask"]
        return model(ids, feats[idx], pos[idx], am, rm[idx]).mlm_logits
    return model(ids, data[split].pixel_values(idx), am).mlm_logits


def wra_loss(text_h: torch.Tensor, region_h: torch.Tensor, text_mask: torch.Tensor,
             region_mask: torch.Tensor, itm_labels: torch.Tensor, plan_fn: Any,
             beta: float = 0.5, iters: int = 50) -> torch.Tensor:  # fmt: skip
    """UNITER's WRA with a given IPOT ``plan_fn(cost, x_mask, y_mask, beta, iters)``: the
    transport distance <C, P> (P held constant) of matching pairs goes down, of others up."""
    cost = cost_matrix_cosine(text_h, region_h)  # (B, T, N)
    joint = text_mask[:, :, None] & region_mask[:, None, :]
    cost = cost.masked_fill(~joint, 0.0)
    with torch.no_grad():
        plan = plan_fn(cost.detach(), text_mask, region_mask, beta, iters)  # (B, T, N)
    return wpa_loss((cost * plan).sum(dim=(1, 2)), itm_labels)


def train_binding(
    arm: str, data: dict, seed: int, steps: int = 300, lr: float = 1e-3, batch_size: int = 32,
    text: Text | None = None, plan_fn: Any = None,
) -> tuple[nn.Module, dict]:  # fmt: skip
    """Train ``arm`` on colour-word MLM over one true binding caption per scene (every colour
    word hidden), AdamW with 30 warm-up steps and cosine decay, clipped at 1. The ``+itm``
    arms add image-text matching on the unmasked captions, half of them swapped for another
    scene's (and ``+wra`` its word-region alignment, with ``plan_fn`` as the IPOT solver when
    given). Returns (model, {loss, cpu_per_step})."""
    text = text or Text()
    minivlm.seed_everything(seed)
    own = plan_fn is not None and arm.endswith("wra")
    model = make_model(arm, text, own_wra=own)
    scenes = sorted(data["pairs"])
    opt = ClippedAdamW(model, lr, steps)
    gen = torch.Generator().manual_seed(seed)
    feats, pos = data["train_regions"]
    rm = data["train_det"]["mask"]
    losses = []
    model.train()
    t0 = time.process_time()
    for _ in range(steps):
        idx = [scenes[j] for j in torch.randint(len(scenes), (batch_size,), generator=gen)]
        caps = []
        for i in idx:
            kinds = list(data["pairs"][i])
            k = kinds[int(torch.randint(len(kinds), (1,), generator=gen))]
            caps.append(data["pairs"][i][k][0])  # the true caption of one binding kind
        ids, am = text.encode(caps)
        masked, labels = text.mask_colours(ids)
        logits = _mlm_logits(model, masked, am, data, "train", idx)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        if "itm" in arm:  # half the captions swapped for another scene's: ITM (+ WRA)
            swap = torch.rand(batch_size, generator=gen) < 0.5
            perm = torch.roll(torch.arange(batch_size), 1)
            ids2 = torch.where(swap[:, None], ids[perm], ids)
            am2 = torch.where(swap[:, None], am[perm], am)
            out = model(ids2, feats[idx], pos[idx], am2, rm[idx], itm_labels=(~swap).long())
            loss = loss + out.loss
            if own:
                T, tm = ids2.shape[1], am2.bool().clone()
                tm[:, 0] = False  # not [CLS]
                h = out.last_hidden_state
                loss = loss + wra_loss(h[:, :T], h[:, T:], tm, rm[idx].bool(), (~swap).long(),
                                       plan_fn)  # fmt: skip
        losses.append(opt.step(loss))
    cpu = (time.process_time() - t0) / steps
    model.eval()
    return model, {"loss": losses, "cpu_per_step": cpu}


@torch.no_grad()
def binding_accuracy(model: nn.Module, data: dict, text: Text | None = None,
                     det: dict | None = None) -> dict[str, float]:  # fmt: skip
    """Held-out pair accuracy per binding kind (chance 0.5): the true caption's colour words
    must get a higher MLM pseudo-log-likelihood than the hard negative's. ``det``: test-time
    detections to use instead of the clean ones (detector errors)."""
    text = text or Text()
    model.eval()
    regions = None
    if det is not None:
        regions = region_features(data["test"].pixel_values(), det)
    acc = {}
    for kind, rows in test_pairs(data["test"], KINDS).items():
        idx, pos, neg = zip(*rows, strict=True)
        idx = list(idx)
        score = []
        for caps in (pos, neg):
            ids, am = text.encode(list(caps))
            masked, labels = text.mask_colours(ids)
            logp = _mlm_logits(model, masked, am, data, "test", idx, regions, det).log_softmax(-1)
            slots = labels != -100
            score.append((logp.gather(-1, labels.clamp_min(0)[..., None])[..., 0] * slots).sum(1))
        acc[kind] = float((score[0] > score[1]).float().mean())
    return acc


@torch.no_grad()
def wra_plans(
    model: nn.Module, data: dict, idx: list[int], captions: list[str], text: Text | None = None,
    det: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The IPOT plan (B, T, N) between word and region states of UNITER on the given test
    scenes and captions, with the token ids (B, T) and the region mask (B, N); ``det``:
    test-time detections instead of the clean ones."""
    text = text or Text()
    if det is None:
        det, (feats, pos) = data["test_det"], data["test_regions"]
    else:
        feats, pos = region_features(data["test"].pixel_values(), det)
    rm = det["mask"][idx]
    ids, am = text.encode(captions)
    h = model(ids, feats[idx], pos[idx], am, rm).last_hidden_state  # (B, T+N, D)
    T = ids.shape[1]
    tm = am.bool().clone()
    tm[:, 0] = False
    cfg = model.config
    return word_region_plan(h[:, :T], h[:, T:], tm, rm.bool(), cfg.wra_beta, cfg.wra_iters), ids, rm


@torch.no_grad()
def wra_accuracy(model: nn.Module, data: dict, text: Text | None = None,
                 det: dict | None = None) -> float:  # fmt: skip
    """For every colour word of the held-out binding captions (scenes with two colours): does
    the region that receives most of the word's transport mass have that colour? (chance 0.5;
    a word whose region the detector missed counts as wrong.)"""
    text = text or Text()
    rows = [r for rs in test_pairs(data["test"], KINDS).values() for r in rs]
    idx, caps = [r[0] for r in rows], [r[1] for r in rows]
    plan, ids, rm = wra_plans(model, data, idx, caps, text, det)
    best = plan.argmax(-1)  # (B, T) the region each word sends most mass to
    colours = data["test_det"]["colors"][idx].masked_fill(rm == 0, -1)  # (B, N), missed: -1
    word_col = torch.full_like(ids, -1)
    for c, tid in enumerate(text.colour_ids):
        word_col[ids == tid] = c
    is_col = word_col >= 0
    hit = colours.gather(1, best) == word_col
    return float(hit[is_col].float().mean())


# ---------------------------------------------------------------------------
# What the detector costs (ViLT Fig. 1)
# ---------------------------------------------------------------------------


@torch.no_grad()
def pipeline_cost(n: int = 64, repeats: int = 3, seed: int = 0) -> dict[str, float]:
    """CPU milliseconds per 64-px image (median of ``repeats``) of: a ResNet backbone + RoI-Align
    of 2 boxes (the region pipeline without its proposal network and NMS, which a real
    detector adds), Pixel-BERT's grid (the same ResNet), and ViLT's patch embedding (one
    linear map of 8x8 patches, vilt_tiny)."""
    data = ShapesWorld(min_objects=2, max_objects=2).generate(n, seed=seed)
    x = data.pixel_values()
    det = detect(data.scenes)
    torch.manual_seed(seed)
    cnn = minivlm.create_model("resnet_tiny").eval()
    vilt = minivlm.create_model("vilt_tiny", num_answers=0).eval()

    def timed(fn) -> float:
        ts = []
        for _ in range(repeats):
            t0 = time.process_time()
            fn()
            ts.append(time.process_time() - t0)
        return 1000 * float(np.median(ts)) / n

    return {
        "region (ResNet + RoI-Align)": timed(
            lambda: roi_align(cnn.features(x), det["boxes"], 2, 1 / cnn.config.stride)),
        "grid (ResNet)": timed(lambda: cnn.features(x)),
        "patch embedding (ViLT)": timed(lambda: vilt.patch_embed(x)),
    }
