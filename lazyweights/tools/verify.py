"""Compare two checkpoints weight by weight: structure, then a SHA-256 of every weight's values.

Works across containers (an ``.h5`` against its zarr mirror, a mirror against
a mirror): both sides are read through their manifests and hashed over
little-endian C-order bytes (:func:`lazyweights.blocks.le_bytes`), streamed
under ``max_memory``.  A mirror's recorded checksums are checked against its
data too, so a corrupted or missing chunk is reported even when both sides
agree on everything else.  A weight that cannot be read is reported, not
raised, and the rest are still compared.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..checkpoint import Checkpoint, Url, opened
from ..errors import MismatchError, ObjectChangedError
from ..formats.zarr import ATTR
from ..manifest import Manifest, WeightSpec
from ..stream import LoadReport
from ..stream.blocks import Digests, for_each_block
from ..stream.budget import parse_bytes
from ..stream.progress import ProgressArg, progress_callback

__all__ = ["Difference", "VerifyReport", "verify"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Difference:
    """One way the two checkpoints differ: ``what`` differs for ``key``, with each side's value."""

    key: str
    what: str  # "missing", "shape", "dtype", "values", "unreadable", "order", "layers", "attribute", "corrupt", "count"
    a: Any
    b: Any
    side: str | None = None  # for "corrupt": the side whose data disagrees with its recorded checksum

    def __str__(self) -> str:
        if self.what == "corrupt":
            return f"{self.key}: corrupt in {self.side}: recorded sha256 {self.a}, its data hashes to {self.b}"
        return f"{self.key}: {self.what} differs: a={self.a!r} b={self.b!r}"


@dataclass
class VerifyReport:
    """The outcome of :func:`verify`; ``ok`` when nothing differs."""

    a: str
    b: str
    checked: int = 0
    bytes_hashed: int = 0
    seconds: float = 0.0
    differences: list[Difference] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # key -> sha256 of the weights found identical

    @property
    def ok(self) -> bool:
        return not self.differences

    def __bool__(self) -> bool:
        """``ok``: ``if not verify(a, b):`` reads as "if they differ"."""
        return self.ok

    def raise_if_different(self) -> None:
        """Raise :class:`~lazyweights.errors.MismatchError` listing the first differences."""
        if not self.ok:
            shown = "; ".join(str(d) for d in self.differences[:5])
            more = f" (and {len(self.differences) - 5} more)" if len(self.differences) > 5 else ""
            raise MismatchError(f"{self.a} and {self.b} differ in {len(self.differences)} ways: {shown}{more}")

    def __str__(self) -> str:
        head = "identical" if self.ok else f"{len(self.differences)} differences"
        return (
            f"{self.a} vs {self.b}: {head}; {self.checked} weights compared, "
            f"{self.bytes_hashed / (1 << 20):.1f} MiB hashed in {self.seconds:.2f} s"
        )


def verify(
    a: Url | Checkpoint,
    b: Url | Checkpoint,
    *,
    storage_options: Mapping[str, Any] | None = None,
    b_storage_options: Mapping[str, Any] | None = None,
    weights_only: bool = False,
    max_memory: int | str | None = None,
    concurrency: int | None = None,
    progress: ProgressArg = False,
) -> VerifyReport:
    """Compare checkpoints ``a`` and ``b`` (URLs or open checkpoints); never raises on a difference.

    Raises :class:`~lazyweights.ObjectChangedError` if either object changed while it was read.

    Checks the layer order, weight keys and order, shapes, dtypes and root
    attributes, then hashes every weight present in both (optimizer weights
    included).  Use ``report.ok`` or ``report.raise_if_different()``.

    ``weights_only=True`` compares only the model's weights, paired by
    position (Keras's ``get_weights()`` order), so two saves of one model in
    different formats (``.h5`` and ``.keras``, whose keys differ) compare
    equal when their values do.  ``storage_options`` are ``a``'s, and
    ``b``'s too unless ``b_storage_options`` are given.
    """
    start = time.perf_counter()
    b_options = storage_options if b_storage_options is None else b_storage_options
    with opened(a, storage_options) as ca, opened(b, b_options) as cb:
        report = VerifyReport(a=ca.url, b=cb.url)
        if weights_only:
            pairs = _by_position(ca.manifest, cb.manifest, report.differences)
        else:
            report.differences.extend(_structure(ca.manifest, cb.manifest))
            pairs = [(s, cb.manifest[s.key]) for s in _comparable(ca.manifest, cb.manifest)]
        total = sum(x.nbytes + y.nbytes for x, y in pairs)
        budget = parse_bytes(max_memory)
        with progress_callback(progress, total, "verifying") as tick:
            da, na = _digests(ca, [x for x, _ in pairs], budget, concurrency, tick)
            db, nb = _digests(cb, [y for _, y in pairs], budget, concurrency, tick)
        report.bytes_hashed = na + nb
        for x, y in pairs:
            report.differences.extend(_compare_values(_label(x, y), da[x.key], db[y.key]))
        for ckpt, digests, side in ((ca, da, "a"), (cb, db, "b")):
            report.differences.extend(_recorded(ckpt, digests, side))
        bad = {d.key for d in report.differences}
        report.digests = {x.key: da[x.key] for x, y in pairs if _label(x, y) not in bad}
        report.checked = len(pairs)
    report.seconds = time.perf_counter() - start
    logger.info("%s", report)
    return report


def _structure(ma: Manifest, mb: Manifest) -> list[Difference]:
    out: list[Difference] = []
    for label, ka, kb in (
        ("weights", [w.key for w in ma.weights], [w.key for w in mb.weights]),
        ("optimizer", [w.key for w in ma.optimizer], [w.key for w in mb.optimizer]),
    ):
        for key in ka:
            if key not in mb:
                out.append(Difference(key, "missing", "present", "absent"))
        for key in kb:
            if key not in ma:
                out.append(Difference(key, "missing", "absent", "present"))
        shared_a = [k for k in ka if k in set(kb)]
        shared_b = [k for k in kb if k in set(ka)]
        if shared_a != shared_b:
            out.append(Difference(f"<{label}>", "order", shared_a[:5], shared_b[:5]))
    la = [(x.name, x.keys) for x in ma.layers]
    lb = [(x.name, x.keys) for x in mb.layers]
    if la != lb:
        out.append(Difference("<layers>", "layers", [n for n, _ in la][:8], [n for n, _ in lb][:8]))
    for name in sorted((set(ma.attrs) | set(mb.attrs)) - {ATTR}):  # ATTR: a mirror's own facts, not the model's
        va, vb = ma.attrs.get(name), mb.attrs.get(name)
        if va != vb:
            out.append(Difference(f"<attrs.{name}>", "attribute", _short(va), _short(vb)))
    return out


def _label(x: WeightSpec, y: WeightSpec) -> str:
    """A pair's name in differences: the key, or both keys where the formats name the weight differently."""
    return x.key if x.key == y.key else f"{x.key} = {y.key}"


def _by_position(ma: Manifest, mb: Manifest, differences: list[Difference]) -> list[tuple[WeightSpec, WeightSpec]]:
    """Model weights paired by position; a count, shape or dtype that differs is a difference, not a pair."""
    if len(ma.weights) != len(mb.weights):
        differences.append(Difference("<weights>", "count", len(ma.weights), len(mb.weights)))
    pairs = []
    for x, y in zip(ma.weights, mb.weights, strict=False):  # the shorter list: the count differs above
        if x.shape != y.shape:
            differences.append(Difference(_label(x, y), "shape", x.shape, y.shape))
        elif not _same_dtype(x.np_dtype, y.np_dtype):
            differences.append(Difference(_label(x, y), "dtype", x.dtype, y.dtype))
        else:
            pairs.append((x, y))
    return pairs


def _short(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= 80 else text[:77] + "..."


def _comparable(ma: Manifest, mb: Manifest) -> list[WeightSpec]:
    """Weights in both, with the same shape and dtype; the others become differences in _structure."""
    out = []
    for spec in (*ma.weights, *ma.optimizer):
        if spec.key in mb:
            other = mb[spec.key]
            if other.shape == spec.shape and _same_dtype(other.np_dtype, spec.np_dtype):
                out.append(spec)
    return out


def _same_dtype(x: Any, y: Any) -> bool:
    """Equal up to byte order: values are compared in little-endian form."""
    return x == y or (x.itemsize == y.itemsize and x.newbyteorder("<") == y.newbyteorder("<"))


def _compare_values(key: str, a: str, b: str) -> list[Difference]:
    if a == b:
        return []
    if a.startswith("error:") or b.startswith("error:"):
        return [Difference(key, "unreadable", a, b)]
    return [Difference(key, "values", f"sha256:{a}", f"sha256:{b}")]


def _digests(
    ckpt: Checkpoint, specs: list[WeightSpec], max_memory: int | None, concurrency: int | None, tick: Any
) -> tuple[dict[str, str], int]:
    """SHA-256 of each weight, or ``"error: ..."`` for weights that cannot be read."""
    digests = Digests()
    out: dict[str, str] = {}
    nbytes = [0]

    def consume(block: Any) -> None:
        nbytes[0] += block.values.nbytes
        digest = digests.update(block)
        if digest is not None:
            out[block.spec.key] = digest

    def run(todo: list[WeightSpec]) -> None:
        report = LoadReport(url=ckpt.url, format=ckpt.format)
        for_each_block(ckpt.source, todo, consume, max_memory=max_memory, concurrency=concurrency,
                       progress=tick, report=report)  # fmt: skip

    try:
        run(specs)
    except ObjectChangedError:  # not a difference between the two: what was read cannot be trusted
        raise
    except Exception:  # find which weights fail, one at a time, and report each
        for spec in specs:
            if spec.key in out:
                continue
            digests.discard(spec.key)  # a partial digest from the failed run
            try:
                run([spec])
            except ObjectChangedError:
                raise
            except Exception as exc:
                out[spec.key] = f"error: {type(exc).__name__}: {exc}"
    return out, nbytes[0]


def _recorded(ckpt: Checkpoint, digests: dict[str, str], side: str) -> list[Difference]:
    """A mirror's recorded checksums against its data: catches corrupted or missing chunks."""
    out = []
    for spec in (*ckpt.manifest.weights, *ckpt.manifest.optimizer):
        mirror = spec.layout == "zarr" or (spec.layout == "contiguous" and "mirror_of" in (ckpt.attrs.get(ATTR) or {}))
        if not mirror or digests.get(spec.key, "error:").startswith("error:"):
            continue  # not a mirror's array (or packed weight), or unreadable (reported as such)
        recorded = _recorded_digest(ckpt, spec)
        actual = digests[spec.key]
        if recorded is not None and recorded != actual:
            out.append(Difference(spec.key, "corrupt", recorded, actual, side))
    return out


def _recorded_digest(ckpt: Checkpoint, spec: WeightSpec) -> str | None:
    from ..formats.zarr import recorded_sha256

    return recorded_sha256(ckpt.source, spec)
