"""`python -m pipeline launch --workers N <config>`: multi-worker on one host.

Prepares the data and tokenizer once (so workers do not race to write them),
then starts N worker processes with `runtime.strategy=multi_worker_mirrored`
and a TF_CONFIG each (free 127.0.0.1 ports), streams their output with a
`[wK]` prefix, and returns non-zero if any worker fails. When one worker
fails, the others are given `runtime.step_timeout_seconds` (plus a margin)
to notice and exit, then are killed. Rerunning the same command resumes
from the latest checkpoint.

On real hosts, run on every host:
  TF_CONFIG='{"cluster": {"worker": ["host0:2222", "host1:2222"]},
              "task": {"type": "worker", "index": <this host's index>}}' \\
  python -m pipeline run <config> --set runtime.strategy=multi_worker_mirrored
with the checkpoint directory (runtime.artifacts_root) on a shared file system.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def stream_output(process: subprocess.Popen, prefix: str) -> None:
    """Copies a child's output (stdout, stderr merged) line by line to ours,
    each line prefixed (`[w0]`); run it in a thread per child."""
    for line in iter(process.stdout.readline, ""):
        sys.stdout.write(f"{prefix} {line}")
        sys.stdout.flush()


def start_streamed(cmd: list[str], prefix: str, env: dict | None = None
                   ) -> subprocess.Popen:
    """Starts `cmd` in its own process group (so `signal_all` reaches its
    children and a terminal's Ctrl-C reaches only us) with its output
    streamed by a daemon thread (`process.output_thread`: join it after the
    process exits so its last lines are not lost)."""
    process = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    process.output_thread = threading.Thread(target=stream_output, args=(process, prefix),
                                             daemon=True)
    process.output_thread.start()
    return process


def signal_all(processes: list[subprocess.Popen], sig: int) -> None:
    """Sends `sig` to the process group of every child still running."""
    for p in processes:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass


def launch(config: str, overrides: list[str], workers: int, command: str = "run",
           timeout: float = 0, grace_seconds: float | None = None) -> int:
    from pipeline.config import load_config
    from pipeline.distribute import tf_config_for
    from pipeline.workflow import prepare

    if workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    overrides = list(overrides) + ["runtime.strategy=multi_worker_mirrored"]
    cfg = load_config(config, overrides)
    print(f"[launch] preparing data and tokenizer once for {workers} worker(s)", flush=True)
    prepare(cfg)
    addresses = [f"127.0.0.1:{p}" for p in free_ports(workers)]
    processes = []
    for index in range(workers):
        env = dict(os.environ, TF_CONFIG=tf_config_for(addresses, index),
                   PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "pipeline", command, config]
        for o in overrides:
            cmd += ["--set", o]
        processes.append(start_streamed(cmd, f"[w{index}]", env))
        print(f"[launch] worker {index} pid {processes[-1].pid} at {addresses[index]}",
              flush=True)
    grace = grace_seconds if grace_seconds is not None else \
        cfg.runtime.step_timeout_seconds + cfg.runtime.collective_timeout_seconds
    start, failed_at = time.time(), None

    def stop_all(sig):
        signal_all(processes, sig)

    def forward(signum, _frame):  # SIGTERM/SIGINT to the launcher -> workers save
        stop_all(signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while any(p.poll() is None for p in processes):
            time.sleep(0.5)
            if failed_at is None and any(p.poll() not in (None, 0) for p in processes):
                failed_at = time.time()
                print(f"[launch] a worker failed; waiting up to {grace:.0f}s for the "
                      "others to exit", flush=True)
            if failed_at is not None and time.time() - failed_at > grace:
                print("[launch] killing the remaining workers", flush=True)
                stop_all(signal.SIGKILL)
            if timeout and time.time() - start > timeout:
                print(f"[launch] --timeout {timeout:.0f}s reached; stopping workers",
                      flush=True)
                stop_all(signal.SIGTERM)
                timeout = 0
                failed_at = failed_at or time.time()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    for p in processes:
        p.output_thread.join(timeout=5)
    codes = [p.returncode for p in processes]
    print(f"[launch] worker exit codes {codes} after {time.time() - start:.0f}s", flush=True)
    return 0 if all(c == 0 for c in codes) else 1
