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
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import lazyweights as lw
from lazyweights.cli import cli
from lazyweights.stream.budget import DEFAULT_MAX_MEMORY

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
    assert result.stdout.count("MiB/s") == 1 and "peak RSS" in result.stdout  # one throughput figure
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
    result = run("mirror", src, dst, "--chunk-size", "256", "--compressor", "zstd")
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


# -- --json on every command: the schema README.md documents ---------------------------------


def run_json(*args: object) -> dict:
    """Run a command with --json; its stdout must be exactly one JSON object."""
    result = run(*args, "--json")
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def test_load_json(tmp_path: Path) -> None:
    path = KERAS2 / "mobilenetv2_weights.h5"
    info = run_json("load", path, "--max-memory", "1MiB", "--concurrency", "3")
    with lw.open(path) as ckpt:  # the oracle: the checkpoint's own manifest
        assert info["weights"] == len(ckpt.weights) and info["bytes_loaded"] == ckpt.nbytes
        assert info["size"] == path.stat().st_size and info["format"] == ckpt.format
    assert info["url"] == str(path) and info["max_memory"] == 1 << 20 and info["concurrency"] == 3
    assert info["requests"] > 0 and info["bytes_read"] >= info["bytes_loaded"] and info["seconds"] > 0
    assert info["throughput"] == pytest.approx(info["bytes_loaded"] / info["seconds"])
    assert info["peak_in_flight"] >= 0 and info["peak_rss"] > 0 and info["skipped"] == []
    default = run_json("load", path)
    assert default["max_memory"] == lw.parse_bytes(DEFAULT_MAX_MEMORY)  # the API's default, not unbounded


def test_mirror_export_index_json(tmp_path: Path) -> None:
    src = KERAS2 / "cnn_full.h5"
    with lw.open(src) as ckpt:
        keys = [w.key for w in (*ckpt.weights, *ckpt.optimizer_weights)]
        nbytes = ckpt.nbytes + sum(w.nbytes for w in ckpt.optimizer_weights)
    mirrored = run_json("mirror", src, tmp_path / "m.zarr")
    assert mirrored["src"] == str(src) and mirrored["dst"] == str(tmp_path / "m.zarr")
    assert sorted(mirrored["written"]) == sorted(keys) and mirrored["resumed"] == []
    assert mirrored["weights"] == len(keys) and mirrored["bytes_written"] >= nbytes and mirrored["seconds"] > 0
    assert isinstance(mirrored["peak_in_flight"], int)

    exported = run_json("export", src, tmp_path / "out", "--optimizer")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert exported["manifest"] == str(tmp_path / "out" / "manifest.json") and exported["format"] == "bin"
    assert exported["weights"] == len(manifest["weights"]) == len(keys) and exported["bytes"] == nbytes
    assert exported["out_dir"] == str(tmp_path / "out") and exported["packed"] is False

    path = tmp_path / "m.h5"
    shutil.copy(src, path)
    indexed = run_json("index", path)
    assert indexed == {"url": str(path), "index": f"{path}.lwindex.json"}
    assert json.loads(Path(indexed["index"]).read_text())["pin"]["size"] == path.stat().st_size


def test_inspect_and_verify_json(tmp_path: Path) -> None:
    info = run_json("inspect", KERAS2 / "cnn_weights.h5")
    for field in ("url", "format", "container", "size", "layers", "total_params", "total_bytes", "optimizer",
                  "layer_classes", "skipped", "keras_version", "backend", "model_class", "model_name"):  # fmt: skip
        assert field in info
    assert {"name", "alias", "class_name", "params", "weights"} <= set(info["layers"][0])
    same = run_json("verify", KERAS2 / "cnn_weights.h5", KERAS2 / "cnn_weights.h5")
    assert same["ok"] is True and same["differences"] == [] and same["checked"] == len(info["layers"][0]["weights"]) \
        + sum(len(la["weights"]) for la in info["layers"][1:])
    assert same["bytes_hashed"] == 2 * info["total_bytes"] and same["seconds"] >= 0
    other = run("verify", KERAS2 / "cnn_weights.h5", KERAS2 / "cnn_full.h5", "--json")
    assert other.returncode == 1
    report = json.loads(other.stdout)
    assert report["ok"] is False
    assert all({"key", "what", "a", "b", "side"} <= set(d) for d in report["differences"])


def test_quiet_is_quiet_and_no_progress(tmp_path: Path) -> None:
    src = KERAS2 / "cnn_full.h5"
    for args in (("load", src), ("inspect", src), ("verify", src, src), ("mirror", src, tmp_path / "q.zarr"),
                 ("export", src, tmp_path / "q"), ("index", src, "--output", tmp_path / "q.json")):  # fmt: skip
        quiet = run(*args, "-q")
        assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == "", args
    assert json.loads(run("load", src, "-q", "--json").stdout)["weights"] > 0  # asked for: still printed
    differ = run("verify", src, KERAS2 / "cnn_weights.h5", "-q")
    assert differ.returncode == 1 and differ.stdout == ""  # the exit status says it


def test_progress_bar_only_on_a_terminal_and_off_with_no_progress() -> None:
    """A real terminal (a pty): bars on stderr by default, none with --no-progress or -q."""
    import pty

    def stderr_on_a_terminal(*extra: str) -> bytes:
        code = "from lazyweights.cli import main; main()"
        argv = [sys.executable, "-c", code, "load", str(KERAS2 / "mobilenetv2_weights.h5"), *extra]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": "torch", "COLUMNS": "100"}
        controller, terminal = pty.openpty()
        with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=terminal, env=env, cwd=ROOT) as proc:
            os.close(terminal)
            chunks = []
            while True:
                try:
                    data = os.read(controller, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            assert proc.wait(timeout=120) == 0
        os.close(controller)
        return b"".join(chunks)

    assert b"MiB" in stderr_on_a_terminal()  # the bar, in binary units
    assert stderr_on_a_terminal("--no-progress") == b""
    assert stderr_on_a_terminal("-q") == b""


def test_index_output_where_you_can_write(http_server, http_root: Path, tmp_path: Path) -> None:
    shutil.copy(KERAS2 / "cnn_weights.h5", http_root / "idx.h5")
    url = f"{http_server.url}/idx.h5"
    refused = run("index", url)  # an HTTP server is read-only: a one-line error that says what to do
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "cannot write the index" in refused.stderr and "--output" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    written = run_json("index", url, "--output", http_root / "idx.h5.lwindex.json")  # the directory it publishes
    assert written["index"] == str(http_root / "idx.h5.lwindex.json")
    http_server.reset()
    with lw.open(url) as ckpt:  # a first open now reads the index, not the file's metadata
        assert len(ckpt.weights) > 0
    assert http_server.count("GET") + http_server.count("HEAD") <= 3
    elsewhere = run_json("index", url, "--output", f"memory://{tmp_path.name}/idx.json")
    assert elsewhere["index"].startswith("memory://")


def test_verify_weights_only_across_formats(keras3_files: dict) -> None:
    """The same model saved as .h5 and .keras: keys differ, weights are equal (Keras's get_weights order)."""
    full = run("verify", keras3_files["h5"], keras3_files["keras"])
    assert full.returncode == 1  # keys and attributes differ
    same = run_json("verify", keras3_files["h5"], keras3_files["keras"], "--weights-only")
    assert same["ok"] is True and same["checked"] == len(keras3_files["values"]), same["differences"]
    assert same["bytes_hashed"] == 2 * sum(v.nbytes for v in keras3_files["values"])


def test_verify_weights_only_finds_a_changed_value(keras3_files: dict, tmp_path: Path) -> None:
    changed = tmp_path / "changed.h5"
    shutil.copy(keras3_files["h5"], changed)
    with h5py.File(changed, "r+") as f:
        names = []
        f["model_weights"].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        victim = f["model_weights"][names[0]]
        victim[...] = victim[...] + 1
    report = run_json("verify", changed, keras3_files["keras"], "--weights-only")
    assert report["ok"] is False
    assert [d["what"] for d in report["differences"]] == ["values"]


def test_verify_takes_storage_options_per_side(http_server, http_root: Path) -> None:
    src = KERAS2 / "cnn_weights.h5"
    shutil.copy(src, http_root / "side.h5")
    url = f"{http_server.url}/side.h5"
    token, local_only = 'headers={"X-Token": "t"}', "auto_mkdir=false"  # HTTP refuses auto_mkdir
    http_server.required_headers = {"X-Token": "t"}
    try:
        assert run("verify", src, url, "-o", token).returncode == 0  # -o is A's and B's
        assert run("verify", src, url, "-o", local_only).returncode == 2  # B gets it too, and refuses it
        b_own = run("verify", src, url, "-o", local_only, "--b-storage-option", token)
        assert b_own.returncode == 0, b_own.stderr
        replaced = run("verify", src, url, "-o", token, "--b-storage-option", "block_size=4096")
        assert replaced.returncode == 2 and "403" in replaced.stderr  # B's own options replace -o
    finally:
        http_server.required_headers = {}


def test_api_and_cli_agree_on_valid_values() -> None:
    path = KERAS2 / "cnn_weights.h5"
    for option, value in (("--concurrency", "0"), ("--max-memory", "0")):
        refused = run("load", path, option, value)
        assert refused.returncode == 2, (option, refused.stdout)
    with pytest.raises(ValueError, match="concurrency"):
        lw.load(path, concurrency=0)
    with pytest.raises(ValueError, match="positive"):
        lw.load(path, max_memory=0)
    assert len(lw.load(path, concurrency=1)) > 0


def test_inspect_lists_layer_classes_only_and_names_rnn_cells(tmp_path: Path) -> None:
    import keras

    model = keras.Sequential([
        keras.Input((5, 3)), keras.layers.LSTM(4, name="lstm_a", return_sequences=True),
        keras.layers.RNN(keras.layers.GRUCell(3), name="rnn_b"), keras.layers.Dense(2, name="head"),
    ])  # fmt: skip
    model.compile(optimizer="adam", loss="mse")
    model.save(tmp_path / "rnn.keras")
    info = run_json("inspect", tmp_path / "rnn.keras")
    with zipfile.ZipFile(tmp_path / "rnn.keras") as archive:
        config = json.loads(archive.read("config.json"))
    assert config["compile_config"]["optimizer"]["class_name"] == "Adam"  # in the file, but no layer
    classes = {la["name"]: la["class_name"] for la in info["layers"]}
    assert classes["layers/lstm/cell"] == "LSTMCell" and classes["layers/rnn/cell"] == "GRUCell"
    assert classes["layers/lstm"] == "LSTM" and classes["layers/dense"] == "Dense"
    assert not {"DTypePolicy", "Adam", "MeanSquaredError", "GlorotUniform"} & set(info["layer_classes"])
    assert set(info["layer_classes"]) == {la["class_name"] for la in info["layers"]}
