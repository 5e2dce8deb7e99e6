"""Pickled sources (dask tasks, weights sent to workers) borrow the process's source: they never hold a use
that nobody would give back, and their descriptor closes once nothing refers to them."""

from __future__ import annotations

import gc
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

import lazyweights as lw


def _descriptors_to(path: Path) -> int:
    """How many of this process's open file descriptors point at ``path``."""
    target = os.path.realpath(path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == target
        except OSError:
            continue
    return count


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, np.ndarray]:
    path = tmp_path / "pickled.h5"
    values = np.arange(4096, dtype="f4").reshape(64, 64)
    with h5py.File(path, "w") as f:
        f["dense/kernel"] = values
    return path, values


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc")
def test_unpickled_weights_hold_no_use_and_close_when_unreferenced(checkpoint) -> None:
    path, values = checkpoint
    ckpt = lw.open(path, index=False)
    source = ckpt._source
    users = source._users
    blob = pickle.dumps(ckpt["dense/kernel"])
    copies = [pickle.loads(blob) for _ in range(50)]
    assert source._users == users  # each unpickling counted a use nobody gives back, before
    np.testing.assert_array_equal(copies[0].read(), values)
    ckpt.close()  # the last holder: the source leaves the cache and closes its descriptor
    assert _descriptors_to(path) == 0
    np.testing.assert_array_equal(copies[1].read(), values)  # a borrowed copy reopens it (pin re-checked)
    assert _descriptors_to(path) == 1
    del ckpt, source, copies
    gc.collect()
    assert _descriptors_to(path) == 0  # closed with the last reference


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc")
def test_dask_distributed_tasks_give_their_source_back(checkpoint) -> None:
    """dask.distributed pickles each task's graph (even in-process): the source its blocks unpickle must not
    outlive the checkpoint and the computed results."""
    from distributed import Client, LocalCluster

    path, values = checkpoint
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        with lw.open(path, index=False) as ckpt:
            array = ckpt["dense/kernel"].to_dask(chunks=(16, 64))
            np.testing.assert_array_equal(client.compute(array).result(), values)
            np.testing.assert_array_equal(client.compute(array[8:40]).result(), values[8:40])
        del array, ckpt
        client.run(gc.collect)
        gc.collect()
        assert _descriptors_to(path) == 0
