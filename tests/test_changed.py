"""Every way into the executor ends by verifying the object: a local file rewritten mid-load raises.

The rewrite appends a byte (size and mtime change, every offset read stays
valid): no read fails, so only the executor's final ``source.verify()`` can
notice.  Each test triggers it from inside the load, on its first progress
tick or first read.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import lazyweights as lw

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CHANGED = r"the object changed while"


def _append(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(b"\0")


def _on_first_call(path: Path) -> Callable[..., None]:
    done: list[bool] = []

    def callback(*_: object) -> None:
        if not done:
            done.append(True)
            _append(path)

    return callback


@pytest.fixture
def h5_file(tmp_path: Path) -> Path:
    """Several contiguous weights (one large enough for row blocks) and a chunked one."""
    rng = np.random.default_rng(0)
    path = tmp_path / "model.h5"
    with h5py.File(path, "w") as f:
        f["fc/weight"] = rng.standard_normal((8, 4)).astype("f4")
        f["fc/bias"] = rng.standard_normal(8).astype("f4")
        f["big"] = rng.standard_normal((512, 1024)).astype("f4")  # 2 MiB
        f.create_dataset("zipped", data=rng.standard_normal((64, 64)).astype("f4"), chunks=(16, 64), compression="gzip")
    return path


def test_export_of_a_changed_file_raises(h5_file: Path, tmp_path: Path) -> None:
    with pytest.raises(lw.ObjectChangedError, match=CHANGED):
        lw.export(h5_file, tmp_path / "out", progress=_on_first_call(h5_file), max_memory="1MiB")


def test_mirror_of_a_changed_file_raises(h5_file: Path, tmp_path: Path) -> None:
    with pytest.raises(lw.ObjectChangedError, match=CHANGED):
        lw.mirror(h5_file, tmp_path / "mirror.zarr", progress=_on_first_call(h5_file))


def test_verify_of_a_changed_file_raises(h5_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "copy.h5"
    shutil.copy(h5_file, other)
    with pytest.raises(lw.ObjectChangedError, match=CHANGED):
        lw.verify(h5_file, other, progress=_on_first_call(h5_file))


def test_torch_load_of_a_changed_file_raises(h5_file: Path) -> None:
    module = torch.nn.Module()
    module.fc = torch.nn.Linear(4, 8)
    mapping = {"big": None, "zipped": None}
    with pytest.raises(lw.ObjectChangedError, match=CHANGED):
        lw_torch().load_state_dict(module, h5_file, mapping, progress=_on_first_call(h5_file))


def test_torch_load_into_meta_and_staged_tensors_of_a_changed_file_raises(h5_file: Path) -> None:
    module = torch.nn.Module()
    module.fc = torch.nn.Linear(4, 8, dtype=torch.float64)  # staged: a cast
    with torch.device("meta"):
        module.big = torch.nn.Linear(1024, 512, bias=False)
    mapping = {"big": "big.weight", "zipped": None}
    with pytest.raises(lw.ObjectChangedError, match=CHANGED):
        lw_torch().load_state_dict(module, h5_file, mapping, progress=_on_first_call(h5_file), part_size="64KiB")


def test_dask_compute_of_a_changed_file_raises(h5_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dask

    with lw.open(h5_file) as ckpt:
        array = ckpt["big"].to_dask(block_bytes=1 << 20)
        read = ckpt.source.readinto
        first = _on_first_call(h5_file)

        def readinto(offset: int, buf: memoryview) -> int:
            first()
            return read(offset, buf)

        monkeypatch.setattr(ckpt.source, "readinto", readinto)
        with dask.config.set(scheduler="synchronous"), pytest.raises(lw.ObjectChangedError, match=CHANGED):
            array[:10].compute()


def test_weight_read_of_a_changed_file_raises(h5_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with lw.open(h5_file) as ckpt:
        read = ckpt.source.read
        first = _on_first_call(h5_file)

        def read_then_change(offset: int, length: int) -> bytes:  # the chunked weight's chunk fetch
            first()
            return read(offset, length)

        monkeypatch.setattr(ckpt.source, "read", read_then_change)
        with pytest.raises(lw.ObjectChangedError, match=CHANGED):
            ckpt["zipped"][3]


def test_keras_load_weights_of_a_changed_file_raises(keras3_files, tmp_path: Path) -> None:
    from lazyweights import keras as lwk

    for kind in ("h5", "weights"):
        path = tmp_path / Path(keras3_files[kind]).name
        shutil.copy(keras3_files[kind], path)
        with pytest.raises(lw.ObjectChangedError, match=CHANGED):
            lwk.load_weights(keras3_files["model"], path, progress=_on_first_call(path))


def lw_torch():
    from lazyweights import torch as lwt

    return lwt
