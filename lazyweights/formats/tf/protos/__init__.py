"""TensorFlow checkpoint protobuf messages, built at runtime without generated code.

The ``.proto`` files beside this module document the subset of TensorFlow's
``tensor_bundle.proto``, ``tensor_shape.proto``, ``types.proto`` and
``trackable_object_graph.proto`` and ``checkpoint_state.proto`` that a checkpoint reader needs; field numbers
match TensorFlow's, so the bytes TensorFlow writes decode unchanged.

Why runtime descriptors instead of committed ``_pb2.py`` files: generated code is
tied to the protoc version that wrote it (protobuf 4, 5, 6 and later each refuse
some older or newer gencode), whereas a ``FileDescriptorProto`` assembled here
works with every protobuf release that has ``descriptor_pool``.  The classes live
in a private pool, so they never clash with TensorFlow's own if both are loaded.
``tests/test_tf_checkpoint_protos.py`` checks these tables against the ``.proto`` files.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool

__all__ = [
    "BundleEntryProto",
    "BundleHeaderProto",
    "CheckpointState",
    "DataType",
    "TensorShapeProto",
    "TensorSliceProto",
    "TrackableObjectGraph",
    "VersionDef",
    "file_descriptors",
]

PACKAGE = "lazyweights.tf"
_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "string": _F.TYPE_STRING,
    "bool": _F.TYPE_BOOL,
    "fixed32": _F.TYPE_FIXED32,
    "double": _F.TYPE_DOUBLE,
}

#: TensorFlow's DataType enum values (types.proto), the subset checkpoints use.
DATA_TYPES: dict[str, int] = {
    "DT_INVALID": 0, "DT_FLOAT": 1, "DT_DOUBLE": 2, "DT_INT32": 3, "DT_UINT8": 4, "DT_INT16": 5,
    "DT_INT8": 6, "DT_STRING": 7, "DT_COMPLEX64": 8, "DT_INT64": 9, "DT_BOOL": 10, "DT_QINT8": 11,
    "DT_QUINT8": 12, "DT_QINT32": 13, "DT_BFLOAT16": 14, "DT_QINT16": 15, "DT_QUINT16": 16,
    "DT_UINT16": 17, "DT_COMPLEX128": 18, "DT_HALF": 19, "DT_RESOURCE": 20, "DT_VARIANT": 21,
    "DT_UINT32": 22, "DT_UINT64": 23, "DT_FLOAT8_E5M2": 24, "DT_FLOAT8_E4M3FN": 25, "DT_INT4": 29,
    "DT_UINT4": 30,
}  # fmt: skip

# (name, number, type, repeated): type is a scalar name, "enum:<Name>" or a message name
Field = tuple[str, int, str, bool]

# message name -> fields; nested messages are spelled "Outer.Inner"
BUNDLE_MESSAGES: dict[str, list[Field]] = {
    "TensorShapeProto": [("dim", 2, "TensorShapeProto.Dim", True), ("unknown_rank", 3, "bool", False)],
    "TensorShapeProto.Dim": [("size", 1, "int64", False), ("name", 2, "string", False)],
    "TensorSliceProto": [("extent", 1, "TensorSliceProto.Extent", True)],
    "TensorSliceProto.Extent": [("start", 1, "int64", False), ("length", 2, "int64", False)],
    "VersionDef": [("producer", 1, "int32", False), ("min_consumer", 2, "int32", False),
                   ("bad_consumers", 3, "int32", True)],
    "BundleHeaderProto": [("num_shards", 1, "int32", False),
                          ("endianness", 2, "enum:BundleHeaderProto.Endianness", False),
                          ("version", 3, "VersionDef", False)],
    "BundleEntryProto": [("dtype", 1, "enum:DataType", False), ("shape", 2, "TensorShapeProto", False),
                         ("shard_id", 3, "int32", False), ("offset", 4, "int64", False),
                         ("size", 5, "int64", False), ("crc32c", 6, "fixed32", False),
                         ("slices", 7, "TensorSliceProto", True)],
}  # fmt: skip
# message name -> {field name: oneof name}
ONEOFS: dict[str, dict[str, str]] = {"TensorSliceProto.Extent": {"length": "has_length"}}
BUNDLE_ENUMS: dict[str, dict[str, int]] = {
    "DataType": DATA_TYPES,
    "BundleHeaderProto.Endianness": {"LITTLE": 0, "BIG": 1},
}

_TO = "TrackableObjectGraph.TrackableObject"
GRAPH_MESSAGES: dict[str, list[Field]] = {
    "BoolValue": [("value", 1, "bool", False)],
    "RegisteredSaver": [("name", 1, "string", False), ("object_name", 2, "string", False)],
    "TrackableObjectGraph": [("nodes", 1, _TO, True)],
    _TO: [("children", 1, f"{_TO}.ObjectReference", True), ("attributes", 2, f"{_TO}.SerializedTensor", True),
          ("slot_variables", 3, f"{_TO}.SlotVariableReference", True),
          ("registered_saver", 4, "RegisteredSaver", False), ("has_checkpoint_values", 5, "BoolValue", False)],
    f"{_TO}.ObjectReference": [("node_id", 1, "int32", False), ("local_name", 2, "string", False)],
    f"{_TO}.SerializedTensor": [("name", 1, "string", False), ("full_name", 2, "string", False),
                                ("checkpoint_key", 3, "string", False)],
    f"{_TO}.SlotVariableReference": [("original_variable_node_id", 1, "int32", False),
                                     ("slot_name", 2, "string", False), ("slot_variable_node_id", 3, "int32", False)],
}  # fmt: skip


STATE_MESSAGES: dict[str, list[Field]] = {
    "CheckpointState": [("model_checkpoint_path", 1, "string", False),
                        ("all_model_checkpoint_paths", 2, "string", True),
                        ("all_model_checkpoint_timestamps", 3, "double", True),
                        ("last_preserved_timestamp", 4, "double", False)],
}  # fmt: skip


def _field(name: str, number: int, type_: str, repeated: bool) -> descriptor_pb2.FieldDescriptorProto:
    field = _F(name=name, number=number, json_name=name)
    field.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    if type_ in _SCALARS:
        field.type = _SCALARS[type_]
    elif type_.startswith("enum:"):
        field.type = _F.TYPE_ENUM
        field.type_name = f".{PACKAGE}.{type_[5:]}"
    else:
        field.type = _F.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{type_}"
    return field


def _container(fdp: descriptor_pb2.FileDescriptorProto, dotted: str, made: dict[str, Any]) -> Any:
    """The message (or file) that holds the type named ``dotted``; creates outer messages on demand."""
    outer = dotted.rpartition(".")[0]
    if not outer:
        return fdp
    if outer not in made:
        parent = _container(fdp, outer, made)
        made[outer] = parent.message_type.add(name=outer.rpartition(".")[2]) if parent is fdp else \
            parent.nested_type.add(name=outer.rpartition(".")[2])  # fmt: skip
    return made[outer]


def _add_oneofs(message: descriptor_pb2.DescriptorProto, oneofs: dict[str, str]) -> None:
    names: list[str] = []
    for field in message.field:
        if field.name in oneofs:
            if oneofs[field.name] not in names:
                names.append(oneofs[field.name])
                message.oneof_decl.add(name=oneofs[field.name])
            field.oneof_index = names.index(oneofs[field.name])


def _file(name: str, messages: dict[str, list[Field]], enums: dict[str, dict[str, int]]):
    fdp = descriptor_pb2.FileDescriptorProto(name=name, package=PACKAGE, syntax="proto3")
    made: dict[str, Any] = {}
    for dotted in sorted(messages, key=lambda n: n.count(".")):
        if dotted not in made:
            parent = _container(fdp, dotted, made)
            short = dotted.rpartition(".")[2]
            made[dotted] = parent.message_type.add(name=short) if parent is fdp else parent.nested_type.add(name=short)
        made[dotted].field.extend(_field(*f) for f in messages[dotted])
        _add_oneofs(made[dotted], ONEOFS.get(dotted, {}))
    for dotted, values in enums.items():
        parent = _container(fdp, dotted, made)
        short = dotted.rpartition(".")[2]
        enum = parent.enum_type.add(name=short)
        enum.value.extend(descriptor_pb2.EnumValueDescriptorProto(name=k, number=v) for k, v in values.items())
    return fdp


def file_descriptors() -> list[descriptor_pb2.FileDescriptorProto]:
    """The two files' descriptors, as assembled from the tables above."""
    return [
        _file("lazyweights/tf/tensor_bundle.proto", BUNDLE_MESSAGES, BUNDLE_ENUMS),
        _file("lazyweights/tf/trackable_object_graph.proto", GRAPH_MESSAGES, {}),
        _file("lazyweights/tf/checkpoint_state.proto", STATE_MESSAGES, {}),
    ]


def _message_classes() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    for fdp in file_descriptors():
        pool.Add(fdp)
    names = [n for n in (*BUNDLE_MESSAGES, *GRAPH_MESSAGES, *STATE_MESSAGES) if "." not in n]
    return {n: _message_class(pool.FindMessageTypeByName(f"{PACKAGE}.{n}")) for n in names}


def _message_class(descriptor: Any) -> Any:
    try:  # protobuf >= 4.22
        from google.protobuf.message_factory import GetMessageClass
    except ImportError:  # pragma: no cover - older protobuf
        from google.protobuf.message_factory import MessageFactory

        return MessageFactory(descriptor.file.pool).GetPrototype(descriptor)
    return GetMessageClass(descriptor)


_CLASSES = _message_classes()
TensorShapeProto = _CLASSES["TensorShapeProto"]
TensorSliceProto = _CLASSES["TensorSliceProto"]
VersionDef = _CLASSES["VersionDef"]
BundleHeaderProto = _CLASSES["BundleHeaderProto"]
BundleEntryProto = _CLASSES["BundleEntryProto"]
TrackableObjectGraph = _CLASSES["TrackableObjectGraph"]
CheckpointState = _CLASSES["CheckpointState"]
DataType = DATA_TYPES
