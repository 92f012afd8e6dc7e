"""Client retries, timeouts, batching and printing, against small stub servers (no model);
one slow test prints a signature of the real debug model served by the local server."""

import json
import os
import subprocess
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest

from serving.client import ServingClient, ServingError, format_row, main
from serving.process import free_port
from tests.conftest import ROOT


class JsonHandler(BaseHTTPRequestHandler):
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


class StubServer:
    """An HTTP server on a free loopback port, in a daemon thread."""

    def serve(self, handler):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class StubRest(StubServer):
    """Answers 503 `fail_first` times, then echoes each text as its label."""

    def __init__(self, fail_first=0, delay=0.0):
        self.fail_first, self.delay = fail_first, delay
        self.calls, self.batch_sizes = 0, []
        stub = self

        class Handler(JsonHandler):
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

        self.serve(Handler)


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


# ------------------------------------------------------------------ signatures and printing
TOKEN_IDS = [[5, 17, 9] + [0] * 29, [8] + [0] * 31]


class StubTokenize(StubServer):
    """A server with one signature `tokenize` (text -> token_ids), answering as TF Serving
    does for a one-output signature: REST predictions/outputs without the output name
    (the name is in the metadata); gRPC with it."""

    def __init__(self):
        self.requests = []
        stub = self

        class Handler(JsonHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(body)
                if body.get("signature_name") != "tokenize":
                    return self._send(400, {"error": "unknown signature"})
                texts = body.get("instances") or body["inputs"]["text"]
                ids = [TOKEN_IDS[i % 2] for i in range(len(texts))]
                return self._send(200, {"predictions": ids} if "instances" in body
                                  else {"outputs": ids})

            def do_GET(self):
                stub.requests.append({"GET": self.path})
                self._send(200, {"model_spec": {"name": "m", "signature_name": "",
                                                "version": "1"},
                                 "metadata": {"signature_def": {"signature_def": {
                                     "tokenize": {"inputs": {"text": {}},
                                                  "outputs": {"token_ids": {}}}}}}})

        self.serve(Handler)


@pytest.fixture
def tokenize_stub():
    stub = StubTokenize()
    yield stub
    stub.close()


@pytest.mark.parametrize("form", ["instances", "inputs"])
def test_cli_prints_the_outputs_of_any_signature_over_rest(tokenize_stub, capsys, form):
    code = main(["--rest_port", str(tokenize_stub.port), "--model", "m", "--signature",
                 "tokenize", "--format", form, "a small dog", "x"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines() == [
        "token_ids=[5, 17, 9, 0, 0, 0, 0, 0, ... 32 values]  a small dog",
        "token_ids=[8, 0, 0, 0, 0, 0, 0, 0, ... 32 values]  x"]
    posts = [r for r in tokenize_stub.requests if "GET" not in r]
    assert [r["signature_name"] for r in posts] == ["tokenize"]
    # the output name came from the metadata, asked once
    assert [r for r in tokenize_stub.requests if "GET" in r] == [{"GET": "/v1/models/m/metadata"}]
    main(["--rest_port", str(tokenize_stub.port), "--model", "m", "--signature", "tokenize",
          "--format", form, "--json", "a"])
    assert json.loads(capsys.readouterr().out) == {"model_version": None,
                                                   "token_ids": [TOKEN_IDS[0]]}


def test_cli_prints_the_outputs_of_any_signature_over_grpc(capsys):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    seen = []

    class Tokenize(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            seen.append(request.model_spec.signature_name)
            if request.model_spec.signature_name != "tokenize":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown signature")
            n = request.inputs["text"].tensor_shape.dim[0].size
            response = predict_pb2.PredictResponse()
            response.model_spec.version.value = 3
            response.outputs["token_ids"].CopyFrom(tf.make_tensor_proto(
                [TOKEN_IDS[i % 2] for i in range(n)], dtype=tf.int32))
            response.outputs["length"].CopyFrom(tf.make_tensor_proto(
                [3, 1][:n], dtype=tf.int32))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Tokenize(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        code = main(["--protocol", "grpc", "--grpc_port", str(port), "--model", "m",
                     "--signature", "tokenize", "a small dog", "x"])
    finally:
        server.stop(0)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert seen == ["tokenize"]
    lines = out.splitlines()
    assert len(lines) == 2
    for line, ids, length, text in zip(lines, TOKEN_IDS, [3, 1], ["a small dog", "x"],
                                       strict=True):
        assert f"length={length}" in line and line.endswith(f"  {text}")
        assert "token_ids=[" + ", ".join(map(str, ids[:8])) + ", ... 32 values]" in line


def test_classification_rows_keep_the_label_and_top_probability():
    row = {"label": "noun.plant", "class_id": 3, "probabilities": [0.1, 0.75, 0.15]}
    line = format_row("an oak tree", row)
    assert line.split() == ["noun.plant", "0.750", "an", "oak", "tree"]
    assert format_row("t" * 100, row).endswith("t" * 67 + "...")
    generic = format_row("a", {"class_id": 2, "probabilities": [0.123456, 0.5],
                               "note": "n" * 60, "nested": [[1.0, 2.5]] * 10})
    assert generic.startswith("class_id=2  probabilities=[0.1235, 0.5]  note=nnn")
    assert "nested=[[1, 2.5], " in generic and "... 10 values]" in generic


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_cli_prints_the_tokenize_signature_of_the_served_model(local_server, protocol):
    """The real SavedModel's tokenize signature (text -> token_ids), unknown to the client's
    printing, through the real local server."""
    out = subprocess.run(
        [sys.executable, "-m", "serving.client", "--rest_port", str(local_server.rest_port),
         "--grpc_port", str(local_server.grpc_port), "--model", local_server.model,
         "--protocol", protocol, "--signature", "tokenize", "a tree", "a small dog"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr
    ids = local_server.client(signature="tokenize").predict(["a tree", "a small dog"],
                                                             protocol="grpc")
    assert set(ids.outputs) == {"token_ids"}
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    for line, row, text in zip(lines, ids.outputs["token_ids"], ["a tree", "a small dog"],
                               strict=True):
        assert line.startswith("token_ids=[" + ", ".join(map(str, row[:8])) + ", ... ")
        assert line.endswith(f" values]  {text}")
