"""Client retries, timeouts and batching, against small stub servers (no model)."""

import json
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest

from serving.client import ServingClient, ServingError
from serving.process import free_port


class StubRest:
    """Answers 503 `fail_first` times, then echoes each text as its label."""

    def __init__(self, fail_first=0, delay=0.0):
        self.fail_first, self.delay = fail_first, delay
        self.calls, self.batch_sizes = 0, []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.calls += 1
                time.sleep(stub.delay)
                if stub.calls <= stub.fail_first:
                    return self._send(503, {"error": "model is loading"})
                texts = body.get("instances") or body["inputs"]["text"]
                stub.batch_sizes.append(len(texts))
                if "instances" in body:
                    return self._send(200, {"predictions": [
                        {"label": t, "class_id": 0, "probabilities": [1.0]} for t in texts]})
                return self._send(200, {"outputs": {"label": texts, "class_id": [0] * len(
                    texts), "probabilities": [[1.0]] * len(texts)}})

            def _send(self, code, payload):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass   # the client gave up (the timeout test)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_factory():
    stubs = []

    def make(**kwargs):
        stubs.append(StubRest(**kwargs))
        return stubs[-1]

    yield make
    for stub in stubs:
        stub.close()


def test_rest_retries_503_with_backoff_then_succeeds(stub_factory):
    stub = stub_factory(fail_first=2)
    client = ServingClient(rest_port=stub.port, retries=3, backoff=0.05)
    start = time.monotonic()
    assert client.predict(["a", "b"]).outputs["label"] == ["a", "b"]
    assert stub.calls == 3
    assert time.monotonic() - start >= 0.05 * 0.5 + 0.1 * 0.5   # two jittered waits


def test_rest_gives_up_after_the_retries_with_the_server_message(stub_factory):
    stub = stub_factory(fail_first=10)
    client = ServingClient(rest_port=stub.port, retries=2, backoff=0.01)
    with pytest.raises(ServingError) as err:
        client.predict(["a"])
    assert err.value.status == 503 and "model is loading" in err.value.message
    assert "3 attempts" in str(err.value) and stub.calls == 3


def test_large_inputs_are_split_into_batches_in_order(stub_factory):
    stub = stub_factory()
    texts = [f"t{i}" for i in range(10)]
    for form in ("instances", "inputs"):
        stub.batch_sizes.clear()
        result = ServingClient(rest_port=stub.port, batch_size=4).predict(texts, format=form)
        assert stub.batch_sizes == [4, 4, 2]
        assert result.outputs["label"] == texts and len(result.rows()) == 10


def test_a_slow_server_hits_the_timeout(stub_factory):
    stub = stub_factory(delay=2.0)
    client = ServingClient(rest_port=stub.port, timeout=0.3, retries=0)
    start = time.monotonic()
    with pytest.raises(ServingError) as err:
        client.predict(["a"])
    assert err.value.status == "DEADLINE_EXCEEDED" and time.monotonic() - start < 1.5


def test_connection_refused_is_retried_then_reported():
    client = ServingClient(rest_port=free_port(), retries=2, backoff=0.01)
    with pytest.raises(ServingError) as err:
        client.status()
    assert err.value.status == "UNAVAILABLE" and "3 attempts" in str(err.value)


def test_bad_client_arguments_are_value_errors():
    with pytest.raises(ValueError, match="batch_size"):
        ServingClient(batch_size=0)
    with pytest.raises(ValueError, match="protocol"):
        ServingClient().predict(["a"], protocol="http")
    with pytest.raises(ValueError, match="version or label"):
        ServingClient(version=1, label="stable")


def test_grpc_retries_unavailable():
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    calls = []

    class Flaky(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            calls.append(request.model_spec.name)
            if len(calls) <= 2:
                context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
            response = predict_pb2.PredictResponse()
            response.model_spec.version.value = 7
            response.outputs["label"].CopyFrom(request.inputs["text"])
            return response

    server = grpc.server(futures.ThreadPoolExecutor(2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Flaky(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = ServingClient(grpc_port=port, model="m", retries=3, backoff=0.01)
        result = client.predict(["x", "y"], protocol="grpc")
        assert result.outputs["label"] == ["x", "y"] and result.model_version == 7
        assert calls == ["m"] * 3
        client.close()
    finally:
        server.stop(0)
