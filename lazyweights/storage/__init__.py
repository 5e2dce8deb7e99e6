"""Storage: where bytes come from.  fsspec resolution, stat and version pinning, exact ranged reads, retries.

The lowest stage: it knows URLs, objects and byte ranges, and no format.
Everything above reads through a :class:`Source`.
"""

from .fileobj import file_object_url, is_file_object
from .files import METADATA_BLOCK_BYTES, MetadataFile, WindowFile, storage_failure
from .local import pread_into
from .pinning import Pin, pin_of
from .source import HEAD_BYTES, STORE_MARKERS, Prefetch, Source, get_source, release_source

__all__ = [
    "HEAD_BYTES",
    "Prefetch",
    "METADATA_BLOCK_BYTES",
    "STORE_MARKERS",
    "MetadataFile",
    "Pin",
    "Source",
    "WindowFile",
    "file_object_url",
    "get_source",
    "is_file_object",
    "pin_of",
    "pread_into",
    "release_source",
    "storage_failure",
]
