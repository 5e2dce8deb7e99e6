"""TensorFlow-format checkpoints (Keras 2 ``save_weights("ckpt")``, ``tf.train.Checkpoint``) without TensorFlow.

Metadata only, read through a store :class:`~lazyweights.storage.Source` for
the checkpoint's folder (the pointer, index and data shards are its members);
the executor reads tensor values and checks their CRC32C.

* :mod:`.checkpoint_dir` — prefix, ``ckpt-N`` prefix or folder with a ``checkpoint`` pointer → store + prefix;
* :mod:`.sstable` — the ``<prefix>.index`` LevelDB table (footer, blocks, CRCs);
* :mod:`.bundle` — the index's entries (dtype, shape, shard, offset, size, CRC), string tensors;
* :mod:`.slices` — partitioned variables' slice keys;
* :mod:`.graph` — the ``_CHECKPOINTABLE_OBJECT_GRAPH``: attribute paths and optimizer slots;
* :mod:`.parse` — all of it → a :class:`~lazyweights.manifest.Manifest`;
* :mod:`.crc` — masked / incremental / combinable CRC32C;
* :mod:`.protos` — the protobuf messages, built at runtime.
"""

from .bundle import BundleHeader, BundleIndex, TensorEntry, read_index
from .checkpoint_dir import locate
from .graph import ObjectGraph, SlotVariable, parse_object_graph
from .parse import FORMAT, parse_tf

__all__ = [
    "FORMAT",
    "BundleHeader",
    "BundleIndex",
    "ObjectGraph",
    "SlotVariable",
    "TensorEntry",
    "locate",
    "parse_object_graph",
    "parse_tf",
    "read_index",
]
