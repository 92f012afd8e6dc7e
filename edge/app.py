#!/usr/bin/env python3
"""On-device demo app: runs an edge bundle with ai-edge-litert, whatever its task.

Dependencies: ai_edge_litert, sentencepiece and numpy, plus Pillow for image
bundles. This module never imports tensorflow (nor anything from pipeline/, models/
or export/): it reads the bundle that export.bundle writes and nothing else.

The bundle's manifest.json names its `task`; the runner registered for that task
(edge/runners/, see runners.base.Runner) turns each input into a result. Tasks this
app runs: text_classification, translation, language_modeling (inputs are texts) and
image_classification (inputs are paths of PNG or JPEG files: the arguments, the stdin
lines, the JSONL "text" fields).

Usage:
    python edge/app.py --bundle DIR "some text" "another text"
    printf 'a\\nb\\n' | python edge/app.py --bundle DIR
    python edge/app.py --bundle DIR                      # interactive prompt
    python edge/app.py --bundle DIR --jsonl in.jsonl [--output out.jsonl]
    python edge/app.py --bundle DIR --json "some text"   # one JSON object per text
    python edge/app.py --bundle DIR --sampling top_k --temperature 0.8 --seed 7 "Never"
                                       # language_modeling: the text streams as it comes
    python edge/app.py --bundle DIR --top-k 3 shoe.png shirt.jpg
                                       # image_classification: image file paths
    ls images/*.png | python edge/app.py --bundle DIR

Library use:
    from app import load_bundle            # with edge/ on sys.path
    runner = load_bundle("artifacts/<exp>/edge/bundle")
    runner.run("text")                     # -> {"text", ...task outputs..., "latency_ms"}
    runner.classify(["text"], top_k=3)     # text_classification: [{"text", "label",
                                           #   "probability", "top_k", "latency_ms"}]
    runner.translate(["Text"])             # translation: [{"text", "translation",
                                           #   "token_ids", "latency_ms"}]
    runner.run("A computer", seed=7)       # language_modeling: {"text", "generated_text",
                                           #   "completion", "token_ids",
                                           #   "time_to_first_token_ms", "tokens_per_second",
                                           #   "latency_ms"}
    runner.run("shoe.png")                 # image_classification: {"text": "shoe.png",
                                           #   "label", "probability", "top_k", "latency_ms"}
    runner.classify_pixels(uint8_array)    # image_classification, pixels in memory

Exit codes: 0 ok; 1 some inputs were bad: malformed JSONL lines, or inputs the
task cannot run (image_classification: a path that is missing, a directory or not
a readable PNG/JPEG image); each is reported on stderr (JSONL: with its line
number) and skipped, the rest is still run; 2 invalid bundle (manifest
missing/invalid, unknown task, a file missing or its sha256 differs) or bad
command line; 3 no usable runtime installed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

# The runners package sits beside this file; make it importable however this file was
# loaded (as a script, `from app import ...`, or by file path).
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from runners import (  # noqa: E402
    FLOAT_VARIANTS,
    INSTALL_HINT,
    PREVIEW_CHARS,
    SUPPORTED_FORMAT_VERSIONS,
    BundleError,
    ClassificationRunner,
    ImageClassificationRunner,
    InputError,
    LanguageModelRunner,
    Manifest,
    Runner,
    RuntimeMissingError,
    SentencePieceTokenizer,
    TranslationRunner,
    _import_interpreter,
    _import_sentencepiece,
    format_classification,
    format_stats,
    latency_stats,
    load_runner,
    preview,
    read_lines,
    read_manifest,
    register_runner,
    registered_runners,
    runner_class,
    sha256_file,
    short_value,
    stream_to,
    supported_tasks,
    tokenize,
    valid_text,
    verify_files,
)

__all__ = [
    "FLOAT_VARIANTS", "INSTALL_HINT", "PREVIEW_CHARS", "SUPPORTED_FORMAT_VERSIONS", "Bundle",
    "BundleError", "ClassificationRunner", "ImageClassificationRunner", "InputError",
    "LanguageModelRunner", "Manifest", "Runner",
    "RuntimeMissingError", "SentencePieceTokenizer", "TranslationRunner", "_import_interpreter",
    "_import_sentencepiece",
    "format_classification", "format_plain", "format_stats", "iter_jsonl", "latency_stats",
    "load_bundle", "main", "preview",
    "read_lines", "read_manifest", "register_runner", "registered_runners", "runner_class",
    "sha256_file", "short_value", "supported_tasks", "tokenize", "valid_text", "verify_files",
]

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_BAD_BUNDLE = 2
EXIT_NO_RUNTIME = 3

# The text_classification runner under its former name (same attributes and methods).
Bundle = ClassificationRunner


def load_bundle(path: str | os.PathLike, num_threads: int | None = None,
                **options: Any) -> Runner:
    """Verify every file's sha256 against manifest.json, then build the runner of the
    manifest's task (for text_classification: a `Bundle` with classify/classify_one).
    `options` are the task's options by name, e.g. top_k=3.
    Raises BundleError (bad bundle, unknown task) or RuntimeMissingError (runtime missing)."""
    return load_runner(path, num_threads=num_threads, options=options)


# The plain line of a text_classification result (the former API's name).
format_plain = format_classification


# --------------------------------------------------------------------------- CLI


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
            on_error(lineno, 'expected a JSON object with a "text" field or a JSON string, '
                             f"got {type(obj).__name__}")
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
        description="Run an edge bundle on device (ai-edge-litert + sentencepiece + numpy, "
                    "Pillow for images); "
                    "the bundle's manifest names its task "
                    f"({', '.join(supported_tasks())}).",
        epilog="Inputs (texts; image file paths for image_classification) come from the "
               "arguments; else one per stdin line when stdin is not a terminal; else from "
               "an interactive prompt (empty line or EOF quits). Exit codes: 0 ok, 1 bad "
               "inputs (malformed JSONL lines, unreadable images) were reported and skipped, "
               "2 invalid bundle or usage, 3 runtime missing.",
    )
    p.add_argument("--bundle", required=True,
                   help="bundle directory (manifest.json, model.tflite and the task's files)")
    p.add_argument("texts", nargs="*",
                   help="input texts (image_classification: image file paths)")
    p.add_argument("--jsonl", metavar="IN",
                   help="batch mode: JSON lines with a \"text\" field (or bare JSON strings; "
                        "image_classification: the image path); '-' = stdin; results are "
                        "JSON lines")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per input instead of plain lines")
    p.add_argument("--output", "-o", metavar="FILE", help="write results here instead of stdout")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="interpreter threads (default: runtime's choice)")
    # Tasks whose runners inherit one add_arguments (the classifiers' --top-k) share its
    # options: one group for them, each option declared once.
    shared: dict[Any, list[tuple[str, type[Runner]]]] = {}
    for task, cls in sorted(registered_runners().items()):
        shared.setdefault(cls.add_arguments.__func__, []).append((task, cls))
    for runners in shared.values():
        title = ", ".join(task for task, _ in runners)
        runners[0][1].add_arguments(p.add_argument_group(f"{title} options"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdin, sys.stdout, sys.stderr):  # odd bytes or a C locale must not crash
        try:
            stream.reconfigure(errors="replace" if stream is sys.stdin else "backslashreplace")
        except (AttributeError, ValueError):
            pass
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.jsonl and args.texts:
        parser.error("give texts either as arguments or with --jsonl, not both")

    try:
        runner = load_runner(args.bundle, num_threads=args.threads, options=vars(args))
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

    n_malformed = n_failed = 0

    def report_bad_line(lineno: int, reason: str) -> None:
        nonlocal n_malformed
        n_malformed += 1
        print(f"error: {args.jsonl}: line {lineno}: {reason} (skipped)", file=sys.stderr)

    def emit(text: str, as_json: bool, where: str = "") -> None:
        """Run one input and write its result; an input the runner cannot run (InputError)
        is reported on stderr, prefixed with `where`, and skipped."""
        nonlocal n_failed
        try:
            if not as_json and isinstance(runner, LanguageModelRunner):
                stream_to(out, runner, text)   # the text as it is generated
                return
            result = runner.run(text)
        except InputError as e:
            n_failed += 1
            print(f"error: {where}{e} (skipped)", file=sys.stderr)
            return
        out.write((json.dumps(result, ensure_ascii=False) if as_json
                   else runner.format(result)) + "\n")
        out.flush()

    status = EXIT_OK
    try:
        if args.jsonl:
            try:
                stream = sys.stdin if args.jsonl == "-" \
                    else open(args.jsonl, encoding="utf-8", errors="replace")
            except OSError as e:
                print(f"error: cannot read {args.jsonl}: {e}", file=sys.stderr)
                return EXIT_BAD_INPUT
            with contextlib.nullcontext(stream) if stream is sys.stdin else stream:
                for lineno, text in iter_jsonl(stream, report_bad_line):
                    emit(text, True, f"{args.jsonl}: line {lineno}: ")
            if n_malformed or n_failed:
                counts = [f"{n} {what}" for n, what in (
                    (n_malformed, "malformed line(s)"),
                    (n_failed, "line(s) whose input could not be run")) if n]
                print(f"error: {' and '.join(counts)} in {args.jsonl} were skipped",
                      file=sys.stderr)
        else:
            if args.texts:
                texts: Iterable[str] = args.texts
            elif not sys.stdin.isatty():
                texts = _stdin_lines(sys.stdin)
            else:
                texts = _prompt_lines()
            for text in texts:
                emit(text, args.json)
        if n_malformed or n_failed:
            status = EXIT_BAD_INPUT
    except BrokenPipeError:  # e.g. piped into `head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
    finally:
        if close_out:
            out.close()
        print(format_stats(runner.stats()), file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
