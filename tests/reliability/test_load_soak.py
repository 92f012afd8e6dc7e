"""Load: the local server under 32 concurrent clients for 60 s on loopback, a seeded
mix of valid requests (REST and gRPC) and invalid ones (malformed JSON, wrong types,
unknown model, unknown signature, too many rows, a body over the size limit).
Every valid request must succeed, every invalid one must get its 4xx, and the
server's resident memory must grow less than 10% from the first to the last 10 s.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time

import numpy as np
import pytest
import requests

from tests.reliability import figures

pytestmark = pytest.mark.slow

CLIENTS, SECONDS, WINDOW = 32, 60.0, 10.0
MAX_GROWTH = 0.10
SEED = 9

INVALID = {   # name: (path suffix, body, expected HTTP status)
    "malformed JSON": (":predict", b'{"instances": ["a"', 400),
    "wrong type": (":predict", json.dumps({"instances": [5, 6]}).encode(), 400),
    "unknown signature": (":predict", json.dumps({"signature_name": "x",
                                                  "instances": ["a"]}).encode(), 400),
    "too many rows": (":predict", json.dumps({"instances": ["a"] * 1001}).encode(), 400),
    "unknown version": ("/versions/77:predict", json.dumps({"instances": ["a"]}).encode(), 404),
    "not an object": (":predict", b"[1, 2, 3]", 400),
    "over the size limit": (":predict", json.dumps({"instances": ["x" * 1_100_000]}).encode(),
                            413),
}
INVALID_WEIGHTS = {"over the size limit": 0.05}   # 1.1 MB uploads: a few only


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_32_clients_for_60s_with_invalid_requests_mixed_in(saved_model_dir, debug_splits,
                                                            debug_config, tmp_path):
    from serving.client import ServingError
    from serving.process import LocalServerProcess

    model = debug_config.export.model_name
    root = tmp_path / model
    root.mkdir()
    shutil.copytree(saved_model_dir, root / "1")
    texts = [str(t) for t in debug_splits.texts["test"][:200]]
    invalid_names = sorted(INVALID)
    invalid_weights = [INVALID_WEIGHTS.get(n, 1.0) for n in invalid_names]
    with LocalServerProcess(["--model_name", model, "--model_base_path", str(root)],
                            model=model) as server:
        pid = server.process.pid
        base = f"http://127.0.0.1:{server.rest_port}/v1/models/{model}"
        stats = {"valid": 0, "valid_failed": [], "invalid": 0, "invalid_wrong": [],
                 "latencies": []}
        lock = threading.Lock()
        stop = threading.Event()
        samples: list[tuple[float, int]] = []

        def sample():
            start = time.monotonic()
            while not stop.is_set():
                samples.append((time.monotonic() - start, rss_bytes(pid)))
                stop.wait(0.5)

        def client(k: int):
            rng = random.Random(SEED * 1000 + k)
            grpc_client = server.client(retries=0, timeout=30.0)
            session = requests.Session()
            while not stop.is_set():
                if rng.random() < 0.7:                       # a valid request
                    batch = rng.sample(texts, rng.randint(1, 8))
                    protocol = rng.choice(["rest", "grpc"])
                    began = time.perf_counter()
                    try:
                        result = grpc_client.predict(batch, protocol=protocol)
                        ok = len(result.outputs["label"]) == len(batch)
                        error = None if ok else f"{len(result.outputs['label'])} labels"
                    except ServingError as err:
                        ok, error = False, f"{protocol}: {err}"
                    with lock:
                        stats["valid"] += 1
                        if ok:
                            stats["latencies"].append(time.perf_counter() - began)
                        else:
                            stats["valid_failed"].append(error)
                else:                                        # an invalid one
                    name = rng.choices(invalid_names, invalid_weights)[0]
                    suffix, body, expected = INVALID[name]
                    try:
                        response = session.post(base + suffix, data=body, timeout=30)
                        status, message = response.status_code, response.json().get("error")
                    except (requests.RequestException, ValueError) as err:
                        status, message = None, str(err)
                    with lock:
                        stats["invalid"] += 1
                        if status != expected or not message:
                            stats["invalid_wrong"].append((name, status, message))
            grpc_client.close()
            session.close()

        sampler = threading.Thread(target=sample, daemon=True)
        threads = [threading.Thread(target=client, args=(k,), daemon=True)
                   for k in range(CLIENTS)]
        began = time.monotonic()
        sampler.start()
        for t in threads:
            t.start()
        time.sleep(SECONDS)
        stop.set()
        for t in threads:
            t.join(60)
        sampler.join(5)
        wall = time.monotonic() - began
        assert server.alive()
        log = server.log_text()

    first = [rss for t, rss in samples if t < WINDOW]
    last = [rss for t, rss in samples if t >= SECONDS - WINDOW]
    growth = np.mean(last) / np.mean(first) - 1.0
    served = stats["valid"] + stats["invalid"]
    ms = np.array(stats["latencies"]) * 1e3
    summary = (f"{served:,} requests in {wall:.0f}s from {CLIENTS} clients "
               f"({stats['valid']:,} valid, {stats['invalid']:,} invalid): "
               f"{len(stats['valid_failed'])} valid failed, "
               f"{len(stats['invalid_wrong'])} invalid without their 4xx; valid p50 "
               f"{np.percentile(ms, 50):.0f} ms, p99 {np.percentile(ms, 99):.0f} ms; "
               f"server RSS {np.mean(first) / 2**20:.0f} MB (first {WINDOW:.0f}s) -> "
               f"{np.mean(last) / 2**20:.0f} MB (last {WINDOW:.0f}s), {growth:+.1%}")
    print("\n" + summary)
    figures.note("load soak", summary)
    figures.add("load: requests served", served)
    figures.add("load: valid requests failed", len(stats["valid_failed"]))
    assert not any(t.is_alive() for t in threads)
    assert stats["valid_failed"] == [], stats["valid_failed"][:5]
    assert stats["invalid_wrong"] == [], stats["invalid_wrong"][:5]
    assert stats["valid"] > CLIENTS * 10 and stats["invalid"] > CLIENTS
    assert len(first) >= 10 and len(last) >= 10
    assert growth < MAX_GROWTH, summary
    assert "Traceback" not in log, log[-3000:]
