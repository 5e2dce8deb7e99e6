"""`make demo`'s claims, on a small checkpoint: layer count, a budget smaller than the model, bytes fetched."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lazyweights as lw
from lazyweights.formats.keras_zip import ARCHIVE_HEAD

ROOT = Path(__file__).resolve().parent.parent


def _demo():
    spec = importlib.util.spec_from_file_location("lw_demo", ROOT / "examples" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_figures(tmp_path: Path, capsys) -> None:
    demo = _demo()
    path = tmp_path / "demo_mlp.keras"
    demo.build_checkpoint(path, width=256, depth=6)
    budget = 128 << 10  # a sixth of the model's 1.5 MiB, as in the demo
    with lw.open(path) as ckpt:
        assert demo.describe(ckpt) == 6  # Dense layers, not the model object the file lists too
        local = demo.local_load(ckpt, budget)
        nbytes = ckpt.nbytes
    assert local.bytes_loaded == nbytes and local.peak_in_flight == 0  # preadv into the arrays: nothing staged
    report, requests, fetched = demo.remote_load(path, budget)
    assert report.bytes_loaded == nbytes > 4 * budget
    assert 0 < report.peak_in_flight <= budget  # the budget held, and was used
    assert requests > 0 and nbytes - ARCHIVE_HEAD <= fetched <= path.stat().st_size  # the open's head serves some
    out = capsys.readouterr().out
    assert out.count("MiB/s") == 2 and "MB/s" not in out  # one throughput per load, binary units
    assert f"{requests} requests fetched" in out
