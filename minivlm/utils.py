"""Small helpers shared across the package: device choice, seeding, atomic writes."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

_DEVICE: torch.device | None = None


def device() -> torch.device:
    """The device picked once per process: CUDA, then MPS, then CPU.

    Set ``MINIVLM_DEVICE=cpu`` (or ``cuda:1``...) to override.
    """
    global _DEVICE
    if _DEVICE is None:
        env = os.environ.get("MINIVLM_DEVICE")
        if env:
            _DEVICE = torch.device(env)
        elif torch.cuda.is_available():
            _DEVICE = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            _DEVICE = torch.device("mps")
        else:
            _DEVICE = torch.device("cpu")
    return _DEVICE


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch.Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically rename onto ``path``.

    A crash half-way leaves any previous file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (one space, trailing newline) atomically to ``path``."""
    text = json.dumps(obj, indent=1)
    return atomic_write(path, lambda p: p.write_text(text + "\n"))


def add_results_args(ap: argparse.ArgumentParser, default: str | None = None) -> None:
    """The ``--out`` results file (required unless ``default`` is given) and ``--force``,
    as every script in ``experiments/`` takes them."""
    ap.add_argument(
        "--out",
        type=Path,
        default=default,
        required=default is None,
        help="results JSON to write (refused if it exists, unless --force)",
    )
    ap.add_argument("--force", action="store_true", help="overwrite an existing --out")


def refuse_overwrite(out: Path, allowed: bool, prog: str, alternative: str = "") -> bool:
    """True, after saying why on stderr, when ``out`` exists and overwriting is not
    ``allowed`` (experiment results are never overwritten unasked); the caller exits 2.
    ``alternative`` names another flag that would allow it (" or --resume ...")."""
    if out.exists() and not allowed:
        print(f"{prog}: {out} exists; pass --force to overwrite it{alternative}", file=sys.stderr)
        return True
    return False


def experiment_parser(doc: str, default_out: str | None = None,
                      seeds: Sequence[int] = (0, 1, 2)) -> argparse.ArgumentParser:  # fmt: skip
    """The parser an ``experiments/`` script starts from: its docstring's first line as the
    description, ``--out``/``--force`` (:func:`add_results_args`) and ``--seeds``."""
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    add_results_args(ap, default_out)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    return ap


class ResultsFile:
    """The results JSON of one ``experiments/`` script, rewritten atomically after every record.

    It starts with a header (experiment, command line, ``"complete": false`` until
    :meth:`finish`, the parsed arguments, torch/python/minivlm versions, machine), then the
    script's own ``fields``, then the list(s) the records go to: ``key`` names one list, or a
    tuple of names, one list each (then a record is a dict with those keys). ``summarize``, if
    given, rewrites ``"summary"`` from the records of the first list after each one.
    """

    def __init__(self, name: str, out: Path, fields: dict[str, Any], *,
                 args: argparse.Namespace | None = None, argv: Sequence[str] | None = None,
                 key: str | tuple[str, ...] = "runs",
                 summarize: Callable[[list], Any] | None = None) -> None:  # fmt: skip
        from minivlm import __version__

        self.out, self.summarize = Path(out), summarize
        self.keys = (key,) if isinstance(key, str) else tuple(key)
        words = sys.argv[1:] if argv is None else list(argv)
        self.data: dict[str, Any] = {
            "experiment": name, "command": " ".join([f"python experiments/{name}.py", *words]),
            "complete": False,
            "args": {} if args is None else {k: str(v) for k, v in vars(args).items()},
            "torch": torch.__version__, "python": platform.python_version(),
            "minivlm": __version__, "machine": platform.machine(),
            **fields, **{k: [] for k in self.keys},
        }  # fmt: skip
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()

    @classmethod
    def start(cls, name: str, args: argparse.Namespace, argv: Sequence[str] | None,
              fields: dict[str, Any], **kw: Any) -> ResultsFile | None:  # fmt: skip
        """``None`` (the script exits 2) when ``args.out`` exists and ``--force`` was not given;
        else the file to fill, with torch set to one thread (deterministic, cheap on a CPU)."""
        if refuse_overwrite(args.out, args.force, name):
            return None
        torch.set_num_threads(1)
        return cls(name, args.out, fields, args=args, argv=argv, **kw)

    @property
    def records(self) -> list:
        """The records of the first list so far."""
        return self.data[self.keys[0]]

    def add(self, record: Any) -> None:
        """Append ``record`` (to each list, for a tuple ``key``), re-summarize and write."""
        for k in self.keys:
            self.data[k].append(record if len(self.keys) == 1 else record[k])
        if self.summarize is not None:
            self.data["summary"] = self.summarize(self.records)
        self.data["cpu_seconds"] = round(time.process_time() - self._cpu0, 1)
        self.data["wall_seconds"] = round(time.perf_counter() - self._wall0, 1)
        self.write()

    def run(self, jobs: Iterable[Any], one: Callable[[Any], Any],
            report: Callable[[Any, Any], str] | None = None) -> None:  # fmt: skip
        """``add(one(job))`` for every job in turn, printing ``[k/n] report(job, record)``."""
        jobs = list(jobs)
        for k, job in enumerate(jobs):
            record = one(job)
            self.add(record)
            if report is not None:
                print(f"[{k + 1}/{len(jobs)}] {report(job, record)}", flush=True)

    def seed_done(self, seed: Any, record: Any) -> str:
        """A ``report`` for :meth:`run` over seeds: ``seed 3 done (41.2 s CPU)``."""
        return f"seed {seed} done ({self.data['cpu_seconds']} s CPU)"

    def finish(self, **fields: Any) -> dict[str, Any]:
        """Add ``fields``, mark the file complete, write it; return its contents."""
        self.data.update(fields)
        self.data["complete"] = True
        self.write()
        return self.data

    def write(self) -> None:
        write_json(self.out, self.data)


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def raise_first(prefix: str, checks: list[tuple[bool, str]]) -> None:
    """Raise ``ValueError(prefix + message)`` for the first ``(ok, message)`` whose ``ok`` is
    false: the models' input and config checks are written as such tables, after the math."""
    for ok, msg in checks:
        if not ok:
            raise ValueError(f"{prefix}{msg}")
