"""A VerifyReport is truthy exactly when the two checkpoints agree."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

import lazyweights as lw


def _write(path: Path, scale: float) -> Path:
    with h5py.File(path, "w") as f:
        f["dense/kernel:0"] = np.arange(12, dtype="<f4").reshape(3, 4) * scale
        f["dense/bias:0"] = np.ones(4, dtype="<f4")
    return path


def test_report_is_falsy_when_checkpoints_differ(tmp_path: Path) -> None:
    a, b = _write(tmp_path / "a.h5", 1.0), _write(tmp_path / "b.h5", 2.0)
    report = lw.verify(a, b)
    fired = False
    if not report:
        fired = True
    assert fired and not report.ok
    assert [d.key for d in report.differences] == ["dense/kernel:0"]


def test_report_is_truthy_when_checkpoints_agree(tmp_path: Path) -> None:
    a, b = _write(tmp_path / "a.h5", 1.0), _write(tmp_path / "b.h5", 1.0)
    report = lw.verify(a, b)
    assert report and report.ok
    assert bool(report) is True
