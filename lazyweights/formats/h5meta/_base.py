"""Primitives shared by every structure parser: a bounds-checked byte cursor,
the parse context (address sizes, base offset, file size, limits) and the
request objects a parser yields to the level-by-level scheduler.

Parsers are generators.  A parser that needs bytes yields a list of
``(offset, length)`` ranges (absolute offsets in the fetched object) and is
resumed with the list of byte strings; a parser that wants to run several
sub-parsers concurrently yields :class:`Par` and is resumed with their results.
The scheduler (:mod:`.scheduler`) batches every range wanted by every suspended
parser into one ``fetch_many`` call, so the number of round trips equals the
longest chain of dependent reads, not the number of objects.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

from ...errors import FormatError, TruncatedFileError

__all__ = [
    "AHEAD_BYTES",
    "AHEAD_SHARE",
    "Ahead",
    "Ctx",
    "Cursor",
    "Limits",
    "Par",
    "Task",
    "ahead",
    "check_sum",
    "gather",
    "lookup3",
    "read",
    "read_many",
    "spec_read",
]

Task = Generator[Any, Any, Any]


class Par:
    """Yielded by a parser: run these sub-parsers concurrently, resume with their results in order."""

    __slots__ = ("gens",)

    def __init__(self, gens: Iterable[Task]):
        self.gens = list(gens)


class Ahead:
    """Yielded by a parser: fetch these ranges with the next level, but do not wait for them.

    A guess at where structures the walk will need later lie (the children of a B-tree node
    seen in bytes already held, before the walk reaches that node; the neighbours of a symbol
    node, see :mod:`.neighbours`): when right,
    the level that needs them finds them held, so a dependency chain is one level shorter;
    when wrong, only the bytes are lost.  Nothing is parsed from a guess: the walk reaches
    every structure through the addresses that point to it, as always.
    """

    __slots__ = ("ranges",)

    def __init__(self, ranges: list[tuple[int, int]]):
        self.ranges = ranges


def ahead(ctx: Ctx, ranges: Iterable[tuple[int, int]]) -> Task:
    """Ask for ``ranges`` (absolute) with the next level, without waiting, within the walk's guess budget."""
    take = []
    for off, n in ranges:
        n = min(n, ctx.size - off) if 0 <= off < ctx.size else 0
        if 0 < n <= ctx.ahead_left:
            ctx.ahead_left -= n
            take.append((off, n))
    if take:
        yield Ahead(take)


def read_many(ranges: list[tuple[int, int]]) -> Task:
    """Fetch ``ranges`` (absolute offset, length) in the current level; return their bytes."""
    if not ranges:
        return []
    return (yield list(ranges))


def read(offset: int, length: int) -> Task:
    """Fetch one range in the current level."""
    return (yield [(offset, length)])[0]


def spec_read(ctx: Ctx, offset: int, need: int, want: int, what: str) -> Task:
    """Fetch at least ``need`` bytes at ``offset``, up to ``want`` when the file is long enough.

    Speculative over-reads let a structure whose length is only known from its
    own prefix (object headers, heaps) arrive in one round trip.
    """
    ctx.check_abs(offset, need, what)
    n = min(max(need, want), ctx.size - offset)
    return (yield [(offset, n)])[0]


def gather(gens: Iterable[Task]) -> Task:
    """Run sub-parsers concurrently; return their results."""
    gens = list(gens)
    if not gens:
        return []
    return (yield Par(gens))


DATASET_HEADER_MARGIN = 48
# Before any is seen: what Keras's weights use (contiguous, rank 1 to 4: 128-176 bytes, measured on
# ResNet50, DenseNet121, EfficientNetB3 and a 2,000-layer model; libhdf5 allocates 272 whatever they use).
# A longer header (chunked, filtered, with attributes) is completed in the next level.  Not 256: a
# 2,000-layer Keras .h5 reads its 4,000 dataset headers in one level before any is seen, and the 64
# bytes more of each were a tenth of its open (benchmarks/bench_open.py).
DATASET_HEADER_FIRST = 192
HEAP_MARGIN = 0
# Bytes one walk may fetch on guesses (see Ahead), max(AHEAD_BYTES, size // AHEAD_SHARE): each right
# guess saves a level for the structures it holds; a file where the guesses are wrong (or a hostile head
# full of fake B-tree nodes) loses at most this much.  The budget counts right guesses too: a 2,000-layer
# Keras file's held-node guesses take 10-13 KiB, its .keras's neighbours (see neighbours.py) 1.3 MB, of
# which 0.6 KiB are wrong.
AHEAD_BYTES = 1 << 20
AHEAD_SHARE = 64


@dataclass
class Limits:
    """Bounds that keep a hostile file from making the walk hang or allocate without end."""

    max_depth: int = 128  # group nesting
    max_objects: int = 2_000_000  # objects visited (paths, not addresses)
    max_links: int = 1_000_000  # links in one group
    max_attr_bytes: int = 256 << 20  # one attribute's value
    max_btree_depth: int = 64
    max_heap_bytes: int = 1 << 30  # one local heap / global heap collection
    max_header_chunks: int = 4096  # object-header continuation blocks
    max_chunks: int = 50_000_000  # chunk-table entries of one dataset
    max_paths_per_object: int = 256  # hard links reaching one object (bounds DAG blow-up)


@dataclass
class Ctx:
    """What every parser needs: sizes of addresses/lengths and the file's geometry."""

    size: int  # bytes in the fetched object
    base: int = 0  # absolute offset of HDF5 relative address 0
    so: int = 8  # size of offsets
    sl: int = 8  # size of lengths
    group_leaf_k: int = 4
    group_internal_k: int = 16
    chunk_k: int = 32
    limits: Limits = field(default_factory=Limits)
    objects: int = 0
    visits: dict[int, int] = field(default_factory=dict)
    gcol_cache: dict[int, dict[int, bytes]] = field(default_factory=dict)
    reader: Callable[[int, int], bytes] | None = None  # one range, later: a large attribute asked for
    dataset_header: int = 0  # the most bytes a v1 dataset header used so far (sizes the next ones' reads)
    heap_used: int = 0  # the most bytes a local heap used so far, header and names (sizes the next ones' reads)
    ahead_left: int = AHEAD_BYTES  # bytes still allowed for guesses (see Ahead)
    groups_seen: int = 0  # groups whose parent named their B-tree and heap (see neighbours.note_group)
    groups_in_one_block: int = 0  # those whose header, B-tree root and heap lie in one block
    node_ends: set[int] = field(default_factory=set)  # where symbol nodes guessed around end (absolute)

    def learn_heap_read(self, used: int) -> None:
        """Note the bytes a local heap used: its header and the names before its free space."""
        self.heap_used = max(self.heap_used, used)

    def heap_read(self, default: int) -> int:
        """Bytes to read at a local heap: the most those seen so far used (the rest, if any, comes beside its node)."""
        return min(default, self.heap_used + HEAP_MARGIN) if self.heap_used else default

    def learn_dataset_header(self, used: int) -> None:
        """Note the bytes a dataset's (version 1) header used, up to its padding."""
        self.dataset_header = max(self.dataset_header, used)

    def dataset_header_read(self, default: int) -> int:
        """Bytes to read at an object that is likely a dataset: what those seen so far used, with a margin.

        Datasets of one file are written alike; the margin covers a few more dimensions (each 16
        bytes with a maximum shape) or a small attribute.  A header that still needs more is
        completed in the next level.
        """
        if not self.dataset_header:
            return min(default, DATASET_HEADER_FIRST)
        return min(default, self.dataset_header + DATASET_HEADER_MARGIN)

    @property
    def undef(self) -> int:
        """The all-ones "undefined address" of this file."""
        return (1 << (8 * self.so)) - 1

    def is_undef(self, rel: int) -> bool:
        """Whether a relative address is the undefined address."""
        return rel == self.undef

    def check_abs(self, offset: int, length: int, what: str) -> int:
        """Validate an absolute range against the file size."""
        if length < 0 or offset < 0:
            raise FormatError(f"{what}: negative offset or length")
        if offset + length > self.size:
            raise TruncatedFileError(f"{what}: range 0x{offset:x}+{length} beyond end of file (size {self.size})")
        return offset

    def addr(self, rel: int, length: int, what: str) -> int:
        """Absolute offset of relative address ``rel``, checked so ``length`` bytes fit in the file."""
        if self.is_undef(rel):
            raise FormatError(f"{what}: undefined address")
        return self.check_abs(self.base + rel, length, what)

    def count_object(self, rel: int, what: str) -> None:
        """Count one visited object; refuse a walk that explodes (e.g. a DAG of hard links)."""
        self.objects += 1
        if self.objects > self.limits.max_objects:
            raise FormatError(f"{what}: more than {self.limits.max_objects} objects")
        n = self.visits[rel] = self.visits.get(rel, 0) + 1
        if n > self.limits.max_paths_per_object:
            raise FormatError(f"object header at 0x{rel:x}: reached through more than {n - 1} paths ({what})")


class Cursor:
    """Little-endian reader over a byte string that raises FormatError instead of IndexError."""

    __slots__ = ("buf", "ctx", "pos", "what")

    def __init__(self, buf: bytes, ctx: Ctx | None, what: str, pos: int = 0):
        self.buf = buf
        self.ctx = ctx
        self.what = what
        self.pos = pos

    def need(self, n: int) -> None:
        """Fail unless ``n`` more bytes are available."""
        if n < 0 or self.pos + n > len(self.buf):
            self._short(n)

    def _short(self, n: int) -> None:
        raise FormatError(f"{self.what}: structure runs past its end (offset {self.pos}+{n} of {len(self.buf)})")

    # The accessors below check bounds inline rather than through ``need``: they are the walk's
    # innermost loop (a 2,000-layer file's walk makes ~500,000 of these calls; inline, its CPU
    # time drops by about a fifth, measured with cProfile over benchmarks/bench_open.py's files).

    def bytes(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        pos = self.pos
        if n < 0 or pos + n > len(self.buf):
            self._short(n)
        self.pos = pos + n
        return bytes(self.buf[pos : pos + n])

    def skip(self, n: int) -> None:
        """Skip ``n`` bytes."""
        self.need(n)
        self.pos += n

    def uint(self, n: int) -> int:
        """An unsigned little-endian integer of ``n`` bytes."""
        pos = self.pos
        if n < 0 or pos + n > len(self.buf):
            self._short(n)
        self.pos = pos + n
        return int.from_bytes(self.buf[pos : pos + n], "little")

    def u8(self) -> int:
        """One unsigned byte."""
        pos = self.pos
        if pos >= len(self.buf):
            self._short(1)
        self.pos = pos + 1
        return self.buf[pos]

    def u16(self) -> int:
        """A 2-byte unsigned integer."""
        return self.uint(2)

    def u32(self) -> int:
        """A 4-byte unsigned integer."""
        return self.uint(4)

    def u64(self) -> int:
        """An 8-byte unsigned integer."""
        return self.uint(8)

    def offset(self) -> int:
        """A relative file address (size of offsets)."""
        assert self.ctx is not None
        return self.uint(self.ctx.so)

    def length(self) -> int:
        """A length (size of lengths)."""
        assert self.ctx is not None
        return self.uint(self.ctx.sl)

    def cstring(self, limit: int | None = None) -> bytes:
        """A NUL-terminated string (the NUL is consumed)."""
        end = self.buf.find(b"\0", self.pos, None if limit is None else self.pos + limit)
        if end < 0:
            raise FormatError(f"{self.what}: unterminated string")
        out = bytes(self.buf[self.pos : end])
        self.pos = end + 1
        return out

    def align(self, n: int, origin: int = 0) -> None:
        """Advance to the next multiple of ``n`` counted from ``origin``."""
        rem = (self.pos - origin) % n
        if rem:
            self.pos += n - rem

    def signature(self, sig: bytes) -> None:
        """Consume and check a 4-byte signature."""
        got = self.bytes(len(sig))
        if got != sig:
            raise FormatError(f"{self.what}: bad signature {got!r}, expected {sig!r}")

    @property
    def remaining(self) -> int:
        """Bytes left after the position."""
        return len(self.buf) - self.pos


def log2_floor(n: int) -> int:
    """floor(log2(n)) for n >= 1 (0 for n <= 0)."""
    return max(n.bit_length() - 1, 0)


def limit_enc_size(n: int) -> int:
    """Bytes HDF5 uses to encode values up to ``n`` (H5VM_limit_enc_size)."""
    return log2_floor(n) // 8 + 1


_M32 = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``: the checksum of HDF5's version-2 metadata structures.

    Written here because no library the field uses exposes it (libhdf5 keeps it internal, and
    h5py does not wrap it); it runs only on libver="latest" metadata (object headers, B-tree and
    heap nodes of a few hundred bytes).  The mix and final steps are lookup3's, as tables.
    """
    n = len(data)
    h = [(0xDEADBEEF + n + initval) & _M32] * 3  # a, b, c
    i = 0
    while n - i > 12:
        _add_block(h, data[i : i + 12])
        for step, k in enumerate(_MIX):  # a -= c; a ^= rot(c, 4); c += b; then the same turning (a, b, c)
            t, s, u = step % 3, (step + 2) % 3, (step + 1) % 3
            h[t] = ((h[t] - h[s]) & _M32) ^ _rot(h[s], k)
            h[s] = (h[s] + h[u]) & _M32
        i += 12
    if n == i:  # nothing left (only for empty input): no final mix
        return h[2]
    _add_block(h, bytes(data[i:]) + bytes(12 - (n - i)))  # the last 1-12 bytes, zero-padded
    for step, k in enumerate(_FINAL):  # c ^= b; c -= rot(b, 14); then the same turning (c, a, b)
        t, s = (step + 2) % 3, (step + 1) % 3
        h[t] = ((h[t] ^ h[s]) - _rot(h[s], k)) & _M32
    return h[2]


_MIX = (4, 6, 8, 16, 19, 4)
_FINAL = (14, 11, 25, 16, 4, 14, 24)


def _add_block(h: list[int], block: bytes) -> None:
    for j in range(3):
        h[j] = (h[j] + int.from_bytes(block[4 * j : 4 * j + 4], "little")) & _M32


def check_sum(buf: bytes, end: int, what: str) -> None:
    """Refuse a version-2 structure whose stored checksum (4 bytes at ``end``) is not that of ``buf[:end]``."""
    if end < 0 or end + 4 > len(buf):
        raise FormatError(f"{what}: structure runs past its end (checksum at {end} of {len(buf)} bytes)")
    stored = int.from_bytes(buf[end : end + 4], "little")
    if lookup3(buf[:end]) != stored:
        raise FormatError(f"{what}: metadata checksum mismatch (stored 0x{stored:08x}): corrupt metadata")
