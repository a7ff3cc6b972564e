"""The part of Triton's ModelConfig protobuf (triton-inference-server/common,
protobuf/model_config.proto) that our config.pbtxt files use, built at run time so tests can
parse them strictly: an unknown field, a wrong type or a misspelt enum fails to parse."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

F = descriptor_pb2.FieldDescriptorProto
OPTIONAL, REPEATED = F.LABEL_OPTIONAL, F.LABEL_REPEATED


def _field(msg, name, number, kind, label=OPTIONAL, type_name=None):
    f = msg.field.add(name=name, number=number, type=kind, label=label)
    if type_name:
        f.type_name = type_name


def _map_entry(parent, entry_name):
    entry = parent.nested_type.add(name=entry_name)
    entry.options.map_entry = True
    _field(entry, "key", 1, F.TYPE_STRING)
    _field(entry, "value", 2, F.TYPE_STRING)


def _build():
    fd = descriptor_pb2.FileDescriptorProto(
        name="distill3d_test_model_config.proto", package="inference", syntax="proto3"
    )
    dtype = fd.enum_type.add(name="DataType")
    for i, name in enumerate(
        [
            "INVALID",
            "BOOL",
            "UINT8",
            "UINT16",
            "UINT32",
            "UINT64",
            "INT8",
            "INT16",
            "INT32",
            "INT64",
            "FP16",
            "FP32",
            "FP64",
            "STRING",
            "BF16",
        ]
    ):
        dtype.value.add(name=f"TYPE_{name}", number=i)

    group = fd.message_type.add(name="ModelInstanceGroup")
    kind = group.enum_type.add(name="Kind")
    for i, name in enumerate(["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]):
        kind.value.add(name=name, number=i)
    _field(group, "name", 1, F.TYPE_STRING)
    _field(group, "kind", 4, F.TYPE_ENUM, type_name=".inference.ModelInstanceGroup.Kind")
    _field(group, "count", 2, F.TYPE_INT32)
    _field(group, "gpus", 3, F.TYPE_INT32, REPEATED)

    for name, dims_number in (("ModelInput", 4), ("ModelOutput", 3)):
        msg = fd.message_type.add(name=name)
        _field(msg, "name", 1, F.TYPE_STRING)
        _field(msg, "data_type", 2, F.TYPE_ENUM, type_name=".inference.DataType")
        _field(msg, "dims", dims_number, F.TYPE_INT64, REPEATED)

    batching = fd.message_type.add(name="ModelDynamicBatching")
    _field(batching, "preferred_batch_size", 1, F.TYPE_INT32, REPEATED)
    _field(batching, "max_queue_delay_microseconds", 2, F.TYPE_UINT64)
    _field(batching, "preserve_ordering", 3, F.TYPE_BOOL)

    ensembling = fd.message_type.add(name="ModelEnsembling")
    step = ensembling.nested_type.add(name="Step")
    _field(step, "model_name", 1, F.TYPE_STRING)
    _field(step, "model_version", 2, F.TYPE_INT64)
    for map_name, number in (("input_map", 3), ("output_map", 4)):
        entry = "InputMapEntry" if map_name == "input_map" else "OutputMapEntry"
        _map_entry(step, entry)
        _field(step, map_name, number, F.TYPE_MESSAGE, REPEATED,
               f".inference.ModelEnsembling.Step.{entry}")  # fmt: skip
    _field(ensembling, "step", 1, F.TYPE_MESSAGE, REPEATED, ".inference.ModelEnsembling.Step")

    config = fd.message_type.add(name="ModelConfig")
    _field(config, "name", 1, F.TYPE_STRING)
    _field(config, "platform", 2, F.TYPE_STRING)
    _field(config, "backend", 17, F.TYPE_STRING)
    _field(config, "max_batch_size", 4, F.TYPE_INT32)
    _field(config, "input", 5, F.TYPE_MESSAGE, REPEATED, ".inference.ModelInput")
    _field(config, "output", 6, F.TYPE_MESSAGE, REPEATED, ".inference.ModelOutput")
    _field(config, "dynamic_batching", 11, F.TYPE_MESSAGE,
           type_name=".inference.ModelDynamicBatching")  # fmt: skip
    _field(config, "ensemble_scheduling", 15, F.TYPE_MESSAGE,
           type_name=".inference.ModelEnsembling")  # fmt: skip
    _field(config, "instance_group", 7, F.TYPE_MESSAGE, REPEATED, ".inference.ModelInstanceGroup")
    _field(config, "default_model_filename", 8, F.TYPE_STRING)

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


ModelConfig = _build()


def parse_config(text: str):
    """Parse config.pbtxt text strictly into a ModelConfig message."""
    return text_format.Parse(text, ModelConfig())
