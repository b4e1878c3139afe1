"""The fast-path switch of the training loop (issue 24): TrainConfig(precision=..., compile=...).

fp32 stays the default and is bit-for-bit the plain path (non-fused AdamW, no autocast); bf16
runs under autocast with fused AdamW where the device has native bf16, and elsewhere stays in
fp32 with a warning that says why. Speed is measured in benchmarks/, never asserted here.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

import minivlm.train.fast as fast
from minivlm.train import TrainConfig, default_param_groups, train

_spec = importlib.util.spec_from_file_location(
    "ddp_worker", Path(__file__).with_name("ddp_worker.py")
)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)
ToyDataset, ToyModel = worker.ToyDataset, worker.ToyModel

CPU = torch.device("cpu")


class Probe(ToyModel):
    """Records the dtype its first matmul produces (bf16 under autocast)."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def forward(self, **batch):
        self.dtypes.append(self.fc1(batch["x"]).dtype)
        return super().forward(**batch)


def cfg(**kw) -> TrainConfig:
    base = dict(steps=6, lr=1e-2, batch_size=8, warmup_steps=2, progress=False, log_every=2)
    return TrainConfig(**{**base, **kw})


def run(config: TrainConfig, optimizer_fn=None):
    torch.manual_seed(0)
    model = Probe()
    opt = optimizer_fn(model) if optimizer_fn else None
    res = train(model, ToyDataset(), config, device=CPU, optimizer=opt)
    return res, model


def test_fp32_is_the_default_and_the_plain_path_bit_for_bit(monkeypatch):
    # even on a CPU with native bf16, the default trains in fp32 with plain AdamW
    monkeypatch.setattr(fast, "cpu_bf16_support", lambda: (True, "a test CPU with bf16"))
    assert TrainConfig().precision == "fp32" and TrainConfig().compile is False
    res, model = run(cfg())
    assert model.dtypes == [torch.float32] * 6
    assert not res.optimizer.defaults.get("fused")

    def plain_adamw(m):  # what the loop built before the switch existed
        c = cfg()
        return torch.optim.AdamW(
            default_param_groups(m, c.weight_decay), lr=c.lr, betas=c.betas, eps=c.eps,
            weight_decay=c.weight_decay,
        )  # fmt: skip

    ref, ref_model = run(cfg(), plain_adamw)
    assert res.history == ref.history
    for (n, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert torch.equal(p, q), n


def test_bf16_where_native_runs_autocast_and_fused_adamw(monkeypatch):
    monkeypatch.setattr(fast, "cpu_bf16_support", lambda: (True, "a test CPU with bf16"))
    res, model = run(cfg(precision="bf16"))
    assert model.dtypes == [torch.bfloat16] * 6
    assert res.optimizer.defaults.get("fused") is True
    assert all(math.isfinite(v) for v in res.history["loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    fp32, _ = run(cfg())
    assert res.history["loss"][0] == pytest.approx(fp32.history["loss"][0], rel=0.05)
    assert res.history["loss"][-1] < res.history["loss"][0]  # it still learns


def test_bf16_without_native_support_warns_and_stays_fp32(monkeypatch):
    monkeypatch.setattr(fast, "cpu_bf16_support", lambda: (False, "this CPU has no bf16"))
    with pytest.warns(UserWarning, match="this CPU has no bf16; training stays in fp32"):
        res, model = run(cfg(precision="bf16"))
    assert model.dtypes == [torch.float32] * 6
    fp32, _ = run(cfg())
    assert res.history == fp32.history


def test_amp_overrides_precision(monkeypatch):
    monkeypatch.setattr(fast, "cpu_bf16_support", lambda: (True, "a test CPU with bf16"))
    _, model = run(cfg(precision="bf16", amp="off"))
    assert model.dtypes == [torch.float32] * 6
    monkeypatch.setattr(fast, "cpu_bf16_support", lambda: (False, "no bf16"))
    _, model = run(cfg(amp="bf16"))  # forced (emulated) on any device
    assert model.dtypes == [torch.bfloat16] * 6


def test_detection_and_validation():
    ok, why = fast.cpu_bf16_support()
    assert isinstance(ok, bool) and why
    assert fast.bf16_support(torch.device("meta"))[0] is False
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")


# --------------------------------------------------------------------------- recipes in bf16


def _tau_sweep(precision: str) -> tuple[torch.Tensor, set[torch.dtype]]:
    from minivlm.grading.checks.ex01_clip import _ref_clip_loss
    from minivlm.recipes import clip_tau

    seen: set[torch.dtype] = set()

    def loss_fn(img, txt, logit_scale):
        seen.add(img.dtype)
        return _ref_clip_loss(img, txt, logit_scale)

    return clip_tau.sweep(loss_fn, torch.tensor([1.0, 0.1]), 0, precision=precision), seen


def test_clip_tau_recipe_in_bf16_keeps_the_lesson_and_stays_fp32_where_not_native(monkeypatch):
    """Lecture 1's τ recipe with precision="bf16": where bf16 is native (here emulated: this
    CPU has none) the towers run in bf16 and τ = 0.1 still beats τ = 1 as in fp32; without
    native bf16 it warns and gives the fp32 numbers exactly."""
    fp32, seen = _tau_sweep("fp32")
    assert seen == {torch.float32}
    monkeypatch.setattr(fast, "cpu_bf16_support", lambda: (False, "this CPU has no bf16"))
    with pytest.warns(UserWarning, match="stays in fp32"):
        same, _ = _tau_sweep("bf16")
    assert torch.equal(same, fp32)
    monkeypatch.setattr(fast, "cpu_bf16_support", lambda: (True, "emulated for the test"))
    bf16, seen = _tau_sweep("bf16")
    assert seen == {torch.bfloat16}
    assert (bf16 - fp32).abs().max() < 0.05  # seeds 0-3 x 3 τ: at most 0.016 apart
    assert bf16[1] > bf16[0] + 0.1


def test_llava_stages_fit_takes_the_bf16_path(monkeypatch):
    from minivlm.recipes import llava_stages as ls

    monkeypatch.setattr(fast, "cpu_bf16_support", lambda: (True, "emulated for the test"))
    vit, lm = ls.random_parts(0)
    setup = ls.Setup(vit, lm, 0, ls.Recipe(n_train=8, n_test=2, precision="bf16"))
    model = setup.build("mlp2x_gelu")
    seen: list[torch.dtype] = []
    model.projector.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    losses = ls.fit(setup, model, setup.stage1, 2, 1, 0)
    assert seen == [torch.bfloat16] * 2 and all(math.isfinite(v) for v in losses)
    assert all(p.dtype == torch.float32 for p in model.parameters())
