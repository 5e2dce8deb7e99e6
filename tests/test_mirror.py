"""Zarr mirrors: written by lw.mirror, read back as the source's manifest, checked by lw.verify."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

import lazyweights as lw
from lazyweights.formats.zarr import encode_name
from lazyweights.mirror import chunk_shape

from .conftest import KERAS2

MiB = 1 << 20


def _same_manifest(a: lw.Checkpoint, b: lw.Checkpoint) -> None:
    ma, mb = a.manifest, b.manifest
    assert mb.format == ma.format
    assert mb.keys == ma.keys
    assert mb.layers == ma.layers
    assert [w.key for w in mb.optimizer] == [w.key for w in ma.optimizer]
    assert dict(mb.attrs) == dict(ma.attrs)
    for wa, wb in zip((*ma.weights, *ma.optimizer), (*mb.weights, *mb.optimizer), strict=True):
        assert (wb.layer, wb.name, wb.shape, wb.dtype) == (wa.layer, wa.name, wa.shape, wa.dtype)
        assert wb.layout == "zarr"


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
    assert any(n.metadata.to_dict()["codecs"][-1]["name"] == "zstd" for _, n in stored)


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
        assert metadata_requests == [("GET", "/served.zarr/zarr.json", metadata_requests[0][2])]  # consolidated
        with lw.open(keras3_files["h5"]) as src:
            _same_manifest(src, remote)
            loaded = lw.load(remote, max_memory="64KiB")
            for key, value in lw.load(src).items():
                np.testing.assert_array_equal(value, loaded[key])


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
    lw.mirror(src, dst, chunk_bytes=256)
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
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
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
