"""Any HDF5 file: values read from raw bytes equal what h5py (through libhdf5) returns."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazyweights as lw

DTYPES = ["<f4", ">f4", "<f8", "<f2", "<i1", "<i2", ">i4", "<u8", "|b1", "<c8"]


@st.composite
def datasets(draw):
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(DTYPES))
    kwargs: dict = {}
    if ndim and draw(st.booleans()):
        kwargs["chunks"] = tuple(draw(st.integers(1, n + 2)) for n in shape)
        kwargs["chunks"] = tuple(min(c, n) if c > n else c for c, n in zip(kwargs["chunks"], shape, strict=True))
        codec = draw(st.sampled_from([None, "gzip", "lzf"]))
        if codec:
            kwargs["compression"] = codec
        kwargs["shuffle"] = draw(st.booleans())
        kwargs["fletcher32"] = draw(st.booleans())
        if np.dtype(dtype).kind in "iuf" and draw(st.booleans()):
            kwargs["fillvalue"] = 7
    seed = draw(st.integers(0, 2**16))
    return shape, dtype, kwargs, seed


def _values(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(dt)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(max(info.min, -1000), min(info.max, 1000), shape).astype(dt)
    if dt.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
    return rng.standard_normal(shape).astype(dt)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(datasets(), min_size=1, max_size=4), st.booleans())
def test_values_equal_h5py(specs, write_partially) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.h5"
        with h5py.File(path, "w") as f:
            for i, (shape, dtype, kwargs, seed) in enumerate(specs):
                ds = f.create_dataset(f"g{i % 2}/d{i}", shape=shape, dtype=dtype, **kwargs)
                values = _values(shape, dtype, seed)
                if write_partially and shape and "chunks" in kwargs:
                    ds[: max(1, shape[0] // 2)] = values[: max(1, shape[0] // 2)]  # leave chunks unwritten
                else:
                    ds[()] = values
        with lw.open(path) as ckpt, h5py.File(path) as f:
            assert ckpt.format == "hdf5"
            assert ckpt.keys() == sorted(ckpt.keys(), key=lambda k: (k.split("/")[0], k))
            loaded = ckpt.load(max_memory="64KiB")
            for key, got in loaded.items():
                expected = f[key][()]
                assert got.shape == expected.shape and got.dtype == expected.dtype.newbyteorder("=")
                np.testing.assert_array_equal(got, expected, err_msg=key)
                np.testing.assert_array_equal(ckpt[key].read(), expected, err_msg=key)
                if expected.ndim:
                    sl = (slice(expected.shape[0] // 2, None), ...)
                    np.testing.assert_array_equal(ckpt[key].to_dask()[sl].compute(), expected[sl], err_msg=key)


def test_compact_scalar_empty_and_unallocated(tmp_path) -> None:
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        space = h5py.h5s.create_simple((3,))
        h5py.h5d.create(f.id, b"compact", h5py.h5t.NATIVE_INT16, space, dcpl).write(
            h5py.h5s.ALL, h5py.h5s.ALL, np.array([1, 2, 3], "i2")
        )
        f["scalar"] = np.float64(2.5)
        f.create_dataset("zero_size", shape=(0, 4), dtype="f4")
        f.create_dataset("never_written", shape=(5,), dtype="f4", fillvalue=3.0)
        f["text"] = "not a weight"
    with lw.open(path) as ckpt:
        assert ckpt["compact"].spec.layout == "compact"
        np.testing.assert_array_equal(ckpt["compact"].read(), [1, 2, 3])
        assert ckpt["scalar"].read() == 2.5 and ckpt["scalar"].shape == ()
        assert ckpt["zero_size"].read().shape == (0, 4)
        np.testing.assert_array_equal(ckpt["never_written"].read(), np.full(5, 3.0, "f4"))
        assert ("text", "dtype object is not numeric") in ckpt.manifest.skipped
        loaded = ckpt.load()
        assert set(loaded) == {"compact", "scalar", "zero_size", "never_written"}


def test_unknown_filter_falls_back_to_h5py(tmp_path) -> None:
    """scale-offset has no numcodecs codec: values still come out right (decoded by h5py)."""
    path = tmp_path / "f.h5"
    values = np.arange(200, dtype="i4").reshape(20, 10)
    with h5py.File(path, "w") as f:
        f.create_dataset("so", data=values, chunks=(5, 10), scaleoffset=0)
    with lw.open(path) as ckpt:
        assert ckpt["so"].spec.layout == "h5py"
        np.testing.assert_array_equal(ckpt.load()["so"], values)
        np.testing.assert_array_equal(ckpt["so"].read((slice(3, 7), 2)), values[3:7, 2])


def test_userblock(tmp_path) -> None:
    path = tmp_path / "ub.h5"
    with h5py.File(path, "w", userblock_size=1024) as f:
        f["w"] = np.arange(10.0)
    with lw.open(path) as ckpt:
        np.testing.assert_array_equal(ckpt["w"].read(), np.arange(10.0))


@pytest.mark.parametrize(
    "index", [(slice(2, 5),), (3,), (slice(None), 1), (slice(1, 9, 3), slice(0, 2)), (-1, Ellipsis), ([1, 4],)]
)
def test_partial_reads(tmp_path, index) -> None:
    path = tmp_path / "f.h5"
    values = np.arange(10 * 6 * 2, dtype="f4").reshape(10, 6, 2)
    with h5py.File(path, "w") as f:
        f["a"] = values
    with lw.open(path) as ckpt:
        np.testing.assert_array_equal(ckpt["a"].read(index), values[index])
        np.testing.assert_array_equal(ckpt["a"].to_dask(chunks=(3, 6, 2))[index].compute(), values[index])


def _write_fallback(path, value: int) -> None:
    """A file whose one dataset needs the h5py fallback (scale-offset), written beside ``path`` and moved over it."""
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("so", data=np.full((20, 10), value, dtype="i4"), chunks=(5, 10), scaleoffset=0)
    os.replace(tmp, path)


def test_h5py_fallback_handle_is_the_checkpoints_own(tmp_path) -> None:
    """A replaced file reads its new values through the fallback, and closing releases libhdf5's handle."""
    path = tmp_path / "so.h5"
    _write_fallback(path, 1)
    with lw.open(path) as ckpt:
        assert ckpt["so"].spec.layout == "h5py"
        np.testing.assert_array_equal(ckpt["so"].read(), np.full((20, 10), 1, "i4"))
    _write_fallback(path, 2)  # same path, new object
    with lw.open(path) as ckpt:
        np.testing.assert_array_equal(ckpt["so"].read(), np.full((20, 10), 2, "i4"))
        np.testing.assert_array_equal(lw.load(ckpt)["so"], np.full((20, 10), 2, "i4"))
    with h5py.File(path, "r") as f:  # default locking: no handle of ours is left open on the file
        np.testing.assert_array_equal(f["so"][()], np.full((20, 10), 2, "i4"))
    with h5py.File(path, "a") as f:  # a writer needs the file unlocked too
        f["so"][0, 0] = 3
