"""Security: the local server binds 127.0.0.1 unless told otherwise, answers 413 past
a configurable body limit, and never serves anything outside the model base path
whatever a request names; the edge app refuses a bundle whose files do not match
their sha256; no product code unpickles or evaluates input; the README says that
loading a SavedModel runs its graph.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import grpc
import pytest
import requests

from tests.conftest import ROOT
from tests.reliability import figures

pytestmark = pytest.mark.slow

LIMIT = 4096        # --max_request_bytes of the server under test
PRODUCT_PACKAGES = ("pipeline", "models", "export", "serving", "edge")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(saved_model_dir, debug_config, tmp_path_factory):
    """A local server started WITHOUT --host, with a 4 kB body limit; a decoy
    SavedModel lies next to its base path, outside it."""
    model = debug_config.export.model_name
    top = tmp_path_factory.mktemp("security")
    base = top / "models" / model
    base.mkdir(parents=True)
    shutil.copytree(saved_model_dir, base / "1")
    shutil.copytree(saved_model_dir, top / "outside" / "evil" / "1")   # must stay unreachable
    grpc_port, rest_port = free_port(), free_port()
    log_path = top / "server.log"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving.local_server", "--model_name", model,
             "--model_base_path", str(base), "--port", str(grpc_port),
             "--rest_api_port", str(rest_port), "--max_request_bytes", str(LIMIT)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{rest_port}/v1/models/{model}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("server not up:\n" + log_path.read_text()[-3000:])
        yield {"process": process, "url": url, "model": model, "grpc_port": grpc_port,
               "rest_port": rest_port, "top": top, "log": log_path}
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the LISTEN sockets on `port` (from /proc/net/tcp{,6})."""
    found = set()
    for path, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(path):
            continue
        with open(path) as f:
            next(f)
            for line in f:
                fields = line.split()
                address, port_hex = fields[1].rsplit(":", 1)
                if int(port_hex, 16) == port and fields[3] == "0A":        # 0A = LISTEN
                    if width == 8:
                        found.add(socket.inet_ntop(socket.AF_INET,
                                                   bytes.fromhex(address)[::-1]))
                    else:
                        raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1]
                                       for i in range(0, 32, 8))
                        v6 = socket.inet_ntop(socket.AF_INET6, raw)
                        # an IPv6 socket bound to a v4-mapped address serves IPv4 only
                        found.add(v6.removeprefix("::ffff:") if v6.count(".") == 3 else v6)
    return found


def test_binds_loopback_only_unless_told_otherwise(server):
    for port in (server["rest_port"], server["grpc_port"]):
        assert listening_addresses(port) == {"127.0.0.1"}, (port, listening_addresses(port))
    addresses = subprocess.run(["hostname", "-I"], capture_output=True, text=True,
                               check=False).stdout.split() if shutil.which("hostname") else []
    others = [a for a in addresses if not a.startswith("127.") and ":" not in a]
    for address in others:       # the machine's other addresses refuse the connection
        with pytest.raises(OSError):
            socket.create_connection((address, server["rest_port"]), timeout=2).close()
    from serving.local_server import build_parser

    assert build_parser().parse_args([]).host == "127.0.0.1"
    assert build_parser().parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"


def padded(size: int) -> bytes:
    body = json.dumps({"instances": ["a tree"]}).encode()
    return body + b" " * (size - len(body))


def test_body_over_the_configured_limit_gets_413(server):
    url = server["url"] + ":predict"
    assert requests.post(url, data=padded(LIMIT), timeout=60).status_code == 200
    over = requests.post(url, data=padded(LIMIT + 1), timeout=60)
    assert over.status_code == 413 and "4,096" in over.json()["error"]
    chunked = requests.post(url, data=iter([padded(LIMIT)[:-1], b" " * 5000]), timeout=60)
    assert chunked.status_code == 413               # no Content-Length: counted as read
    big = requests.post(url, data=b"x" * (8 << 20), timeout=60)
    assert big.status_code == 413
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = server["model"]
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(["x" * (LIMIT + 100)]))
    with grpc.insecure_channel(f"127.0.0.1:{server['grpc_port']}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert requests.post(url, data=padded(100), timeout=60).status_code == 200
    figures.add("security checks: size limit requests", 6)


ESCAPES = ["../outside/evil", "..%2Foutside%2Fevil", "%2e%2e%2f%2e%2e%2foutside%2fevil",
           "..%252F..%252Foutside", "evil", "%2Ftmp%2Fevil", "%00",
           "{model}%2F..%2F..%2Foutside%2Fevil",
           "{model}/versions/1%2F..%2F..", "{model}/labels/..%2F..%2Foutside",
           "{model}/versions/..", "..", ".", "{model}/../../outside/evil"]


def raw_request(port: int, method: str, path: str, body: bytes = b""):
    """The path exactly as written (no client-side normalization of '..')."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body or None,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


@pytest.mark.parametrize("name", ESCAPES)
def test_names_in_requests_cannot_leave_the_model_base_path(server, name):
    """Whatever a request names, the answer is a 4xx or about the configured model;
    the SavedModel next to the base path is never loaded nor named."""
    name = name.format(model=server["model"])
    base = f"/v1/models/{name}"
    body = json.dumps({"instances": ["a tree"]}).encode()
    for method, path in (("POST", base + ":predict"), ("GET", base), ("GET", base + "/metadata")):
        status, text = raw_request(server["rest_port"], method, path,
                                   body if method == "POST" else b"")
        assert status < 500, (path, status, text[:500])
        payload = json.loads(text)
        if status >= 400:
            assert set(payload) == {"error"}, text[:500]
        else:     # '..' resolved inside the URL space: the configured model, nothing else
            assert payload.get("model_spec", {}).get("name", server["model"]) == server["model"]
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = requests.utils.unquote(name)
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(["a tree"]))
    with grpc.insecure_channel(f"127.0.0.1:{server['grpc_port']}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    assert err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    log = server["log"].read_text()
    assert "outside" not in log and "evil" not in log, log[-2000:]
    figures.add("security checks: path escape requests", 4)


def test_edge_app_refuses_a_swapped_model_even_a_valid_one(edge_bundle, debug_run, tmp_path):
    """A bundle whose model.tflite is replaced by another valid model (the run's float32
    variant) is refused: the hashes, not the file format, decide."""
    cfg, _ = debug_run
    bundle = tmp_path / "bundle"
    shutil.copytree(edge_bundle, bundle)
    other = os.path.join(cfg.run_dir, "edge", "float32.tflite")
    with open(bundle / "manifest.json") as f:
        assert json.load(f)["variant"] != "float32"
    shutil.copy(other, bundle / "model.tflite")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "edge", "app.py"), "--bundle",
                           str(bundle), "a tree"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "model.tflite failed its sha256 check" in proc.stderr
    assert "Traceback" not in proc.stderr
    figures.add("security checks: edge bundle swaps", 1)


# Calls that run code or build objects from data: none may appear in product code.
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "pickle.load", "pickle.loads",
                   "cPickle.load", "cPickle.loads", "dill.load", "dill.loads", "marshal.load",
                   "marshal.loads", "shelve.open", "joblib.load", "yaml.load",
                   "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "os.system",
                   "os.popen", "torch.load", "jsonpickle.decode", "pandas.read_pickle",
                   "pd.read_pickle"}
FORBIDDEN_IMPORTS = {"pickle", "cPickle", "dill", "marshal", "shelve", "jsonpickle"}


def dangerous(source: str, filename: str = "<source>") -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                else [node.module or ""]
            found += [f"{filename}:{node.lineno}: import {n}" for n in names
                      if n.split(".")[0] in FORBIDDEN_IMPORTS]
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name in FORBIDDEN_CALLS or name.split(".")[-1] in ("unsafe_load", "full_load"):
            found.append(f"{filename}:{node.lineno}: {name}(...)")
        for keyword in node.keywords:
            value = keyword.value
            if keyword.arg in ("allow_pickle", "shell") and not (
                    isinstance(value, ast.Constant) and value.value is False):
                found.append(f"{filename}:{node.lineno}: {name}({keyword.arg}=...)")
            if keyword.arg == "safe_mode" and not (
                    isinstance(value, ast.Constant) and value.value is True):
                found.append(f"{filename}:{node.lineno}: {name}(safe_mode=...)")
            if keyword.arg == "Loader" and "Safe" not in ast.unparse(value):
                found.append(f"{filename}:{node.lineno}: {name}(Loader=...)")
    return found


def test_the_scanner_finds_each_forbidden_pattern():
    samples = ["eval(x)", "exec(x)", "import pickle", "from dill import loads",
               "yaml.load(f)", "yaml.load(f, Loader=yaml.Loader)", "yaml.unsafe_load(f)",
               "np.load(p, allow_pickle=True)", "subprocess.run(c, shell=True)",
               "os.system(c)", "keras.models.load_model(p, safe_mode=False)", "marshal.loads(b)"]
    for sample in samples:
        assert dangerous(sample), sample
    for sample in ["yaml.safe_load(f)", "np.load(p)", "subprocess.run([c], shell=False)",
                   "json.loads(s)", "np.load(p, allow_pickle=False)"]:
        assert not dangerous(sample), sample


def test_no_product_code_unpickles_or_evaluates_input():
    files = [f for package in PRODUCT_PACKAGES
             for f in glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True)]
    assert len(files) > 30
    found = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            found += dangerous(f.read(), os.path.relpath(path, ROOT))
    assert found == [], found
    figures.add("security checks: product files scanned", len(files))


def test_readme_warns_that_loading_a_saved_model_runs_its_graph():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = " ".join(f.read().split())
    assert "Loading a SavedModel runs its graph" in text
    assert "only load SavedModels you trust" in text
