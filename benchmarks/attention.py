"""Explicit-math attention versus SDPA: time and peak memory against sequence length.

    python benchmarks/attention.py                 # CPU (and CUDA when present)
    python benchmarks/attention.py --lengths 256 1024 4096 --out runs/attention

Both paths compute softmax(QKᵀ/√d)V (``minivlm.nn.attention.attend``); the
explicit path materialises the (B, H, T, T) score and weight matrices, SDPA
does not have to. Time is the median of ``torch.utils.benchmark`` runs of a
forward + backward pass. Peak memory is measured on CUDA with
``torch.cuda.max_memory_allocated``; on the CPU as the growth of the peak
resident set size during the step (Linux's VmHWM, reset before each point).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils import benchmark

from minivlm.nn.attention import attend


def _inputs(B: int, H: int, T: int, d: int, device: str, dtype: torch.dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    return [torch.randn(B, H, T, d, generator=g, dtype=torch.float32).to(device, dtype)
            .requires_grad_() for _ in range(3)]


def _step(q, k, v, explicit: bool) -> None:
    out, _ = attend(q, k, v, None, need_weights=explicit)
    out.sum().backward()


def time_point(B: int, H: int, T: int, d: int, explicit: bool, device: str,
               dtype: torch.dtype) -> float:
    q, k, v = _inputs(B, H, T, d, device, dtype)
    t = benchmark.Timer("step(q, k, v, explicit)", globals={"step": _step, "q": q, "k": k,
                                                              "v": v, "explicit": explicit})
    return t.blocked_autorange(min_run_time=0.5).median


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_peak_mb(B: int, H: int, T: int, d: int, explicit: bool) -> float:
    """Peak resident memory (MiB) added by one step on the CPU (Linux only).

    Writing 5 to /proc/self/clear_refs resets the kernel's peak-RSS counter
    (VmHWM), so the peak of this step alone is VmHWM after it minus VmRSS before.
    """
    q, k, v = _inputs(B, H, T, d, "cpu", torch.float32)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return float("nan")
    before = _proc_status_kib("VmRSS")
    _step(q, k, v, explicit)
    return (_proc_status_kib("VmHWM") - before) / 1024


def cuda_peak_mb(B: int, H: int, T: int, d: int, explicit: bool, dtype: torch.dtype) -> float:
    q, k, v = _inputs(B, H, T, d, "cuda", dtype)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    _step(q, k, v, explicit)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run(lengths: list[int], B: int, H: int, d: int, device: str) -> list[dict]:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = []
    for T in lengths:
        row: dict = {"device": device, "T": T, "B": B, "H": H, "d": d, "dtype": str(dtype)}
        for name, explicit in (("explicit", True), ("sdpa", False)):
            row[f"{name}_ms"] = 1e3 * time_point(B, H, T, d, explicit, device, dtype)
            if device == "cuda":
                row[f"{name}_MiB"] = cuda_peak_mb(B, H, T, d, explicit, dtype)
            else:
                row[f"{name}_MiB"] = cpu_peak_mb(B, H, T, d, explicit)
        row["speedup"] = row["explicit_ms"] / row["sdpa_ms"]
        rows.append(row)
        print(f"{device:5s} T={T:5d}  explicit {row['explicit_ms']:8.2f} ms "
              f"{row['explicit_MiB']:8.1f} MiB | sdpa {row['sdpa_ms']:8.2f} ms "
              f"{row['sdpa_MiB']:8.1f} MiB | "
              f"speedup {row['speedup']:.2f}x", flush=True)
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| device | T | explicit ms | SDPA ms | speed-up | explicit peak MiB "
             "| SDPA peak MiB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['device']} | {r['T']} | {r['explicit_ms']:.2f} | {r['sdpa_ms']:.2f} | "
                     f"{r['speedup']:.2f}× | {r['explicit_MiB']:.1f} | {r['sdpa_MiB']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024, 2048])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--out", default="runs/attention_benchmark")
    args = ap.parse_args(argv)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for dev in devices:
        lengths = args.lengths if dev == "cpu" else args.lengths + [4096, 8192]
        rows += run(lengths, args.batch, args.heads, args.head_dim, dev)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    table = markdown_table(rows)
    (out / "results.md").write_text(table + "\n")
    print("\n" + table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for dev in devices:
        rs = [r for r in rows if r["device"] == dev]
        Ts = [r["T"] for r in rs]
        for name, style in (("explicit", "o-"), ("sdpa", "s--")):
            axes[0].loglog(Ts, [r[f"{name}_ms"] for r in rs], style, label=f"{name} ({dev})")
            axes[1].loglog(Ts, [max(r[f"{name}_MiB"], 0.1) for r in rs], style,
                           label=f"{name} ({dev})")
    axes[0].set(xlabel="sequence length T", ylabel="forward+backward ms", title="time")
    axes[1].set(xlabel="sequence length T", ylabel="peak MiB above inputs", title="memory")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "attention.png", dpi=100)
    print(f"wrote {out}/results.json, results.md, attention.png")


if __name__ == "__main__":
    main()
