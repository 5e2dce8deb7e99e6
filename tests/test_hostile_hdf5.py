"""Hostile HDF5 files — the issue's minimized reproductions and the fuzzer's finds — each judged like a fuzz input.

Every file is loaded by a fuzz worker process (:mod:`tests.fuzz.worker`)
under a time and an address-space limit, with the pure-Python metadata walk
(``LAZYWEIGHTS_HDF5_METADATA=walk``, what makes a local open crash-proof), and
its values compared with h5py's.  Each must be refused with a
``LazyWeightsError`` or load exactly h5py's values: never a crash, a hang, a
huge allocation, a foreign exception or a wrong value.

Reproductions derived from a committed fixture are rebuilt here from that
fixture and the bytes the reproduction changed (``/work/shared/repro/*.diff.txt``
in the issue); the others are committed under ``fixtures/hostile``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import lazyweights as lw
from tests.fuzz.harness import Worker, classify

FIXTURES = Path(__file__).parent / "fixtures"
HOSTILE = FIXTURES / "hostile"

# name: (committed fixture, {offset: (old byte, new byte)}) — one-to-three-byte damage that crashed, hung or blew
# up libhdf5 inside h5py's walk, or that the fuzzer found
PATCHED = {
    "min_crash_cnn_full_1918": ("keras2/cnn_full.h5", {929: (0x01, 0x05)}),
    "min_crash_cnn_weights_2951": ("keras2/cnn_weights.h5", {857: (0x01, 0x05)}),
    "min_crash_cnn_weights_8335": ("keras2/cnn_weights.h5", {13031: (0x00, 0x80)}),
    "min_hang_cnn_full_5350": ("keras2/cnn_full.h5", {9488: (0x26, 0x00), 9496: (0x11, 0x00)}),
    "min_hang_cnn_weights_7209": ("keras2/cnn_weights.h5", {2208: (0x05, 0), 2216: (0x72, 0), 2217: (0x65, 0)}),
    "min_hang_long_names_weights_1535": (
        "keras2/long_names_weights.h5",
        {233144: (0x0D, 0), 233152: (0x13, 0), 233153: (0x01, 0)},
    ),
    "min_hang_mobilenetv2_full_5083": ("keras2/mobilenetv2_full.h5", {5224: (0x57, 0), 5232: (0x0E, 0)}),
    "min_hang_mobilenetv2_weights_2083": ("keras2/mobilenetv2_weights.h5", {5200: (0x31, 0), 5208: (0x12, 0)}),
    "min_mem_cnn_weights_2701": ("keras2/cnn_weights.h5", {11883: (0x00, 0xFF)}),
    "min_mem_mobilenetv2_full_18": ("keras2/mobilenetv2_full.h5", {1841323: (0x00, 0x7F)}),
    "min_mem_mobilenetv2_weights_2998": ("keras2/mobilenetv2_weights.h5", {1179: (0x00, 0x80)}),
    # h5py's "Unknown string encoding (value 8)" TypeError on a weight_names attribute
    "min_d_TypeError_hdf5__4980": ("keras2/cnn_full.h5", {31978: (0x00, 0x08)}),
    # fuzzer: a float type h5py converts to float128 (values that do not fit the declared float32)
    "fuzz_float128_conversion": ("keras2/cnn_weights.h5", {16305: (0x00, 0x04)}),
    # fuzzer: a damaged datatype only h5py reads, and h5py's own KeyError on it
    "fuzz_h5py_fallback_refuses": ("keras2/cnn_weights.h5", {13004: (0x17, 0xFC)}),
}
COMMITTED = sorted(p.name for p in HOSTILE.glob("*.h5"))


def _patched(tmp_path: Path, name: str) -> tuple[Path, Path]:
    fixture, edits = PATCHED[name]
    original = FIXTURES / fixture
    data = bytearray(original.read_bytes())
    for offset, (old, new) in edits.items():
        assert data[offset] == old, f"{fixture} changed: byte {offset} is {data[offset]:#x}, not {old:#x}"
        data[offset] = new
    path = tmp_path / f"{name}.h5"
    path.write_bytes(bytes(data))
    return path, original


def _judge(path: Path, original: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    monkeypatch.setenv("LAZYWEIGHTS_HDF5_METADATA", "walk")  # the worker inherits it
    worker = Worker(memory_mb=2048)
    try:
        return classify(worker.run(path, original, timeout=60))
    finally:
        worker.close()


def _check(outcome: str, detail: str, name: str) -> None:
    assert outcome in ("equal", "LazyWeightsError"), f"{name}: {outcome} {detail}"
    if outcome == "LazyWeightsError":
        assert name in detail, f"the error does not name the file: {detail}"


@pytest.mark.parametrize("name", sorted(PATCHED))
def test_damaged_fixture_is_refused_or_read_exactly(name: str, tmp_path: Path, monkeypatch) -> None:
    path, original = _patched(tmp_path, name)
    outcome, detail = _judge(path, original, monkeypatch)
    _check(outcome, detail, name)


@pytest.mark.parametrize("name", COMMITTED)
def test_hostile_file_is_refused_or_read_exactly(name: str, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / name  # under tmp_path: a file name the error must repeat
    path.write_bytes((HOSTILE / name).read_bytes())
    outcome, detail = _judge(path, path, monkeypatch)
    _check(outcome, detail, name)


@pytest.mark.parametrize("mode", ["walk", "h5py"])
@pytest.mark.parametrize("name", ["min_d_TypeError_hdf5__4980", "min_d_TypeError_hdf5__1134"])
def test_unknown_string_encoding_is_a_lazyweights_error(name: str, mode: str, tmp_path: Path, monkeypatch) -> None:
    """An attribute or dataset whose string type has an undefined character set: h5py raises a bare
    TypeError("Unknown string encoding"); both metadata paths make it a LazyWeightsError naming the file."""
    if name in PATCHED:
        path, _ = _patched(tmp_path, name)
    else:
        path = tmp_path / f"{name}.h5"
        path.write_bytes((HOSTILE / f"{name}.h5").read_bytes())
    monkeypatch.setenv("LAZYWEIGHTS_HDF5_METADATA", mode)
    with pytest.raises(lw.LazyWeightsError, match=name), lw.open(path, index=False) as ckpt:
        lw.load(ckpt)
        for spec in ckpt.manifest.optimizer:
            ckpt[spec.key].read()
