"""The ``lazyweights`` command line: inspect, load, mirror, export and verify checkpoints at any fsspec URL.

Exit status, as diff(1): 0 success (``verify``: identical), 1 ``verify`` found
differences, 2 trouble of any kind — a usage error, a URL that does not
resolve, a file that is not a checkpoint.  Errors print one line on stderr;
``--debug`` prints the traceback.

Every command takes ``--json`` (one JSON object on stdout, the schema in
README.md "Command line"), ``-q/--quiet`` (nothing on stdout but ``--json``
output; errors still on stderr) and ``--no-progress``; progress bars (MiB,
MiB/s, ETA) go to stderr when it is a terminal.  ``-o key=value``
(repeatable) passes fsspec storage options; values are read as JSON when they
parse (``-o anon=true``), as strings otherwise.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import resource
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import click

import lazyweights as lw

from .errors import LazyWeightsError
from .formats.zarr import ATTR as MIRROR_ATTR
from .stream.budget import DEFAULT_MAX_MEMORY
from .targets.keras.config import RNN_CELLS, layer_classes
from .tools.export import FORMATS

__all__ = ["cli", "main"]

EXIT_OK, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2
MiB = 1 << 20
Emit = Callable[[dict[str, Any], "str | Callable[[], None]"], None]


# -- shared options and error handling ------------------------------------------------


def _parse_options(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected key=value, got {item!r}", ctx=ctx, param=param)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _parse_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    try:
        return lw.parse_bytes(value)
    except LazyWeightsError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options every command takes, and the error boundary: one line and exit 2 unless --debug.

    The command gets ``progress`` (bars wanted) and ``emit(data, text)``,
    which prints ``data`` as JSON with ``--json``, else ``text`` unless quiet.
    """

    @click.option("-o", "--storage-option", "storage_options", multiple=True, callback=_parse_options,
                  metavar="KEY=VALUE", help="fsspec storage option for the source URL(s); repeatable.")  # fmt: skip
    @click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout (schema: README).")
    @click.option("-q", "--quiet", is_flag=True, help="Nothing on stdout but --json output; no progress bars.")
    @click.option("--no-progress", is_flag=True, help="No progress bars.")
    @click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
    @functools.wraps(fn)
    def wrapper(*args: Any, as_json: bool, quiet: bool, no_progress: bool, debug: bool, **kwargs: Any) -> Any:
        logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(name)s: %(message)s")
        progress = not (quiet or no_progress) and sys.stderr.isatty()
        try:
            return fn(*args, progress=progress, emit=functools.partial(_emit, as_json, quiet), **kwargs)
        except click.exceptions.Exit:
            raise
        except KeyboardInterrupt:
            click.echo("lazyweights: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # the one place errors become a message and an exit status
            if debug:
                traceback.print_exc()
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            name = "" if isinstance(exc, LazyWeightsError) else f"{type(exc).__name__}: "
            click.echo(f"lazyweights: error: {name}{message}", err=True)
            sys.exit(EXIT_ERROR)

    return wrapper


def _emit(as_json: bool, quiet: bool, data: dict[str, Any], text: str | Callable[[], None]) -> None:
    """Print a command's result: ``data`` as JSON, else ``text`` (a string, or a function that prints)."""
    if as_json:
        click.echo(json.dumps(data, indent=1, default=str))
    elif not quiet:
        text() if callable(text) else click.echo(text)


def _budget_options(default: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--concurrency and --max-memory, with the API's default budget for the command."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option("--concurrency", type=click.IntRange(min=1), help="Reads in flight (at least 1).")(fn)
        return click.option("--max-memory", callback=_parse_size, metavar="SIZE", default=default,
                            show_default=default is not None or "unbounded",
                            help="Bound on bytes in flight, e.g. 256MiB.")(fn)  # fmt: skip

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(lw.__version__, prog_name="lazyweights")
def cli() -> None:
    """Lazy, streaming, memory-bounded access to HDF5/Keras checkpoints and zarr mirrors at any fsspec URL.

    Exit status: 0 ok, 1 verify found differences, 2 error.
    """


# -- inspect --------------------------------------------------------------------------


def describe(ckpt: lw.Checkpoint) -> dict[str, Any]:
    """A JSON-able summary of a checkpoint, like ``model.summary()`` without reading any weights."""
    classes = layer_classes(ckpt.model_config)
    by_path = {
        la.name: classes.get(la.alias or la.name.rsplit("/", 1)[-1]) or classes.get(la.name) for la in ckpt.layers
    }
    layers = []
    for layer in ckpt.layers:
        parent, _, last = layer.name.rpartition("/")
        cls = by_path[layer.name] or (RNN_CELLS.get(by_path.get(parent) or "") if last == "cell" else None)
        weights = [
            {
                "key": w.key,
                "name": w.name,
                "path": w.spec.path,
                "shape": list(w.shape),
                "dtype": w.spec.dtype,
                "nbytes": w.nbytes,
            }
            for w in layer.weights
        ]
        layers.append({
            "name": layer.name, "alias": layer.alias, "class_name": cls,
            "params": sum(w.spec.size for w in layer.weights), "weights": weights,
        })  # fmt: skip
    config = ckpt.model_config if isinstance(ckpt.model_config, dict) else {}
    layouts = {w.spec.layout for w in (*ckpt.weights, *ckpt.optimizer_weights)}
    return {
        "url": ckpt.url,
        "format": ckpt.format,
        "container": "zarr" if "zarr" in layouts else "file",
        "size": ckpt.manifest.size,
        "keras_version": ckpt.attrs.get("keras_version"),
        "backend": ckpt.attrs.get("backend"),
        "model_class": config.get("class_name"),
        "model_name": (config.get("config") or {}).get("name") if isinstance(config.get("config"), dict) else None,
        "layer_classes": dict(Counter(la["class_name"] for la in layers if la["class_name"]).most_common()),
        "layers": layers,
        "total_params": sum(w.spec.size for w in ckpt.weights),
        "total_bytes": ckpt.nbytes,
        "optimizer": {"weights": len(ckpt.optimizer_weights), "bytes": sum(w.nbytes for w in ckpt.optimizer_weights)},
        "skipped": [list(s) for s in ckpt.manifest.skipped],
        "checksums": _checksums(ckpt, layouts),
    }


def _checksums(ckpt: lw.Checkpoint, layouts: set[str]) -> str | None:
    """A zarr mirror's ``"crc32c"`` or ``"unverified"`` (a corrupt raw chunk would load silently); None for files."""
    if "zarr" not in layouts:
        return None
    return (ckpt.attrs.get(MIRROR_ATTR) or {}).get("checksums", "unverified")


def _print_summary(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped: wide enough for long weight names rather than 80 columns
        console = Console(width=160)
    container = " (zarr mirror)" if info["container"] == "zarr" and info["format"] != "zarr" else ""
    checks = {"crc32c": "  chunks checksummed (crc32c)",
              "unverified": "  [yellow]unverified[/yellow] (no chunk checksums)"}  # fmt: skip
    checked = checks.get(info.get("checksums") or "", "")
    console.print(f"[bold]{info['url']}[/bold]  format [cyan]{info['format']}[/cyan]{container}{checked}")
    facts = [f"{k} {info[k]}" for k in ("keras_version", "backend", "model_class", "model_name") if info.get(k)]
    if facts:
        console.print("  ".join(facts))
    table = Table(show_lines=False, header_style="bold")
    for column in ("Layer", "Class", "Weight", "Shape", "Dtype", "Params"):
        table.add_column(column, justify="right" if column == "Params" else "left")
    for layer in info["layers"]:
        rows = layer["weights"] or [None]
        for i, w in enumerate(rows):
            table.add_row(
                _layer_label(layer) if i == 0 else "", (layer["class_name"] or "") if i == 0 else "",
                w["name"] if w else "", str(tuple(w["shape"])) if w else "", w["dtype"] if w else "",
                f"{layer['params']:,}" if i == 0 else "",
            )  # fmt: skip
    console.print(table)
    opt = info["optimizer"]
    console.print(
        f"Total params: {info['total_params']:,}  ({info['total_bytes'] / MiB:.2f} MiB)   "
        f"Optimizer weights: {opt['weights']} ({opt['bytes'] / MiB:.2f} MiB)"
        + (f"   Layer classes: {info['layer_classes']}" if info["layer_classes"] else "")
    )


def _layer_label(layer: dict[str, Any]) -> str:
    """A Keras 3 layer by its own name, with its object path when that differs (``dense_1 (layers/dense)``)."""
    alias, name = layer["alias"], layer["name"]
    return name if not alias or name.rsplit("/", 1)[-1] == alias else f"{alias} ({name})"


@cli.command()
@click.argument("url")
@_common
def inspect(url: str, storage_options: dict, progress: bool, emit: Emit) -> None:
    """Show a checkpoint's format, layers, weights, shapes, dtypes and parameter counts (reads metadata only)."""
    with lw.open(url, storage_options) as ckpt:
        info = describe(ckpt)
    emit(info, lambda: _print_summary(info))


# -- load -----------------------------------------------------------------------------


def load_summary(report: lw.LoadReport, size: int) -> dict[str, Any]:
    """The ``load --json`` object: what was read, how fast, and the memory it took."""
    return {
        "url": report.url, "format": report.format, "size": size, "weights": len(report.loaded),
        "skipped": [list(s) for s in report.skipped], "bytes_loaded": report.bytes_loaded,
        "bytes_read": report.bytes_read, "requests": report.requests, "seconds": report.seconds,
        "throughput": report.bytes_loaded / report.seconds if report.seconds > 0 else None,
        "peak_in_flight": report.peak_in_flight, "max_memory": report.max_memory, "concurrency": report.concurrency,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # KiB on Linux
    }  # fmt: skip


@cli.command()
@click.argument("url")
@click.option("--part-size", callback=_parse_size, metavar="SIZE", help="Bytes per read request.")
@_budget_options(DEFAULT_MAX_MEMORY)
@_common
def load(url: str, part_size: int | None, max_memory: int | None, concurrency: int | None, storage_options: dict,
         progress: bool, emit: Emit) -> None:  # fmt: skip
    """Load every weight into memory and report throughput and peak memory (a benchmark of your storage)."""
    with lw.open(url, storage_options) as ckpt:
        loaded = ckpt.load(max_memory=max_memory, concurrency=concurrency, part_size=part_size, progress=progress)
        info = load_summary(loaded.report, ckpt.manifest.size)
    emit(info, f"{loaded.report}; peak RSS {info['peak_rss'] / MiB:.0f} MiB, concurrency {info['concurrency']}")


# -- mirror / export / verify / index ---------------------------------------------------


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("--chunk-size", default="8MiB", show_default=True, callback=_parse_size, metavar="SIZE")
@click.option("--compressor", default="none", show_default=True, help="none, zstd or blosc, optionally :LEVEL.")
@click.option("--zarr-format", type=click.Choice(["2", "3"]), default="3", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace whatever is at DST.")
@click.option("--dst-storage-option", "dst_options", multiple=True, callback=_parse_options, metavar="KEY=VALUE",
              help="fsspec storage option for DST; repeatable.")  # fmt: skip
@_budget_options()
@_common
def mirror(src: str, dst: str, chunk_size: int, compressor: str, zarr_format: str, overwrite: bool, dst_options: dict,
           max_memory: int | None, concurrency: int | None, storage_options: dict, progress: bool,
           emit: Emit) -> None:  # fmt: skip
    """Write a zarr mirror of SRC at DST (resumes an interrupted mirror of the same source)."""
    report = lw.mirror(src, dst, chunk_bytes=chunk_size, compressor=compressor, storage_options=storage_options,
                       dst_storage_options=dst_options, max_memory=max_memory, concurrency=concurrency,
                       overwrite=overwrite, zarr_format=int(zarr_format), progress=progress)  # fmt: skip
    info = {
        "src": report.src, "dst": report.dst, "weights": report.weights, "written": list(report.written),
        "resumed": list(report.resumed), "bytes_written": report.bytes_written, "seconds": report.seconds,
        "peak_in_flight": report.peak_in_flight,
    }  # fmt: skip
    emit(info, str(report))


@cli.command()
@click.argument("src")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="bin", show_default=True)
@click.option("--packed", is_flag=True, help="One weights.bin with offsets in manifest.json (bin only).")
@click.option("--optimizer", is_flag=True, help="Include optimizer weights.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty OUT_DIR.")
@_budget_options()
@_common
def export(src: str, out_dir: str, fmt: str, packed: bool, optimizer: bool, overwrite: bool, max_memory: int | None,
           concurrency: int | None, storage_options: dict, progress: bool, emit: Emit) -> None:  # fmt: skip
    """Export weights as little-endian C-order files plus manifest.json, for C/C++ programs."""
    manifest = lw.export(src, out_dir, fmt, packed=packed, optimizer=optimizer, storage_options=storage_options,
                         max_memory=max_memory, concurrency=concurrency, overwrite=overwrite,
                         progress=progress)  # fmt: skip
    total = sum(e["nbytes"] for e in manifest["weights"])
    where = os.path.join(out_dir, "manifest.json")
    info = {"src": src, "out_dir": out_dir, "manifest": where, "format": fmt, "packed": packed,
            "weights": len(manifest["weights"]), "bytes": total}  # fmt: skip
    emit(info, f"exported {info['weights']} weights ({total / MiB:.1f} MiB) to {where}")


@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--weights-only", is_flag=True,
              help="Compare model weights by position only: the same model saved in two formats (.h5, .keras).")
@click.option("--b-storage-option", "b_options", multiple=True, callback=_parse_options, metavar="KEY=VALUE",
              help="fsspec storage option for B (then -o is A's only); repeatable.")  # fmt: skip
@_budget_options()
@_common
def verify(a: str, b: str, weights_only: bool, b_options: dict, max_memory: int | None, concurrency: int | None,
           storage_options: dict, progress: bool, emit: Emit) -> None:  # fmt: skip
    """Compare two checkpoints weight by weight by SHA-256; exit 1 when they differ."""
    report = lw.verify(a, b, storage_options=storage_options, b_storage_options=b_options or None,
                       weights_only=weights_only, max_memory=max_memory, concurrency=concurrency,
                       progress=progress)  # fmt: skip
    info = {
        "a": report.a, "b": report.b, "ok": report.ok, "checked": report.checked,
        "bytes_hashed": report.bytes_hashed, "seconds": report.seconds,
        "differences": [vars(d) for d in report.differences],
    }  # fmt: skip

    def text() -> None:
        for difference in report.differences[:50]:
            click.echo(str(difference))
        if len(report.differences) > 50:
            click.echo(f"... and {len(report.differences) - 50} more")
        click.echo(str(report))

    emit(info, text)
    sys.exit(EXIT_OK if report.ok else EXIT_DIFFERENT)


@cli.command()
@click.argument("url")
@click.option("--output", metavar="URL", help="Where to write the index (default: next to URL, <URL>.lwindex.json).")
@click.option("--output-storage-option", "output_options", multiple=True, callback=_parse_options,
              metavar="KEY=VALUE", help="fsspec storage option for --output; repeatable.")  # fmt: skip
@_common
def index(url: str, output: str | None, output_options: dict, storage_options: dict, progress: bool,
          emit: Emit) -> None:  # fmt: skip
    """Write the metadata index of URL (next to it, or at --output), so later opens read one small JSON object.

    An HTTP server is read-only: write the index into the directory it
    publishes (--output /srv/www/model.h5.lwindex.json) or another bucket.
    """
    where = lw.write_index(url, storage_options=storage_options, path=output, path_options=output_options)
    emit({"url": url, "index": where}, f"wrote the index of {url} to {where}")


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="lazyweights")


if __name__ == "__main__":
    main()
