"""Lecture 7 (MAE and BEiT): data, pre-training runs, probes and timings shared by
``notebooks/07_mae_beit.ipynb`` and ``experiments/mae_beit.py``.

Everything is sized for a CPU: one-object 64-px shapes-world images, 8-px patches (64 per image),
a 2-block, 64-wide ViT encoder. Pre-training sees images only; labels (colour, shape of the object)
are used by the probes and the fine-tunes.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import minivlm
from minivlm.data import Background, ShapesData, ShapesWorld
from minivlm.eval import linear_probe
from minivlm.models.beit import Beit, VQTokenizer, blockwise_mask_batch
from minivlm.models.mae import MAE, patchify_hwc
from minivlm.nn.vit import ViT, patchify
from minivlm.train import TrainConfig, train

Tensor = torch.Tensor
TASKS = ("color", "shape")


@dataclass
class Data:
    """Unlabelled pre-training images and a labelled probe set (first ``n_probe_train`` rows
    train the probe / fine-tune, the rest is held out)."""

    pretrain: Tensor  # (N_pre, 3, 64, 64) in [-1, 1]
    probe: Tensor  # (N_probe, 3, 64, 64)
    labels: dict[str, Tensor]  # task -> (N_probe,)
    n_probe_train: int
    object_patches: Tensor  # (N_probe, 64) bool: the patch holds object pixels


def make_data(seed: int = 0, n_pretrain: int = 2000, n_probe: int = 1200,
              n_probe_train: int = 800) -> Data:
    """One-object scenes (as lecture 00's shape test); different seeds for the two sets."""
    world = ShapesWorld(min_objects=1, max_objects=1)
    pre = world.generate(n_pretrain, seed=1000 + seed)
    probe = world.generate(n_probe, seed=2000 + seed)
    labels = {t: probe.labels(t) for t in TASKS}
    black = [dataclasses.replace(s, background=Background((0, 0, 0), (0.0, 0.0), 0))
             for s in probe.scenes]
    on_object = (world.render(black).sum(1, keepdim=True) > 0).float()  # (N, 1, 64, 64)
    object_patches = patchify(on_object, 8).amax(-1) > 0  # (N, 64)
    return Data(pre.pixel_values(), probe.pixel_values(), labels, n_probe_train, object_patches)


def batches(images: Tensor, steps: int, batch_size: int, seed: int) -> list[dict[str, Tensor]]:
    """``steps`` batches of images drawn in seeded random order (epochs reshuffled)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(images), generator=g)
                       for _ in range(steps * batch_size // len(images) + 1)])
    return [{"pixel_values": images[order[i * batch_size:(i + 1) * batch_size]]}
            for i in range(steps)]


def _config(steps: int, lr: float, seed: int) -> TrainConfig:
    return TrainConfig(steps=steps, lr=lr, warmup_steps=max(1, steps // 10), weight_decay=0.05,
                       seed=seed, progress=False, log_every=max(1, steps))


# ---------------------------------------------------------------------------- MAE


def pretrain_mae(data: Data, mask_ratio: float, steps: int = 120, seed: int = 0,
                 batch_size: int = 32, lr: float = 2e-3, norm_pix_loss: bool = False
                 ) -> tuple[MAE, list[float]]:
    """Pre-train ``mae_tiny`` at ``mask_ratio``; returns the model and its loss per step."""
    torch.manual_seed(seed)
    mae = minivlm.create_model("mae_tiny", mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss)
    result = train(mae, batches(data.pretrain, steps, batch_size, seed), _config(steps, lr, seed),
                   device="cpu")
    return mae.eval(), result.history["loss"]


@torch.no_grad()
def heldout_mae_loss(mae: MAE, images: Tensor, mask_ratio: float, seed: int = 0) -> float:
    """Reconstruction loss on held-out images with a fixed noise (same patches hidden for all)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(len(images), mae.config.num_patches, generator=g)
    return mae(images, noise=noise, mask_ratio=mask_ratio).loss.item()


@torch.no_grad()
def features(model: nn.Module, images: Tensor, chunk: int = 500) -> Tensor:
    """(N, D) probe features: ``model.features`` (mean patch token, nothing masked)."""
    model.eval()
    return torch.cat([model.features(images[i:i + chunk]) for i in range(0, len(images), chunk)])


def probe(feats: Tensor, data: Data) -> dict[str, float]:
    """Held-out linear-probe accuracy for each task on frozen features (standardised)."""
    z = (feats - feats[:data.n_probe_train].mean(0)) / (feats[:data.n_probe_train].std(0) + 1e-6)
    return {t: linear_probe(z, data.labels[t], data.n_probe_train) for t in TASKS}


def pixel_features(images: Tensor) -> Tensor:
    """Baseline features without any network: the mean of the raw patches, (N, 3*8*8)."""
    return patchify(images, 8).mean(dim=1)


class _Classifier(nn.Module):
    def __init__(self, vit: ViT, num_classes: int) -> None:
        super().__init__()
        self.vit, self.head = vit, nn.Linear(vit.config.dim, num_classes)

    def forward(self, pixel_values: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        logits = self.head(self.vit(pixel_values)[:, 1:].mean(dim=1))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


def finetune(vit: ViT, data: Data, task: str, steps: int = 80, seed: int = 0,
             batch_size: int = 32, lr: float = 1e-3) -> float:
    """Fine-tune (a copy of) the whole encoder + a linear head on the probe's training rows;
    returns the held-out accuracy."""
    vit = copy.deepcopy(vit)
    torch.manual_seed(seed)
    n = data.n_probe_train
    y = data.labels[task]
    clf = _Classifier(vit, int(y.max()) + 1)
    g = torch.Generator().manual_seed(seed)
    idx = [torch.randint(0, n, (batch_size,), generator=g) for _ in range(steps)]
    bs = [{"pixel_values": data.probe[i], "labels": y[i]} for i in idx]
    train(clf, bs, _config(steps, lr, seed), device="cpu")
    clf.eval()
    with torch.no_grad():
        pred = clf(data.probe[n:])["logits"].argmax(-1)
    return (pred == y[n:]).float().mean().item()


def encoder_seconds(mae: MAE, batch: Tensor, mask_ratio: float, repeats: int = 5) -> float:
    """Median wall time of one encoder forward + backward at ``mask_ratio`` (0 = all patches)."""
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        latent, _, _ = mae.encode_visible(batch, mask_ratio)
        latent.square().mean().backward()
        times.append(time.perf_counter() - t0)
    mae.zero_grad(set_to_none=True)
    return sorted(times[1:])[repeats // 2]


# ---------------------------------------------------------------------------- BEiT


def train_tokenizer(images: Tensor, steps: int = 200, seed: int = 0, codebook_size: int = 64,
                    batch_patches: int = 2048, lr: float = 3e-3,
                    patch_size: int = 8) -> VQTokenizer:  # fmt: skip
    """Train a :class:`VQTokenizer` on random ``patch_size``-px patches (8; lecture 8 uses 16);
    the codebook starts from encoded patches (k-means-style) and dead codes are re-seeded from
    the batch every 50 steps."""
    torch.manual_seed(seed)
    vq = VQTokenizer(patch_size=patch_size, codebook_size=codebook_size)
    patches = patchify(images, patch_size).reshape(-1, 3 * patch_size**2)  # (N*n, 3p²)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(vq.parameters(), lr=lr)
    with torch.no_grad():
        vq.codebook.copy_(vq.encoder(patches[torch.randperm(len(patches), generator=g)
                                             [:codebook_size]]))
    used = torch.zeros(codebook_size)
    for step in range(steps):
        batch = patches[torch.randint(0, len(patches), (batch_patches,), generator=g)]
        loss, ids = vq.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        used += torch.bincount(ids, minlength=codebook_size)
        if (step + 1) % 50 == 0 and step + 1 < steps:
            dead = (used == 0).nonzero().flatten()
            if len(dead):
                with torch.no_grad():
                    z = vq.encoder(batch[torch.randint(0, len(batch), (len(dead),), generator=g)])
                    vq.codebook[dead] = z
            used.zero_()
    return vq.eval()


def pretrain_beit(data: Data, tokenizer: VQTokenizer, steps: int = 120, seed: int = 0,
                  batch_size: int = 32, lr: float = 2e-3, mask_ratio: float = 0.4
                  ) -> tuple[Beit, list[float]]:
    """Pre-train ``beit_tiny`` on blockwise-masked images to predict the tokenizer's ids."""
    torch.manual_seed(seed)
    beit = minivlm.create_model("beit_tiny", vocab_size=tokenizer.codebook.shape[0])
    ids = torch.cat([tokenizer.tokenize(data.pretrain[i:i + 1000])
                     for i in range(0, len(data.pretrain), 1000)])  # (N, 64)
    g = torch.Generator().manual_seed(seed)
    bs = []
    for s in range(steps):
        i = torch.randint(0, len(ids), (batch_size,), generator=g)
        masks = blockwise_mask_batch(batch_size, 8, mask_ratio, seed=seed * 100_003 + s)
        bs.append({"pixel_values": data.pretrain[i], "bool_masked_pos": masks, "labels": ids[i]})
    result = train(beit, bs, _config(steps, lr, seed), device="cpu")
    return beit.eval(), result.history["loss"]


class BeitEncoderAsViT(nn.Module):
    """Wrap a Beit so :func:`finetune` can treat it like a ViT (``.config.dim``, tokens out)."""

    def __init__(self, beit: Beit) -> None:
        super().__init__()
        self.beit = beit
        self.config = beit.config

    def forward(self, images: Tensor) -> Tensor:
        return self.beit.encode(images)


@torch.no_grad()
def object_vs_background_error(mae: MAE, data: Data, mask_ratio: float = 0.75,
                               seed: int = 0) -> dict[str, float]:
    """Where does the reconstruction loss come from? Mean squared error of masked patches that
    hold object pixels vs pure-background ones, and the object patches' share of the loss."""
    imgs = data.probe[data.n_probe_train:]
    obj = data.object_patches[data.n_probe_train:]
    g = torch.Generator().manual_seed(seed)
    out = mae(imgs, noise=torch.rand(len(imgs), mae.config.num_patches, generator=g),
              mask_ratio=mask_ratio)
    err = (out.logits - patchify_hwc(imgs, mae.config.patch_size)).square().mean(-1)  # (N, 64)
    m = out.mask.bool()
    e_obj, e_bg = err[m & obj], err[m & ~obj]
    return {"object_mse": e_obj.mean().item(), "background_mse": e_bg.mean().item(),
            "object_share_of_loss": (e_obj.sum() / err[m].sum()).item(),
            "object_share_of_patches": (obj[m].float().mean()).item()}


def codebook_stats(tokenizer: VQTokenizer, images: Tensor) -> dict[str, float]:
    """How many codes are used on ``images``, and the perplexity of their frequencies."""
    ids = tokenizer.tokenize(images).flatten()
    p = torch.bincount(ids, minlength=tokenizer.codebook.shape[0]).float()
    p = p / p.sum()
    nz = p[p > 0]
    perplexity = float(torch.exp(-(nz * nz.log()).sum()))
    return {"codes_used": int((p > 0).sum()), "perplexity": perplexity}


MASK_RATIOS = (0.15, 0.5, 0.75, 0.9)


def run(seed: int = 0, keep_models: bool = False, steps: int = 120, ft_steps: int = 80,
        tokenizer_steps: int = 200, n_pretrain: int = 2000, n_probe: int = 1200,
        n_probe_train: int = 800) -> dict:
    """The whole lecture experiment for one seed (the notebook's budget by default);
    ``keep_models`` adds the trained models under ``"models"``."""
    data = make_data(seed, n_pretrain, n_probe, n_probe_train)
    res: dict = {"seed": seed, "probe": {}, "mae_loss": {}, "mae_heldout_loss": {}}
    res["chance"] = {t: 1 / len(ShapesData.class_names(t)) for t in TASKS}
    res["probe"]["pixels"] = probe(pixel_features(data.probe), data)
    torch.manual_seed(seed)
    scratch = minivlm.create_model("mae_tiny")
    res["probe"]["random init"] = probe(features(scratch, data.probe), data)
    maes = {}
    for r in MASK_RATIOS:
        mae, hist = pretrain_mae(data, r, steps=steps, seed=seed)
        maes[r] = mae
        res["mae_loss"][r] = sum(hist[-10:]) / len(hist[-10:])
        res["mae_heldout_loss"][r] = heldout_mae_loss(mae, data.probe[data.n_probe_train:], r)
        res["probe"][f"MAE {r:.0%}"] = probe(features(mae, data.probe), data)
    res["why"] = object_vs_background_error(maes[0.75], data, 0.75, seed)
    res["finetune_shape"] = {
        "MAE 75%": finetune(maes[0.75].encoder, data, "shape", ft_steps, seed),
        "scratch": finetune(scratch.encoder, data, "shape", ft_steps, seed),
    }
    batch = data.pretrain[:64]
    t_all = encoder_seconds(maes[0.75], batch, 0.0)
    t_25 = encoder_seconds(maes[0.75], batch, 0.75)
    res["encoder_seconds"] = {"all patches": t_all, "25% of patches": t_25}
    vq = train_tokenizer(data.pretrain, steps=tokenizer_steps, seed=seed)
    res["codebook"] = codebook_stats(vq, data.probe)
    beit, bhist = pretrain_beit(data, vq, steps=steps, seed=seed)
    res["beit_loss"] = sum(bhist[-10:]) / len(bhist[-10:])
    res["probe"]["BEiT 40% blocks"] = probe(features(beit, data.probe), data)
    if keep_models:
        res["models"] = {"data": data, "maes": maes, "scratch": scratch, "vq": vq, "beit": beit}
    return res
