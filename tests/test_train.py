"""The training loop: schedule, optimizer groups, logging, exact resume, DDP equivalence."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from minivlm.train import (
    TrainConfig,
    default_param_groups,
    load_checkpoint,
    lr_at,
    save_checkpoint,
    train,
)

_spec = importlib.util.spec_from_file_location(
    "ddp_worker", Path(__file__).with_name("ddp_worker.py")
)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)
ToyDataset, ToyModel, make_model = worker.ToyDataset, worker.ToyModel, worker.make_model

CPU = torch.device("cpu")


def cfg(**kw) -> TrainConfig:
    base = dict(steps=10, lr=1e-2, batch_size=8, warmup_steps=2, progress=False, log_every=3)
    return TrainConfig(**{**base, **kw})


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_params_equal(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=f"parameter {k} differs")


# --------------------------------------------------------------------------- schedule / groups


def test_lr_schedule_warmup_then_cosine_to_floor():
    c = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, c) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.5)
    assert lrs[9] == pytest.approx(1.0)  # peak at the last warm-up step
    assert lrs[10] == pytest.approx(1.0)  # cosine starts at the peak
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay
    assert lr_at(100, c) == pytest.approx(0.1) and lr_at(500, c) == pytest.approx(0.1)
    assert lrs[-1] > 0.1  # the floor is reached only after the last step
    no_warm = TrainConfig(steps=10, lr=2.0, warmup_steps=0, min_lr_ratio=0.0)
    assert lr_at(0, no_warm) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, c)


def test_param_groups_exempt_biases_norms_and_named_embeddings():
    model = make_model()
    model.fc1.bias.requires_grad_(False)  # frozen: in no group at all
    groups = {g["group"]: g for g in default_param_groups(model, 0.05)}
    ids = {name: id(p) for name, p in model.named_parameters()}
    decay = {id(p) for p in groups["decay"]["params"]}
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    assert decay == {ids["fc1.weight"], ids["head.weight"]}
    assert no_decay == {ids["emb.weight"], ids["norm.weight"], ids["norm.bias"], ids["head.bias"]}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0

    class NoHook(ToyModel):
        def no_weight_decay(self) -> set[str]:
            return set()

    torch.manual_seed(0)
    plain = {g["group"]: g for g in default_param_groups(NoHook(), 0.1)}
    assert len(plain["decay"]["params"]) == 3  # the embedding is decayed without the hook


def test_config_validation():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="min_lr_ratio"):
        TrainConfig(min_lr_ratio=2.0)
    with pytest.raises(ValueError, match="progress"):
        TrainConfig(progress="yes")


# --------------------------------------------------------------------------- the loop


def test_train_learns_logs_evaluates_and_calls_hooks():
    model = make_model(dropout=0.0)
    calls = []

    def eval_fn(m):
        calls.append((m.training, torch.is_grad_enabled()))
        pred = m(**{k: v for k, v in ToyDataset()[:].items() if k != "y"}).pred
        return {"mse": torch.mean((pred - ToyDataset().y) ** 2)}

    res = train(
        model, ToyDataset(), cfg(steps=40, lr=3e-2, eval_every=15), eval_fn=eval_fn, device=CPU
    )
    h = res.history
    assert res.steps_done == 40 and res.model is model and model.training
    for key in ("loss", "lr", "loss_mse", "loss_l1", "grad_norm"):
        assert len(h[key]) == 40, key
    assert h["lr"] == pytest.approx([lr_at(s, cfg(steps=40, lr=3e-2)) for s in range(40)])
    assert h["loss"][0] == pytest.approx(h["loss_mse"][0] + 0.1 * h["loss_l1"][0], rel=1e-5)
    assert sum(h["loss"][-5:]) < 0.2 * sum(h["loss"][:5])  # it learns
    assert h["eval_step"] == [15.0, 30.0, 40.0]  # every 15 steps and after the last one
    assert calls == [(False, False)] * 3  # eval mode, no grad
    assert res.evals[40]["mse"] == h["eval_mse"][-1] < h["eval_mse"][0]
    assert model.steps_seen == [(s, 40) for s in range(1, 41)]


def test_dataset_sampling_is_a_seeded_permutation_per_epoch():
    class Epochs(ToyDataset):
        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    model = make_model()
    ds = Epochs(n=20, with_idx=True)  # 20 // 8 = 2 batches per epoch, 4 samples dropped
    ds.epochs = []
    train(model, ds, cfg(steps=6), device=CPU)
    assert ds.epochs == [0, 1, 2]
    seen = model.indices_seen
    assert [len(b) for b in seen] == [8] * 6
    epochs = [seen[0] + seen[1], seen[2] + seen[3], seen[4] + seen[5]]
    for e in epochs:
        assert len(set(e)) == 16  # no repeats within an epoch
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled every epoch
    again = make_model()
    train(again, ds, cfg(steps=6), device=CPU)
    assert again.indices_seen == seen  # same seed, same order
    other = make_model()
    train(other, ds, cfg(steps=6, seed=1), device=CPU)
    assert other.indices_seen != seen
    fixed = make_model()
    train(fixed, ds, cfg(steps=2, shuffle=False), device=CPU)
    assert fixed.indices_seen == [list(range(8)), list(range(8, 16))]


def test_dataset_collate_method_is_used_and_unknown_keys_are_dropped():
    class WithCollate(ToyDataset):
        calls = 0

        def collate(self, items):
            WithCollate.calls += 1
            batch = torch.utils.data.default_collate(items)
            batch["caption"] = ["a red square"] * len(items)  # forward has no such parameter
            return batch

    res = train(make_model(), WithCollate(), cfg(steps=3), device=CPU)
    assert WithCollate.calls == 3 and res.steps_done == 3

    class Strict(ToyModel):  # **kwargs: everything is passed, so the unknown key arrives
        def forward(self, **batch):
            assert "caption" in batch
            batch.pop("caption")
            return super().forward(**batch)

    torch.manual_seed(0)
    assert train(Strict(), WithCollate(), cfg(steps=2), device=CPU).steps_done == 2


def test_same_seed_same_run_with_dropout():
    a = train(make_model(0.3), ToyDataset(), cfg(), device=CPU)
    b = train(make_model(0.3), ToyDataset(), cfg(), device=CPU)
    assert a.history["loss"] == b.history["loss"]
    assert_params_equal(params(a.model), params(b.model), atol=0)
    # an eval_fn that draws random numbers does not change the training trajectory
    c = train(
        make_model(0.3), ToyDataset(), cfg(eval_every=3), device=CPU,
        eval_fn=lambda m: {"r": torch.rand(()).item()},
    )  # fmt: skip
    assert_params_equal(params(a.model), params(c.model), atol=0)


def test_progress_bar_and_bf16_autocast(capsys):
    train(make_model(), ToyDataset(), cfg(steps=4, progress=True), device=CPU)
    err = capsys.readouterr().err
    assert "train" in err and "4/4" in err and "loss=" in err
    train(make_model(), ToyDataset(), cfg(steps=4), device=CPU)
    assert capsys.readouterr().err == ""  # progress=False: silent
    seen = []

    class Probe(ToyModel):
        def forward(self, **batch):
            seen.append(self.fc1(batch["x"]).dtype)
            return super().forward(**batch)

    torch.manual_seed(0)
    res = train(Probe(), ToyDataset(), cfg(steps=3, amp="bf16"), device=CPU)
    assert seen == [torch.bfloat16] * 3 and all(math.isfinite(v) for v in res.history["loss"])
    seen.clear()
    train(Probe(), ToyDataset(), cfg(steps=1), device=CPU)  # amp="auto" is off on a CPU
    assert seen == [torch.float32]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="dict of tensors"):
        train(make_model(), [(torch.zeros(2, 4), torch.zeros(2))], cfg(steps=1), device=CPU)
    no_y = [{"x": torch.zeros(2, 4), "tok": torch.zeros(2, dtype=torch.long)}]
    with pytest.raises(ValueError, match="loss=None"):
        train(make_model(), no_y, cfg(steps=1), device=CPU)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train(make_model(), ToyDataset(n=5), cfg(), device=CPU)
    with pytest.raises(ValueError, match="ran out"):
        train(make_model(), iter([ToyDataset()[:8]]), cfg(steps=3), device=CPU)
    with pytest.raises(TypeError, match="Dataset or an iterable"):
        train(make_model(), 42, cfg(), device=CPU)
    frozen = make_model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(frozen, ToyDataset(), cfg(), device=CPU)


def test_nan_loss_is_reported_with_its_step():
    data = [ToyDataset()[:8] for _ in range(3)]
    data[2] = {**data[2], "y": torch.full((8,), float("nan"))}
    with pytest.raises(FloatingPointError, match="step 2"):
        train(make_model(), data, cfg(steps=3, log_every=1), device=CPU)


def test_plain_list_is_reiterated_and_user_optimizer_follows_schedule():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    data = [ToyDataset()[i * 8 : (i + 1) * 8] for i in range(3)]
    lrs = []

    class Spy:
        def __init__(self, m):
            self.m = m

        def __call__(self, step, total):
            lrs.append(opt.param_groups[0]["lr"])

    model.on_after_step = Spy(model)  # instance attribute takes precedence over the method
    res = train(model, data, cfg(steps=7, lr=1e-2), device=CPU, optimizer=opt)
    assert res.steps_done == 7 and res.optimizer is opt
    # SGD's own lr (0.5) is scaled by the schedule's lr_at(step) / config.lr
    assert lrs == pytest.approx([0.5 * lr_at(s, cfg(steps=7)) / 1e-2 for s in range(7)])


# --------------------------------------------------------------------------- checkpoints


def test_resume_is_exact_dataset_path(tmp_path):
    """10 steps straight == 5 steps, stop, fresh model object, resume 5 (dropout, shuffle)."""
    straight = train(make_model(0.2), ToyDataset(), cfg(), device=CPU)

    ck = tmp_path / "run.pt"
    first = train(make_model(0.2), ToyDataset(), cfg(ckpt_path=ck), device=CPU, stop_after=5)
    assert first.steps_done == 5 and ck.is_file()
    torch.manual_seed(999)  # a different fresh init: everything must come from the checkpoint
    fresh = ToyModel(0.2)
    second = train(fresh, ToyDataset(), cfg(ckpt_path=ck), device=CPU)
    assert second.steps_done == 10 and second.model is fresh
    assert_params_equal(params(straight.model), params(fresh))
    assert second.history["loss"] == pytest.approx(straight.history["loss"], abs=1e-7)
    assert load_checkpoint(ck)["step"] == 10
    # already finished: a further call returns at once without training
    done = train(ToyModel(0.2), ToyDataset(), cfg(ckpt_path=ck), device=CPU)
    assert done.steps_done == 10 and len(done.history["loss"]) == 10
    assert_params_equal(params(done.model), params(fresh), atol=0)


def test_resume_after_crash_is_exact_with_shuffled_dataloader(tmp_path):
    """The run dies at step 7 (ckpt every 5); resuming in a new model replays epoch 2."""

    def loader():  # shuffled by the global torch RNG; 40 // 8 = 5 batches per epoch
        return DataLoader(ToyDataset(), batch_size=8, shuffle=True, drop_last=True)

    conf = dict(steps=12, log_every=4)
    straight = train(make_model(0.2), loader(), cfg(**conf), device=CPU)

    def crash(model):
        raise KeyboardInterrupt("simulated crash")

    ck = tmp_path / "run.pt"
    crashing = cfg(**conf, ckpt_path=ck, ckpt_every=5, eval_every=7)
    with pytest.raises(KeyboardInterrupt):
        train(make_model(0.2), loader(), crashing, device=CPU, eval_fn=crash)
    assert load_checkpoint(ck)["step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temp files left behind
    torch.manual_seed(5)
    fresh = ToyModel(0.2)
    resumed = train(fresh, loader(), cfg(**conf, ckpt_path=ck, ckpt_every=5), device=CPU)
    assert resumed.steps_done == 12
    assert_params_equal(params(straight.model), params(fresh))
    assert resumed.history["loss"] == pytest.approx(straight.history["loss"], abs=1e-7)

    # the same crash in the middle of an epoch (ckpt at step 7 = batch 2 of epoch 1)
    ck2 = tmp_path / "mid.pt"
    mid = cfg(**conf, ckpt_path=ck2, ckpt_every=7, eval_every=9)
    with pytest.raises(KeyboardInterrupt):
        train(make_model(0.2), loader(), mid, device=CPU, eval_fn=crash)
    fresh2 = ToyModel(0.2)
    train(fresh2, loader(), cfg(**conf, ckpt_path=ck2), device=CPU)
    assert_params_equal(params(straight.model), params(fresh2))


def test_existing_checkpoint_is_never_overwritten_without_resume(tmp_path):
    ck = tmp_path / "keep.pt"
    train(make_model(), ToyDataset(), cfg(steps=3, ckpt_path=ck), device=CPU)
    before = ck.read_bytes()
    with pytest.raises(FileExistsError, match="resume=True"):
        train(make_model(), ToyDataset(), cfg(steps=6, ckpt_path=ck), device=CPU, resume=False)
    assert ck.read_bytes() == before
    with pytest.warns(UserWarning, match="lr"):  # resuming with a changed lr is flagged
        train(make_model(), ToyDataset(), cfg(steps=4, lr=0.5, ckpt_path=ck), device=CPU)


def test_checkpoint_roundtrip_and_errors(tmp_path):
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(**ToyDataset()[:4]).loss.backward()
    opt.step()
    torch.manual_seed(7)
    path = save_checkpoint(tmp_path / "c.pt", model, opt, step=3, config=cfg(), extra={"a": 1})
    expected_next = torch.rand(3)

    other = ToyModel()
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-3)
    torch.manual_seed(0)
    state = load_checkpoint(path, other, opt2, restore_rng=True)
    assert torch.equal(torch.rand(3), expected_next)  # RNG restored
    assert state["step"] == 3 and state["config"]["lr"] == 1e-2 and state["extra"] == {"a": 1}
    assert_params_equal(params(model), params(other), atol=0)
    assert torch.equal(
        opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )

    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="not a minivlm training checkpoint"):
        load_checkpoint(tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="do not fit"):
        load_checkpoint(path, torch.nn.Linear(2, 2))


# --------------------------------------------------------------------------- import, DDP


def test_import_is_light():
    code = (
        "import sys, minivlm.train, minivlm.eval\n"
        "heavy = [m for m in ('transformers', 'timm', 'matplotlib', 'torch._dynamo', 'ipywidgets', 'skimage') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_ddp_two_processes_match_single_process(tmp_path):
    """torchrun, 2 gloo CPU ranks, global batch 8 split 4 + 4 == one process on batch 8."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--standalone",  # rendezvous on localhost with a free port picked by the OS
        str(Path(__file__).with_name("ddp_worker.py")), str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    single = train(
        make_model(), ToyDataset(with_idx=True), TrainConfig(**worker.DDP_CONFIG, progress=False)
    )
    ref = params(single.model)
    # each rank saw its own half of every global batch
    seen = [torch.load(tmp_path / f"indices_rank{rank}.pt") for rank in (0, 1)]
    assert [len(b) for b in seen[0]] == [4] * worker.DDP_CONFIG["steps"]
    assert [a + b for a, b in zip(*seen)] == single.model.indices_seen
    for rank in (0, 1):
        assert_params_equal(ref, torch.load(tmp_path / f"dataset_rank{rank}.pt"), atol=1e-5)
    ck = load_checkpoint(tmp_path / "ckpt.pt")  # written by rank 0 only
    assert ck["history"]["loss"] == pytest.approx(single.history["loss"], abs=1e-5)
    # the DataLoader path: every rank loads the global batch and keeps its half
    single = train(
        make_model(), worker.ddp_loader(), TrainConfig(**worker.DDP_CONFIG, progress=False)
    )
    for rank in (0, 1):
        assert_params_equal(
            params(single.model), torch.load(tmp_path / f"loader_rank{rank}.pt"), atol=1e-5
        )
    hist = torch.load(tmp_path / "loader_history_rank1.pt")  # loss averaged over the ranks
    assert hist["loss"] == pytest.approx(single.history["loss"], abs=1e-5)
    # and the update is not trivially equal: the model did move
    assert not torch.allclose(ref["head.weight"], make_model().head.weight, atol=1e-3)
