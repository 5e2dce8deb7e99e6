"""One rank of a job that opens a checkpoint together, run as its own process by test_collective.py.

    python -m tests.collective_worker STORE_PORT RANK WORLD MODE URL OUT_DIR

Joins a gloo process group through the parent's TCPStore and, with the group as the collective:
``open``: writes the manifest; ``load``: loads its flat shard of every weight and writes the arrays;
``torch``: fills a module's Linear layers, each kernel's rows split among the ranks, with ``lwt.load_state_dict``.
A lazyweights error is written (its class and message) instead, for the parent to check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist

import lazyweights as lw
from lazyweights import torch as lwt


def run(mode: str, rank: int, world: int, url: str, out: Path) -> dict:
    group = lwt.process_group()
    if mode == "open":
        with lw.open(url, index=False, collective=group) as ckpt:
            return {"manifest": json.loads(ckpt.manifest.to_json())}
    if mode == "torch":  # tensor-parallel rows of each Dense layer
        return _torch_shard(rank, world, url, out, group)
    try:  # a shard that is not this rank's: refused before anything is read
        lw.load(url, index=False, collective=group, shard=lw.Shard((rank + 1) % world, world, dim=None))
    except lw.ShardError as exc:
        mismatch = str(exc)
    arrays = lw.load(url, index=False, collective=group, shard=lw.Shard(rank, world, dim=None))
    np.savez(out / f"rank{rank}.npz", **{k.replace("/", "|"): v for k, v in arrays.items()})
    return {"shard_error": mismatch, "bytes_read": arrays.report.bytes_read}


def _torch_shard(rank: int, world: int, url: str, out: Path, group: lwt.ProcessGroup) -> dict:
    """Each Dense layer as a Linear holding this rank's rows of its kernel (as stored) and of its bias."""
    import torch

    rows = len(range(*lw.Shard(rank, world).bounds(128)))
    with torch.device("meta"):
        module = torch.nn.ModuleDict({f"d{i}": torch.nn.Linear(128, rows) for i in range(40)})
    paths = ["dense", *(f"dense_{i}" for i in range(1, 40))]  # Keras's names for the layers d0..d39, in order
    names = {f"layers/{p}/vars/{v}": f"d{i}.{t}" for i, p in enumerate(paths) for v, t in ((0, "weight"), (1, "bias"))}
    lwt.load_state_dict(module, url, mapping=names, shard=lw.Shard(rank, world, dim=0), collective=group)
    torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, out / f"rank{rank}.pt")
    return {}


def main(port: int, rank: int, world: int, mode: str, url: str, out: Path) -> None:
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        try:
            result = run(mode, rank, world, url, out)
        except lw.LazyWeightsError as exc:
            result = {"error": type(exc).__name__, "message": str(exc)}
        (out / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    port, rank, world, mode, url, out = sys.argv[1:7]
    main(int(port), int(rank), int(world), mode, url, Path(out))
