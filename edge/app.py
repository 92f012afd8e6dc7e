#!/usr/bin/env python3
"""On-device text classification demo: runs an edge bundle with ai-edge-litert.

Dependencies: ai_edge_litert, sentencepiece and numpy only. This module never
imports tensorflow (nor anything from pipeline/, models/ or export/): it reads
the bundle that export.bundle writes and nothing else.

Usage:
    python edge/app.py --bundle DIR "some text" "another text"
    printf 'a\\nb\\n' | python edge/app.py --bundle DIR
    python edge/app.py --bundle DIR                      # interactive prompt
    python edge/app.py --bundle DIR --jsonl in.jsonl [--output out.jsonl]

Library use:
    from app import load_bundle            # with edge/ on sys.path
    bundle = load_bundle("artifacts/<exp>/edge/bundle")
    bundle.classify(["text"], top_k=3)     # -> [{"text", "label", "probability", "top_k", "latency_ms"}]

Exit codes: 0 ok; 1 some JSONL lines were malformed (they are reported on
stderr with their line number and skipped, the rest is still classified);
2 invalid bundle (manifest missing/invalid, a file missing or its sha256
differs) or bad command line; 3 no usable runtime installed.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TextIO

import numpy as np

SUPPORTED_FORMAT_VERSIONS = (1,)
SIGNATURE_KEY = "serving_default"
FLOAT_VARIANTS = ("float32", "float16")
INSTALL_HINT = "pip install -r edge/requirements.txt"
PREVIEW_CHARS = 60

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_BAD_BUNDLE = 2
EXIT_NO_RUNTIME = 3


class BundleError(Exception):
    """The bundle is unusable (manifest missing/invalid, file missing, hash mismatch...)."""


class RuntimeMissingError(Exception):
    """No TFLite runtime that can run this bundle is installed."""


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Manifest:
    model: str
    tokenizer: str
    labels: str
    max_sequence_length: int
    pad_id: int
    max_text_bytes: int | None   # only this many leading bytes are tokenized (None: all)
    input_name: str | None
    output_name: str | None
    variant: str
    files: dict[str, str]
    raw: dict[str, Any] = field(repr=False, compare=False)


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise BundleError(msg)


def _safe_member(bundle_dir: Path, name: Any, what: str) -> Path:
    _require(isinstance(name, str) and name != "", f"manifest.json: {what} must be a non-empty file name")
    p = Path(name)
    _require(not p.is_absolute() and ".." not in p.parts,
             f"manifest.json: {what} {name!r} must be a path inside the bundle")
    return bundle_dir / p


def read_manifest(bundle_dir: str | os.PathLike) -> Manifest:
    """Parse and validate <bundle_dir>/manifest.json (no file hashing here)."""
    bundle_dir = Path(bundle_dir)
    _require(bundle_dir.is_dir(), f"bundle directory not found: {bundle_dir}")
    path = bundle_dir / "manifest.json"
    _require(path.is_file(), f"manifest.json missing in bundle {bundle_dir}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"manifest.json is not valid JSON ({path}): {e}") from None
    _require(isinstance(raw, dict), f"manifest.json must hold a JSON object ({path})")

    version = raw.get("format_version")
    _require(version in SUPPORTED_FORMAT_VERSIONS,
             f"manifest.json: unsupported format_version {version!r} (this app reads {list(SUPPORTED_FORMAT_VERSIONS)})")
    task = raw.get("task", "text_classification")
    _require(task == "text_classification", f"manifest.json: unsupported task {task!r} (this app runs text_classification)")

    def get_int(key: str, default: int | None = None, minimum: int = 0) -> int:
        v = raw.get(key, default)
        _require(isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
                 f"manifest.json: {key} must be an integer >= {minimum}, got {v!r}")
        return v

    files = raw.get("files")
    _require(isinstance(files, dict) and files, "manifest.json: 'files' must map file names to sha256 hex digests")
    for name, digest in files.items():
        _safe_member(bundle_dir, name, "file")
        _require(isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdefABCDEF" for c in digest),
                 f"manifest.json: files[{name!r}] is not a sha256 hex digest")

    names = {}
    for key, default in (("model", "model.tflite"), ("tokenizer", "spm.model"), ("labels", "labels.txt")):
        name = raw.get(key, default)
        _safe_member(bundle_dir, name, key)
        _require(name in files, f"manifest.json: {key} file {name!r} has no sha256 in 'files'; refusing to load an unverified file")
        names[key] = name

    def opt_str(key: str) -> str | None:
        v = raw.get(key)
        _require(v is None or isinstance(v, str), f"manifest.json: {key} must be a string")
        return v

    return Manifest(
        model=names["model"],
        tokenizer=names["tokenizer"],
        labels=names["labels"],
        max_sequence_length=get_int("max_sequence_length", minimum=1),
        pad_id=get_int("pad_id", 0),
        max_text_bytes=None if raw.get("max_text_bytes") is None
        else get_int("max_text_bytes", minimum=1),
        input_name=opt_str("input_name"),
        output_name=opt_str("output_name"),
        variant=str(raw.get("variant", "unknown")),
        files={str(k): str(v).lower() for k, v in files.items()},
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
                 f"bundle file {name} failed its sha256 check (manifest {expected[:12]}..., file {actual[:12]}...); "
                 "the bundle is corrupt or was modified")


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
        + (f"the {variant!r} model needs it (tflite-runtime only runs float32/float16 bundles). "
           if variant not in FLOAT_VARIANTS else "tflite_runtime is not installed either. ")
        + f"Install the runtime with: {INSTALL_HINT}"
    )


def _import_sentencepiece():
    try:
        import sentencepiece  # type: ignore
    except ImportError as e:
        raise RuntimeMissingError(f"sentencepiece is not importable ({e}); install with: {INSTALL_HINT}") from None
    return sentencepiece


# --------------------------------------------------------------------------- tokenizer


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
    return "latency_ms: count={count} mean={mean:.3f} p50={p50:.3f} p90={p90:.3f} p99={p99:.3f}".format(**stats)


# --------------------------------------------------------------------------- bundle


def _signature_key(details: dict, name: str, kind: str) -> str:
    """The manifest's tensor name, or the signature's only tensor of that kind."""
    if name in details:
        return name
    if len(details) == 1:
        return next(iter(details))
    raise BundleError(f"model.tflite: signature {SIGNATURE_KEY!r} has {kind} {sorted(details)}, "
                      f"none named {name!r} as the manifest says")


class Bundle:
    """A verified edge bundle with a loaded interpreter and tokenizer."""

    def __init__(self, path: str | os.PathLike, manifest: Manifest, labels: list[str], processor,
                 interpreter, runtime: str):
        self.path = Path(path)
        self.manifest = manifest
        self.labels = labels
        self.processor = processor
        self.interpreter = interpreter
        self.runtime = runtime
        self.max_sequence_length = manifest.max_sequence_length
        self.pad_id = manifest.pad_id
        self.latencies_ms: list[float] = []
        self._runner = None
        self._input_index = self._output_index = None
        self._bind_tensors()

    # -- tensor lookup: the signature runner if there is one, else details index 0
    def _bind_tensors(self) -> None:
        m = self.manifest
        interp = self.interpreter
        try:
            signatures = interp.get_signature_list()
        except Exception:  # very old runtimes
            signatures = {}
        if SIGNATURE_KEY in signatures:
            runner = interp.get_signature_runner(SIGNATURE_KEY)
            inputs = runner.get_input_details()
            outputs = runner.get_output_details()
            self._input_key = _signature_key(inputs, m.input_name, "inputs")
            self._output_key = _signature_key(outputs, m.output_name, "outputs")
            in_detail, out_detail = inputs[self._input_key], outputs[self._output_key]
            self._runner = runner
        else:
            interp.allocate_tensors()
            in_detail = interp.get_input_details()[0]
            out_detail = interp.get_output_details()[0]
            self._input_index, self._output_index = in_detail["index"], out_detail["index"]

        self._input_dtype = in_detail["dtype"]
        # A full-integer (int8) model may return quantized probabilities:
        # real = scale * (q - zero_point), with the output's own parameters.
        self._output_dtype = np.dtype(out_detail["dtype"])
        scale, zero_point = (out_detail.get("quantization") or (0.0, 0))[:2]
        self._output_scale, self._output_zero_point = float(scale), int(zero_point)
        if np.issubdtype(self._output_dtype, np.integer) and self._output_scale <= 0:
            raise BundleError(f"model.tflite: output is {self._output_dtype.name} without a "
                              "quantization scale; cannot read probabilities from it")
        _require(np.issubdtype(self._input_dtype, np.integer),
                 f"model.tflite: input must take integer token ids, it takes {np.dtype(self._input_dtype).name}")
        shape = list(in_detail.get("shape_signature", in_detail["shape"]))
        _require(len(shape) == 2, f"model.tflite: input must be (batch, sequence), it is {shape}")
        if shape[1] > 0 and shape[1] != self.max_sequence_length:
            raise BundleError(f"model.tflite takes sequences of {shape[1]} tokens but manifest.json says "
                              f"max_sequence_length={self.max_sequence_length}")
        if self._runner is None and list(in_detail["shape"]) != [1, self.max_sequence_length]:
            interp.resize_tensor_input(self._input_index, [1, self.max_sequence_length])
            interp.allocate_tensors()

        # One warm-up run also tells the number of classes.
        probs = self.predict_ids(np.full((1, self.max_sequence_length), self.pad_id, dtype=np.int32))
        _require(probs.ndim == 2 and probs.shape[1] == len(self.labels),
                 f"model.tflite outputs {probs.shape[-1]} classes but labels.txt has {len(self.labels)} lines")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def tokenize(self, text: str) -> np.ndarray:
        return tokenize(self.processor, text, self.max_sequence_length, self.pad_id,
                        self.manifest.max_text_bytes)

    def predict_ids(self, ids: np.ndarray) -> np.ndarray:
        """Probabilities float32 (1, num_classes) for int token ids of shape (1, max_sequence_length)."""
        ids = np.asarray(ids).astype(self._input_dtype, copy=False)
        if ids.ndim == 1:
            ids = ids[None, :]
        if self._runner is not None:
            out = self._runner(**{self._input_key: ids})[self._output_key]
        else:
            self.interpreter.set_tensor(self._input_index, ids)
            self.interpreter.invoke()
            out = self.interpreter.get_tensor(self._output_index)
        if np.issubdtype(self._output_dtype, np.integer):
            return (np.asarray(out, dtype=np.float32) - self._output_zero_point) * self._output_scale
        return np.array(out, dtype=np.float32, copy=True)

    def classify_one(self, text: str, top_k: int = 1) -> dict[str, Any]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        text = valid_text(text)
        k = max(1, min(int(top_k), self.num_classes))
        t0 = time.perf_counter()
        probs = self.predict_ids(self.tokenize(text)[None, :])[0]
        latency_ms = (time.perf_counter() - t0) * 1000.0
        self.latencies_ms.append(latency_ms)
        # Rank by probability; non-finite values (a broken model) rank last and are reported as null.
        finite = np.isfinite(probs)
        order = np.argsort(-np.where(finite, probs, -np.inf), kind="stable")[:k]
        top = [[self.labels[i], float(probs[i]) if finite[i] else None] for i in order]
        return {
            "text": text,
            "label": top[0][0],
            "probability": top[0][1],
            "top_k": top,
            "latency_ms": round(latency_ms, 3),
        }

    def classify(self, texts: Iterable[str], top_k: int = 1) -> list[dict[str, Any]]:
        """One dict per text: {"text", "label", "probability", "top_k": [[label, p], ...], "latency_ms"}.
        latency_ms covers tokenization + inference of that text (batch 1)."""
        return [self.classify_one(t, top_k) for t in texts]

    def stats(self) -> dict[str, float]:
        return latency_stats(self.latencies_ms)


def load_bundle(path: str | os.PathLike, num_threads: int | None = None) -> Bundle:
    """Verify every file's sha256 against manifest.json, then load labels, tokenizer and model.
    Raises BundleError (bad bundle) or RuntimeMissingError (runtime not installed)."""
    path = Path(path)
    manifest = read_manifest(path)
    verify_files(path, manifest)

    try:
        labels = (path / manifest.labels).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise BundleError(f"{manifest.labels} is not UTF-8 text: {e}") from None
    while labels and labels[-1] == "":
        labels.pop()
    _require(len(labels) >= 1, f"{manifest.labels} holds no labels")

    spm = _import_sentencepiece()
    processor = spm.SentencePieceProcessor()
    try:
        processor.Load(str(path / manifest.tokenizer))
    except (OSError, RuntimeError) as e:
        raise BundleError(f"{manifest.tokenizer} is not a SentencePiece model: {e}") from None

    Interpreter, runtime = _import_interpreter(manifest.variant)
    kwargs = {"model_path": str(path / manifest.model)}
    if num_threads:
        kwargs["num_threads"] = int(num_threads)
    try:
        interpreter = Interpreter(**kwargs)
    except (ValueError, RuntimeError) as e:
        raise BundleError(f"{manifest.model} cannot be loaded by {runtime}: {e}") from None
    try:
        return Bundle(path, manifest, labels, processor, interpreter, runtime)
    except (ValueError, RuntimeError) as e:
        raise BundleError(f"{manifest.model} cannot be run by {runtime}: {e}") from None


# --------------------------------------------------------------------------- CLI


def preview(text: str, n: int = PREVIEW_CHARS) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= n else one_line[: n - 1] + "\u2026"


def format_plain(result: dict[str, Any]) -> str:
    p = result["probability"]
    line = "{}\t{}\t{:.2f}\t{}".format(result["label"], "nan" if p is None else f"{p:.4f}",
                                      result["latency_ms"], preview(result["text"]))
    for rank, (label, prob) in enumerate(result["top_k"][1:], start=2):
        line += "\n  #{} {}\t{}".format(rank, label, "nan" if prob is None else f"{prob:.4f}")
    return line


def iter_jsonl(stream: TextIO, on_error: Callable[[int, str], None]) -> Iterator[tuple[int, str]]:
    """Yield (line_number, text) for each JSONL line: a JSON object with a string "text" field, or
    a bare JSON string. A malformed line is passed to on_error(line_number, reason) and skipped;
    blank lines are ignored."""
    for lineno, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            on_error(lineno, f"not valid JSON ({e.msg} at column {e.colno})")
            continue
        except RecursionError:
            on_error(lineno, "not valid JSON here (nested too deeply)")
            continue
        except ValueError as e:  # e.g. an integer of more than 4,300 digits
            on_error(lineno, f"not valid JSON here ({str(e).split(';')[0]})")
            continue
        if isinstance(obj, dict):
            text = obj.get("text")
            if not isinstance(text, str):
                on_error(lineno, 'JSON object has no string "text" field')
                continue
        elif isinstance(obj, str):
            text = obj
        else:
            on_error(lineno, f'expected a JSON object with a "text" field or a JSON string, got {type(obj).__name__}')
            continue
        yield lineno, text


def _stdin_lines(stream: TextIO) -> Iterator[str]:
    for line in stream:
        yield line.rstrip("\r\n")


def _prompt_lines() -> Iterator[str]:
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return
        if not line.strip():
            return
        yield line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge/app.py",
        description="Classify text on device with an edge bundle (ai-edge-litert + sentencepiece + numpy).",
        epilog="Texts come from the arguments; else one per stdin line when stdin is not a terminal; "
               "else from an interactive prompt (empty line or EOF quits). "
               "Exit codes: 0 ok, 1 malformed JSONL lines were skipped, 2 invalid bundle or usage, 3 runtime missing.",
    )
    p.add_argument("--bundle", required=True, help="bundle directory (model.tflite, spm.model, labels.txt, manifest.json)")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--jsonl", metavar="IN", help="batch mode: JSON lines with a \"text\" field (or bare JSON strings); '-' = stdin")
    p.add_argument("--output", "-o", metavar="FILE", help="write results here instead of stdout")
    p.add_argument("--top-k", type=int, default=1, metavar="K", help="number of ranked labels to report (default 1)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="interpreter threads (default: runtime's choice)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdin, sys.stdout, sys.stderr):  # odd bytes or a C locale must not crash the app
        try:
            stream.reconfigure(errors="replace" if stream is sys.stdin else "backslashreplace")
        except (AttributeError, ValueError):
            pass
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.jsonl and args.texts:
        parser.error("give texts either as arguments or with --jsonl, not both")

    try:
        bundle = load_bundle(args.bundle, num_threads=args.threads)
    except BundleError as e:
        print(f"error: invalid bundle: {e}", file=sys.stderr)
        return EXIT_BAD_BUNDLE
    except RuntimeMissingError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NO_RUNTIME

    out: TextIO = sys.stdout
    close_out = False
    if args.output:
        try:
            out = open(args.output, "w", encoding="utf-8")
        except OSError as e:
            print(f"error: cannot write {args.output}: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        close_out = True

    n_errors = 0

    def report_bad_line(lineno: int, reason: str) -> None:
        nonlocal n_errors
        n_errors += 1
        print(f"error: {args.jsonl}: line {lineno}: {reason} (skipped)", file=sys.stderr)

    status = EXIT_OK
    try:
        if args.jsonl:
            try:
                stream = sys.stdin if args.jsonl == "-" else open(args.jsonl, encoding="utf-8", errors="replace")
            except OSError as e:
                print(f"error: cannot read {args.jsonl}: {e}", file=sys.stderr)
                return EXIT_BAD_INPUT
            with contextlib.nullcontext(stream) if stream is sys.stdin else stream:
                for _, text in iter_jsonl(stream, report_bad_line):
                    out.write(json.dumps(bundle.classify_one(text, args.top_k), ensure_ascii=False) + "\n")
                    out.flush()
            if n_errors:
                print(f"error: {n_errors} malformed line(s) in {args.jsonl} were skipped", file=sys.stderr)
                status = EXIT_BAD_INPUT
        else:
            if args.texts:
                texts: Iterable[str] = args.texts
            elif not sys.stdin.isatty():
                texts = _stdin_lines(sys.stdin)
            else:
                texts = _prompt_lines()
            for text in texts:
                out.write(format_plain(bundle.classify_one(text, args.top_k)) + "\n")
                out.flush()
    except BrokenPipeError:  # e.g. piped into `head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
    finally:
        if close_out:
            out.close()
        print(format_stats(bundle.stats()), file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
