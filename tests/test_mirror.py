"""Zarr mirrors: written by lw.mirror, read back as the source's manifest, checked by lw.verify."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

import lazyweights as lw
from lazyweights.formats.zarr import encode_name
from lazyweights.manifest import ZarrChunks
from lazyweights.tools.mirror import chunk_shape, shard_shape

from .conftest import KERAS2

MiB = 1 << 20


def _same_manifest(a: lw.Checkpoint, b: lw.Checkpoint) -> None:
    ma, mb = a.manifest, b.manifest
    assert mb.format == ma.format
    assert mb.keys == ma.keys
    assert mb.layers == ma.layers
    assert [w.key for w in mb.optimizer] == [w.key for w in ma.optimizer]
    assert {k: v for k, v in mb.attrs.items() if k != "lazyweights"} == dict(ma.attrs)
    for wa, wb in zip((*ma.weights, *ma.optimizer), (*mb.weights, *mb.optimizer), strict=True):
        assert (wb.layer, wb.name, wb.shape, wb.dtype) == (wa.layer, wa.name, wa.shape, wa.dtype)
        assert wb.layout == "zarr" or (wb.layout == "contiguous" and wb.member.startswith("lazyweights-packed-"))


def _values_equal(a: lw.Checkpoint, b: lw.Checkpoint) -> None:
    for wa, wb in zip((*a.weights, *a.optimizer_weights), (*b.weights, *b.optimizer_weights), strict=True):
        va, vb = wa.read(), wb.read()
        assert va.dtype == vb.dtype, wa.key
        np.testing.assert_array_equal(va.reshape(-1).view(np.uint8), vb.reshape(-1).view(np.uint8), err_msg=wa.key)


@pytest.mark.parametrize("kind", ["weights", "keras", "h5"])
def test_keras3_mirror_has_the_source_manifest_and_values(keras3_files: dict, kind: str, tmp_path: Path) -> None:
    dst = tmp_path / "m.zarr"
    report = lw.mirror(keras3_files[kind], dst, chunk_bytes="1KiB")
    assert len(report.written) == report.weights > 10
    with lw.open(keras3_files[kind]) as src, lw.open(dst) as mir:
        _same_manifest(src, mir)
        _values_equal(src, mir)
        # the oracle: Keras's own get_weights() order and values, bfloat16 included
        got = list(lw.load(mir).values())
        for a, b in zip(got, keras3_files["values"], strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


def test_keras2_full_model_mirror_keeps_layers_optimizer_and_config(tmp_path: Path) -> None:
    src = KERAS2 / "cnn_full.h5"
    lw.mirror(src, tmp_path / "m.zarr", compressor="zstd")
    with lw.open(src) as a, lw.open(tmp_path / "m.zarr") as b:
        _same_manifest(a, b)
        assert b.model_config == a.model_config and b.training_config == a.training_config
        assert len(b.optimizer_weights) > 2
        # by-name loading pairs each file layer with its weights: the same pairs, the same values
        by_name_a = {la.name: [w.read() for w in la.weights] for la in a.layers}
        by_name_b = {la.name: [w.read() for w in la.weights] for la in b.layers}
        assert list(by_name_a) == list(by_name_b)
        for name, values in by_name_a.items():
            for x, y in zip(values, by_name_b[name], strict=True):
                np.testing.assert_array_equal(x, y)
    group = zarr.open_group(tmp_path / "m.zarr", mode="r")
    assert group.attrs["layer_names"] == a.attrs["layer_names"]
    # paths are encoded; the original names live in the attributes
    stored = [(p, n) for p, n in group.members(max_depth=None) if hasattr(n, "dtype")]
    originals = {n.attrs["lazyweights"]["key"] for _, n in stored}
    assert originals == {w.key for w in (*a.weights, *a.optimizer_weights)}
    assert all(":" not in p for p, _ in stored)
    for _, n in stored:  # weights of 3+ chunks sharded; zstd then a CRC32C per chunk
        codecs = n.metadata.to_dict()["codecs"]
        inner = int(np.prod([-(-max(1, s) // c) for s, c in zip(n.shape, n.chunks, strict=True)]))
        assert (codecs[0]["name"] == "sharding_indexed") == (inner >= 3), n.path
        if inner >= 3:
            codecs = codecs[0]["configuration"]["codecs"]
        assert [c["name"] for c in codecs] == ["bytes", "zstd", "crc32c"]


def test_keras_topological_load_from_mirror_equals_keras(keras3_files: dict, tmp_path: Path) -> None:
    """set_weights() from the mirror gives the same model as Keras's load_weights() of the source file."""
    from .conftest import build_keras3_model

    lw.mirror(keras3_files["weights"], tmp_path / "m.zarr")
    from_keras = build_keras3_model(seed=1)
    from_keras.load_weights(keras3_files["weights"])
    from_mirror = build_keras3_model(seed=2)
    from_mirror.set_weights(list(lw.load(tmp_path / "m.zarr").values()))
    for a, b in zip(from_keras.get_weights(), from_mirror.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture
def big_h5(tmp_path: Path) -> Path:
    """A generic HDF5 file: one 8 MiB contiguous weight, a chunked+gzip one, a scalar, awkward names."""
    path = tmp_path / "big.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["layer one/kernel:0"] = rng.standard_normal((2048, 1024)).astype("f4")
        f.create_dataset("layer one/__meta", data=np.arange(5000, dtype=">i4"), chunks=(700,), compression="gzip")
        f["..odd/x"] = np.float64(3.5)
        f["zarr.json"] = np.arange(3, dtype="u1")
        f.attrs["note"] = "generic"
    return path


def test_large_weight_mirrors_in_blocks_under_budget(big_h5: Path, tmp_path: Path) -> None:
    dst = tmp_path / "m.zarr"
    report = lw.mirror(big_h5, dst, chunk_bytes="256KiB", max_memory="4MiB")
    assert report.peak_in_flight <= 4 * MiB
    with lw.open(big_h5) as a, lw.open(dst) as b:
        _same_manifest(a, b)
        _values_equal(a, b)
        kernel = b["layer one/kernel:0"]
        assert kernel.spec.chunk_shape == (64, 1024)
        expected = a["layer one/kernel:0"].read()
        np.testing.assert_array_equal(kernel.to_dask()[100:300, 5].compute(), expected[100:300, 5])
        group = zarr.open_group(dst, mode="r")
        recorded = group[kernel.spec.path].attrs["lazyweights"]["sha256"]
        assert recorded == hashlib.sha256(expected.tobytes()).hexdigest()
        meta = a["layer one/__meta"]  # big-endian in the source: hashed (and stored) little-endian
        assert meta.dtype == np.dtype(">i4") and b["layer one/__meta"].dtype == np.dtype(">i4")
        recorded = group[b["layer one/__meta"].spec.path].attrs["lazyweights"]["sha256"]
        assert recorded == hashlib.sha256(meta.read().astype("<i4").tobytes()).hexdigest()


def test_names_zarr_cannot_hold_are_encoded_and_restored(big_h5: Path, tmp_path: Path) -> None:
    lw.mirror(big_h5, tmp_path / "m.zarr")
    with lw.open(tmp_path / "m.zarr") as b:
        assert set(b.keys()) == {"layer one/kernel:0", "layer one/__meta", "..odd/x", "zarr.json"}
        assert b["..odd/x"].read() == 3.5
        paths = {w.spec.path for w in b.weights}
    assert all(not part.startswith("__") and part not in (".", "..", "zarr.json") for p in paths for p2 in [p]
               for part in p2.split("/"))  # fmt: skip
    group = zarr.open_group(tmp_path / "m.zarr", mode="r")
    assert group[encode_name("layer one")].attrs["lazyweights"]["name"] == "layer one"
    assert encode_name("kernel:0") != encode_name("kernel_0") and encode_name("dense_1") == "dense_1"


def test_chunk_shape_splits_leading_axes() -> None:
    assert chunk_shape((1000, 30), 4, 4000) == (33, 30)
    assert chunk_shape((3, 1000, 30), 4, 4000) == (1, 33, 30)
    assert chunk_shape((10,), 4, 100) == (10,)
    assert chunk_shape((), 4, 10) == ()
    assert chunk_shape((0, 3), 4, 8) == (1, 2)


def test_shard_shape_holds_whole_chunks_along_the_same_axes() -> None:
    assert shard_shape((33, 30), (1000, 30), 4, 40_000) == (330, 30)  # 10 chunks of 33 rows
    assert shard_shape((33, 30), (1000, 30), 4, 1 << 30) == (1023, 30)  # the whole array, rounded up to chunks
    assert shard_shape((1, 33, 30), (3, 1000, 30), 4, 1 << 30) == (3, 1023, 30)
    assert shard_shape((1, 33, 30), (3, 1000, 30), 4, 200_000) == (1, 1023, 30)
    assert shard_shape((1, 33, 30), (3, 1000, 30), 4, 40_000) == (1, 330, 30)
    assert shard_shape((33, 30), (1000, 30), 4, 10) == (33, 30)  # never less than a chunk
    assert shard_shape((), (), 4, 100) == ()


def test_existing_destination_refused_unless_overwrite(tmp_path: Path) -> None:
    src, dst = KERAS2 / "cnn_weights.h5", tmp_path / "m.zarr"
    lw.mirror(src, dst)
    with pytest.raises(lw.DestinationExistsError, match="complete mirror"):
        lw.mirror(src, dst)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a lazyweights mirror"):
        lw.mirror(src, other)
    assert (other / "keep.txt").exists()
    report = lw.mirror(src, dst, overwrite=True, compressor="blosc")
    assert len(report.written) == report.weights
    assert lw.verify(src, dst).ok


class Interrupt(Exception):
    pass


def _interrupt_after(nbytes: int):
    seen = [0]

    def progress(n: int) -> None:
        seen[0] += n
        if seen[0] > nbytes:
            raise Interrupt(f"stopped after {seen[0]} bytes")

    return progress


def test_interrupted_mirror_never_looks_complete_and_resumes(tmp_path: Path) -> None:
    src, dst = KERAS2 / "mobilenetv2_weights.h5", tmp_path / "m.zarr"
    with pytest.raises(Interrupt):
        lw.mirror(src, dst, chunk_bytes="16KiB", concurrency=2, progress=_interrupt_after(400_000))
    with pytest.raises(lw.FormatError, match="incomplete"):
        lw.open(dst)
    with pytest.raises(lw.DestinationExistsError, match="other settings"):
        lw.mirror(src, dst, chunk_bytes="32KiB")
    report = lw.mirror(src, dst, chunk_bytes="16KiB")
    assert report.resumed and report.written
    assert len(report.resumed) + len(report.written) == report.weights
    result = lw.verify(src, dst)
    assert result.ok, result.differences
    assert result.checked == report.weights


def test_mirror_to_memory_and_read_over_http(keras3_files: dict, http_server, http_root: Path, tmp_path: Path) -> None:
    import fsspec

    lw.mirror(keras3_files["h5"], "memory://mirrors/m.zarr", chunk_bytes="2KiB")
    with lw.open("memory://mirrors/m.zarr") as mem, lw.open(keras3_files["h5"]) as src:
        _same_manifest(src, mem)
        _values_equal(src, mem)
    fsspec.filesystem("memory").rm("/mirrors", recursive=True)

    lw.mirror(keras3_files["h5"], http_root / "served.zarr", chunk_bytes="2KiB")
    http_server.reset()
    with lw.open(f"{http_server.url}/served.zarr") as remote:
        metadata_requests = [r for r in http_server.requests if r[0] == "GET" and r[2]]  # not the 404 probes
        # consolidated metadata, then the index of each packed shard (where the packed weights are)
        assert metadata_requests[0] == ("GET", "/served.zarr/zarr.json", metadata_requests[0][2])
        members = {w.spec.member for w in (*remote.weights, *remote.optimizer_weights)} - {None}
        assert members and all(m.startswith("lazyweights-packed-") for m in members)
        indexes = sorted((p, n) for _, p, n in metadata_requests[1:])
        assert indexes == [(f"/served.zarr/{m}", 20) for m in sorted(members)]
        with lw.open(keras3_files["h5"]) as src:
            _same_manifest(src, remote)
            loaded = lw.load(remote, max_memory="64KiB")
            for key, value in lw.load(src).items():
                np.testing.assert_array_equal(value, loaded[key])
            http_server.inject(("status", 503), ("short", 100), ("reset", 0))  # chunk reads meet transient faults
            retried = lw.load(remote, concurrency=1)
            assert not http_server.faults
            for key, value in loaded.items():
                np.testing.assert_array_equal(value, retried[key])


def test_zarr_v2_mirror(tmp_path: Path) -> None:
    src = KERAS2 / "cnn_full.h5"
    lw.mirror(src, tmp_path / "v2.zarr", zarr_format=2, compressor="zstd:1")
    assert (tmp_path / "v2.zarr" / ".zmetadata").exists()
    with lw.open(src) as a, lw.open(tmp_path / "v2.zarr") as b:
        _same_manifest(a, b)
        _values_equal(a, b)


def test_foreign_zarr_groups_v2_and_v3(tmp_path: Path) -> None:
    """Groups written by zarr-python directly: generic layout, and a Keras .h5 layout copied into zarr."""
    rng = np.random.default_rng(1)
    kernel, bias = rng.standard_normal((6, 4)).astype("f4"), rng.standard_normal(4).astype("f8")
    generic = zarr.open_group(tmp_path / "generic.zarr", mode="w", zarr_format=2)
    generic.create_array("b/kernel", data=kernel, chunks=(4, 4))
    generic.create_array("a/bias", data=bias)
    generic.create_array("a/labels", data=np.array(["x", "y"]))
    generic.attrs["model_config"] = json.dumps({"class_name": "Sequential"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(tmp_path / "generic.zarr")
    with lw.open(tmp_path / "generic.zarr") as ckpt:
        assert ckpt.format == "zarr"
        assert ckpt.keys() == ["a/bias", "b/kernel"]
        assert ckpt.manifest.skipped and ckpt.manifest.skipped[0][0] == "a/labels"
        assert ckpt.model_config == {"class_name": "Sequential"}
        np.testing.assert_array_equal(ckpt["b/kernel"].read(), kernel)
        np.testing.assert_array_equal(lw.load(ckpt)["a/bias"], bias)

    keras_like = zarr.open_group(tmp_path / "keras.zarr", mode="w")
    keras_like.attrs["layer_names"] = ["input", "dense"]
    keras_like.create_group("input").attrs["weight_names"] = []
    dense = keras_like.create_group("dense")
    dense.attrs["weight_names"] = ["dense/kernel:0", "dense/bias:0"]
    dense.create_array("dense/kernel:0", data=kernel)
    dense.create_array("dense/bias:0", data=bias)
    with lw.open(tmp_path / "keras.zarr") as ckpt:
        assert ckpt.format == "keras-h5"
        assert ckpt.keys() == ["dense/dense/kernel:0", "dense/dense/bias:0"]
        assert [la.name for la in ckpt.layers] == ["input", "dense"]
        np.testing.assert_array_equal(ckpt["dense/kernel:0"].read(), kernel)


def test_directory_without_zarr_metadata_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(lw.FormatError, match="without zarr metadata"):
        lw.open(tmp_path / "d")


def _chunk_files(root: Path, weight: lw.Weight) -> list[Path]:
    return sorted(p for p in (root / weight.spec.path).rglob("*") if p.is_file() and p.name != "zarr.json")


def test_verify_detects_corrupt_and_missing_chunks(tmp_path: Path) -> None:
    src, dst = KERAS2 / "cnn_weights.h5", tmp_path / "m.zarr"
    lw.mirror(src, dst, chunk_bytes=256, checksum=False, shard_bytes=None)  # unverified: only verify finds it
    assert lw.verify(src, dst).ok
    with lw.open(dst) as mir:
        target, other = sorted(mir.weights, key=lambda w: w.nbytes)[-2:]
    assert len(_chunk_files(dst, target)) > 1
    chunk = _chunk_files(dst, target)[1]
    data = bytearray(chunk.read_bytes())
    data[5] ^= 0x40
    chunk.write_bytes(bytes(data))
    _chunk_files(dst, other)[0].unlink()
    for a, b in ((src, dst), (dst, dst)):
        report = lw.verify(a, b)
        assert not report.ok
        corrupt = {d.key for d in report.differences if d.what == "corrupt"}
        assert corrupt == {target.key, other.key}
        assert target.key not in report.digests
        with pytest.raises(lw.MismatchError, match="corrupt"):
            report.raise_if_different()


def test_verify_reports_unreadable_compressed_chunk(tmp_path: Path) -> None:
    src, dst = KERAS2 / "cnn_weights.h5", tmp_path / "m.zarr"
    lw.mirror(src, dst, chunk_bytes=256, compressor="zstd")
    with lw.open(dst) as mir:
        target = max(mir.weights, key=lambda w: w.nbytes)
    chunk = _chunk_files(dst, target)[0]
    chunk.write_bytes(b"garbage" + chunk.read_bytes()[7:])
    report = lw.verify(src, dst)
    bad = [d for d in report.differences if d.key == target.key]
    assert bad and bad[0].what == "unreadable" and "error" in bad[0].b
    assert report.checked > 5 and len(report.digests) == report.checked - 1  # the others still compared


def test_verify_different_checkpoints(keras3_files: dict, tmp_path: Path) -> None:
    from .conftest import build_keras3_model

    other = tmp_path / "other.weights.h5"
    build_keras3_model(seed=3).save_weights(other)
    report = lw.verify(keras3_files["weights"], other)
    assert not report.ok
    assert {d.what for d in report.differences} >= {"values"}
    report = lw.verify(KERAS2 / "cnn_weights.h5", keras3_files["weights"])
    assert {"missing", "layers"} <= {d.what for d in report.differences}


def test_mirror_writes_on_dask_distributed(keras3_files: dict, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        report = lw.mirror(keras3_files["h5"], tmp_path / "m.zarr", chunk_bytes="1KiB", client=client)
        assert len(report.written) == report.weights
    result = lw.verify(keras3_files["h5"], tmp_path / "m.zarr")
    assert result.ok, result.differences


def test_mirror_of_a_mirror(tmp_path: Path) -> None:
    src = KERAS2 / "cnn_full.h5"
    lw.mirror(src, tmp_path / "a.zarr", chunk_bytes="4KiB")
    lw.mirror(tmp_path / "a.zarr", tmp_path / "b.zarr", chunk_bytes="64KiB", compressor="zstd")
    report = lw.verify(tmp_path / "a.zarr", tmp_path / "b.zarr")
    assert report.ok, report.differences
    shutil.rmtree(tmp_path / "a.zarr")
    with lw.open(src) as a, lw.open(tmp_path / "b.zarr") as b:
        _same_manifest(a, b)


# -- reading mirrors chunk by chunk: raw chunks straight into destinations, others decoded -------


@pytest.fixture(scope="module")
def varied_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights whose mirrors have several chunks, edge chunks, big-endian and one-byte data, and a scalar."""
    path = tmp_path_factory.mktemp("varied") / "varied.h5"
    rng = np.random.default_rng(7)
    with h5py.File(path, "w") as f:
        f["dense/kernel:0"] = rng.standard_normal((300, 70)).astype("f4")
        f["dense/bias:0"] = rng.standard_normal(70)
        f["emb/table"] = rng.integers(-(2**31), 2**31, (50, 3, 4), dtype="i4").astype(">i4")
        f["emb/bytes"] = rng.integers(0, 255, 333, dtype="u1")
        f["scalar"] = np.float32(-2.5)
    return path


def _h5_values(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("dense/kernel:0", "dense/bias:0", "emb/table", "emb/bytes", "scalar")}


@pytest.fixture
def mirror_url(request: pytest.FixtureRequest, http_server, http_root: Path, tmp_path: Path):
    """Where to write a mirror (``request.param``: local, memory or http) -> (write URL, read URL)."""
    import uuid

    import fsspec

    name = f"m-{uuid.uuid4().hex[:8]}.zarr"
    if request.param == "local":
        yield tmp_path / name, tmp_path / name
    elif request.param == "memory":
        yield f"memory://lw-{name}", f"memory://lw-{name}"
        fsspec.filesystem("memory").rm(f"/lw-{name}", recursive=True)
    else:
        yield http_root / name, f"{http_server.url}/{name}"
        shutil.rmtree(http_root / name)


# a box per weight: row ranges meeting several chunks, column slices (several runs per chunk), a middle axis
BOXES = {
    "dense/kernel:0": (slice(37, 211), slice(5, 61)),
    "dense/bias:0": (slice(3, 69),),
    "emb/table": (slice(7, 44), slice(1, 3), slice(0, 4)),
    "emb/bytes": (slice(100, 333),),
}


@pytest.mark.parametrize("mirror_url", ["local", "memory", "http"], indirect=True)
@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("compressor", [None, "zstd"])
def test_mirror_loads_equal_the_source(varied_h5: Path, mirror_url, zarr_format: int, compressor) -> None:
    write, read = mirror_url
    lw.mirror(varied_h5, write, chunk_bytes="4KiB", zarr_format=zarr_format, compressor=compressor)
    expected = _h5_values(varied_h5)
    with lw.open(read) as mir:
        fmt = mir["dense/kernel:0"].spec.zarr
        assert (fmt.prefix, fmt.separator) == (("c", "/") if zarr_format == 3 else ("", "."))
        assert fmt.byteorder == (None if compressor else "<")
        if zarr_format == 3 and compressor is None:  # small weights packed: a byte range of a packed shard
            assert mir["emb/bytes"].spec.member == "lazyweights-packed-uint8/c/0"
            assert mir["scalar"].spec.member == "lazyweights-packed-float32/c/0"
        else:
            assert mir["emb/bytes"].spec.zarr.byteorder == (None if compressor else "|")
        assert mir["dense/kernel:0"].spec.chunk_shape[0] < 300  # several chunks, the last one partial
        for values in (lw.load(mir), lw.load(mir, max_memory="16KiB", concurrency=3)):
            assert sorted(values) == sorted(expected)
            for key, want in expected.items():
                assert values[key].dtype == want.dtype.newbyteorder("="), key  # loads are native-endian
                np.testing.assert_array_equal(values[key], want, err_msg=key)
        out = {key: np.full_like(want, 99) for key, want in expected.items()}
        lw.load(mir, out=out)
        for key, want in expected.items():
            np.testing.assert_array_equal(out[key], want, err_msg=key)
        # region reads: the streaming executor (shard boxes) and Weight.read
        regions = lw.load(mir, shard=lambda key, shape: BOXES.get(key))
        for key, box in BOXES.items():
            np.testing.assert_array_equal(regions[key], expected[key][box], err_msg=key)
            np.testing.assert_array_equal(mir[key][box], expected[key][box], err_msg=key)
        assert mir["scalar"].read() == expected["scalar"]


def test_raw_mirror_reads_hold_no_memory_locally_and_fetch_only_needed_bytes_remotely(
    varied_h5: Path, http_server, http_root: Path, tmp_path: Path
) -> None:
    lw.mirror(varied_h5, tmp_path / "m.zarr", chunk_bytes="4KiB", checksum=False, shard_bytes=None)
    report = lw.load(tmp_path / "m.zarr", max_memory="4KiB").report
    assert report.peak_in_flight == 0  # every chunk read with preadv straight into its array
    lw.mirror(varied_h5, tmp_path / "crc.zarr", chunk_bytes="4KiB")
    report = lw.load(tmp_path / "crc.zarr", max_memory="4KiB").report
    # whole chunks straight into their arrays and checked there; only a partial chunk at an array's end
    # (its CRC32C covers the whole chunk) is staged, one at a time
    assert 0 < report.peak_in_flight <= 4 * 1024 + 4
    lw.mirror(varied_h5, http_root / "raw.zarr", chunk_bytes="4KiB", checksum=False, shard_bytes=None)
    with lw.open(f"{http_server.url}/raw.zarr") as mir:
        spec = mir["dense/kernel:0"].spec
        rows = spec.chunk_shape[0]
        http_server.reset()
        got = lw.load(mir, shard=lambda key, shape: (slice(rows + 3, 2 * rows),) if key == spec.key else None)
        fetched = [(path, n) for method, path, n in http_server.requests if method == "GET" and spec.path in path]
        # one chunk object, only the rows asked for: a ranged GET of the chunk's key
        assert fetched == [(f"/raw.zarr/{spec.path}/{spec.zarr.key((1, 0))}", (rows - 3) * 70 * 4)]
        np.testing.assert_array_equal(got[spec.key], _h5_values(varied_h5)[spec.key][rows + 3 : 2 * rows])


@pytest.mark.parametrize("compressor", [None, "zstd"])
def test_bfloat16_mirror_values(keras3_files: dict, tmp_path: Path, compressor) -> None:
    lw.mirror(keras3_files["weights"], tmp_path / "m.zarr", chunk_bytes="1KiB", compressor=compressor)
    got = list(lw.load(tmp_path / "m.zarr").values())
    assert any(a.dtype.name == "bfloat16" for a in got)
    for a, b in zip(got, keras3_files["values"], strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("where", ["local", "http"])
def test_truncated_chunk_is_an_error_and_a_missing_one_reads_as_fill(
    varied_h5: Path, where: str, http_server, http_root: Path, tmp_path: Path
) -> None:
    root = (tmp_path if where == "local" else http_root) / "trunc.zarr"
    lw.mirror(varied_h5, root, chunk_bytes="1KiB", shard_bytes=None, overwrite=True)
    url = root if where == "local" else f"{http_server.url}/trunc.zarr"
    with lw.open(url) as mir:
        spec, table = mir["dense/kernel:0"].spec, mir["emb/table"].spec
    chunk = root / spec.path / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-8])
    (root / table.path / "c" / "1" / "0" / "0").unlink()
    expected = _h5_values(varied_h5)["emb/table"].copy()
    expected[table.chunk_shape[0] : 2 * table.chunk_shape[0]] = 0  # the mirror's fill value
    with lw.open(url) as mir:
        out = {table.key: np.ones(table.shape, "i4")}
        lw.load(mir, out=out)
        np.testing.assert_array_equal(out[table.key], expected)
        np.testing.assert_array_equal(mir["emb/table"][5:40, 1:], expected[5:40, 1:])
    pattern = r"weight 'dense/kernel:0', chunk 'c/1/0'.*holds \d+ bytes; an uncompressed chunk holds \d+"
    with pytest.raises(lw.FormatError, match=pattern):
        lw.load(url)  # arrays lazyweights allocated: the error itself, not a PartialLoadError
    with lw.open(url) as mir, pytest.raises(lw.FormatError, match=pattern):
        mir["dense/kernel:0"].read()
    report = lw.verify(varied_h5, url)
    found = sorted((d.key, d.what, d.side) for d in report.differences)
    assert found == [
        ("dense/kernel:0", "unreadable", None),
        ("emb/table", "corrupt", "b"),
        ("emb/table", "values", None),
    ]
    assert "chunk 'c/1/0'" in next(d.b for d in report.differences if d.what == "unreadable")


def test_foreign_zarr_arrays_read_like_zarr(tmp_path: Path) -> None:
    """Arrays zarr-python wrote with other settings: lazyweights' reads equal zarr's own, fill values included."""
    from zarr.codecs import BytesCodec, Crc32cCodec, TransposeCodec, ZstdCodec

    rng = np.random.default_rng(3)
    data = rng.integers(-1000, 1000, (13, 6), dtype="<i4")
    v3 = zarr.open_group(tmp_path / "v3.zarr", mode="w")
    v3.create_array("big", data=data.astype(">i4"), chunks=(4, 6), serializer=BytesCodec(endian="big"),
                    compressors=None, fill_value=-7)  # fmt: skip
    v3.create_array("dotted", data=data, chunks=(5, 4), chunk_key_encoding={"name": "v2", "separator": "."},
                    compressors=None, fill_value=11)  # fmt: skip
    v3.create_array("transposed", data=data, chunks=(4, 4), filters=[TransposeCodec(order=(1, 0))],
                    compressors=ZstdCodec())  # fmt: skip
    v3.create_array("sharded", data=data, chunks=(2, 3), shards=(4, 6), compressors=None)
    gaps = data.copy()
    gaps[:2, :3] = 0  # a chunk of fill values: zarr leaves it out of its shard (an empty index entry)
    v3.create_array("sharded-crc", data=gaps, chunks=(2, 3), shards=(4, 6), compressors=Crc32cCodec(), fill_value=0)
    v2 = zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    v2.create_array("slash", data=data, chunks=(4, 4), chunk_key_encoding={"name": "v2", "separator": "/"},
                    compressors=None, fill_value=5)  # fmt: skip
    v2.create_array("fortran", data=data, chunks=(4, 4), order="F", compressors=None)
    v2.create_array("big", data=data.astype(">f8"), chunks=(5, 6), compressors=None, fill_value=1.5)
    gone = ((v3, {"big": "c/1/0", "dotted": "1.1", "sharded": "c/1/0"}), (v2, {"slash": "0/1", "big": "2.0"}))
    for group, missing in gone:
        for name, key in missing.items():  # never-written chunks: zarr's fill value
            (Path(group.store.root) / name / key).unlink()
    for root in ("v3.zarr", "v2.zarr"):
        group = zarr.open_group(tmp_path / root, mode="r")
        with lw.open(tmp_path / root) as ckpt:
            loaded = lw.load(ckpt)
            for key in loaded:
                want = group[key][...]
                assert loaded[key].dtype.newbyteorder("=") == want.dtype.newbyteorder("="), key
                np.testing.assert_array_equal(loaded[key], want, err_msg=f"{root}/{key}")
                np.testing.assert_array_equal(ckpt[key][2:11, 1:5], want[2:11, 1:5], err_msg=f"{root}/{key}")
            assert ckpt["big"].spec.zarr.byteorder == ">"
    with lw.open(tmp_path / "v3.zarr") as ckpt:
        # raw chunks in shards: read by lazyweights through the shard index
        assert ckpt["sharded"].spec.zarr == ZarrChunks("/", "c", "<", False, (2, 2))
        assert ckpt["sharded-crc"].spec.zarr == ZarrChunks("/", "c", "<", True, (2, 2))
        assert ckpt["dotted"].spec.zarr == ZarrChunks(".", "", "<")
        assert ckpt["transposed"].spec.zarr.byteorder is None
    with lw.open(tmp_path / "v2.zarr") as ckpt:
        assert ckpt["fortran"].spec.zarr is None
        assert ckpt["slash"].spec.zarr == ZarrChunks("/", "", "<")
        assert ckpt["slash"].spec.fill == np.int32(5).tobytes()


def test_manifest_of_a_mirror_round_trips_json(varied_h5: Path, tmp_path: Path) -> None:
    lw.mirror(varied_h5, tmp_path / "m.zarr", chunk_bytes="4KiB", zarr_format=2)
    with lw.open(tmp_path / "m.zarr") as mir:
        manifest = mir.manifest
    again = lw.Manifest.from_json(manifest.to_json())
    assert again == manifest
    assert again["dense/kernel:0"].zarr == ZarrChunks(".", "", "<")


def _replace_chunks_same_size(root: Path) -> list[Path]:
    """Rewrite every chunk object of the mirror at ``root``: same size, other bytes, a later mtime."""
    import os

    chunks = [p for p in root.rglob("*") if p.is_file() and "/c/" in p.as_posix()[len(root.as_posix()) :]]
    for path in chunks:
        st = path.stat()
        data = path.read_bytes()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(bytes(255 - b for b in data))
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        os.replace(tmp, path)
    return chunks


def _on_first_progress(action):
    done: list[bool] = []

    def callback(nbytes: int) -> None:
        if not done:
            done.append(True)
            action()

    return callback


@pytest.mark.parametrize("where", ["local", "http"])
@pytest.mark.parametrize("compressor", [None, "zstd"])
def test_chunk_replaced_mid_load_is_refused(
    varied_h5: Path, where: str, compressor, http_server, http_root: Path, tmp_path: Path
) -> None:
    root = (tmp_path if where == "local" else http_root) / f"swap-{compressor}.zarr"
    lw.mirror(varied_h5, root, chunk_bytes="1KiB", compressor=compressor, overwrite=True)
    url = root if where == "local" else f"{http_server.url}/{root.name}"
    try:
        with lw.open(url) as mir:
            np.testing.assert_array_equal(mir["dense/kernel:0"].read(), _h5_values(varied_h5)["dense/kernel:0"])
            # chunks already read are pinned: replacing them (same size) mid-load is seen, not mixed in
            swap = _on_first_progress(lambda: _replace_chunks_same_size(root))
            with pytest.raises(lw.LazyWeightsError) as excinfo:
                mir.load(concurrency=1, progress=swap)
        exc = excinfo.value
        cause = exc if isinstance(exc, lw.ObjectChangedError) else exc.__cause__
        assert isinstance(cause, lw.ObjectChangedError), repr(exc)
        assert re.search(rf"{root.name}/.+/c/[0-9/]+: the object changed", str(cause)), str(cause)
    finally:
        if where == "http":
            shutil.rmtree(root)


def test_reopening_a_rewritten_mirror_reads_the_new_one(varied_h5: Path, keras3_files: dict) -> None:
    """A store's cached Source (pinned members, parsed group) is replaced when its root metadata changed."""
    import uuid

    import fsspec

    mem, name = fsspec.filesystem("memory"), f"lw-again-{uuid.uuid4().hex[:8]}"
    root, other = f"memory://{name}.zarr", f"memory://{name}-other.zarr"
    try:
        lw.mirror(varied_h5, root, chunk_bytes="1KiB")
        lw.mirror(keras3_files["h5"], other, chunk_bytes="1KiB")
        with lw.open(root) as old:  # still open (its Source cached) while the store is rewritten
            assert sorted(lw.load(old)) == sorted(_h5_values(varied_h5))
            mem.rm(f"/{name}.zarr", recursive=True)
            time.sleep(0.01)  # memory:// stamps objects with their creation time
            mem.copy(f"/{name}-other.zarr", f"/{name}.zarr", recursive=True)  # another mirror, same name
            with lw.open(root) as mir, lw.open(keras3_files["h5"]) as src:
                assert mir._source is not old._source
                _values_equal(src, mir)
    finally:
        for path in (f"/{name}.zarr", f"/{name}-other.zarr"):
            if mem.exists(path):
                mem.rm(path, recursive=True)


# -- checksummed and sharded mirrors -----------------------------------------------------


def _chunk_bytes_at(root: Path, spec, index: tuple[int, ...]) -> tuple[Path, int, int]:
    """``(object, offset, nbytes)`` of the stored chunk at grid ``index``, found as zarr's format documents it."""
    fmt = spec.zarr
    if fmt.shard is None:
        path = root / spec.path / fmt.key(index)
        return path, 0, path.stat().st_size
    shard = tuple(i // n for i, n in zip(index, fmt.shard, strict=True))
    path = root / spec.path / fmt.key(shard)
    data = path.read_bytes()
    n = int(np.prod(fmt.shard))
    table = np.frombuffer(data[-(16 * n + 4) : -4], "<u8").reshape(*fmt.shard, 2)
    offset, nbytes = table[tuple(i % k for i, k in zip(index, fmt.shard, strict=True))]
    return path, int(offset), int(nbytes)


@pytest.mark.parametrize("where", ["local", "http"])
@pytest.mark.parametrize("compressor", [None, "zstd"])
@pytest.mark.parametrize("sharded", [True, False])
def test_corrupt_chunk_of_a_checksummed_mirror_is_refused(
    varied_h5: Path, where: str, compressor, sharded: bool, http_server, http_root: Path, tmp_path: Path
) -> None:
    """One flipped byte in one chunk: every read of that chunk raises, naming the weight and the chunk."""
    name = f"crc-{compressor}-{sharded}.zarr"
    root = (tmp_path if where == "local" else http_root) / name
    lw.mirror(varied_h5, root, chunk_bytes="1KiB", compressor=compressor, shard_bytes="64MiB" if sharded else None,
              overwrite=True)  # fmt: skip
    url = root if where == "local" else f"{http_server.url}/{name}"
    try:
        with lw.open(url) as mir:
            spec = mir["dense/kernel:0"].spec
            assert mir.attrs["lazyweights"]["checksums"] == "crc32c"
            assert mir.attrs["lazyweights"]["sharded"] is sharded
            assert (spec.zarr.shard is not None) is sharded and spec.zarr.checksum
        path, offset, nbytes = _chunk_bytes_at(root, spec, (1, 0))
        data = bytearray(path.read_bytes())
        data[offset + nbytes // 2] ^= 0x10
        path.write_bytes(bytes(data))
        chunk = r"chunk \(1, 0\) in shard 'c/0/0'" if sharded else r"chunk 'c/1/0'"
        pattern = rf"weight 'dense/kernel:0', {chunk}"
        with pytest.raises(lw.LazyWeightsError, match=pattern):
            lw.load(url)
        rows = spec.chunk_shape[0]
        with lw.open(url) as mir:
            with pytest.raises(lw.LazyWeightsError, match=pattern):
                mir["dense/kernel:0"][rows + 2 : rows + 4, 3:9]  # a region of the chunk: read whole and checked
            np.testing.assert_array_equal(mir["dense/kernel:0"][:rows], _h5_values(varied_h5)["dense/kernel:0"][:rows])
            np.testing.assert_array_equal(mir["emb/table"].read(), _h5_values(varied_h5)["emb/table"])
    finally:
        if where == "http":
            shutil.rmtree(root)


def test_unverified_mirrors_are_reported_and_still_read(varied_h5: Path, tmp_path: Path) -> None:
    """Mirrors without chunk checksums (older ones, checksum=False, zarr v2) read as before and say so."""
    from click.testing import CliRunner

    from lazyweights.cli import cli

    expected = _h5_values(varied_h5)
    for name, kwargs in {"v3": {"checksum": False, "shard_bytes": None}, "v2": {"zarr_format": 2},
                         "crc": {}}.items():  # fmt: skip
        lw.mirror(varied_h5, tmp_path / name, chunk_bytes="1KiB", **kwargs)
        with lw.open(tmp_path / name) as mir:
            status = "crc32c" if name == "crc" else "unverified"
            assert mir.attrs["lazyweights"]["checksums"] == status
            assert not mir["dense/kernel:0"].spec.zarr.checksum or name == "crc"
            got = lw.load(mir)
            for key, want in expected.items():
                np.testing.assert_array_equal(got[key], want, err_msg=key)
        result = CliRunner().invoke(cli, ["inspect", "--json", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["checksums"] == status
        text = CliRunner().invoke(cli, ["inspect", str(tmp_path / name)]).output
        assert ("unverified (no chunk checksums)" in text) == (status == "unverified")
    assert lw.verify(tmp_path / "crc", tmp_path / "v3").ok  # the mirror's own facts are no model attribute


def test_sharded_mirror_over_http_reads_each_shard_index_once_and_no_chunk_heads(
    varied_h5: Path, http_server, http_root: Path
) -> None:
    lw.mirror(varied_h5, http_root / "sh.zarr", chunk_bytes="1KiB", overwrite=True)
    unsharded = lw.mirror(varied_h5, http_root / "unsh.zarr", chunk_bytes="1KiB", shard_bytes=None, overwrite=True)
    assert unsharded.weights == 5
    counts = {}
    for name in ("sh.zarr", "unsh.zarr"):
        with lw.open(f"{http_server.url}/{name}") as mir:
            spec = mir["dense/kernel:0"].spec
            chunks = -(-spec.shape[0] // spec.chunk_shape[0])
            http_server.reset()
            got = lw.load(mir, concurrency=2)
            np.testing.assert_array_equal(got[spec.key], _h5_values(varied_h5)[spec.key])
            mine = [r for r in http_server.requests if f"/{spec.path}/" in r[1]]
            counts[name] = (sum(r[0] == "HEAD" for r in mine), sum(r[0] == "GET" for r in mine))
    assert chunks > 10
    assert counts["unsh.zarr"] == (chunks, chunks)  # one HEAD and one GET per chunk object
    heads, gets = counts["sh.zarr"]
    # one shard object: pinned once, its index read once, its chunks (end to end in it) read by one ranged GET
    assert (heads, gets) == (1, 2)


def test_compressed_chunks_decoded_here_equal_zarrs_own_reads(tmp_path: Path) -> None:
    """zstd/blosc/gzip chunks (sharded or not, CRC32C or not, big-endian, v2) decoded with numcodecs = zarr's values."""
    import numcodecs
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ZstdCodec

    from lazyweights.formats.zarr_store import array, decoder

    rng = np.random.default_rng(5)
    data = rng.standard_normal((13, 6)).astype("<f4")
    v3 = zarr.open_group(tmp_path / "v3.zarr", mode="w")
    v3.create_array("zstd", data=data, chunks=(4, 6), compressors=(ZstdCodec(level=3), Crc32cCodec()), fill_value=-1)
    v3.create_array("blosc", data=data, chunks=(2, 3), shards=(4, 6), compressors=(BloscCodec(), Crc32cCodec()))
    v3.create_array("gzip", data=data.astype(">f8"), chunks=(5, 6), serializer=BytesCodec(endian="big"),
                    compressors=GzipCodec())  # fmt: skip
    v2 = zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    v2.create_array("blosc", data=data, chunks=(4, 4), compressors=numcodecs.Blosc())
    v2.create_array("zlib", data=data.astype(">i8"), chunks=(5, 6), compressors=numcodecs.Zlib())
    (tmp_path / "v3.zarr" / "zstd" / "c" / "1" / "0").unlink()  # never written: the fill value
    for root in ("v3.zarr", "v2.zarr"):
        group = zarr.open_group(tmp_path / root, mode="r")
        with lw.open(tmp_path / root) as ckpt:
            loaded = lw.load(ckpt)
            for key in loaded:
                assert decoder(array(ckpt.source, ckpt[key].spec.path)) is not None, key  # not zarr's read path
                want = group[key][...]
                np.testing.assert_array_equal(loaded[key], want, err_msg=f"{root}/{key}")
                np.testing.assert_array_equal(ckpt[key][3:11, 1:5], want[3:11, 1:5], err_msg=f"{root}/{key}")
    assert (zarr.open_group(tmp_path / "v3.zarr", mode="r")["zstd"][4:8] == -1).all()


def test_compressed_chunk_decoding_short_is_refused(tmp_path: Path) -> None:
    """A zstd chunk replaced by a valid frame of fewer bytes: an error naming the chunk, never stale values."""
    import numcodecs
    from zarr.codecs import ZstdCodec

    group = zarr.open_group(tmp_path / "z.zarr", mode="w")
    group.create_array("w", data=np.arange(40, dtype="<f4").reshape(10, 4), chunks=(5, 4), compressors=ZstdCodec())
    (tmp_path / "z.zarr" / "w" / "c" / "1" / "0").write_bytes(numcodecs.Zstd().encode(np.ones(12, "<f4")))
    with lw.open(tmp_path / "z.zarr") as ckpt:
        with pytest.raises(lw.FormatError, match=r"weight 'w', chunk 'c/1/0'.*decodes to 48 bytes, not 80"):
            ckpt["w"].read()
        np.testing.assert_array_equal(ckpt["w"][:5], np.arange(20, dtype="<f4").reshape(5, 4))
