"""The exceptions lazyweights raises.

Every error is a :class:`LazyWeightsError`; most also inherit the builtin a
caller would naturally catch, so ``except KeyError`` or ``except OSError``
keeps working::

    LazyWeightsError
     ├── FormatError(ValueError)             not a checkpoint, or a malformed one
     │    ├── TruncatedFileError             file shorter than its own metadata says
     │    ├── UnsafeCheckpointError          external links/storage, virtual datasets
     │    ├── ModelConfigError               Keras cannot build a model from the saved config
     │    │    └── ModelConfigTypeError(TypeError)  ... where Keras raises TypeError (no from_config)
     │    └── CompileError                   a saved training config field that cannot be compiled
     ├── UnsupportedError(NotImplementedError)  a valid layout lazyweights cannot decode
     ├── MissingKeyError(KeyError)           a requested weight is not in the checkpoint
     ├── MismatchError(ValueError)           destination shape/dtype/count disagrees
     ├── ShardError(ValueError)              a shard spec that cannot apply (rank out of range, uneven split)
     ├── UsageError(ValueError)              a call that does not fit its input (unbuilt model, option/format)
     ├── StorageError(OSError)               the storage layer failed or returned wrong bytes
     │    ├── NotFoundError(FileNotFoundError, ValueError)  no file there (Keras: ValueError "File not found")
     │    ├── ObjectChangedError             the object changed while it was being read
     │    └── DestinationExistsError(FileExistsError)  a write would replace existing data
     ├── PartialLoadError                    a load failed after writing into ``out``
     ├── BudgetError(MemoryError)            a read needs more memory than allowed (max_memory, declared sizes)
     └── MissingDependencyError(ImportError)  an optional dependency is not installed; names the extra

:func:`require` imports an optional dependency or raises :class:`MissingDependencyError`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

__all__ = [
    "CompileError",
    "BudgetError",
    "DestinationExistsError",
    "FormatError",
    "LazyWeightsError",
    "MismatchError",
    "MissingDependencyError",
    "MissingKeyError",
    "ModelConfigError",
    "ModelConfigTypeError",
    "NotFoundError",
    "ObjectChangedError",
    "PartialLoadError",
    "ShardError",
    "StorageError",
    "TruncatedFileError",
    "UnsafeCheckpointError",
    "UnsupportedError",
    "UsageError",
    "require",
]


class LazyWeightsError(Exception):
    """Base class of every error raised by lazyweights."""


class FormatError(LazyWeightsError, ValueError):
    """The file is not a checkpoint lazyweights reads, or its metadata is malformed."""


class InvalidArgumentError(LazyWeightsError, ValueError):
    """An argument outside its valid values (a budget of 0 bytes, ``concurrency=0``); the CLI refuses the same."""


class TruncatedFileError(FormatError):
    """The file ends before the end its own metadata declares."""


class UnsafeCheckpointError(FormatError):
    """The checkpoint would make the loader read outside itself (external links, external storage)."""


class ModelConfigError(FormatError):
    """Keras cannot build a model from the checkpoint's saved config."""


class ModelConfigTypeError(ModelConfigError, TypeError):
    """Keras cannot build the model, and raises ``TypeError`` there (a custom object without ``from_config``)."""


class CompileError(FormatError):
    """A field of the saved training config (optimizer, loss, metrics) that cannot be compiled; names the field."""


class UnsupportedError(LazyWeightsError, NotImplementedError):
    """A valid layout or filter that lazyweights cannot decode."""


class MissingKeyError(LazyWeightsError, KeyError):
    """A weight key that the checkpoint does not hold."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class MismatchError(LazyWeightsError, ValueError):
    """A destination whose shape, dtype or count disagrees with the checkpoint."""


class ShardError(LazyWeightsError, ValueError):
    """A shard spec that cannot apply: a rank out of range, an uneven split refused, a bad slice."""


class UsageError(LazyWeightsError, ValueError):
    """A call that does not fit its input: an unbuilt model, an option the checkpoint's format does not take."""


class StorageError(LazyWeightsError, OSError):
    """The storage layer failed, or returned other bytes than were asked for."""


class NotFoundError(StorageError, FileNotFoundError, ValueError):
    """No file or object at the URL.  Also a ``ValueError``: Keras raises one for a missing model file."""


class ObjectChangedError(StorageError):
    """The object's size or version changed since it was opened."""


class DestinationExistsError(StorageError, FileExistsError):
    """A mirror or export destination already holds data (pass ``overwrite=True`` to replace it)."""


class PartialLoadError(LazyWeightsError):
    """A load failed after some destination arrays had been written.

    ``written`` lists the keys whose destination holds the checkpoint's values,
    ``partial`` the keys whose destination was written only in part.  The
    original error is chained as ``__cause__``.
    """

    def __init__(self, message: str, written: Sequence[str], partial: Sequence[str]):
        super().__init__(message)
        self.written = list(written)
        self.partial = list(partial)


class BudgetError(LazyWeightsError, MemoryError):
    """A read would need more memory than allowed: one chunk larger than ``max_memory``, or an array too large."""


class MissingDependencyError(LazyWeightsError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, extra: str) -> ModuleType:
    """Import the optional dependency ``module``, or raise :class:`MissingDependencyError` naming ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} cannot be imported ({exc}); install it with: pip install 'lazyweights[{extra}]'", name=module
        ) from exc
