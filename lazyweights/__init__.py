"""lazyweights: lazy, streaming, memory-bounded loading of HDF5 and Keras checkpoints from any fsspec URL.

>>> import lazyweights as lw
>>> with lw.open("s3://bucket/model.h5") as ckpt:          # doctest: +SKIP
...     kernel = ckpt["dense_1/kernel:0"].to_dask()[:10].compute()
>>> arrays = lw.load("model.h5", max_memory="256MiB")      # doctest: +SKIP
"""

from .budget import parse_bytes
from .checkpoint import Checkpoint, Layer, LoadedWeights, Weight, load, open
from .errors import (
    FormatError,
    LazyWeightsError,
    MismatchError,
    MissingKeyError,
    ObjectChangedError,
    PartialLoadError,
    StorageError,
    TruncatedFileError,
    UnsafeCheckpointError,
    UnsupportedError,
)
from .index import write_index
from .manifest import Manifest
from .stream import LoadReport

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "FormatError",
    "Layer",
    "LazyWeightsError",
    "LoadReport",
    "LoadedWeights",
    "Manifest",
    "MismatchError",
    "MissingKeyError",
    "ObjectChangedError",
    "PartialLoadError",
    "StorageError",
    "TruncatedFileError",
    "UnsafeCheckpointError",
    "UnsupportedError",
    "Weight",
    "__version__",
    "load",
    "open",
    "parse_bytes",
    "write_index",
]
