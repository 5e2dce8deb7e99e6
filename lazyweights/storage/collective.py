"""Metadata read once per job: the ranks of a distributed job share the reads of an open.

Every rank of a sharded warm-start opens the same checkpoint, and an open's
metadata reads are a deterministic function of the object's bytes: the HDF5
walk asks for the same ranges, level after level, on every rank.  So instead
of each rank fetching all of them, :class:`SharedReads` splits each batch of
reads by bytes among the ranks (rank ``r`` fetches the ``r``-th ``1/W`` of
the batch's bytes, so a batch adds at most ``W - 1`` split requests), and the
ranks exchange what they fetched with one ``all_gather`` per batch.  The job
then fetches the metadata about once, and each rank about ``1/W`` of it.

The ranks must run the same open in lockstep: every shared read is a
collective call.  Reads that are not shared (an h5py fallback's, a store
member's) stay per rank.  A storage failure on any rank is shared too, so
every rank raises instead of waiting for the others.

A :class:`Collective` is anything with ``rank``, ``world_size`` and
``all_gather(obj) -> list`` (one entry per rank, in rank order):
:func:`lazyweights.torch.process_group` adapts ``torch.distributed``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from typing import Any, Protocol

from ..errors import LazyWeightsError, ObjectChangedError, StorageError
from .files import MetadataFile
from .source import TAIL_BYTES, Source

__all__ = ["Collective", "SharedReads", "byte_shares"]


class Collective(Protocol):
    """The ranks of a job, and an all-gather among them (of plain data: bytes, str, ints, tuples)."""

    rank: int
    world_size: int

    def all_gather(self, obj: Any) -> list[Any]: ...


def byte_shares(ranges: Sequence[tuple[int, int]], rank: int, world: int) -> list[tuple[int, int]]:
    """Rank ``rank``'s pieces of ``ranges`` (``(offset, length)``): the ``rank``-th of ``world`` equal parts
    of their bytes, taken in order, so the ranks' pieces concatenated in rank order are the ranges' bytes."""
    total = sum(n for _, n in ranges)
    lo, hi = total * rank // world, total * (rank + 1) // world
    out, at = [], 0
    for off, n in ranges:
        a, b = max(lo, at), min(hi, at + n)
        if a < b:
            out.append((off + a - at, b - a))
        at += n
    return out


class SharedReads:
    """``source`` as a metadata parser sees it, with its reads shared among the ranks of ``collective``.

    ``head``, ``tail``, ``fetch_ends``, ``readinto_many`` and the reads of
    :meth:`open_file` are collective (see the module docstring); everything
    else is the source's.  The ranks first check that they opened the same
    object version: :class:`~lazyweights.errors.ObjectChangedError` otherwise.
    """

    def __init__(self, source: Source, collective: Collective):
        self._source, self._collective = source, collective
        self._head: bytes | None = None
        self._tail: bytes | None = None
        pins = collective.all_gather((source.size, source.etag))
        if any(pin != pins[collective.rank] for pin in pins):
            raise ObjectChangedError(
                f"{source.url}: the ranks opened different versions of the object "
                f"((size, version) by rank: {pins}); it changed while the job opened it"
            )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    # -- collective reads ---------------------------------------------------------

    def read_shared(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each ``(offset, length)``: this rank fetches its share, then all ranks exchange."""
        mine = byte_shares(ranges, self._collective.rank, self._collective.world_size)
        bufs = [bytearray(n) for _, n in mine]
        asked = hashlib.sha256(repr(list(ranges)).encode()).hexdigest()
        failure: BaseException | None = None
        try:
            self._source.readinto_many([(off, memoryview(b)) for (off, _), b in zip(mine, bufs, strict=True)], 0)
            payload: Any = ("ok", asked, b"".join(bufs))
        except (LazyWeightsError, OSError) as exc:
            failure, payload = exc, ("error", asked, f"{type(exc).__name__}: {exc}")
        gathered = self._collective.all_gather(payload)
        if failure is not None:
            raise failure
        for rank, (kind, theirs, data) in enumerate(gathered):
            if kind != "ok":
                raise StorageError(f"{self._source.url}: rank {rank} could not read its share of the metadata: {data}")
            if theirs != asked:  # never assemble pieces of different reads
                raise StorageError(
                    f"{self._source.url}: rank {rank} asked for other metadata ranges than rank "
                    f"{self._collective.rank} in the same shared read: the ranks must open the same object alike"
                )
        joined = b"".join(data for _, _, data in gathered)
        if len(joined) != sum(n for _, n in ranges):
            raise StorageError(
                f"{self._source.url}: the ranks fetched {len(joined)} bytes of metadata, "
                f"expected {sum(n for _, n in ranges)}"
            )
        out, at = [], 0
        for _, n in ranges:
            out.append(joined[at : at + n])
            at += n
        return out

    def hand_over(self) -> None:
        """Give the source the head and tail the ranks fetched together (pinned: every rank read its share of
        the version all of them opened), so a load's reads inside them cost nothing, as after a plain open."""
        self._source.hold_ends(self._head, self._tail)

    def head(self) -> bytes:
        """The object's first ``head_bytes``, fetched by the ranks together."""
        if self._head is None:
            self._head = self.read_shared([(0, min(self.size, self._source.head_bytes))])[0]
        return self._head

    def tail(self) -> bytes:
        """The object's last :data:`TAIL_BYTES`, fetched by the ranks together."""
        if self._tail is None:
            n = min(self.size, TAIL_BYTES)
            self._tail = self.read_shared([(self.size - n, n)])[0]
        return self._tail

    def fetch_ends(self, head_bytes: int | None = None) -> None:
        """The head (of ``head_bytes``, when not held yet) and the tail in one shared round."""
        if self._head is None and self._tail is None:
            self._source.head_bytes = head_bytes or self._source.head_bytes
            n, t = min(self.size, self._source.head_bytes), min(self.size, TAIL_BYTES)
            self._head, self._tail = self.read_shared([(0, n), (self.size - t, t)])
        self.head(), self.tail()

    def readinto_many(self, items: Sequence[tuple[int, memoryview]], max_gap: int | None = None) -> int:
        """Fill each ``(offset, buffer)`` from a shared read (what the head or tail holds costs nothing)."""
        wanted = [(off, buf) for off, buf in items if buf.nbytes and not self._copy_held(off, buf)]
        datas = self.read_shared([(off, buf.nbytes) for off, buf in wanted])
        for (_, buf), data in zip(wanted, datas, strict=True):
            buf.cast("B")[:] = data
        return 0

    # -- served from what the ranks fetched together --------------------------------

    def cached(self, offset: int, length: int) -> bytes | None:
        """``[offset, offset + length)`` if the shared head or tail holds it, else None.

        Only what the ranks fetched together counts (never what this rank's source happens to hold), so
        every rank decides alike what a shared read must fetch.
        """
        for start, block in ((0, self._head), (self.size - len(self._tail or b""), self._tail)):
            if block is not None and start <= offset and offset + length <= start + len(block):
                return block[offset - start : offset - start + length]
        return None

    def _copy_held(self, offset: int, buf: memoryview) -> bool:
        held = self.cached(offset, buf.nbytes)
        if held is not None:
            buf.cast("B")[:] = held
        return held is not None

    def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset``: held ones, else this rank's own read (not shared)."""
        held = self.cached(offset, length)
        return held if held is not None else self._source.read(offset, length)

    def open_file(self) -> Any:
        """A seekable file for zipfile and h5py, served from the shared head and tail first."""
        if self._source.is_local:
            return self._source.open_file()
        return io.BufferedReader(MetadataFile(self), buffer_size=8 << 10)
