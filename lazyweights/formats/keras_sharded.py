"""Keras 3 sharded weights: ``model.weights.json`` plus ``model_00000.weights.h5``, ``model_00001.weights.h5``, ...

``model.save_weights("model.weights.json", max_shard_size=...)`` (Keras's
``ShardedH5IOStore``) writes each shard as a Keras 3 ``.weights.h5`` holding
some objects' ``vars`` groups (one object's variables may be split over
consecutive shards), and the JSON index::

    {"metadata": {"total_size": ...},
     "weight_map": {"/layers/dense/vars": "model_00000.weights.h5",
                    "/vars": ["model_00000.weights.h5", "model_00001.weights.h5"], ...}}

The checkpoint is the index: each shard is a member of its Source (the
object beside it, :meth:`~lazyweights.storage.Source.member`), parsed as a
Keras 3 weights file, and every weight's spec names its shard in
``WeightSpec.member``, so one load reads all shards under one budget.  As
Keras does, a weight is taken from a shard only where the weight map lists
that shard for its object.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from ..errors import FormatError
from ..manifest import Layer, Manifest, WeightSpec
from ..storage import Source

__all__ = ["FORMAT", "is_sharded_index", "parse_sharded"]

FORMAT = "keras-sharded"
_MAX_INDEX_BYTES = 64 << 20  # an index lists one entry per object: far below this for any real model


def is_sharded_index(head: bytes) -> bool:
    """Whether ``head`` starts like a Keras sharding index (a JSON object with a ``weight_map``)."""
    text = head.lstrip()
    return text.startswith(b"{") and b'"weight_map"' in head


def _shard_map(source: Source) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Object path (``layers/dense``, ``""`` for the root) → shard names; and the index's metadata."""
    if source.size > _MAX_INDEX_BYTES:
        raise FormatError(f"{source.url}: a {source.size}-byte sharding index; refusing more than {_MAX_INDEX_BYTES}")
    try:
        index = json.loads(source.read(0, source.size))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{source.url}: not valid JSON: {exc}") from exc
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise FormatError(f"{source.url}: a JSON document without a 'weight_map' object; not a Keras sharding index")
    shards: dict[str, list[str]] = {}
    for group, names in weight_map.items():
        names = [names] if isinstance(names, str) else names
        if not isinstance(group, str) or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise FormatError(f"{source.url}: weight_map entry {group!r}: {names!r} is not a shard file name (list)")
        for name in names:
            if not name or "/" in name or "\\" in name or name in (".", ".."):
                raise FormatError(f"{source.url}: shard {name!r} is not a file beside the index")
        path = group.strip("/")
        path = path[: -len("vars")].rstrip("/") if path.endswith("vars") else path
        shards[path] = names
    metadata = index.get("metadata", {})
    return shards, metadata if isinstance(metadata, dict) else {}


def _shard(source: Source, name: str, parse: Callable[[Source], Manifest]) -> Manifest:
    member = source.member(name)
    if member is None:
        raise FormatError(f"{source.url}: the shard {name} it lists does not exist beside it")
    manifest = parse(member)
    if manifest.format != "keras-v3":
        raise FormatError(f"{source.url}: shard {name} is a {manifest.format} file, not a Keras 3 weights file")
    return manifest


def parse_sharded(source: Source, parse: Callable[[Source], Manifest]) -> Manifest:
    """The manifest of a sharded checkpoint: every shard's weights, in shard then file order.

    ``parse`` parses one shard (a member Source) into its own manifest.
    """
    shards, metadata = _shard_map(source)
    order = list(dict.fromkeys(name for names in shards.values() for name in names))
    weights: list[WeightSpec] = []
    optimizer: list[WeightSpec] = []
    layers: dict[str, list[str]] = {}
    aliases: dict[str, str | None] = {}
    skipped: list[tuple[str, str]] = []
    for name in order:
        manifest = _shard(source, name, parse)
        specs = [dataclasses.replace(s, member=name) for s in (*manifest.weights, *manifest.optimizer)]
        for spec in specs:
            if name not in shards.get(spec.layer, ()):
                skipped.append((spec.key, f"in {name}, which the weight map does not list for {spec.layer or '/'}"))
                continue
            (optimizer if spec.layer.split("/")[0] == "optimizer" else weights).append(spec)
        for layer in manifest.layers:
            layers.setdefault(layer.name, []).extend(k for k in layer.keys if name in shards.get(layer.name, ()))
            aliases.setdefault(layer.name, layer.alias)
    return Manifest(
        url=source.url,
        format=FORMAT,
        size=source.size,
        etag=source.etag,
        weights=tuple(weights),
        layers=tuple(Layer(name, tuple(keys), aliases[name]) for name, keys in layers.items()),
        optimizer=tuple(optimizer),
        attrs={"sharding": metadata, "shards": order},
        skipped=tuple(skipped),
    )
