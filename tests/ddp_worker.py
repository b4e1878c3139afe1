"""Tiny model and data shared by tests/test_train.py, and the worker that the DDP test
launches with ``python -m torch.distributed.run --nproc_per_node 2 --standalone``.

    python -m torch.distributed.run --nproc_per_node 2 --standalone tests/ddp_worker.py OUT_DIR

Each rank trains the same tiny model twice through :func:`minivlm.train.train` (once fed a
Dataset, once a DataLoader) and saves its parameters to ``OUT_DIR``; the test compares them
with a single-process run on the same global batches.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from minivlm.train import TrainConfig, train  # noqa: E402

DIM, VOCAB = 4, 5


@dataclass
class ToyOutput:
    loss: torch.Tensor | None
    pred: torch.Tensor
    loss_mse: torch.Tensor | None = None
    loss_l1: torch.Tensor | None = None


class ToyModel(nn.Module):
    """Regression from a vector plus a token embedding; two loss parts; dropout."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.fc1 = nn.Linear(DIM, 16)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 1)
        self.steps_seen: list[tuple[int, int]] = []  # filled by on_after_step
        self.indices_seen: list[list[int]] = []  # filled by forward when given idx

    def no_weight_decay(self) -> set[str]:
        return {"emb"}

    def forward(
        self,
        x: torch.Tensor,
        tok: torch.Tensor,
        y: torch.Tensor | None = None,
        idx: torch.Tensor | None = None,
    ) -> ToyOutput:
        if idx is not None:
            self.indices_seen.append(idx.tolist())
        h = self.drop(F.gelu(self.fc1(x + self.emb(tok))))  # (B, 16)
        pred = self.head(self.norm(h)).squeeze(-1)  # (B,)
        if y is None:
            return ToyOutput(loss=None, pred=pred)
        mse = F.mse_loss(pred, y)
        l1 = (pred - y).abs().mean()
        return ToyOutput(loss=mse + 0.1 * l1, pred=pred, loss_mse=mse, loss_l1=l1)

    def on_after_step(self, step: int, total: int) -> None:
        self.steps_seen.append((step, total))


class ToyDataset(Dataset):
    """``n`` samples of a fixed random linear target; items are dicts."""

    def __init__(self, n: int = 40, seed: int = 0, with_idx: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, DIM, generator=g)
        self.tok = torch.randint(0, VOCAB, (n,), generator=g)
        w = torch.randn(DIM, generator=g)
        self.y = self.x @ w + 0.5 * self.tok.float() - 1.0
        self.with_idx = with_idx

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"x": self.x[i], "tok": self.tok[i], "y": self.y[i]}
        if self.with_idx:
            item["idx"] = torch.tensor(i)
        return item


def make_model(dropout: float = 0.0) -> ToyModel:
    torch.manual_seed(1234)
    return ToyModel(dropout)


DDP_CONFIG = dict(steps=6, lr=1e-2, batch_size=8, warmup_steps=2, log_every=2, seed=3)


def ddp_loader() -> DataLoader:
    return DataLoader(ToyDataset(), batch_size=8, shuffle=False, drop_last=True)


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    cfg = TrainConfig(**DDP_CONFIG, progress=False, ckpt_path=os.path.join(out_dir, "ckpt.pt"))
    res = train(make_model(), ToyDataset(with_idx=True), cfg)  # initialises torch.distributed
    rank = torch.distributed.get_rank()
    torch.save(res.model.state_dict(), os.path.join(out_dir, f"dataset_rank{rank}.pt"))
    torch.save(res.model.indices_seen, os.path.join(out_dir, f"indices_rank{rank}.pt"))
    res = train(make_model(), ddp_loader(), TrainConfig(**DDP_CONFIG, progress=False))
    torch.save(res.model.state_dict(), os.path.join(out_dir, f"loader_rank{rank}.pt"))
    torch.save(res.history, os.path.join(out_dir, f"loader_history_rank{rank}.pt"))
    # every rank is done with its last collective before any rank tears gloo down
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    # Every result is on disk and the process group is destroyed. Leave without running C++
    # static destructors: with torch 2.14 + gloo on CPU, about 1 run in 5 aborted *after*
    # main() returned ("terminate called without an active exception", no Python frame),
    # a teardown race in the library, not in the training code under test.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
