"""The PyTorch target's logic: bind checkpoint weights to a module's tensors, plan their reads, fill them.

Pure target code over the stream stage: it sees a manifest (and a key
resolver), builds executor :class:`~lazyweights.stream.Group` s and fills or
assigns tensors; opening checkpoints, running the load and broadcasting
are :mod:`lazyweights.torch`'s (the facade).

- A CPU tensor whose layout matches the file is read into through a numpy view
  of its memory (local files: ``preadv`` straight into the parameter).
- A tensor elsewhere (a GPU) or without memory numpy can share is filled in row
  blocks (:func:`~lazyweights.geometry.row_blocks`, at most ``part_bytes`` each),
  each staged under the budget and copied in.
- A tensor that needs a layout change (Keras kernels) is staged whole, converted
  and copied.
- Tensors on the ``meta`` device are materialised once on ``device`` and
  assigned to the module (like ``load_state_dict(assign=True)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ...errors import MismatchError, ShardError, require
from ...geometry import Box, box_shape, full_box, row_blocks
from ...manifest import Manifest, WeightSpec
from ...stream import Group, LoadReport, Target
from ..shard import FlatPart, ShardArg, shard_region
from .layouts import IDENTITY, Conversion, describe, keras_names

if TYPE_CHECKING:
    import torch
else:
    torch = require("torch", "torch")  # fails naming the extra to install

__all__ = [
    "KeyMapping",
    "ModuleLoadReport",
    "Options",
    "Slot",
    "assign",
    "bind",
    "finish",
    "materialise",
    "names",
    "slot_groups",
]

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

    def __iter__(self) -> Iterator[list[str]]:
        """``missing, unexpected = report``, as torch's ``load_state_dict`` and safetensors' ``load_model``."""
        return iter((self.missing_keys, self.unexpected_keys))


@dataclass
class Slot:
    """One checkpoint weight bound to one module tensor (a shard of it, with ``box``)."""

    spec: WeightSpec
    name: str
    conversion: Conversion
    tensor: torch.Tensor  # the module's current tensor (possibly on meta)
    box: Box | None  # in the tensor's (target) coordinates; None: whole
    dest: torch.Tensor | None = None  # what gets written: ``tensor`` or its materialisation


@dataclass(frozen=True)
class Options:
    mapping: KeyMapping
    layout: str | None
    strict: bool
    device: str | torch.device | None
    shard: ShardArg
    replicated: str
    assign: bool = False


def names(
    manifest: Manifest, resolve: Callable[[str], WeightSpec], mapping: KeyMapping, layout: str | None
) -> dict[str, tuple[str | None, Conversion]]:
    """Checkpoint key → (state-dict name or None to drop, conversion), in topological order."""
    if layout == "keras":
        keras = keras_names(manifest)
        names = {k: (keras[k].name, keras[k].conversion) for k in manifest.keys}
    else:
        names = {k: (k.replace("/", "."), IDENTITY) for k in manifest.keys}
    if callable(mapping):
        return {k: (mapping(k), conv) for k, (_, conv) in names.items()}
    for key, name in (mapping or {}).items():
        canonical = resolve(str(key)).key
        names[canonical] = (name, names[canonical][1])
    return names


def bind(
    module: torch.nn.Module,
    manifest: Manifest,
    fmt: str,
    names: Mapping[str, tuple[str | None, Conversion]],
    state: Mapping[str, torch.Tensor],
    options: Options,
) -> tuple[list[Slot], ModuleLoadReport]:
    """Pair checkpoint weights with module tensors and check every shape before anything is read."""
    url = manifest.url
    report = ModuleLoadReport(url=url, format=fmt)
    slots: list[Slot] = []
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
        spec, tensor = manifest[key], state[name]
        full = conversion.target_shape(spec.shape)
        box = shard_region(options.shard, name, full)
        if isinstance(box, FlatPart):
            raise ShardError(
                f"{url}: {name!r}: a flat shard (Shard(dim=None)) loads 1-D parts into numpy arrays or dask, not "
                "into a module's tensors, which keep their shapes; shard a module along an axis (Shard(dim=k))"
            )
        want = full if box is None else box_shape(box)
        if tuple(tensor.shape) != tuple(want):
            part = "" if box is None else f" (its shard {[(s.start, s.stop) for s in box]} is {want})"
            mismatched.append(
                f"size mismatch for {name!r}: checkpoint weight {key!r} has shape {describe(spec, conversion)}"
                f"{part}, the module's tensor has shape {tuple(tensor.shape)}"
            )
        slots.append(Slot(spec, name, conversion, tensor, box))
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
        raise MismatchError(strict_message(url, module, report, claimed))
    return slots, report


def strict_message(url: str, module: torch.nn.Module, report: ModuleLoadReport, claimed: Mapping[str, str]) -> str:
    lines = [f"{url}: error(s) in loading state_dict for {type(module).__name__}:"]
    if report.missing_keys:
        lines.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in report.missing_keys) + ".")
    if report.unexpected_keys:
        shown = ", ".join(f'"{k}" (checkpoint {claimed[k]!r})' for k in report.unexpected_keys)
        lines.append(f"Unexpected key(s) in state_dict: {shown}.")
    return "\n\t".join(lines)


def materialise(
    slots: list[Slot], device: str | torch.device | None, assign: bool = False
) -> dict[int, torch.Tensor]:
    """Give every slot a real destination; meta tensors get one new tensor each on ``device``.

    With ``assign`` (torch's ``load_state_dict(assign=True)``) every tensor gets a
    new one, on its own device, that replaces it in the module afterwards.
    """
    made: dict[int, torch.Tensor] = {}
    for slot in slots:
        if id(slot.tensor) in made:  # tied names: one tensor
            slot.dest = made[id(slot.tensor)]
        elif slot.tensor.is_meta or assign:
            where = (device or "cpu") if slot.tensor.is_meta else slot.tensor.device
            slot.dest = torch.empty(slot.tensor.shape, dtype=slot.tensor.dtype, device=where)
            made[id(slot.tensor)] = slot.dest
        else:
            slot.dest = slot.tensor.detach()
    return made


def finish(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    made: dict[int, torch.Tensor],
    layout: str | None,
    device: str | torch.device | None,
) -> None:
    """After the reads: start Keras-less batch counters at zero, then put materialised tensors into the module."""
    if layout == "keras":  # Keras keeps no batch counter: start it at zero, as torch does
        for name, t in state.items():
            if name.endswith("num_batches_tracked") and t.is_meta and id(t) not in made:
                made[id(t)] = torch.zeros(t.shape, dtype=t.dtype, device=device or "cpu")
    assign(module, state, made)


def assign(module: torch.nn.Module, state: Mapping[str, torch.Tensor], made: Mapping[int, torch.Tensor]) -> None:
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


def slot_groups(slot: Slot, part_bytes: int) -> list[Group]:
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


def _row_parts(slot: Slot, source_box: Box | None, part_bytes: int) -> list[tuple[Box, int]]:
    """Row blocks of the slot's region of at most ``part_bytes`` (one row at least), with their first row."""
    region = source_box if source_box is not None else full_box(slot.spec.shape)
    first = region[0].start
    blocks = row_blocks(slot.spec.shape, slot.spec.np_dtype.itemsize, part_bytes, box=region)
    return [((slice(r0, r1), *region[1:]), r0 - first) for r0, r1 in blocks]


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
