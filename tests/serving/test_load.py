"""Bounded load test: 16 concurrent clients for 30 s on loopback, and a new version
written during the load is picked up without a failed request."""

import os
import threading
import time

import numpy as np
import pytest

from serving.client import ServingError
from serving.process import LocalServerProcess
from tests.serving.conftest import copy_version

CLIENTS, SECONDS, NEW_VERSION_AT = 16, 30.0, 8.0
P99_BOUND_S = 5.0   # 16 clients on 2 shared cores, including the reload of version 2


@pytest.mark.slow
def test_sixteen_clients_for_30s_with_a_version_swap(saved_model_dir, debug_splits,
                                                     model_name, tmp_path):
    root = str(tmp_path / model_name)
    os.makedirs(root)
    copy_version(saved_model_dir, root, 1)
    texts = [str(t) for t in debug_splits.texts["test"][:64]]
    with LocalServerProcess(["--model_name", model_name, "--model_base_path", root,
                             "--file_system_poll_wait_seconds", "1"],
                            model=model_name) as server:
        latencies, errors, versions = [], [], []
        lock = threading.Lock()
        stop = threading.Event()

        def worker(k: int):
            protocol = "grpc" if k % 2 else "rest"
            client = server.client(retries=0, timeout=30.0)   # no retry hides a failure
            i = k
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    result = client.predict([texts[i % len(texts)]], protocol=protocol)
                    ok = len(result.outputs["label"]) == 1
                except ServingError as err:
                    ok, result = False, err
                elapsed = time.perf_counter() - start
                with lock:
                    if ok:
                        latencies.append(elapsed)
                        if protocol == "grpc":
                            versions.append((time.monotonic(), result.model_version))
                    else:
                        errors.append(str(result))
                i += CLIENTS
            client.close()

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(CLIENTS)]
        began = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(NEW_VERSION_AT)
        copy_version(saved_model_dir, root, 2)          # temp dir, then rename
        written = time.monotonic()
        time.sleep(SECONDS - NEW_VERSION_AT)
        stop.set()
        for t in threads:
            t.join(60)
        wall = time.monotonic() - began
        status = server.client().status()["model_version_status"]
        log = server.log_text()

    ms = np.array(latencies) * 1e3
    p50, p99 = np.percentile(ms, 50), np.percentile(ms, 99)
    print(f"\n{len(latencies)} requests in {wall:.1f}s ({len(latencies) / wall:.1f}/s) from "
          f"{CLIENTS} clients: p50 {p50:.1f} ms, p99 {p99:.1f} ms, {len(errors)} errors")
    assert errors == [], errors[:5]
    assert not any(t.is_alive() for t in threads)
    assert len(latencies) > CLIENTS * 10
    assert p99 < P99_BOUND_S * 1e3
    assert {(s["version"], s["state"]) for s in status} == {("2", "AVAILABLE"), ("1", "END")}
    after = [v for t, v in versions if t > written]
    assert after and after[-1] == 2, "version 2 was not served after it appeared"
    assert [v for t, v in versions if t < written] and \
        all(v == 1 for t, v in versions if t < written)
    assert "version 2 AVAILABLE" in log and "version 1 unloaded" in log
