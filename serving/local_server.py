"""A local, TF-Serving-compatible model server: same flags, REST and gRPC APIs.

    python -m serving.local_server --model_name text_classifier \\
        --model_base_path artifacts/text_classification/serving/text_classifier \\
        --rest_api_port 8501 --port 8500

    python -m serving.local_server --model_config_file my_models.config \\
        --rest_api_port 8501 --monitoring_config_file serving/monitoring.config

It takes the flags of `tensorflow_model_server` (those with no meaning here are
accepted and reported as ignored), serves the same SavedModel through
`tf.saved_model.load`, speaks TF Serving's REST API and its gRPC
PredictionService / ModelService, polls the base path for new versions, and
replays the warm-up requests of each version before serving it. Unlike the
model server it binds 127.0.0.1 unless --host says otherwise, limits the size
of a request (--max_request_bytes, HTTP 413 / RESOURCE_EXHAUSTED past it) and
the rows of one request (--max_batch_size). It never imports the training
code: it reads artifacts only.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

# Flags of tensorflow_model_server that change nothing in this server.
IGNORED_FLAGS = [
    "grpc_socket_path", "rest_api_num_threads", "rest_api_timeout_in_ms",
    "rest_api_enable_cors_support", "enable_batching", "enable_per_model_batching_parameters",
    "num_load_threads", "num_unload_threads", "load_retry_interval_micros",
    "flush_filesystem_caches", "tensorflow_session_parallelism",
    "tensorflow_session_config_file", "use_alts_credentials", "ssl_config_file",
    "platform_config_file", "per_process_gpu_memory_fraction", "grpc_channel_arguments",
    "remove_unused_fields_from_bundle_metagraph", "prefer_tflite_model", "num_tflite_pools",
    "num_tflite_interpreters_per_pool", "enable_signature_method_name_check",
    "xla_cpu_compilation_enabled", "enable_profiler", "thread_pool_factory_config_file",
    "mixed_precision", "skip_initialize_tpu", "enable_grpc_healthcheck_service",
]
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _bool(value: str) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m serving.local_server",
        description="Serve SavedModels with TF Serving's REST and gRPC APIs, locally, "
                    "without Docker. Takes tensorflow_model_server's flags.",
        epilog=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    flag = p.add_argument
    flag("--port", type=int, default=8500, help="gRPC port; 0 disables gRPC (default 8500)")
    flag("--rest_api_port", type=int, default=0,
         help="REST port; 0 disables REST (TF Serving's default), e.g. 8501")
    flag("--model_name", default="default", help="model name (without --model_config_file)")
    flag("--model_base_path", default="",
         help="directory holding the numbered versions, e.g. "
              "artifacts/text_classification/serving/text_classifier")
    flag("--model_config_file", default="",
         help="ModelServerConfig text proto (several models, version policy, labels); "
              "replaces --model_name/--model_base_path")
    flag("--model_config_file_poll_wait_seconds", type=int, default=0,
         help="re-read --model_config_file every N seconds (0: read once)")
    flag("--file_system_poll_wait_seconds", type=int, default=1,
         help="poll the base paths for new versions every N seconds (0: once)")
    flag("--allow_version_labels_for_unavailable_models", type=_bool, nargs="?", const=True,
         default=False, help="allow labels that point at versions not loaded yet")
    flag("--enable_model_warmup", type=_bool, nargs="?", const=True, default=True,
         help="replay assets.extra/tf_serving_warmup_requests before serving a version")
    flag("--num_request_iterations_for_warmup", type=int, default=1)
    flag("--max_num_load_retries", type=int, default=5)
    flag("--monitoring_config_file", default="",
         help="MonitoringConfig text proto; Prometheus metrics on the REST port")
    flag("--batching_parameters_file", default="",
         help="BatchingParameters text proto: checked; this server does not batch "
              "across requests")
    flag("--saved_model_tags", default="serve")
    flag("--tensorflow_intra_op_parallelism", type=int, default=0)
    flag("--tensorflow_inter_op_parallelism", type=int, default=0)
    flag("--grpc_max_threads", type=int, default=16, help="gRPC worker threads")
    flag("--version", action="store_true", help="print the version and exit")
    local = p.add_argument_group("local server only")
    local.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the server)")
    local.add_argument("--max_request_bytes", type=int, default=1_000_000,
                       help="largest request body / gRPC message (default 1,000,000); "
                            "REST answers 413 past it")
    local.add_argument("--max_batch_size", type=int, default=1000,
                       help="most rows in one request (default 1000)")
    ignored = p.add_argument_group("accepted for compatibility, no effect here")
    for name in IGNORED_FLAGS:
        ignored.add_argument(f"--{name}", nargs="?", const="true", default=None,
                             help=argparse.SUPPRESS)
    return p


def model_configs(args):
    from tensorflow_serving.config import model_server_config_pb2

    from serving.config_protos import read_model_server_config

    if args.model_config_file:
        return list(read_model_server_config(args.model_config_file)
                    .model_config_list.config)
    if not args.model_base_path:
        raise ValueError("pass --model_base_path (with --model_name) or --model_config_file")
    return [model_server_config_pb2.ModelConfig(
        name=args.model_name, base_path=args.model_base_path, model_platform="tensorflow")]


class LocalServer:
    """Starts the core, gRPC and REST servers from parsed flags; stop() ends them."""

    def __init__(self, args):
        self.args = args
        self.grpc_server = self.http_server = None
        self._config_mtime = None

    def start(self) -> None:
        from serving.config_protos import (
            read_batching_parameters,
            read_monitoring_config,
        )

        args = self.args
        if not args.port and not args.rest_api_port:
            raise ValueError("both --port and --rest_api_port are 0: nothing to serve")
        if args.port and args.port == args.rest_api_port:
            raise ValueError("--rest_api_port cannot be the same as --port")
        for name in IGNORED_FLAGS:
            if getattr(args, name) is not None:
                log(f"[serving] note: --{name} is accepted for compatibility and has no "
                    "effect in the local server")
        prometheus_path = None
        if args.monitoring_config_file:
            prometheus = read_monitoring_config(args.monitoring_config_file).prometheus_config
            if prometheus.enable:
                prometheus_path = prometheus.path or DEFAULT_PROMETHEUS_PATH
        if args.batching_parameters_file:
            read_batching_parameters(args.batching_parameters_file)
        configs = model_configs(args)
        if args.tensorflow_intra_op_parallelism or args.tensorflow_inter_op_parallelism:
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(
                args.tensorflow_intra_op_parallelism)
            tf.config.threading.set_inter_op_parallelism_threads(
                args.tensorflow_inter_op_parallelism)
        from serving.rest import Metrics
        from serving.servables import CoreOptions, Limits, ServerCore

        options = CoreOptions(
            enable_model_warmup=args.enable_model_warmup,
            num_request_iterations_for_warmup=args.num_request_iterations_for_warmup,
            max_num_load_retries=args.max_num_load_retries,
            saved_model_tags=tuple(t for t in args.saved_model_tags.split(",") if t),
            allow_version_labels_for_unavailable_models=(
                args.allow_version_labels_for_unavailable_models),
            limits=Limits(max_batch_size=args.max_batch_size))
        self.core = ServerCore(configs, options, log=log)
        self.core.wait_until_available(args.file_system_poll_wait_seconds)
        if self.core._stop.is_set():
            return
        self.core.check_labels()
        self.core.start_polling(args.file_system_poll_wait_seconds)
        if args.model_config_file and args.model_config_file_poll_wait_seconds > 0:
            self._config_mtime = os.path.getmtime(args.model_config_file)
            threading.Thread(target=self._watch_config, daemon=True,
                             name="config-poller").start()
        metrics = Metrics() if prometheus_path else None
        if args.port:
            from serving.grpc_services import start_grpc_server

            self.grpc_server = start_grpc_server(self.core, args.host, args.port,
                                                 args.max_request_bytes,
                                                 args.grpc_max_threads, metrics)
            log(f"[serving] Running gRPC ModelServer at {args.host}:{args.port} ...")
        if args.rest_api_port:
            from werkzeug.serving import make_server

            from serving.rest import RestApi

            logging.getLogger("werkzeug").setLevel(logging.WARNING)
            app = RestApi(self.core, args.max_request_bytes, metrics, prometheus_path)
            try:
                self.http_server = make_server(args.host, args.rest_api_port, app,
                                               threaded=True)
            except OSError as err:
                raise OSError(f"cannot listen for HTTP on {args.host}:"
                              f"{args.rest_api_port}: {err.strerror}") from None
            self.http_server.daemon_threads = True
            threading.Thread(target=self.http_server.serve_forever, daemon=True,
                             name="rest").start()
            log(f"[serving] Exporting HTTP/REST API at:{args.host}:{args.rest_api_port} ...")
            if prometheus_path:
                log(f"[serving] Prometheus metrics at http://{args.host}:"
                    f"{args.rest_api_port}{prometheus_path}")

    def _watch_config(self) -> None:
        from serving.config_protos import ConfigFileError
        from serving.servables import ServingError

        path = self.args.model_config_file
        while not self.core._stop.wait(self.args.model_config_file_poll_wait_seconds):
            try:
                mtime = os.path.getmtime(path)
                if mtime == self._config_mtime:
                    continue
                self._config_mtime = mtime
                self.core.reload(model_configs(self.args))
                log(f"[serving] reloaded {path}")
            except (OSError, ConfigFileError, ValueError, ServingError) as err:
                log(f"[serving] model config reload failed: {err}")

    def stop(self) -> None:
        if getattr(self, "core", None):
            self.core.stop()
        if self.http_server:
            self.http_server.shutdown()
        if self.grpc_server:
            self.grpc_server.stop(grace=2).wait(5)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.version:
        import tensorflow as tf

        print(f"TensorFlow ModelServer (local Python server, serving.local_server)\n"
              f"TensorFlow Library: {tf.__version__}")
        return 0
    from serving.config_protos import ConfigFileError
    from serving.servables import ServingError

    stopping = threading.Event()
    server = LocalServer(args)

    def on_signal(*_):
        stopping.set()
        if getattr(server, "core", None):
            server.core.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        server.start()
    except (ValueError, OSError, ConfigFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ServingError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 2
    start = time.time()
    stopping.wait()
    log(f"[serving] stopping after {time.time() - start:.0f}s")
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
