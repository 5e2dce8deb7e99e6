"""The ranks of a real torch.distributed job (gloo, one process each) open a checkpoint together.

Each rank reads through its own Range HTTP server over the same files, so the bytes each rank fetched are
that server's count.  The plain open (one process, no collective) is the oracle for the manifest and for the
metadata bytes a job should fetch in all.
"""

from __future__ import annotations

import contextlib
import json
import shutil

import numpy as np
import pytest

import lazyweights as lw
from lazyweights.storage.collective import byte_shares

from .conftest import save_keras_formats
from .ranks import run_ranks
from .servers import serve


@pytest.fixture(scope="module")
def wide_files(tmp_path_factory):
    """A 40-layer Keras 3 model (2.6 MB: metadata interleaved with weights past the open's head), saved by Keras
    as ``.h5``, ``.weights.h5`` and ``.keras``."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((128,)), *(keras.layers.Dense(128, name=f"d{i}") for i in range(40))])
    root = tmp_path_factory.mktemp("collective")
    save_keras_formats(model, root, "wide")
    return root


def _servers(roots):
    stack = contextlib.ExitStack()
    return stack, [stack.enter_context(serve(root)) for root in roots]


def _job(mode, wide_files, tmp_path, world=2, name="wide.weights.h5"):
    """``(file size, its full load, each rank's result, bytes each rank's server sent)`` of a ``mode`` job."""
    size = (wide_files / name).stat().st_size
    full = lw.load(wide_files / name)
    stack, servers = _servers([wide_files] * world)
    with stack:
        results = _run(mode, servers, name, tmp_path)
        fetched = [s.bytes_sent for s in servers]
    return size, full, results, fetched


def _run(mode, servers, name, out):
    world = len(servers)
    run_ranks("tests.collective_worker", world, lambda r: [mode, f"{servers[r].url}/{name}", str(out)])
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.mark.parametrize("name", ["wide.h5", "wide.weights.h5", "wide.keras"])
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_open_together_each_fetching_its_share(wide_files, tmp_path, name, world) -> None:
    stack, servers = _servers([wide_files] * world)
    with stack:
        with lw.open(f"{servers[0].url}/{name}", index=False) as ckpt:
            expected, alone = json.loads(ckpt.manifest.to_json()), servers[0].bytes_sent
        assert alone > lw.storage.HEAD_BYTES  # the walk reads past the head: shared levels after it
        for s in servers:
            s.reset()
        results = _run("open", servers, name, tmp_path)
        fetched = [s.bytes_sent for s in servers]
    for rank, result in enumerate(results):
        assert "error" not in result, result
        assert result["manifest"]["weights"] == expected["weights"], rank
        assert result["manifest"] == {**expected, "url": result["manifest"]["url"]}
    assert sum(fetched) == alone  # the job fetched the metadata once, split among the ranks
    assert max(fetched) <= alone / world + 16, fetched  # a byte of rounding per shared read at most


def test_a_sharded_warm_start_fetches_a_share_of_the_file(wide_files, tmp_path) -> None:
    """Flat shards and a shared open: each of 2 ranks fetches at most 1.02/2 of the file, open included."""
    world = 2
    size, full, results, fetched = _job("load", wide_files, tmp_path, world)
    for rank, result in enumerate(results):
        assert "error" not in result, result
        assert result["shard_error"] == (
            f"the shard is rank {(rank + 1) % world} of {world} but the collective opening the checkpoint "
            f"is rank {rank} of {world}"
        )
    parts = [np.load(tmp_path / f"rank{r}.npz") for r in range(world)]
    for key, value in full.items():
        got = np.concatenate([p[key.replace("/", "|")] for p in parts])
        np.testing.assert_array_equal(got, value.reshape(-1), err_msg=key)
    assert max(fetched) <= 1.02 * size / world, [f / size for f in fetched]


def test_a_module_warm_start_opens_together(wide_files, tmp_path) -> None:
    """``lwt.load_state_dict(..., collective=)``: 2 ranks fill their rows of each Linear (the kernel as stored),
    and the job fetches the file about once (each rank's rows, the metadata split between them), where ranks
    opening alone would each add an open's bytes (the head alone is a fifth of this file)."""
    import torch

    world, name = 2, "wide.weights.h5"
    size, full, results, fetched = _job("torch", wide_files, tmp_path, world, name)
    assert all("error" not in r for r in results), results
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    with lw.open(wide_files / name) as ckpt:
        keys = {la.alias: [w.key for w in la.weights] for la in ckpt.layers if la.weights}  # d0: kernel, bias
    assert len(keys) == 40
    for alias, (kernel_key, bias_key) in keys.items():
        kernel = np.concatenate([p[f"{alias}.weight"].numpy() for p in parts])
        np.testing.assert_array_equal(kernel, full[kernel_key], err_msg=alias)
        bias = np.concatenate([p[f"{alias}.bias"].numpy() for p in parts])
        np.testing.assert_array_equal(bias, full[bias_key], err_msg=alias)
    assert sum(fetched) <= 1.02 * size, [f / size for f in fetched]  # alone, each rank's open adds its own head


def test_ranks_that_see_different_versions_all_refuse(wide_files, tmp_path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(wide_files / "wide.weights.h5", other / "wide.weights.h5")
    with open(other / "wide.weights.h5", "ab") as f:
        f.write(b"\0" * 10)  # another version of the object: another size
    stack, servers = _servers([wide_files, other])
    with stack:
        results = _run("open", servers, "wide.weights.h5", tmp_path)
    for result in results:
        assert result["error"] == "ObjectChangedError", result
        assert "the ranks opened different versions of the object" in result["message"]


def test_a_rank_that_cannot_read_its_share_fails_every_rank(wide_files, tmp_path) -> None:
    stack, servers = _servers([wide_files] * 2)
    with stack:
        servers[1].inject(("status", 403))  # rank 1's first GET: its share of the head
        results = _run("open", servers, "wide.weights.h5", tmp_path)
    assert results[1]["error"] == "StorageError" and "403" in results[1]["message"], results[1]
    assert results[0]["error"] == "StorageError", results[0]
    assert "rank 1 could not read its share of the metadata" in results[0]["message"]


def test_byte_shares_split_every_batch_evenly() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    @given(
        st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 5000)), max_size=30),
        st.integers(1, 8),
    )
    def check(ranges, world) -> None:
        pieces = [byte_shares(ranges, rank, world) for rank in range(world)]
        sizes = [sum(n for _, n in p) for p in pieces]
        assert max(sizes) - min(sizes) <= 1
        assert sum(len(p) for p in pieces) <= sum(1 for _, n in ranges if n) + world - 1
        flat = [(off, n) for p in pieces for off, n in p]
        spans = [(off, n) for off, n in ranges if n]
        assert sum(n for _, n in flat) == sum(n for _, n in spans)
        it = iter(flat)  # the pieces, in rank order, walk the ranges in order
        for off, n in spans:
            at = off
            while at < off + n:
                o, k = next(it)
                assert o == at and k <= off + n - at
                at += k

    check()
