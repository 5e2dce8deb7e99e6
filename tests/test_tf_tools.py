"""TensorFlow checkpoints from HTTP and S3, and through the tools: mirror, export, the ``inspect`` command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import lazyweights as lw
from lazyweights.cli import cli

from .stores import s3_server
from .test_tf_checkpoint import (
    CHECKPOINTS,
    TF_FIXTURES,
    assert_loaded_matches,
    assert_matches_oracle,
    flip_byte,
    numeric,
    oracle,
)


@pytest.fixture(scope="module")
def s3():
    with s3_server() as store:
        store.bucket("lw-tf", versioned=True)
        yield store


def _upload(kind: str, name: str, s3, http_server, http_root: Path) -> tuple[str, dict | None]:
    """The fixture folder ``name`` on the store ``kind``: its URL and storage options."""
    if kind == "s3":
        fs = s3.fs()
        for f in (TF_FIXTURES / name).iterdir():
            fs.put_file(str(f), f"lw-tf/{name}/{f.name}")
        return f"s3://lw-tf/{name}", s3.options
    shutil.copytree(TF_FIXTURES / name, http_root / f"tf-{name}", dirs_exist_ok=True)
    return f"{http_server.url}/tf-{name}", None


@pytest.mark.parametrize("kind", ["http", "s3"])
@pytest.mark.parametrize("name", CHECKPOINTS)
def test_every_tensor_matches_tensorflow_remotely(kind, name, s3, http_server, http_root):
    url, options = _upload(kind, name, s3, http_server, http_root)
    meta, _ = oracle(name)
    for spelling in (url, f"{url}/{meta['prefix']}"):  # the folder with its pointer, or the prefix
        with lw.open(spelling, options) as ckpt:
            assert ckpt.url == f"{url}/{meta['prefix']}"
            assert_matches_oracle(ckpt, name)
    loaded = lw.load(url, storage_options=options, part_size="1KiB", max_memory="16KiB")
    _, expected = oracle(name)
    assert_loaded_matches(loaded, meta, expected)


def test_http_crc_mismatch_names_the_tensor(http_server, http_root):
    root = Path(shutil.copytree(TF_FIXTURES / "sequential_adam", http_root / "tf-corrupt", dirs_exist_ok=True))
    url = f"{http_server.url}/tf-corrupt"
    key = "layer_with_weights-2/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    with lw.open(url) as ckpt:
        shard = flip_byte(root, ckpt, key)
    with lw.open(url) as ckpt, pytest.raises(lw.LazyWeightsError, match="CRC32C") as err:
        ckpt[key].read()
    assert key in str(err.value) and f"{url}/{shard.name}" in str(err.value)


def test_dask_graph_over_a_tf_checkpoint_pickles(tmp_path):
    import pickle

    with lw.open(TF_FIXTURES / "multishard") as ckpt:
        weights = list(ckpt.weights)
    _, expected = oracle("multishard")
    for weight in weights:
        array = pickle.loads(pickle.dumps(weight.to_dask()))
        assert np.array_equal(array.compute(), expected[weight.key])


@pytest.mark.parametrize("name", ["multishard", "subclassed"])
def test_mirror_of_a_tf_checkpoint(name, tmp_path):
    dst = tmp_path / "m.zarr"
    lw.mirror(TF_FIXTURES / name, dst, chunk_bytes="256B")
    with lw.open(dst) as mirror:
        assert mirror.format == "tf-checkpoint"
        meta, expected = oracle(name)
        for t in numeric(meta):
            value = mirror[t["key"]].read()
            assert np.array_equal(value.view(np.uint16) if t["dtype"] == "bfloat16" else value, expected[t["key"]])


def test_export_of_a_tf_checkpoint(tmp_path):
    manifest = lw.export(TF_FIXTURES / "multishard", tmp_path / "out", optimizer=True)
    _, expected = oracle("multishard")
    assert {e["key"] for e in manifest["weights"]} == set(expected)
    for entry in manifest["weights"]:
        raw = (tmp_path / "out" / entry["file"]).read_bytes()[entry["offset"] : entry["offset"] + entry["nbytes"]]
        value = expected[entry["key"]]
        assert raw == value.astype(value.dtype.newbyteorder("<")).tobytes(), entry["key"]


def test_inspect_shows_object_graph_paths():
    result = CliRunner().invoke(cli, ["inspect", "--json", str(TF_FIXTURES / "subclassed")])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["format"] == "tf-checkpoint"
    layers = {layer["name"]: layer for layer in info["layers"]}
    assert {"encoder/dense1", "blocks/0", "heads/alpha"} <= set(layers)
    paths = {w["path"] for w in layers["encoder/dense1"]["weights"]}
    assert paths == {"encoder/dense1/kernel", "encoder/dense1/bias"}
    assert ["label/.ATTRIBUTES/VARIABLE_VALUE", "string tensor (bytes, not a numeric array)"] in info["skipped"]
    text = CliRunner().invoke(cli, ["inspect", str(TF_FIXTURES / "functional_mobilenetv2")]).output
    assert "layer_with_weights-0" in text and "tf-checkpoint" in text
