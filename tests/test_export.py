"""lw.export: raw files + manifest.json for C/C++, checked against numpy and a real C program."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

import lazyweights as lw

from .conftest import KERAS2

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "c"


def _le(values: np.ndarray) -> bytes:
    a = np.ascontiguousarray(values)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a.tobytes()


def _source_values(src, optimizer: bool = False) -> dict[str, np.ndarray]:
    with lw.open(src) as ckpt:
        weights = [*ckpt.weights, *(ckpt.optimizer_weights if optimizer else [])]
        return {w.key: w.read() for w in weights}


@pytest.mark.parametrize("packed", [False, True])
def test_bin_export_matches_the_source(keras3_files: dict, tmp_path: Path, packed: bool) -> None:
    src = keras3_files["weights"]
    manifest = lw.export(src, tmp_path / "out", packed=packed, optimizer=True)
    values = _source_values(src, optimizer=True)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    assert [e["key"] for e in manifest["weights"]] == list(values)
    assert manifest["byte_order"] == "little" and manifest["packed"] is packed
    for entry in manifest["weights"]:
        expected = values[entry["key"]]
        raw = (tmp_path / "out" / entry["file"]).read_bytes()[entry["offset"] : entry["offset"] + entry["nbytes"]]
        assert raw == _le(expected), entry["key"]
        assert entry["sha256"] == hashlib.sha256(_le(expected)).hexdigest()
        assert entry["shape"] == list(expected.shape)
        assert entry["dtype"] == ("bfloat16" if expected.dtype.name == "bfloat16" else expected.dtype.name)
        if packed:
            assert entry["file"] == "weights.bin" and entry["offset"] % 64 == 0
    assert {e["dtype"] for e in manifest["weights"]} >= {"float32", "bfloat16"}


def test_npy_and_txt_exports_round_trip(keras3_files: dict, tmp_path: Path) -> None:
    src = keras3_files["weights"]
    values = _source_values(src)
    npy = lw.export(src, tmp_path / "npy", "npy")
    txt = lw.export(src, tmp_path / "txt", "txt")
    for entry, tentry in zip(npy["weights"], txt["weights"], strict=True):
        expected = values[entry["key"]]
        loaded = np.load(tmp_path / "npy" / entry["file"])
        if entry["dtype"] == "bfloat16":  # stored as its uint16 bits
            loaded = loaded.view(expected.dtype)
        np.testing.assert_array_equal(loaded, expected)
        raw = (tmp_path / "npy" / entry["file"]).read_bytes()
        assert raw[entry["offset"] :] == _le(expected)
        text = np.loadtxt(tmp_path / "txt" / tentry["file"], ndmin=2)
        as_dtype = "f4" if expected.dtype.itemsize < 8 and expected.dtype.kind != "i" else expected.dtype
        np.testing.assert_array_equal(text.reshape(expected.shape).astype(as_dtype), expected.astype(as_dtype))
        assert tentry["nbytes"] == (tmp_path / "txt" / tentry["file"]).stat().st_size


def test_large_weight_export_is_streamed_in_blocks(tmp_path: Path) -> None:
    path = tmp_path / "big.h5"
    kernel = np.random.default_rng(0).standard_normal((4096, 512)).astype(">f4")  # big-endian in the source
    with h5py.File(path, "w") as f:
        f["dense/kernel"] = kernel
    seen: list[int] = []
    manifest = lw.export(path, tmp_path / "out", max_memory="2MiB", progress=seen.append)
    assert len(seen) > 4 and sum(seen) == kernel.nbytes  # several blocks, each reported
    entry = manifest["weights"][0]
    data = np.fromfile(tmp_path / "out" / entry["file"], dtype="<f4").reshape(kernel.shape)
    np.testing.assert_array_equal(data, kernel)
    assert entry["sha256"] == hashlib.sha256(kernel.astype("<f4").tobytes()).hexdigest()


def test_export_refuses_a_non_empty_directory_and_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(lw.DestinationExistsError, match="not empty"):
        lw.export(KERAS2 / "cnn_weights.h5", tmp_path / "out")
    with pytest.raises(lw.LazyWeightsError, match="packed=True needs format='bin'"):
        lw.export(KERAS2 / "cnn_weights.h5", tmp_path / "o2", "npy", packed=True)
    with pytest.raises(lw.LazyWeightsError, match="unknown export format"):
        lw.export(KERAS2 / "cnn_weights.h5", tmp_path / "o3", "csv")
    lw.export(KERAS2 / "cnn_weights.h5", tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"


@pytest.fixture(scope="module")
def lwread(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    exe = tmp_path_factory.mktemp("c") / "lwread"
    subprocess.run([gcc, "-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(EXAMPLES / "lwread.c")],
                   check=True, capture_output=True, text=True)  # fmt: skip
    return exe


def _expected_output(manifest: dict, values: dict[str, np.ndarray], count: int) -> str:
    """What lwread prints, computed in Python from the source's values (not from the export)."""
    lines = []
    for entry in manifest["weights"]:
        v = values[entry["key"]]
        first = v.reshape(-1)[:count]
        if v.dtype.kind == "f" or v.dtype.name == "bfloat16":
            shown = [f"{float(x):.6g}" for x in first.astype("f8")]  # C printf %.6g
        else:
            shown = [str(int(x)) for x in first]
        shape = ",".join(str(n) for n in v.shape)
        sha = hashlib.sha256(_le(v)).hexdigest()
        lines.append(f"{entry['key']}\t{entry['dtype']}\t[{shape}]\t{sha}\tok\t{' '.join(shown)}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("fmt,packed", [("bin", False), ("bin", True), ("npy", False)])
def test_c_reader_prints_what_python_computes(lwread: Path, keras3_files: dict, tmp_path: Path, fmt, packed) -> None:
    src = keras3_files["weights"]
    manifest = lw.export(src, tmp_path / "out", fmt, packed=packed, optimizer=True)
    values = _source_values(src, optimizer=True)
    run = subprocess.run([str(lwread), str(tmp_path / "out"), "4"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == _expected_output(manifest, values, 4)


def test_c_reader_detects_a_corrupt_file(lwread: Path, tmp_path: Path) -> None:
    manifest = lw.export(KERAS2 / "cnn_weights.h5", tmp_path / "out")
    victim = tmp_path / "out" / manifest["weights"][0]["file"]
    data = bytearray(victim.read_bytes())
    data[0] ^= 1
    victim.write_bytes(bytes(data))
    run = subprocess.run([str(lwread), str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stdout.splitlines()[0].split("\t")[4] == "MISMATCH"
    assert all(line.split("\t")[4] == "ok" for line in run.stdout.splitlines()[1:])
