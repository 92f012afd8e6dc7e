"""TFLite variants, converted from a SavedModel written by ExportArchive.

The TFLite model takes int32 token ids (batch, max_sequence_length) and
returns float32 probabilities (batch, num_classes); tokenization happens in
the app (tensorflow-text ops have no TFLite kernels in ai-edge-litert).
Each variant is checked with ai_edge_litert against the Keras model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from export import quantize
from export.quantize import VARIANTS, QuantizationError, QuantizationRecipe
from export.saved_model import float32_model, remove_stale_temps
from pipeline.tokenizer import PAD_ID

INPUT_NAME, OUTPUT_NAME, SIGNATURE = "token_ids", "probabilities", "serving_default"


def write_tflite_source(model: keras.Model, directory: str) -> str:
    """SavedModel with one int32 token-id signature, the converter's input."""
    model = float32_model(model)
    length = model.max_sequence_length

    def probabilities(token_ids):
        # With PAD_ID 0 a cast is `!= PAD_ID` without int32 arithmetic in the
        # graph, which TFLite's int16x8 calibrator cannot handle.
        padding_mask = tf.cast(token_ids, tf.bool) if PAD_ID == 0 else \
            tf.not_equal(token_ids, PAD_ID)
        logits = model({"token_ids": token_ids, "padding_mask": padding_mask},
                       training=False)
        return {OUTPUT_NAME: tf.nn.softmax(logits, axis=-1)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, probabilities, input_signature=[
        tf.TensorSpec([None, length], tf.int32, name=INPUT_NAME)])
    archive.write_out(directory, verbose=False)
    return directory


def convert(saved_model_dir: str, variant: str, recipe: QuantizationRecipe | None = None,
            log=print) -> bytes:
    """One variant (export.quantize.VARIANTS) of the SavedModel as TFLite bytes."""
    recipe = recipe or QuantizationRecipe()
    if variant == "float32":
        return tf.lite.TFLiteConverter.from_saved_model(
            saved_model_dir, signature_keys=[SIGNATURE]).convert()
    if variant == "float16":
        return quantize.float16(saved_model_dir, SIGNATURE)
    if variant == "dynamic_range":
        return quantize.dynamic_range(saved_model_dir, SIGNATURE)
    if variant == "int8":
        return quantize.int8(saved_model_dir, SIGNATURE, recipe, log=log)
    if variant == "int16x8":
        return quantize.int16x8(saved_model_dir, SIGNATURE, recipe, log=log)
    raise ValueError(f"export.tflite_variants: unknown variant {variant!r} "
                     f"(known: {', '.join(VARIANTS)})")


def write_atomic(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def export_tflite(model: keras.Model, variants: list[str], out_dir: str,
                  log=print, recipe: QuantizationRecipe | None = None,
                  failures: dict[str, str] | None = None) -> dict[str, str]:
    """Writes out_dir/<variant>.tflite for each variant; returns their paths.

    float32 must convert; another variant that fails is logged, left out of
    the result and its reason put in `failures` (when given), so one broken
    recipe never costs the whole export.
    """
    paths = {}
    remove_stale_temps(out_dir, r".+\.tflite\.tmp-(\d+)")   # left by a killed export
    source = tempfile.mkdtemp(prefix="tflite-source-")
    try:
        write_tflite_source(model, source)
        for variant in variants:
            start = time.time()
            path = os.path.join(out_dir, f"{variant}.tflite")
            try:
                data = convert(source, variant, recipe, log=log)
            except (QuantizationError, RuntimeError, ValueError) as err:
                if variant == "float32" or failures is None:
                    raise
                reason = " ".join(str(err).split())[-500:] or type(err).__name__
                failures[variant] = reason
                log(f"[export] TFLite {variant}: conversion failed, left out: {reason}")
                continue
            write_atomic(path, data)
            paths[variant] = path
            log(f"[export] TFLite {variant}: {path} "
                f"({os.path.getsize(path) / 1e6:.2f} MB, {time.time() - start:.1f}s)")
    finally:
        shutil.rmtree(source, ignore_errors=True)
    return paths


def tensor_details(path: str) -> dict:
    """Name, dtype, shape and quantization (scale, zero point) of the model's
    signature input and output, as the edge app reads them."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path).get_signature_runner(SIGNATURE)

    def describe(name, detail):
        scale, zero_point = detail["quantization"]
        return {"name": name, "dtype": np.dtype(detail["dtype"]).name,
                "shape": [int(d) for d in detail.get("shape_signature", detail["shape"])],
                "quantization": {"scale": float(scale), "zero_point": int(zero_point)}}

    return {"input": describe(INPUT_NAME, runner.get_input_details()[INPUT_NAME]),
            "output": describe(OUTPUT_NAME, runner.get_output_details()[OUTPUT_NAME])}


class TFLiteClassifier:
    """Runs a converted model with ai_edge_litert (the runtime the edge app uses)."""

    def __init__(self, path: str, num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner(SIGNATURE)
        output = self.runner.get_output_details()[OUTPUT_NAME]
        self.output_dtype = np.dtype(output["dtype"])
        self.output_scale, self.output_zero_point = output["quantization"]

    def __call__(self, token_ids: np.ndarray) -> np.ndarray:
        """float32 probabilities; a quantized output is dequantized."""
        out = self.runner(**{INPUT_NAME: token_ids.astype(np.int32)})[OUTPUT_NAME]
        if self.output_dtype != np.float32:
            out = (out.astype(np.float32) - self.output_zero_point) * self.output_scale
        return out

    def predict(self, token_ids: np.ndarray, batch_size: int = 64) -> np.ndarray:
        return np.concatenate([self(token_ids[i:i + batch_size])
                               for i in range(0, len(token_ids), batch_size)])


def measure_latency_ms(path: str, example: np.ndarray, runs: int = 100,
                       num_threads: int = 1) -> dict:
    """Batch-1 latency: median and p90 over `runs` runs after 10 warm-up runs."""
    classifier = TFLiteClassifier(path, num_threads=num_threads)
    example = example[None, :] if example.ndim == 1 else example[:1]
    for _ in range(10):
        classifier(example)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        classifier(example)
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": round(float(np.median(times)), 3),
            "p90_ms": round(float(np.percentile(times, 90)), 3),
            "runs": runs, "threads": num_threads}


def evaluate_tflite(paths: dict[str, str], token_ids: np.ndarray, labels: np.ndarray,
                    keras_probabilities: np.ndarray, latency_runs: int = 100,
                    log=print, failures: dict[str, str] | None = None) -> dict[str, dict]:
    """Accuracy, agreement with Keras, size and batch-1 latency per variant.

    A variant other than float32 that the runtime cannot run is left out and
    its reason put in `failures` (when given).
    """
    keras_pred = keras_probabilities.argmax(-1)
    results = {}
    for number, (variant, path) in enumerate(paths.items(), 1):
        start = time.time()
        log(f"[tflite] {variant} ({number}/{len(paths)}): {len(labels):,} test examples, "
            f"then batch-1 latency ({latency_runs} runs x 1 and 2 threads) ...")
        try:
            probabilities = TFLiteClassifier(path).predict(token_ids)
        except (RuntimeError, ValueError) as err:
            if variant == "float32" or failures is None:
                raise
            failures[variant] = "runtime: " + " ".join(str(err).split())[-500:]
            log(f"[tflite] {variant}: ai_edge_litert cannot run it, left out: "
                f"{failures[variant]}")
            continue
        pred = probabilities.argmax(-1)
        latency = {f"threads_{n}": measure_latency_ms(path, token_ids[0], latency_runs, n)
                   for n in (1, 2)}
        results[variant] = {
            "path": path,
            "size_bytes": os.path.getsize(path),
            "accuracy": float(np.mean(pred == labels)),
            "agreement_with_keras": float(np.mean(pred == keras_pred)),
            "max_abs_probability_diff": float(np.max(np.abs(
                probabilities - keras_probabilities))),
            "latency_batch1": latency,
            "examples": int(len(labels)),
        }
        r = results[variant]
        log(f"[tflite] {variant}: accuracy {r['accuracy']:.4f}, agreement with Keras "
            f"{r['agreement_with_keras']:.4f}, {r['size_bytes'] / 1e6:.2f} MB, batch-1 "
            f"median {latency['threads_1']['median_ms']:.2f} ms (1 thread) / "
            f"{latency['threads_2']['median_ms']:.2f} ms (2 threads) "
            f"({time.time() - start:.1f}s)")
    return results
