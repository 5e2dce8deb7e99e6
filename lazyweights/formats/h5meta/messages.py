"""Decoders for the object-header messages the walk needs.

Dataspace (0x1), link info (0x2), datatype (0x3), old and new fill value
(0x4, 0x5), link (0x6), external files (0x7, flagged only), data layout
v1-v4 (0x8), filter pipeline v1/v2 (0xB), attribute v1-v3 (0xC), symbol
table (0x11) and attribute info (0x15).  Datatypes outside the supported
subset decode to a :class:`Datatype` carrying an ``unsupported`` reason, so the
caller can mark one dataset instead of failing the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import FormatError
from ._base import Ctx, Cursor

__all__ = [
    "AttrInfo",
    "Attribute",
    "Dataspace",
    "Datatype",
    "FillValue",
    "Filter",
    "Layout",
    "Link",
    "LinkInfo",
    "parse_attr_info",
    "parse_attribute",
    "parse_dataspace",
    "parse_datatype",
    "parse_fill_new",
    "parse_fill_old",
    "parse_filters",
    "parse_layout",
    "parse_link",
    "parse_link_info",
    "parse_symbol_table",
]

# Message type numbers.
DATASPACE, LINK_INFO, DATATYPE, FILL_OLD, FILL, LINK, EXTERNAL, LAYOUT = 1, 2, 3, 4, 5, 6, 7, 8
FILTERS, ATTRIBUTE, CONTINUATION, SYMBOL_TABLE, ATTR_INFO = 0xB, 0xC, 0x10, 0x11, 0x15
# Messages that carry nothing the walk needs.
IGNORED = {0x0, 0x9, 0xA, 0xD, 0xE, 0x10, 0x12, 0x13, 0x14, 0x16, 0x17, 0x18}

FILTER_NAMES = {1: "deflate", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit", 6: "scaleoffset"}


# -- dataspace -------------------------------------------------------------------


@dataclass
class Dataspace:
    """Shape and maximum shape (None = unlimited); ``null`` for an empty dataspace."""

    shape: tuple[int, ...]
    maxshape: tuple[int | None, ...]
    null: bool = False


def parse_dataspace(data: bytes, ctx: Ctx, what: str) -> Dataspace:
    """Decode a dataspace message (versions 1 and 2)."""
    c = Cursor(data, ctx, f"{what}: dataspace")
    version, rank, flags = c.u8(), c.u8(), c.u8()
    null = False
    if version == 1:
        c.skip(5)
    elif version == 2:
        kind = c.u8()
        null = kind == 2
    else:
        raise FormatError(f"{what}: dataspace version {version}")
    if rank > 32:
        raise FormatError(f"{what}: dataspace rank {rank} > 32")
    shape = tuple(c.length() for _ in range(rank))
    maxshape: tuple[int | None, ...] = shape
    if flags & 1:
        unlim = (1 << (8 * ctx.sl)) - 1
        maxshape = tuple(None if m == unlim else m for m in (c.length() for _ in range(rank)))
    return Dataspace(shape, maxshape, null)


# -- datatype --------------------------------------------------------------------


@dataclass
class Datatype:
    """A decoded datatype: a numpy dtype, or an ``unsupported`` reason.

    ``vlen_str`` marks variable-length strings (numpy ``object`` dtype; each
    element on disk is a global-heap reference).  ``size`` is the on-disk
    element size.
    """

    dtype: np.dtype | None
    size: int
    vlen_str: bool = False
    unsupported: str | None = None
    converted: np.dtype | None = None  # an unsupported type's numpy dtype as h5py converts it (None: h5py cannot)


_FLOAT_LAYOUTS = {
    # size: (precision, exp location, exp size, mantissa location, mantissa size, bias)
    2: (16, 10, 5, 0, 10, 15),
    4: (32, 23, 8, 0, 23, 127),
    8: (64, 52, 11, 0, 52, 1023),
}


def parse_datatype(c: Cursor) -> Datatype:
    """Decode a datatype at the cursor (advances past it)."""
    cv = c.u8()
    cls, version = cv & 0x0F, cv >> 4
    b0, b1, b2 = c.u8(), c.u8(), c.u8()
    bits = b0 | (b1 << 8) | (b2 << 16)
    size = c.u32()
    if version not in (1, 2, 3, 4, 5):
        raise FormatError(f"{c.what}: datatype version {version}")
    if size > 1 << 30:
        raise FormatError(f"{c.what}: datatype size {size} is implausible")
    if size == 0:
        return Datatype(None, 0, unsupported="zero-size datatype")
    if cls == 0:
        return _fixed(c, bits, size)
    if cls == 1:
        return _float(c, bits, size)
    if cls == 3:
        bad = _string_bits(bits & 0xF, (bits >> 4) & 0xF)
        return Datatype(None if bad else np.dtype(f"S{size}"), size, unsupported=bad)
    if cls == 5:
        c.skip(b0)  # ASCII tag, NUL-padded to a multiple of 8
        return Datatype(np.dtype(f"V{size}"), size)
    if cls == 8:
        return _enum(c, bits, size, version)
    if cls == 9:
        return _vlen(c, bits, size)
    if cls == 10:
        return _array(c, size, version)
    if cls == 6:
        return _compound(c, bits, size, version)
    names = {2: "time", 4: "bitfield", 7: "reference", 11: "complex"}
    return Datatype(None, size, unsupported=f"{names.get(cls, f'class {cls}')} datatype")


def _fixed(c: Cursor, bits: int, size: int) -> Datatype:
    offset, precision = c.u16(), c.u16()
    order = ">" if bits & 1 else "<"
    kind = "i" if bits & 8 else "u"
    if size not in (1, 2, 4, 8):
        return Datatype(None, size, unsupported=f"{size}-byte integer")
    dtype = np.dtype(f"{order if size > 1 else '|'}{kind}{size}")
    if offset != 0 or precision != 8 * size or bits & 0x6:
        reason = f"{precision}-bit integer at bit offset {offset} of {8 * size} bits (or padded)"
        return Datatype(None, size, unsupported=reason, converted=dtype)
    return Datatype(dtype, size)


def _float(c: Cursor, bits: int, size: int) -> Datatype:
    offset, precision = c.u16(), c.u16()
    eloc, esize, mloc, msize = c.u8(), c.u8(), c.u8(), c.u8()
    bias = c.u32()
    if bits & 0x40:
        return Datatype(None, size, unsupported="VAX-order float")
    order = ">" if bits & 1 else "<"
    converted = np.dtype(f"{order}f{size}") if size in _FLOAT_LAYOUTS else _longdouble(size)
    if size not in _FLOAT_LAYOUTS or (precision, eloc, esize, mloc, msize, bias) != _FLOAT_LAYOUTS[size] or offset:
        return Datatype(None, size, unsupported=f"non-IEEE {size}-byte float", converted=converted)
    if ((bits >> 4) & 3) != 2 or ((bits >> 8) & 0xFF) != 8 * size - 1:
        return Datatype(None, size, unsupported="float with unusual normalization or sign bit", converted=converted)
    return Datatype(np.dtype(f"{order}f{size}"), size)


def _longdouble(size: int) -> np.dtype | None:
    """numpy's long double when it has ``size`` bytes (h5py's type for wider floats), else None."""
    ld = np.dtype(np.longdouble)
    return ld if ld.itemsize == size and ld.itemsize > 8 else None


def _enum(c: Cursor, bits: int, size: int, version: int) -> Datatype:
    base = parse_datatype(c)
    n = bits & 0xFFFF
    names = []
    for _ in range(n):
        start = c.pos
        names.append(c.cstring(1 << 16))
        if version < 3:
            c.align(8, start)
    values = [c.bytes(base.size) for _ in range(n)]
    if base.unsupported or base.dtype is None or base.dtype.kind not in "iu":
        return Datatype(None, size, unsupported="enum over a non-integer base")
    vals = {nm: int(np.frombuffer(v, base.dtype)[0]) for nm, v in zip(names, values, strict=False)}
    if base.size == 1 and vals == {b"FALSE": 0, b"TRUE": 1}:
        return Datatype(np.dtype("?"), size)
    return Datatype(base.dtype, size)


def _string_bits(padding: int, charset: int) -> str | None:
    """Why a string type's padding/character set is not one HDF5 defines (h5py refuses those too), or None."""
    if padding > 2:
        return f"string with unknown padding type {padding}"
    if charset > 1:
        return f"string with unknown character set {charset}"
    return None


def _vlen(c: Cursor, bits: int, size: int) -> Datatype:
    base = parse_datatype(c)
    if bits & 0xF == 1:
        bad = _string_bits((bits >> 4) & 0xF, (bits >> 8) & 0xF)
        return Datatype(None, size, unsupported=bad) if bad else Datatype(np.dtype("O"), size, vlen_str=True)
    _ = base
    return Datatype(None, size, unsupported="variable-length sequence datatype")


def _array(c: Cursor, size: int, version: int) -> Datatype:
    rank = c.u8()
    if version < 3:
        c.skip(3)
    dims = tuple(c.u32() for _ in range(rank))
    if version < 3:
        c.skip(4 * rank)
    base = parse_datatype(c)
    if base.unsupported or base.dtype is None or base.vlen_str:
        return Datatype(None, size, unsupported=f"array of {base.unsupported or 'vlen'}")
    if int(np.prod(dims, dtype=object)) * base.size != size:
        raise FormatError(f"{c.what}: array datatype of {dims} x {base.size} bytes declares size {size}")
    return Datatype(np.dtype((base.dtype, dims)), size)


def _compound(c: Cursor, bits: int, size: int, version: int) -> Datatype:
    n = bits & 0xFFFF
    names, formats, offsets = [], [], []
    bad = None
    for _ in range(n):
        start = c.pos
        name = c.cstring(1 << 16)
        if version < 3:
            c.align(8, start)
            off = c.u32()
        else:
            off = c.uint(max(1, (size.bit_length() + 7) // 8))
        if version == 1:
            rank = c.u8()
            c.skip(3 + 4 + 4 + 16)
            if rank:
                bad = "compound member with version-1 array dimensions"
        member = parse_datatype(c)
        if member.unsupported or member.dtype is None or member.vlen_str:
            bad = bad or f"compound member of {member.unsupported or 'vlen'}"
        names.append(name.decode("utf-8", "replace"))
        formats.append(member.dtype)
        offsets.append(off)
    if bad:
        return Datatype(None, size, unsupported=bad)
    if _is_complex(names, formats, offsets, size):  # h5py's convention: compound {r, i} of one float
        return Datatype(np.dtype(f"{formats[0].byteorder.replace('=', '<')}c{size}"), size)
    try:
        return Datatype(np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": size}), size)
    except (ValueError, TypeError) as e:
        raise FormatError(f"{c.what}: compound datatype does not fit its size ({e})") from e


def _is_complex(names: list[str], formats: list, offsets: list[int], size: int) -> bool:
    if names != ["r", "i"] or formats[0] != formats[1] or formats[0].kind != "f":
        return False
    return formats[0].itemsize in (4, 8) and offsets == [0, size // 2] and size == 2 * formats[0].itemsize


# -- fill value ------------------------------------------------------------------


@dataclass
class FillValue:
    """Fill value bytes (None: library default, zeros) or ``undefined``."""

    value: bytes | None
    undefined: bool = False


def parse_fill_old(data: bytes, what: str) -> FillValue:
    """Decode the old fill value message (0x4)."""
    c = Cursor(data, None, f"{what}: old fill value")
    n = c.u32()
    return FillValue(c.bytes(n) if n else None)


def parse_fill_new(data: bytes, what: str) -> FillValue:
    """Decode the fill value message (0x5), versions 1-3."""
    c = Cursor(data, None, f"{what}: fill value")
    version = c.u8()
    if version in (1, 2):
        c.skip(2)
        defined = c.u8()  # 0: H5D_FILL_VALUE_UNDEFINED; default and user-defined values both set it
        if version == 1 or defined:
            n = c.u32()
            return FillValue(c.bytes(n) if n else None, undefined=not defined)
        return FillValue(None, undefined=True)
    if version == 3:
        flags = c.u8()
        if flags & 0x10:
            return FillValue(None, undefined=True)
        if flags & 0x20:
            n = c.u32()
            return FillValue(c.bytes(n) if n else None)
        return FillValue(None)
    raise FormatError(f"{what}: fill value version {version}")


# -- layout ----------------------------------------------------------------------


@dataclass
class Layout:
    """Data layout message: kind and the fields of that kind.

    ``index`` names the chunk index: ``btree1`` (layout v1-v3), ``single``,
    ``implicit``, ``farray``, ``earray``, ``btree2``.  ``chunk`` excludes the
    trailing element-size dimension.
    """

    kind: str  # compact | contiguous | chunked | virtual
    version: int
    address: int | None = None  # contiguous data / chunk index (relative)
    size: int = 0  # contiguous size
    compact: bytes | None = None
    chunk: tuple[int, ...] | None = None
    index: str | None = None
    flags: int = 0
    params: dict = field(default_factory=dict)


_INDEX = {1: "single", 2: "implicit", 3: "farray", 4: "earray", 5: "btree2"}


def parse_layout(data: bytes, ctx: Ctx, what: str) -> Layout:
    """Decode a data layout message, versions 1-4."""
    c = Cursor(data, ctx, f"{what}: layout")
    version = c.u8()
    if version in (1, 2):
        return _layout_v12(c, version)
    if version not in (3, 4, 5):  # 5 (HDF5 2.0) encodes like 4
        raise FormatError(f"{what}: layout version {version}")
    cls = c.u8()
    if cls == 0:
        n = c.u16()
        return Layout("compact", version, compact=c.bytes(n))
    if cls == 1:
        return Layout("contiguous", version, address=c.offset(), size=c.length())
    if cls == 3:
        return Layout("virtual", version)
    if cls != 2:
        raise FormatError(f"{what}: layout class {cls}")
    if version == 3:
        rank = c.u8()
        if rank < 2:  # the chunk's dimensions plus the element size
            raise FormatError(f"{what}: chunked layout of rank {rank}")
        addr = c.offset()
        dims = tuple(c.u32() for _ in range(rank))
        return Layout("chunked", 3, address=addr, chunk=dims[:-1], index="btree1", params={"elem": dims[-1]})
    return _layout_v4_chunked(c)


def _layout_v12(c: Cursor, version: int) -> Layout:
    rank, cls = c.u8(), c.u8()
    c.skip(5)
    addr = c.offset() if cls != 0 else None
    dims = tuple(c.u32() for _ in range(rank))
    if cls == 2:
        elem = c.u32()
        return Layout("chunked", version, address=addr, chunk=dims[:-1], index="btree1", params={"elem": elem})
    if cls == 0:
        n = c.u32()
        return Layout("compact", version, compact=c.bytes(n))
    size = 1
    for d in dims:
        size *= d
    return Layout("contiguous", version, address=addr, size=size, params={"size_in_elements": True})


def _layout_v4_chunked(c: Cursor) -> Layout:
    flags, rank, enc = c.u8(), c.u8(), c.u8()
    if not 1 <= enc <= 8 or rank < 2:
        raise FormatError(f"{c.what}: chunk dimension encoding {enc} / rank {rank}")
    dims = tuple(c.uint(enc) for _ in range(rank))
    itype = c.u8()
    if itype not in _INDEX:
        raise FormatError(f"{c.what}: chunk index type {itype}")
    params: dict = {"elem": dims[-1]}
    if itype == 1 and flags & 2:
        params["filtered_size"] = c.length()
        params["filter_mask"] = c.u32()
    elif itype == 3:
        params["page_bits"] = c.u8()
    elif itype == 4:
        keys = ("max_bits", "idx_elmts", "min_ptrs", "min_elmts", "page_bits")
        params.update({k: c.u8() for k in keys})
    elif itype == 5:
        params.update(node_size=c.u32(), split=c.u8(), merge=c.u8())
    return Layout("chunked", 4, address=c.offset(), chunk=dims[:-1], index=_INDEX[itype], flags=flags, params=params)


# -- filters ---------------------------------------------------------------------


@dataclass
class Filter:
    """One filter of a pipeline: id, name, flags and client values (as h5py's get_filter)."""

    id: int
    name: str
    flags: int
    values: tuple[int, ...]


def parse_filters(data: bytes, what: str) -> list[Filter]:
    """Decode a filter pipeline message, versions 1 and 2."""
    c = Cursor(data, None, f"{what}: filter pipeline")
    version, n = c.u8(), c.u8()
    if version == 1:
        c.skip(6)
    elif version != 2:
        raise FormatError(f"{what}: filter pipeline version {version}")
    if n > 32:
        raise FormatError(f"{what}: {n} filters")
    out = []
    for _ in range(n):
        fid = c.u16()
        name_len = c.u16() if version == 1 or fid >= 256 else 0
        flags, nvals = c.u16(), c.u16()
        name = b""
        if name_len:
            start = c.pos
            name = c.bytes(name_len).split(b"\0", 1)[0]
            if version == 1:
                c.align(8, start)
        vals = tuple(c.u32() for _ in range(nvals))
        if version == 1 and nvals % 2:
            c.skip(4)
        text = name.decode("latin-1") or FILTER_NAMES.get(fid, "")
        out.append(Filter(fid, text, flags, vals))
    return out


# -- attributes ------------------------------------------------------------------


@dataclass
class Attribute:
    """An attribute message: name, type, space and raw value bytes."""

    name: str
    datatype: Datatype
    space: Dataspace
    raw: bytes
    crt_order: int | None = None
    shared_dtype: int | None = None  # object header of a committed datatype still to resolve


def parse_shared(data: bytes, ctx: Ctx, what: str) -> int | None:
    """Object-header address named by a shared message (committed), None for a shared-message heap."""
    c = Cursor(data, ctx, f"{what}: shared message")
    version, kind = c.u8(), c.u8()
    if version == 1:
        c.skip(6)
        return c.offset()
    if version == 2 or (version == 3 and kind == 2):
        return c.offset()
    return None


def parse_attribute(data: bytes, ctx: Ctx, what: str) -> Attribute:
    """Decode an attribute message, versions 1-3."""
    c = Cursor(data, ctx, f"{what}: attribute")
    version, flags = c.u8(), c.u8()
    if version not in (1, 2, 3):
        raise FormatError(f"{what}: attribute version {version}")
    name_size, dt_size, ds_size = c.u16(), c.u16(), c.u16()
    if version == 3:
        c.skip(1)
    pad = 8 if version == 1 else 1
    name = c.bytes(name_size).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    c.align(pad, 0) if version == 1 else None
    aw = f"{what}: attribute {name!r}"
    if flags & 2:
        return Attribute(name, Datatype(None, 0, unsupported="shared dataspace"), Dataspace((), ()), b"")
    dt_bytes = c.bytes(dt_size)
    c.align(pad, 0) if version == 1 else None
    space = parse_dataspace(c.bytes(ds_size), ctx, aw)
    c.align(pad, 0) if version == 1 else None
    if flags & 1:
        addr = parse_shared(dt_bytes, ctx, aw)
        dt = Datatype(None, 0, unsupported=None if addr is not None else "datatype in a shared-message heap")
        a = Attribute(name, dt, space, c.bytes(min(c.remaining, ctx.limits.max_attr_bytes)))
        a.shared_dtype = addr
        return a
    dt = parse_datatype(Cursor(dt_bytes, ctx, aw))
    return Attribute(name, dt, space, attribute_value(c.bytes(c.remaining), dt, space, ctx, aw))


def attribute_value(raw: bytes, dt: Datatype, space: Dataspace, ctx: Ctx, what: str) -> bytes:
    """The value bytes of an attribute: its element count times the datatype size, checked."""
    n = 0 if space.null else int(np.prod(space.shape, dtype=object)) * dt.size
    if n > ctx.limits.max_attr_bytes or n > len(raw):
        raise FormatError(f"{what}: value of {n} bytes does not fit the message ({len(raw)} bytes)")
    return raw[:n]


@dataclass
class DenseInfo:
    """Link info (0x2) or attribute info (0x15): where dense storage lives (undefined while compact)."""

    heap: int
    name_index: int
    order_index: int | None
    tracked: bool
    indexed: bool


AttrInfo = LinkInfo = DenseInfo


def _parse_dense_info(data: bytes, ctx: Ctx, what: str, kind: str, max_index_bytes: int) -> DenseInfo:
    """Both messages: version 0, flags (1: creation order tracked, 2: indexed), an optional maximum
    creation index of ``max_index_bytes``, the fractal heap and name index, the order index if indexed."""
    c = Cursor(data, ctx, f"{what}: {kind}")
    if c.u8() != 0:
        raise FormatError(f"{what}: {kind} version")
    flags = c.u8()
    if flags & 1:
        c.skip(max_index_bytes)
    heap, name_idx = c.offset(), c.offset()
    order = c.offset() if flags & 2 else None
    return DenseInfo(heap, name_idx, order, bool(flags & 1), bool(flags & 2))


def parse_attr_info(data: bytes, ctx: Ctx, what: str) -> DenseInfo:
    """Decode an attribute info message (0x15)."""
    return _parse_dense_info(data, ctx, what, "attribute info", 2)


# -- links -----------------------------------------------------------------------


@dataclass
class Link:
    """A link: ``kind`` is hard (``address``), soft (``target``) or external (``filename``, ``target``)."""

    name: str
    kind: str
    address: int | None = None
    target: str | None = None
    filename: str | None = None
    crt_order: int | None = None


def parse_link(data: bytes, ctx: Ctx, what: str) -> Link:
    """Decode a link message (0x6)."""
    c = Cursor(data, ctx, f"{what}: link")
    if c.u8() != 1:
        raise FormatError(f"{what}: link message version")
    flags = c.u8()
    ltype = c.u8() if flags & 0x8 else 0
    crt = c.u64() if flags & 0x4 else None
    if flags & 0x10:
        c.skip(1)
    nlen = c.uint(1 << (flags & 3))
    name = c.bytes(nlen).decode("utf-8", "surrogateescape")
    if not name or "/" in name:
        raise FormatError(f"{what}: invalid link name {name!r}")
    if ltype == 0:
        return Link(name, "hard", address=c.offset(), crt_order=crt)
    if ltype == 1:
        return Link(name, "soft", target=c.bytes(c.u16()).decode("utf-8", "surrogateescape"), crt_order=crt)
    if ltype == 64:
        body = Cursor(c.bytes(c.u16()), ctx, what)
        body.skip(1)
        fname = body.cstring().decode("utf-8", "surrogateescape")
        path = body.cstring().decode("utf-8", "surrogateescape")
        return Link(name, "external", target=path, filename=fname, crt_order=crt)
    return Link(name, "external", target="", filename=f"<user-defined link type {ltype}>", crt_order=crt)


def parse_link_info(data: bytes, ctx: Ctx, what: str) -> DenseInfo:
    """Decode a link info message (0x2)."""
    return _parse_dense_info(data, ctx, what, "link info", 8)


def parse_symbol_table(data: bytes, ctx: Ctx, what: str) -> tuple[int, int]:
    """Decode a symbol table message: (v1 B-tree address, local heap address)."""
    c = Cursor(data, ctx, f"{what}: symbol table")
    return c.offset(), c.offset()
