"""lazyweights.torch: a Keras 3 CNN's file loaded into its hand-written PyTorch twin gives the same outputs."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import lazyweights as lw
from lazyweights import torch as lwt

from .conftest import save_keras_formats


def build_keras_cnn(seed: int = 1):
    """Conv2D, BatchNormalization, DepthwiseConv2D (multiplier 2), Embedding, Dense, LayerNormalization."""
    import keras

    keras.utils.set_random_seed(seed)
    image = keras.Input((10, 10, 3), name="image")
    tokens = keras.Input((5,), dtype="int32", name="tokens")
    x = keras.layers.Conv2D(6, 3, name="conv")(image)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    e = keras.layers.Embedding(20, 4, name="emb")(tokens)
    e = keras.layers.GlobalAveragePooling1D(name="emb_pool")(e)
    x = keras.layers.Concatenate(name="cat")([x, e])
    x = keras.layers.Dense(8, name="fc")(x)
    x = keras.layers.LayerNormalization(name="ln")(x)
    out = keras.layers.Dense(3, name="head")(x)
    model = keras.Model([image, tokens], out, name="cnn")
    rng = np.random.default_rng(seed)  # every value random (BN statistics too), variances positive
    model.set_weights(
        [
            (
                np.abs(rng.standard_normal(w.shape)) + 0.1 if "variance" in w.path else rng.standard_normal(w.shape)
            ).astype("f4")
            for w in model.weights
        ]
    )
    return model


class Twin(torch.nn.Module):
    """The same network written by hand in PyTorch (NCHW; Keras's default epsilons)."""

    def __init__(self, fc_out: int = 8, head: str = "head"):
        super().__init__()
        self.head_name = head
        self.conv = torch.nn.Conv2d(3, 6, 3)
        self.bn = torch.nn.BatchNorm2d(6, eps=1e-3)
        self.dw = torch.nn.Conv2d(6, 12, 3, groups=6)
        self.emb = torch.nn.Embedding(20, 4)
        self.fc = torch.nn.Linear(16, fc_out)
        self.ln = torch.nn.LayerNorm(fc_out, eps=1e-3)
        setattr(self, head, torch.nn.Linear(fc_out, 3))

    def forward(self, image: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(image.permute(0, 3, 1, 2))))
        x = self.dw(x).mean((2, 3))
        e = self.emb(tokens).mean(1)
        return getattr(self, self.head_name)(self.ln(self.fc(torch.cat([x, e], 1))))


@pytest.fixture(scope="module")
def keras_cnn(tmp_path_factory):
    model = build_keras_cnn()
    paths = save_keras_formats(model, tmp_path_factory.mktemp("torch"), "cnn")
    rng = np.random.default_rng(7)
    image = rng.standard_normal((4, 10, 10, 3)).astype("f4")
    tokens = rng.integers(0, 20, (4, 5)).astype("int32")
    expected = np.asarray(model([image, tokens], training=False).detach().cpu())
    return {**paths, "inputs": (image, tokens), "expected": expected}


def _outputs(twin: Twin, inputs) -> np.ndarray:
    image, tokens = inputs
    with torch.no_grad():
        return twin.eval()(torch.from_numpy(image), torch.from_numpy(tokens).long()).numpy()


@pytest.mark.parametrize("kind", ["weights", "keras", "h5"])
@pytest.mark.parametrize("on_meta", [False, True], ids=["cpu", "meta"])
def test_keras_cnn_into_torch_twin(keras_cnn, kind, on_meta) -> None:
    with torch.device("meta" if on_meta else "cpu"):
        twin = Twin()
    report = lwt.load_state_dict(twin, keras_cnn[kind], layout="keras", max_memory="1MiB")
    assert not any(t.is_meta for t in twin.state_dict().values())
    assert report.missing_keys == [] and report.unexpected_keys == []
    assert len(report.loaded) == 15
    np.testing.assert_allclose(_outputs(twin, keras_cnn["inputs"]), keras_cnn["expected"], atol=1e-5, rtol=1e-5)


def test_in_place_writes_keep_parameter_objects(keras_cnn) -> None:
    twin = Twin()
    params = {n: (p, p.data_ptr()) for n, p in twin.named_parameters()}
    lwt.load_state_dict(twin, keras_cnn["weights"], layout="keras")
    for name, p in twin.named_parameters():
        assert p is params[name][0] and p.data_ptr() == params[name][1], name  # filled, not replaced
    with lw.open(keras_cnn["weights"]) as ckpt:
        kernel = ckpt["layers/conv2d/vars/0"].read()
    np.testing.assert_array_equal(twin.conv.weight.detach().numpy(), kernel.transpose(3, 2, 0, 1))


def test_mapping_dict_and_callable(keras_cnn) -> None:
    twin = Twin(head="classifier")
    mapping = {"head/head/kernel": "classifier.weight", "head/head/bias": "classifier.bias"}
    lwt.load_state_dict(twin, keras_cnn["h5"], mapping=mapping, layout="keras")
    np.testing.assert_allclose(_outputs(twin, keras_cnn["inputs"]), keras_cnn["expected"], atol=1e-5, rtol=1e-5)

    twin = Twin()
    report = lwt.load_state_dict(
        twin, keras_cnn["weights"], mapping=lambda key: None if "dense" in key else key, layout="keras", strict=False
    )
    assert {k for k, why in report.skipped if why == "mapped to None"} == {
        "layers/dense/vars/0", "layers/dense/vars/1", "layers/dense_1/vars/0", "layers/dense_1/vars/1",
    }  # fmt: skip
    assert "fc.weight" in report.missing_keys and "head.bias" in report.missing_keys


def test_missing_and_unexpected_keys_listed(keras_cnn) -> None:
    class Other(Twin):
        def __init__(self):
            super().__init__()
            del self.head
            self.extra = torch.nn.Linear(2, 2)

    with pytest.raises(lw.MismatchError) as info:
        lwt.load_state_dict(Other(), keras_cnn["weights"], layout="keras")
    message = str(info.value)
    assert str(keras_cnn["weights"]) in message and "Other" in message
    assert 'Missing key(s) in state_dict: "extra.weight", "extra.bias".' in message
    assert "\"head.weight\" (checkpoint 'layers/dense_1/vars/0')" in message
    report = lwt.load_state_dict(Other(), keras_cnn["weights"], layout="keras", strict=False)
    assert report.missing_keys == ["extra.weight", "extra.bias"]
    assert report.unexpected_keys == ["head.weight", "head.bias"]


def test_shape_mismatch_after_layout_names_both_sides(keras_cnn) -> None:
    twin = Twin(fc_out=9)
    before = twin.conv.weight.detach().clone()
    with pytest.raises(lw.MismatchError) as info:
        lwt.load_state_dict(twin, keras_cnn["weights"], layout="keras")
    message = str(info.value)
    assert "'fc.weight'" in message and "'layers/dense/vars/0'" in message
    assert "(16, 8) → (8, 16) [dense]" in message and "(9, 16)" in message
    assert torch.equal(twin.conv.weight, before)  # checked before anything was read


def test_unknown_layout_refused(keras_cnn) -> None:
    with pytest.raises(lw.UnsupportedError, match="layout 'tf'"):
        lwt.load_state_dict(Twin(), keras_cnn["weights"], layout="tf")


def test_torch_layout_file_dtypes_and_buffers(tmp_path) -> None:
    """A file written from a torch state dict loads by name, casting to each tensor's dtype (bfloat16 too)."""
    source = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4))
    with torch.no_grad():
        for t in source.state_dict().values():
            t.copy_(torch.randn(t.shape) if t.is_floating_point() else torch.tensor(3))
    path = tmp_path / "state.h5"
    with h5py.File(path, "w") as f:
        for name, t in source.state_dict().items():
            f[name.replace(".", "/")] = t.numpy()
    target = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4)).to(torch.bfloat16)
    report = lwt.load_state_dict(target, path)
    assert report.missing_keys == [] and len(report.loaded) == 7
    for name, t in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], t.to(torch.bfloat16)), name


@pytest.mark.parametrize("dim", [0, 1])
def test_shard_through_layout_transform(keras_cnn, dim) -> None:
    """A torch-coordinates shard of a transposed Keras kernel reads the matching box of the file."""
    full = Twin()
    lwt.load_state_dict(full, keras_cnn["weights"], layout="keras")
    mapping = {"layers/dense/vars/0": "weight", "layers/dense/vars/1": "bias"}
    for rank in range(3):
        shard = lw.Shard(rank, 3, dim=dim)
        rows = torch.chunk(full.fc.weight, 3, dim=dim)[rank]
        part = torch.nn.Linear(rows.shape[1], rows.shape[0], device="meta")
        report = lwt.load_state_dict(part, keras_cnn["weights"], mapping=mapping, layout="keras", strict=False,
                                     shard=shard)  # fmt: skip
        assert torch.equal(part.weight, rows)
        bias = torch.chunk(full.fc.bias, 3)[rank] if dim == 0 else full.fc.bias
        assert torch.equal(part.bias, bias)
        assert report.replicated == ([] if dim == 0 else ["bias"])


def test_flat_shards_are_refused_for_modules(keras_cnn) -> None:
    with pytest.raises(lw.ShardError, match=r"'conv.weight': a flat shard \(Shard\(dim=None\)\) loads 1-D parts"):
        lwt.load_state_dict(Twin(), keras_cnn["weights"], layout="keras", shard=lw.Shard(0, 2, dim=None))


def test_broadcast_needs_a_process_group(keras_cnn) -> None:
    with pytest.raises(lw.UnsupportedError, match=r"initialised torch\.distributed process group"):
        lwt.load_state_dict(Twin(), keras_cnn["weights"], layout="keras", replicated="broadcast")
    with pytest.raises(lw.UnsupportedError, match="replicated='all'"):
        lwt.load_state_dict(Twin(), keras_cnn["weights"], layout="keras", replicated="all")


@pytest.mark.parametrize("shard", [None, lw.Shard(1, 3)])
def test_tensors_without_shared_memory_are_filled_part_by_part(tmp_path, shard) -> None:
    """A destination numpy cannot write into (here a non-contiguous view; on a GPU, device memory) is
    filled in row blocks staged under the budget, never the whole weight at once."""
    path = tmp_path / "big.h5"
    values = np.arange(3000 * 256, dtype="f4").reshape(3000, 256)  # 3 MiB
    with h5py.File(path, "w") as f:
        f["w"] = values
    rows = slice(None) if shard is None else slice(1000, 2000)
    module = torch.nn.Module()
    module.w = torch.nn.Parameter(torch.zeros(256, values[rows].shape[0]).t())  # transposed view: not contiguous
    assert not module.w.is_contiguous()
    report = lwt.load_state_dict(module, path, part_size="256KiB", max_memory="512KiB", shard=shard)
    np.testing.assert_array_equal(module.w.detach().numpy(), values[rows])
    assert report.peak_in_flight <= 512 << 10 < values[rows].nbytes  # never the whole weight in host memory
    assert report.requests >= values[rows].nbytes // (256 << 10)


def test_report_unpacks_and_strict_assign_are_torchs(keras_cnn) -> None:
    """``missing, unexpected = report``, and ``strict``/``assign`` as ``torch.nn.Module.load_state_dict`` has them."""
    import inspect

    ours = inspect.signature(lwt.load_state_dict).parameters
    theirs = inspect.signature(torch.nn.Module.load_state_dict).parameters
    for name in ("strict", "assign"):
        assert ours[name].default == theirs[name].default, name

    class Other(Twin):
        def __init__(self):
            super().__init__()
            del self.head
            self.extra = torch.nn.Linear(2, 2)

    missing, unexpected = lwt.load_state_dict(Other(), keras_cnn["weights"], layout="keras", strict=False)
    expected = Other().load_state_dict(Twin().state_dict(), strict=False)  # the oracle: torch on the same names
    assert (missing, unexpected) == (expected.missing_keys, expected.unexpected_keys)


def test_assign_replaces_the_modules_tensors(keras_cnn) -> None:
    twin = Twin()
    twin.fc.weight.requires_grad_(False)
    before = {n: p for n, p in twin.named_parameters()}
    lwt.load_state_dict(twin, keras_cnn["keras"], layout="keras", assign=True)
    for name, p in twin.named_parameters():
        assert p is not before[name], name  # assigned, like torch's assign=True
        assert p.requires_grad == before[name].requires_grad, name
    np.testing.assert_allclose(_outputs(twin, keras_cnn["inputs"]), keras_cnn["expected"], atol=1e-5, rtol=1e-5)


def test_one_default_budget_for_the_three_loaders() -> None:
    import inspect

    from lazyweights import keras as lwk
    from lazyweights.stream.budget import DEFAULT_MAX_MEMORY

    for fn in (lw.load, lwk.load_weights, lwk.load_model, lwt.load_state_dict):
        assert inspect.signature(fn).parameters["max_memory"].default == DEFAULT_MAX_MEMORY, fn
    assert lw.parse_bytes(DEFAULT_MAX_MEMORY) == 256 << 20
