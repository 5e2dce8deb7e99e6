"""The checkpoint's object graph: which attribute path each saved tensor belongs to, and optimizer slots.

Object-based checkpoints (``tf.train.Checkpoint``, Keras 2 ``save_weights`` in TF
format) store a serialized ``TrackableObjectGraph`` as the scalar string tensor
``_CHECKPOINTABLE_OBJECT_GRAPH``.  Node 0 is the root object; each node lists
its children (``local_name`` → node id), the tensors it saved (``attributes``:
name and checkpoint key) and, for an optimizer, its slot variables (original
variable node, slot name, slot variable node).

From it this module derives, for every checkpoint key, the attribute paths
that reach its owner from the root (``encoder/dense1/kernel``,
``layer_with_weights-0/kernel``, ``layers/0/...``; shortest first, which is the
one TensorFlow used to form the key), and the slot variables with the keys of
their original variables; a slot variable's path is TensorFlow's
``<variable path>/.OPTIMIZER_SLOT/<optimizer path>/<slot name>``.  Every node id the graph mentions must exist.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from ...errors import FormatError
from . import protos

__all__ = ["OBJECT_GRAPH_KEY", "ObjectGraph", "SlotVariable", "parse_object_graph"]

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VARIABLE_VALUE = "VARIABLE_VALUE"
MAX_PATHS_PER_NODE = 16  # aliases per object kept; Keras lists each layer under several names


@dataclass(frozen=True)
class SlotVariable:
    """One optimizer slot: ``slot_name`` (e.g. ``m``) of the variable saved as ``original_key``."""

    optimizer_path: str
    slot_name: str
    original_node: int
    slot_node: int
    original_keys: tuple[str, ...]
    slot_keys: tuple[str, ...]


@dataclass
class ObjectGraph:
    """The decoded graph with its derived key → paths map and slot list."""

    proto: object
    node_paths: dict[int, list[str]]
    key_paths: dict[str, list[str]]
    key_nodes: dict[str, int]
    slots: list[SlotVariable]

    @property
    def num_nodes(self) -> int:
        return len(self.proto.nodes)

    def path(self, key: str) -> str | None:
        """The primary (shortest) attribute path of ``key``, or None when no object owns it."""
        paths = self.key_paths.get(key)
        return paths[0] if paths else None


def parse_object_graph(data: bytes, where: str) -> ObjectGraph:
    """Decode and check a serialized ``TrackableObjectGraph`` (``where`` names its file in messages)."""
    try:
        proto = protos.TrackableObjectGraph.FromString(data)
    except DecodeError as exc:
        raise FormatError(f"{where}: malformed {OBJECT_GRAPH_KEY}: {exc}") from None
    if not proto.nodes:
        raise FormatError(f"{where}: {OBJECT_GRAPH_KEY} has no nodes")
    _check_node_ids(proto, where)
    node_paths = _node_paths(proto)
    key_paths, key_nodes = _key_paths(proto, node_paths)
    slots = _slots(proto, node_paths, where)
    _add_slot_paths(proto, slots, node_paths, key_paths, key_nodes)
    return ObjectGraph(proto, node_paths, key_paths, key_nodes, slots)


def _check_node_ids(proto, where: str) -> None:
    count = len(proto.nodes)

    def check(node_id: int, context: str) -> None:
        if not 0 <= node_id < count:
            raise FormatError(f"{where}: {OBJECT_GRAPH_KEY}: {context} names node {node_id}, but there are {count}")

    for i, node in enumerate(proto.nodes):
        for child in node.children:
            check(child.node_id, f"node {i}'s child {child.local_name!r}")
        for ref in node.slot_variables:
            check(ref.original_variable_node_id, f"node {i}'s slot {ref.slot_name!r} (original variable)")
            check(ref.slot_variable_node_id, f"node {i}'s slot {ref.slot_name!r} (slot variable)")


def _node_paths(proto) -> dict[int, list[str]]:
    """Attribute paths from the root to each node, breadth first so the shortest comes first."""
    paths: dict[int, list[str]] = {0: [""]}
    queue: deque[tuple[int, str, frozenset[int]]] = deque([(0, "", frozenset([0]))])
    while queue:
        node_id, path, seen = queue.popleft()
        for child in proto.nodes[node_id].children:
            if child.node_id in seen:
                continue  # a cycle back to an ancestor
            known = paths.setdefault(child.node_id, [])
            if len(known) >= MAX_PATHS_PER_NODE:
                continue
            child_path = f"{path}/{child.local_name}" if path else child.local_name
            known.append(child_path)
            queue.append((child.node_id, child_path, seen | {child.node_id}))
    return paths


def _key_paths(proto, node_paths: dict[int, list[str]]) -> tuple[dict[str, list[str]], dict[str, int]]:
    key_paths: dict[str, list[str]] = {}
    key_nodes: dict[str, int] = {}
    for node_id, node in enumerate(proto.nodes):
        for attr in node.attributes:
            suffix = "" if attr.name == VARIABLE_VALUE else attr.name
            paths = [_join(p, suffix) for p in node_paths.get(node_id, [])]
            key_paths.setdefault(attr.checkpoint_key, []).extend(paths)
            key_nodes.setdefault(attr.checkpoint_key, node_id)
    return key_paths, key_nodes


def _slots(proto, node_paths: dict[int, list[str]], where: str) -> list[SlotVariable]:
    slots = []
    for node_id, node in enumerate(proto.nodes):
        for ref in node.slot_variables:
            optimizer_path = (node_paths.get(node_id) or [""])[0]
            slots.append(
                SlotVariable(
                    optimizer_path=optimizer_path,
                    slot_name=ref.slot_name,
                    original_node=ref.original_variable_node_id,
                    slot_node=ref.slot_variable_node_id,
                    original_keys=_keys(proto, ref.original_variable_node_id),
                    slot_keys=_keys(proto, ref.slot_variable_node_id),
                )
            )
    return slots


def _add_slot_paths(proto, slots, node_paths, key_paths, key_nodes) -> None:
    """Slot variables are no object's children; name them as TensorFlow's keys do:
    ``<variable path>/.OPTIMIZER_SLOT/<optimizer path>/<slot name>``."""
    for slot in slots:
        originals = node_paths.get(slot.original_node)
        if not originals or slot.slot_node in node_paths:
            continue
        path = f"{originals[0]}/.OPTIMIZER_SLOT/{slot.optimizer_path}/{slot.slot_name}"
        node_paths[slot.slot_node] = [path]
        for attr in proto.nodes[slot.slot_node].attributes:
            suffix = "" if attr.name == VARIABLE_VALUE else attr.name
            key_paths.setdefault(attr.checkpoint_key, []).append(_join(path, suffix))
            key_nodes.setdefault(attr.checkpoint_key, slot.slot_node)


def _keys(proto, node_id: int) -> tuple[str, ...]:
    return tuple(a.checkpoint_key for a in proto.nodes[node_id].attributes)


def _join(path: str, suffix: str) -> str:
    if not suffix:
        return path
    return f"{path}/{suffix}" if path else suffix
