"""The user-facing objects: :func:`open` a checkpoint, look at its :class:`Weight` s, :func:`load` them."""

from __future__ import annotations

import builtins
import contextlib
import difflib
import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import formats, geometry
from .errors import MissingKeyError, PartialLoadError, ShardError
from .formats.index import INDEX_SUFFIX, has_cached, load_manifest
from .manifest import Manifest, WeightSpec
from .read import dask as lazy
from .storage import Prefetch, Source, release_source
from .storage.collective import Collective, SharedReads
from .stream import Group, LoadReport, Target, execute
from .stream.budget import DEFAULT_MAX_MEMORY, allocate, parse_bytes
from .stream.progress import ProgressArg, progress_callback
from .targets.numpy import plan_numpy
from .targets.shard import Shard, ShardArg
from .targets.torch.layouts import keras_names

__all__ = ["Checkpoint", "Layer", "LoadedWeights", "Weight", "load", "open", "opened"]

Url = str | os.PathLike[str]


class Weight:
    """One weight of an open checkpoint: metadata now, values on :meth:`read` or :meth:`to_dask`."""

    def __init__(self, source: Source, spec: WeightSpec):
        self._source = source
        self.spec = spec

    key = property(lambda self: self.spec.key, doc="Unique key: the dataset path under the weights root.")
    layer = property(lambda self: self.spec.layer, doc="The layer this weight belongs to.")
    name = property(lambda self: self.spec.name, doc="The weight's name as the file records it.")
    shape = property(lambda self: self.spec.shape)
    dtype = property(lambda self: self.spec.np_dtype)
    nbytes = property(lambda self: self.spec.nbytes)
    ndim = property(lambda self: len(self.spec.shape))

    def read(self, index: Any = ()) -> np.ndarray:
        """The values (or those at ``index``, reading only the bytes its box covers) as a numpy array.

        Runs through the executor like every other read, so it is length-checked
        and ends by checking that the object did not change.
        """
        box, rest = geometry.normalize_index(index, self.spec.shape)
        out = allocate(geometry.box_shape(box), self.spec.np_dtype, f"{self._source.url}: weight {self.key!r}")
        report = LoadReport(url=self._source.url, format="")
        try:
            execute(self._source, [Group([Target(self.spec, out, box)])], max_memory=None, report=report)
        except PartialLoadError as exc:  # ``out`` is ours and discarded: the read's own error is the one to raise
            raise exc.__cause__ from None
        return out[rest]

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.read(index)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        values = self.read()
        return values if dtype is None else values.astype(dtype)

    def to_dask(self, chunks: Any = None, block_bytes: int = geometry.ROW_BLOCK_BYTES) -> Any:
        """A lazy dask array; computing a slice reads only the bytes it needs."""
        token = (self._source.url, self._source.size, self._source.etag, self.key)
        return lazy.to_dask(self, token, chunks=chunks, block_bytes=block_bytes)

    def __repr__(self) -> str:
        return f"<Weight {self.key!r} shape={self.shape} dtype={self.spec.dtype}>"


@dataclass(frozen=True)
class Layer:
    """A layer of an open checkpoint with its weights in the file's order."""

    name: str
    weights: tuple[Weight, ...]
    alias: str | None = None


class Checkpoint:
    """An open checkpoint: its manifest plus a source to read from.  Use as a context manager."""

    def __init__(self, source: Source, manifest: Manifest):
        self._source = source
        self.manifest = manifest.bound(source.read)  # a large attribute (a model config) is read when asked for
        self._weights = {s.key: Weight(source, s) for s in (*manifest.weights, *manifest.optimizer)}
        self._by_name: dict[str, list[str]] = {}
        for spec in manifest.weights:
            self._by_name.setdefault(spec.name, []).append(spec.key)
        for short, key in _layer_names(manifest):
            if short not in manifest:
                self._by_name.setdefault(short, []).append(key)

    # -- description ----------------------------------------------------------

    url = property(lambda self: self.manifest.url)
    source = property(lambda self: self._source, doc="The storage source the weights are read from.")
    format = property(
        lambda self: self.manifest.format,
        doc="'keras-h5', 'keras-v3', 'keras-zip', 'hdf5' or 'zarr' (a lazyweights mirror reports its source's).",
    )
    attrs = property(
        lambda self: self.manifest.attrs,
        doc="The root attributes (read-only); a large one (a model config) is read the first time it is asked for.",
    )
    nbytes = property(lambda self: self.manifest.nbytes)

    @property
    def weights(self) -> list[Weight]:
        """Model weights in topological order (that of Keras's ``model.get_weights()``)."""
        return [self._weights[s.key] for s in self.manifest.weights]

    @property
    def layers(self) -> list[Layer]:
        """Layers in the file's order, layers without weights included where the file lists them."""
        return [Layer(la.name, tuple(self._weights[k] for k in la.keys), la.alias) for la in self.manifest.layers]

    @property
    def optimizer_weights(self) -> list[Weight]:
        return [self._weights[s.key] for s in self.manifest.optimizer]

    @property
    def model_config(self) -> Any:
        return self.manifest.attrs.get("model_config")

    @property
    def training_config(self) -> Any:
        return self.manifest.attrs.get("training_config")

    def keys(self) -> list[str]:
        return self.manifest.keys

    def layer(self, name: str) -> Layer:
        """The layer called ``name``: its path in the file, or its own name (a Keras 3 layer's ``alias``).

        Keras 3 paths follow class order, not names: the layer a user called
        ``dense_1`` may be stored at ``layers/dense``, so the path is tried
        first, then the layer's own name.  A name that several layers carry
        raises :class:`MissingKeyError` listing them.
        """
        layers = self.layers
        found = (
            [la for la in layers if la.name == name]
            or [la for la in layers if la.alias == name]
            or [la for la in layers if la.alias is None and la.name.rsplit("/", 1)[-1] == name]
        )
        if len(found) == 1:
            return found[0]
        if found:
            raise MissingKeyError(f"{self.url}: {name!r} names {len(found)} layers {[la.name for la in found]}")
        close = difflib.get_close_matches(name, [la.alias or la.name for la in layers], n=3)
        raise MissingKeyError(f"{self.url}: no layer {name!r}" + (f"; close: {close}" if close else ""))

    def resolve(self, key: str) -> WeightSpec:
        """The spec for a key, or for a name only one weight has.

        Names: the weight's own (``dense_1/kernel:0`` in a Keras 2 file), and in
        Keras 3 files ``<layer name>/<variable>`` (``dense_1/kernel``, where the
        layer's class tells the variable's role) or ``<layer name>/<index>``.
        """
        if key in self.manifest:
            return self.manifest[key]
        matches = self._by_name.get(key, [])
        if len(matches) == 1:
            return self.manifest[matches[0]]
        if matches:
            raise MissingKeyError(f"{self.url}: {key!r} names {len(matches)} weights {matches}; use a full key")
        return self.manifest[key]  # raises with close matches

    def __getitem__(self, key: str) -> Weight:
        return self._weights[self.resolve(key).key]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (key in self.manifest or len(self._by_name.get(key, [])) == 1)

    def __iter__(self) -> Iterator[Weight]:
        return iter(self.weights)

    def __len__(self) -> int:
        return len(self.manifest.weights)

    def __repr__(self) -> str:
        return (
            f"<Checkpoint {self.url!r} format={self.format} layers={len(self.manifest.layers)} "
            f"weights={len(self)} bytes={self.nbytes}>"
        )

    # -- loading ----------------------------------------------------------------

    def load(
        self,
        out: Mapping[str, Any] | Sequence[Any] | None = None,
        *,
        max_memory: int | str | None = DEFAULT_MAX_MEMORY,
        concurrency: int | None = None,
        part_size: int | str | None = None,
        progress: ProgressArg = False,
        shard: ShardArg = None,
    ) -> LoadedWeights | LoadReport:
        """See :func:`lazyweights.load`."""
        groups, arrays, skipped = plan_numpy(self.url, self.manifest.weights, self.resolve, out, shard)
        report = LoadReport(url=self.url, format=self.format, skipped=skipped)
        if shard is not None:
            report.replicated = [t.spec.key for g in groups for t in g.targets if t.box is None]
        try:
            self.execute(
                groups, report, max_memory=max_memory, concurrency=concurrency, part_size=part_size, progress=progress
            )
        except PartialLoadError as exc:
            if arrays is None:
                raise
            raise exc.__cause__ from None  # the arrays were ours and are discarded: nothing of the caller's changed
        if arrays is None:
            return report
        return LoadedWeights(arrays, report)

    def execute(
        self,
        groups: Sequence[Group],
        report: LoadReport,
        *,
        max_memory: int | str | None = DEFAULT_MAX_MEMORY,
        concurrency: int | None = None,
        part_size: int | str | None = None,
        progress: ProgressArg = False,
    ) -> LoadReport:
        """Run a target's executor groups against this checkpoint's storage, with a progress display.

        The one entry point every target (numpy, torch, keras) loads through.
        """
        total = sum(t.nbytes for g in groups for t in g.targets)
        with progress_callback(progress, total, f"loading {os.path.basename(str(self.url)) or self.url}") as cb:
            execute(
                self._source,
                groups,
                max_memory=parse_bytes(max_memory),
                concurrency=concurrency,
                part_bytes=parse_bytes(part_size),
                progress=cb,
                report=report,
            )
        return report

    # -- lifetime -----------------------------------------------------------------

    def close(self) -> None:
        """Release this checkpoint's open file handles (dask graphs reopen on demand)."""
        release_source(self._source)

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _layer_names(manifest: Manifest) -> Iterator[tuple[str, str]]:
    """Keras 3 files number their variables (``layers/dense_1/vars/0``): yield ``dense_1/kernel`` and
    ``dense_1/0`` style names for them, from each layer's own name and the variable's role."""
    if manifest.format not in ("keras-v3", "keras-zip"):
        return
    roles = keras_names(manifest)
    for layer in manifest.layers:
        short = layer.alias or layer.name.rsplit("/", 1)[-1]
        for i, key in enumerate(layer.keys):
            yield f"{short}/{i}", key
            role = roles[key].role if key in roles else None
            if role:
                yield f"{short}/{role}", key


class LoadedWeights(dict):
    """The dict ``load()`` returns when it allocates the arrays: key → array, plus ``.report``."""

    def __init__(self, arrays: Mapping[str, np.ndarray], report: LoadReport):
        super().__init__(arrays)
        self.report = report


def open(
    url: Url,
    storage_options: Mapping[str, Any] | None = None,
    *,
    index: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    readahead: int | str | None = None,
    collective: Collective | None = None,
) -> Checkpoint:
    """Open a checkpoint at any fsspec URL or local path; reads metadata only (unless ``readahead``).

    Parameters
    ----------
    url
        A local path, ``file://``, ``memory://``, ``http(s)://``, ``s3://``,
        ``gs://`` or chained (``simplecache::s3://...``) URL.
    storage_options
        Passed to fsspec unchanged (endpoint, credentials, ``anon``,
        ``requester_pays``, ...).
    index
        For remote checkpoints, use a metadata index when a valid one exists
        (the local cache, or ``<file>.lwindex.json`` next to the file, see
        :func:`lazyweights.write_index`) and cache the manifest after parsing.
        An index whose size/ETag/version differ from the object's is ignored.
    cache_dir
        Where manifests of remote checkpoints are cached
        (default ``~/.cache/lazyweights/index``).
    readahead
        For a caller about to read nearly every byte: a remote object of at
        most this size ("128MiB", bytes) is read whole at open, in 16
        concurrent ranged GETs after the first, and its metadata and weights
        are then read from memory, until the checkpoint closes or a load
        needs the room (the copy counts in its ``max_memory``).
        :func:`load` does this for a full load of a URL.
    collective
        The ranks of a distributed job opening the same checkpoint together
        (:func:`lazyweights.torch.process_group`, or any object with
        ``rank``, ``world_size`` and ``all_gather``): every rank must call
        ``open`` alike.  A remote object's metadata reads are split among
        the ranks and exchanged, so the job fetches the metadata about once
        and each rank about ``1/world_size`` of it (the cold open of a sharded
        warm-start).  No read-ahead; an index is used only if every rank has one.
    """
    url = os.fspath(url)
    # the first round: the head with the stat, the index next to the file; a manifest cached locally
    # for this URL needs only a stat, if the object has not changed
    whole = parse_bytes(readahead) or 0
    if collective is not None:  # a plain stat: the ranks fetch the head together
        prefetch = None
    elif index and has_cached(url, cache_dir):
        prefetch = Prefetch(whole=whole) if whole else None
    else:
        prefetch = Prefetch(siblings=(INDEX_SUFFIX,) if index else (), whole=whole)
    source, tf_prefix = formats.open_source(url, storage_options, prefetch)
    try:
        parse = functools.partial(formats.parse, tf_prefix=tf_prefix)
        if collective is None or source.is_local:
            manifest = load_manifest(source, parse, use_index=index, cache_dir=cache_dir)
        else:
            agree = functools.partial(_all_agree, collective)
            shared = SharedReads(source, collective)
            manifest = load_manifest(shared, parse, use_index=index, cache_dir=cache_dir, agree=agree)  # type: ignore[arg-type]
            shared.hand_over()
    except BaseException:
        release_source(source)
        raise
    return Checkpoint(source, manifest)


def _all_agree(collective: Collective, found: bool) -> bool:
    return all(collective.all_gather(bool(found)))


@contextlib.contextmanager
def opened(
    src: Url | Checkpoint,
    storage_options: Mapping[str, Any] | None = None,
    **open_kwargs: Any,
) -> Iterator[Checkpoint]:
    """Yield ``src`` if it is already a Checkpoint (and leave it open), else :func:`open` it and close it on exit."""
    if isinstance(src, Checkpoint):
        yield src
        return
    with open(src, storage_options, **open_kwargs) as ckpt:
        yield ckpt


def load(
    src: Url | Checkpoint,
    out: Mapping[str, Any] | Sequence[Any] | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    max_memory: int | str | None = DEFAULT_MAX_MEMORY,
    concurrency: int | None = None,
    part_size: int | str | None = None,
    progress: ProgressArg = False,
    shard: ShardArg = None,
    index: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    readahead: bool = True,
    collective: Collective | None = None,
) -> LoadedWeights | LoadReport:
    """Load a checkpoint's weights into memory.

    With ``out=None`` returns a :class:`LoadedWeights` dict (key → new array,
    topological order, ``.report`` attached).  With ``out`` a dict (filled by
    key; keys may be unique weight names) or a list (filled by position, like
    ``set_weights``), writes in place and returns the :class:`LoadReport`.
    Every destination is checked before anything is read.

    ``max_memory`` ("256MiB", bytes, or None for unlimited; default
    ``DEFAULT_MAX_MEMORY``, 256 MiB, the same as ``lwk.load_weights`` and
    ``lwt.load_state_dict``) bounds the bytes held in flight beyond the
    destination arrays; ``concurrency`` is the
    number of reads in flight (default: 2 x cores locally, 16 remotely);
    ``progress=True`` shows a progress bar, or pass a callable taking byte
    increments.

    ``shard`` (a :class:`~lazyweights.Shard` or a function ``(key, shape) ->
    Shard | tuple of slices | None``) makes this process read only its part of
    each weight; arrays (and ``out`` destinations) then have the part's shape,
    and weights read whole are listed in ``report.replicated``.  ``index`` and
    ``cache_dir`` are :func:`open`'s.

    ``readahead``: a full load of a URL (no ``shard``, ``out`` not a dict)
    reads a remote object of at most 3/4 of ``max_memory`` whole, in 16
    concurrent ranged GETs, and walks and loads it from memory: Keras
    interleaves metadata with weights, so reading by range costs a request per
    layer or so, more than the whole object's transfer.  The copy counts in
    ``max_memory`` and is dropped after the load.  ``readahead=False`` reads
    only metadata, then the weights' ranges.

    ``collective``: the ranks of a sharded warm-start open the checkpoint
    together (see :func:`open`), each fetching about ``1/world_size`` of its
    metadata; with ``shard`` a :class:`~lazyweights.Shard`, its rank and
    world size must be the collective's.
    """
    kwargs = dict(max_memory=max_memory, concurrency=concurrency, part_size=part_size, progress=progress, shard=shard)
    _check_collective(shard, collective)
    whole = readahead and shard is None and not isinstance(out, Mapping) and not isinstance(src, Checkpoint)
    ahead = readahead_limit(max_memory) if whole and collective is None else None
    opening = dict(index=index, cache_dir=cache_dir, readahead=ahead, collective=collective)
    with opened(src, storage_options, **opening) as ckpt:
        try:
            return ckpt.load(out, **kwargs)
        finally:
            if ahead:
                ckpt._source.release_whole()


def _check_collective(shard: ShardArg, collective: Collective | None) -> None:
    """A Shard's rank and world size must be the collective's: each rank's part is then its own."""
    if collective is None or not isinstance(shard, Shard):
        return
    if (shard.rank, shard.world_size) != (collective.rank, collective.world_size):
        raise ShardError(
            f"the shard is rank {shard.rank} of {shard.world_size} but the collective opening the checkpoint "
            f"is rank {collective.rank} of {collective.world_size}"
        )


READAHEAD_UNLIMITED = 1 << 30  # the read-ahead limit of a load with max_memory=None


def readahead_limit(max_memory: int | str | None) -> int:
    """The largest object a full load reads whole: three quarters of its budget (the copy counts in it;
    the rest bounds the load's parts)."""
    budget = parse_bytes(max_memory)
    return READAHEAD_UNLIMITED if budget is None else budget * 3 // 4


_ = builtins  # `open` above shadows the builtin inside this module on purpose
