"""Progress display: a rich bar of bytes loaded, a caller's callable or fsspec ``Callback``, or nothing.

The bar counts in binary units (KiB, MiB/s), as every figure lazyweights prints does, and clears
itself when done: the caller's summary (the load report) is then the one figure left on screen.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["ProgressArg", "progress_callback"]

ProgressArg = Any  # bool | Callable[[int], None] | fsspec.callbacks.Callback | None


@contextlib.contextmanager
def progress_callback(progress: ProgressArg, total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """Yield a callable taking byte increments: a rich bar when ``progress`` is True.

    An fsspec ``Callback`` (anything with ``set_size`` and ``relative_update``)
    is told the total first, then each increment, as fsspec's own copies do.
    """
    if hasattr(progress, "relative_update") and hasattr(progress, "set_size"):
        progress.set_size(total)
        yield progress.relative_update
        return
    if callable(progress):
        yield progress
        return
    if not progress:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        _mib_per_second(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(file=sys.stderr), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _mib_per_second() -> Any:
    """A rich column of the transfer rate in MiB/s (rich's own speed column counts decimal MB/s)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class MiBPerSecond(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("?" if speed is None else f"{speed / (1 << 20):.1f} MiB/s", style="progress.data.speed")

    return MiBPerSecond()
