"""The model side of the local server: versions on disk, loading, prediction.

A `ServerCore` holds one `ModelManager` per configured model. A manager polls
`<base_path>/<version>/` like TF Serving's file-system storage path source:
numbered directories that hold a complete SavedModel are candidates, the
version policy (latest N, all, specific) picks the aspired ones, a new version
is loaded (and warmed up from assets.extra/tf_serving_warmup_requests) while
the old one keeps serving, and only then is the old one unloaded
(availability-preserving). Requests hold a reference to the servable they
started on, so a version swap never fails a request in flight.

Errors are `ServingError`s carrying the gRPC status code TF Serving uses, with
its message wording where there is one; REST maps the code to HTTP the way
TF Serving's http_server.cc does.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import time

import grpc
import numpy as np

# tensorflow is imported lazily (by the first load) so `--help` stays fast.
tf = None


def _tf():
    """tensorflow, with the tensorflow-text ops registered (TF Serving links them)."""
    global tf
    if tf is None:
        import tensorflow
        import tensorflow_text  # noqa: F401  registers SentencepieceOp & co.

        tf = tensorflow
    return tf


# gRPC status -> HTTP status, as ToHTTPStatusCode in TF Serving's http_server.cc.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500, grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """A request error with a gRPC status code (HTTP status via HTTP_STATUS)."""

    def __init__(self, code: grpc.StatusCode, message: str, http_status: int | None = None):
        super().__init__(message)
        self.code, self.message = code, message
        self.http_status = http_status or HTTP_STATUS.get(code, 500)


def invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def dtype_name(enum: int) -> str:
    return _tf().dtypes.as_dtype(enum).name


# Lines of a TF error message that say where, not what.
_TF_CONTEXT = re.compile(r"(Graph execution error:|Detected at node |<stack traces "
                         r"unavailable>|File \"|\s*\[\[\{\{node |\s*$)")


def clip(text: str, limit: int = 200) -> str:
    """A name from a request, cut for an error message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _short(message: str, limit: int = 500) -> str:
    """The line of a TF error that says what went wrong, without the graph and
    stack context TF puts around it ("Graph execution error:", "Detected at
    node ...", "[[{{node ...}}]]")."""
    lines = [line.strip() for line in message.splitlines()]
    meaningful = [line for line in lines if line and not _TF_CONTEXT.match(line)]
    line = (meaningful or [line for line in lines if line] or ["error"])[0]
    line = re.sub(r"\s*\[Op:[^\]]*\]$", "", line) or "error"
    return line if len(line) <= limit else line[:limit] + " ..."


@dataclasses.dataclass
class Limits:
    """Per-request limits of the local server (TF Serving has no equivalents)."""

    max_batch_size: int = 1000        # rows in one request


class Servable:
    """One loaded version: the tf.saved_model.load object and its SignatureDefs."""

    def __init__(self, name: str, version: int, path: str, tags=("serve",)):
        from tensorflow.core.protobuf import saved_model_pb2

        tf = _tf()
        self.name, self.version, self.path = name, version, path
        saved_model = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            saved_model.ParseFromString(f.read())
        graphs = [g for g in saved_model.meta_graphs
                  if set(tags) <= set(g.meta_info_def.tags)]
        if not graphs:
            raise ValueError(f"no MetaGraph with tags {list(tags)} in {path}")
        self.signature_defs = {k: v for k, v in graphs[0].signature_def.items()
                               if not k.startswith("__")}
        self.loaded = tf.saved_model.load(path, tags=list(tags))
        self.functions = {k: self.loaded.signatures[k] for k in self.signature_defs}

    def signature(self, signature_name: str):
        name = signature_name or "serving_default"
        if name not in self.signature_defs:
            raise invalid(f'Serving signature name: "{clip(name)}" not found in signature def')
        return name, self.signature_defs[name]

    def predict(self, signature_name: str, inputs: dict[str, np.ndarray],
                limits: Limits, output_filter=()) -> tuple[str, dict[str, np.ndarray]]:
        """Runs a signature on numpy inputs already of the signature's dtypes."""
        tf = _tf()
        name, signature = self.signature(signature_name)
        expected, sent = set(signature.inputs), set(inputs)
        if sent != expected:
            raise invalid(
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{', '.join(sorted(sent))}}}) != len({{{', '.join(sorted(expected))}}})"
                f". Sent extra: {{{', '.join(sorted(sent - expected))}}}. Missing but "
                f"required: {{{', '.join(sorted(expected - sent))}}}.")
        for key, array in inputs.items():
            check_shape(key, array.shape, signature.inputs[key])
            if array.ndim and array.shape[0] > limits.max_batch_size:
                raise invalid(f"input '{key}' has {array.shape[0]:,} rows; this server "
                              f"accepts at most {limits.max_batch_size:,} per request "
                              "(--max_batch_size): split the batch")
        wanted = list(output_filter) or sorted(signature.outputs)
        unknown = [k for k in wanted if k not in signature.outputs]
        if unknown:
            raise invalid(f"output tensor alias not found in signature: {unknown[0]} "
                          f"Outputs expected to be in the set "
                          f"{{{','.join(sorted(signature.outputs))}}}.")
        feeds = {key: tf.constant(array, dtype=signature.inputs[key].dtype)
                 for key, array in inputs.items()}
        try:
            outputs = self.functions[name](**feeds)
        except tf.errors.OpError as err:
            raise ServingError(_CODE_BY_NUMBER.get(err.error_code, grpc.StatusCode.UNKNOWN),
                               _short(err.message)) from None
        return name, {k: outputs[k].numpy() for k in wanted}


def check_shape(key: str, shape: tuple, info) -> None:
    """Rank and known dimensions of an input against its TensorInfo."""
    if info.tensor_shape.unknown_rank:
        return
    dims = [d.size for d in info.tensor_shape.dim]
    if len(shape) != len(dims) or any(d >= 0 and d != s for d, s in zip(dims, shape)):
        want = "[" + ",".join(str(d) for d in dims) + "]"
        raise invalid(f"input '{key}' has shape {list(shape)}; the signature expects "
                      f"{want} (-1: any size)")


def version_dirs(base_path: str) -> dict[int, str]:
    """Numbered subdirectories that hold a complete SavedModel."""
    found = {}
    try:
        entries = os.listdir(base_path)
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue  # e.g. .2.tmp-1234 while an export is being written
        path = os.path.join(base_path, entry)
        has_graph = os.path.isfile(os.path.join(path, "saved_model.pb"))
        variables = os.path.join(path, "variables")
        complete_variables = not os.path.isdir(variables) or \
            os.path.isfile(os.path.join(variables, "variables.index"))
        if has_graph and complete_variables:
            found[int(entry)] = path
    return found


@dataclasses.dataclass
class VersionState:
    state: str                 # START | LOADING | AVAILABLE | UNLOADING | END
    error_code: str = "OK"     # tensorflow.error.Code name
    error_message: str = ""
    failures: int = 0


class ModelManager:
    """The versions of one model: policy, labels, loading, unloading."""

    def __init__(self, config, server):
        self.server = server
        self.name = config.name
        self.available: dict[int, Servable] = {}   # replaced, never mutated
        self.states: dict[int, VersionState] = {}
        self._lock = threading.Lock()
        self.configure(config)

    def configure(self, config) -> None:
        self.base_path = config.base_path
        self.policy = config.model_version_policy
        self.labels = dict(config.version_labels)

    def aspired(self, on_disk: dict[int, str]) -> set[int]:
        choice = self.policy.WhichOneof("policy_choice")
        if choice == "all":
            return set(on_disk)
        if choice == "specific":
            return set(self.policy.specific.versions) & set(on_disk)
        count = self.policy.latest.num_versions if choice == "latest" else 1
        return set(sorted(on_disk)[-max(count, 1):])

    def poll(self) -> None:
        on_disk = version_dirs(self.base_path)
        aspired = self.aspired(on_disk)
        for version in sorted(aspired - set(self.available), reverse=True):
            state = self.states.get(version)
            if state and (state.state == "LOADING" or
                          state.failures > self.server.options.max_num_load_retries):
                continue
            self._load(version, on_disk[version], state.failures if state else 0)
        stale = set(self.available) - aspired
        if stale and aspired & set(self.available):
            for version in stale:
                self._unload(version)

    def _load(self, version: int, path: str, failures: int) -> None:
        log = self.server.log
        self.states[version] = VersionState("LOADING", failures=failures)
        start = time.time()
        try:
            servable = Servable(self.name, version, path,
                                self.server.options.saved_model_tags)
            warmed = self.server.warm_up(servable)
        except Exception as err:  # noqa: BLE001  a broken version must not stop the server
            message = _short(str(err))
            self.states[version] = VersionState("END", "UNKNOWN", message, failures + 1)
            log(f"[serving] failed to load {self.name} version {version} from {path}: "
                f"{message}")
            return
        with self._lock:
            self.available = {**self.available, version: servable}
            self.states[version] = VersionState("AVAILABLE")
        log(f"[serving] {self.name} version {version} AVAILABLE ({path}, "
            f"{time.time() - start:.1f}s"
            + (f", {warmed} warm-up requests replayed" if warmed else "") + ")")

    def _unload(self, version: int) -> None:
        with self._lock:
            self.states[version] = VersionState("UNLOADING")
            self.available = {v: s for v, s in self.available.items() if v != version}
            self.states[version] = VersionState("END")
        self.server.log(f"[serving] {self.name} version {version} unloaded")

    def resolve(self, version: int | None, label: str | None) -> Servable:
        available = self.available
        if label:
            if label not in self.labels:
                raise invalid(f"Unrecognized servable version label: {clip(label)}")
            version = self.labels[label]
        if version is None:
            if not available:
                raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                   f"Servable not found for request: Latest({self.name}): "
                                   "no version is available yet")
            return available[max(available)]
        if version not in available:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Specific({self.name}, "
                               f"{version})")
        return available[version]


@dataclasses.dataclass
class CoreOptions:
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    max_num_load_retries: int = 5
    allow_version_labels_for_unavailable_models: bool = False
    saved_model_tags: tuple = ("serve",)
    limits: Limits = dataclasses.field(default_factory=Limits)


class ServerCore:
    """All served models, the poller thread, and the request entry points."""

    def __init__(self, model_configs, options: CoreOptions, log=print):
        self.options, self.log = options, log
        self.managers: dict[str, ModelManager] = {}
        self._stop = threading.Event()
        self._poller = None
        self._poll_lock = threading.Lock()
        self.reload(model_configs, initial=True)

    # ------------------------------------------------------------ lifecycle
    def reload(self, model_configs, initial: bool = False) -> None:
        """Applies a model list: adds, reconfigures and removes models."""
        configs = {c.name: c for c in model_configs}
        for config in configs.values():
            if not os.path.isdir(config.base_path):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"model {config.name!r}: base path {config.base_path!r} "
                                   "does not exist (pass the directory that holds the "
                                   "numbered versions)")
        with self._poll_lock:
            managers = dict(self.managers)
            for name, config in configs.items():
                if name in managers:
                    managers[name].configure(config)
                else:
                    managers[name] = ModelManager(config, self)
            self.managers = {n: m for n, m in managers.items() if n in configs}
            for manager in self.managers.values():
                manager.poll()
        if not initial:
            self.check_labels()

    def wait_until_available(self, poll_seconds: float) -> None:
        """Blocks until every model has a version (TF Serving does the same)."""
        waiting_logged = set()
        while not self._stop.is_set():
            missing = [m for m in self.managers.values() if not m.available]
            if not missing:
                return
            failed = [f"{{name: {m.name} version: {v}}} due to error: {s.error_message}"
                      for m in missing for v, s in sorted(m.states.items())
                      if s.error_code != "OK"]
            if failed:
                raise ServingError(grpc.StatusCode.UNKNOWN,
                                   f"{len(failed)} servable(s) did not become available: "
                                   + "; ".join(failed))
            for m in missing:
                if m.name not in waiting_logged:
                    self.log(f"[serving] no loadable version of {m.name} under "
                             f"{m.base_path} yet; waiting for one")
                    waiting_logged.add(m.name)
            time.sleep(max(poll_seconds, 0.5))
            self.poll_once()

    def check_labels(self) -> None:
        if self.options.allow_version_labels_for_unavailable_models:
            return
        for manager in self.managers.values():
            for label, version in manager.labels.items():
                if version not in manager.available:
                    raise ServingError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model "
                        f"{manager.name}, which is not currently available for inference "
                        f"(label {label!r}; pass --allow_version_labels_for_unavailable_"
                        "models=true to allow it)")

    def poll_once(self) -> None:
        with self._poll_lock:
            for manager in list(self.managers.values()):
                manager.poll()

    def start_polling(self, poll_seconds: float) -> None:
        if poll_seconds <= 0:
            return

        def loop():
            while not self._stop.wait(poll_seconds):
                try:
                    self.poll_once()
                except Exception as err:  # noqa: BLE001  keep polling whatever happens
                    self.log(f"[serving] poll failed: {err}")

        self._poller = threading.Thread(target=loop, name="version-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------- requests
    def servable(self, name: str, version: int | None = None,
                 label: str | None = None) -> Servable:
        manager = self.managers.get(name)
        if manager is None:
            what = f"Specific({clip(name)}, {version})" if version is not None else \
                f"Latest({clip(name)})"
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: {what}")
        return manager.resolve(version, label)

    def status(self, name: str, version: int | None = None, label: str | None = None):
        """[(version, state, error_code, error_message)] like GetModelStatus."""
        manager = self.managers.get(name)
        if manager is None:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {clip(name)}")
        if label:
            if label not in manager.labels:
                raise invalid(f"Unrecognized servable version label: {clip(label)}")
            version = manager.labels[label]
        states = dict(manager.states)
        if version is not None:
            if version not in states:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {version} of model {name}")
            states = {version: states[version]}
        return [(v, s.state, s.error_code, s.error_message)
                for v, s in sorted(states.items(), reverse=True)]

    def predict_request(self, request):
        """A tensorflow.serving.PredictRequest -> PredictResponse."""
        from tensorflow_serving.apis import predict_pb2

        tf = _tf()
        spec = request.model_spec
        servable = self.servable(spec.name, spec.version.value if spec.HasField("version")
                                 else None, spec.version_label or None)
        name, signature = servable.signature(spec.signature_name)
        inputs = {}
        for i, (key, proto) in enumerate(sorted(request.inputs.items())):
            info = signature.inputs.get(key)
            if info is not None and proto.dtype != info.dtype:
                raise invalid(f"Expects arg[{i}] to be {dtype_name(info.dtype)} but "
                              f"{dtype_name(proto.dtype)} is provided")
            try:
                inputs[key] = tf.make_ndarray(proto)
            except Exception as err:  # noqa: BLE001  malformed TensorProto content
                raise invalid(f"input '{key}' is not a valid TensorProto: "
                              f"{_short(str(err))}") from None
        name, outputs = servable.predict(name, inputs, self.options.limits,
                                         request.output_filter)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = name
        for key, array in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(array))
        return response

    def signature_def_map(self, servable: Servable):
        from tensorflow_serving.apis import get_model_metadata_pb2

        result = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in servable.signature_defs.items():
            result.signature_def[key].CopyFrom(signature)
        return result

    def warm_up(self, servable: Servable) -> int:
        """Replays assets.extra/tf_serving_warmup_requests; returns the count."""
        path = os.path.join(servable.path, "assets.extra", "tf_serving_warmup_requests")
        if not self.options.enable_model_warmup or not os.path.isfile(path):
            return 0
        from tensorflow_serving.apis import prediction_log_pb2

        tf = _tf()
        count = 0
        for i, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            if i >= 1000:
                raise ValueError(f"{path}: more than 1000 warm-up records")
            log = prediction_log_pb2.PredictionLog.FromString(record)
            if log.WhichOneof("log_type") != "predict_log":
                raise ValueError(f"{path}: record {i} is a {log.WhichOneof('log_type')}; "
                                 "only predict_log is supported")
            request = log.predict_log.request
            name, _ = servable.signature(request.model_spec.signature_name)
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            for _ in range(max(self.options.num_request_iterations_for_warmup, 1)):
                servable.predict(name, inputs, self.options.limits, request.output_filter)
                count += 1
        return count
