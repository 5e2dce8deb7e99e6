"""lw.load: destinations, order, casts, parts, and the byte budget."""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest

import lazyweights as lw
from lazyweights.storage import HEAD_BYTES
from lazyweights.stream.budget import ByteBudget, parse_bytes

MiB = 1 << 20


@pytest.fixture(scope="module")
def layered_h5(tmp_path_factory):
    """A Keras-2-layout file with 6 layers of 4 MiB kernels, values derived from their position."""
    path = tmp_path_factory.mktemp("load") / "layered.h5"
    names = [f"dense_{i}" for i in range(6)]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"input"] + [n.encode() for n in names]
        f.create_group("input").attrs["weight_names"] = np.zeros((0,), "f8")
        for i, name in enumerate(names):
            g = f.create_group(name)
            g.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            g[f"{name}/kernel:0"] = np.arange(1024 * 1024, dtype="f4").reshape(1024, 1024) + i
            g[f"{name}/bias:0"] = np.full(1024, i, "f4")
    return path


def _expected(i: int):
    return np.arange(1024 * 1024, dtype="f4").reshape(1024, 1024) + i, np.full(1024, i, "f4")


def test_load_new_arrays_in_order(layered_h5) -> None:
    arrays = lw.load(layered_h5)
    assert list(arrays)[:2] == ["dense_0/dense_0/kernel:0", "dense_0/dense_0/bias:0"]
    for i in range(6):
        k, b = _expected(i)
        np.testing.assert_array_equal(arrays[f"dense_{i}/dense_{i}/kernel:0"], k)
        np.testing.assert_array_equal(arrays[f"dense_{i}/dense_{i}/bias:0"], b)
    assert arrays.report.bytes_loaded == 6 * (4 * MiB + 4096)
    assert arrays.report.loaded == list(arrays)


def test_load_into_list_by_position(layered_h5) -> None:
    out = [np.empty((1024, 1024), "f4") if i % 2 == 0 else np.empty(1024, "f4") for i in range(12)]
    report = lw.load(layered_h5, out=out, max_memory="2MiB")
    for i in range(6):
        np.testing.assert_array_equal(out[2 * i], _expected(i)[0])
    assert isinstance(report, lw.LoadReport) and len(report.loaded) == 12


def test_load_into_dict_by_key_and_name_with_cast(layered_h5) -> None:
    out = {"dense_3/kernel:0": np.zeros((1024, 1024), "f8"), "dense_5/dense_5/bias:0": np.zeros(1024, "f2")}
    report = lw.load(layered_h5, out=out, max_memory="1MiB")
    np.testing.assert_array_equal(out["dense_3/kernel:0"], _expected(3)[0].astype("f8"))
    np.testing.assert_array_equal(out["dense_5/dense_5/bias:0"], np.full(1024, 5, "f2"))
    assert len(report.skipped) == 10
    assert report.peak_in_flight <= MiB


def test_load_non_contiguous_destination(layered_h5) -> None:
    base = np.zeros((1024, 2048), "f4")
    dest = base[:, ::2]
    lw.load(layered_h5, out={"dense_1/kernel:0": dest}, max_memory="1MiB")
    np.testing.assert_array_equal(dest, _expected(1)[0])
    assert not base[:, 1::2].any()


@pytest.mark.parametrize("budget", ["256KiB", "1MiB", "3MiB"])
def test_budget_bounds_bytes_in_flight(layered_h5, budget) -> None:
    """Remote-style staging (memory://) makes every part hold bytes; the peak stays under the budget."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe(f"/budget-{budget}.h5", layered_h5.read_bytes())
    arrays = lw.load(f"memory://budget-{budget}.h5", max_memory=budget, concurrency=8)
    limit = parse_bytes(budget)
    assert 0 < arrays.report.peak_in_flight <= limit
    np.testing.assert_array_equal(arrays["dense_4/dense_4/kernel:0"], _expected(4)[0])
    part = max(64 << 10, limit // 16)  # parts sized so `concurrency` of them fit twice in the budget
    with lw.open(f"memory://budget-{budget}.h5") as ckpt:  # parts inside the head the open read cost none
        starts = [s.extent.offset + i for s in ckpt.manifest.weights for i in range(0, s.extent.length, part)]
    in_head = sum(1 for start in starts if start + part <= HEAD_BYTES)
    assert arrays.report.requests == 6 * -(-4 * MiB // part) + 6 - in_head


def test_large_weight_split_into_concurrent_parts(layered_h5) -> None:
    seen: set[str] = set()
    lock = threading.Lock()

    def record(_: int) -> None:
        with lock:
            seen.add(threading.current_thread().name)

    arrays = lw.load(layered_h5, part_size="256KiB", concurrency=4, progress=record)
    assert arrays.report.requests == 6 * 16 + 6
    assert len(seen) > 1  # parts of one load ran on several threads
    np.testing.assert_array_equal(arrays["dense_0/dense_0/kernel:0"], _expected(0)[0])


def test_byte_budget_oversize_admitted_alone() -> None:
    budget = ByteBudget(100)
    budget.acquire(60)
    admitted = threading.Event()

    def take_big() -> None:
        budget.acquire(500)
        admitted.set()

    t = threading.Thread(target=take_big)
    t.start()
    assert not admitted.wait(0.2)  # 60 in flight: the oversize reservation waits
    budget.release(60)
    assert admitted.wait(5)
    t.join()
    assert budget.peak == 500 and budget.in_flight == 500


def test_parse_bytes() -> None:
    assert parse_bytes("256MiB") == 256 * MiB
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes(4096) == 4096 and parse_bytes(None) is None
    with pytest.raises(lw.LazyWeightsError, match="cannot read 'lots'"):
        parse_bytes("lots")


def test_manifest_json_and_pickle_roundtrip(layered_h5) -> None:
    import pickle

    with lw.open(layered_h5) as ckpt:
        m = ckpt.manifest
        assert lw.Manifest.from_json(m.to_json()) == m
        assert pickle.loads(pickle.dumps(m)) == m


def test_public_api_is_curated() -> None:
    import types

    public = {n for n in dir(lw) if not n.startswith("_") and not isinstance(getattr(lw, n), types.ModuleType)}
    assert public == set(lw.__all__) - {"__version__"}
