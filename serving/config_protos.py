"""Readers of TF Serving's text-proto config files, with TF Serving's own messages.

  --model_config_file        ModelServerConfig   tensorflow_serving.config.model_server_config_pb2
  --monitoring_config_file   MonitoringConfig    tensorflow_serving/config/monitoring_config.proto
  --batching_parameters_file BatchingParameters  tensorflow_serving/servables/tensorflow/
                                                 session_bundle_config.proto

The tensorflow-serving-api wheel ships model_server_config_pb2 but not the
monitoring or batching messages (the model server compiles them in). Their
descriptors are rebuilt below field for field (same package, names, numbers and
types) from those upstream .proto files, so text_format parses a file exactly as
the model server's `TextFormat::ParseFromString` does: an unknown field, a wrong
type or a syntax error is an error.
"""

from __future__ import annotations

import functools

from google.protobuf import descriptor_pb2, descriptor_pool, text_format, wrappers_pb2
from google.protobuf.message_factory import GetMessageClass

_F = descriptor_pb2.FieldDescriptorProto


class ConfigFileError(ValueError):
    """A config file that TF Serving would refuse to start with."""


def _field(message, name, number, kind, type_name=None, repeated=False):
    field = message.field.add(name=name, number=number, type=kind,
                              label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
    if type_name:
        field.type_name = type_name


@functools.cache
def _pool():
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(
        wrappers_pb2.DESCRIPTOR.serialized_pb))

    monitoring = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto",
        package="tensorflow.serving", syntax="proto3")
    prometheus = monitoring.message_type.add(name="PrometheusConfig")
    _field(prometheus, "enable", 1, _F.TYPE_BOOL)
    _field(prometheus, "path", 2, _F.TYPE_STRING)
    config = monitoring.message_type.add(name="MonitoringConfig")
    _field(config, "prometheus_config", 1, _F.TYPE_MESSAGE,
           ".tensorflow.serving.PrometheusConfig")
    pool.Add(monitoring)

    batching = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    params = batching.message_type.add(name="BatchingParameters")
    for name, number, wrapper in [("max_batch_size", 1, "Int64Value"),
                                  ("batch_timeout_micros", 2, "Int64Value"),
                                  ("max_enqueued_batches", 3, "Int64Value"),
                                  ("num_batch_threads", 4, "Int64Value"),
                                  ("thread_pool_name", 5, "StringValue")]:
        _field(params, name, number, _F.TYPE_MESSAGE, f".google.protobuf.{wrapper}")
    _field(params, "allowed_batch_sizes", 6, _F.TYPE_INT64, repeated=True)
    _field(params, "pad_variable_length_inputs", 7, _F.TYPE_BOOL)
    pool.Add(batching)
    return pool


def message_class(full_name: str):
    """The message class of 'tensorflow.serving.MonitoringConfig' / '...BatchingParameters'."""
    return GetMessageClass(_pool().FindMessageTypeByName(full_name))


def _parse(path: str, message):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise ConfigFileError(f"cannot read {path}: {err.strerror}") from None
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as err:
        raise ConfigFileError(f"Invalid protobuf file: '{path}': {err}") from None


def read_model_server_config(path: str):
    """A ModelServerConfig (text proto), checked as the model server checks it."""
    from tensorflow_serving.config import model_server_config_pb2

    config = _parse(path, model_server_config_pb2.ModelServerConfig())
    if config.WhichOneof("config") != "model_config_list":
        raise ConfigFileError(f"{path}: only model_config_list is supported")
    names = [m.name for m in config.model_config_list.config]
    for model in config.model_config_list.config:
        if not model.name or not model.base_path:
            raise ConfigFileError(f"{path}: every model needs a name and a base_path")
        if model.model_platform not in ("", "tensorflow"):
            raise ConfigFileError(f"{path}: model {model.name!r}: model_platform "
                                  f"{model.model_platform!r} is not 'tensorflow'")
        if model.model_version_policy.WhichOneof("policy_choice") == "specific" and \
                not model.model_version_policy.specific.versions:
            raise ConfigFileError(f"{path}: model {model.name!r}: specific policy "
                                  "without versions")
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ConfigFileError(f"{path}: duplicate model names {sorted(duplicates)}")
    return config


def read_monitoring_config(path: str):
    """A MonitoringConfig; a Prometheus path must start with '/'."""
    config = _parse(path, message_class("tensorflow.serving.MonitoringConfig")())
    prometheus = config.prometheus_config
    if prometheus.enable and prometheus.path and not prometheus.path.startswith("/"):
        raise ConfigFileError(f"{path}: prometheus_config.path must start with '/'")
    return config


def read_batching_parameters(path: str):
    """BatchingParameters, with the consistency rules of batching_session.cc."""
    params = _parse(path, message_class("tensorflow.serving.BatchingParameters")())
    allowed = list(params.allowed_batch_sizes)
    if allowed:
        if allowed != sorted(set(allowed)):
            raise ConfigFileError(f"{path}: allowed_batch_sizes must be increasing")
        if params.HasField("max_batch_size") and allowed[-1] != params.max_batch_size.value:
            raise ConfigFileError(f"{path}: the last allowed_batch_sizes entry "
                                  f"({allowed[-1]}) must equal max_batch_size "
                                  f"({params.max_batch_size.value})")
    for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
        if params.HasField(name) and getattr(params, name).value < 1:
            raise ConfigFileError(f"{path}: {name} must be >= 1")
    return params
