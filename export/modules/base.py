"""The export-module interface: what one task exports (TF Model Garden's
`export_base.ExportModule` / `serving_modules.py`, one module per task).

The task-neutral export path (`export/__init__.py`: `export/saved_model.py`,
`tflite.py`, `quantize.py`, `report.py`, `bundle.py`) calls only these
methods. A module is made from the prepared task and its trained model.
"""

from __future__ import annotations

import time
from typing import ClassVar

import numpy as np


class ExportModule:
    """Base class of every task's export module.

    Attributes:
        tflite_signatures: the TFLite model's signatures, in order (a model may
            have several, e.g. `encode` and `decode`); the first is the one
            latency is measured on.
        gate_metric / gate_direction / gate_scale: the TFLite metric the
            variant gate compares with float32, "max" or "min", and how many
            gate points one unit of it is (100 for a ratio such as accuracy).
        latency_unit: what one batch-1 latency run is (`latency_call`), as
            the quantization report says it.
        int8_input: the int8 variant's input type ("float32", "uint8").
    """

    tflite_signatures: ClassVar[tuple[str, ...]] = ("serving_default",)
    gate_metric: ClassVar[str] = "accuracy"
    gate_direction: ClassVar[str] = "max"
    gate_scale: ClassVar[float] = 100.0
    latency_unit: ClassVar[str] = "one call of the first signature"
    # The int8 variant's input type for float inputs: "float32" or "uint8"
    # (image pixels, as MediaPipe and on-device camera pipelines feed them).
    int8_input: ClassVar[str] = "float32"

    def __init__(self, task, model):
        from export.saved_model import float32_model

        self.task = task
        self.cfg = task.cfg
        # Exported graphs are float32 whatever the training precision.
        self.model = float32_model(model, task)

    # ---------------------------------------------------------- SavedModel
    def serving_archive(self):
        """A `keras.export.ExportArchive` with the SavedModel's signatures
        (raw inputs in: tokenization etc. inside the graph)."""
        raise NotImplementedError

    def serving_assets(self) -> dict[str, str]:
        """assets.extra/<name> -> source file path (tokenizers, labels)."""
        return {}

    def warmup_requests(self) -> list[tuple[str, dict]]:
        """TF Serving warm-up requests: (signature name, {input name: numpy
        array}) each, built from validation examples."""
        return []

    def saved_model_metrics(self, directory: str, reference) -> dict:
        """Measurements of the written SavedModel against the Keras model
        (`reference`, what the task's `evaluate` returned); {} = none."""
        return {}

    # -------------------------------------------------------------- TFLite
    def tflite_archive(self):
        """An ExportArchive whose endpoints are `tflite_signatures`, with
        static shapes and numeric inputs (the converter's source)."""
        raise NotImplementedError

    def calibration_inputs(self, signature: str, max_examples: int,
                           seed: int) -> list[dict]:
        """Inputs of `signature` ({name: array of batch 1}) from the TRAIN
        split, for integer calibration."""
        raise NotImplementedError

    def latency_inputs(self) -> dict:
        """One batch-1 input of the first signature, for latency runs."""
        raise NotImplementedError

    def latency_call(self, model) -> tuple:
        """`(callable, keyword inputs)`: what one batch-1 latency run times on
        a `TFLiteModel` (export.tflite). By default the first signature on
        `latency_inputs()`; a task whose inference loops over several
        signatures (encode, then decode per token) times the whole loop."""
        return model.signature(self.tflite_signatures[0]), self.latency_inputs()

    def evaluate_tflite(self, runner, reference) -> dict:
        """The task's metrics of one TFLite variant (a `TFLiteModel`) on the
        test split, with `gate_metric` among them; `reference` is what the
        task's `evaluate` returned for the Keras model."""
        raise NotImplementedError

    # ---------------------------------------------------------------- edge
    def bundle_files(self) -> dict[str, str]:
        """Bundle file name -> source path, besides model.tflite."""
        return {}

    def bundle_manifest(self) -> dict:
        """Task keys of the bundle's manifest.json (the edge runner reads them)."""
        return {}


def measure_latency_ms(runner, inputs: dict, runs: int = 100) -> dict:
    """Batch-1 latency of `runner(**inputs)`: median and p90 over `runs` runs
    after 10 warm-up runs."""
    for _ in range(10):
        runner(**inputs)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner(**inputs)
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": round(float(np.median(times)), 3),
            "p90_ms": round(float(np.percentile(times, 90)), 3),
            "runs": runs, "threads": getattr(runner, "num_threads", None)}
