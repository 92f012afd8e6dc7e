"""Client of a TF Serving model server (or serving.local_server): REST and gRPC.

    python -m serving.client --host 127.0.0.1 --rest_port 8501 --grpc_port 8500 \\
        --model text_classifier "a small domesticated carnivorous mammal"
    python -m serving.client --protocol grpc --model text_classifier "a tree" "a boat"
    python -m serving.client --format inputs --texts_file texts.txt --json
    python -m serving.client --signature tokenize "a tree"   # any signature's outputs
    python -m serving.client --status          # or --metadata
    python -m serving.client --model language_model --input_key prompt "Never"
    python -m serving.client --model language_model --input_key prompt \\
        --signature generate --param max_new_tokens=20 --param temperature=0.8 \\
        --param top_k=40 --param top_p=1.0 --param seed=7 "Never"

From Python:

    from serving.client import ServingClient
    client = ServingClient("127.0.0.1", rest_port=8501, grpc_port=8500,
                           model="text_classifier")
    result = client.predict(["a tree"], protocol="grpc")
    result.outputs["label"], result.model_version

REST requests use the row ("instances") or columnar ("inputs") format of
TF Serving's REST API; gRPC requests go through the tensorflow-serving-api
stubs (PredictionService.Predict / GetModelMetadata, ModelService.GetModelStatus).
Every call has a timeout; 503 / UNAVAILABLE (server starting, model loading,
connection refused) is retried with exponential backoff and jitter; inputs
longer than `batch_size` are sent as several requests and the outputs joined.
The REST path needs only `requests`; gRPC imports tensorflow-serving-api.

The CLI prints one line per input: for a classifier's outputs (label and
probabilities) the label, the top probability and the text; for any other
signature each output as name=value (long lists cut, with their length), then
the text. --json prints the outputs as returned.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import threading
import time

import requests

RETRY_HTTP = {503}


class ServingError(Exception):
    """A request the server refused or that failed after the retries.

    `status` is the HTTP status (REST) or the gRPC status code name (gRPC).
    """

    def __init__(self, status, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


@dataclasses.dataclass
class Prediction:
    """Outputs of a predict call, one list entry per input row."""

    outputs: dict[str, list]          # output name -> values per row
    model_version: int | None = None  # gRPC reports it; REST does not

    def rows(self) -> list[dict]:
        n = len(next(iter(self.outputs.values()), []))
        return [{k: v[i] for k, v in self.outputs.items()} for i in range(n)]


class ServingClient:
    """A TF Serving client; thread-safe (one requests.Session per thread for REST).

    Args:
        host: server address.
        rest_port / grpc_port: ports of the REST and gRPC APIs.
        model: model name; `version` or `label` pin a version (else the latest).
        signature: signature name for predict.
        input_key: the signature's input name.
        timeout: seconds for one request (connect + response).
        retries: extra attempts on 503 / UNAVAILABLE / connection refused.
        backoff: first wait in seconds; doubles per attempt, +-50% jitter,
            capped by `max_backoff`.
        batch_size: most rows per request; longer inputs are split.
    """

    def __init__(self, host: str = "127.0.0.1", rest_port: int = 8501,
                 grpc_port: int = 8500, model: str = "text_classifier",
                 version: int | None = None, label: str | None = None,
                 signature: str = "serving_default", input_key: str = "text",
                 timeout: float = 10.0, retries: int = 3, backoff: float = 0.2,
                 max_backoff: float = 5.0, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if version is not None and label:
            raise ValueError("pass version or label, not both")
        self.host, self.rest_port, self.grpc_port = host, rest_port, grpc_port
        self.model, self.version, self.label = model, version, label
        self.signature, self.input_key = signature, input_key
        self.timeout, self.retries = timeout, retries
        self.backoff, self.max_backoff, self.batch_size = backoff, max_backoff, batch_size
        self._local = threading.local()
        self._channel = None
        self._lock = threading.Lock()
        self._output_names: dict[str, str] = {}

    # ---------------------------------------------------------------- plumbing
    def _with_retries(self, call):
        attempt = 0
        while True:
            try:
                return call()
            except _Retryable as err:
                if attempt >= self.retries:
                    raise ServingError(err.status, f"{err.message} (after "
                                       f"{attempt + 1} attempts)") from None
                delay = min(self.backoff * 2 ** attempt, self.max_backoff)
                time.sleep(delay * random.uniform(0.5, 1.5))
                attempt += 1

    @property
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _model_path(self) -> str:
        path = f"http://{self._http_host()}:{self.rest_port}/v1/models/{self.model}"
        if self.version is not None:
            path += f"/versions/{self.version}"
        elif self.label:
            path += f"/labels/{self.label}"
        return path

    def _http_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def _rest(self, method: str, url: str, payload=None):
        def call():
            try:
                response = self._session.request(
                    method, url, timeout=self.timeout,
                    data=None if payload is None else json.dumps(payload),
                    headers={"Content-Type": "application/json"})
            except requests.ConnectionError as err:
                raise _Retryable("UNAVAILABLE", f"cannot connect to {url}: {err}") from None
            except requests.Timeout:
                raise ServingError("DEADLINE_EXCEEDED",
                                   f"no response from {url} within {self.timeout}s") from None
            if response.status_code in RETRY_HTTP:
                raise _Retryable(response.status_code, _error_text(response))
            if response.status_code != 200:
                raise ServingError(response.status_code, _error_text(response))
            try:
                return response.json()
            except ValueError:
                raise ServingError(response.status_code,
                                   f"response is not JSON: {response.text[:200]!r}") from None

        return self._with_retries(call)

    def _grpc(self, method: str, request):
        import grpc

        stub = self._stubs()[method]

        def call():
            try:
                return stub(request, timeout=self.timeout)
            except grpc.RpcError as err:
                code = err.code()
                if code == grpc.StatusCode.UNAVAILABLE:
                    raise _Retryable(code.name, err.details() or "unavailable") from None
                raise ServingError(code.name, err.details() or code.name) from None

        return self._with_retries(call)

    def _stubs(self):
        with self._lock:
            if self._channel is None:
                import grpc
                from tensorflow_serving.apis import (
                    model_service_pb2_grpc,
                    prediction_service_pb2_grpc,
                )

                self._channel = grpc.insecure_channel(
                    f"{self._http_host()}:{self.grpc_port}",
                    options=[("grpc.max_receive_message_length", 2 ** 31 - 1),
                             ("grpc.max_send_message_length", 2 ** 31 - 1)])
                prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
                models = model_service_pb2_grpc.ModelServiceStub(self._channel)
                self._methods = {"Predict": prediction.Predict,
                                 "GetModelMetadata": prediction.GetModelMetadata,
                                 "GetModelStatus": models.GetModelStatus}
            return self._methods

    def _model_spec(self, spec, signature: bool = True):
        spec.name = self.model
        if self.version is not None:
            spec.version.value = self.version
        elif self.label:
            spec.version_label = self.label
        if signature:
            spec.signature_name = self.signature

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    # -------------------------------------------------------------------- API
    def predict(self, texts, protocol: str = "rest", format: str = "instances",
                params: dict | None = None) -> Prediction:
        """Outputs for `texts` (a list of str, or of bytes for a binary input such
        as an image classifier's encoded PNG/JPEG `image_bytes`: REST sends them
        as {"b64": ...}), in batches of `batch_size`.

        `params`: the signature's scalar inputs besides the texts, by name (an int
        is sent as int32, a float as float32), e.g. a language model's
        {"max_new_tokens": 20, "temperature": 0.8, "top_k": 40, "top_p": 1.0,
        "seed": 7} for its `generate` signature. REST then uses the columnar
        ("inputs") format, in which inputs may differ in shape.
        """
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        if protocol not in ("rest", "grpc"):
            raise ValueError(f"protocol must be 'rest' or 'grpc', got {protocol!r}")
        if format not in ("instances", "inputs"):
            raise ValueError(f"format must be 'instances' or 'inputs', got {format!r}")
        texts = list(texts)
        params = dict(params or {})
        for name, value in params.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"params[{name!r}] must be an int or a float, got {value!r}")
        if params:
            format = "inputs"
        parts = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            parts.append(self._predict_grpc(batch, params) if protocol == "grpc"
                         else self._predict_rest(batch, format, params))
        if not parts:
            return Prediction({})
        outputs = {k: [v for p in parts for v in p.outputs[k]] for k in parts[0].outputs}
        versions = {p.model_version for p in parts}
        return Prediction(outputs, parts[-1].model_version if len(versions) == 1 else None)

    def _predict_rest(self, texts: list[str], format: str, params: dict) -> Prediction:
        url = f"{self._model_path()}:predict"
        if format == "instances":
            body = self._rest("POST", url, {"signature_name": self.signature,
                                            "instances": [_rest_value(t) for t in texts]})
            predictions = body["predictions"]
            if predictions and isinstance(predictions[0], dict):
                return Prediction({k: [p[k] for p in predictions] for k in predictions[0]})
            return Prediction({self._single_output_name(): predictions})
        body = self._rest("POST", url, {"signature_name": self.signature,
                                        "inputs": {self.input_key: [_rest_value(t) for t in texts],
                                                   **params}})
        outputs = body["outputs"]
        return Prediction(outputs if isinstance(outputs, dict)
                          else {self._single_output_name(): outputs})

    def _single_output_name(self) -> str:
        """The name of the signature's only output. TF Serving's REST API leaves it out
        of the response when a signature has one output; the metadata has it. "output"
        when the metadata does not tell (asked once per signature)."""
        if self.signature not in self._output_names:
            name = "output"
            try:
                signatures = self.metadata("rest")["metadata"]["signature_def"][
                    "signature_def"]
                outputs = list(signatures[self.signature]["outputs"])
                if len(outputs) == 1:
                    name = outputs[0]
            except (ServingError, KeyError, TypeError):
                pass
            self._output_names[self.signature] = name
        return self._output_names[self.signature]

    def _predict_grpc(self, texts: list[str], params: dict) -> Prediction:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec)
        request.inputs[self.input_key].CopyFrom(tf.make_tensor_proto(
            [t if isinstance(t, bytes) else t.encode("utf-8") for t in texts],
            dtype=tf.string, shape=[len(texts)]))
        for name, value in params.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(
                value, dtype=tf.int32 if isinstance(value, int) else tf.float32))
        response = self._grpc("Predict", request)
        outputs = {}
        for key, proto in response.outputs.items():
            values = tf.make_ndarray(proto).tolist()
            outputs[key] = [_decode(v) for v in values]
        return Prediction(outputs, response.model_spec.version.value)

    def metadata(self, protocol: str = "rest") -> dict:
        """The signature defs, as TF Serving's REST metadata JSON."""
        if protocol == "rest":
            return self._rest("GET", f"{self._model_path()}/metadata")
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["signature_def"])
        self._model_spec(request.model_spec, signature=False)
        response = self._grpc("GetModelMetadata", request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return {"model_spec": {"name": response.model_spec.name, "signature_name": "",
                               "version": str(response.model_spec.version.value)},
                "metadata": {"signature_def": json_format.MessageToDict(
                    signature_map, preserving_proto_field_name=True)}}

    def status(self, protocol: str = "rest") -> dict:
        """{"model_version_status": [{"version", "state", "status"}, ...]}."""
        if protocol == "rest":
            return self._rest("GET", self._model_path())
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec, signature=False)
        return json_format.MessageToDict(
            self._grpc("GetModelStatus", request), preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True)

    def wait_until_available(self, seconds: float = 120.0, protocol: str = "rest") -> dict:
        """Polls the model status until a version is AVAILABLE; returns the status."""
        deadline = time.monotonic() + seconds
        last = None
        while time.monotonic() < deadline:
            try:
                status = self.status(protocol)
                if any(v.get("state") == "AVAILABLE"
                       for v in status.get("model_version_status", [])):
                    return status
                last = status
            except ServingError as err:
                last = err
            time.sleep(0.5)
        raise ServingError("UNAVAILABLE", f"model {self.model} not AVAILABLE after "
                           f"{seconds:.0f}s (last answer: {last})")


class _Retryable(Exception):
    def __init__(self, status, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _rest_value(value):
    """A string input as TF Serving's REST API takes it: text as it is, bytes
    (binary data, e.g. an encoded image) as {"b64": base64}."""
    if isinstance(value, bytes):
        import base64

        return {"b64": base64.b64encode(value).decode("ascii")}
    return value


def _error_text(response) -> str:
    try:
        return response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return response.text[:500] or response.reason


def _decode(value):
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def short_value(value, max_items: int = 8, max_chars: int = 40) -> str:
    """A value of one output row, compact: floats to 4 significant digits, lists cut after
    max_items (the total count shown), strings after max_chars characters."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return value if len(value) <= max_chars else value[:max_chars - 3] + "..."
    if isinstance(value, (list, tuple)):
        shown = ", ".join(short_value(v, max_items, max_chars) for v in value[:max_items])
        more = f", ... {len(value)} values" if len(value) > max_items else ""
        return f"[{shown}{more}]"
    return json.dumps(value)


def format_row(text: str, row: dict) -> str:
    """One printed line for one input: a classifier's label and top probability, else every
    output as name=value; the text (cut to 70 characters) last."""
    shown = text if len(text) <= 70 else text[:67] + "..."
    probabilities = row.get("probabilities")
    if "label" in row and isinstance(probabilities, list) and probabilities \
            and all(isinstance(p, (int, float)) for p in probabilities):
        return f"{row['label']:<24} {max(probabilities):.3f}  {shown}"
    fields = "  ".join(f"{name}={short_value(value)}" for name, value in row.items())
    return f"{fields}  {shown}"


def parse_params(pairs: list[str]) -> dict:
    """["name=3", "t=0.5"] -> {"name": 3, "t": 0.5}; ValueError naming a bad pair."""
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--param {pair!r}: expected NAME=VALUE")
        try:
            params[name] = int(value)
        except ValueError:
            try:
                params[name] = float(value)
            except ValueError:
                raise ValueError(f"--param {pair!r}: VALUE must be a number") from None
    return params


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.client",
        description="Send texts to a signature of a TF Serving model server (REST or gRPC) "
                    "and print its outputs.",
        epilog=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("texts", nargs="*", help="input texts")
    parser.add_argument("--texts_file", help="UTF-8 file, one text a line")
    parser.add_argument("--binary_file", action="append", default=[], metavar="PATH",
                        help="a file sent as one binary string, repeatable; e.g. an image "
                             "classifier's PNG/JPEG: --model image_classifier "
                             "--input_key image_bytes --binary_file shoe.png")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--rest_port", type=int, default=8501)
    parser.add_argument("--grpc_port", type=int, default=8500)
    parser.add_argument("--model", default="text_classifier")
    parser.add_argument("--version", type=int, help="a version number (default: latest)")
    parser.add_argument("--label", help="a version label, e.g. stable or canary")
    parser.add_argument("--signature", default="serving_default",
                        help="signature to call (REST signature_name, gRPC "
                             "model_spec.signature_name), e.g. tokenize")
    parser.add_argument("--input_key", default="text",
                        help="the signature's input name (columnar REST and gRPC requests)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a scalar input besides the texts (int32 if VALUE is an "
                             "integer, else float32), repeatable; e.g. --signature generate "
                             "--input_key prompt --param max_new_tokens=20 --param seed=7")
    parser.add_argument("--protocol", choices=["rest", "grpc"], default="rest")
    parser.add_argument("--format", choices=["instances", "inputs"], default="instances",
                        help="REST request format: row (instances) or columnar (inputs)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print the raw outputs as JSON")
    parser.add_argument("--status", action="store_true", help="print the model status")
    parser.add_argument("--metadata", action="store_true", help="print the signature defs")
    args = parser.parse_args(argv)
    try:
        client = ServingClient(args.host, args.rest_port, args.grpc_port, args.model,
                               args.version, args.label, args.signature,
                               input_key=args.input_key,
                               timeout=args.timeout, retries=args.retries,
                               batch_size=args.batch_size)
        if args.status or args.metadata:
            result = client.status(args.protocol) if args.status else \
                client.metadata(args.protocol)
            print(json.dumps(result, indent=1))
            return 0
        texts = list(args.texts)
        if args.texts_file:
            with open(args.texts_file, encoding="utf-8") as f:
                texts += [line.rstrip("\n") for line in f if line.strip()]
        shown = list(texts)
        for path in args.binary_file:
            with open(path, "rb") as f:
                texts.append(f.read())
            shown.append(path)
        if not texts:
            parser.error("give texts, --texts_file, --binary_file, --status or --metadata")
        result = client.predict(texts, args.protocol, args.format,
                                params=parse_params(args.param))
    except (ServingError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"model_version": result.model_version, **result.outputs}))
        return 0
    for text, row in zip(shown, result.rows()):
        print(format_row(text, row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
