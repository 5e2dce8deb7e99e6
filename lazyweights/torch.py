"""PyTorch target: load a checkpoint straight into a ``torch.nn.Module``'s parameters and buffers.

>>> from lazyweights import torch as lwt
>>> report = lwt.load_state_dict(model, "s3://b/model.h5", layout="keras")   # doctest: +SKIP

This module is the facade (opening, broadcasting, the public signature); the
target logic (binding names and layouts, planning, filling and assigning
tensors) is :mod:`lazyweights.targets.torch.target`'s, and reading is the core
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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from .checkpoint import Checkpoint, opened, readahead_limit
from .checkpoint import open as open_checkpoint
from .errors import LazyWeightsError, ObjectChangedError, UnsupportedError, require
from .manifest import Manifest
from .storage import get_source
from .stream.budget import DEFAULT_MAX_MEMORY, parse_bytes
from .stream.plan import STAGED_PART_BYTES
from .stream.progress import ProgressArg
from .targets.shard import ShardArg
from .targets.torch import target
from .targets.torch.target import KeyMapping, ModuleLoadReport, Options, Slot

if TYPE_CHECKING:
    import torch
else:
    torch = require("torch", "torch")  # fails naming the extra to install

__all__ = ["ModuleLoadReport", "load_state_dict"]


def load_state_dict(
    module: torch.nn.Module,
    src: str | os.PathLike[str] | Checkpoint,
    mapping: KeyMapping = None,
    layout: Literal["keras"] | None = None,
    strict: bool = True,
    device: str | torch.device | None = None,
    max_memory: int | str | None = DEFAULT_MAX_MEMORY,
    *,
    assign: bool = False,
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
        listing them; ``strict=False`` returns them in the report, which
        unpacks as ``missing, unexpected = report``.
    assign
        Like torch's ``assign=True``: the module's tensors are replaced by new
        ones (on their own devices) instead of filled in place; tensors on the
        ``meta`` device are always assigned.
    max_memory
        Bound on bytes in flight: ``DEFAULT_MAX_MEMORY`` (256 MiB), as
        ``lw.load`` and ``lwk.load_weights``; None: unbounded.
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
    options = Options(mapping, layout, strict, device, shard, replicated, assign)
    run = dict(max_memory=max_memory, concurrency=concurrency, part_size=part_size, progress=progress)
    if replicated == "broadcast":
        with opened(src, storage_options, opener=_open_shared) as ckpt:
            return _load(module, ckpt, options, run)
    whole = shard is None and not isinstance(src, Checkpoint)  # every weight will be read: read the object whole
    ahead = readahead_limit(max_memory) if whole else None
    with opened(src, storage_options, readahead=ahead) as ckpt:
        try:
            return _load(module, ckpt, options, run)
        finally:
            if ahead:
                ckpt._source.release_whole()


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


def _load(module: torch.nn.Module, ckpt: Checkpoint, options: Options, run: dict[str, Any]) -> ModuleLoadReport:
    names = target.names(ckpt.manifest, ckpt.resolve, options.mapping, options.layout)
    state = module.state_dict(keep_vars=True)
    slots, report = target.bind(module, ckpt.manifest, ckpt.format, names, state, options)
    broadcast = options.replicated == "broadcast"
    reader_rank = not broadcast or _rank() == 0
    materialised = target.materialise(slots, options.device, options.assign)
    part_bytes = parse_bytes(run["part_size"]) or STAGED_PART_BYTES
    groups = [g for s in slots if reader_rank or s.box is not None for g in target.slot_groups(s, part_bytes)]
    ckpt.execute(groups, report, **run)
    target.finish(module, state, materialised, options.layout, options.device)
    if options.shard is not None or broadcast:
        report.replicated = [s.name for s in slots if s.box is None]
    if broadcast:
        report.broadcast = _broadcast([s for s in slots if s.box is None])
    return report


def _rank() -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise UnsupportedError("replicated='broadcast' needs an initialised torch.distributed process group")
    return dist.get_rank()


def _broadcast(slots: list[Slot]) -> list[str]:
    """Send rank 0's replicated tensors to every rank, in the (same) checkpoint order on all ranks."""
    import torch.distributed as dist

    with torch.no_grad():
        for slot in slots:
            dist.broadcast(slot.dest, src=0)
    return [s.name for s in slots]
