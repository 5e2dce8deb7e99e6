"""The `lazyweights` command, driven as a user would: arguments in, output and exit status out.

The commands run in-process through click's CliRunner; one test runs the
installed console entry point in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from click.testing import CliRunner

import lazyweights as lw
from lazyweights.cli import cli

from .conftest import KERAS2

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(*args: object) -> Result:
    result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="lazyweights")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a crash outside the command's error boundary
    return Result(result.exit_code, result.stdout, result.stderr)


def test_console_entry_point_runs() -> None:
    """The `lazyweights` script (``lazyweights.cli:main``) in a real process: output, exit statuses."""
    script = Path(sys.executable).with_name("lazyweights")
    command = [str(script)] if script.exists() else [sys.executable, "-c", "from lazyweights.cli import main; main()"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": "torch"}
    ok = subprocess.run([*command, "inspect", str(KERAS2 / "cnn_weights.h5"), "--json"], capture_output=True,
                        text=True, env=env, timeout=120, cwd=ROOT)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["format"] == "keras-h5"


def test_inspect_json_describes_the_checkpoint() -> None:
    path = KERAS2 / "cnn_full.h5"
    result = run("inspect", path, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    with h5py.File(path) as f:  # the oracle: the file itself
        root = f["model_weights"]
        names = [str(n.decode() if isinstance(n, bytes) else n) for n in root.attrs["layer_names"]]
        params = sum(
            root[f"{la}/{w.decode() if isinstance(w, bytes) else w}"].size
            for la in names
            for w in root[la].attrs["weight_names"]
        )
        config = json.loads(f.attrs["model_config"])
    assert info["format"] == "keras-h5" and info["container"] == "file"
    assert [la["name"] for la in info["layers"]] == names
    assert info["total_params"] == params
    assert info["keras_version"] and info["backend"] == "tensorflow"
    assert info["model_class"] == config["class_name"]
    by_name = {la["config"]["name"]: la["class_name"] for la in config["config"]["layers"]}
    assert {la["name"]: la["class_name"] for la in info["layers"]} == by_name
    assert info["optimizer"]["weights"] > 2


def test_inspect_table_and_load_report() -> None:
    result = run("inspect", KERAS2 / "mobilenetv2_weights.h5")
    assert result.returncode == 0, result.stderr
    assert "Conv1" in result.stdout and "Total params" in result.stdout
    result = run("load", KERAS2 / "mobilenetv2_weights.h5", "--max-memory", "256KiB", "--concurrency", "2")
    assert result.returncode == 0, result.stderr
    assert "throughput" in result.stdout and "peak RSS" in result.stdout
    assert result.stderr == ""  # not a terminal: no progress bar


def test_errors_are_one_line_with_exit_status_2(tmp_path: Path) -> None:
    missing = run("inspect", tmp_path / "missing.h5")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"lazyweights: error: {tmp_path / 'missing.h5'}: no such file"]
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes((KERAS2 / "cnn_full.h5").read_bytes()[:5000])
    corrupt = run("load", truncated)
    assert corrupt.returncode == 2
    assert len(corrupt.stderr.strip().splitlines()) == 1 and "truncated HDF5 file" in corrupt.stderr
    debug = run("load", truncated, "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "TruncatedFileError" in debug.stderr
    bad_url = run("inspect", "nosuchprotocol://bucket/model.h5")
    assert bad_url.returncode == 2 and "Traceback" not in bad_url.stderr
    assert len(bad_url.stderr.strip().splitlines()) == 1


def test_usage_errors_exit_2() -> None:
    assert run("inspect").returncode == 2
    assert run("frobnicate").returncode == 2
    bad_option = run("inspect", KERAS2 / "cnn_weights.h5", "-o", "no-equals-sign")
    assert bad_option.returncode == 2 and "key=value" in bad_option.stderr
    bad_size = run("load", KERAS2 / "cnn_weights.h5", "--max-memory", "lots")
    assert bad_size.returncode == 2 and "cannot read 'lots' as a size" in bad_size.stderr


def test_storage_options_reach_fsspec(http_server, http_root: Path) -> None:
    shutil.copy(KERAS2 / "cnn_weights.h5", http_root / "cli.h5")
    url = f"{http_server.url}/cli.h5"
    ok = run("inspect", url, "--json", "-o", "block_size=4096", "-o", 'headers={"X-Test": "1"}')
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["format"] == "keras-h5"
    bad = run("inspect", url, "-o", "no_such_option=1")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_mirror_verify_export_commands(tmp_path: Path) -> None:
    src, dst = KERAS2 / "cnn_full.h5", tmp_path / "m.zarr"
    result = run("mirror", src, dst, "--chunk-size", "256", "--compressor", "zstd", "-q")
    assert result.returncode == 0, result.stderr
    assert "mirrored" in result.stdout
    again = run("mirror", src, dst)
    assert again.returncode == 2 and "overwrite" in again.stderr
    same = run("verify", src, dst)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "identical" in same.stdout
    info = json.loads(run("inspect", dst, "--json").stdout)
    assert info["container"] == "zarr" and info["format"] == "keras-h5"

    with lw.open(dst) as mir:
        victim = max(mir.weights, key=lambda w: w.nbytes)
    chunk = next(p for p in (dst / victim.spec.path).rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"\0" * 4 + chunk.read_bytes()[4:])
    differ = run("verify", src, dst, "--json")
    assert differ.returncode == 1
    report = json.loads(differ.stdout)
    assert not report["ok"] and victim.key in {d["key"] for d in report["differences"]}

    out = tmp_path / "export"
    exported = run("export", src, out, "--format", "npy", "--optimizer")
    assert exported.returncode == 0, exported.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    with lw.open(src) as ckpt:
        assert len(manifest["weights"]) == len(ckpt.weights) + len(ckpt.optimizer_weights)
        first = ckpt.weights[0]
        np.testing.assert_array_equal(np.load(out / manifest["weights"][0]["file"]), first.read())
    assert run("export", src, out).returncode == 2  # not empty


def test_index_command(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    shutil.copy(KERAS2 / "cnn_weights.h5", path)
    result = run("index", path)
    assert result.returncode == 0, result.stderr
    index = tmp_path / "m.h5.lwindex.json"
    assert index.is_file() and str(index) in result.stdout
    doc = json.loads(index.read_text())
    with lw.open(path, index=False) as ckpt:
        assert doc["pin"]["size"] == path.stat().st_size == ckpt.manifest.size
        assert doc["pin"]["etag"] and doc["pin"]["etag"] == ckpt.manifest.etag
        assert [w["key"] for w in doc["manifest"]["weights"]] == [w.key for w in ckpt.weights]
        assert [tuple(w["shape"]) for w in doc["manifest"]["weights"]] == [w.shape for w in ckpt.weights]
