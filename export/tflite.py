"""TFLite variants, converted from a SavedModel written by ExportArchive.

The converter's source is the task export module's `tflite_archive()`: one
endpoint per TFLite signature, static shapes, numeric inputs (tokenization
happens in the app: tensorflow-text ops have no TFLite kernels in
ai-edge-litert). Each variant is run with ai_edge_litert and measured with the
task's own metric by its export module.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf

from export import quantize
from export.modules.base import measure_latency_ms
from export.quantize import VARIANTS, QuantizationError, QuantizationRecipe
from pipeline.files import remove_stale_temps, write_atomic


def write_tflite_source(module, directory: str) -> str:
    """The SavedModel the converter reads: the module's TFLite signatures."""
    module.tflite_archive().write_out(directory, verbose=False)
    return directory


def convert(saved_model_dir: str, variant: str, recipe: QuantizationRecipe | None = None,
            log=print, signatures: tuple[str, ...] = ("serving_default",)) -> bytes:
    """One variant (export.quantize.VARIANTS) of the SavedModel as TFLite bytes,
    with every signature in `signatures`; builtin ops only (a Flex op fails)."""
    recipe = recipe or QuantizationRecipe()
    signatures = list(signatures)
    if variant == "float32":
        converter = tf.lite.TFLiteConverter.from_saved_model(
            saved_model_dir, signature_keys=signatures)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return converter.convert()
    if variant == "float16":
        return quantize.float16(saved_model_dir, signatures)
    if variant == "dynamic_range":
        return quantize.dynamic_range(saved_model_dir, signatures)
    if variant in ("int8", "int16x8"):
        if len(signatures) != 1:
            raise QuantizationError(
                f"{variant} calibrates one signature; this model has {len(signatures)} "
                f"({', '.join(signatures)}): use float16 or dynamic_range")
        function = quantize.int8 if variant == "int8" else quantize.int16x8
        return function(saved_model_dir, signatures[0], recipe, log=log)
    raise ValueError(f"export.tflite_variants: unknown variant {variant!r} "
                     f"(known: {', '.join(VARIANTS)})")


def export_tflite(module, variants: list[str], out_dir: str,
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
        write_tflite_source(module, source)
        for variant in variants:
            start = time.time()
            path = os.path.join(out_dir, f"{variant}.tflite")
            try:
                data = convert(source, variant, recipe, log=log,
                               signatures=module.tflite_signatures)
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


def _describe(name: str, detail: dict) -> dict:
    scale, zero_point = detail["quantization"]
    return {"name": name, "dtype": np.dtype(detail["dtype"]).name,
            "shape": [int(d) for d in detail.get("shape_signature", detail["shape"])],
            "quantization": {"scale": float(scale), "zero_point": int(zero_point)}}


def signature_details(path: str) -> dict:
    """Every signature's inputs and outputs (name, dtype, shape, quantization
    {scale, zero_point}; scale 0 = not quantized), as the edge app reads them."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    result = {}
    for name in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(name)
        result[name] = {
            "inputs": {k: _describe(k, d) for k, d in runner.get_input_details().items()},
            "outputs": {k: _describe(k, d)
                        for k, d in runner.get_output_details().items()}}
    return result


def tensor_details(path: str, signature: str = "serving_default") -> dict:
    """The single input and output of a one-in, one-out signature."""
    details = signature_details(path)[signature]
    (inp,), (out,) = details["inputs"].values(), details["outputs"].values()
    return {"input": inp, "output": out}


class TFLiteModel:
    """A converted model run with ai_edge_litert (the runtime the edge app
    uses): `model(signature, **inputs)` returns float32 outputs (quantized
    outputs are dequantized)."""

    def __init__(self, path: str, num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.path, self.num_threads = path, num_threads
        self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self.runners = {name: self.interpreter.get_signature_runner(name)
                        for name in self.interpreter.get_signature_list()}
        self._dequantize = {
            name: {k: d["quantization"] for k, d in r.get_output_details().items()
                   if np.dtype(d["dtype"]) != np.float32 and d["quantization"][0]}
            for name, r in self.runners.items()}
        # Quantized inputs (a full-int8 image model's uint8 pixels): float
        # values are quantized with the input's scale and zero point.
        self._quantize = {
            name: {k: (d["quantization"], np.dtype(d["dtype"]))
                   for k, d in r.get_input_details().items()
                   if np.dtype(d["dtype"]) != np.float32 and d["quantization"][0]}
            for name, r in self.runners.items()}

    def signature(self, name: str):
        """`runner(**inputs)` of one signature, for latency measurements."""
        return self.runners[name]

    def __call__(self, signature: str, **inputs) -> dict[str, np.ndarray]:
        for key, ((scale, zero_point), dtype) in self._quantize[signature].items():
            if np.issubdtype(np.asarray(inputs[key]).dtype, np.floating):
                info = np.iinfo(dtype)
                inputs[key] = np.clip(np.round(inputs[key] / scale + zero_point),
                                      info.min, info.max).astype(dtype)
        outputs = self.runners[signature](**inputs)
        for key, (scale, zero_point) in self._dequantize[signature].items():
            outputs[key] = (outputs[key].astype(np.float32) - zero_point) * scale
        return outputs


def evaluate_tflite(paths: dict[str, str], module, reference, latency_runs: int = 100,
                    log=print, failures: dict[str, str] | None = None
                    ) -> dict[str, dict]:
    """The task's metrics (its export module's `evaluate_tflite`), size and
    batch-1 latency (1 and 2 threads; the module's `latency_call`) per variant.

    A variant other than float32 that the runtime cannot run is left out and
    its reason put in `failures` (when given).
    """
    results = {}
    for number, (variant, path) in enumerate(paths.items(), 1):
        start = time.time()
        log(f"[tflite] {variant} ({number}/{len(paths)}): the test split, then batch-1 "
            f"latency ({latency_runs} runs x 1 and 2 threads) ...")
        try:
            metrics = module.evaluate_tflite(TFLiteModel(path), reference)
        except (RuntimeError, ValueError) as err:
            if variant == "float32" or failures is None:
                raise
            failures[variant] = "runtime: " + " ".join(str(err).split())[-500:]
            log(f"[tflite] {variant}: ai_edge_litert cannot run it, left out: "
                f"{failures[variant]}")
            continue
        latency = {}
        for n in (1, 2):
            call, inputs = module.latency_call(TFLiteModel(path, num_threads=n))
            latency[f"threads_{n}"] = {**measure_latency_ms(call, inputs, latency_runs),
                                       "threads": n}
        results[variant] = {"path": path, "size_bytes": os.path.getsize(path),
                            **metrics, "latency_batch1": latency}
        if variant in ("int8", "int16x8"):
            with open(path, "rb") as f:
                results[variant]["float_ops"] = quantize.float_ops(f.read())
            log(f"[tflite] {variant}: ops left in float: "
                f"{results[variant]['float_ops'] or 'none'}")
        r = results[variant]
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                          if isinstance(v, float))
        log(f"[tflite] {variant}: {shown}, {r['size_bytes'] / 1e6:.2f} MB, batch-1 "
            f"median {latency['threads_1']['median_ms']:.2f} ms (1 thread) / "
            f"{latency['threads_2']['median_ms']:.2f} ms (2 threads) "
            f"({time.time() - start:.1f}s)")
    return results
