"""The bench's measurements; each returns plain, JSON-ready dicts.

At one model shape (`pipeline.bench.settings`) it measures

1. training examples/s of our `TextClassifier` (`pipeline.bench.cases.OursCase`:
   pipeline.trainer's make_optimizer and make_train_step under the default
   strategy, fed from an in-memory tf.data iterator of fixed-shape random token
   batches) in float32 and mixed_bfloat16, each with XLA off and on, and of a
   keras-hub reference model of the same shape trained with `train_on_batch`;
2. the GFLOP/s this achieves (FLOPs counted analytically, see
   `forward_flops_per_example`) against a tf.matmul peak measured in the run,
   and where a step's time goes (forward / backward / optimizer, op profiles);
3. the tf.data input pipeline alone (pipeline.input.make_train_dataset with a
   SentencePiece tokenizer trained in the run), against the training rate;
4. batch-1 and batch-N latency of the Keras model, the SavedModel (written by
   export.saved_model.export_serving) and each TFLite variant (export.tflite)
   with ai-edge-litert at 1 and 2 threads. Weights are random, so only speed
   is measured here; the accuracy of each variant is in the export report.

Timings exclude warm-up calls and are medians of repeated runs. The cases of a
section run interleaved (a, b, c, a, b, c, ...; the order rotates each
repeat), so a background load slows all of them alike. `measure_all` runs
everything and returns the one dict that `pipeline.bench.report` writes.
"""

from __future__ import annotations

import datetime
import gc
import glob
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict

from pipeline.bench.cases import BenchExport, OursCase, ReferenceCase, experiment_config
from pipeline.bench.settings import (
    TARGET_EDGE_RATIO,
    TARGET_INPUT_RATIO,
    TARGET_TRAINING_RATIO,
    Settings,
)

WORDNET_NOUNS = "/usr/share/wordnet/data.noun"
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def log(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------ FLOPs


def forward_flops_per_example(seq: int, hidden: int, ff: int, layers: int,
                              classes: int) -> int:
    """Multiply-add FLOPs (2 per multiply-accumulate) of one forward pass of one
    example through the encoder classifier.

    Per encoder layer, with S = seq, H = hidden, FF = ff:

      Q, K, V and output projections      4 * 2 * S * H * H
      attention scores Q K^T, and the
      probability-weighted sum of V       2 * 2 * S * S * H   (summed over heads)
      feed-forward H -> FF -> H           2 * 2 * S * H * FF

    plus the classifier head 2 * H * classes. The embedding lookup, LayerNorm,
    softmax, GELU, dropout, masking and pooling are not counted (they are
    O(S * H) or O(S * S) element-wise work, a few percent of the matmuls).
    The count does not depend on the number of heads.
    """
    s, h = seq, hidden
    per_layer = 4 * 2 * s * h * h + 2 * 2 * s * s * h + 2 * 2 * s * h * ff
    return layers * per_layer + 2 * h * classes


def training_flops_per_example(seq: int, hidden: int, ff: int, layers: int,
                               classes: int) -> int:
    """FLOPs of one training step per example: 3x the forward pass (the backward
    pass computes the gradients of both the activations and the weights, each
    costing about one forward pass). The optimizer update, O(parameters), is
    not counted."""
    return 3 * forward_flops_per_example(seq, hidden, ff, layers, classes)


# ---------------------------------------------------------------- machine


def machine_info() -> dict:
    cpu, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and cpu is None:
                    cpu = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    memory_gb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory_gb = round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "usable_cpus": usable,
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "memory_gb": memory_gb, "platform": platform.platform(),
        "python": platform.python_version(),
    }


def library_versions() -> dict:
    import ai_edge_litert
    import keras
    import keras_hub
    import numpy as np
    import tensorflow as tf

    versions = {"tensorflow": tf.__version__, "keras": keras.__version__,
                "keras_hub": keras_hub.__version__, "numpy": np.__version__}
    try:
        from importlib.metadata import version

        versions["ai_edge_litert"] = version("ai-edge-litert")
    except Exception:  # noqa: BLE001 - metadata missing: the module's own attribute
        versions["ai_edge_litert"] = getattr(ai_edge_litert, "__version__", "?")
    versions["onednn"] = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)")
    return versions


def niceness() -> int | None:
    """This process's scheduling niceness (another job may renice it)."""
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (AttributeError, OSError):
        return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------- timing core


def interleave(cases: dict, repeats: int, warmup: int, per_call: bool = False,
               label: str = "") -> dict[str, list[float]]:
    """Times callables interleaved; returns name -> seconds per call.

    `cases` maps a name to `(fn, calls)`: each repeat runs `fn` `calls` times
    per case, the cases in turn (the order rotating by one each repeat), so a
    load that comes and goes hits every case alike. Every case first runs
    `warmup` untimed calls (tracing, XLA compilation, caches). With `per_call`
    each call is one sample, else each repeat is one sample (its mean).
    """
    names = list(cases)
    for name in names:
        fn, _ = cases[name]
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in names}
    start = time.time()
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn, calls = cases[name]
            if per_call:
                for _ in range(calls):
                    t0 = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - t0)
            else:
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                samples[name].append((time.perf_counter() - t0) / calls)
        if label:
            log(f"[bench] {label}: repeat {r + 1}/{repeats} done "
                f"({time.time() - start:.0f}s)")
    return samples


def summary(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {"median_s": statistics.median(ordered), "min_s": ordered[0],
            "max_s": ordered[-1], "samples": len(ordered)}


# ------------------------------------------------------------------ corpus


def load_corpus(n: int, seed: int) -> tuple[list[str], list[int], str]:
    """n texts with labels: WordNet noun glosses ("lemmas: definition", as the
    default experiment) when wordnet-base is installed, else synthetic words."""
    import numpy as np

    if os.path.isfile(WORDNET_NOUNS):
        from pipeline.datasets.wordnet_topics import NOUN_LEXNAMES, read_synsets

        rows = list(read_synsets(WORDNET_NOUNS))
        step = max(1, len(rows) // n)
        rows = rows[::step][:n]
        texts = [f"{r['lemmas']}: {r['definition']}" for r in rows]
        labels = [NOUN_LEXNAMES.index(r["label"]) for r in rows]
        return texts, labels, f"WordNet noun glosses ({WORDNET_NOUNS}), {len(texts):,} texts"
    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "an", "el", "or", "um",
                 "gra", "sti", "ble", "der", "pho", "qui", "zen", "val"]
    words = ["".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(3000)]
    texts = [" ".join(rng.choice(words, size=rng.integers(4, 40))) for _ in range(n)]
    labels = [int(x) for x in rng.integers(0, 26, size=n)]
    return texts, labels, f"synthetic words ({WORDNET_NOUNS} missing), {n:,} texts"


# --------------------------------------------------------------- training


def matmul_cases(s: Settings, calls: int = 2) -> dict:
    """`tf.matmul` of two square `--matmul-size` matrices in float32 and
    bfloat16, as interleave() cases named "matmul float32" / "matmul bfloat16"."""
    import tensorflow as tf

    n = s.matmul_size
    matmul = tf.function(tf.matmul)
    cases = {}
    for dtype in ("float32", "bfloat16"):
        a = tf.cast(tf.random.stateless_normal((n, n), seed=(1, 2)), dtype)
        b = tf.cast(tf.random.stateless_normal((n, n), seed=(3, 4)), dtype)

        def call(a=a, b=b):
            matmul(a, b).numpy()
        cases[f"matmul {dtype}"] = (call, calls)
    return cases


def matmul_peak(s: Settings, samples: dict) -> dict:
    flops = 2 * s.matmul_size ** 3
    result = {"matrix_size": s.matmul_size}
    for dtype in ("float32", "bfloat16"):
        stats = summary(samples[f"matmul {dtype}"])
        result[dtype] = {"gflops_median": flops / stats["median_s"] / 1e9,
                         "gflops_best": flops / stats["min_s"] / 1e9,
                         "repeats": stats["samples"]}
    return result


def op_profile(run_step, steps: int) -> dict | None:
    """Self time per op type and per phase over `steps` traced steps, from the
    TensorFlow profiler's framework_op_stats (None when the profiler's private
    converter is unavailable)."""
    import tensorflow as tf

    try:
        from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin
    except ImportError:
        return None
    logdir = tempfile.mkdtemp(prefix="bench-profile-")
    try:
        tf.profiler.experimental.start(logdir)
        try:
            for _ in range(steps):
                run_step()
        finally:
            tf.profiler.experimental.stop()
        paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        data, ok = plugin.xspace_to_tools_data(paths, "framework_op_stats", {})
        if not ok:
            return None
        table = json.loads(data)[0]
    except Exception as err:  # noqa: BLE001 - a profiler failure must not end the bench
        log(f"[bench] op profile unavailable: {type(err).__name__}: {err}")
        return None
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    columns = [c["id"] for c in table["cols"]]
    by_type: dict[str, float] = {}
    by_phase: dict[str, float] = {}
    for row in table["rows"]:
        values = dict(zip(columns, (c.get("v") for c in row["c"])))
        op_type, name = values["type"], values["operation"]
        if op_type == "IDLE":
            continue
        us = float(values["total_self_time"])
        by_type[op_type] = by_type.get(op_type, 0.0) + us
        by_phase[_phase_of(name, op_type)] = by_phase.get(_phase_of(name, op_type), 0.0) + us
    total = sum(by_type.values()) or 1.0
    categories: dict[str, float] = {}
    for op_type, us in by_type.items():
        category = _category_of(op_type)
        categories[category] = categories.get(category, 0.0) + us
    top = sorted(by_type.items(), key=lambda kv: -kv[1])[:12]
    return {
        "steps": steps, "total_self_ms_per_step": total / 1e3 / steps,
        "by_category_percent": {k: 100 * v / total for k, v in
                                sorted(categories.items(), key=lambda kv: -kv[1])},
        "by_phase_percent": {k: 100 * v / total for k, v in
                             sorted(by_phase.items(), key=lambda kv: -kv[1])},
        "top_op_types": [{"type": k, "percent": 100 * v / total,
                          "ms_per_step": v / 1e3 / steps} for k, v in top],
    }


def _phase_of(name: str, op_type: str) -> str:
    lowered = name.lower()
    if "iterator" in lowered or op_type in ("IteratorGetNext", "OptionalGetValue"):
        return "input"
    if "gradient_tape" in lowered:
        return "backward"
    if "adam" in lowered or "optimizer" in lowered or "clip" in lowered or \
            "global_norm" in lowered or op_type.startswith(("AssignVariable", "AssignSub",
                                                            "AssignAdd")):
        return "optimizer"
    return "forward"


def _category_of(op_type: str) -> str:
    t = op_type.lower()
    if any(k in t for k in ("matmul", "einsum", "conv")):
        return "matmul / einsum"
    if any(k in t for k in ("softmax", "erf", "exp", "tanh", "gelu")):
        return "softmax / GELU"
    if any(k in t for k in ("mean", "sum", "squareddifference", "rsqrt", "norm",
                            "moments")):
        return "reductions / LayerNorm"
    if any(k in t for k in ("gather", "scatter", "unsorted", "embedding")):
        return "embedding gather / scatter"
    if any(k in t for k in ("variable", "assign", "resource", "readvariable")):
        return "variable reads / updates"
    if any(k in t for k in ("cast",)):
        return "casts"
    if any(k in t for k in ("random", "dropout", "stateless")):
        return "dropout RNG"
    return "other element-wise / shape"


def measure_training(s: Settings, cfg) -> tuple[dict, object]:
    """Sections 1 and 2 and where the time goes: training examples/s of ours
    (float32 and mixed_bfloat16, XLA off and on) and of the reference,
    interleaved with the matmul peak; then the forward / backward / optimizer
    split and op profiles.

    Returns ({"matmul_peak", "training", "where_the_time_goes",
    "sections_seconds"}, our float32 model, for the latency section).
    """
    t0 = time.time()
    reference = ReferenceCase(s)
    ours = [OursCase(cfg, s, precision, jit)
            for precision in ("float32", "mixed_bfloat16") for jit in (False, True)]
    # What compiling the optimizer update (runtime.jit_compile_optimizer) buys.
    ours.append(OursCase(cfg, s, "mixed_bfloat16", False, compile_optimizer=False))
    log(f"[bench] models built: ours {ours[0].model.count_params():,} parameters, "
        f"reference {reference.model.count_params():,} "
        f"({time.time() - t0:.0f}s); warming up (XLA compiles) ...")
    cases = {"reference": (reference.step, s.steps)}
    cases.update({case.name: (case.step, s.steps) for case in ours})
    # The matmul peak runs in the same rounds, so it sees the same load.
    cases.update(matmul_cases(s))
    samples = interleave(cases, repeats=s.repeats, warmup=s.warmup,
                         label="training and matmul peak")
    peak = matmul_peak(s, samples)
    log(f"[bench] matmul peak ({peak['matrix_size']}^2): float32 "
        f"{peak['float32']['gflops_median']:.0f} GFLOP/s, bfloat16 "
        f"{peak['bfloat16']['gflops_median']:.0f} GFLOP/s (medians)")
    samples = {k: v for k, v in samples.items() if not k.startswith("matmul ")}
    flops = training_flops_per_example(s.seq, s.hidden, s.ff, s.layers, s.classes)
    training = {}
    for name, seconds in samples.items():
        stats = summary(seconds)
        rate = s.batch / stats["median_s"]
        if name == "reference":
            precision, jit = "float32", reference.jit_compile
        else:
            case = next(c for c in ours if c.name == name)
            precision, jit = case.precision, case.jit_compile
        peak_dtype = "bfloat16" if precision == "mixed_bfloat16" else "float32"
        gflops = flops * rate / 1e9
        training[name] = {
            "precision": precision, "jit_compile": jit,
            "examples_per_second": rate,
            "examples_per_second_range": [s.batch / stats["max_s"],
                                          s.batch / stats["min_s"]],
            "step_ms": 1e3 * stats["median_s"], "repeats": stats["samples"],
            "steps_per_repeat": s.steps, "gflops": gflops,
            "peak_dtype": peak_dtype,
            "utilisation_percent": 100 * gflops / peak[peak_dtype]["gflops_median"],
        }
    reference_rate = training["reference"]["examples_per_second"]
    for row in training.values():
        row["vs_reference"] = row["examples_per_second"] / reference_rate
    fastest_name = max((c.name for c in ours),
                       key=lambda n: training[n]["examples_per_second"])
    fastest = next(c for c in ours if c.name == fastest_name)
    result = {"matmul_peak": peak, "training": {
        "cases": training, "fastest": fastest_name,
        "ratio_fastest_vs_reference": training[fastest_name]["vs_reference"],
        "ratio_float32_vs_reference": training["ours float32"]["vs_reference"],
        "reference_model": {
            "layers": "keras_hub.layers.TokenAndPositionEmbedding + "
                      f"{s.layers} x keras_hub.layers.TransformerEncoder + "
                      "GlobalAveragePooling1D + Dense",
            "encoder_settings": reference.block_settings,
            "optimizer": "Adam", "loss": "SparseCategoricalCrossentropy",
            "jit_compile": reference.jit_compile, "loop": "train_on_batch",
            "parameters": int(reference.model.count_params())},
        "ours_model": {"parameters": int(ours[0].model.count_params()),
                       "optimizer": "AdamW (pipeline.trainer.make_optimizer: warm-up "
                                    "+ cosine schedule, global-norm clipping)",
                       "loop": "pipeline.trainer.make_train_step, default strategy, "
                               "tf.data iterator"},
        "flops_per_example_forward": forward_flops_per_example(
            s.seq, s.hidden, s.ff, s.layers, s.classes),
        "flops_per_example_training": flops,
    }, "sections_seconds": {"training": round(time.time() - t0, 1)}}

    # Where the time goes: forward / backward / optimizer, op profile.
    t0 = time.time()
    split_cases, profiles = {}, {}
    for case in dict.fromkeys([ours[0], fastest]):
        forward, forward_backward = case.phase_functions()
        calls = (s.steps + 1) // 2
        split_cases[f"{case.name} | forward"] = (forward, calls)
        split_cases[f"{case.name} | forward+backward"] = (forward_backward, calls)
        split_cases[f"{case.name} | step"] = (case.step, calls)
    split_samples = interleave(split_cases, repeats=max(2, min(5, s.repeats)),
                               warmup=s.warmup, label="phase split")
    phases = {}
    for case in dict.fromkeys([ours[0], fastest]):
        # The fastest repeat of each: a background load only ever adds time,
        # and differences of noisy medians can come out negative.
        f = min(split_samples[f"{case.name} | forward"])
        fb = min(split_samples[f"{case.name} | forward+backward"])
        step = min(split_samples[f"{case.name} | step"])
        phases[case.name] = {"forward_ms": 1e3 * f, "backward_ms": 1e3 * (fb - f),
                             "optimizer_and_rest_ms": 1e3 * (step - fb),
                             "step_ms": 1e3 * step, "statistic": "min"}
    # Op-level profiles of the runs without XLA (an XLA cluster does not
    # show its ops in the profiler's op statistics).
    profiled = [(c.name, c.step) for c in ours if not c.jit_compile]
    if not reference.jit_compile:
        profiled.append(("keras-hub reference", reference.step))
    for name, step in profiled if s.profile_steps else []:
        profile = op_profile(step, s.profile_steps)
        if profile is not None:
            profiles[name] = profile
    result["where_the_time_goes"] = {"phases": phases, "op_profiles": profiles}
    result["sections_seconds"]["where_the_time_goes"] = round(time.time() - t0, 1)
    # Only the float32 model outlives this function (the other models, their
    # optimizers and compiled steps are freed on return).
    return result, ours[0].model


# ---------------------------------------------------------- input pipeline


def measure_input_pipeline(s: Settings, cfg, texts, labels, tokenizer_path: str) -> dict:
    """Examples/s of pipeline.input.make_train_dataset from raw text to batches:
    the first epoch (tokenization, cache fill, shuffle, bucketing, batching) and
    the cached epochs after it."""
    import functools

    import tensorflow as tf

    from pipeline.input import make_train_dataset, tokenize
    from pipeline.tokenizer import InGraphTokenizer, read_model

    # The batch function the text-classification task maps over its data.
    preprocess = functools.partial(tokenize, InGraphTokenizer(read_model(tokenizer_path), s.seq))
    source = tf.data.Dataset.from_tensor_slices(
        {"text": tf.constant(texts), "label": tf.constant(labels, tf.int32)})
    batches_per_epoch = max(1, len(texts) // s.batch)
    cold, warm = [], []
    lengths = []
    for _ in range(max(3, min(s.repeats, 5))):
        dataset = make_train_dataset(source, preprocess, cfg, s.batch)
        iterator = iter(dataset)
        t0 = time.perf_counter()
        for _ in range(batches_per_epoch):
            inputs, _ = next(iterator)
        cold.append(time.perf_counter() - t0)
        lengths.append(int(inputs["token_ids"].shape[1]))
        t0 = time.perf_counter()
        for _ in range(2 * batches_per_epoch):
            next(iterator)
        warm.append((time.perf_counter() - t0) / 2)
        del iterator, dataset
        gc.collect()
    examples = batches_per_epoch * s.batch
    return {"texts": len(texts), "batch": s.batch,
            "first_epoch_examples_per_second": examples / statistics.median(cold),
            "cached_epoch_examples_per_second": examples / statistics.median(warm),
            "repeats": len(cold), "bucket_by_length": cfg.train.bucket_by_length,
            "shuffle_buffer": cfg.train.shuffle_buffer}


# ---------------------------------------------------------------- latency


def measure_latency(s: Settings, model, cfg, texts: list[str], tokenizer_path: str,
                    work_dir: str) -> dict:
    """Batch-1 and batch-N latency of the (float32) Keras model, the SavedModel
    and each TFLite variant (ai-edge-litert, 1 and 2 threads), interleaved."""
    import numpy as np
    import tensorflow as tf

    from export.modules.text_classification import INPUT_NAME, OUTPUT_NAME, SIGNATURE
    from export.quantize import QuantizationRecipe
    from export.saved_model import dir_size, export_serving
    from export.tflite import TFLiteModel, export_tflite
    from pipeline.config import ExportConfig
    from pipeline.files import write_labels
    from pipeline.tokenizer import PAD_ID

    labels = [f"class_{i}" for i in range(s.classes)]
    write_labels(labels, os.path.dirname(tokenizer_path))  # beside spm.model
    module = BenchExport(model, cfg, tokenizer_path, labels)
    big = s.latency_batch
    sample_texts = [texts[i % len(texts)] for i in range(max(big, s.calibration_examples))]
    ids = module.token_ids(sample_texts)
    # Real token ids (padded texts) for the timed calls.
    batches = {1: ids[:1], big: ids[:big]}
    text_batches = {1: tf.constant(sample_texts[:1]), big: tf.constant(sample_texts[:big])}
    result: dict = {"batch_sizes": [1, big], "models": {}, "notes": []}

    start = time.time()
    version_dir = export_serving(module, work_dir, "bench", 1, log=lambda m: None,
                                 check_ops=True)
    result["saved_model"] = {"how": "export.saved_model.export_serving with the "
                             "text-classification export module (the project's "
                             "export: ExportArchive, op check)",
                             "size_bytes": dir_size(version_dir),
                             "export_seconds": round(time.time() - start, 1)}
    log(f"[bench] SavedModel exported ({time.time() - start:.0f}s)")
    loaded = tf.saved_model.load(version_dir)
    token_sig = loaded.signatures["token_ids"]
    text_sig = loaded.signatures["serving_default"]

    e = ExportConfig()
    recipe = QuantizationRecipe(
        calibration_inputs=ids[:s.calibration_examples] if "int8" in s.variants else None,
        mask_fill_value=e.int8_mask_fill_value, float_ops=list(e.int8_float_ops),
        per_channel=e.int8_per_channel, int8_output=e.int8_output)
    failures: dict[str, str] = {}
    start = time.time()
    paths = export_tflite(module, s.variants, os.path.join(work_dir, "edge"),
                          log=lambda m: log(m.replace("[export]", "[bench]")),
                          recipe=recipe, failures=failures)
    result["tflite_export_seconds"] = round(time.time() - start, 1)
    result["tflite_failures"] = failures

    @tf.function
    def keras_forward(token_ids):
        return tf.nn.softmax(model({"token_ids": token_ids,
                                    "padding_mask": tf.not_equal(token_ids, PAD_ID)},
                                   training=False), axis=-1)

    cases, meta = {}, {}
    runs = {1: s.latency_runs, big: max(2, s.latency_runs // 5)}
    rounds = max(2, min(s.repeats, 5))

    def add(name, kind, threads, batch, fn, **extra):
        key = f"{name} | batch {batch} | {threads}"
        cases[key] = (fn, max(1, runs[batch] // rounds))
        meta[key] = {"model": name, "kind": kind, "threads": threads, "batch": batch,
                     **extra}

    for batch in (1, big):
        x = tf.constant(batches[batch])
        t = text_batches[batch]
        add("Keras (tf.function)", "tensorflow", "tf", batch,
            lambda x=x: keras_forward(x).numpy())
        add("SavedModel token_ids", "tensorflow", "tf", batch,
            lambda x=x: token_sig(token_ids=x)["probabilities"].numpy())
        add("SavedModel text (tokenization in graph)", "tensorflow", "tf", batch,
            lambda t=t: text_sig(text=t)["probabilities"].numpy())
        for variant, path in paths.items():
            for threads in (1, 2):
                runner = TFLiteModel(path, num_threads=threads)
                add(f"TFLite {variant}", "tflite", threads, batch,
                    lambda r=runner, x=batches[batch]: r(SIGNATURE, **{INPUT_NAME: x})[
                        OUTPUT_NAME], variant=variant, size_bytes=os.path.getsize(path))
    start = time.time()
    samples = interleave(cases, repeats=rounds, warmup=max(2, s.warmup), per_call=True,
                         label="latency")
    log(f"[bench] latency measured ({time.time() - start:.0f}s)")
    for key, seconds in samples.items():
        info = meta[key]
        ms = sorted(1e3 * x for x in seconds)
        info.update({"median_ms": statistics.median(ms),
                     "p90_ms": float(np.percentile(ms, 90)), "runs": len(ms)})
        result["models"][key] = info
    result["tf_threads"] = "TensorFlow's default thread pools (all usable cores)"
    return result


def edge_ratio(latency: dict) -> dict | None:
    """Fastest TFLite (variant, threads) at batch 1 over float32 at its own
    fastest thread count."""
    rows = [r for r in latency["models"].values() if r["kind"] == "tflite"
            and r["batch"] == 1]
    float32 = [r for r in rows if r["variant"] == "float32"]
    if not rows or not float32:
        return None
    fastest = min(rows, key=lambda r: r["median_ms"])
    base = min(float32, key=lambda r: r["median_ms"])
    return {"variant": fastest["variant"], "threads": fastest["threads"],
            "median_ms": fastest["median_ms"], "float32_median_ms": base["median_ms"],
            "float32_threads": base["threads"],
            "ratio": fastest["median_ms"] / base["median_ms"]}


# -------------------------------------------------------------- all of it


def targets(results: dict) -> list[dict]:
    """Each target of issue #8 with its measured ratio and whether it was met."""
    t, p = results["training"], results["input_pipeline"]
    edge = results["latency"].get("edge_ratio")
    rows = [
        {"what": "training throughput ours (fastest) / reference",
         "target": f">= {TARGET_TRAINING_RATIO:.1f}x",
         "measured": t["ratio_fastest_vs_reference"],
         "met": t["ratio_fastest_vs_reference"] >= TARGET_TRAINING_RATIO},
        {"what": "input pipeline (raw text, first epoch) / training consumption",
         "target": f">= {TARGET_INPUT_RATIO:.0f}x", "measured": p["ratio"],
         "met": p["ratio"] >= TARGET_INPUT_RATIO},
    ]
    if edge:
        rows.append({"what": "edge latency fastest TFLite / float32 (batch 1)",
                     "target": f"<= {TARGET_EDGE_RATIO}", "measured": edge["ratio"],
                     "met": edge["ratio"] <= TARGET_EDGE_RATIO})
    return rows


def measure_all(s: Settings, command: str) -> dict:
    """Runs every section; returns the results as one JSON-ready dict (what
    docs/benchmarks.json holds). `command` is the bench's command line."""
    started = time.time()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_start = load_average()
    log(f"== bench: {', '.join(f'{k} {v}' for k, v in s.shape().items())}; "
        f"load average at start {load_start}")

    import keras

    from pipeline.config import TokenizerConfig
    from pipeline.tokenizer import set_global_seed, train_sentencepiece, vocabulary_size

    set_global_seed(s.seed)
    machine = machine_info()
    versions = library_versions()
    cfg = experiment_config(s)
    results: dict = {"date": date, "command": command, "machine": machine,
                     "versions": versions, "load_average_start": load_start,
                     "niceness_start": niceness(),
                     "shape": s.shape(), "settings": asdict(s), "sections_seconds": {}}
    sections = results["sections_seconds"]
    work_dir = tempfile.mkdtemp(prefix="bench-")
    try:
        # 3 (first, it needs no model). The corpus and a real tokenizer.
        t0 = time.time()
        texts, labels, corpus = load_corpus(s.input_texts, s.seed)
        labels = [x % s.classes for x in labels]
        tokenizer_path = train_sentencepiece(
            texts, TokenizerConfig(vocabulary_size=s.vocab),
            os.path.join(work_dir, "tokenizer"), log=lambda m: None)
        spm_vocab = vocabulary_size(tokenizer_path)
        if spm_vocab > s.vocab:
            raise ValueError(f"the tokenizer has {spm_vocab} pieces, more than --vocab {s.vocab}")
        log(f"[bench] corpus: {corpus}; SentencePiece vocabulary {spm_vocab:,} "
            f"({time.time() - t0:.0f}s)")
        t0 = time.time()
        pipeline_rates = measure_input_pipeline(s, cfg, texts, labels, tokenizer_path)
        pipeline_rates.update({"corpus": corpus, "tokenizer_vocabulary": spm_vocab})
        results["input_pipeline"] = pipeline_rates
        sections["input_pipeline"] = round(time.time() - t0, 1)
        log(f"[bench] input pipeline: {pipeline_rates['first_epoch_examples_per_second']:,.0f}"
            f" examples/s raw text -> batches (first epoch), "
            f"{pipeline_rates['cached_epoch_examples_per_second']:,.0f} examples/s cached "
            f"({time.time() - t0:.0f}s)")

        # 1 and 2. Training throughput, matmul peak, where the time goes.
        training, model = measure_training(s, cfg)
        sections.update(training.pop("sections_seconds"))
        results.update(training)

        # 3 (ratio). Input pipeline against the fastest training rate.
        rate = results["training"]["cases"][results["training"]["fastest"]][
            "examples_per_second"]
        pipeline_rates["training_consumption_examples_per_second"] = rate
        pipeline_rates["ratio"] = pipeline_rates["first_epoch_examples_per_second"] / rate
        pipeline_rates["ratio_cached"] = \
            pipeline_rates["cached_epoch_examples_per_second"] / rate

        # 4. Latency, from the float32 model.
        gc.collect()
        t0 = time.time()
        latency = measure_latency(s, model, cfg, texts, tokenizer_path, work_dir)
        latency["edge_ratio"] = edge_ratio(latency)
        results["latency"] = latency
        sections["latency"] = round(time.time() - t0, 1)
    finally:
        keras.config.set_dtype_policy("float32")
        shutil.rmtree(work_dir, ignore_errors=True)

    results["load_average_end"] = load_average()
    results["niceness_end"] = niceness()
    results["seconds"] = round(time.time() - started, 1)
    results["shared_machine"] = bool(load_start and load_start[0] > 1.0)
    results["targets"] = targets(results)
    return results
