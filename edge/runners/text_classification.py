"""Runner of `"task": "text_classification"` bundles: text -> label, probability, top-k.

Bundle: model.tflite (signature `serving_default`: int32 token ids (1, max_sequence_length)
-> probabilities (1, num_classes), float or quantized), spm.model, labels.txt (line i is
class i). Manifest keys read here: tokenizer, labels, max_sequence_length, max_text_bytes,
pad_id, input_name, output_name.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .base import (
    BundleError,
    Manifest,
    Runner,
    SentencePieceTokenizer,
    _require,
    positive_int,
    preview,
    read_lines,
    register_runner,
)

SIGNATURE_KEY = "serving_default"


def _signature_key(details: dict, name: str | None, kind: str) -> str:
    """The manifest's tensor name, or the signature's only tensor of that kind."""
    if name in details:
        return name
    if len(details) == 1:
        return next(iter(details))
    raise BundleError(f"model.tflite: signature {SIGNATURE_KEY!r} has {kind} {sorted(details)}, "
                      f"none named {name!r} as the manifest says")


def format_classification(result: dict[str, Any]) -> str:
    """label<TAB>probability<TAB>latency_ms<TAB>text preview; with top_k > 1 the runners-up
    follow on indented lines `  #2 label<TAB>p`."""
    p = result["probability"]
    line = "{}\t{}\t{:.2f}\t{}".format(result["label"], "nan" if p is None else f"{p:.4f}",
                                      result["latency_ms"], preview(result["text"]))
    for rank, (label, prob) in enumerate(result["top_k"][1:], start=2):
        line += "\n  #{} {}\t{}".format(rank, label, "nan" if prob is None else f"{prob:.4f}")
    return line


class ClassificationRunner(Runner):
    """run(text) -> {"text", "label", "probability", "top_k": [[label, p], ...], "latency_ms"}.

    Library extras (the API of the former `Bundle`): classify(texts, top_k),
    classify_one(text, top_k), predict_ids(ids), tokenize(text), labels, num_classes,
    processor, max_sequence_length, pad_id.
    """

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--top-k", type=positive_int, default=1, metavar="K",
                            help="number of ranked labels to report (default 1)")

    def __init__(self, bundle_dir: str | os.PathLike, manifest: Manifest,
                 num_threads: int | None = None, options: Mapping[str, Any] | None = None):
        super().__init__(bundle_dir, manifest, num_threads, options)
        labels_file = manifest.member("labels", "labels.txt")
        self.labels = read_lines(self.path / labels_file)
        _require(len(self.labels) >= 1, f"{labels_file} holds no labels")
        self.tokenizer = SentencePieceTokenizer.from_manifest(self.path, manifest)
        self.processor = self.tokenizer.processor
        self.max_sequence_length = self.tokenizer.max_sequence_length
        self.pad_id = self.tokenizer.pad_id
        self.top_k = int(self.options.get("top_k") or 1)
        self._runner = None
        self._input_index = self._output_index = None
        self._bind_tensors(manifest.get_str("input_name"), manifest.get_str("output_name"))

    # -- tensor lookup: the signature runner if there is one, else details index 0
    def _bind_tensors(self, input_name: str | None, output_name: str | None) -> None:
        interp = self.interpreter
        if SIGNATURE_KEY in self.signature_names:
            runner = self.signature(SIGNATURE_KEY)
            inputs = runner.get_input_details()
            outputs = runner.get_output_details()
            self._input_key = _signature_key(inputs, input_name, "inputs")
            self._output_key = _signature_key(outputs, output_name, "outputs")
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
                 "model.tflite: input must take integer token ids, it takes "
                 f"{np.dtype(self._input_dtype).name}")
        shape = list(in_detail.get("shape_signature", in_detail["shape"]))
        _require(len(shape) == 2, f"model.tflite: input must be (batch, sequence), it is {shape}")
        if shape[1] > 0 and shape[1] != self.max_sequence_length:
            raise BundleError(f"model.tflite takes sequences of {shape[1]} tokens but "
                              f"manifest.json says max_sequence_length={self.max_sequence_length}")
        if self._runner is None and list(in_detail["shape"]) != [1, self.max_sequence_length]:
            interp.resize_tensor_input(self._input_index, [1, self.max_sequence_length])
            interp.allocate_tensors()

        # One warm-up run also tells the number of classes.
        probs = self.predict_ids(np.full((1, self.max_sequence_length), self.pad_id,
                                         dtype=np.int32))
        _require(probs.ndim == 2 and probs.shape[1] == len(self.labels),
                 f"model.tflite outputs {probs.shape[-1]} classes but labels.txt has "
                 f"{len(self.labels)} lines")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def tokenize(self, text: str) -> np.ndarray:
        return self.tokenizer(text)

    def predict_ids(self, ids: np.ndarray) -> np.ndarray:
        """Probabilities float32 (1, num_classes) for int token ids of shape
        (1, max_sequence_length)."""
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
            return (np.asarray(out, dtype=np.float32) - self._output_zero_point) \
                * self._output_scale
        return np.array(out, dtype=np.float32, copy=True)

    # -- the runner interface
    def infer(self, text: str, top_k: int | None = None) -> dict[str, Any]:
        k = max(1, min(int(self.top_k if top_k is None else top_k), self.num_classes))
        probs = self.predict_ids(self.tokenize(text)[None, :])[0]
        # Rank by probability; non-finite values (a broken model) rank last, reported as null.
        finite = np.isfinite(probs)
        order = np.argsort(-np.where(finite, probs, -np.inf), kind="stable")[:k]
        top = [[self.labels[i], float(probs[i]) if finite[i] else None] for i in order]
        return {"label": top[0][0], "probability": top[0][1], "top_k": top}

    def format(self, result: dict[str, Any]) -> str:
        return format_classification(result)

    # -- library API of the former Bundle class
    def classify_one(self, text: str, top_k: int = 1) -> dict[str, Any]:
        return self.run(text, top_k=top_k)

    def classify(self, texts: Iterable[str], top_k: int = 1) -> list[dict[str, Any]]:
        """One dict per text: {"text", "label", "probability", "top_k": [[label, p], ...],
        "latency_ms"}. latency_ms covers tokenization + inference of that text (batch 1)."""
        return [self.classify_one(t, top_k) for t in texts]


register_runner("text_classification", ClassificationRunner)
