"""Sharded loads: each rank reads only its part, parts match torch.chunk, and all ranks together read ≈ the file."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

import lazyweights as lw
from lazyweights.storage import HEAD_BYTES

MiB = 1 << 20


@pytest.fixture(scope="module")
def sharded_file(tmp_path_factory):
    """Contiguous weights (one with a row count no world size divides), a gzip-chunked one, a scalar and a bias."""
    rng = np.random.default_rng(3)
    values = {
        "big": rng.standard_normal((1024, 1024)).astype("f4"),
        "odd": rng.standard_normal((4099, 64)).astype("f4"),
        "conv": rng.standard_normal((64, 32, 3, 3)).astype("f4"),
        "bias": rng.standard_normal(1024).astype("f4"),
        "step": np.array(7, dtype="i8"),
    }
    path = tmp_path_factory.mktemp("shard") / "sharded.h5"
    with h5py.File(path, "w") as f:
        for name, v in values.items():
            f[name] = v
        values["zipped"] = rng.standard_normal((256, 256)).astype("f4")
        f.create_dataset("zipped", data=values["zipped"], chunks=(64, 256), compression="gzip")
    return path, values


@pytest.fixture
def served(sharded_file, http_server, http_root):
    path, values = sharded_file
    shutil.copy(path, http_root / path.name)
    return f"{http_server.url}/{path.name}", values


def _piece(values: np.ndarray, rank: int, world: int, dim: int = 0) -> np.ndarray:
    pieces = torch.chunk(torch.from_numpy(values), world, dim=dim)
    if rank < len(pieces):
        return pieces[rank].numpy()
    shape = list(values.shape)
    shape[dim] = 0
    return np.empty(shape, values.dtype)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_row_shards_read_about_the_file_once(served, http_server, world) -> None:
    url, values = served
    contiguous = sum(values[k].nbytes for k in ("big", "odd", "conv", "bias"))
    fetched = 0
    with lw.open(url) as ckpt:
        extents = [ckpt[k].spec.extent for k in ("big", "odd", "conv", "bias")]
        in_head = sum(max(0, min(e.end, HEAD_BYTES) - e.offset) for e in extents)  # served by the open's head
        for rank in range(world):
            http_server.reset()
            arrays = ckpt.load(shard=lw.Shard(rank, world), max_memory="4MiB")
            for key, v in values.items():
                np.testing.assert_array_equal(arrays[key], _piece(v, rank, world) if v.ndim else v, err_msg=key)
            assert arrays.report.replicated == ["step"]
            assert http_server.bytes_sent == arrays.report.bytes_read  # the report counts what went over the wire
            data = arrays.report.bytes_read - sum(
                c.extent.length for c in ckpt["zipped"].spec.chunks if _overlaps(c.origin[0], 64, rank, world, 256)
            )
            fetched += data - ckpt["step"].spec.stored_bytes  # the replicated scalar
    assert contiguous - in_head <= fetched <= 1.02 * contiguous, fetched / contiguous


def _overlaps(origin: int, rows: int, rank: int, world: int, n: int) -> bool:
    start, stop = lw.Shard(rank, world).bounds(n)
    return origin < stop and start < origin + rows


def test_chunked_shard_fetches_only_overlapping_chunks(served, http_server) -> None:
    url, _ = served
    with lw.open(url) as ckpt:
        chunks = ckpt["zipped"].spec.chunks
        http_server.reset()
        ckpt.load(out={"zipped": np.empty((128, 256), "f4")}, shard=lw.Shard(1, 2))
        assert http_server.bytes_sent == sum(c.extent.length for c in chunks if c.origin[0] >= 128)


def test_column_shard_reads_coalesced_spans(served, http_server) -> None:
    """A trailing-axis shard is many short runs: read as few spans, amplification at most the world size."""
    url, values = served
    with lw.open(url) as ckpt:
        for rank in range(2):
            http_server.reset()
            out = {"big": np.empty((1024, 512), "f4")}
            report = ckpt.load(out=out, shard=lw.Shard(rank, 2, dim=1), max_memory="8MiB", concurrency=4)
            np.testing.assert_array_equal(out["big"], _piece(values["big"], rank, 2, dim=1))
            assert report.bytes_loaded == 2 * MiB and report.bytes_read <= 4 * MiB
            assert report.requests < 64  # spans, not 1024 row pieces


def test_per_weight_shard_function(served) -> None:
    url, values = served

    def plan(key: str, shape: tuple[int, ...]):
        if key == "conv":
            return (slice(None), slice(8, 24))  # an explicit box, trailing axes implied
        return lw.Shard(1, 2) if key == "big" else None

    arrays = lw.load(url, shard=plan)
    np.testing.assert_array_equal(arrays["conv"], values["conv"][:, 8:24])
    np.testing.assert_array_equal(arrays["big"], values["big"][512:])
    assert sorted(arrays.report.replicated) == ["bias", "odd", "step", "zipped"]


def test_shard_matches_torch_chunk_on_uneven_sizes() -> None:
    for n in range(10):
        for world in range(1, 5):
            pieces = torch.arange(n).chunk(world) if n else ()
            for rank in range(world):
                start, stop = lw.Shard(rank, world).bounds(n)
                expected = pieces[rank].tolist() if rank < len(pieces) else []
                assert list(range(start, stop)) == expected, (n, world, rank)


def test_bad_shards(served) -> None:
    url, _ = served
    with pytest.raises(lw.ShardError, match=r"rank 2 is out of range for world_size 2 \(expected 0 <= rank < 2\)"):
        lw.Shard(2, 2)
    with pytest.raises(lw.ShardError, match="rank -1"):
        lw.Shard(-1, 2)
    with pytest.raises(ValueError, match="world_size must be at least 1"):
        lw.Shard(0, 0)
    with pytest.raises(lw.ShardError, match=r"weight 'odd': dimension 0 has size 4099, which world_size 2 does not"):
        lw.load(url, shard=lw.Shard(0, 2, even=True))
    with pytest.raises(lw.ShardError, match="unit-step slices"):
        lw.load(url, shard=lambda key, shape: (slice(0, 4, 2),))
    with pytest.raises(lw.MismatchError, match=r"'big' of shape \(1024, 1024\) has a shard of shape \(512, 1024\)"):
        lw.load(url, out={"big": np.empty((1024, 1024), "f4")}, shard=lw.Shard(0, 2))


@pytest.fixture(scope="module")
def region_file(tmp_path_factory):
    """One contiguous and one chunked (unaligned chunks, gzip) dataset of the same values."""
    values = np.arange(7 * 6 * 5, dtype="f4").reshape(7, 6, 5)
    path = tmp_path_factory.mktemp("region") / "region.h5"
    with h5py.File(path, "w") as f:
        f["flat"] = values
        f.create_dataset("chunked", data=values, chunks=(3, 4, 2), compression="gzip")
    return path, values


def test_any_box_reads_what_numpy_slices(region_file) -> None:
    """Property: for any box, part size and destination dtype, the executor's region equals numpy's slice."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from lazyweights.stream import Group, LoadReport, Target, execute

    path, values = region_file
    ckpt = lw.open(path)

    def bounds(n: int):
        return st.tuples(st.integers(0, n), st.integers(0, n)).map(lambda t: slice(min(t), max(t)))

    @settings(max_examples=60, deadline=None)
    @given(
        box=st.tuples(*(bounds(n) for n in values.shape)),
        key=st.sampled_from(["flat", "chunked"]),
        part=st.sampled_from([4, 20, 64, 1 << 20]),
        dtype=st.sampled_from(["f4", "f8"]),
        staged=st.booleans(),
    )
    def check(box, key, part, dtype, staged) -> None:
        dest = None if staged else np.full(tuple(s.stop - s.start for s in box), -1, dtype)
        got: list[np.ndarray] = []
        target = Target(ckpt.manifest[key], dest, box)
        group = Group([target], on_ready=got.extend)
        execute(ckpt.source, [group], max_memory=None, part_bytes=part, report=LoadReport(str(path), "hdf5"))
        np.testing.assert_array_equal(got[0], values[box])

    try:
        check()
    finally:
        ckpt.close()


def test_row_shards_of_small_weights_leave_other_ranks_rows(http_server, http_root) -> None:
    """Small weights batch into merged reads; the rows between one rank's pieces are the other rank's, and
    are not fetched to save a request (with the plain 64 KiB merge gap each rank read the whole file)."""
    path = http_root / "small-rows.h5"
    values = {f"w{i:02d}": np.full((128, 128), i, "f4") for i in range(64)}  # 64 KiB each, 4 MiB in all
    with h5py.File(path, "w") as f:
        for key, v in values.items():
            f[key] = v
    data = sum(v.nbytes for v in values.values())
    with lw.open(f"{http_server.url}/{path.name}", index=False) as ckpt:
        for rank in range(2):
            http_server.reset()
            arrays = ckpt.load(shard=lw.Shard(rank, 2))
            for key, v in values.items():
                np.testing.assert_array_equal(arrays[key], _piece(v, rank, 2), err_msg=key)
            assert http_server.bytes_sent <= 1.02 * data / 2, http_server.bytes_sent / data
            assert http_server.bytes_sent == arrays.report.bytes_read


@pytest.mark.parametrize("world", [2, 3, 4])
def test_flat_shards_partition_every_weight(served, http_server, world) -> None:
    """``Shard(dim=None)``: rank r holds its torch.chunk piece of the flattened weight (1-D), every weight
    split (no replicas), the pieces concatenate to the weight, and the contiguous weights' bytes are read
    about once across the ranks (one range per weight and rank)."""
    url, values = served
    contiguous = ("big", "odd", "conv", "bias", "step")
    fetched = 0
    with lw.open(url, index=False) as ckpt:
        extents = [ckpt[k].spec.extent for k in contiguous]
        in_head = sum(max(0, min(e.end, HEAD_BYTES) - e.offset) for e in extents)
        parts = []
        for rank in range(world):
            http_server.reset()
            arrays = ckpt.load(shard=lw.Shard(rank, world, dim=None), max_memory="4MiB")
            assert arrays.report.replicated == []
            assert http_server.bytes_sent == arrays.report.bytes_read
            fetched += arrays.report.bytes_read - sum(
                c.extent.length for c in ckpt["zipped"].spec.chunks if _flat_overlaps(c.origin[0], rank, world)
            )
            parts.append(arrays)
    for key, v in values.items():
        for rank, arrays in enumerate(parts):
            assert arrays[key].ndim == 1 and arrays[key].dtype == v.dtype, key
            np.testing.assert_array_equal(arrays[key], _piece(v.reshape(-1), rank, world), err_msg=key)
    total = sum(values[k].nbytes for k in contiguous)
    assert total - in_head <= fetched <= total + 4 * world, fetched / total


def _flat_overlaps(row: int, rank: int, world: int) -> bool:
    """Whether the (64, 256) chunk at ``row`` of the (256, 256) 'zipped' weight holds elements of rank's piece."""
    start, stop = lw.Shard(rank, world, dim=None).bounds(256 * 256)
    return row * 256 < stop and start < (row + 64) * 256


def test_flat_shards_into_caller_arrays_and_errors(served) -> None:
    url, values = served
    out = {"conv": np.zeros(64 * 32 * 9 // 2, "f8"), "step": np.zeros(0, "i8")}
    lw.load(url, out=out, shard=lw.Shard(1, 2, dim=None))
    np.testing.assert_array_equal(out["conv"], values["conv"].reshape(-1)[64 * 32 * 9 // 2 :])
    with pytest.raises(lw.MismatchError, match=r"'conv' of shape \(64, 32, 3, 3\) has a shard of shape \(9216,\)"):
        lw.load(url, out={"conv": np.zeros((64, 32, 3, 3), "f4")}, shard=lw.Shard(0, 2, dim=None))
    strided = np.zeros(2 * 9216, "f4")[::2]
    with pytest.raises(lw.MismatchError, match="flat shard must be contiguous"):
        lw.load(url, out={"conv": strided}, shard=lw.Shard(0, 2, dim=None))
    assert not strided.any()  # checked before anything was read
    with pytest.raises(lw.ShardError, match="weight 'bias': 1024 elements, which world_size 3 does not divide"):
        lw.load(url, shard=lw.Shard(0, 3, dim=None, even=True))
    with pytest.raises(lw.ShardError, match=r"Shard.dim must be an int or None, got 'rows'"):
        lw.Shard(0, 2, dim="rows")
