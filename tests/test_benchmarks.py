"""Smoke tests: the benchmark scripts run end to end on tiny settings and write their results.

Speed itself is not asserted here (that is what the benchmarks are for); these tests keep the
scripts working and check the facts a benchmark relies on, such as both CLIP implementations
starting from the same weights.
"""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest
from script_helpers import ROOT, load_script


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


# --------------------------------------------------------------------------- train_step


def _gpu_check_commands(*args: str) -> dict[str, tuple[int, list[str]]]:
    """What benchmarks/gpu_check.sh would run: {step: (time limit s, argv)}."""
    out = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), *args, "--print"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    steps = {}
    for line in out.strip().splitlines():
        name, limit, cmd = line.split("|", 2)
        steps[name] = (int(limit), shlex.split(cmd))
    return steps


def test_gpu_check_script_plans_the_gpu_runs_within_its_budget():
    steps = _gpu_check_commands()
    assert list(steps) == ["tests", "clip_train", "train_step"]
    assert sum(limit for limit, _ in steps.values()) <= 8 * 60
    tests = steps["tests"][1]
    assert tests[1:4] == ["-m", "pytest", "-m"] and tests[4] == "cuda"
    assert "tests/test_cuda.py" in tests and all((ROOT / t).is_file() for t in tests[8:])
    clip = " ".join(steps["clip_train"][1])
    assert "--config b16 --batch 256" in clip and "--device cuda --dtype bf16" in clip
    step = " ".join(steps["train_step"][1])
    assert "--size base" in step and "--device cuda --precision bf16 fp32" in step
    with pytest.raises(subprocess.CalledProcessError):
        _gpu_check_commands("--device", "tpu")


def test_gpu_check_dry_run_on_cpu_every_model_both_sides_compute_the_same_step(tmp_path, capsys):
    """The commands gpu_check.sh runs, in its CPU dry run (here in-process, to keep it cheap):
    every model's two sides start from the same loss."""
    pytest.importorskip("transformers")
    steps = _gpu_check_commands("--device", "cpu", "--quick")
    for name in ("clip_train", "train_step"):
        argv = steps[name][1]
        assert argv[1] == f"benchmarks/{name}.py" and "--out" in argv
        argv[argv.index("--out") + 1] = str(tmp_path)
        assert _load(name).main(argv[2:]) == 0, name
    assert (tmp_path / "clip_train_tiny_b4_cpu_fp32.json").exists()
    bench = _load("train_step")
    assert {"clip", "vilt", "albef", "blip", "coca", "blip2", "llava", "mae", "beit", "flamingo",
            "qwen2vl", "lxmert", "vlmo"} <= set(bench.MODELS)  # fmt: skip
    res = json.loads((tmp_path / "train_step_quick_cpu.json").read_text())
    assert res["complete"] and res["peak_flop_per_s"]["fp32"] > 0
    rows = {r["model"]: r for r in res["rows"] if r["precision"] == "fp32"}
    assert set(rows) == set(bench.MODELS)
    for name, r in rows.items():
        assert r["flops_per_step"] > 0 and r["minivlm"]["steps_per_s"] > 0, name
        assert 0 < r["trainable"] <= r["parameters"], name
        if r["reference_impl"].startswith("none"):
            continue
        # same config, weights, batch and trainable parameters: the same first loss, and the
        # reference's step counts (nearly) the same FLOPs
        loss = r["first_loss"]
        assert loss["minivlm"] == pytest.approx(loss["reference"], rel=1e-3), name
        assert r["flops"]["reference"] == pytest.approx(r["flops_per_step"], rel=0.35), name
        assert len(r["ratio_wall_per_repeat"]) == 2 and r["ratio_cpu"] > 0, name
    if not res["bf16_native"]:  # this CPU: bf16 rows say why they were not run
        assert all(r.get("skipped") for r in res["rows"] if r["precision"] == "bf16")
    md = (tmp_path / "train_step_quick_cpu.md").read_text()
    assert md.count("| fp32 |") == len(rows) and "matmul peak measured here" in md
    assert "| clip | fp32 |" in capsys.readouterr().out


def test_train_step_bf16_is_skipped_with_a_reason_or_emulated(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    bench = _load("train_step")
    monkeypatch.setattr(bench, "bf16_support", lambda dev: (False, "a test CPU without bf16"))
    argv = ["--device", "cpu", "--quick", "--precision", "bf16", "--models", "clip", "--out"]
    assert bench.main([*argv, str(tmp_path / "skip")]) == 0
    res = json.loads((tmp_path / "skip" / "train_step_quick_cpu.json").read_text())
    assert res["rows"] == [{"model": "clip", "precision": "bf16",
                            "skipped": "a test CPU without bf16"}]  # fmt: skip
    assert "not run: a test CPU without bf16" in (tmp_path / "skip" / "train_step_quick_cpu.md").read_text()
    assert bench.main([*argv, str(tmp_path / "emu"), "--emulate-bf16"]) == 0
    res = json.loads((tmp_path / "emu" / "train_step_quick_cpu.json").read_text())
    (row,) = res["rows"]
    assert "EMULATED" in res["bf16_note"] and row["precision"] == "bf16"
    assert row["first_loss"]["minivlm"] == pytest.approx(row["first_loss"]["reference"], rel=2e-2)


def test_train_step_rejects_unknown_models_and_duplicate_entries(tmp_path):
    bench = _load("train_step")
    with pytest.raises(SystemExit):
        bench.main(["--models", "nonesuch", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="registered twice"):
        bench.register("clip")(lambda size, device: None)


def test_train_step_compile_wiring_adds_an_eager_side_and_a_compile_time(tmp_path, monkeypatch):
    """--compile's bookkeeping (torch.compile itself replaced by a recording identity: a real
    compilation costs a minute of CPU, too much for a unit test)."""
    pytest.importorskip("transformers")
    bench = _load("train_step")
    compiled = []
    monkeypatch.setattr(bench.torch, "compile", lambda fn: compiled.append(fn) or fn)
    argv = ["--device", "cpu", "--quick", "--precision", "fp32", "--models", "clip", "--compile",
            "--out", str(tmp_path)]  # fmt: skip
    assert bench.main(argv) == 0 and len(compiled) == 1
    res = json.loads((tmp_path / "train_step_quick_cpu_compile.json").read_text())
    (row,) = res["rows"]
    assert res["compile"] and row["compiled"]
    loss = row["first_loss"]  # both minivlm copies and the reference start from the same loss
    assert loss["minivlm"] == loss["minivlm_eager"] == pytest.approx(loss["reference"], abs=1e-5)
    assert row["flops"]["minivlm"] == row["flops"]["minivlm_eager"] > 0
    assert row["compile_ratio_cpu"] > 0 and len(row["compile_ratio_wall_per_repeat"]) == 2
    assert isinstance(row["compile_cpu_s"], float) and row["warmup_step_s"]["minivlm"]["cpu"]
    md = (tmp_path / "train_step_quick_cpu_compile.md").read_text()
    assert "| clip | fp32, compiled |" in md and "- clip fp32: compilation" in md


def test_bf16_lessons_runs_both_precisions_on_tiny_parts(tmp_path, capsys):
    bench = _load("bf16_lessons")
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "llava_stages_seed0_quick.json").read_text())
    fp32, bf16 = res["rows"]
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16") and res["emulate"]
    # the same seed and steps: the losses are close but not equal (bf16 autocast did run)
    for stage in ("stage 1", "stage 2"):
        a, b = fp32["final_loss"][stage], bf16["final_loss"][stage]
        assert a != b and a == pytest.approx(b, rel=1e-2), stage
    assert set(bf16["acc"]) == {"stage 1 only", "stage 1 + 2"}
    assert "| bf16 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--s1-steps", "0", "--out", str(tmp_path)])
