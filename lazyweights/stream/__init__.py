"""Stream: the budgeted executor and what feeds it.

Every read of weight values (loads into numpy, Keras and torch, dask blocks,
export, mirror, verify) is a list of :class:`Group` s of :class:`Target` s run
by :func:`execute`, which bounds the bytes in flight and ends by checking that
the object did not change.
"""

from .budget import ByteBudget, parse_bytes
from .executor import execute
from .plan import Group, Target
from .report import LoadReport

__all__ = ["ByteBudget", "Group", "LoadReport", "Target", "execute", "parse_bytes"]
