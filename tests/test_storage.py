"""The same checkpoints from local paths, file://, memory:// and a real Range HTTP server give the same arrays."""

from __future__ import annotations

import os
import shutil
import time

import fsspec
import h5py
import numpy as np
import pytest

import lazyweights as lw
from lazyweights.storage.source import TAIL_BYTES

from .conftest import KERAS2


@pytest.fixture(scope="module")
def row_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rows") / "rows.h5"
    with h5py.File(path, "w") as f:
        f["big"] = np.arange(4096 * 256, dtype="f4").reshape(4096, 256)  # 4 MiB, 1 KiB rows
        f["chunked"] = f.create_dataset(
            "tmp",
            data=np.arange(64 * 64, dtype="f8").reshape(64, 64),
            chunks=(16, 16),
            compression="gzip",
            shuffle=True,
        )[()]
        f.create_dataset(
            "gz", data=np.arange(64 * 64, dtype="f8").reshape(64, 64), chunks=(16, 16), compression="gzip", shuffle=True
        )
    return path


def _urls(path, http_server, http_root) -> dict[str, str]:
    shutil.copy(path, http_root / path.name)
    fsspec.filesystem("memory").pipe(f"/{path.name}", path.read_bytes())
    return {
        "local": str(path),
        "file": f"file://{path}",
        "memory": f"memory://{path.name}",
        "http": f"{http_server.url}/{path.name}",
    }


@pytest.mark.parametrize("scheme", ["local", "file", "memory", "http"])
@pytest.mark.parametrize("kind", ["keras", "weights", "h5"])
def test_keras3_files_from_every_store(keras3_files, http_server, http_root, scheme, kind) -> None:
    url = _urls(keras3_files[kind], http_server, http_root)[scheme]
    with lw.open(url) as ckpt:
        loaded = ckpt.load(max_memory="64KiB", concurrency=4)
        assert len(loaded) == len(keras3_files["values"])
        for got, expected in zip(loaded.values(), keras3_files["values"], strict=True):
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("scheme", ["memory", "http"])
def test_keras2_from_every_store(http_server, http_root, scheme) -> None:
    path = KERAS2 / "mobilenetv2_full.h5"
    local = lw.load(path)
    remote = lw.load(_urls(path, http_server, http_root)[scheme], max_memory="1MiB")
    assert list(local) == list(remote)
    for key in local:
        np.testing.assert_array_equal(local[key], remote[key])


def test_http_slice_reads_only_its_rows(row_file, http_server, http_root) -> None:
    url = _urls(row_file, http_server, http_root)["http"]
    with lw.open(url) as ckpt:
        arr = ckpt["big"].to_dask()
        http_server.reset()
        got = arr[3000:3010].compute()
        np.testing.assert_array_equal(got, np.arange(4096 * 256, dtype="f4").reshape(4096, 256)[3000:3010])
        assert http_server.bytes_sent == 10 * 1024, http_server.requests  # ten 1 KiB rows, nothing else
        http_server.reset()
        np.testing.assert_array_equal(ckpt["big"].read(3500), np.arange(3500 * 256, 3501 * 256, dtype="f4"))
        assert http_server.bytes_sent == 1024
        http_server.reset()
        np.testing.assert_array_equal(ckpt["big"].read(5), np.arange(5 * 256, 6 * 256, dtype="f4"))
        assert http_server.requests == []  # inside the head the open fetched: no request at all


def test_http_chunked_slice_reads_only_its_chunks(row_file, http_server, http_root) -> None:
    url = _urls(row_file, http_server, http_root)["http"]
    with lw.open(url) as ckpt:
        spec = ckpt["gz"].spec
        needed = [c for c in spec.chunks if c.origin[0] == 16 and c.origin[1] in (0, 16)]
        http_server.reset()
        got = ckpt["gz"].to_dask()[20:30, 5:20].compute()
        np.testing.assert_array_equal(got, np.arange(64 * 64, dtype="f8").reshape(64, 64)[20:30, 5:20])
        assert http_server.bytes_sent == sum(c.extent.length for c in needed)


def test_dask_threaded_and_graph_has_no_handles(row_file) -> None:
    import pickle

    import dask

    with lw.open(row_file) as ckpt:
        arr = ckpt["big"].to_dask()
        assert arr.name.startswith("lazyweights-")
        assert arr.name == ckpt["big"].to_dask().name  # named from metadata: deterministic
        graph = dict(arr.__dask_graph__())
        pickle.dumps(graph)  # no open files or h5py objects inside
        with dask.config.set(scheduler="threads"):
            assert float(arr.sum().compute()) == float(np.arange(4096 * 256, dtype="f4").sum(dtype="f8"))


def test_dask_distributed_local_cluster(row_file, http_server, http_root) -> None:
    from distributed import Client, LocalCluster

    url = _urls(row_file, http_server, http_root)["http"]
    expected = np.arange(4096 * 256, dtype="f4").reshape(4096, 256)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        for target in (str(row_file), url):
            with lw.open(target) as ckpt:
                arr = ckpt["big"].to_dask(chunks=(512, 256))
                np.testing.assert_array_equal(client.compute(arr[100:3000:7]).result(), expected[100:3000:7])
                total = client.compute(arr.sum(dtype="f8")).result()
                assert float(total) == float(expected.sum(dtype="f8"))
        workers = client.run(lambda: __import__("os").getpid())
        assert len(set(workers.values())) == 2


def test_missing_remote_object(http_server) -> None:
    with pytest.raises(lw.StorageError, match=r"no-such-file\.h5"):
        lw.open(f"{http_server.url}/no-such-file.h5")


# -- store prefixes: member objects -------------------------------------------------


def _store(root, n: int = 3):
    """A directory store prefix: a zarr.json marker and ``n`` 16-byte objects ``a/c/<i>``."""
    (root / "a" / "c").mkdir(parents=True)
    (root / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    for i in range(n):
        (root / "a" / "c" / str(i)).write_bytes(bytes([i]) * 16)
    return root


def _replace_same_size(path, data: bytes) -> None:
    """A new object under the same name, same size, other bytes, a later modification time."""
    st = path.stat()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    os.replace(tmp, path)


def test_store_members_are_pinned_cached_and_hold_no_descriptor(tmp_path) -> None:
    from lazyweights.storage import Source

    root = _store(tmp_path / "s.zarr", n=200)
    store = Source(str(root))
    assert store.is_dir
    assert store.member("a/c/nothing") is None  # absent objects are told apart (a chunk never written)
    first = store.member("a/c/0")
    assert first is store.member("a/c/0") and first.fs is store.fs and first.size == 16
    fds = len(os.listdir("/proc/self/fd"))
    for i in range(200):
        assert store.member(f"a/c/{i}").read(0, 16) == bytes([i]) * 16
    assert len(os.listdir("/proc/self/fd")) == fds  # open, pread, close per read
    store.verify()  # nothing changed
    _replace_same_size(root / "a" / "c" / "0", b"x" * 16)
    with pytest.raises(lw.ObjectChangedError, match=r"s\.zarr/a/c/0: the object changed"):
        first.read(0, 16)  # fstat against the pin, before reading
    with pytest.raises(lw.ObjectChangedError, match=r"s\.zarr/a/c/0: the object changed"):
        store.verify()  # the store re-checks every member it read
    store.close()


def test_store_verify_sees_a_member_that_appeared(tmp_path) -> None:
    from lazyweights.storage import Source

    root = _store(tmp_path / "s.zarr")
    store = Source(str(root))
    assert store.member("a/c/9") is None
    (root / "a" / "c" / "9").write_bytes(b"late")
    with pytest.raises(lw.ObjectChangedError, match=r"a/c/9: the object appeared"):
        store.verify()


def test_remote_store_members_reuse_the_filesystem_and_are_checked(http_server, http_root, tmp_path) -> None:
    from lazyweights.storage import Source

    _store(http_root / "members.zarr")
    try:
        store = Source(f"{http_server.url}/members.zarr")
        assert store.is_dir
        member = store.member("a/c/1")
        assert member.fs is store.fs and member.pinned  # If-Match on the ETag seen at first use
        assert member.read(4, 8) == b"\1" * 8
        assert store.member("a/c/7") is None
        _replace_same_size(http_root / "members.zarr" / "a" / "c" / "1", b"y" * 16)
        with pytest.raises(lw.ObjectChangedError, match=r"members\.zarr/a/c/1: the object changed"):
            member.read(0, 16)
    finally:
        shutil.rmtree(http_root / "members.zarr")
    mem = fsspec.filesystem("memory")
    mem.pipe({"/lw-members.zarr/zarr.json": b"{}", "/lw-members.zarr/a/c/0": b"z" * 16})
    try:
        store = Source("memory://lw-members.zarr")
        member = store.member("a/c/0")
        assert not member.pinned and member.read(0, 16) == b"z" * 16
        store.verify()
        mem.rm("/lw-members.zarr/a/c/0")
        time.sleep(0.01)
        mem.pipe("/lw-members.zarr/a/c/0", b"w" * 16)  # a new object: another creation stamp
        with pytest.raises(lw.ObjectChangedError):
            store.verify()  # unpinned members are re-stat-ed
    finally:
        mem.rm("/lw-members.zarr", recursive=True)


@pytest.mark.parametrize("kind", ["weights", "h5", "keras"])
def test_a_small_remote_checkpoint_opens_in_one_request(keras3_files, http_server, http_root, kind) -> None:
    """The stat is the head's ranged GET (size from Content-Range, ETag): no HEAD, and a file under 1 MiB
    is all in that one answer (a ``.keras`` archive asks for its end in a concurrent suffix range)."""
    path = keras3_files[kind]
    assert path.stat().st_size < 1 << 20
    shutil.copy(path, http_root / path.name)
    http_server.reset()
    with lw.open(f"{http_server.url}/{path.name}", index=False) as ckpt:
        remote = ckpt.load()
    with lw.open(path, index=False) as ckpt:
        local = ckpt.load()
    size = path.stat().st_size
    expected = [("GET", f"/{path.name}", size)]
    if kind == "keras":  # and its end, in the same round
        expected.append(("GET", f"/{path.name}", min(size, TAIL_BYTES)))
    assert sorted(http_server.requests) == sorted(expected)
    assert remote.keys() == local.keys()
    for key, value in local.items():
        np.testing.assert_array_equal(remote[key], value)


def test_the_head_get_pins_the_version(http_server, http_root) -> None:
    """The version the first GET saw is the one every later read must match: a replaced file is refused;
    what the head already holds is of the opened version by construction."""
    served = http_root / "pinned-by-head.h5"
    with h5py.File(served, "w") as f:
        f["small"] = np.arange(10.0)
        f["big"] = np.arange(1 << 19, dtype="f8")  # 4 MiB: most of it past the 1 MiB head
    with lw.open(f"{http_server.url}/{served.name}", index=False) as ckpt:
        big = ckpt.manifest.weights[[s.key for s in ckpt.manifest.weights].index("big")]
        data = bytearray(served.read_bytes())
        data[big.extent.end - 8] ^= 0xFF
        served.write_bytes(bytes(data))
        stamp = time.time() + 5
        os.utime(served, (stamp, stamp))  # a new Last-Modified and ETag
        np.testing.assert_array_equal(ckpt["small"].read(), np.arange(10.0))  # in the head: the opened version
        with pytest.raises(lw.ObjectChangedError):
            ckpt["big"].read()


def test_a_missing_remote_file_costs_at_most_two_requests(http_server) -> None:
    """A file name is decided by the URL: no zarr marker probes (they cost 6 more requests over HTTP)."""
    http_server.reset()
    with pytest.raises(lw.StorageError, match="no such file"):
        lw.open(f"{http_server.url}/no-such-model.h5")
    assert len(http_server.requests) <= 2, http_server.requests
    http_server.reset()
    with pytest.raises(lw.StorageError):
        lw.open(f"{http_server.url}/no-such-mirror.zarr")  # a store name: its root markers are looked for
    assert any(path.endswith("/zarr.json") for _, path, _ in http_server.requests)
