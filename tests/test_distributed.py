"""Real distributed runs: torch.distributed ranks (gloo, separate processes) and a dask LocalCluster.

The checkpoint is served by the Range HTTP server; ``checkpoint_url`` is the
one place that chooses the store, so an S3 server fixture can be added as a
second parameter without touching the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import lazyweights as lw
from lazyweights.tools import distributed as lwd

from .ranks import run_ranks
from .tp_worker import MLP

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def full_model() -> MLP:
    torch.manual_seed(0)
    model = MLP()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.normal_()
    return model


@pytest.fixture(params=["http"])
def checkpoint_url(request, full_model, http_server, http_root, tmp_path) -> tuple[str, dict, object]:
    """(URL, storage_options, server) of the full model's state dict written as HDF5 (``fc1/weight``, ...)."""
    path = tmp_path / "mlp.h5"
    with h5py.File(path, "w") as f:
        for name, t in full_model.state_dict().items():
            f[name.replace(".", "/")] = t.numpy()
    (http_root / "mlp.h5").write_bytes(path.read_bytes())
    return f"{http_server.url}/mlp.h5", {}, http_server


def test_tensor_parallel_warm_start(checkpoint_url, full_model, tmp_path) -> None:
    url, options, server = checkpoint_url
    world = 2
    server.reset()
    with lw.open(url, options):
        metadata = server.bytes_sent  # what parsing the file once costs
    server.reset()
    run_ranks("tests.tp_worker", world, lambda rank: [url, str(tmp_path), json.dumps(options)])
    served = server.bytes_sent
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(world)]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    full = {k: v.numpy() for k, v in full_model.state_dict().items()}

    # assembled shards equal the full weights; replicated ones are identical on every rank
    np.testing.assert_array_equal(np.concatenate([r["fc1.weight"] for r in ranks], 0), full["fc1.weight"])
    np.testing.assert_array_equal(np.concatenate([r["fc1.bias"] for r in ranks], 0), full["fc1.bias"])
    np.testing.assert_array_equal(np.concatenate([r["fc2.weight"] for r in ranks], 1), full["fc2.weight"])
    for name in ("norm.weight", "norm.bias", "fc2.bias"):
        for r in ranks:
            np.testing.assert_array_equal(r[name], full[name], err_msg=name)

    # the tensor-parallel forward pass equals the full model's
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((8, 256)).astype("f4"))
    with torch.no_grad():
        expected = full_model(x).numpy()
    for r in ranks:
        np.testing.assert_allclose(r["y"], expected, atol=1e-5, rtol=1e-5)

    # rank 0 read the replicated tensors and broadcast them; rank 1 read only its shards
    replicated = {"norm.weight", "norm.bias", "fc2.bias"}
    assert all(set(rep["replicated"]) == set(rep["broadcast"]) == replicated for rep in reports)
    assert set(reports[0]["loaded"]) == {"norm/weight", "norm/bias", "fc1/weight", "fc1/bias", "fc2/weight",
                                         "fc2/bias"}  # fmt: skip
    assert set(reports[1]["loaded"]) == {"fc1/weight", "fc1/bias", "fc2/weight"}
    row_sharded = full["fc1.weight"].nbytes + full["fc1.bias"].nbytes
    replicated_bytes = sum(full[n].nbytes for n in replicated)
    # fc1 rows: one range per rank; fc2 columns: coalesced spans (the file is row-major), at most the whole tensor
    assert reports[1]["bytes_read"] <= row_sharded / 2 + full["fc2.weight"].nbytes
    assert sum(r["bytes_read"] for r in reports) <= row_sharded + replicated_bytes + 2 * full["fc2.weight"].nbytes
    assert served == metadata + sum(r["bytes_read"] for r in reports)  # the ranks fetched the metadata once, together


def test_dask_distributed_load_in_one_call(checkpoint_url, full_model) -> None:
    from distributed import Client, LocalCluster, get_task_stream

    url, options, _ = checkpoint_url
    full = {k.replace(".", "/"): v.numpy() for k, v in full_model.state_dict().items()}
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        with get_task_stream(client) as tasks:
            arrays = lwd.load(url, client, storage_options=options, block_size=64 << 10)
        assert set(arrays) == set(full)
        for key, value in full.items():
            np.testing.assert_array_equal(arrays[key], value, err_msg=key)
        assert len({t["worker"] for t in tasks.data}) == 2  # both worker processes read blocks

        shard = lwd.load(url, client, keys=["fc1/weight"], shard=lw.Shard(1, 2), persist=True)
        np.testing.assert_array_equal(shard["fc1/weight"].compute(), full["fc1/weight"][512:])
        flat = lwd.load(url, client, keys=["fc2/weight"], shard=lw.Shard(0, 3, dim=None))
        whole = full["fc2/weight"].reshape(-1)
        np.testing.assert_array_equal(flat["fc2/weight"], whole[: -(-whole.size // 3)])
        with lw.open(url) as ckpt:  # a Weight's own dask graph runs on the cluster too
            np.testing.assert_array_equal(ckpt["fc2/weight"].to_dask()[10:20].compute(), full["fc2/weight"][10:20])
