"""Checkpoints from real object stores on loopback: S3 (moto), GCS (emulator), HTTP (a Range server).

The same files give the local arrays from every store; opening costs few
requests, and ≤ 3 with a metadata index; a stale index is ignored; an object
that changes during a load is refused (or, in a versioned bucket, the opened
version is read to the end); transient faults are retried; 403 and 404 fail
at once naming the URL.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import time

import numpy as np
import pytest

import lazyweights as lw
from lazyweights.storage import Source

from .conftest import KERAS2
from .stores import gcs_server, s3_server

pytest.importorskip("s3fs")
pytest.importorskip("gcsfs")

MOBILENET = KERAS2 / "mobilenetv2_full.h5"


@pytest.fixture(scope="module")
def s3():
    with s3_server() as store:
        store.bucket("lw-versioned", versioned=True)
        store.bucket("lw-plain", versioned=False)
        yield store


@pytest.fixture(scope="module")
def gcs():
    with gcs_server() as store:
        yield store


def _local(path) -> dict[str, np.ndarray]:
    return dict(lw.load(path))


def _assert_same(got, expected) -> None:
    assert list(got) == list(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def _put(kind, path, s3, gcs, http_server, http_root, name=None):
    """Upload ``path`` to the store ``kind``; return (url, storage_options)."""
    name = name or path.name
    if kind == "s3":
        s3.fs().put_file(str(path), f"lw-versioned/{name}")
        return f"s3://lw-versioned/{name}", s3.options
    if kind == "gs":
        gcs.fs().put_file(str(path), f"{gcs.bucket}/{name}")
        return f"gs://{gcs.bucket}/{name}", gcs.options
    shutil.copy(path, http_root / name)
    return f"{http_server.url}/{name}", None


# -- the first round trip ---------------------------------------------------------------------


@pytest.mark.parametrize("bucket", ["lw-versioned", "lw-plain"])
def test_s3_open_stats_with_its_head_get(bucket, keras3_files, s3, monkeypatch) -> None:
    """The stat of an S3 checkpoint is the GetObject of its head (size from ContentRange, ETag and
    VersionId pinned from that answer): no HeadObject; an empty object still opens as empty."""
    path = keras3_files["keras"]
    s3.fs().put_file(str(path), f"{bucket}/first-{path.name}")
    s3.fs().pipe(f"{bucket}/first-empty.h5", b"")
    stats: list[str] = []
    real = Source.stat
    monkeypatch.setattr(Source, "stat", lambda self: stats.append(self.url) or real(self))
    with lw.open(f"s3://{bucket}/first-{path.name}", s3.options, index=False) as ckpt:
        assert ckpt._source.pinned and ckpt._source.pin.size == path.stat().st_size
        assert (ckpt._source.pin.version is not None) == (bucket == "lw-versioned")
        got = ckpt.load()
    assert stats == []
    _assert_same(got, _local(path))
    with pytest.raises(lw.FormatError, match="empty"):
        lw.open(f"s3://{bucket}/first-empty.h5", s3.options, index=False)


# -- the same arrays from every store -------------------------------------------------------


@pytest.mark.parametrize("kind", ["s3", "gs", "http"])
def test_every_store_gives_the_local_arrays(kind, keras3_files, s3, gcs, http_server, http_root) -> None:
    for path in (keras3_files["keras"], keras3_files["weights"], MOBILENET):
        url, options = _put(kind, path, s3, gcs, http_server, http_root, name=f"{kind}-{path.name}")
        with lw.open(url, options) as ckpt:
            assert ckpt._source.pinned  # every read asks for the version opened
            got = ckpt.load(max_memory="256KiB", concurrency=4)
        _assert_same(got, _local(path))


def test_storage_options_reach_fsspec(s3, http_server, http_root) -> None:
    shutil.copy(MOBILENET, http_root / "secret.h5")
    url = f"{http_server.url}/secret.h5"
    http_server.required_headers = {"Authorization": "Bearer t0ken"}
    try:
        _assert_same(lw.load(url, storage_options={"headers": {"Authorization": "Bearer t0ken"}}), _local(MOBILENET))
        http_server.reset()
        with pytest.raises(lw.StorageError, match=r"secret\.h5: access denied \(HTTP 403\)"):
            lw.open(url)
        assert http_server.count("GET") + http_server.count("HEAD") <= 2  # fsspec's HEAD, then its GET fallback
    finally:
        http_server.required_headers = {}
    s3.fs().put_file(str(MOBILENET), "lw-plain/payer.h5")
    with lw.open("s3://lw-plain/payer.h5", {**s3.options, "requester_pays": True}) as ckpt:
        assert ckpt._source.fs.req_kw == {"RequestPayer": "requester"}
        _assert_same(ckpt.load(), _local(MOBILENET))


# -- requests to open, with and without an index ----------------------------------------------------


def test_open_request_counts_and_index(http_server, http_root, tmp_path) -> None:
    shutil.copy(MOBILENET, http_root / "counted.h5")
    url = f"{http_server.url}/counted.h5"
    http_server.reset()
    with lw.open(url, cache_dir=tmp_path / "a") as ckpt:  # stat, look for an index, walk the metadata
        parsed = ckpt.manifest
    # the metadata walk reads each level's objects concurrently: more requests, a few rounds (test_hdf5_paths);
    # each structure read by what it holds, ranges merged only across 256 bytes: at most five per weight (its
    # header; its groups' headers with B-tree roots, heaps and symbol nodes, which Keras nests per layer)
    assert len(http_server.requests) <= 5 * len(parsed.weights), http_server.requests
    assert http_server.bytes_sent <= MOBILENET.stat().st_size  # no byte fetched twice

    http_server.reset()
    with lw.open(url, cache_dir=tmp_path / "a") as ckpt:  # the local cache: only the stat (no head fetched)
        assert ckpt.manifest == parsed
    assert [(m, n) for m, _, n in http_server.requests] == [("HEAD", 0)], http_server.requests

    where = lw.write_index(url, path=http_root / "counted.h5.lwindex.json")
    assert where.endswith("counted.h5.lwindex.json")
    http_server.reset()
    with lw.open(url, cache_dir=tmp_path / "b") as ckpt:  # a fresh machine: the head (the stat) and the index
        opened = list(http_server.requests)  # next to the file, fetched together in one round
        assert ckpt.manifest == parsed
        kernel = ckpt.weights[0]
        np.testing.assert_array_equal(kernel.read(), _local(MOBILENET)[kernel.key])
    assert sorted(p.rsplit("/", 1)[1] for _, p, _ in opened) == ["counted.h5", "counted.h5.lwindex.json"]


def test_stale_index_is_ignored(keras3_files, http_server, http_root, tmp_path) -> None:
    target = http_root / "swapped.h5"
    shutil.copy(MOBILENET, target)
    url = f"{http_server.url}/swapped.h5"
    lw.write_index(url, path=http_root / "swapped.h5.lwindex.json")
    with lw.open(url, cache_dir=tmp_path) as ckpt:
        assert ckpt.keys() == list(_local(MOBILENET))
    time.sleep(0.01)
    shutil.copy(keras3_files["h5"], target)  # another checkpoint under the same name: new size and ETag
    with lw.open(url, cache_dir=tmp_path) as ckpt:  # neither the cached manifest nor the index may be used
        got = ckpt.load()
    _assert_same(got, _local(keras3_files["h5"]))


def test_s3_open_with_index_takes_at_most_three_requests(s3, tmp_path) -> None:
    s3.fs().put_file(str(MOBILENET), "lw-versioned/indexed.h5")
    url = "s3://lw-versioned/indexed.h5"
    with lw.open(url, s3.options, index=False) as ckpt:
        unindexed = ckpt._source.requests
    assert lw.write_index(url, s3.options) == url + ".lwindex.json"
    assert s3.fs().exists("lw-versioned/indexed.h5.lwindex.json")
    with lw.open(url, s3.options, cache_dir=tmp_path) as ckpt:
        assert ckpt._source.requests <= 3 < unindexed
        _assert_same(ckpt.load(), _local(MOBILENET))


# -- an object changing under a load ------------------------------------------------------------


def _changed(excinfo, pattern: str) -> None:
    """The load failed because the object changed (directly, or as the cause of a PartialLoadError)."""
    exc = excinfo.value
    cause = exc if isinstance(exc, lw.ObjectChangedError) else exc.__cause__
    assert isinstance(cause, lw.ObjectChangedError), repr(exc)
    assert re.search(pattern, str(cause)), str(cause)


def _swap_on_first_progress(swap):
    done = []

    def callback(nbytes: int) -> None:
        if not done:
            done.append(True)
            swap()

    return callback


def test_http_object_changed_during_load(keras3_files, http_server, http_root) -> None:
    target = http_root / "changing.h5"
    shutil.copy(MOBILENET, target)

    def swap() -> None:
        time.sleep(0.01)
        shutil.copy(MOBILENET, http_root / "changing.tmp")
        os.replace(http_root / "changing.tmp", target)  # same bytes, new file: a new ETag

    with lw.open(f"{http_server.url}/changing.h5", index=False) as ckpt, pytest.raises(lw.LazyWeightsError) as excinfo:
        ckpt.load(concurrency=1, part_size="64KiB", progress=_swap_on_first_progress(swap))
    _changed(excinfo, r"changing\.h5: the object changed since it was opened .*412")


def test_s3_unversioned_change_is_refused(keras3_files, s3) -> None:
    s3.fs().put_file(str(MOBILENET), "lw-plain/changing.h5")
    with lw.open("s3://lw-plain/changing.h5", s3.options, index=False) as ckpt:
        swap = _swap_on_first_progress(lambda: s3.fs().put_file(str(keras3_files["h5"]), "lw-plain/changing.h5"))
        with pytest.raises(lw.LazyWeightsError) as excinfo:
            ckpt.load(concurrency=1, part_size="64KiB", progress=swap)
    _changed(excinfo, r"s3://lw-plain/changing\.h5: the object changed since it was opened")


@pytest.mark.parametrize("replacement", ["same size", "shorter"])
def test_s3_server_ignoring_if_match_cannot_mix_versions(replacement, keras3_files, s3, tmp_path) -> None:
    """An S3-compatible server that ignores IfMatch answers with the replaced object's bytes: each response's ETag
    is checked against the pinned one (and a range the shorter new object lacks, HTTP 416, means the same), so
    the load fails with ObjectChangedError instead of mixing two files."""
    if replacement == "same size":  # other bytes, same length: only the ETag tells the versions apart
        data = bytearray(MOBILENET.read_bytes())
        data[len(data) // 2 :] = bytes(255 - b for b in data[len(data) // 2 :])
        new = tmp_path / "new.h5"
        new.write_bytes(bytes(data))
    else:
        new = keras3_files["h5"]
    s3.fs().put_file(str(MOBILENET), "lw-plain/ignoring.h5")
    s3.if_match.honour = False
    try:
        with lw.open("s3://lw-plain/ignoring.h5", s3.options, index=False) as ckpt:
            assert ckpt._source.pin.version is None and ckpt._source.pin.etag  # pinned by IfMatch alone
            replace = lambda: s3.fs().put_file(str(new), "lw-plain/ignoring.h5")  # noqa: E731
            with pytest.raises(lw.LazyWeightsError) as excinfo:
                ckpt.load(concurrency=1, part_size="64KiB", progress=_swap_on_first_progress(replace))
    finally:
        s3.if_match.honour = True
    _changed(excinfo, r"s3://lw-plain/ignoring\.h5: the object changed since it was opened")


def test_s3_versioned_load_reads_the_version_opened(keras3_files, s3) -> None:
    s3.fs().put_file(str(MOBILENET), "lw-versioned/changing.h5")
    with lw.open("s3://lw-versioned/changing.h5", s3.options, index=False) as ckpt:
        assert ckpt._source.pin.version is not None
        swap = _swap_on_first_progress(lambda: s3.fs().put_file(str(keras3_files["h5"]), "lw-versioned/changing.h5"))
        got = ckpt.load(concurrency=1, part_size="64KiB", progress=swap)
    _assert_same(got, _local(MOBILENET))  # every byte from the version opened, none from the new one


def test_local_file_changed_during_load(tmp_path) -> None:
    path = tmp_path / "local.h5"
    shutil.copy(MOBILENET, path)

    def touch() -> None:
        with open(path, "r+b") as f:  # rewritten in place
            f.seek(0, os.SEEK_END)
            f.write(b"\0")

    with lw.open(path) as ckpt, pytest.raises(lw.ObjectChangedError, match=r"local\.h5: the object changed while"):
        ckpt.load(concurrency=1, progress=_swap_on_first_progress(touch))


def test_pickled_source_refuses_a_changed_object(keras3_files, http_server, http_root) -> None:
    shutil.copy(MOBILENET, http_root / "pickled.h5")
    with lw.open(f"{http_server.url}/pickled.h5", index=False) as ckpt:
        blob = pickle.dumps(ckpt["Conv1/Conv1/kernel:0"].to_dask())
    shutil.copy(keras3_files["h5"], http_root / "pickled.h5")
    with pytest.raises(lw.ObjectChangedError, match=r"pickled\.h5: the object changed since it was opened"):
        pickle.loads(blob).compute()


# -- faults --------------------------------------------------------------------------


def test_transient_faults_are_retried(http_server, http_root) -> None:
    shutil.copy(MOBILENET, http_root / "flaky.h5")
    with lw.open(f"{http_server.url}/flaky.h5", index=False) as ckpt:
        http_server.reset()
        http_server.inject(("status", 503), ("short", 100), ("reset", 0), ("status", 500), ("status", 429))
        got = ckpt.load(concurrency=2, part_size="256KiB")
        assert not http_server.faults  # all five were met, and survived
    _assert_same(got, _local(MOBILENET))


def test_retries_are_bounded(http_server, http_root) -> None:
    shutil.copy(MOBILENET, http_root / "down.h5")
    with lw.open(f"{http_server.url}/down.h5", index=False) as ckpt:
        far = max(ckpt.weights, key=lambda w: w.spec.extent.offset)  # beyond the head fetched at open
        http_server.reset()
        http_server.inject(*[("status", 503)] * 6)
        with pytest.raises(lw.StorageError, match=r"down\.h5: read of bytes .* still failing after 5 attempts"):
            far.read()
        assert http_server.count("GET") == 5


def test_permanent_errors_fail_at_once(http_server, http_root) -> None:
    with pytest.raises(lw.StorageError, match=r"/absent\.h5: no such file \(HTTP 404\)"):
        lw.open(f"{http_server.url}/absent.h5")
    shutil.copy(MOBILENET, http_root / "denied.h5")
    with lw.open(f"{http_server.url}/denied.h5", index=False) as ckpt:
        far = max(ckpt.weights, key=lambda w: w.spec.extent.offset)
        http_server.reset()
        http_server.required_headers = {"Authorization": "Bearer other"}
        try:
            with pytest.raises(lw.StorageError, match=r"denied\.h5: access denied \(HTTP 403\)"):
                far.read()
        finally:
            http_server.required_headers = {}
        assert http_server.count("GET") == 1  # no retries


def test_s3_missing_object_names_the_url(s3) -> None:
    with pytest.raises(lw.StorageError, match=r"s3://lw-plain/nothing\.h5: no such file"):
        lw.open("s3://lw-plain/nothing.h5", s3.options)


# -- batched reads ------------------------------------------------------------------------


def test_readinto_many_merges_near_ranges(http_server, http_root) -> None:
    data = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8)
    (http_root / "ranges.bin").write_bytes(data.tobytes())
    source = Source(f"{http_server.url}/ranges.bin")
    near = [(2 << 20) + i * 4096 for i in range(10)]  # ten 1 KiB reads 3 KiB apart: one request
    far = [(2 << 20) + i * (512 << 10) for i in range(10)]  # ten reads 512 KiB apart: ten concurrent requests
    for offsets, expected_requests in ((near, 1), (far, 10)):
        bufs = [bytearray(1024) for _ in offsets]
        http_server.reset()
        assert source.readinto_many([(o, memoryview(b)) for o, b in zip(offsets, bufs, strict=True)]) == (
            expected_requests
        )
        assert http_server.count("GET") == expected_requests
        for o, b in zip(offsets, bufs, strict=True):
            assert bytes(b) == data[o : o + 1024].tobytes()


def test_small_weights_share_requests(http_server, http_root) -> None:
    shutil.copy(MOBILENET, http_root / "batched.h5")
    expected = _local(MOBILENET)
    with lw.open(f"{http_server.url}/batched.h5", index=False) as ckpt:
        http_server.reset()
        got = ckpt.load(concurrency=4)
    _assert_same(got, expected)
    assert http_server.count("GET") * 20 < len(expected), http_server.requests  # 262 weights, a handful of GETs


def test_batched_groups_keep_their_callbacks(http_server, http_root) -> None:
    from lazyweights.stream import Group, LoadReport, Target, execute

    shutil.copy(MOBILENET, http_root / "layers.h5")
    expected = _local(MOBILENET)
    seen: list[tuple[str, ...]] = []
    with lw.open(f"{http_server.url}/layers.h5", index=False) as ckpt:
        layers = [la for la in ckpt.layers if la.weights]

        def check(layer):
            def on_ready(arrays):
                assert len(arrays) == len(layer.weights)
                for w, a in zip(layer.weights, arrays, strict=True):
                    np.testing.assert_array_equal(a, expected[w.key])
                seen.append(layer.name)

            return on_ready

        groups = [Group([Target(w.spec) for w in la.weights], check(la)) for la in layers]
        http_server.reset()
        execute(ckpt._source, groups, max_memory=16 << 20, report=LoadReport(ckpt.url, ckpt.format))
    assert sorted(seen) == sorted(la.name for la in layers)  # every layer once (groups finish in any order)
    assert http_server.count("GET") < len(layers) // 4


def test_s3_filesystems_retry_once_per_request(s3) -> None:
    """Our RetryPolicy is the only retry layer: s3fs and botocore make one attempt each per call."""
    s3.fs().put_file(str(MOBILENET), "lw-plain/once.h5")
    source = Source("s3://lw-plain/once.h5", s3.options)
    assert source.fs.retries == 1
    assert source.storage_options == s3.options  # the caller's options, as cached and pickled, are untouched
    client_config = source.fs.s3._client_config  # the botocore client s3fs built: no retries of its own
    assert client_config.retries["total_max_attempts"] == 1
    own = {"retries": {"max_attempts": 2, "mode": "standard"}}
    explicit = Source("s3://lw-plain/once.h5", {**s3.options, "config_kwargs": own})
    assert explicit.fs is not source.fs
    assert explicit.fs.s3._client_config.retries["mode"] == "standard"  # theirs wins
    assert explicit.fs.retries == 5  # s3fs's own layer, as the caller configured it


def test_zarr_mirror_on_s3_reads_through_pinned_members(keras3_files, s3, tmp_path) -> None:
    local = tmp_path / "m.zarr"
    lw.mirror(keras3_files["h5"], local, chunk_bytes="4KiB")
    s3.fs().put(str(local), "lw-plain/m.zarr", recursive=True)
    url = "s3://lw-plain/m.zarr"
    with lw.open(url, s3.options) as mir:
        assert mir._source.is_dir
        got = mir.load()
        members = [m for m in mir._source.members_read().values() if m is not None]
        assert members and all(m.pinned and m.fs is mir._source.fs for m in members)  # IfMatch on the ETag
    _assert_same(got, _local(keras3_files["h5"]))


@pytest.mark.parametrize("store", ["s3-versioned", "gcs"])
def test_zarr_mirror_members_pinned_from_one_listing(keras3_files, s3, gcs, tmp_path, store: str) -> None:
    """A mirror on S3 (versioned) or GCS: members pinned from the listing, reads checked against those pins."""
    local = tmp_path / "m.zarr"
    lw.mirror(keras3_files["h5"], local, chunk_bytes="4KiB")
    if store == "gcs":
        fs, options, url = gcs.fs(), gcs.options, f"gs://{gcs.bucket}/listed.zarr"
    else:
        fs, options, url = s3.fs(), s3.options, "s3://lw-versioned/listed.zarr"
    fs.put(str(local), url.split("://", 1)[1], recursive=True)
    with lw.open(url, options) as mir:
        got = mir.load()
        members = [m for m in mir._source.members_read().values() if m is not None]
        assert mir._source._listed and len(members) == sum(1 for p in local.rglob("*") if p.is_file())
        assert all(m.pin.etag or m.pin.version for m in members)
    _assert_same(got, _local(keras3_files["h5"]))


@pytest.mark.parametrize("kind", ["s3", "gs", "http"])
def test_a_full_load_reads_the_object_whole_from_every_store(kind, s3, gcs, http_server, http_root) -> None:
    """MobileNetV2 (14 MB) read whole at open in concurrent pinned ranged GETs, then loaded from memory."""
    url, options = _put(kind, MOBILENET, s3, gcs, http_server, http_root, name="whole-mobilenet.h5")
    got = lw.load(url, storage_options=options, index=False)
    assert got.report.read_ahead == MOBILENET.stat().st_size
    assert got.report.requests == 0
    _assert_same(got, _local(MOBILENET))
