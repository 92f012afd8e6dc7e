"""TF Serving's REST API as a WSGI app (Werkzeug), over a `ServerCore`.

  GET  /v1/models/<name>[/versions/<v>|/labels/<l>]            model status
  GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata   signature defs
  POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict    {"instances": [...]}
                                                               or {"inputs": ...}

Request and response JSON follow https://www.tensorflow.org/tfx/serving/api_rest:
row format ("instances" -> "predictions") and columnar format ("inputs" ->
"outputs"); binary strings as {"b64": "..."}. Errors are {"error": "..."} with
the HTTP status TF Serving gives the same gRPC code (400, 404, 413, ...).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time

import grpc
import numpy as np
from google.protobuf import json_format
from werkzeug.wrappers import Request, Response

from serving.servables import ServerCore, ServingError, clip, invalid

_SPEC = r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
PREDICT_PATH = re.compile(_SPEC + r":(classify|regress|predict)", re.IGNORECASE)
STATUS_PATH = re.compile(_SPEC + r"(?:/(metadata))?", re.IGNORECASE)
_DRAIN_LIMIT = 64 << 20   # past this a too-large body is not read to its end


def json_response(payload, status: int = 200, indent: int | None = 1) -> Response:
    return Response(json.dumps(payload, indent=indent), status=status,
                    content_type="application/json")


def error_response(err: ServingError) -> Response:
    return json_response({"error": err.message}, err.http_status)


class Metrics:
    """Request counts and latencies in TF Serving's Prometheus metric names."""

    BUCKETS_US = tuple(100 * 2 ** i for i in range(16))   # 100 us .. 3.3 s

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: dict[tuple, int] = {}
        self.latency: dict[tuple, list] = {}   # key -> [bucket counts..., sum, count]

    def record(self, model: str, api: str, entrypoint: str, status: str, seconds: float):
        micros = seconds * 1e6
        with self._lock:
            key = (model, status)
            self.counts[key] = self.counts.get(key, 0) + 1
            lkey = (model, api, entrypoint)
            row = self.latency.setdefault(lkey, [0] * (len(self.BUCKETS_US) + 2))
            for i, bound in enumerate(self.BUCKETS_US):
                if micros <= bound:
                    row[i] += 1
            row[-2] += micros
            row[-1] += 1

    def page(self) -> str:
        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        with self._lock:
            for (model, status), n in sorted(self.counts.items()):
                lines.append(f':tensorflow:serving:request_count{{model_name="{model}",'
                             f'status="{status}"}} {n}')
            lines.append("# TYPE :tensorflow:serving:request_latency histogram")
            for (model, api, entry), row in sorted(self.latency.items()):
                labels = f'model_name="{model}",API="{api}",entrypoint="{entry}"'
                for bound, n in zip(self.BUCKETS_US, row):
                    lines.append(f":tensorflow:serving:request_latency_bucket{{{labels},"
                                 f'le="{bound}"}} {n}')
                lines.append(f':tensorflow:serving:request_latency_bucket{{{labels},'
                             f'le="+Inf"}} {row[-1]}')
                lines.append(f":tensorflow:serving:request_latency_sum{{{labels}}} "
                             f"{row[-2]:.0f}")
                lines.append(f":tensorflow:serving:request_latency_count{{{labels}}} "
                             f"{row[-1]}")
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- JSON <-> numpy
_JSON_TYPE = {str: "String", int: "Number", float: "Number", bool: "Bool",
              dict: "Object", list: "Array", type(None): "Null"}


def _type_error(value, expected: str) -> ServingError:
    shown = json.dumps(value)[:80]
    return invalid(f"JSON Value: {shown} Type: {_JSON_TYPE.get(type(value), '?')} is not "
                   f"of expected type: {expected}")


def _shape(value, leaves: list, key: str, depth: int = 0) -> tuple:
    if isinstance(value, list):
        if depth > 32:
            raise invalid(f"input '{key}' is nested more than 32 levels deep")
        shapes = [_shape(v, leaves, key, depth + 1) for v in value]
        if any(s != shapes[0] for s in shapes[1:]):
            raise invalid(f"input '{key}' is ragged: all elements of a list must have the "
                          f"same shape, got {shapes[0]} and "
                          f"{next(s for s in shapes if s != shapes[0])}")
        return (len(value),) + (shapes[0] if shapes else ())
    leaves.append(value)
    return ()


def _string_leaf(value) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise invalid("'b64' value is not valid base64") from None
    raise _type_error(value, "string")


def json_to_array(value, info, key: str) -> np.ndarray:
    """A JSON value -> numpy array of the TensorInfo's dtype (strings as bytes)."""
    import tensorflow as tf

    leaves: list = []
    shape = _shape(value, leaves, key)
    dtype = tf.dtypes.as_dtype(info.dtype)
    if dtype == tf.string:
        array = np.empty(len(leaves), dtype=object)
        array[:] = [_string_leaf(v) for v in leaves]
        return array.reshape(shape)
    if dtype == tf.bool:
        if any(not isinstance(v, bool) for v in leaves):
            raise _type_error(next(v for v in leaves if not isinstance(v, bool)), "bool")
        return np.array(leaves, dtype=bool).reshape(shape)
    if dtype.is_integer:
        bad = next((v for v in leaves if isinstance(v, bool) or not isinstance(v, int)), None)
        if bad is not None:
            raise _type_error(bad, dtype.name)
        if leaves and (min(leaves) < dtype.min or max(leaves) > dtype.max):
            raise invalid(f"input '{key}': a value is out of range for {dtype.name}")
        return np.array(leaves, dtype=dtype.as_numpy_dtype).reshape(shape)
    if dtype.is_floating:
        bad = next((v for v in leaves if isinstance(v, bool)
                    or not isinstance(v, (int, float))), None)
        if bad is not None:
            raise _type_error(bad, dtype.name)
        return np.array(leaves, dtype=dtype.as_numpy_dtype).reshape(shape)
    raise invalid(f"input '{key}': dtype {dtype.name} is not supported over REST here")


def _json_value(value):
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    return value


def array_to_json(array: np.ndarray):
    return _json_value(array.tolist())


def parse_predict_body(body: bytes, servable, max_batch_size: int):
    """-> (signature name, {input key: array}, "row" | "columnar")."""
    try:
        request = json.loads(body)
    except (ValueError, RecursionError) as err:
        raise invalid(f"JSON Parse error: {err}") from None
    if not isinstance(request, dict):
        raise invalid("JSON Parse error: the request body must be a JSON object with "
                      "'instances' or 'inputs'")
    signature_name = request.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise _type_error(signature_name, "string")
    name, signature = servable.signature(signature_name)
    keys = sorted(signature.inputs)
    if ("instances" in request) == ("inputs" in request):
        raise invalid("Missing 'instances' or 'inputs' key" if "instances" not in request
                      else "Only one of 'instances' or 'inputs' can be specified, not both")
    if "instances" in request:
        instances = request["instances"]
        if not isinstance(instances, list) or not instances:
            raise invalid("'instances' must be a non-empty JSON array (one element per row)")
        if len(instances) > max_batch_size:
            raise invalid(f"'instances' has {len(instances):,} rows; this server accepts "
                          f"at most {max_batch_size:,} per request (--max_batch_size): "
                          "split the batch")
        named = [isinstance(x, dict) and not (set(x) == {"b64"} and "b64" not in keys)
                 for x in instances]
        if any(named) and not all(named):
            raise invalid("'instances' mixes named (JSON object) and unnamed rows")
        if all(named):
            first = set(instances[0])
            for i, row in enumerate(instances):
                if set(row) != first:
                    raise invalid(f"instance {i} has keys {sorted(row)}, instance 0 has "
                                  f"{sorted(first)}: every row needs the same inputs")
            columns = {k: [row[k] for row in instances] for k in first}
        elif len(keys) == 1:
            columns = {keys[0]: instances}
        else:
            raise invalid(f"the signature has {len(keys)} inputs {keys}: each instance "
                          "must be a JSON object naming them")
        form = "row"
    else:
        inputs = request["inputs"]
        named = isinstance(inputs, dict) and not (set(inputs) == {"b64"} and "b64" not in keys)
        if named:
            columns = inputs
        elif len(keys) == 1:
            columns = {keys[0]: inputs}
        else:
            raise invalid(f"the signature has {len(keys)} inputs {keys}: 'inputs' must be "
                          "a JSON object naming them")
        form = "columnar"
    arrays = {}
    for key, value in columns.items():
        if key not in signature.inputs:
            arrays[key] = np.zeros(0)   # reported with the others by Servable.predict
            continue
        arrays[key] = json_to_array(value, signature.inputs[key], key)
    return name, arrays, form


def format_outputs(outputs: dict[str, np.ndarray], form: str):
    if form == "columnar":
        if len(outputs) == 1:
            return {"outputs": array_to_json(next(iter(outputs.values())))}
        return {"outputs": {k: array_to_json(v) for k, v in outputs.items()}}
    sizes = {k: (v.shape[0] if v.ndim else None) for k, v in outputs.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise invalid(f"outputs have different batch sizes {sizes}: use the 'inputs' "
                      "(columnar) request format")
    columns = {k: array_to_json(v) for k, v in outputs.items()}
    n = next(iter(sizes.values()))
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    return {"predictions": [{k: columns[k][i] for k in columns} for i in range(n)]}


# ---------------------------------------------------------------------- the app
class RestApi:
    """The WSGI application."""

    def __init__(self, core: ServerCore, max_request_bytes: int,
                 metrics: Metrics | None = None, prometheus_path: str | None = None):
        self.core, self.max_request_bytes = core, max_request_bytes
        self.metrics, self.prometheus_path = metrics, prometheus_path

    def __call__(self, environ, start_response):
        request = Request(environ)
        start = time.perf_counter()
        model, api = "", "other"
        try:
            path = request.path
            if self.prometheus_path and path == self.prometheus_path and self.metrics:
                response = Response(self.metrics.page(), content_type="text/plain")
                return response(environ, start_response)
            match = PREDICT_PATH.fullmatch(path)
            if request.method == "POST" and match:
                model, api = match.group(1), match.group(4).lower()
                response = self.predict(request, *match.groups())
            elif request.method == "GET" and STATUS_PATH.fullmatch(path):
                match = STATUS_PATH.fullmatch(path)
                model = match.group(1)
                api = "metadata" if match.group(4) else "status"
                response = self.status_or_metadata(*match.groups())
            elif path.lower().startswith("/v1/"):
                raise invalid(f"Malformed request: {request.method} {clip(path)}")
            else:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Malformed request: {request.method} {clip(path)}")
            status = "OK"
        except ServingError as err:
            response, status = error_response(err), err.code.name
        except Exception as err:  # noqa: BLE001  never a traceback to the client
            response = error_response(ServingError(grpc.StatusCode.INTERNAL,
                                                   f"internal error: {err}"))
            status = "INTERNAL"
        if self.metrics and model:
            self.metrics.record(model, api, "REST", status, time.perf_counter() - start)
        return response(environ, start_response)

    def read_body(self, request: Request) -> bytes:
        limit = self.max_request_bytes
        declared = request.content_length
        chunks, size = [], 0
        stream = request.stream
        while True:
            chunk = stream.read(1 << 16)
            if not chunk:
                break
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > _DRAIN_LIMIT:
                break
        if size > limit or (declared or 0) > limit:
            raise ServingError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Request body of {max(size, declared or 0):,} bytes exceeds the limit of "
                f"{limit:,} bytes (--max_request_bytes)", http_status=413)
        return b"".join(chunks)

    def predict(self, request: Request, name, version, label, method):
        body = self.read_body(request)
        servable = self.core.servable(name, int(version) if version else None, label)
        if method.lower() != "predict":
            raise invalid(f"Expected {method.lower()} signature method_name to be "
                          f"tensorflow/serving/{method.lower()}. Was: "
                          "tensorflow/serving/predict (use :predict)")
        limits = self.core.options.limits
        signature_name, inputs, form = parse_predict_body(body, servable,
                                                          limits.max_batch_size)
        _, outputs = servable.predict(signature_name, inputs, limits)
        return json_response(format_outputs(outputs, form), indent=None)

    def status_or_metadata(self, name, version, label, metadata):
        version = int(version) if version else None
        if metadata:
            servable = self.core.servable(name, version, label)
            signature_map = json_format.MessageToDict(
                self.core.signature_def_map(servable), preserving_proto_field_name=True)
            return json_response({
                "model_spec": {"name": servable.name, "signature_name": "",
                               "version": str(servable.version)},
                "metadata": {"signature_def": signature_map}})
        from tensorflow_serving.apis import get_model_status_pb2

        response = get_model_status_pb2.GetModelStatusResponse()
        for v, state, code, message in self.core.status(name, version, label):
            entry = response.model_version_status.add(version=v)
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
            entry.status.error_code = code_number(code)
            entry.status.error_message = message
        return json_response(json_format.MessageToDict(
            response, preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True))


def code_number(name: str) -> int:
    """tensorflow.error.Code name -> number (StatusProto.error_code)."""
    from tensorflow_serving.apis import status_pb2

    enum = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type
    return enum.values_by_name[name].number
