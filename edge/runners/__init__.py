"""Task runners of the edge app, chosen by the bundle manifest's `task` key.

`base` holds what every task shares (manifest, sha256 verification, runtime import, text
validation, SentencePiece tokenization, latency statistics, the `Runner` interface and the
registry); `classification` what the classifiers share (labels, quantized input and
output, ranking, the plain format, --top-k); each other module is one task's runner and
registers itself on import.

Adding a task: write `runners/<task>.py` with a `Runner` subclass (see `base.Runner`), end
it with `register_runner("<task>", TheRunner)`, and import it below.
"""
from . import (
    image_classification,  # noqa: F401  (registers "image_classification")
    language_modeling,  # noqa: F401  (registers "language_modeling")
    text_classification,  # noqa: F401  (registers "text_classification")
    translation,  # noqa: F401  (registers "translation")
)
from .base import (
    DEFAULT_TASK,
    FLOAT_VARIANTS,
    INSTALL_HINT,
    PREVIEW_CHARS,
    SUPPORTED_FORMAT_VERSIONS,
    BundleError,
    InputError,
    Manifest,
    Runner,
    RuntimeMissingError,
    SentencePieceTokenizer,
    _import_interpreter,
    _import_sentencepiece,
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
    supported_tasks,
    tokenize,
    valid_text,
    verify_files,
)
from .classification import ClassifierRunner
from .image_classification import ImageClassificationRunner
from .language_modeling import LanguageModelRunner, format_generation, stream_to
from .text_classification import ClassificationRunner, format_classification
from .translation import TranslationRunner, format_translation, greedy_decode

__all__ = [
    "DEFAULT_TASK", "FLOAT_VARIANTS", "INSTALL_HINT", "LanguageModelRunner", "PREVIEW_CHARS",
    "SUPPORTED_FORMAT_VERSIONS", "BundleError", "ClassificationRunner", "ClassifierRunner",
    "ImageClassificationRunner", "InputError", "Manifest", "Runner",
    "RuntimeMissingError", "SentencePieceTokenizer", "TranslationRunner",
    "_import_interpreter", "_import_sentencepiece", "format_classification",
    "format_generation", "format_stats",
    "format_translation", "greedy_decode", "latency_stats", "load_runner", "preview",
    "read_lines", "read_manifest", "register_runner", "registered_runners", "runner_class",
    "sha256_file", "short_value", "stream_to", "supported_tasks", "tokenize",
    "valid_text", "verify_files",
]
