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
``replicated="broadcast"`` rank 0 reads them and ``torch.distributed``
broadcasts them, and the ranks open the checkpoint together, each fetching
``1/world_size`` of its metadata (:func:`process_group`) (best
when storage is the bottleneck or billed per byte and the interconnect is
fast).  ``collective=process_group()`` has the ranks open it together with
``replicated="read"`` too.  ``torch`` here is the real PyTorch: this module is
``lazyweights.torch`` and imports ``torch`` absolutely.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from .checkpoint import Checkpoint, opened, readahead_limit
from .errors import UnsupportedError, require
from .storage.collective import Collective
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

__all__ = ["ModuleLoadReport", "ProcessGroup", "load_state_dict", "process_group"]


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
    collective: Collective | None = None,
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
    collective
        The ranks open the checkpoint together (every rank must call this), each fetching
        ``1/world_size`` of its metadata: :func:`process_group`, or any object with ``rank``,
        ``world_size`` and ``all_gather`` (:class:`lazyweights.storage.collective.Collective`).
        ``replicated="broadcast"`` opens this way
        whatever is given (the job's default group if nothing is).
    """
    if layout not in (None, "keras"):
        raise UnsupportedError(f"layout {layout!r} is not known; expected None or 'keras'")
    if replicated not in ("read", "broadcast"):
        raise UnsupportedError(f"replicated={replicated!r}; expected 'read' or 'broadcast'")
    options = Options(mapping, layout, strict, device, shard, replicated, assign)
    run = dict(max_memory=max_memory, concurrency=concurrency, part_size=part_size, progress=progress)
    if replicated == "broadcast" or collective is not None:  # every rank calls this: they open it together
        with opened(src, storage_options, collective=collective or process_group()) as ckpt:
            return _load(module, ckpt, options, run)
    whole = shard is None and not isinstance(src, Checkpoint)  # every weight will be read: read the object whole
    ahead = readahead_limit(max_memory) if whole else None
    with opened(src, storage_options, readahead=ahead) as ckpt:
        try:
            return _load(module, ckpt, options, run)
        finally:
            if ahead:
                ckpt._source.release_whole()


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
    return process_group().rank


class ProcessGroup:
    """A ``torch.distributed`` process group as a lazyweights collective (``lw.open(..., collective=)``).

    ``all_gather`` is ``torch.distributed.all_gather_object``: plain data (the
    metadata bytes each rank fetched, flags) between the ranks of one job.
    """

    def __init__(self, group: Any = None):
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise UnsupportedError(
                "opening a checkpoint together (replicated='broadcast', collective=) needs an initialised "
                "torch.distributed process group"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def all_gather(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out


def process_group(group: Any = None) -> ProcessGroup:
    """The ranks of ``group`` (default: the whole job) as a collective for :func:`lazyweights.open` and
    :func:`lazyweights.load`: each rank of a sharded warm-start then fetches ``1/world_size`` of the metadata."""
    return ProcessGroup(group)


def _broadcast(slots: list[Slot]) -> list[str]:
    """Send rank 0's replicated tensors to every rank, in the (same) checkpoint order on all ranks."""
    import torch.distributed as dist

    with torch.no_grad():
        for slot in slots:
            dist.broadcast(slot.dest, src=0)
    return [s.name for s in slots]
