"""TensorFlow-format checkpoints (Keras 2 ``save_weights("ckpt")``, ``tf.train.Checkpoint``) without TensorFlow.

One module per concept, all working over byte-fetch callbacks so the same code
reads local files and object stores:

* :mod:`.sstable` — the ``<prefix>.index`` LevelDB table (footer, blocks, CRCs);
* :mod:`.bundle` — the index's entries (dtype, shape, shard, offset, size, CRC) and tensor decoding;
* :mod:`.graph` — the ``_CHECKPOINTABLE_OBJECT_GRAPH``: attribute paths and optimizer slots;
* :mod:`.crc` — masked / incremental / combinable CRC32C;
* :mod:`.checkpoint_dir` — prefix, ``ckpt-N`` prefix or directory with a ``checkpoint`` pointer → prefix;
* :mod:`.reader` — :class:`TFCheckpoint`, the pieces tied together over a file-access object;
* :mod:`.protos` — the protobuf messages, built at runtime.
"""

from .bundle import BundleHeader, BundleIndex, TensorEntry, read_index
from .checkpoint_dir import resolve_prefix
from .files import CheckpointFiles, FsspecFiles, LocalFiles
from .graph import ObjectGraph, SlotVariable, parse_object_graph
from .reader import TFCheckpoint

__all__ = [
    "BundleHeader",
    "BundleIndex",
    "CheckpointFiles",
    "FsspecFiles",
    "LocalFiles",
    "ObjectGraph",
    "SlotVariable",
    "TFCheckpoint",
    "TensorEntry",
    "parse_object_graph",
    "read_index",
    "resolve_prefix",
]
