"""One rank of a tensor-parallel warm-start, run as its own process by test_distributed.py.

    python -m tests.tp_worker STORE_PORT RANK WORLD URL OUT_DIR [STORAGE_OPTIONS_JSON]

Joins a gloo process group through the parent's TCPStore, builds its shard of
:class:`TensorParallelMLP` on the meta device, loads its rows of the shared
checkpoint (replicated tensors: rank 0 reads, then broadcasts), runs the
tensor-parallel forward pass, and writes its tensors, its load report and the
output to OUT_DIR for the parent to check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import lazyweights as lw
from lazyweights import torch as lwt

D, H = 256, 1024  # model width, hidden width


class MLP(torch.nn.Module):
    """The full model: layer norm, then a two-layer MLP."""

    def __init__(self, hidden: int = H):
        super().__init__()
        self.norm = torch.nn.LayerNorm(D)
        self.fc1 = torch.nn.Linear(D, hidden)
        self.fc2 = torch.nn.Linear(hidden, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


class TensorParallelMLP(MLP):
    """Megatron-style: fc1 split by output rows (column parallel), fc2 by input columns (row parallel)."""

    def __init__(self, rank: int, world: int):
        super().__init__(hidden=len(range(*lw.Shard(rank, world).bounds(H))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partial = torch.nn.functional.linear(torch.nn.functional.gelu(self.fc1(self.norm(x))), self.fc2.weight)
        dist.all_reduce(partial)
        return partial + self.fc2.bias


def plan(rank: int, world: int):
    """State-dict name → this rank's shard; everything else is replicated."""
    shards = {
        "fc1.weight": lw.Shard(rank, world, dim=0),
        "fc1.bias": lw.Shard(rank, world, dim=0),
        "fc2.weight": lw.Shard(rank, world, dim=1),
    }
    return lambda name, shape: shards.get(name)


def main(port: int, rank: int, world: int, url: str, out: Path, storage_options: dict) -> None:
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        with torch.device("meta"):
            model = TensorParallelMLP(rank, world)
        report = lwt.load_state_dict(
            model, url, shard=plan(rank, world), replicated="broadcast", storage_options=storage_options
        )
        x = torch.from_numpy(np.random.default_rng(0).standard_normal((8, D)).astype("f4"))
        with torch.no_grad():
            y = model(x)
        np.savez(out / f"rank{rank}.npz", y=y.numpy(), **{k: v.detach().numpy() for k, v in model.state_dict().items()})
        summary = {
            "loaded": report.loaded,
            "replicated": report.replicated,
            "broadcast": report.broadcast,
            "bytes_read": report.bytes_read,
        }
        (out / f"rank{rank}.json").write_text(json.dumps(summary))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    port, rank, world, url, out = sys.argv[1:6]
    options = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
    main(int(port), int(rank), int(world), url, Path(out), options)
