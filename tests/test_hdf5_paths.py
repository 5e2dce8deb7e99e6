"""The two ways HDF5 metadata is walked give the same manifest; strange datasets fail alone.

``LAZYWEIGHTS_HDF5_METADATA`` picks the walk: ``h5py`` (libhdf5, what local
files use) or ``walk`` (the pure-Python level-by-level walk of
``formats.h5meta``, what remote files use).  h5py is the oracle: real Keras
2/tf-keras fixtures, Keras 3 files written here and random generic files must
give equal manifests both ways.  Remote opens over the Range HTTP server use
the walk, and its cost in sequential round trips is counted.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import lazyweights as lw
from lazyweights.errors import FormatError, UnsupportedError
from lazyweights.formats import detect, h5meta
from lazyweights.manifest import Manifest
from lazyweights.storage import get_source, release_source

from .conftest import KERAS2
from .test_h5meta import EXAMPLES, _maxshape, build, file_specs

ENV = detect.METADATA_ENV


def manifest(path: Path | str, mode: str, monkeypatch: pytest.MonkeyPatch) -> Manifest:
    monkeypatch.setenv(ENV, mode)
    source = get_source(str(path))
    try:
        return detect.parse(source)
    finally:
        release_source(source)


def assert_same(path: Path | str, monkeypatch: pytest.MonkeyPatch, strip=frozenset()) -> Manifest:
    a, b = manifest(path, "h5py", monkeypatch), manifest(path, "walk", monkeypatch)
    if strip:  # datasets whose chunk origins h5py's chunk_iter reports swizzled: compare extents only
        off = {s.key for s in a.weights if s.key in strip and s.layout == "unsupported" and "off the" in s.reason}
        walked = {s.key: s for s in b.weights if s.key in off}
        assert all(s.layout == "chunked" for s in walked.values()), walked  # the walk reads them right; h5py's
        a = _replacing(a, walked)  # swizzled origins fall off the grid there and the dataset is refused
        a, b = (_strip_origins(m, strip) for m in (a, b))
    for x, y in zip(a.weights + a.optimizer, b.weights + b.optimizer, strict=True):
        assert x == y, (x, y)
    assert a == b
    return a


def _replacing(m: Manifest, specs: dict) -> Manifest:
    import dataclasses

    return dataclasses.replace(m, weights=tuple(specs.get(s.key, s) for s in m.weights))


def _strip_origins(m: Manifest, keys: frozenset) -> Manifest:
    import dataclasses

    def fix(s):
        if s.key not in keys:
            return s
        stripped = (dataclasses.replace(c, origin=(0,) * len(c.origin)) for c in s.chunks)
        chunks = tuple(sorted(stripped, key=lambda c: (c.extent.offset, c.extent.length, c.filter_mask)))
        return dataclasses.replace(s, chunks=chunks)

    return dataclasses.replace(m, weights=tuple(fix(s) for s in m.weights))


# -- equal manifests ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in KERAS2.glob("*.h5")))
def test_keras2_fixtures_same_both_ways(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    m = assert_same(KERAS2 / name, monkeypatch)
    assert m.format == "keras-h5" and m.weights


@pytest.mark.parametrize("kind", ["h5", "weights", "keras"])
def test_keras3_files_same_both_ways(kind: str, keras3_files: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    m = assert_same(keras3_files[kind], monkeypatch)
    assert len(m.weights) == len(keras3_files["values"])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=file_specs())
def test_random_files_same_both_ways(spec: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        p = Path(tmp) / "r.h5"
        build(p, spec)
        swizzled = frozenset(  # the nested datasets too: build() writes them alike, in grp/sub
            f"{where}/d{i}"
            for where, specs in (("grp", spec["datasets"]), ("grp/sub", spec["nested"]))
            for i, d in enumerate(specs)
            if "chunks" in d and [j for j, n in enumerate(_maxshape(d)) if n is None] not in ([], [0])
        )
        assert_same(p, mp, swizzled)


# -- one strange dataset fails alone --------------------------------------------------------


def _odd_file(path: Path) -> dict[str, np.ndarray]:
    """A file with one plain dataset and one of each kind lazyweights cannot map to raw numpy bytes."""
    t, s, d = h5py.h5t, h5py.h5s, h5py.h5d
    values = {"ok": np.arange(12, dtype="f4").reshape(3, 4), "nofill": np.ones(5, "f4")}
    with h5py.File(path, "w") as f:
        f["ok"] = values["ok"]
        space = s.create_simple((5,))
        p12 = t.STD_I16LE.copy()  # a 12-bit integer at bit offset 2 of an int16
        p12.set_precision(12)
        p12.set_offset(2)
        d.create(f.id, b"p12", p12, space).write(s.ALL, s.ALL, np.arange(-2, 3, dtype="i2"))
        chunked = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        chunked.set_chunk((2,))
        d.create(f.id, b"p12c", p12, space, dcpl=chunked).write(s.ALL, s.ALL, np.arange(5, dtype="i2"))
        d.create(f.id, b"quad", t.NATIVE_LDOUBLE, space).write(s.ALL, s.ALL, np.arange(5, dtype=np.longdouble))
        d.create(f.id, b"time", t.UNIX_D32LE, space)
        never = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        never.set_fill_time(d.FILL_TIME_NEVER)
        d.create(f.id, b"nofill", t.IEEE_F32LE, space, dcpl=never).write(s.ALL, s.ALL, values["nofill"])
        f.create_dataset("unwritten", (4,), dtype="f4")
    _undefine_fill(path, 2)  # "nofill" and "unwritten" declare no fill value at all
    return values


def _undefine_fill(path: Path, count: int) -> None:
    """Mark the last ``count`` fill value messages "undefined", as a writer that sets none does."""
    data = bytearray(path.read_bytes())
    found, pos = [], data.find(b"\x05\x00\x08\x00\x01\x00\x00\x00\x02")
    while pos >= 0:
        found.append(pos)
        pos = data.find(b"\x05\x00\x08\x00\x01\x00\x00\x00\x02", pos + 1)
    for pos in found[-count:]:
        data[pos + 11] = 0  # fill value message v2: "defined" flag → H5D_FILL_VALUE_UNDEFINED
    path.write_bytes(bytes(data))


def _check_odd(url: str, path: Path, values: dict) -> None:
    with lw.open(url, index=False) as ckpt:
        assert np.array_equal(ckpt["ok"].read(), values["ok"])
        assert np.array_equal(ckpt["nofill"].read(), values["nofill"])
        with h5py.File(path, "r", locking=False) as f:  # converted as h5py converts, not the raw stored bits
            for key in ("p12", "p12c"):
                want = f[key][()]
                got = ckpt[key].read()
                assert got.dtype == want.dtype and np.array_equal(got, want), key
        for key, what in (("quad", "extended-precision"), ("time", "time datatype"), ("unwritten", "fill value")):
            assert ckpt.manifest[key].layout == "unsupported"
            with pytest.raises(UnsupportedError, match=f"{key}.*{what}"):
                ckpt[key].read()


def test_strange_datasets_fail_alone_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "odd.h5"
    values = _odd_file(path)
    assert_same(path, monkeypatch)
    for mode in ("h5py", "walk"):
        monkeypatch.setenv(ENV, mode)
        _check_odd(str(path), path, values)


def test_strange_datasets_fail_alone_remote(http_server, http_root: Path) -> None:
    path = http_root / "odd_remote.h5"
    values = _odd_file(path)
    _check_odd(f"{http_server.url}/odd_remote.h5", path, values)


def test_filter_without_codec_fails_alone_when_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunked weight under a filter no library here decodes: UnsupportedError naming filter and weight."""
    path = tmp_path / "filtered.h5"
    with h5py.File(path, "w") as f:
        f["ok"] = np.arange(6.0)
        ds = f.create_dataset("odd", (4,), dtype="f4", chunks=(4,), compression=32999, allow_unknown_filter=True)
        ds.id.write_direct_chunk((0,), np.arange(4, dtype="f4").tobytes())
    assert_same(path, monkeypatch)
    for mode in ("h5py", "walk"):
        monkeypatch.setenv(ENV, mode)
        with lw.open(path, index=False) as ckpt:
            assert np.array_equal(ckpt["ok"].read(), np.arange(6.0))
            with pytest.raises(UnsupportedError, match=r"'odd'.*32999"):
                ckpt["odd"].read()


def test_h5py_only_weight_in_keras_archive_is_unsupported_alone(tmp_path: Path, keras3_files: dict) -> None:
    """A .keras member cannot go through the h5py fallback: that weight alone is refused, with the reason."""
    import zipfile

    src = keras3_files["keras"]
    dst = tmp_path / "odd.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "model.weights.h5":
                inner = tmp_path / "inner.h5"
                inner.write_bytes(data)
                with h5py.File(inner, "a") as f:
                    p12 = h5py.h5t.STD_I16LE.copy()
                    p12.set_precision(12)
                    group = f.create_group("layers/odd_layer/vars")
                    h5py.h5d.create(group.id, b"0", p12, h5py.h5s.create_simple((3,)))
                data = inner.read_bytes()
            zout.writestr(info.filename, data)
    with lw.open(dst, index=False) as ckpt:
        odd = "layers/odd_layer/vars/0"
        assert ckpt.manifest.keys[-1] == odd
        with pytest.raises(UnsupportedError, match=r"odd_layer.*archive"):
            ckpt[odd].read()
        values = [ckpt[k].read() for k in ckpt.manifest.keys[:-1]]
    assert all(np.array_equal(a, b) for a, b in zip(values, keras3_files["values"], strict=True))


# -- remote cost ------------------------------------------------------------------------------


def _wide_keras_model(layers: int, units: int):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((units,))
    outs = [keras.layers.Dense(units, name=f"dense_{i}")(inp) for i in range(layers)]
    return keras.Model(inp, keras.layers.Add(name="sum")(outs), name="wide")


@pytest.fixture(scope="module")
def wide_files(http_root: Path) -> dict[str, Path]:
    """A 2,000-layer Keras 3 model saved three ways into the HTTP server's root."""
    model = _wide_keras_model(2000, 96)
    paths = {"weights": http_root / "wide.weights.h5", "keras": http_root / "wide.keras", "h5": http_root / "wide.h5"}
    model.save_weights(paths["weights"])
    model.save(paths["keras"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(paths["h5"])
    return paths


@pytest.mark.parametrize("kind", ["weights", "keras", "h5"])
def test_remote_open_round_trips_depend_on_depth(
    kind: str, wide_files: dict, http_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    walks: list[h5meta.FetchStats] = []
    real = h5meta.walk

    def counting(*args, **kwargs):
        f = real(*args, **kwargs)
        walks.append(f.stats)
        return f

    monkeypatch.setattr(detect.h5meta, "walk", counting)
    path = wide_files[kind]
    http_server.reset()
    with lw.open(f"{http_server.url}/{path.name}", index=False) as ckpt:
        keys = ckpt.manifest.keys
    assert len(keys) == 4000 and len(walks) == 1  # the walk, not h5py, served the remote open
    fetched = http_server.bytes_sent
    size = path.stat().st_size
    round_trips = 1 + walks[0].calls  # the head request, then one round per level of the walk
    print(f"{path.name}: {size} bytes, {round_trips} round trips, {fetched} bytes fetched ({fetched / size:.1%})")
    assert round_trips <= 12
    assert fetched <= max(1 << 20, 0.3 * size)


def test_walk_errors_name_the_url(http_server, http_root: Path) -> None:
    path = http_root / "broken.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(10)
    data = bytearray(path.read_bytes())
    data[64:72] = (len(data) + 4096).to_bytes(8, "little")  # superblock v0: root object header address, past the end
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"broken\.h5"):
        lw.open(f"{http_server.url}/broken.h5", index=False)
