"""Runner of `"task": "text_classification"` bundles: text -> label, probability, top-k.

Bundle: model.tflite (signature `serving_default`: int32 token ids (1, max_sequence_length)
-> probabilities (1, num_classes), float or quantized), spm.model, labels.txt (line i is
class i). Manifest keys read here: tokenizer, max_sequence_length, max_text_bytes, pad_id,
and (classification.ClassifierRunner) labels, input_name, output_name.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import Manifest, SentencePieceTokenizer, _require, register_runner
from .classification import ClassifierRunner, format_classification

__all__ = ["ClassificationRunner", "format_classification"]


class ClassificationRunner(ClassifierRunner):
    """run(text) -> {"text", "label", "probability", "top_k": [[label, p], ...], "latency_ms"}.

    Library extras (the API of the former `Bundle`): classify(texts, top_k),
    classify_one(text, top_k), predict_ids(ids), tokenize(text), labels, num_classes,
    processor, max_sequence_length, pad_id.
    """

    def __init__(self, bundle_dir: str | os.PathLike, manifest: Manifest,
                 num_threads: int | None = None, options: Mapping[str, Any] | None = None):
        super().__init__(bundle_dir, manifest, num_threads, options)
        self.tokenizer = SentencePieceTokenizer.from_manifest(self.path, manifest)
        self.processor = self.tokenizer.processor
        self.max_sequence_length = self.tokenizer.max_sequence_length
        self.pad_id = self.tokenizer.pad_id
        _require(np.issubdtype(self.input_dtype, np.integer),
                 "model.tflite: input must take integer token ids, it takes "
                 f"{self.input_dtype.name}")
        self._require_input_shape([1, self.max_sequence_length], "(batch, sequence)",
                                  ["max_sequence_length"])
        self._check_classes(np.full((1, self.max_sequence_length), self.pad_id,
                                    dtype=np.int32))

    def tokenize(self, text: str) -> np.ndarray:
        return self.tokenizer(text)

    def predict_ids(self, ids: np.ndarray) -> np.ndarray:
        """Probabilities float32 (1, num_classes) for int token ids of shape
        (1, max_sequence_length) or (max_sequence_length,)."""
        ids = np.asarray(ids)
        return self.predict(ids[None, :] if ids.ndim == 1 else ids)

    # -- the runner interface
    def infer(self, text: str, top_k: int | None = None) -> dict[str, Any]:
        return self.ranked(self.predict_ids(self.tokenize(text))[0], top_k)


register_runner("text_classification", ClassificationRunner)
