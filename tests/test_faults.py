"""Nothing silently wrong under bad servers, bad caches and concurrent use.

The fault table (:mod:`tests.faults`) on the fault-injecting Range server;
whole-file caches (``simplecache::``, ``filecache::``) over moto S3 and HTTP
at the default concurrency; GCS objects overwritten mid-load (the emulator
ignores ``?generation=``); storage errors during ``lw.open``'s metadata walk;
flat options on chained URLs; concurrent loads of one local path; interrupts;
and memory bounds on chunk decoding and declared shapes.  Values are always
compared with h5py's.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import h5py
import numpy as np
import pytest

import lazyweights as lw
from lazyweights.storage import get_source, release_source

from . import faults
from .stores import gcs_server, s3_server


@pytest.fixture(scope="module")
def s3():
    pytest.importorskip("s3fs")
    with s3_server() as store:
        store.bucket("lw-faults", versioned=False)
        yield store


def _h5py_values(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        names: list[str] = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        return {n: f[n][()] for n in sorted(names)}


def _assert_values(got, expected) -> None:
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


# -- the fault table ---------------------------------------------------------------------


@pytest.mark.parametrize("scenario", faults.SCENARIOS, ids=lambda s: s.name)
def test_fault_table_row(scenario, http_server, http_root) -> None:
    outcome = faults.run(scenario, http_server, http_root)
    assert outcome.outcome == scenario.expected, outcome.message
    if scenario.name.startswith("HTTP 429"):
        assert outcome.seconds >= 1.0  # Retry-After honoured
    if scenario.name == "stall on every attempt":
        assert "a timeout" in outcome.message and outcome.seconds < 30


def test_retry_after_is_capped(http_server, http_root) -> None:
    faults.write_checkpoint(http_root / "capped.h5", seed=3)
    policy = lw.storage.retry.RetryPolicy(max_retry_after=0.2)
    with lw.open(f"{http_server.url}/capped.h5", index=False) as ckpt:
        ckpt.source.retry = policy
        http_server.reset()
        http_server.inject(("status", 503, 3600))
        start = time.perf_counter()
        ckpt.load(**faults.LOAD)
        assert time.perf_counter() - start < 5


# -- whole-file caches -------------------------------------------------------------------


def _cold_cache_load(url: str, cache: str, options: dict, cache_dir) -> dict:
    """Load through a whole-file cache that holds nothing yet, the manifest known: the first reads are concurrent."""
    lw.open(url, {**options, cache: {"cache_storage": str(cache_dir / "warm")}}).close()  # caches the manifest
    return lw.load(url, storage_options={**options, cache: {"cache_storage": str(cache_dir / "cold")}})


@pytest.mark.parametrize("cache", ["simplecache", "filecache"])
def test_whole_file_cache_over_s3_is_right_at_default_concurrency(cache, s3, tmp_path) -> None:
    path = tmp_path / "cached.h5"
    expected = faults.write_checkpoint(path, seed=4)
    s3.fs().put_file(str(path), f"lw-faults/{cache}.h5")
    for trial in range(3):
        got = _cold_cache_load(f"{cache}::s3://lw-faults/{cache}.h5", cache, {"s3": s3.options}, tmp_path / str(trial))
        _assert_values(got, expected)


def test_simplecache_over_http_downloads_once(http_server, http_root, tmp_path) -> None:
    expected = faults.write_checkpoint(http_root / "simple.h5", seed=5)
    url = f"simplecache::{http_server.url}/simple.h5"
    lw.open(url, {"simplecache": {"cache_storage": str(tmp_path / "warm")}}).close()  # caches the manifest
    http_server.reset()
    options = {"simplecache": {"cache_storage": str(tmp_path / "cold")}}
    _assert_values(lw.load(url, storage_options=options), expected)
    assert http_server.count("GET") <= 2  # one download (and fsspec's existence probe, itself a GET)
    http_server.reset()
    _assert_values(lw.load(url, storage_options=options), expected)
    assert http_server.count("GET") == 0  # read from the local copy


def test_flat_options_on_a_chained_url_reach_the_store(s3, tmp_path) -> None:
    path = tmp_path / "flat.h5"
    expected = faults.write_checkpoint(path, seed=6)
    s3.fs().put_file(str(path), "lw-faults/flat.h5")
    got = lw.load("simplecache::s3://lw-faults/flat.h5", storage_options=dict(s3.options), index=False)
    _assert_values(got, expected)


def test_wrong_endpoint_is_a_storage_error_naming_the_url() -> None:
    pytest.importorskip("s3fs")
    options = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
    start = time.perf_counter()
    with pytest.raises(lw.StorageError, match=r"s3://nowhere/x\.h5"):
        lw.open("simplecache::s3://nowhere/x.h5", storage_options=options)
    assert time.perf_counter() - start < 15


# -- GCS: the generation is checked on our side -------------------------------------------


def test_gcs_overwrite_mid_load_is_refused(tmp_path) -> None:
    pytest.importorskip("gcsfs")
    path, other = tmp_path / "g.h5", tmp_path / "g2.h5"
    faults.write_checkpoint(path, seed=7)
    faults.write_checkpoint(other, seed=8)
    with gcs_server() as gcs:
        gcs.fs().put_file(str(path), f"{gcs.bucket}/g.h5")
        with lw.open(f"gs://{gcs.bucket}/g.h5", gcs.options, index=False) as ckpt:
            done: list[bool] = []

            def overwrite(nbytes: int) -> None:
                if not done:
                    done.append(True)
                    gcs.fs().put_file(str(other), f"{gcs.bucket}/g.h5")

            with pytest.raises(lw.ObjectChangedError, match=r"g\.h5: the object changed"):
                ckpt.load(concurrency=1, part_size="64KiB", progress=overwrite)


# -- storage errors during the metadata walk keep their type ------------------------------


def _far_metadata_file(path) -> None:
    """An HDF5 file whose later groups' metadata lies beyond the head fetched at open (1 MiB)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("big/kernel", data=np.arange(600_000, dtype="f4"))  # 2.4 MB of data first
        for i in range(8):
            f.create_dataset(f"late{i}/kernel", data=np.full(4, i, dtype="f4"))


def test_storage_error_during_open_is_not_a_format_error(http_server, http_root) -> None:
    _far_metadata_file(http_root / "walk.h5")
    http_server.reset()
    http_server.inject(("ok", 0), *[("status", 403)] * 8)
    with pytest.raises(lw.StorageError, match="access denied") as excinfo:
        lw.open(f"{http_server.url}/walk.h5", index=False)
    assert not isinstance(excinfo.value, lw.FormatError)
    http_server.reset()


def test_object_changed_during_open_is_object_changed(http_server, http_root) -> None:
    _far_metadata_file(http_root / "walk2.h5")
    _far_metadata_file(http_root / "walk2.other")
    http_server.reset()
    http_server.inject(("ok", 0), ("before", faults._replace(http_root / "walk2.h5", http_root / "walk2.other")))
    with pytest.raises(lw.ObjectChangedError):
        lw.open(f"{http_server.url}/walk2.h5", index=False)
    http_server.reset()


# -- concurrent loads of one local path --------------------------------------------------


def test_closing_one_checkpoint_keeps_anothers_descriptor(tmp_path) -> None:
    path = tmp_path / "shared.h5"
    expected = faults.write_checkpoint(path, seed=9)
    first, second = lw.open(path), lw.open(path)
    assert first.source is second.source  # shared, and counted
    first["layer00/kernel"].read()
    first.close()
    fd = second.source._fd
    assert fd is not None and os.readlink(f"/proc/self/fd/{fd}") == str(path)
    _assert_values(second.load(), expected)
    second.close()
    assert second.source._fd is None  # the last user closed it


def test_concurrent_loads_of_one_path_read_only_their_file(tmp_path) -> None:
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    expected = faults.write_checkpoint(a, seed=10)
    faults.write_checkpoint(b, seed=11)
    stop = threading.Event()
    failures: list[str] = []

    def loader() -> None:
        while not stop.is_set():
            try:
                got = lw.load(a, max_memory="1MiB")
                failures.extend(k for k in expected if not np.array_equal(got[k], expected[k]))
            except Exception as exc:  # EBADF and the like: a failure of this test
                failures.append(f"{type(exc).__name__}: {exc}")

    def reuser() -> None:  # takes the descriptor numbers a premature close frees
        while not stop.is_set():
            fds = [os.open(b, os.O_RDONLY) for _ in range(4)]
            for fd in fds:
                os.close(fd)

    threads = [threading.Thread(target=loader) for _ in range(6)] + [threading.Thread(target=reuser) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures[:5]


def test_release_is_counted_per_user(tmp_path) -> None:
    path = tmp_path / "counted.h5"
    faults.write_checkpoint(path, seed=12)
    one, two = get_source(str(path)), get_source(str(path))
    assert one is two
    one.read(0, 8)
    release_source(one)
    assert two.read(0, 8) == path.read_bytes()[:8] and two._fd is not None
    release_source(two)
    assert two._fd is None


# -- interrupts ------------------------------------------------------------------------------


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_interrupt_with_out_raises_partial_load_error_and_leaves_nothing(tmp_path) -> None:
    path = tmp_path / "many.h5"
    rng = np.random.default_rng(13)
    with h5py.File(path, "w") as f:
        for i in range(512):
            f.create_dataset(f"w{i:03d}", data=rng.standard_normal(4096).astype("f4"))
    expected = _h5py_values(path)
    out = {k: np.zeros_like(v) for k, v in expected.items()}
    threads_before, fds_before = set(threading.enumerate()), _fds()
    seen = [0]

    def interrupt(nbytes: int) -> None:
        seen[0] += 1
        if seen[0] == 100:  # Ctrl-C: SIGINT to the main thread, wherever it waits
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    with pytest.raises(lw.PartialLoadError) as excinfo, lw.open(path) as ckpt:
        ckpt.load(out, concurrency=4, progress=interrupt)
        time.sleep(5)  # not reached when the interrupt lands during the load
    exc = excinfo.value
    assert isinstance(exc.__cause__, KeyboardInterrupt)
    assert 0 < len(exc.written) < 512
    for key in exc.written:
        np.testing.assert_array_equal(out[key], expected[key], err_msg=key)
    assert not [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    assert _fds() <= fds_before


# -- memory bounds -----------------------------------------------------------------------------


def test_a_chunk_larger_than_the_budget_is_refused(tmp_path) -> None:
    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("w", shape=(16 << 20,), dtype="f4", chunks=(16 << 20,), compression="gzip")
        d[:1] = 1.0  # one 64 MiB chunk, a few KiB on disk
    assert os.path.getsize(path) < 1 << 20
    with pytest.raises(lw.BudgetError, match=r"'w'.*more than max_memory=8388608"):
        lw.load(path, max_memory="8MiB")
    assert lw.load(path, max_memory="256MiB")["w"][0] == 1.0


def test_declared_shape_is_checked_before_allocating(tmp_path) -> None:
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("w", shape=(1 << 50,), dtype="f4", chunks=(1 << 20,))  # never written: a tiny file
    with lw.open(path) as ckpt:
        with pytest.raises(lw.BudgetError, match=r"'w'.*declared shape"):
            ckpt["w"].read()
        assert ckpt["w"][:4].tolist() == [0.0] * 4  # a slice still reads
        with pytest.raises(MemoryError):  # a BudgetError is a MemoryError, for callers who catch that
            lw.load(path)


def test_a_replaced_file_is_a_new_source_and_the_old_one_reads_its_own_version(tmp_path) -> None:
    path = tmp_path / "replaced.h5"
    first = faults.write_checkpoint(path, seed=14)
    with lw.open(path) as old:
        other = tmp_path / "other.h5"
        expected = faults.write_checkpoint(other, seed=15)
        shutil.copy(other, tmp_path / "tmp.h5")
        os.replace(tmp_path / "tmp.h5", path)
        with lw.open(path) as new:
            assert new.source is not old.source
            _assert_values(new.load(), expected)
        _assert_values(old.load(), first)  # through the descriptor it opened: its own version, whole


# -- each response checked against the pin (S3's GetObject response dict, HTTP headers) ------------


def test_check_response_refuses_other_versions_and_ranges() -> None:
    from lazyweights.storage.pinning import Pin, RangeMismatchError, VersionMismatchError, check_response

    pin = Pin(size=1000, etag='"abc"', version="v1")
    check_response(pin, 10, 20, {"ETag": '"abc"', "VersionId": "v1", "ContentRange": "bytes 10-19/1000"})
    with pytest.raises(VersionMismatchError, match="version v2"):  # an S3 that ignored VersionId
        check_response(pin, 10, 20, {"ETag": '"abc"', "VersionId": "v2", "ContentRange": "bytes 10-19/1000"})
    with pytest.raises(VersionMismatchError, match="ETag"):  # one that ignored IfMatch
        check_response(Pin(size=1000, etag='"abc"'), 10, 20, {"ETag": '"def"', "ContentRange": "bytes 10-19/1000"})
    with pytest.raises(VersionMismatchError, match="1001 bytes"):
        check_response(pin, 10, 20, {"Content-Range": "bytes 10-19/1001"})
    with pytest.raises(RangeMismatchError, match="bytes 14-23"):
        check_response(pin, 10, 20, {"Content-Range": "bytes 14-23/1000"})
    with pytest.raises(RangeMismatchError, match="no Content-Range"):
        check_response(pin, 10, 20, {})
    check_response(pin, 0, 1000, {}, whole_ok=True)  # a 200 with all of it
    modified = Pin(size=1000, etag='"abc"', modified="Mon, 01 Jan 2024 00:00:00 GMT")
    with pytest.raises(VersionMismatchError, match="Last-Modified"):
        check_response(
            modified, 10, 20, {"Last-Modified": "Tue, 02 Jan 2024 00:00:00 GMT", "Content-Range": "bytes 10-19/1000"}
        )
