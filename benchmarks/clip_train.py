"""Training throughput of minivlm's CLIP versus ``transformers.CLIPModel``, in one run.

    python benchmarks/clip_train.py                          # clip_tiny shapes, CPU
    python benchmarks/clip_train.py --config mid --batch 32
    python benchmarks/clip_train.py --config b16 --batch 256 --device cuda --dtype bf16

Both models have the same config and the same weights (the HF model is built first, ours
is copied from it with ``CLIP.from_hf``), see the same batch (right-padded captions with an
[EOS] each) and take full training steps: forward with the contrastive loss, backward,
AdamW. Timing is interleaved: each repeat times ``--steps`` steps of one model then the
other (the order alternates), and the reported speed-up is the median over repeats of
``time_hf / time_ours`` (> 1: minivlm is faster), which is robust to other processes
sharing the machine. The FLOPs of one step are counted with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention; forward and
backward) and turned into achieved TFLOP/s, and on a GPU with a known bf16 dense peak
into the fraction of that peak (model FLOPs utilisation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

import minivlm
from minivlm.models.clip import CLIP, CLIPConfig
from minivlm.utils import atomic_write

# minivlm preset and overrides of each benchmark configuration; the HF config is derived
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny": ("clip_tiny", {}),  # 64x64 shapes-world images, vocab 256, 0.9M parameters
    "mid": ("clip_tiny", dict(vision_dim=256, vision_depth=4, vision_mlp_hidden=1024,
                              text_dim=256, text_depth=4, text_mlp_hidden=1024, embed_dim=256,
                              vocab_size=1024)),  # 6.8M parameters
    "b16": ("clip_vit_b16", {}),  # CLIP ViT-B/16, 149.6M parameters, 77-token captions
}  # fmt: skip


_HF_ACT = {"gelu_tanh": "gelu_pytorch_tanh"}  # our activation names that HF spells otherwise


def hf_config_kwargs(cfg: CLIPConfig) -> dict[str, Any]:
    """``transformers.CLIPConfig`` keyword arguments describing minivlm's ``cfg``."""
    v, t = cfg.vision, cfg.text
    eos = t.eos_token_id if t.eos_token_id is not None else 2  # None: HF's legacy rule
    return dict(
        vision_config=dict(
            image_size=v.image_size, patch_size=v.patch_size, num_channels=v.in_chans,
            hidden_size=v.dim, intermediate_size=v.hidden, num_hidden_layers=v.depth,
            num_attention_heads=v.num_heads, hidden_act=_HF_ACT.get(v.act, v.act),
            layer_norm_eps=v.eps,
        ),
        text_config=dict(
            vocab_size=t.vocab_size, max_position_embeddings=t.max_len, hidden_size=t.dim,
            intermediate_size=t.hidden, num_hidden_layers=t.depth, num_attention_heads=t.num_heads,
            hidden_act=_HF_ACT.get(t.act, t.act), layer_norm_eps=t.eps, eos_token_id=eos,
            bos_token_id=max(eos - 1, 0), pad_token_id=0,
        ),
        projection_dim=cfg.embed_dim,
        logit_scale_init_value=cfg.logit_scale_init,
    )  # fmt: skip


# bf16 dense tensor-core peak (TFLOP/s, no sparsity) by device name fragment, first match wins
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM / HBM3
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
]


def peak_tflops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for frag, peak in PEAK_BF16_TFLOPS:
        if frag in name:
            return name, peak
    return name, None


def build_models(config: str, device: torch.device, seed: int = 0):
    """The HF model (SDPA attention) and minivlm's copy of it, both in training mode."""
    from transformers import CLIPConfig as HFCLIPConfig
    from transformers import CLIPModel

    preset, overrides = CONFIGS[config]
    with torch.device("meta"):  # only the config is needed
        cfg = minivlm.create_model(preset, **overrides).config
    torch.manual_seed(seed)
    hf = CLIPModel(HFCLIPConfig(**hf_config_kwargs(cfg), attn_implementation="sdpa"))
    if hf.vision_model.config._attn_implementation != "sdpa":
        raise RuntimeError("the transformers CLIPModel did not pick SDPA attention")
    hf = hf.to(device).train()
    ours = CLIP.from_hf(hf).train()
    return hf, ours


def make_batch(hf: Any, batch: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random images and right-padded captions of random lengths, each ending with [EOS]."""
    vc, tc = hf.config.vision_config, hf.config.text_config
    g = torch.Generator().manual_seed(seed)
    T, V, eos = tc.max_position_embeddings, tc.vocab_size, tc.eos_token_id
    pixels = torch.randn(batch, vc.num_channels, vc.image_size, vc.image_size, generator=g)
    ids = torch.randint(1, V, (batch, T), generator=g)
    ids[ids == eos] = 1
    lengths = torch.randint(T // 3, T + 1, (batch,), generator=g)
    pos = torch.arange(T)[None]
    ids[pos == (lengths - 1)[:, None]] = eos
    mask = (pos < lengths[:, None]).long()
    ids = ids * mask  # [PAD] = 0 after [EOS]
    return {
        "pixel_values": pixels.to(device),
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
    }


def make_step(model: torch.nn.Module, is_hf: bool, batch: dict, device: torch.device,
              dtype: str, compile: bool):  # fmt: skip
    """One full training step (forward + loss, backward, AdamW) as a closure -> loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05,
                            fused=device.type == "cuda")  # fmt: skip
    fwd = torch.compile(model) if compile else model
    use_amp = dtype == "bf16"

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            if is_hf:
                out = fwd(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                          attention_mask=batch["attention_mask"], return_loss=True)  # fmt: skip
            else:
                out = fwd(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.detach()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, n: int, device: torch.device) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process) per step over ``n`` steps.

    On a shared CPU the CPU time is the steadier measure: it does not count the time the
    process waited for a core (with one thread it is the compute time of the step).
    """
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def count_flops(step) -> int:
    """FLOPs of one training step (forward + backward; the optimizer is not counted)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    hf, ours = build_models(args.config, device, args.seed)
    batch = make_batch(hf, args.batch, device, args.seed)
    n_params = sum(p.numel() for p in ours.parameters())
    steps = {
        "minivlm": make_step(ours, False, batch, device, args.dtype, args.compile),
        "hf": make_step(hf, True, batch, device, args.dtype, args.compile),
    }
    # same weights, same batch: the first losses agree (before either model has stepped)
    first = {name: float(step()) for name, step in steps.items()}
    for step in steps.values():  # warm-up (and compilation)
        for _ in range(args.warmup):
            step()
    flops = (
        count_flops(steps["minivlm"])
        if not args.compile
        else count_flops(make_step(ours, False, batch, device, args.dtype, False))
    )
    times: dict[str, list[float]] = {"minivlm": [], "hf": []}
    cpu: dict[str, list[float]] = {"minivlm": [], "hf": []}
    ratios, cpu_ratios = [], []
    for r in range(args.repeats):
        order = ["minivlm", "hf"] if r % 2 == 0 else ["hf", "minivlm"]
        for name in order:
            wall, cpu_s = time_steps(steps[name], args.steps, device)
            times[name].append(wall)
            cpu[name].append(cpu_s)
        ratios.append(times["hf"][-1] / times["minivlm"][-1])
        cpu_ratios.append(cpu["hf"][-1] / cpu["minivlm"][-1])
    dev_name, peak = peak_tflops(device)
    if args.peak_tflops:
        peak = args.peak_tflops
    res: dict[str, Any] = {
        "config": args.config,
        "preset": CONFIGS[args.config],
        "hf_config": hf_config_kwargs(ours.config),
        "parameters": n_params,
        "batch": args.batch,
        "steps_per_repeat": args.steps,
        "repeats": args.repeats,
        "device": dev_name,
        "dtype": args.dtype,
        "compile": args.compile,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": sys.modules["transformers"].__version__,
        "first_loss": first,
        "flops_per_step": flops,
        "speedup_median": statistics.median(ratios),
        "speedup_per_repeat": ratios,
        "cpu_time_speedup_median": statistics.median(cpu_ratios),
        "cpu_time_speedup_per_repeat": cpu_ratios,
        "peak_bf16_tflops": peak,
    }
    for name, ts in times.items():
        med = statistics.median(ts)
        res[name] = {
            "step_s_median": med,
            "step_s_min": min(ts),
            "step_s_per_repeat": ts,
            "cpu_s_per_step_median": statistics.median(cpu[name]),
            "steps_per_s": 1.0 / med,
            "samples_per_s": args.batch / med,
            "tflops": flops / med / 1e12,
            "mfu": (flops / med / 1e12 / peak) if peak else None,
        }
    return res


def table(res: dict[str, Any]) -> str:
    rows = [
        "| model | step (ms, median) | step (ms, min) | steps/s | samples/s | TFLOP/s | MFU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("minivlm", "hf"):
        r = res[name]
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        rows.append(
            f"| {name} | {1000 * r['step_s_median']:.1f} | {1000 * r['step_s_min']:.1f} | "
            f"{r['steps_per_s']:.2f} | {r['samples_per_s']:.0f} | {r['tflops']:.3f} | {mfu} |"
        )
    lines = [
        f"CLIP training step, config {res['config']} ({res['parameters']:,} parameters), "
        f"batch {res['batch']}, {res['device']}, {res['dtype']}"
        f"{', compiled' if res['compile'] else ''}, {res['threads']} threads",
        *rows,
        f"speed-up minivlm vs HF (median of {res['repeats']} interleaved repeats of "
        f"{res['steps_per_repeat']} steps): {res['speedup_median']:.3f}x  "
        f"(per repeat: {', '.join(f'{r:.2f}' for r in res['speedup_per_repeat'])})",
        f"CPU-time speed-up (process time, insensitive to waiting for a core): "
        f"{res['cpu_time_speedup_median']:.3f}x",
        f"first-step loss: minivlm {res['first_loss']['minivlm']:.6f}, "
        f"HF {res['first_loss']['hf']:.6f}; {res['flops_per_step'] / 1e9:.1f} GFLOP per step",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--batch", type=int, default=None, help="default: 64 (tiny), 32 (mid), 256")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per repeat and model")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default=None,
                    help="bf16 = autocast; default bf16 on CUDA, fp32 elsewhere")  # fmt: skip
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's peak")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/clip_train_benchmark", help="folder for the JSON")
    args = ap.parse_args(argv)
    if args.batch is None:
        args.batch = {"tiny": 64, "mid": 32}.get(args.config, 256)
    if args.dtype is None:
        args.dtype = "bf16" if args.device.startswith("cuda") else "fp32"
    for name in ("batch", "steps", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args)
    print(table(res))
    dev = "cuda" if args.device.startswith("cuda") else args.device
    path = Path(args.out) / f"clip_train_{args.config}_b{args.batch}_{dev}_{args.dtype}.json"
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(res, indent=1)))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
