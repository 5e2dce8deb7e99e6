"""Packed zarr mirrors (version 2): small weights concatenated per dtype, few objects, few requests.

h5py on the source is the oracle for values; request counts are the servers'
own logs (moto's request log, the Range HTTP server's), not client mocks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

import lazyweights as lw

from .conftest import KERAS2
from .stores import s3_server

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def many_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Keras-2-like file: 120 small weights of several dtypes (one big-endian), a scalar, an empty one, two big."""
    path = tmp_path_factory.mktemp("many") / "many.h5"
    rng = np.random.default_rng(11)
    with h5py.File(path, "w") as f:
        for i in range(40):
            f[f"layer_{i}/kernel:0"] = rng.standard_normal((16, 3 + i % 5)).astype("f4")
            f[f"layer_{i}/bias:0"] = rng.standard_normal(3 + i % 5).astype("f2")
            f[f"layer_{i}/steps:0"] = rng.integers(-(2**40), 2**40, 2 + i % 3, dtype="i8")
        f["odd/big_endian"] = rng.standard_normal(7).astype(">f4")
        f["odd/scalar"] = np.float32(4.25)
        f["odd/empty"] = np.zeros((0, 3), "f4")
        f["big/table"] = rng.standard_normal((600, 100)).astype("f4")  # 240 KB: an array of its own
        f["big/bytes"] = rng.integers(0, 255, 50_000, dtype="u1")
    return path


def _h5_values(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}

    def take(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[()]

    with h5py.File(path, "r") as f:
        f.visititems(take)
    return out


def _assert_equal_to_h5py(values: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(values) == sorted(expected)
    for key, want in expected.items():
        assert values[key].dtype == want.dtype.newbyteorder("="), key
        np.testing.assert_array_equal(values[key], want, err_msg=key)


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("shard_bytes", ["64MiB", None])
def test_mirror_values_equal_h5py_packed_or_per_weight(many_h5: Path, tmp_path: Path, packed: bool, shard_bytes):
    dst = tmp_path / "m.zarr"
    lw.mirror(many_h5, dst, chunk_bytes="8KiB", packed=packed, shard_bytes=shard_bytes)
    expected = _h5_values(many_h5)
    with lw.open(dst) as mir:
        kinds = {w.key: w.spec.layout for w in mir.weights}
        if packed:  # weights of at most 1 KiB packed (little-endian, not empty); the rest an array each
            assert kinds["layer_3/kernel:0"] == kinds["layer_3/bias:0"] == kinds["odd/scalar"] == "contiguous"
            assert kinds["odd/big_endian"] == kinds["odd/empty"] == kinds["big/table"] == "zarr"
            assert mir.attrs["lazyweights"]["checksums"] == "crc32c"
        else:
            assert set(kinds.values()) == {"zarr"}
        _assert_equal_to_h5py(lw.load(mir), expected)
        _assert_equal_to_h5py(lw.load(mir, max_memory="32KiB", concurrency=3), expected)
        for key in ("layer_7/kernel:0", "layer_8/steps:0", "big/table"):  # region reads
            np.testing.assert_array_equal(mir[key][1:3, 1:] if mir[key].ndim == 2 else mir[key][1:], (
                expected[key][1:3, 1:] if expected[key].ndim == 2 else expected[key][1:]), err_msg=key)  # fmt: skip
    group = zarr.open_group(dst, mode="r")
    doc = group.attrs["lazyweights"]
    assert doc["version"] == (2 if packed else 1)
    # plain zarr reads packed weights by the catalog, as the README says
    for key, entry in (doc.get("packed") or {}).items():
        flat = group[entry["array"]][entry["offset"] : entry["offset"] + math.prod(entry["shape"])]
        np.testing.assert_array_equal(flat.reshape(entry["shape"]), expected[key], err_msg=key)
    assert bool(doc.get("packed")) is packed
    assert lw.verify(many_h5, dst).ok


def test_mirror_written_by_version_1_still_opens(tmp_path: Path) -> None:
    """A mirror written by the last release writing version 1 (scripts/make_v1_mirror_fixture.py)."""
    src = KERAS2 / "cnn_weights.h5"
    old = tmp_path / "v1.zarr"
    shutil.copytree(FIXTURES / "mirrors" / "cnn_weights_v1.zarr", old)
    with lw.open(old) as mir:
        assert zarr.open_group(old, mode="r").attrs["lazyweights"]["version"] == 1
        assert {w.spec.layout for w in mir.weights} == {"zarr"}
        assert any(w.spec.zarr.shard for w in mir.weights) and any(not w.spec.zarr.shard for w in mir.weights)
        _assert_equal_to_h5py(lw.load(mir), _h5_values(src))
    assert lw.verify(src, old).ok


def test_corrupt_packed_weight_is_refused_naming_it(many_h5: Path, tmp_path: Path) -> None:
    dst = tmp_path / "m.zarr"
    lw.mirror(many_h5, dst, chunk_bytes="8KiB")
    key = "layer_5/kernel:0"
    with lw.open(dst) as mir:
        spec = mir[key].spec
    assert spec.path == "layer_5/kernel_0-" + spec.path.rsplit("-", 1)[1]  # the path an array of its own would have
    shard = dst / spec.member
    data = bytearray(shard.read_bytes())
    data[spec.extent.offset + 5] ^= 0x04
    shard.write_bytes(bytes(data))
    with pytest.raises(lw.LazyWeightsError, match=rf"'{key}'.*CRC32C"):
        lw.load(dst)
    with lw.open(dst) as mir:
        with pytest.raises(lw.LazyWeightsError, match=rf"'{key}'.*CRC32C"):
            mir[key].read()
        np.testing.assert_array_equal(mir["layer_6/kernel:0"].read(), _h5_values(many_h5)["layer_6/kernel:0"])
    report = lw.verify(many_h5, dst)
    assert [(d.key, d.what) for d in report.differences] == [(key, "unreadable")]
    with pytest.raises(Exception, match=r"(?i)checksum|crc"):  # plain zarr checks the chunk's CRC32C too
        zarr.open_group(dst, mode="r")[spec.member.split("/")[0]][:]


def test_packed_mirror_stays_within_max_memory(many_h5: Path, tmp_path: Path) -> None:
    report = lw.mirror(many_h5, tmp_path / "m.zarr", chunk_bytes="8KiB", shard_bytes="64KiB", max_memory="2MiB")
    assert 0 < report.peak_in_flight <= 2 * (1 << 20)
    loaded = lw.load(tmp_path / "m.zarr", max_memory="64KiB")
    assert 0 < loaded.report.peak_in_flight <= 64 * 1024
    _assert_equal_to_h5py(dict(loaded), _h5_values(many_h5))


# -- requests, counted by the servers --------------------------------------------------------


class _Log(logging.Handler):
    """Collects the request lines moto's server (werkzeug) logs: one per request it served."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if '"' in message:
            self.lines.append(message.split('"')[1])  # "PUT /bucket/key HTTP/1.1"


@contextlib.contextmanager
def _served() -> Iterator[_Log]:
    log, logger = _Log(), logging.getLogger("werkzeug")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(log)
    try:
        yield log
    finally:
        logger.removeHandler(log)
        logger.setLevel(level)


def test_mirror_to_s3_and_load_back_in_few_requests(many_h5: Path) -> None:
    """127 weights: version 1 wrote an array (metadata, groups, checks) per weight, ~1,800 requests; now a few."""
    expected = _h5_values(many_h5)
    with s3_server() as s3:
        s3.bucket("mirrors", versioned=False)
        url = "s3://mirrors/many.zarr"
        with _served() as log:
            lw.mirror(many_h5, url, chunk_bytes="8KiB", dst_storage_options=s3.options)
        wrote = list(log.lines)
        with _served() as log:
            loaded = lw.load(url, storage_options=s3.options)
        read = list(log.lines)
        # every object of the store pinned from one listing: no HEAD of any (version 1: one per object)
        inside = [line for line in read if line.startswith("HEAD /mirrors/many.zarr/")]
        assert [line for line in inside if "/checkpoint " not in line] == []  # (a TensorFlow prefix is probed)
        _assert_equal_to_h5py(loaded, expected)
        # a root written twice, 5 array documents (3 packed, 2 big) and their parent groups, a few data
        # objects, the existence check and a checksum record per array: no request per weight
        puts = [line for line in wrote if line.startswith("PUT")]
        assert 10 <= len(wrote) <= 40, wrote
        assert len([p for p in puts if p.split()[1].endswith("/zarr.json")]) <= 20, puts
        # the root, a listing, a shard index per packed shard, then GETs batched per object as the
        # executor batches an .h5 file's small weights (version 1: a HEAD and a GET per weight, 250+)
        assert len(read) <= 70, read
