"""tf.data service: the training input's tokenization run by other processes.

A dispatcher and N workers (`tf.data.experimental.service`) tokenize the
training split, one job per epoch, and send the tokenized batches over gRPC;
the trainer shuffles, buckets and batches them (`pipeline.input.
make_service_train_dataset` says why the work is cut there). Here they are
processes on 127.0.0.1; in production, hosts or pods:

    python -m pipeline data-service --workers 2           # dispatcher + 2 workers
    python -m pipeline run <config> --set runtime.data_service=grpc://127.0.0.1:PORT

    python -m pipeline.data_service dispatcher --port 5050 [--work_dir DIR]
    python -m pipeline.data_service worker --dispatcher HOST:5050 [--port P] [--host NAME]

The trainer's side is `distribute` and `job_name`. Before TensorFlow
registers the dataset (which waits for an unreachable dispatcher without
end), `wait_for_dispatcher` asks the dispatcher over gRPC and fails with a
message naming the address.

The service has no authentication and TensorFlow's servers listen on every
interface: run it on a private network.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import sys
import threading
import time

from pipeline.config import check

CONFIG_KEY = "runtime.data_service"
PROTOCOL = "grpc"
EXAMPLE_ADDRESS = "grpc://127.0.0.1:5050"
# How long a worker waits for the dispatcher to answer (the trainer's wait
# is runtime.data_service_timeout_seconds).
DISPATCHER_TIMEOUT_SECONDS = 60.0
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)$")
# The dispatcher's gRPC service (tensorflow/core/data/service/dispatcher.proto).
_DISPATCHER_SERVICE = "/tensorflow.data.DispatcherService/"


class DataServiceError(RuntimeError):
    """The tf.data service cannot be reached or has stopped; the message names
    the address."""


# ------------------------------------------------------------------ address


def parse_address(value: str, key: str = CONFIG_KEY) -> str:
    """`grpc://HOST:PORT` or `HOST:PORT` -> `grpc://HOST:PORT`; a ConfigError
    naming `key` otherwise."""
    text = str(value).strip()
    protocol, sep, rest = text.partition("://")
    if not sep:
        protocol, rest = PROTOCOL, text
    host, _, port = rest.rpartition(":")
    check(protocol == PROTOCOL and bool(_HOST.match(host)) and port.isdigit()
          and 0 < int(port) < 65536, key, value,
          f"the address of a tf.data service dispatcher, grpc://HOST:PORT (e.g. "
          f"{EXAMPLE_ADDRESS}, printed by 'python -m pipeline data-service')"
          + (", or '' for local input" if key == CONFIG_KEY else ""))
    return f"{PROTOCOL}://{host}:{int(port)}"


def _target(address: str) -> str:
    return address.split("://", 1)[-1]


# -------------------------------------------------- asking the dispatcher


def _call(address: str, method: str, timeout: float) -> bytes:
    """One empty-request unary call to the dispatcher; waits up to `timeout`
    for it to be reachable. Raises grpc.RpcError."""
    import grpc

    with grpc.insecure_channel(_target(address)) as channel:
        rpc = channel.unary_unary(_DISPATCHER_SERVICE + method,
                                  request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
        return rpc(b"", timeout=timeout, wait_for_ready=True)


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def _fields(message: bytes):
    """(field number, wire type, value) of a protobuf message, top level only."""
    i = 0
    while i < len(message):
        key, i = _varint(message, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(message, i)
        elif wire == 2:
            size, i = _varint(message, i)
            value, i = message[i:i + size], i + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = message[i:i + size], i + size
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
        yield field, wire, value


def registered_workers(address: str, timeout: float = 5.0) -> list[str]:
    """Addresses of the workers registered with the dispatcher.

    GetWorkersResponse is `repeated WorkerInfo workers = 1` with `string
    address = 1` in each; TensorFlow ships no Python module of that proto,
    so the two fields are read from the wire format here.
    """
    reply = _call(address, "GetWorkers", timeout)
    return [value.decode("utf-8", "replace")
            for field, wire, info in _fields(reply) if field == 1 and wire == 2
            for number, kind, value in _fields(info) if number == 1 and kind == 2]


def wait_for_dispatcher(address: str, timeout: float = DISPATCHER_TIMEOUT_SECONDS,
                        key: str = CONFIG_KEY) -> list[str]:
    """Waits up to `timeout` seconds for the dispatcher at `address` to answer;
    returns the addresses of its registered workers. Raises DataServiceError
    naming the address (and `key`, where it came from)."""
    import grpc

    try:
        return registered_workers(address, timeout)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise DataServiceError(
                f"{address} ({key}) answers gRPC but is not a tf.data service "
                "dispatcher") from None
        raise DataServiceError(
            f"no tf.data service dispatcher answered at {address} ({key}) within "
            f"{timeout:.0f}s ({err.code().name}). Start one with 'python -m pipeline "
            "data-service --workers 2' and use the address it prints, or set "
            f"{CONFIG_KEY}='' to read the input locally") from None


# ------------------------------------------------------------- the trainer


def job_prefix(cfg, start_step: int) -> str:
    """The start of the names of a run's jobs: the experiment and the step
    the run starts from."""
    return f"{cfg.name}-step{start_step}"


def job_name(cfg, start_step: int, trainer: int = 0, trainers: int = 1) -> str:
    """A new job name for one trainer's stream: `job_prefix`, the trainer's
    shard, and a random part, so no two datasets ever share a job.

    A shared job is split first come, first served: a trainer that gets
    nothing of an epoch (another one drained it first) ends its stream, and
    a rerun that takes the name of a finished job reads nothing. Each
    trainer reads its own shard of the data through its own jobs instead,
    which the workers serve side by side.
    """
    return f"{job_prefix(cfg, start_step)}-trainer{trainer}of{trainers}-" \
        f"{secrets.token_hex(4)}"


def distribute(dataset, address: str, job: str,
               timeout: float = DISPATCHER_TIMEOUT_SECONDS):
    """`dataset` produced by the tf.data service at `address` (job `job`),
    split dynamically between its workers (ShardingPolicy.DYNAMIC). Raises
    DataServiceError when the dispatcher does not answer within `timeout`."""
    import tensorflow as tf

    address = parse_address(address)
    wait_for_dispatcher(address, timeout)
    service = tf.data.experimental.service
    return dataset.apply(service.distribute(
        processing_mode=service.ShardingPolicy.DYNAMIC, service=address, job_name=job))


# ----------------------------------------------------------- the servers


def _wait_for_signal(role: str, parent_pid: int = 0) -> None:
    """Blocks until SIGTERM or SIGINT, or, with `parent_pid`, until this
    process is no longer a child of that process (its supervisor died, even
    by SIGKILL: no orphaned servers)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        if parent_pid and os.getppid() != parent_pid:
            print(f"[{role}] its supervisor (pid {parent_pid}) has exited", flush=True)
            return


def _import_tensorflow():
    """TensorFlow with the tensorflow-text ops (SentencePiece) registered: the
    workers run the pipeline's datasets, and in DYNAMIC mode the dispatcher
    builds them too (to split their source)."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    return tf


def _exit_now(role: str, server) -> None:
    """Ends the process without stopping `server` first: stopping a worker
    waits for its tasks, and a task of an endless training stream never ends.
    The dispatcher's journal (--work_dir) is written as it goes."""
    print(f"[{role}] stopped", flush=True)
    sys.stderr.flush()
    os._exit(0)


def run_dispatcher(port: int, work_dir: str = "", parent_pid: int = 0) -> None:
    """A dispatcher on `port` (all interfaces) until SIGTERM/SIGINT, then the
    process exits. With `work_dir` it journals its state there and recovers
    it on restart."""
    tf = _import_tensorflow()
    service = tf.data.experimental.service
    server = service.DispatchServer(service.DispatcherConfig(
        port=port, work_dir=work_dir or None, fault_tolerant_mode=bool(work_dir)))
    print(f"[dispatcher] serving {server.target} (pid {os.getpid()}"
          f"{f', state in {work_dir}' if work_dir else ''})", flush=True)
    _wait_for_signal("dispatcher", parent_pid)
    _exit_now("dispatcher", server)


def run_worker(dispatcher: str, port: int = 0, host: str = "localhost",
               timeout: float = DISPATCHER_TIMEOUT_SECONDS, parent_pid: int = 0) -> None:
    """A worker on `port`, registered with `dispatcher` under `host:port`
    (the name trainers reach it by), until SIGTERM/SIGINT, then the process
    exits."""
    from pipeline.launch import free_ports

    tf = _import_tensorflow()

    address = parse_address(dispatcher, key="--dispatcher")
    wait_for_dispatcher(address, timeout, key="--dispatcher")
    port = port or free_ports(1)[0]
    service = tf.data.experimental.service
    # Serves until it is garbage collected: keep the reference.
    server = service.WorkerServer(service.WorkerConfig(
        dispatcher_address=_target(address), worker_address=f"{host}:%port%", port=port))
    print(f"[worker] serving {host}:{port} for the dispatcher {address} "
          f"(pid {os.getpid()})", flush=True)
    _wait_for_signal("worker", parent_pid)
    _exit_now("worker", server)


# ------------------------------------------------ one host: the command


class LocalService:
    """A dispatcher and `workers` worker processes on 127.0.0.1, each in its
    own process group, their output streamed with `[d]`, `[s0]`,
    `[s1]`, ... prefixes. `start` returns the dispatcher's address once every
    worker has registered; `stop` ends them all."""

    def __init__(self, workers: int, port: int = 0, work_dir: str = ""):
        self.workers, self.port, self.work_dir = workers, port, work_dir
        self.address = ""
        self.processes: list = []
        self.names: list[str] = []

    def _start(self, name: str, prefix: str, *args: str) -> None:
        from pipeline.launch import start_streamed

        cmd = [sys.executable, "-m", "pipeline.data_service", *args,
               "--parent_pid", str(os.getpid())]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.processes.append(start_streamed(cmd, prefix, env))
        self.names.append(name)

    def exited(self) -> list[str]:
        """'<name> exited with code N' for every child that has ended."""
        return [f"{name} (pid {p.pid}) exited with code {p.returncode}"
                for name, p in zip(self.names, self.processes) if p.poll() is not None]

    def _wait(self, ready, what: str, deadline: float, stop) -> None:
        import grpc

        while True:
            dead = self.exited()
            if dead:
                raise DataServiceError(f"{'; '.join(dead)} before {what} (its output "
                                       "is above)")
            if stop is not None and stop.is_set():
                raise DataServiceError(f"interrupted before {what}")
            try:
                if ready(registered_workers(self.address, timeout=1.0)):
                    return
            except grpc.RpcError:
                pass
            if time.time() > deadline:
                raise DataServiceError(f"timed out before {what} at {self.address}")
            time.sleep(0.5)

    def start(self, timeout: float = 120.0, stop: threading.Event | None = None) -> str:
        from pipeline.launch import free_ports

        deadline = time.time() + timeout
        ports = free_ports(self.workers + (0 if self.port else 1))
        port = self.port or ports.pop()
        self.address = f"{PROTOCOL}://127.0.0.1:{port}"
        self._start("the dispatcher", "[d]", "dispatcher", "--port", str(port),
                    *(["--work_dir", self.work_dir] if self.work_dir else []))
        self._wait(lambda workers: True, "the dispatcher answered", deadline, stop)
        for index, worker_port in enumerate(ports):
            self._start(f"worker {index}", f"[s{index}]", "worker", "--dispatcher",
                        _target(self.address), "--port", str(worker_port),
                        "--host", "127.0.0.1")
        self._wait(lambda workers: len(workers) >= self.workers,
                   f"{self.workers} worker(s) registered", deadline, stop)
        return self.address

    def stop(self, grace_seconds: float = 10.0) -> None:
        from pipeline.launch import signal_all

        signal_all(self.processes, signal.SIGTERM)
        deadline = time.time() + grace_seconds
        while any(p.poll() is None for p in self.processes) and time.time() < deadline:
            time.sleep(0.2)
        signal_all(self.processes, signal.SIGKILL)
        for p in self.processes:
            p.wait()
            p.output_thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.stop()


def serve(workers: int, port: int = 0, work_dir: str = "", timeout: float = 120.0) -> int:
    """`python -m pipeline data-service`: a dispatcher and `workers` workers on
    127.0.0.1 until Ctrl-C or SIGTERM; exits 1 when one of them dies."""
    if workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM,
                                                                  signal.SIGINT)}
    service = LocalService(workers, port, work_dir)
    try:
        print(f"[data-service] starting a dispatcher and {workers} worker(s) on "
              "127.0.0.1", flush=True)
        try:
            address = service.start(timeout, stop)
        except DataServiceError as err:
            print(f"error: tf.data service: {err}", file=sys.stderr, flush=True)
            return 1
        print(f"[data-service] ready: dispatcher {address}, {workers} worker(s). Train "
              f"from it with\n  python -m pipeline run <config> --set "
              f"{CONFIG_KEY}={address}\n[data-service] Ctrl-C or SIGTERM stops the "
              "dispatcher and the workers", flush=True)
        while not stop.wait(0.5):
            dead = service.exited()
            if dead:
                print(f"error: tf.data service: {'; '.join(dead)}; stopping the others",
                      file=sys.stderr, flush=True)
                return 1
        print("[data-service] stopping", flush=True)
        return 0
    finally:
        service.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)


# ------------------------------------------------------ the process entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.data_service",
        description="One tf.data service process: a dispatcher or a worker. "
        "'python -m pipeline data-service --workers N' starts both on one host.")
    commands = parser.add_subparsers(dest="role", required=True)
    dispatcher = commands.add_parser("dispatcher", help="the dispatcher")
    dispatcher.add_argument("--port", type=int, default=5050,
                            help="port to serve on (every interface; default 5050)")
    dispatcher.add_argument("--work_dir", "--work-dir", default="",
                            help="directory (shared storage) where the dispatcher "
                            "journals its state, so a restarted one recovers it")
    worker = commands.add_parser("worker", help="a worker")
    worker.add_argument("--dispatcher", required=True, metavar="HOST:PORT",
                        help="the dispatcher's address")
    worker.add_argument("--port", type=int, default=0,
                        help="port to serve on (default: a free one)")
    worker.add_argument("--host", default="localhost",
                        help="the name trainers reach this worker by (its host or "
                        "pod name; default localhost)")
    worker.add_argument("--timeout", type=float, default=DISPATCHER_TIMEOUT_SECONDS,
                        help="seconds to wait for the dispatcher (default %(default)s)")
    for role in (dispatcher, worker):
        role.add_argument("--parent_pid", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from pipeline.config import ConfigError

    try:
        if args.role == "dispatcher":
            run_dispatcher(args.port, args.work_dir, args.parent_pid)
        else:
            run_worker(args.dispatcher, args.port, args.host, args.timeout,
                       args.parent_pid)
        return 0
    except (ConfigError, DataServiceError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
