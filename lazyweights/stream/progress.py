"""Progress display: a rich bar of bytes loaded, or a caller's callback, or nothing."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

__all__ = ["ProgressArg", "progress_callback"]

ProgressArg = bool | Callable[[int], None] | None


@contextlib.contextmanager
def progress_callback(progress: ProgressArg, total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """Yield a callable taking byte increments: a rich bar when ``progress`` is True."""
    if callable(progress):
        yield progress
        return
    if not progress:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(file=sys.stderr), transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
