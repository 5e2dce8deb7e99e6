"""Run the ranks of a real ``torch.distributed`` job (gloo on loopback), each its own process.

``run_ranks(module, world, args)`` starts ``python -m <module> STORE_PORT RANK WORLD *args(rank)`` for
every rank, with a TCPStore on a port the OS chooses, and fails listing each rank that exited non-zero
(or did not finish within ``timeout`` seconds: a rank waiting for the others forever is a failure too).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_ranks(module: str, world: int, args: Callable[[int], list[str]], timeout: float = 120) -> None:
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, world + 1, is_master=True, wait_for_workers=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, str(store.port), str(rank), str(world), *args(rank)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]
    failures = []
    for rank, proc in enumerate(procs):
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            failures.append(f"rank {rank} did not finish in {timeout} s:\n{err[-3000:]}")
            continue
        if proc.returncode != 0:
            failures.append(f"rank {rank} exited {proc.returncode}:\n{err[-3000:]}")
    assert not failures, "\n".join(failures)
