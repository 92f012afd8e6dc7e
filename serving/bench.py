"""Throughput and latency of a model server at batch 1 and batch 32 (REST and gRPC).

    # start serving.local_server on free loopback ports, measure, stop it:
    python -m serving.bench --model_base_path artifacts/text_classification/serving/text_classifier

    # or measure a running server (TF Serving or the local one):
    python -m serving.bench --host 127.0.0.1 --rest_port 8501 --grpc_port 8500

Each (protocol, batch size) runs `--concurrency` client threads for `--seconds`
after `--warmup_seconds`, sending texts from `--texts_file` (default: a built-in
set of dictionary-style definitions). Prints requests/s, rows/s and the p50 /
p99 request latency; a request that fails counts as an error.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import numpy as np

from serving.client import ServingClient, ServingError

SAMPLE_TEXTS = [
    "a small domesticated carnivorous mammal with soft fur",
    "a building for public Christian worship",
    "the act of running at a moderate pace",
    "a tall perennial woody plant having a main trunk and branches",
    "an instrument for measuring atmospheric pressure",
    "a person who writes novels",
    "the quality of being honest and having strong moral principles",
    "a sweet yellow fruit with a thick skin",
    "a large body of salt water",
    "a feeling of great pleasure and happiness",
    "the period of time between sunrise and sunset",
    "a hand tool with a heavy metal head for driving nails",
    "the branch of mathematics dealing with shapes",
    "a long narrow cut or opening",
    "a meeting for discussion among several people",
    "a disease caused by a virus that affects the lungs",
]


def run_case(client: ServingClient, texts: list[str], protocol: str, batch_size: int,
             seconds: float, warmup_seconds: float, concurrency: int) -> dict:
    batches = [[texts[(i + j) % len(texts)] for j in range(batch_size)]
               for i in range(len(texts))]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    phase = {"record": False, "stop": False}

    def worker(seed: int):
        i = seed
        while not phase["stop"]:
            batch = batches[i % len(batches)]
            i += 1
            start = time.perf_counter()
            try:
                result = client.predict(batch, protocol=protocol)
                ok = len(result.outputs.get("label", [])) == len(batch)
                error = None if ok else "wrong number of outputs"
            except ServingError as err:
                error = str(err)
            elapsed = time.perf_counter() - start
            if phase["record"]:
                with lock:
                    if error:
                        errors.append(error)
                    else:
                        latencies.append(elapsed)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True)
               for k in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(warmup_seconds)
    phase["record"] = True
    start = time.perf_counter()
    time.sleep(seconds)
    phase["record"] = False
    wall = time.perf_counter() - start
    phase["stop"] = True
    for t in threads:
        t.join(client.timeout * (client.retries + 1) + 5)
    ms = np.array(latencies) * 1e3
    return {"protocol": protocol, "batch_size": batch_size, "concurrency": concurrency,
            "seconds": round(wall, 1), "requests": len(latencies), "errors": len(errors),
            "requests_per_s": round(len(latencies) / wall, 1),
            "rows_per_s": round(len(latencies) * batch_size / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
            "first_error": errors[0] if errors else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.bench", description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_base_path",
                        help="start serving.local_server on this model (else use a running "
                             "server at --host/--rest_port/--grpc_port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--rest_port", type=int, default=8501)
    parser.add_argument("--grpc_port", type=int, default=8500)
    parser.add_argument("--model", default="text_classifier")
    parser.add_argument("--protocols", nargs="+", choices=["rest", "grpc"],
                        default=["rest", "grpc"])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per case")
    parser.add_argument("--warmup_seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=1, help="client threads")
    parser.add_argument("--texts_file", help="UTF-8 file, one text a line")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    texts = SAMPLE_TEXTS
    if args.texts_file:
        with open(args.texts_file, encoding="utf-8") as f:
            texts = [line.rstrip("\n") for line in f if line.strip()] or SAMPLE_TEXTS

    server = None
    if args.model_base_path:
        from serving.process import LocalServerProcess

        server = LocalServerProcess(["--model_name", args.model, "--model_base_path",
                                     args.model_base_path], model=args.model)
        print(f"starting serving.local_server on {args.model_base_path} ...", flush=True)
        try:
            server.start()
        except RuntimeError as err:
            server.close()
            print(f"error: {err}", file=sys.stderr)
            return 1
        client = server.client(batch_size=max(args.batch_sizes), retries=0)
    else:
        client = ServingClient(args.host, args.rest_port, args.grpc_port, args.model,
                               batch_size=max(args.batch_sizes), retries=0)
    results = []
    try:
        for protocol in args.protocols:  # fail early; load the gRPC stubs untimed
            client.predict(texts[:1], protocol=protocol)
        print(f"{'protocol':<8} {'batch':>5} {'clients':>7} {'req/s':>8} {'rows/s':>9} "
              f"{'p50 ms':>8} {'p99 ms':>8} {'errors':>6}", flush=True)
        for protocol in args.protocols:
            for batch_size in args.batch_sizes:
                r = run_case(client, texts, protocol, batch_size, args.seconds,
                             args.warmup_seconds, args.concurrency)
                results.append(r)
                print(f"{protocol:<8} {batch_size:>5} {args.concurrency:>7} "
                      f"{r['requests_per_s']:>8.1f} {r['rows_per_s']:>9.1f} "
                      f"{r['p50_ms'] or float('nan'):>8.2f} "
                      f"{r['p99_ms'] or float('nan'):>8.2f} {r['errors']:>6}", flush=True)
    except ServingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        client.close()
        if server is not None:
            server.close()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
