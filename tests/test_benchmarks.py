"""Smoke tests: the benchmark scripts run end to end on tiny settings and write their results.

Speed itself is not asserted here (that is what the benchmarks are for); these tests keep the
scripts working and check the facts a benchmark relies on, such as both CLIP implementations
starting from the same weights.
"""

from __future__ import annotations

import json

import pytest
from script_helpers import load_script


def _load(name: str):
    return load_script(f"benchmarks/{name}.py")


def test_clip_train_benchmark_runs_and_models_agree(tmp_path, capsys):
    pytest.importorskip("transformers")
    bench = _load("clip_train")
    rc = bench.main(["--config", "tiny", "--batch", "4", "--steps", "1", "--repeats", "2",
                     "--warmup", "0", "--device", "cpu", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    res = json.loads((tmp_path / "clip_train_tiny_b4_cpu_fp32.json").read_text())
    # same config, same weights, same batch: the first training losses are the same number
    assert res["first_loss"]["minivlm"] == pytest.approx(res["first_loss"]["hf"], abs=1e-5)
    assert res["parameters"] > 0 and res["flops_per_step"] > 0
    assert len(res["speedup_per_repeat"]) == 2 and all(r > 0 for r in res["speedup_per_repeat"])
    assert "speed-up minivlm vs HF" in capsys.readouterr().out


def test_clip_train_benchmark_rejects_bad_arguments(tmp_path):
    bench = _load("clip_train")
    with pytest.raises(SystemExit):
        bench.main(["--repeats", "0", "--out", str(tmp_path)])


def test_attention_benchmark_runs(tmp_path):
    bench = _load("attention")
    bench.main(["--lengths", "16", "32", "--batch", "1", "--heads", "2", "--head-dim", "8",
                "--out", str(tmp_path)])  # fmt: skip
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["T"] for r in rows if r["device"] == "cpu"] == [16, 32]
    assert all(r["explicit_ms"] > 0 and r["sdpa_ms"] > 0 for r in rows)
    assert (tmp_path / "results.md").read_text().startswith("|")
