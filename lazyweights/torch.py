"""PyTorch target: load a checkpoint straight into a ``torch.nn.Module``'s parameters and buffers.

>>> from lazyweights import torch as lwt
>>> report = lwt.load_state_dict(model, "s3://b/model.h5", layout="keras")   # doctest: +SKIP

This module only maps names and layouts and converts; reading is the core
executor's (:mod:`lazyweights.stream`).  A CPU tensor whose layout matches the
file is filled in place through a numpy view of its memory (local files:
``preadv`` straight into the parameter).  A tensor on another device (a GPU)
or without memory numpy can share is filled in row blocks of ``part_size``,
each staged under ``max_memory`` and copied in (host→device per part, from
pageable memory: CUDA stages through its own pinned buffers; not exercised on
this project's GPU-less CI).  A tensor that needs a layout change (Keras
kernels) is staged whole, converted and copied.  No full state dict is ever
built.  With a module on the ``meta`` device, each tensor is materialised once
on ``device`` and assigned to the module (like ``load_state_dict(assign=True)``),
so peak memory is the model plus the budget.

Sharded warm-start: ``shard=lw.Shard(rank, world_size, dim)`` (or a function
of the state-dict name and full target shape) makes each rank read only its
part, in the target's (PyTorch) coordinates; the module's tensors hold that
part.  Tensors read whole are *replicated*: with ``replicated="read"`` every
rank reads them from storage (best when storage bandwidth scales with readers,
as object stores do, and the tensors are small); with
``replicated="broadcast"`` rank 0 reads them (and parses the file's
metadata, once for the job) and ``torch.distributed`` broadcasts them (best
when storage is the bottleneck or billed per byte and the interconnect is
fast).  ``torch`` here is the real PyTorch: this module is
``lazyweights.torch`` and imports ``torch`` absolutely.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .checkpoint import Checkpoint, opened
from .checkpoint import open as open_checkpoint
from .errors import LazyWeightsError, MismatchError, ObjectChangedError, UnsupportedError, require
from .geometry import Box, box_shape
from .manifest import Manifest, WeightSpec
from .storage import get_source
from .stream import Group, LoadReport, Target
from .stream.budget import parse_bytes
from .stream.executor import STAGED_PART_BYTES
from .stream.progress import ProgressArg
from .targets.shard import ShardArg, shard_region
from .targets.torch.layouts import IDENTITY, Conversion, describe, keras_names

if TYPE_CHECKING:
    import torch
else:
    torch = require("torch", "torch")  # fails naming the extra to install

__all__ = ["ModuleLoadReport", "load_state_dict"]

KeyMapping = Mapping[str, str | None] | Callable[[str], str | None] | None


@dataclass
class ModuleLoadReport(LoadReport):
    """A :class:`~lazyweights.LoadReport` plus torch's ``(missing_keys, unexpected_keys)``.

    ``missing_keys`` are state-dict names the checkpoint did not fill;
    ``unexpected_keys`` are mapped checkpoint names the module lacks;
    ``broadcast`` the replicated tensors sent from (or received from) rank 0.
    """

    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    broadcast: list[str] = field(default_factory=list)


@dataclass
class _Slot:
    """One checkpoint weight bound to one module tensor (a shard of it, with ``box``)."""

    spec: WeightSpec
    name: str
    conversion: Conversion
    tensor: torch.Tensor  # the module's current tensor (possibly on meta)
    box: Box | None  # in the tensor's (target) coordinates; None: whole
    dest: torch.Tensor | None = None  # what gets written: ``tensor`` or its materialisation


def load_state_dict(
    module: torch.nn.Module,
    src: str | os.PathLike[str] | Checkpoint,
    mapping: KeyMapping = None,
    layout: Literal["keras"] | None = None,
    strict: bool = True,
    device: str | torch.device | None = None,
    max_memory: int | str | None = "256MiB",
    *,
    shard: ShardArg = None,
    replicated: Literal["read", "broadcast"] = "read",
    storage_options: Mapping[str, Any] | None = None,
    concurrency: int | None = None,
    part_size: int | str | None = None,
    progress: ProgressArg = False,
) -> ModuleLoadReport:
    """Fill ``module``'s parameters and buffers from the checkpoint at ``src``, in place.

    Parameters
    ----------
    mapping
        Checkpoint key → state-dict name: a dict (keys may be unique weight
        names; unlisted keys keep their default name; ``None`` drops a key) or
        a callable (``None``: drop).  Default names are the checkpoint keys
        with ``/`` → ``.``, or under ``layout="keras"`` ``<layer>.<torch name>``
        (``conv.weight``, ``bn.running_var``).
    layout
        ``"keras"`` converts Keras tensors to PyTorch conventions (see
        :mod:`lazyweights.layouts`) and ignores ``num_batches_tracked``, which
        Keras does not keep.
    strict
        Like torch: missing or unexpected names raise :class:`MismatchError`
        listing them; ``strict=False`` returns them in the report.
    device
        Where tensors on the ``meta`` device are materialised (default CPU);
        other tensors are written where they are.
    shard, replicated
        See the module docstring.
    """
    if layout not in (None, "keras"):
        raise UnsupportedError(f"layout {layout!r} is not known; expected None or 'keras'")
    if replicated not in ("read", "broadcast"):
        raise UnsupportedError(f"replicated={replicated!r}; expected 'read' or 'broadcast'")
    options = _Options(mapping, layout, strict, device, shard, replicated)
    run = dict(max_memory=max_memory, concurrency=concurrency, part_size=part_size, progress=progress)
    opener = _open_shared if replicated == "broadcast" else None
    with opened(src, storage_options, opener=opener) as ckpt:
        return _load(module, ckpt, options, run)


@dataclass(frozen=True)
class _Options:
    mapping: KeyMapping
    layout: str | None
    strict: bool
    device: str | torch.device | None
    shard: ShardArg
    replicated: str


def _open_shared(src: str | os.PathLike[str], storage_options: Mapping[str, Any] | None) -> Checkpoint:
    """Rank 0 parses the metadata and broadcasts the manifest; the other ranks only stat the object.

    Parsing walks the HDF5 tree over ranged reads; doing it once per job
    instead of once per rank keeps the job's metadata traffic that of one open.
    If rank 0 cannot open the file, every rank raises (none waits forever).
    """
    import torch.distributed as dist

    shared: list[Any] = [None]
    ckpt, failure = None, None
    if _rank() == 0:
        try:
            ckpt = open_checkpoint(src, storage_options)
            shared[0] = ("manifest", ckpt.manifest.to_json())
        except LazyWeightsError as exc:
            failure, shared[0] = exc, ("error", str(exc))
    dist.broadcast_object_list(shared, src=0)
    if failure is not None:
        raise failure
    if ckpt is not None:
        return ckpt
    kind, payload = shared[0]
    if kind == "error":
        raise LazyWeightsError(f"rank 0 could not open the checkpoint: {payload}")
    manifest = Manifest.from_json(payload)
    source = get_source(os.fspath(src), storage_options)
    if (source.size, source.etag) != (manifest.size, manifest.etag):
        raise ObjectChangedError(
            f"{source.url}: rank 0 opened {manifest.size} bytes (version {manifest.etag!r}) but this rank sees "
            f"{source.size} bytes (version {source.etag!r})"
        )
    return Checkpoint(source, manifest)


def _load(module: torch.nn.Module, ckpt: Checkpoint, options: _Options, run: dict[str, Any]) -> ModuleLoadReport:
    names = _names(ckpt, options.mapping, options.layout)
    state = module.state_dict(keep_vars=True)
    slots, report = _bind(module, ckpt, names, state, options)
    broadcast = options.replicated == "broadcast"
    reader_rank = not broadcast or _rank() == 0
    materialised = _materialise(slots, options.device)
    part_bytes = parse_bytes(run["part_size"]) or STAGED_PART_BYTES
    groups = [g for s in slots if reader_rank or s.box is not None for g in _groups(s, part_bytes)]
    ckpt.execute(groups, report, **run)
    if options.layout == "keras":  # Keras keeps no batch counter: start it at zero, as torch does
        for name, t in state.items():
            if name.endswith("num_batches_tracked") and t.is_meta and id(t) not in materialised:
                materialised[id(t)] = torch.zeros(t.shape, dtype=t.dtype, device=options.device or "cpu")
    _assign(module, state, materialised)
    if options.shard is not None or broadcast:
        report.replicated = [s.name for s in slots if s.box is None]
    if broadcast:
        report.broadcast = _broadcast([s for s in slots if s.box is None])
    return report


def _names(ckpt: Checkpoint, mapping: KeyMapping, layout: str | None) -> dict[str, tuple[str | None, Conversion]]:
    """Checkpoint key → (state-dict name or None to drop, conversion), in topological order."""
    if layout == "keras":
        keras = keras_names(ckpt.manifest)
        names = {k: (keras[k].name, keras[k].conversion) for k in ckpt.manifest.keys}
    else:
        names = {k: (k.replace("/", "."), IDENTITY) for k in ckpt.manifest.keys}
    if callable(mapping):
        return {k: (mapping(k), conv) for k, (_, conv) in names.items()}
    for key, name in (mapping or {}).items():
        canonical = ckpt.resolve(str(key)).key
        names[canonical] = (name, names[canonical][1])
    return names


def _bind(
    module: torch.nn.Module,
    ckpt: Checkpoint,
    names: Mapping[str, tuple[str | None, Conversion]],
    state: Mapping[str, torch.Tensor],
    options: _Options,
) -> tuple[list[_Slot], ModuleLoadReport]:
    """Pair checkpoint weights with module tensors and check every shape before anything is read."""
    url = ckpt.url
    report = ModuleLoadReport(url=url, format=ckpt.format)
    slots: list[_Slot] = []
    claimed: dict[str, str] = {}
    mismatched: list[str] = []
    for key, (name, conversion) in names.items():
        if name is None:
            report.skipped.append((key, "mapped to None"))
            continue
        if name in claimed:
            raise MismatchError(f"{url}: checkpoint weights {claimed[name]!r} and {key!r} both map to {name!r}")
        claimed[name] = key
        if name not in state:
            report.unexpected_keys.append(name)
            report.skipped.append((key, f"no {name!r} in the module"))
            continue
        spec, tensor = ckpt.manifest[key], state[name]
        full = conversion.target_shape(spec.shape)
        box = shard_region(options.shard, name, full)
        want = full if box is None else box_shape(box)
        if tuple(tensor.shape) != tuple(want):
            part = "" if box is None else f" (its shard {[(s.start, s.stop) for s in box]} is {want})"
            mismatched.append(
                f"size mismatch for {name!r}: checkpoint weight {key!r} has shape {describe(spec, conversion)}"
                f"{part}, the module's tensor has shape {tuple(tensor.shape)}"
            )
        slots.append(_Slot(spec, name, conversion, tensor, box))
    if mismatched:
        raise MismatchError(
            f"{url}: error(s) loading state_dict for {type(module).__name__}:\n\t" + "\n\t".join(mismatched)
        )
    loaded = {id(s.tensor) for s in slots}
    report.missing_keys = [
        n
        for n, t in state.items()
        if n not in claimed
        and id(t) not in loaded
        and not (options.layout == "keras" and n.endswith("num_batches_tracked"))
    ]
    if options.strict and (report.missing_keys or report.unexpected_keys):
        raise MismatchError(_strict_message(url, module, report, claimed))
    return slots, report


def _strict_message(url: str, module: torch.nn.Module, report: ModuleLoadReport, claimed: Mapping[str, str]) -> str:
    lines = [f"{url}: error(s) in loading state_dict for {type(module).__name__}:"]
    if report.missing_keys:
        lines.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in report.missing_keys) + ".")
    if report.unexpected_keys:
        shown = ", ".join(f'"{k}" (checkpoint {claimed[k]!r})' for k in report.unexpected_keys)
        lines.append(f"Unexpected key(s) in state_dict: {shown}.")
    return "\n\t".join(lines)


def _materialise(slots: list[_Slot], device: str | torch.device | None) -> dict[int, torch.Tensor]:
    """Give every slot a real destination; meta tensors get one new tensor each on ``device``."""
    made: dict[int, torch.Tensor] = {}
    for slot in slots:
        if slot.tensor.is_meta:
            slot.dest = torch.empty(slot.tensor.shape, dtype=slot.tensor.dtype, device=device or "cpu")
            made[id(slot.tensor)] = slot.dest
        else:
            slot.dest = slot.tensor.detach()
    return made


def _assign(module: torch.nn.Module, state: Mapping[str, torch.Tensor], made: Mapping[int, torch.Tensor]) -> None:
    """Put materialised tensors into the module, once per tensor object (tied names share it)."""
    new_params: dict[int, torch.nn.Parameter] = {}
    for name, old in state.items():
        new = made.get(id(old))
        if new is None:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        if attr in owner._parameters:
            param = new_params.get(id(old))
            if param is None:
                param = new_params[id(old)] = torch.nn.Parameter(new, requires_grad=old.requires_grad)
            owner._parameters[attr] = param
        else:
            owner._buffers[attr] = new


def _groups(slot: _Slot, part_bytes: int) -> list[Group]:
    """How one slot is filled.

    - CPU, contiguous, in the file's layout: read straight into the tensor's memory.
    - In the file's layout but elsewhere (a GPU, a non-contiguous view, a dtype numpy lacks): row
      blocks of at most ``part_bytes`` are staged under the budget and copied in one by one, so
      host memory for a large weight is one part, not the whole weight.
    - A layout conversion (transposes, depthwise): the whole weight is staged, converted, copied.
    """
    source_box = None if slot.box is None else slot.conversion.source_box(slot.box, slot.spec.shape, slot.spec.key)
    view = _numpy_view(slot.dest) if slot.conversion is IDENTITY else None
    if view is not None:
        return [Group([Target(slot.spec, view, source_box)])]
    dest, conversion = slot.dest, slot.conversion
    if conversion is IDENTITY and slot.spec.shape:
        return [_part_group(slot.spec, dest, box, origin) for box, origin in _row_parts(slot, source_box, part_bytes)]

    def copy(arrays: list[np.ndarray]) -> None:
        with torch.no_grad():
            dest.copy_(_to_torch(conversion.apply(arrays[0])))

    return [Group([Target(slot.spec, None, source_box)], on_ready=copy)]


def _row_parts(slot: _Slot, source_box: Box | None, part_bytes: int) -> list[tuple[Box, int]]:
    """Row blocks of the slot's region of at most ``part_bytes`` (one row at least), with their first row."""
    region = source_box if source_box is not None else tuple(slice(0, n) for n in slot.spec.shape)
    row_bytes = slot.spec.np_dtype.itemsize * int(np.prod([s.stop - s.start for s in region[1:]]))
    step = max(1, part_bytes // max(1, row_bytes))
    first, last = region[0].start, region[0].stop
    return [((slice(r, min(r + step, last)), *region[1:]), r - first) for r in range(first, last, step)]


def _part_group(spec: WeightSpec, dest: torch.Tensor, box: Box, origin: int) -> Group:
    rows = slice(origin, origin + box[0].stop - box[0].start)

    def copy(arrays: list[np.ndarray]) -> None:
        with torch.no_grad():
            dest[rows].copy_(_to_torch(arrays[0]))

    return Group([Target(spec, None, box)], on_ready=copy)


def _numpy_view(tensor: torch.Tensor) -> np.ndarray | None:
    """A writable numpy array sharing ``tensor``'s memory, or None when there is none to share."""
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        return None
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    try:
        return tensor.numpy()
    except (TypeError, RuntimeError):  # dtypes numpy lacks (float8, complex32, ...)
        return None


def _to_torch(values: np.ndarray) -> torch.Tensor:
    """A CPU tensor over ``values`` (a copy only where torch cannot share it: bfloat16 views, odd strides)."""
    if values.dtype.name == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(values).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(values)


def _rank() -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise UnsupportedError("replicated='broadcast' needs an initialised torch.distributed process group")
    return dist.get_rank()


def _broadcast(slots: list[_Slot]) -> list[str]:
    """Send rank 0's replicated tensors to every rank, in the (same) checkpoint order on all ranks."""
    import torch.distributed as dist

    with torch.no_grad():
        for slot in slots:
            dist.broadcast(slot.dest, src=0)
    return [s.name for s in slots]
