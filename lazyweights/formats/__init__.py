"""Formats: a :class:`~lazyweights.storage.Source`'s metadata → a :class:`~lazyweights.manifest.Manifest`.

Formats read metadata only, never weight values.  :mod:`.detect` recognises
a file by its first bytes and dispatches to a parser (HDF5 and its Keras
layouts, ``.keras`` archives, zarr stores, TensorFlow checkpoints in :mod:`.tf`); :mod:`.index` caches manifests of
remote checkpoints.  A new format adds a parser module and a branch in
:func:`~lazyweights.formats.detect.parse`.
"""

from .detect import describe_bytes, open_source, parse

__all__ = ["describe_bytes", "open_source", "parse"]
