"""lazyweights: lazy, streaming, memory-bounded loading of HDF5 and Keras checkpoints from any fsspec URL.

>>> import lazyweights as lw
>>> with lw.open("s3://bucket/model.h5") as ckpt:          # doctest: +SKIP
...     kernel = ckpt["dense_1/kernel:0"].to_dask()[:10].compute()
>>> arrays = lw.load("model.h5", max_memory="256MiB")      # doctest: +SKIP
>>> lw.mirror("model.h5", "s3://bucket/model.zarr")          # doctest: +SKIP
>>> lw.verify("model.h5", "s3://bucket/model.zarr").ok       # doctest: +SKIP
"""

from .checkpoint import Checkpoint, Layer, LoadedWeights, Weight, load, open
from .errors import (
    BudgetError,
    CompileError,
    DestinationExistsError,
    FormatError,
    InvalidArgumentError,
    LazyWeightsError,
    MismatchError,
    MissingDependencyError,
    MissingKeyError,
    ModelConfigError,
    ModelConfigTypeError,
    NotFoundError,
    ObjectChangedError,
    PartialLoadError,
    ShardError,
    StorageError,
    TruncatedFileError,
    UnsafeCheckpointError,
    UnsupportedError,
    UsageError,
)
from .formats.index import write_index
from .manifest import Manifest
from .stream import LoadReport
from .stream.budget import DEFAULT_MAX_MEMORY, parse_bytes
from .targets.shard import Shard
from .tools.export import export
from .tools.mirror import MirrorReport, mirror
from .tools.verify import Difference, VerifyReport, verify

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_MEMORY",
    "Checkpoint",
    "CompileError",
    "DestinationExistsError",
    "Difference",
    "FormatError",
    "InvalidArgumentError",
    "Layer",
    "LazyWeightsError",
    "LoadReport",
    "LoadedWeights",
    "Manifest",
    "MismatchError",
    "MissingDependencyError",
    "MirrorReport",
    "MissingKeyError",
    "ModelConfigError",
    "ModelConfigTypeError",
    "NotFoundError",
    "ObjectChangedError",
    "PartialLoadError",
    "BudgetError",
    "Shard",
    "ShardError",
    "StorageError",
    "TruncatedFileError",
    "UnsafeCheckpointError",
    "UnsupportedError",
    "UsageError",
    "VerifyReport",
    "Weight",
    "__version__",
    "export",
    "load",
    "mirror",
    "open",
    "parse_bytes",
    "verify",
    "write_index",
]
