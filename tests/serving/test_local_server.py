"""The client against the real local server process: REST (both formats) and gRPC."""

import json
import os
import subprocess
import sys

import grpc
import numpy as np
import pytest
import requests

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # starts a server process (TensorFlow import + load)


@pytest.mark.parametrize("protocol,form", [("rest", "instances"), ("rest", "inputs"),
                                           ("grpc", "instances")])
def test_served_outputs_match_the_saved_model(local_server, reference, protocol, form):
    client = local_server.client(batch_size=16)   # 53 texts -> 4 requests
    result = client.predict(reference["texts"], protocol=protocol, format=form)
    assert result.outputs["label"] == reference["labels"]
    np.testing.assert_allclose(np.array(result.outputs["probabilities"]),
                               reference["probabilities"], atol=1e-6)
    assert result.outputs["class_id"] == list(reference["probabilities"].argmax(-1))
    if protocol == "grpc":
        assert result.model_version == 2   # no version asked: the highest


def test_served_labels_match_the_keras_model(local_server, reference, keras_labels):
    for protocol, form in [("rest", "instances"), ("rest", "inputs"), ("grpc", "instances")]:
        result = local_server.client().predict(reference["texts"], protocol, form)
        assert result.outputs["label"] == keras_labels, (protocol, form)


def test_version_labels_route_to_their_versions(local_server, reference):
    texts = reference["texts"][:4]
    for label, version in [("stable", 1), ("canary", 2)]:
        grpc_result = local_server.client(label=label).predict(texts, protocol="grpc")
        assert grpc_result.model_version == version
        rest_result = local_server.client(label=label).predict(texts)
        assert rest_result.outputs["label"] == reference["labels"][:4]
    assert local_server.client(version=1).predict(texts, "grpc").model_version == 1


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_status_and_metadata(local_server, protocol):
    client = local_server.client()
    status = client.status(protocol)["model_version_status"]
    assert [(s["version"], s["state"]) for s in status] == [("2", "AVAILABLE"),
                                                            ("1", "AVAILABLE")]
    assert all(s["status"]["error_code"] == "OK" for s in status)
    assert local_server.client(version=1).status(protocol)["model_version_status"][0][
        "version"] == "1"
    metadata = client.metadata(protocol)
    assert metadata["model_spec"]["version"] == "2"
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "token_ids", "tokenize"} <= set(signatures)
    default = signatures["serving_default"]
    assert default["inputs"]["text"]["dtype"] == "DT_STRING"
    assert set(default["outputs"]) == {"label", "class_id", "probabilities"}
    assert default["method_name"] == "tensorflow/serving/predict"


def test_rest_responses_have_tf_serving_shapes(local_server):
    base = f"http://127.0.0.1:{local_server.rest_port}/v1/models/{local_server.model}"
    rows = requests.post(f"{base}:predict", json={"instances": ["a tree", "a boat"]},
                         timeout=30).json()
    assert set(rows) == {"predictions"} and len(rows["predictions"]) == 2
    assert set(rows["predictions"][0]) == {"label", "class_id", "probabilities"}
    columns = requests.post(f"{base}/versions/1:predict",
                            json={"inputs": {"text": ["a tree", "a boat"]}},
                            timeout=30).json()
    assert set(columns) == {"outputs"} and len(columns["outputs"]["label"]) == 2
    ids = requests.post(f"{base}:predict", json={"signature_name": "tokenize",
                                                 "instances": ["a tree"]}, timeout=30).json()
    assert len(ids["predictions"][0]) > 0 and all(isinstance(i, int)
                                                  for i in ids["predictions"][0])
    b64 = requests.post(f"{base}:predict", json={"instances": [{"b64": "YSB0cmVl"}]},
                        timeout=30).json()   # "a tree"
    assert b64["predictions"][0]["label"] == rows["predictions"][0]["label"]


def _rest(server, path, body=None, raw=None, method="POST"):
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/{path}"
    data = raw if raw is not None else json.dumps(body)
    return requests.request(method, url, data=data, timeout=60)


REST_BAD = {
    "malformed JSON": ("{m}:predict", None, '{"instances": ["a"', 400),
    "not an object": ("{m}:predict", None, "[1, 2]", 400),
    "unknown model": ("nope:predict", {"instances": ["a"]}, None, 404),
    "unknown version": ("{m}/versions/7:predict", {"instances": ["a"]}, None, 404),
    "unknown label": ("{m}/labels/blue:predict", {"instances": ["a"]}, None, 400),
    "unknown signature": ("{m}:predict", {"signature_name": "x", "instances": ["a"]}, None, 400),
    "wrong dtype": ("{m}:predict", {"instances": [5]}, None, 400),
    "wrong rank": ("{m}:predict", {"instances": [["a", "b"]]}, None, 400),
    "missing key": ("{m}:predict", {"inputs": {"sentence": ["a"]}}, None, 400),
    "no instances": ("{m}:predict", {"rows": ["a"]}, None, 400),
    "ragged ids": ("{m}:predict", {"signature_name": "token_ids",
                                   "instances": [[1, 2], [3]]}, None, 400),
    "10,000 rows": ("{m}:predict", {"instances": ["a"] * 10_000}, None, 400),
    "1 MB string": ("{m}:predict", {"instances": ["x" * 1_000_000]}, None, 413),
    "unknown status version": ("{m}/versions/9", None, None, 404),
}


@pytest.mark.parametrize("case", sorted(REST_BAD))
def test_bad_rest_input_gets_4xx_with_a_message_and_the_server_keeps_serving(
        local_server, case):
    path, body, raw, expected = REST_BAD[case]
    method = "GET" if "status" in case else "POST"
    response = _rest(local_server, path.format(m=local_server.model), body, raw, method)
    assert response.status_code == expected, response.text
    message = response.json()["error"]
    assert message and "Traceback" not in message
    assert local_server.alive()
    assert local_server.client().predict(["a tree"]).outputs["label"]


def _grpc_request(server, key="text", values=None, dtype=None, model=None):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model or server.model
    values = ["a tree"] if values is None else values
    request.inputs[key].CopyFrom(tf.make_tensor_proto(values, dtype=dtype))
    return request


@pytest.mark.parametrize("case,expected", [
    ("unknown model", grpc.StatusCode.NOT_FOUND),
    ("wrong dtype", grpc.StatusCode.INVALID_ARGUMENT),
    ("missing key", grpc.StatusCode.INVALID_ARGUMENT),
    ("10,000 rows", grpc.StatusCode.INVALID_ARGUMENT),
    ("1 MB string", grpc.StatusCode.RESOURCE_EXHAUSTED),
])
def test_bad_grpc_input_gets_an_error_status_and_the_server_keeps_serving(
        local_server, case, expected):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = {
        "unknown model": lambda: _grpc_request(local_server, model="nope"),
        "wrong dtype": lambda: _grpc_request(local_server, values=[1, 2]),
        "missing key": lambda: _grpc_request(local_server, key="sentence"),
        "10,000 rows": lambda: _grpc_request(local_server, values=["a"] * 10_000),
        "1 MB string": lambda: _grpc_request(local_server, values=["x" * 1_000_000]),
    }[case]()
    with grpc.insecure_channel(f"127.0.0.1:{local_server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(request, timeout=60)
    assert err.value.code() == expected
    assert err.value.details()
    assert local_server.alive()
    assert local_server.client().predict(["a tree"], protocol="grpc").outputs["label"]


def test_prometheus_metrics_count_requests(local_server):
    local_server.client().predict(["a tree"])
    page = requests.get(f"http://127.0.0.1:{local_server.rest_port}"
                        "/monitoring/prometheus/metrics", timeout=30).text
    assert f':tensorflow:serving:request_count{{model_name="{local_server.model}",' \
           'status="OK"}' in page
    assert ":tensorflow:serving:request_latency_bucket" in page


def test_container_healthcheck_script_against_the_server(local_server):
    script = os.path.join(ROOT, "serving", "healthcheck.sh")
    env = dict(os.environ, HEALTHCHECK_PORT=str(local_server.rest_port),
               HEALTHCHECK_MODEL=local_server.model)
    assert subprocess.run([script], env=env, timeout=30, check=False).returncode == 0
    env["HEALTHCHECK_MODEL"] = "nope"
    assert subprocess.run([script], env=env, timeout=30, capture_output=True,
                          check=False).returncode == 1


def test_client_cli_prints_labels(local_server, reference):
    out = subprocess.run(
        [sys.executable, "-m", "serving.client", "--rest_port", str(local_server.rest_port),
         "--grpc_port", str(local_server.grpc_port), "--model", local_server.model,
         "--format", "inputs", *reference["texts"][:3]],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines()] == reference["labels"][:3]
    bad = subprocess.run(
        [sys.executable, "-m", "serving.client", "--rest_port", str(local_server.rest_port),
         "--model", "nope", "--retries", "0", "a tree"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert bad.returncode == 1 and "404" in bad.stderr and "Traceback" not in bad.stderr


def test_server_rejects_bad_flags_with_a_message(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "serving.local_server", "--model_base_path",
         str(tmp_path / "missing"), "--rest_api_port", "0", "--port", "0"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert out.returncode == 2 and "nothing to serve" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "serving.local_server", "--model_base_path",
         str(tmp_path / "missing"), "--port", "0", "--rest_api_port", "1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert out.returncode == 2 and "does not exist" in out.stderr
    assert "Traceback" not in out.stderr
