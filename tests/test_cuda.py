"""Checks that need a CUDA GPU (marker ``cuda``; skipped without one): the fast path on a GPU.

``benchmarks/gpu_check.sh`` runs these with ``pytest -m cuda`` when a GPU is lent, then the
benchmarks. Speed is never asserted; these check that the GPU paths run and compute the
same numbers: SDPA takes the flash kernel, the training loop's bf16 switch runs autocast and
fused AdamW, and the benchmarks' two sides agree on a GPU.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from script_helpers import load_script

from minivlm.nn.attention import attend
from minivlm.train import TrainConfig, train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CUDA = torch.device("cuda")


def test_sdpa_path_runs_the_flash_kernel_and_matches_the_explicit_path():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 128, 64, generator=g).to(CUDA, torch.bfloat16).requires_grad_()
               for _ in range(3))  # fmt: skip
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if our call cannot use flash
        out, w = attend(q, k, v)
    assert w is None and out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    ref, w = attend(q.float(), k.float(), v.float(), need_weights=True)
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    assert w.shape == (2, 4, 128, 128) and q.grad is not None and torch.isfinite(q.grad).all()


def test_training_loop_bf16_switch_on_cuda_uses_autocast_and_fused_adamw():
    worker = load_script("tests/ddp_worker.py")
    torch.manual_seed(0)
    model = worker.ToyModel()
    dtypes: list[torch.dtype] = []
    model.fc1.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    cfg = TrainConfig(steps=60, lr=3e-2, batch_size=8, precision="bf16", progress=False)
    res = train(model, worker.ToyDataset(), cfg, device=CUDA)
    assert set(dtypes) == {torch.bfloat16}
    assert res.optimizer.defaults.get("fused") is True
    assert all(p.dtype == torch.float32 and p.is_cuda for p in model.parameters())
    loss = res.history["loss"]
    assert all(math.isfinite(v) for v in loss) and sum(loss[-10:]) < 0.5 * sum(loss[:10])


def test_train_step_benchmark_on_cuda_both_sides_agree(tmp_path):
    pytest.importorskip("transformers")
    bench = load_script("benchmarks/train_step.py")
    assert bench.main(["--device", "cuda", "--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "train_step_quick_cuda.json").read_text())
    assert res["bf16_native"] and res["peak_flop_per_s"]["bf16"] > 0
    for r in res["rows"]:
        assert "skipped" not in r, r
        assert r["minivlm"]["peak_memory_gib"] > 0
        if "reference" in r["first_loss"]:
            tol = 5e-2 if r["precision"] == "bf16" else 1e-2  # TF32 matmuls in the fp32 rows
            loss = r["first_loss"]
            assert loss["minivlm"] == pytest.approx(loss["reference"], rel=tol), r["model"]


def test_clip_train_benchmark_on_cuda_bf16(tmp_path):
    pytest.importorskip("transformers")
    bench = load_script("benchmarks/clip_train.py")
    assert bench.main(["--config", "tiny", "--batch", "8", "--steps", "1", "--repeats", "2",
                       "--warmup", "0", "--device", "cuda", "--dtype", "bf16",
                       "--out", str(tmp_path)]) == 0  # fmt: skip
    res = json.loads((tmp_path / "clip_train_tiny_b8_cuda_bf16.json").read_text())
    assert res["first_loss"]["minivlm"] == pytest.approx(res["first_loss"]["hf"], rel=2e-2)
    assert res["minivlm"]["tflops"] > 0
