"""What every task runner of the edge app shares: the bundle, the runtime, the interface.

Dependencies: numpy, the stdlib, and (imported when a bundle is loaded) ai_edge_litert and
sentencepiece. Never tensorflow, never the project's other packages.

A bundle's manifest.json names its `task`; `load_runner` reads and checks the manifest,
looks the task up in the registry (`register_runner`), verifies every file's sha256 and
builds that task's runner. See `Runner` for the interface a task implements.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SUPPORTED_FORMAT_VERSIONS = (1,)
DEFAULT_TASK = "text_classification"
FLOAT_VARIANTS = ("float32", "float16")
INSTALL_HINT = "pip install -r edge/requirements.txt"
PREVIEW_CHARS = 60


class BundleError(Exception):
    """The bundle is unusable (manifest missing/invalid, file missing, hash mismatch...)."""


class RuntimeMissingError(Exception):
    """No TFLite runtime that can run this bundle is installed."""


class InputError(ValueError):
    """One input cannot be run (an image file that is missing or not an image, ...); the
    message names the input and says why. The app reports it and goes on with the next."""


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise BundleError(msg)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Manifest:
    """The task-independent part of manifest.json, checked. Task keys stay in `raw`; a runner
    reads them with `member`, `get_int` and `get_str`, which raise BundleError."""

    task: str
    model: str                  # the .tflite file (its sha256 is in files)
    variant: str                # quantization variant, e.g. float32, dynamic_range, int8
    files: dict[str, str]       # file name -> sha256 (lower-case hex)
    # signature name -> {"inputs": {tensor: spec}, "outputs": {tensor: spec}}, a spec being
    # {"dtype": "int32", "shape": [1, 64], "quantization": {"scale", "zero_point"}};
    # None for bundles written before export recorded it.
    signatures: dict[str, dict[str, dict[str, dict[str, Any]]]] | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    def member(self, key: str, default: str | None = None) -> str:
        """The bundle file named by manifest key `key` (or `default` when the key is absent):
        a relative path inside the bundle whose sha256 is listed in `files`."""
        return _member(self.raw, self.files, key, default)

    def get_int(self, key: str, default: int | None = None, minimum: int = 0) -> int:
        v = self.raw.get(key, default)
        _require(_is_int(v) and v >= minimum,
                 f"manifest.json: {key} must be an integer >= {minimum}, got {v!r}")
        return v

    def get_str(self, key: str, default: str | None = None) -> str | None:
        v = self.raw.get(key, default)
        _require(v is None or isinstance(v, str), f"manifest.json: {key} must be a string")
        return v


def _check_member_name(name: Any, what: str) -> None:
    _require(isinstance(name, str) and name != "",
             f"manifest.json: {what} must be a non-empty file name")
    p = Path(name)
    _require(not p.is_absolute() and ".." not in p.parts,
             f"manifest.json: {what} {name!r} must be a path inside the bundle")


def _member(raw: dict, files: dict, key: str, default: str | None) -> str:
    name = raw.get(key, default)
    _check_member_name(name, key)
    _require(name in files, f"manifest.json: {key} file {name!r} has no sha256 in 'files'; "
             "refusing to load an unverified file")
    return name


def _check_tensor_spec(spec: Any, where: str) -> None:
    _require(isinstance(spec, dict), f"manifest.json: {where} must be an object "
             "{dtype, shape, quantization}")
    dtype = spec.get("dtype")
    try:
        ok = isinstance(dtype, str) and np.dtype(dtype).name == dtype
    except TypeError:
        ok = False
    _require(ok, f"manifest.json: {where}.dtype must be a numpy dtype name such as "
             f"'int32', got {dtype!r}")
    shape = spec.get("shape")
    _require(isinstance(shape, list) and all(_is_int(d) and d >= -1 for d in shape),
             f"manifest.json: {where}.shape must be a list of integers (-1: any), got {shape!r}")
    q = spec.get("quantization")
    if q is not None:
        _require(isinstance(q, dict)
                 and isinstance(q.get("scale", 0.0), (int, float))
                 and not isinstance(q.get("scale", 0.0), bool)
                 and _is_int(q.get("zero_point", 0)),
                 f"manifest.json: {where}.quantization must be {{\"scale\": float, "
                 f"\"zero_point\": int}}, got {q!r}")


def _check_signatures(value: Any) -> dict:
    _require(isinstance(value, dict) and value,
             "manifest.json: signatures must map signature names to "
             "{\"inputs\": {...}, \"outputs\": {...}}")
    for sig, spec in value.items():
        where = f"signatures[{sig!r}]"
        _require(sig != "", "manifest.json: signatures has an empty signature name")
        _require(isinstance(spec, dict),
                 f"manifest.json: {where} must be an object with 'inputs' and 'outputs'")
        for kind in ("inputs", "outputs"):
            tensors = spec.get(kind)
            _require(isinstance(tensors, dict),
                     f"manifest.json: {where}.{kind} must map tensor names to "
                     "{dtype, shape, quantization}")
            for name, tensor in tensors.items():
                _check_tensor_spec(tensor, f"{where}.{kind}[{name!r}]")
    return value


def read_manifest(bundle_dir: str | os.PathLike) -> Manifest:
    """Parse and check <bundle_dir>/manifest.json: the keys every task has (format_version,
    task, model, files, optional signatures). No file hashing here, and no task lookup: an
    unknown task is refused by `runner_class`."""
    bundle_dir = Path(bundle_dir)
    _require(bundle_dir.is_dir(), f"bundle directory not found: {bundle_dir}")
    path = bundle_dir / "manifest.json"
    _require(path.is_file(), f"manifest.json missing in bundle {bundle_dir}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"manifest.json is not valid JSON ({path}): {e}") from None
    except (RecursionError, ValueError) as e:
        raise BundleError(f"manifest.json cannot be read ({path}): {e}") from None
    _require(isinstance(raw, dict), f"manifest.json must hold a JSON object ({path})")

    version = raw.get("format_version")
    _require(version in SUPPORTED_FORMAT_VERSIONS,
             f"manifest.json: unsupported format_version {version!r} "
             f"(this app reads {list(SUPPORTED_FORMAT_VERSIONS)})")
    task = raw.get("task", DEFAULT_TASK)
    _require(isinstance(task, str) and task != "",
             f"manifest.json: task must be a non-empty string, got {task!r}")

    files = raw.get("files")
    _require(isinstance(files, dict) and files,
             "manifest.json: 'files' must map file names to sha256 hex digests")
    for name, digest in files.items():
        _check_member_name(name, "file")
        _require(isinstance(digest, str) and len(digest) == 64
                 and all(c in "0123456789abcdefABCDEF" for c in digest),
                 f"manifest.json: files[{name!r}] is not a sha256 hex digest")

    signatures = raw.get("signatures")
    return Manifest(
        task=task,
        model=_member(raw, files, "model", "model.tflite"),
        variant=str(raw.get("variant", "unknown")),
        files={str(k): str(v).lower() for k, v in files.items()},
        signatures=None if signatures is None else _check_signatures(signatures),
        raw=raw,
    )


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_files(bundle_dir: str | os.PathLike, manifest: Manifest) -> None:
    """Raise BundleError naming the first file that is missing or whose sha256 differs."""
    bundle_dir = Path(bundle_dir)
    for name, expected in manifest.files.items():
        path = bundle_dir / name
        _require(path.is_file(), f"bundle file missing: {name} (expected at {path})")
        actual = sha256_file(path)
        _require(actual == expected,
                 f"bundle file {name} failed its sha256 check (manifest {expected[:12]}..., "
                 f"file {actual[:12]}...); the bundle is corrupt or was modified")


# --------------------------------------------------------------------------- runtime


def _import_interpreter(variant: str):
    """Return (Interpreter class, runtime name). Never imports tensorflow."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # type: ignore

        return Interpreter, "ai_edge_litert"
    except ImportError as e:
        litert_error = e
    if variant in FLOAT_VARIANTS:
        try:
            from tflite_runtime.interpreter import Interpreter  # type: ignore

            return Interpreter, "tflite_runtime"
        except ImportError:
            pass
    raise RuntimeMissingError(
        f"ai_edge_litert is not importable ({litert_error}); "
        + (f"the {variant!r} model needs it (tflite-runtime only runs float32/float16 "
           "bundles). " if variant not in FLOAT_VARIANTS
           else "tflite_runtime is not installed either. ")
        + f"Install the runtime with: {INSTALL_HINT}"
    )


def _import_sentencepiece():
    try:
        import sentencepiece  # type: ignore
    except ImportError as e:
        raise RuntimeMissingError(f"sentencepiece is not importable ({e}); "
                                  f"install with: {INSTALL_HINT}") from None
    return sentencepiece


# --------------------------------------------------------------------------- text


def valid_text(text: str) -> str:
    """text itself when it is valid Unicode; else a copy with U+FFFD for what cannot be
    encoded as UTF-8 (lone surrogates: invalid bytes of a command-line argument, or a
    "\\ud800" escape in JSON), as invalid bytes read from stdin or a file become."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")  # argv bytes back to bytes
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogatepass")
        return raw.decode("utf-8", "replace")


def tokenize(processor, text: str, max_sequence_length: int, pad_id: int = 0,
             max_text_bytes: int | None = None) -> np.ndarray:
    """Token ids exactly as the pipeline makes them: sp.encode(text) without bos/eos of the
    text's first max_text_bytes UTF-8 bytes, truncated to max_sequence_length, right-padded
    with pad_id. Returns int32 (max_sequence_length,)."""
    if max_text_bytes is not None and len(text) > max_text_bytes // 4:
        data = text.encode("utf-8", "surrogatepass")
        if len(data) > max_text_bytes:   # a character cut in two becomes U+FFFD, as in the graph
            text = data[:max_text_bytes].decode("utf-8", "replace")
    ids = processor.encode(text, out_type=int)[:max_sequence_length]
    out = np.full((max_sequence_length,), pad_id, dtype=np.int32)
    out[: len(ids)] = ids
    return out


class SentencePieceTokenizer:
    """A bundle's SentencePiece model with the pipeline's length rules; call it on a text
    for int32 ids of shape (max_sequence_length,). See `tokenize`."""

    def __init__(self, model_path: str | os.PathLike, max_sequence_length: int,
                 pad_id: int = 0, max_text_bytes: int | None = None):
        spm = _import_sentencepiece()
        self.processor = spm.SentencePieceProcessor()
        try:
            self.processor.Load(str(model_path))
        except (OSError, RuntimeError) as e:
            raise BundleError(f"{Path(model_path).name} is not a SentencePiece model: {e}") \
                from None
        self.max_sequence_length = max_sequence_length
        self.pad_id = pad_id
        self.max_text_bytes = max_text_bytes

    @classmethod
    def from_manifest(cls, bundle_dir: str | os.PathLike, manifest: Manifest,
                      file_key: str = "tokenizer", default_file: str = "spm.model",
                      length_key: str = "max_sequence_length",
                      bytes_key: str = "max_text_bytes") -> SentencePieceTokenizer:
        """The tokenizer a manifest describes: file `file_key`, `length_key` tokens at most,
        `pad_id`, the first `bytes_key` bytes of a text (absent or null: all)."""
        name = manifest.member(file_key, default_file)
        length = manifest.get_int(length_key, minimum=1)
        pad_id = manifest.get_int("pad_id", 0)
        max_bytes = None if manifest.raw.get(bytes_key) is None \
            else manifest.get_int(bytes_key, minimum=1)
        return cls(Path(bundle_dir) / name, length, pad_id, max_bytes)

    def __call__(self, text: str) -> np.ndarray:
        return tokenize(self.processor, text, self.max_sequence_length, self.pad_id,
                        self.max_text_bytes)


def detokenize(processor, ids: Sequence[int], eos_id: int,
               special_ids: Sequence[int]) -> str:
    """The text of generated ids (translation, generation): the ids before the first
    eos, special ids dropped."""
    ids = [int(i) for i in ids]
    if eos_id in ids:
        ids = ids[: ids.index(eos_id)]
    special = set(special_ids)
    return processor.decode([i for i in ids if i not in special])


def read_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a UTF-8 bundle file (labels, vocabularies), trailing empty lines dropped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise BundleError(f"{Path(path).name} is not UTF-8 text: {e}") from None
    while lines and lines[-1] == "":
        lines.pop()
    return lines


def preview(text: str, n: int = PREVIEW_CHARS) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= n else one_line[: n - 1] + "\u2026"


def short_value(value: Any, max_items: int = 8, max_chars: int = 40) -> str:
    """A compact rendering of a result value: floats to 4 significant digits, lists cut after
    max_items (with the total count), strings after max_chars."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return value if len(value) <= max_chars else value[: max_chars - 1] + "\u2026"
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
        shown = ", ".join(short_value(v, max_items, max_chars) for v in items[:max_items])
        more = f", \u2026 {len(items)} values" if len(items) > max_items else ""
        return f"[{shown}{more}]"
    if isinstance(value, np.generic):
        return short_value(value.item(), max_items, max_chars)
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, bool)) \
        or value is None else str(value)


# --------------------------------------------------------------------------- latency


def latency_stats(latencies_ms: Sequence[float]) -> dict[str, float]:
    if not latencies_ms:
        return {"count": 0}
    a = np.asarray(latencies_ms, dtype=np.float64)
    return {
        "count": int(a.size),
        "mean": float(a.mean()),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
    }


def format_stats(stats: dict[str, float]) -> str:
    if not stats.get("count"):
        return "latency_ms: count=0"
    return ("latency_ms: count={count} mean={mean:.3f} p50={p50:.3f} p90={p90:.3f} "
            "p99={p99:.3f}").format(**stats)


# --------------------------------------------------------------------------- runner


class Runner:
    """A task's runner: what the edge app does with one text, for bundles of one `task`.

    Interface (the app and library users call only these):

    - ``Runner(bundle_dir, manifest, num_threads=None, options=None)``: build from a bundle
      whose files were verified (sha256) and whose manifest.json was read (`Manifest`).
      `options` maps the app's command-line option names (dest, e.g. ``top_k``) to values;
      a runner reads the ones it declared in `add_arguments` and ignores the rest. Raise
      BundleError for a bundle the task cannot run (a missing or bad task key, a model that
      does not have the expected signatures/tensors).
    - ``run(text) -> dict``: the result for one input (batch 1), JSON-serialisable, always
      with ``"text"`` (the input as run, invalid Unicode replaced by U+FFFD) first and
      ``"latency_ms"`` (tokenization or decoding + inference + post-processing) last. The
      input is a text, or what the task's `check_input` accepts instead (an image path).
      Raises TypeError for an input of the wrong type and InputError for one that cannot
      be run.
    - ``format(result) -> str``: one or more plain-text lines for a `run` result (the app's
      output without --json; with --json or --jsonl it prints the dict itself).
    - ``stats() -> dict``: latency statistics of the `run` calls so far (count, mean, p50,
      p90, p99 in ms).
    - class attribute ``task`` (set by `register_runner`) and classmethod
      ``add_arguments(parser)``: the task's own command-line options (an argument group;
      option names must differ from the app's and from other tasks', except that tasks whose
      runners inherit one `add_arguments` share its options, e.g. the classifiers' --top-k).

    A subclass usually implements only ``__init__`` (call ``super().__init__`` first: it loads
    the interpreter) and ``infer(text, **kw) -> dict`` (the task's outputs without text and
    latency; `run` checks the input with ``check_input``, times `infer` and records the
    latency), plus ``format``. A task whose inputs are not texts overrides
    ``check_input(value)``. Shared helpers: ``self.signature(name)`` (the interpreter's
    signature runner of that name, cached; call it with input tensors by name, it returns a
    dict of outputs), ``self.signature_names``, ``self.file(key, default)`` (verified path
    of a bundle file named by a manifest key), ``self.timed(fn, *args)`` (fn's outputs with
    its latency, recorded), `SentencePieceTokenizer.from_manifest`, `read_lines`,
    `short_value`, `preview`.
    """

    task: str = ""

    @classmethod
    def add_arguments(cls, parser: argparse._ActionsContainer) -> None:
        """Add this task's command-line options (none by default)."""

    def __init__(self, bundle_dir: str | os.PathLike, manifest: Manifest,
                 num_threads: int | None = None, options: Mapping[str, Any] | None = None):
        self.path = Path(bundle_dir)
        self.manifest = manifest
        self.options = dict(options or {})
        self.latencies_ms: list[float] = []
        self._signature_runners: dict[str, Any] = {}
        Interpreter, self.runtime = _import_interpreter(manifest.variant)
        kwargs: dict[str, Any] = {"model_path": str(self.path / manifest.model)}
        if num_threads:
            kwargs["num_threads"] = int(num_threads)
        try:
            self.interpreter = Interpreter(**kwargs)
        except (ValueError, RuntimeError) as e:
            raise BundleError(f"{manifest.model} cannot be loaded by {self.runtime}: {e}") \
                from None
        if manifest.signatures is not None:
            self._check_signatures(manifest.signatures)

    # -- shared helpers
    def file(self, key: str, default: str | None = None) -> Path:
        """The verified path of the bundle file named by manifest key `key`."""
        return self.path / self.manifest.member(key, default)

    @property
    def signature_names(self) -> list[str]:
        """The model's signature names ([] for a model without signatures)."""
        try:
            return list(self.interpreter.get_signature_list())
        except (AttributeError, ValueError, RuntimeError):  # very old runtimes
            return []

    def signature(self, name: str):
        """The interpreter's signature runner `name` (cached): runner(**inputs) -> outputs,
        runner.get_input_details() / get_output_details() -> {tensor name: detail}."""
        if name not in self._signature_runners:
            names = self.signature_names
            _require(name in names, f"{self.manifest.model} has no signature {name!r} "
                     f"(it has {names})")
            self._signature_runners[name] = self.interpreter.get_signature_runner(name)
        return self._signature_runners[name]

    def _check_signatures(self, signatures: dict) -> None:
        """The manifest's signatures must be the model's: names, tensor names, dtypes."""
        model = self.manifest.model
        for sig, spec in signatures.items():
            runner = self.signature(sig)
            for kind, details in (("inputs", runner.get_input_details()),
                                  ("outputs", runner.get_output_details())):
                _require(set(spec[kind]) == set(details),
                         f"manifest.json: signature {sig!r} {kind} {sorted(spec[kind])} are not "
                         f"{model}'s {sorted(details)}")
                for name, tensor in spec[kind].items():
                    actual = np.dtype(details[name]["dtype"]).name
                    _require(tensor["dtype"] == actual,
                             f"manifest.json: signature {sig!r} {kind[:-1]} {name!r} is "
                             f"{tensor['dtype']} but {model}'s is {actual}")

    # -- the interface
    def infer(self, text: str, **kw) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} implements neither infer nor run")

    def check_input(self, value: Any) -> str:
        """One input as `infer` takes it, checked before the clock starts. Text tasks (this
        default): a str, invalid Unicode replaced by U+FFFD (`valid_text`); TypeError for
        anything else. A task with other inputs overrides it and raises TypeError for a
        wrong type, InputError for a value it cannot run."""
        if not isinstance(value, str):
            raise TypeError(f"text must be a string, got {type(value).__name__}")
        return valid_text(value)

    def run(self, text: str, **kw) -> dict[str, Any]:
        value = self.check_input(text)
        return {"text": valid_text(value), **self.timed(self.infer, value, **kw)}

    def timed(self, fn: Callable[..., dict[str, Any]], *args: Any, **kw: Any
              ) -> dict[str, Any]:
        """fn(*args, **kw)'s outputs with "latency_ms" (its wall time) last; the latency
        counts in `stats`."""
        t0 = time.perf_counter()
        outputs = fn(*args, **kw)
        latency_ms = (time.perf_counter() - t0) * 1000.0
        self.latencies_ms.append(latency_ms)
        return {**outputs, "latency_ms": round(latency_ms, 3)}

    def format(self, result: dict[str, Any]) -> str:
        """Default: name=value of each output, then latency_ms and a preview of the text,
        tab-separated."""
        fields = [f"{k}={short_value(v)}" for k, v in result.items()
                  if k not in ("text", "latency_ms")]
        return "\t".join([*fields, f"{result['latency_ms']:.2f}", preview(result["text"])])

    def stats(self) -> dict[str, float]:
        return latency_stats(self.latencies_ms)


# --------------------------------------------------------------------------- registry

_RUNNERS: dict[str, type[Runner]] = {}


def register_runner(task: str, runner_class: type[Runner]) -> type[Runner]:
    """Make bundles whose manifest says `"task": task` run with `runner_class`. Registering
    another class for a task that has one is an error; the same class again is a no-op.
    Returns the class (usable as a decorator helper)."""
    if not isinstance(task, str) or not task:
        raise ValueError(f"task must be a non-empty string, got {task!r}")
    if not (isinstance(runner_class, type) and issubclass(runner_class, Runner)):
        raise TypeError(f"runner_class must be a Runner subclass, got {runner_class!r}")
    current = _RUNNERS.get(task)
    if current is not None and current is not runner_class:
        raise ValueError(f"task {task!r} already runs with {current.__name__}")
    if runner_class.task != task:
        runner_class.task = task
    _RUNNERS[task] = runner_class
    return runner_class


def supported_tasks() -> list[str]:
    return sorted(_RUNNERS)


def registered_runners() -> dict[str, type[Runner]]:
    """task -> runner class, for every registered task."""
    return dict(_RUNNERS)


def runner_class(task: str) -> type[Runner]:
    """The runner of `task`; BundleError naming the task and the supported ones if none."""
    cls = _RUNNERS.get(task)
    _require(cls is not None, f"manifest.json: unsupported task {task!r} (this app runs: "
             f"{', '.join(supported_tasks()) or 'none'})")
    return cls


def load_runner(path: str | os.PathLike, num_threads: int | None = None,
                options: Mapping[str, Any] | None = None) -> Runner:
    """Read manifest.json, pick the runner of its task, verify every file's sha256 against
    the manifest, then build the runner (which loads model, tokenizer, ...).
    Raises BundleError (bad bundle, unknown task) or RuntimeMissingError (runtime not
    installed)."""
    path = Path(path)
    manifest = read_manifest(path)
    cls = runner_class(manifest.task)
    verify_files(path, manifest)
    try:
        return cls(path, manifest, num_threads=num_threads, options=options)
    except (ValueError, RuntimeError) as e:
        raise BundleError(f"{manifest.model} cannot be run by the {manifest.task} runner: "
                          f"{e}") from None
