"""The bench's shapes, run settings and targets, and the flags resolved into them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

SHAPE_KEYS = ("vocab", "seq", "hidden", "heads", "ff", "layers", "batch", "classes")
REFERENCE_SHAPE = {"vocab": 8000, "seq": 128, "hidden": 256, "heads": 4, "ff": 1024,
                   "layers": 4, "batch": 32, "classes": 4}
QUICK_SHAPE = {"vocab": 200, "seq": 16, "hidden": 32, "heads": 2, "ff": 64,
               "layers": 2, "batch": 4, "classes": 4}
# Run settings: full run / --quick.
RUN_DEFAULTS = {"repeats": 5, "steps": 4, "warmup": 2, "matmul_size": 2048,
                "input_texts": 20000, "latency_runs": 50, "latency_batch": 32,
                "calibration_examples": 100, "profile_steps": 3,
                "variants": "float32,float16,dynamic_range,int8"}
QUICK_RUN = {"repeats": 2, "steps": 2, "warmup": 1, "matmul_size": 256,
             "input_texts": 1000, "latency_runs": 6, "latency_batch": 32,
             "calibration_examples": 8, "profile_steps": 1,
             "variants": "float32,dynamic_range"}
# Targets of issue #8.
TARGET_TRAINING_RATIO = 2.0
TARGET_INPUT_RATIO = 10.0
TARGET_EDGE_RATIO = 0.3


@dataclass
class Settings:
    vocab: int
    seq: int
    hidden: int
    heads: int
    ff: int
    layers: int
    batch: int
    classes: int
    dropout: float
    repeats: int
    steps: int
    warmup: int
    matmul_size: int
    input_texts: int
    latency_runs: int
    latency_batch: int
    calibration_examples: int
    profile_steps: int
    variants: list[str]
    quick: bool
    reference_keras_hub_defaults: bool
    seed: int

    def shape(self) -> dict:
        return {k: getattr(self, k) for k in SHAPE_KEYS}


def resolve(args: argparse.Namespace) -> Settings:
    """Flags over the --quick or reference defaults; raises ValueError on bad values."""
    shape = QUICK_SHAPE if args.quick else REFERENCE_SHAPE
    run = QUICK_RUN if args.quick else RUN_DEFAULTS
    values = {}
    for key in SHAPE_KEYS:
        values[key] = getattr(args, key) if getattr(args, key) is not None else shape[key]
    for key in run:
        value = getattr(args, key)
        values[key] = value if value is not None else run[key]
    values["variants"] = [v.strip() for v in str(values["variants"]).split(",") if v.strip()]
    s = Settings(dropout=args.dropout, quick=args.quick, seed=args.seed,
                 reference_keras_hub_defaults=args.reference_keras_hub_defaults, **values)
    for key in SHAPE_KEYS + ("repeats", "steps", "matmul_size", "input_texts",
                             "latency_runs", "latency_batch"):
        if getattr(s, key) <= 0:
            raise ValueError(f"--{key.replace('_', '-')} must be > 0, got {getattr(s, key)}")
    if s.warmup < 0 or s.profile_steps < 0 or s.calibration_examples < 0:
        raise ValueError("--warmup, --profile-steps and --calibration-examples must be >= 0")
    if s.hidden % s.heads:
        raise ValueError(f"--hidden {s.hidden} must be divisible by --heads {s.heads}")
    if not 0.0 <= s.dropout < 1.0:
        raise ValueError(f"--dropout must be in [0, 1), got {s.dropout}")
    from export.quantize import VARIANTS

    unknown = [v for v in s.variants if v not in VARIANTS]
    if unknown or "float32" not in s.variants:
        raise ValueError(f"--variants must include float32 and name only {', '.join(VARIANTS)};"
                         f" got {','.join(s.variants)}")
    if "int8" in s.variants and s.calibration_examples == 0:
        raise ValueError("--variants int8 needs --calibration-examples > 0")
    return s
