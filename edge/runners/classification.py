"""What the classification runners share (text_classification, image_classification).

A classification bundle's model.tflite has one signature `serving_default` with one input
and one output `(1, num_classes)` of probabilities, float or quantized; labels.txt holds
line i = the name of class i. `ClassifierRunner` reads the labels, binds the input and
output tensors (manifest keys `input_name`, `output_name`), quantizes the input and
dequantizes the output when the model is full-integer, ranks the classes, formats results
and declares the `--top-k` option. A task's runner adds what turns its input (a text, an
image file) into the input tensor.

Manifest keys read here: labels, input_name, output_name.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .base import (
    BundleError,
    Manifest,
    Runner,
    _require,
    positive_int,
    preview,
    read_lines,
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


def quantization_parameters(detail: Mapping[str, Any]) -> tuple[float, int]:
    """(scale, zero_point) of a tensor detail; scale 0.0 = not quantized."""
    scale, zero_point = (detail.get("quantization") or (0.0, 0))[:2]
    return float(scale), int(zero_point)


def quantize(values: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """`values` as the input tensor `detail` takes them. An integer tensor with quantization
    parameters gets q = clip(round(x / scale + zero_point)) (round half away from zero, as
    TFLite's Quantize); any other tensor gets values cast to its dtype."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = quantization_parameters(detail)
    if not (np.issubdtype(dtype, np.integer) and scale > 0):
        return np.asarray(values).astype(dtype, copy=False)
    scaled = np.asarray(values, dtype=np.float64) / scale + zero_point
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
    info = np.iinfo(dtype)
    return np.clip(rounded, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """float32 values of an output tensor: real = scale * (q - zero_point) for a quantized
    integer tensor, a float32 copy otherwise."""
    scale, zero_point = quantization_parameters(detail)
    if np.issubdtype(np.dtype(detail["dtype"]), np.integer):
        return ((np.asarray(values, dtype=np.float32) - zero_point) * scale).astype(np.float32)
    return np.array(values, dtype=np.float32, copy=True)


def rank(probabilities: np.ndarray, labels: Sequence[str], k: int) -> dict[str, Any]:
    """{"label", "probability", "top_k": [[label, p], ...]} of the k most probable classes.
    Non-finite values (a broken model) rank last and are reported as null."""
    probs = np.asarray(probabilities)
    finite = np.isfinite(probs)
    order = np.argsort(-np.where(finite, probs, -np.inf), kind="stable")[:k]
    top = [[labels[i], float(probs[i]) if finite[i] else None] for i in order]
    return {"label": top[0][0], "probability": top[0][1], "top_k": top}


def format_classification(result: dict[str, Any]) -> str:
    """label<TAB>probability<TAB>latency_ms<TAB>input preview; with top_k > 1 the
    runners-up follow on indented lines `  #2 label<TAB>p`."""
    p = result["probability"]
    line = "{}\t{}\t{:.2f}\t{}".format(result["label"], "nan" if p is None else f"{p:.4f}",
                                      result["latency_ms"], preview(result["text"]))
    for rank_, (label, prob) in enumerate(result["top_k"][1:], start=2):
        line += "\n  #{} {}\t{}".format(rank_, label, "nan" if prob is None else f"{prob:.4f}")
    return line


class ClassifierRunner(Runner):
    """Base of the classification runners: run(input) -> {"text", "label", "probability",
    "top_k": [[label, p], ...], "latency_ms"}.

    A subclass calls `super().__init__`, checks the input tensor (`input_detail`,
    `_require_input_shape`), then `_check_classes()`; its `infer(value, top_k=None)` turns
    the input into a batch-1 array and returns `self.ranked(self.predict(array), top_k)`.

    Library API: classify(inputs, top_k), classify_one(input, top_k), predict(array),
    labels, num_classes, top_k, input_detail, output_detail.
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
            self.input_detail = inputs[self._input_key]
            self.output_detail = outputs[self._output_key]
            self._runner = runner
        else:
            interp.allocate_tensors()
            self.input_detail = interp.get_input_details()[0]
            self.output_detail = interp.get_output_details()[0]
            self._input_index = self.input_detail["index"]
            self._output_index = self.output_detail["index"]
        # A full-integer (int8) model may return quantized probabilities:
        # real = scale * (q - zero_point), with the output's own parameters.
        output_dtype = np.dtype(self.output_detail["dtype"])
        if np.issubdtype(output_dtype, np.integer) \
                and quantization_parameters(self.output_detail)[0] <= 0:
            raise BundleError(f"model.tflite: output is {output_dtype.name} without a "
                              "quantization scale; cannot read probabilities from it")

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.input_detail["dtype"])

    def _require_input_shape(self, expected: Sequence[int], meaning: str,
                             manifest_keys: Sequence[str]) -> None:
        """The model's input must have len(expected) dimensions; each fixed one after the
        batch must equal `expected` (the manifest's `manifest_keys`, in order). A model
        without signatures is resized to `expected`."""
        shape = [int(d) for d in self.input_detail.get("shape_signature",
                                                        self.input_detail["shape"])]
        _require(len(shape) == len(expected),
                 f"model.tflite: input must be {meaning}, it is {shape}")
        for dim, want, key in zip(shape[1:], expected[1:], manifest_keys):
            if dim > 0 and dim != want:
                raise BundleError(f"model.tflite takes input {shape} but manifest.json says "
                                  f"{key}={want}")
        if self._runner is None and list(self.input_detail["shape"]) != list(expected):
            self.interpreter.resize_tensor_input(self._input_index, list(expected))
            self.interpreter.allocate_tensors()

    def _check_classes(self, example: np.ndarray) -> None:
        """One warm-up run on `example` (an input array) also tells the number of classes."""
        probs = self.predict(example)
        _require(probs.ndim == 2 and probs.shape[1] == len(self.labels),
                 f"model.tflite outputs {probs.shape[-1]} classes but labels.txt has "
                 f"{len(self.labels)} lines")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """Probabilities float32 (1, num_classes) of a batch-1 input array, given as real
        values (token ids, pixel values): quantized first when the model's input is."""
        inputs = quantize(inputs, self.input_detail)
        if self._runner is not None:
            out = self._runner(**{self._input_key: inputs})[self._output_key]
        else:
            self.interpreter.set_tensor(self._input_index, inputs)
            self.interpreter.invoke()
            out = self.interpreter.get_tensor(self._output_index)
        return dequantize(out, self.output_detail)

    def ranked(self, probabilities: np.ndarray, top_k: int | None = None) -> dict[str, Any]:
        """rank() of one row of probabilities: `top_k` classes (default: the runner's
        --top-k), at least 1, at most num_classes."""
        k = max(1, min(int(self.top_k if top_k is None else top_k), self.num_classes))
        return rank(probabilities, self.labels, k)

    def format(self, result: dict[str, Any]) -> str:
        return format_classification(result)

    def classify_one(self, value: Any, top_k: int = 1) -> dict[str, Any]:
        return self.run(value, top_k=top_k)

    def classify(self, values: Iterable[Any], top_k: int = 1) -> list[dict[str, Any]]:
        """One `run` result per input: {"text", "label", "probability", "top_k": [[label, p],
        ...], "latency_ms"}; latency_ms covers the preparation of that input (tokenization,
        image decoding) + inference, batch 1."""
        return [self.classify_one(v, top_k) for v in values]
