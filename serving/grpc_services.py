"""TF Serving's gRPC services over a `ServerCore`, on the tensorflow-serving-api stubs.

  tensorflow.serving.PredictionService  Predict, GetModelMetadata
                                        (Classify, Regress, MultiInference: UNIMPLEMENTED;
                                        the exported signatures are predict signatures)
  tensorflow.serving.ModelService       GetModelStatus, HandleReloadConfigRequest
"""

from __future__ import annotations

import time
from concurrent import futures

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from serving.servables import ServerCore, ServingError, invalid


def _spec(spec):
    return (spec.name, spec.version.value if spec.HasField("version") else None,
            spec.version_label or None)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServerCore, metrics=None):
        self.core, self.metrics = core, metrics

    def _call(self, context, api: str, model: str, fn):
        start, status = time.perf_counter(), "OK"
        try:
            if context.time_remaining() is not None and context.time_remaining() <= 0:
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            return fn()
        except ServingError as err:
            status = err.code.name
            context.abort(err.code, err.message)
        except Exception as err:  # noqa: BLE001  never a traceback to the client
            status = "INTERNAL"
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {err}")
        finally:
            if self.metrics and model:
                self.metrics.record(model, api, "GRPC", status, time.perf_counter() - start)

    def Predict(self, request, context):
        return self._call(context, "predict", request.model_spec.name,
                          lambda: self.core.predict_request(request))

    def GetModelMetadata(self, request, context):
        def run():
            if not request.metadata_field:
                raise invalid("GetModelMetadataRequest must specify at least one "
                              "metadata_field")
            unknown = [f for f in request.metadata_field if f != "signature_def"]
            if unknown:
                raise invalid(f"Metadata field {unknown[0]} is not supported")
            servable = self.core.servable(*_spec(request.model_spec))
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.metadata["signature_def"].Pack(self.core.signature_def_map(servable))
            return response

        return self._call(context, "metadata", request.model_spec.name, run)

    def _unimplemented(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "not served by the local server: the model has predict signatures "
                      "only; use Predict")

    Classify = Regress = MultiInference = _unimplemented


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServerCore):
        self.core = core

    def GetModelStatus(self, request, context):
        try:
            rows = self.core.status(*_spec(request.model_spec))
        except ServingError as err:
            context.abort(err.code, err.message)
        response = get_model_status_pb2.GetModelStatusResponse()
        from serving.rest import code_number

        for version, state, code, message in rows:
            entry = response.model_version_status.add(version=version)
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
            entry.status.error_code = code_number(code)
            entry.status.error_message = message
        return response

    def HandleReloadConfigRequest(self, request, context):
        from serving.rest import code_number

        response = model_management_pb2.ReloadConfigResponse()
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid("only model_config_list is supported")
            self.core.reload(list(request.config.model_config_list.config))
        except ServingError as err:
            response.status.error_code = code_number(err.code.name)
            response.status.error_message = err.message
        return response


def start_grpc_server(core: ServerCore, host: str, port: int, max_request_bytes: int,
                      max_threads: int, metrics=None) -> grpc.Server:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", max_request_bytes),
                 ("grpc.max_send_message_length", 2 ** 31 - 1),
                 ("grpc.so_reuseport", 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as err:
        raise OSError(f"cannot listen for gRPC on {address}: {err}") from None
    if not bound:
        raise OSError(f"cannot listen for gRPC on {address} (port in use?)")
    server.start()
    return server
