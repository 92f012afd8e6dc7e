"""Run serving.local_server as a child process on free loopback ports (bench, tests).

    with LocalServerProcess(["--model_name", "text_classifier",
                             "--model_base_path", path]) as server:
        client = server.client()
        client.predict(["a tree"])

The process is always stopped on exit: SIGTERM, then SIGKILL after a grace period;
close() (or leaving the `with` block) also removes its log file.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from serving.client import ServingClient, ServingError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalServerProcess:
    """A serving.local_server child process with its own REST and gRPC ports."""

    def __init__(self, flags: list[str], model: str = "text_classifier",
                 start_timeout: float = 300.0, host: str = "127.0.0.1"):
        self.flags, self.model, self.host = list(flags), model, host
        self.start_timeout = start_timeout
        self.rest_port, self.grpc_port = free_port(host), free_port(host)
        self.process = None
        fd, self.log_path = tempfile.mkstemp(prefix="local_server-", suffix=".log")
        os.close(fd)

    def client(self, **kwargs) -> ServingClient:
        kwargs.setdefault("model", self.model)
        return ServingClient(self.host, self.rest_port, self.grpc_port, **kwargs)

    def log_text(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def start(self) -> LocalServerProcess:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log_path, "w", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "serving.local_server", "--host", self.host,
                 "--port", str(self.grpc_port), "--rest_api_port", str(self.rest_port),
                 *self.flags], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
        deadline = time.monotonic() + self.start_timeout
        client = self.client(retries=0, timeout=2.0)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"local server exited with {self.process.returncode}:\n"
                                   + self.log_text()[-3000:])
            try:
                status = client.status()
                if any(v["state"] == "AVAILABLE" for v in status["model_version_status"]):
                    return self
            except ServingError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"local server not AVAILABLE after {self.start_timeout:.0f}s:\n"
                           + self.log_text()[-3000:])

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 15.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def close(self) -> None:
        """Stops the server and removes its log file."""
        self.stop()
        try:
            os.unlink(self.log_path)
        except OSError:
            pass

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()
        return False
