"""A full remote load reads the object whole, in a few concurrent ranged GETs, under its memory budget.

Keras interleaves object headers with weight data, so a metadata walk by range costs a request per layer
or so; a full load reads every byte anyway.  These tests serve a file shaped like that (many small
datasets, headers between them) from the Range HTTP server and count what it answered.
"""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

import lazyweights as lw
from lazyweights.formats.keras_zip import ARCHIVE_HEAD
from lazyweights.storage.source import HEAD_BYTES, TAIL_BYTES

LAYERS = 120


@pytest.fixture(scope="module")
def layered(tmp_path_factory):
    """A ~4 MiB file of 120 groups, each a 32 KiB kernel and a bias: headers between data, as Keras writes."""
    path = tmp_path_factory.mktemp("readahead") / "layered.h5"
    rng = np.random.default_rng(7)
    with h5py.File(path, "w") as f:
        for i in range(LAYERS):
            g = f.create_group(f"dense_{i}")
            g["kernel"] = rng.standard_normal((64, 128)).astype("f4")
            g["bias"] = rng.standard_normal(128).astype("f4")
    return path


def _served(path, http_server, http_root) -> str:
    shutil.copy(path, http_root / path.name)
    http_server.reset()
    return f"{http_server.url}/{path.name}"


def _expected(path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _check_values(loaded, path) -> None:
    expected = _expected(path)
    assert sorted(loaded) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(loaded[key], value)


def test_a_full_load_reads_the_object_once_in_two_rounds(layered, http_server, http_root) -> None:
    url = _served(layered, http_server, http_root)
    size = layered.stat().st_size
    loaded = lw.load(url, index=False)
    _check_values(loaded, layered)
    gets = [r for r in http_server.requests if r[0] == "GET" and r[1] == f"/{layered.name}"]
    assert sum(n for _, _, n in gets) == size  # every byte once: the head, then the rest in parts
    assert 2 <= len(gets) <= 17, gets
    assert gets[0][2] == HEAD_BYTES
    report = loaded.report
    assert report.read_ahead == size
    assert report.requests == 0 and report.bytes_read == 0  # the weights came from memory
    assert size <= report.peak_in_flight <= report.max_memory


def test_without_readahead_the_same_load_reads_by_range(layered, http_server, http_root) -> None:
    url = _served(layered, http_server, http_root)
    loaded = lw.load(url, index=False, readahead=False)
    _check_values(loaded, layered)
    assert len(http_server.requests) > 17  # the walk's rounds and the weights' ranges
    assert loaded.report.read_ahead == 0


def test_a_budget_too_small_for_the_copy_reads_by_range(layered, http_server, http_root) -> None:
    """The copy counts in ``max_memory``: an object over 3/4 of it is not read whole."""
    url = _served(layered, http_server, http_root)
    size = layered.stat().st_size
    budget = size + size // 4  # 3/4 of it is under the file's size
    loaded = lw.load(url, index=False, max_memory=budget)
    _check_values(loaded, layered)
    assert loaded.report.read_ahead == 0
    assert loaded.report.peak_in_flight <= budget
    assert len(http_server.requests) > 17  # the walk's rounds and the weights' ranges


def test_a_sharded_load_reads_only_its_part(layered, http_server, http_root) -> None:
    url = _served(layered, http_server, http_root)
    size = layered.stat().st_size
    part = lw.load(url, index=False, shard=lw.Shard(0, 2))
    assert part.report.read_ahead == 0
    assert sum(n for _, _, n in http_server.requests) < 0.75 * size


def test_filling_a_dict_reads_by_range(layered, http_server, http_root) -> None:
    """``out`` as a dict may name a few weights: the object is not read whole for them."""
    url = _served(layered, http_server, http_root)
    out = {"dense_0/bias": np.empty(128, "f4")}
    report = lw.load(url, out, index=False)
    np.testing.assert_array_equal(out["dense_0/bias"], _expected(layered)["dense_0/bias"])
    assert report.read_ahead == 0
    assert sum(n for _, _, n in http_server.requests) < layered.stat().st_size // 2


def test_a_chunk_needing_the_room_drops_the_copy(tmp_path, http_server, http_root) -> None:
    """A chunk that decodes to more than the budget leaves beside the copy: the copy is dropped and the load
    reads by range (never a refusal or a stall the plain load would not have)."""
    path = tmp_path / "bigchunk.h5"
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as f:
        f["noise"] = rng.standard_normal(1 << 19).astype("f8")  # 4 MiB that do not compress
        f.create_dataset("zeros", data=np.zeros(1 << 20, "f8"), chunks=(1 << 20,), compression="gzip")  # 8 MiB
    url = _served(path, http_server, http_root)
    budget = 12 << 20  # the copy (~4 MiB) fits in 3/4 of it, the chunk (8 MiB + its stored bytes) not beside it
    loaded = lw.load(url, index=False, max_memory=budget)
    _check_values(loaded, path)
    assert loaded.report.read_ahead > 0  # read whole at open, then given up for the chunk
    assert loaded.report.requests >= 1  # what the load needed after that came by range
    assert loaded.report.peak_in_flight <= budget


def test_the_copy_is_released_after_the_load(layered, http_server, http_root) -> None:
    url = _served(layered, http_server, http_root)
    with lw.open(url, index=False, readahead="64MiB") as ckpt:
        assert ckpt._source.held_bytes == layered.stat().st_size
        first = len(http_server.requests)
        _check_values(ckpt.load(), layered)
        assert len(http_server.requests) == first  # served from memory
        ckpt._source.release_whole()
        assert ckpt._source.held_bytes == 0
        last = f"dense_{LAYERS - 1}/kernel"  # past the head
        np.testing.assert_array_equal(ckpt[last].read(), _expected(layered)[last])
        assert len(http_server.requests) > first


def _file_gets(http_server, name: str) -> list[int]:
    return [n for method, path, n in http_server.requests if method == "GET" and path == f"/{name}"]


def test_keras_load_model_reads_the_archive_whole(tmp_path, http_server, http_root) -> None:
    """``lwk.load_model`` of a URL is a full load: the archive comes in one head and a few parts, every byte once."""
    import keras

    from lazyweights import keras as lwk

    model = keras.Sequential([keras.Input((256,)), *(keras.layers.Dense(256, name=f"d{i}") for i in range(24))])
    path = tmp_path / "wide.keras"
    model.save(path)
    assert path.stat().st_size > 4 * HEAD_BYTES
    url = _served(path, http_server, http_root)
    loaded = lwk.load_model(url)
    gets = _file_gets(http_server, path.name)
    assert sum(gets) == path.stat().st_size and len(gets) <= 17, gets
    x = np.random.default_rng(0).standard_normal((3, 256)).astype("f4")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=0, atol=0)


def test_torch_load_state_dict_reads_the_file_whole(tmp_path, http_server, http_root) -> None:
    import torch

    from lazyweights import torch as lwt

    source = torch.nn.Sequential(*(torch.nn.Linear(256, 256) for _ in range(24)))
    path = tmp_path / "state.h5"
    with h5py.File(path, "w") as f:
        for name, t in source.state_dict().items():
            f[name.replace(".", "/")] = t.detach().numpy()
    url = _served(path, http_server, http_root)
    target = torch.nn.Sequential(*(torch.nn.Linear(256, 256) for _ in range(24)))
    lwt.load_state_dict(target, url)
    gets = _file_gets(http_server, path.name)
    assert sum(gets) == path.stat().st_size and len(gets) <= 17, gets
    for name, t in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], t), name
    http_server.reset()
    half = torch.nn.Sequential(*(torch.nn.Linear(256, 128) for _ in range(24)))  # rank 0's rows of each
    lwt.load_state_dict(half, url, shard=lw.Shard(0, 2))  # a rank's part: by range, never whole
    assert torch.equal(half.state_dict()["3.weight"], source.state_dict()["3.weight"][:128])
    assert sum(_file_gets(http_server, path.name)) < 0.75 * path.stat().st_size


@pytest.fixture(scope="module")
def wide_keras_files(tmp_path_factory) -> dict:
    """A Keras 3 model of 1.5 MiB of weights, saved by Keras in its three formats."""
    import keras

    from .conftest import save_keras_formats

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((256,)), *(keras.layers.Dense(256) for _ in range(6))])
    return save_keras_formats(model, tmp_path_factory.mktemp("wide"), "wide")


@pytest.mark.parametrize("kind", ["weights", "h5", "keras"])
def test_the_first_get_of_an_open_is_the_head_its_format_needs(wide_keras_files, http_server, http_root, kind) -> None:
    """An HDF5 file's head is its first 64 KiB (superblock, root and top groups); a ``.keras`` archive's is
    its first 512 KiB, fetched beside its tail, so that its weights member, behind the config, starts
    inside it and the walk begins without another round."""
    path = http_root / wide_keras_files[kind].name
    shutil.copy(wide_keras_files[kind], path)
    http_server.reset()
    with lw.open(f"{http_server.url}/{path.name}", index=False) as ckpt:
        assert ckpt.manifest.weights
    size = path.stat().st_size
    sent = [n for method, name, n in http_server.requests if method == "GET" and name == f"/{path.name}"]
    if kind == "keras":
        assert sorted(sent[:2]) == sorted([TAIL_BYTES, ARCHIVE_HEAD]) and size > ARCHIVE_HEAD, sent
    else:
        assert sent[0] == min(size, HEAD_BYTES) < size, sent
