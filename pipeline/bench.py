"""`python -m pipeline bench`: where the time goes, in one process (issue #8).

    python -m pipeline bench                       # reference shape, writes docs/
    python -m pipeline bench --quick --out-json /tmp/b.json --out-md /tmp/B.md

At one model shape (default: vocabulary 8,000, sequence 128, hidden 256, 4
heads, feed-forward 1,024, 4 layers, batch 32, 4 classes) it measures

1. training examples/s of our `TextClassifier` (pipeline.train.build_model,
   make_optimizer and make_train_step under the default strategy, fed from an
   in-memory tf.data iterator of fixed-shape random token batches) in float32
   and mixed_bfloat16, each with XLA off and on, and of a keras-hub reference
   model of the same shape trained with `train_on_batch`;
2. the GFLOP/s this achieves (FLOPs counted analytically, see
   `forward_flops_per_example`) against a tf.matmul peak measured in the run;
3. the tf.data input pipeline alone (pipeline.input.make_train_dataset with a
   SentencePiece tokenizer trained in the run), against the training rate;
4. batch-1 and batch-32 latency of the Keras model, the SavedModel (written by
   export.saved_model.export_serving) and each TFLite variant (export.tflite)
   with ai-edge-litert at 1 and 2 threads. Weights are random, so only speed
   is measured here; the accuracy of each variant is in the export report.

Timings exclude warm-up calls and are medians of repeated runs. The cases of a
section run interleaved (a, b, c, a, b, c, ...; the order rotates each
repeat), so a background load slows all of them alike. Results go to a JSON
file and a markdown page (default docs/benchmarks.json, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import glob
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

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
WORDNET_NOUNS = "/usr/share/wordnet/data.noun"
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")

EXAMPLES = """\
examples:
  python -m pipeline bench          # reference shape -> docs/benchmarks.json, docs/BENCHMARKS.md
  python -m pipeline bench --layers 2 --hidden 128 --ff 512 \
      --out-json /tmp/b.json --out-md /tmp/B.md
  python -m pipeline bench --repeats 7 --steps 10 --variants float32,int8
  python -m pipeline bench --quick --out-json /tmp/b.json --out-md /tmp/B.md   # tiny shape, ~1 min

Run it on an otherwise idle machine: the load average at the start is written
into the report, which says so when the machine was shared.
"""


def log(message: str) -> None:
    print(message, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench flags; shape and run settings default to None (= from --quick or
    the reference shape)."""
    shape = parser.add_argument_group(
        "model shape (default: the reference shape "
        + ", ".join(f"{k} {v}" for k, v in REFERENCE_SHAPE.items()) + ")")
    for key, text in (("vocab", "vocabulary size"), ("seq", "sequence length"),
                      ("hidden", "hidden size"), ("heads", "attention heads"),
                      ("ff", "feed-forward (intermediate) size"),
                      ("layers", "encoder layers"), ("batch", "training batch size"),
                      ("classes", "number of classes")):
        shape.add_argument(f"--{key}", type=int, metavar="N", help=text)
    shape.add_argument("--dropout", type=float, default=0.1,
                       help="dropout of both models (default 0.1, the project's default)")
    run = parser.add_argument_group("run settings")
    run.add_argument("--quick", action="store_true",
                     help="tiny shape and few repeats (tests, smoke runs): "
                     + ", ".join(f"{k} {v}" for k, v in QUICK_SHAPE.items()))
    run.add_argument("--repeats", type=int, metavar="N",
                     help="timed repeats per case (median reported; default 5)")
    run.add_argument("--steps", type=int, metavar="N",
                     help="training steps per timed repeat (default 4)")
    run.add_argument("--warmup", type=int, metavar="N",
                     help="untimed warm-up steps/calls per case (default 2)")
    run.add_argument("--matmul-size", type=int, metavar="N",
                     help="side of the square matrices of the matmul peak (default 2048)")
    run.add_argument("--input-texts", type=int, metavar="N",
                     help="texts in the input-pipeline corpus (default 20000)")
    run.add_argument("--latency-runs", type=int, metavar="N",
                     help="timed batch-1 calls per case (batch-N: a fifth; default 50)")
    run.add_argument("--latency-batch", type=int, metavar="N",
                     help="the larger latency batch (default 32)")
    run.add_argument("--variants", metavar="LIST",
                     help="TFLite variants, comma-separated "
                     "(default float32,float16,dynamic_range,int8)")
    run.add_argument("--calibration-examples", type=int, metavar="N",
                     help="int8 calibration texts (default 100)")
    run.add_argument("--profile-steps", type=int, metavar="N",
                     help="training steps traced for the op profile (0 = none; default 3)")
    run.add_argument("--reference-keras-hub-defaults", action="store_true",
                     help="reference encoder with keras-hub's defaults (relu, post-norm, "
                     "no dropout) instead of our block's settings (gelu, pre-norm, "
                     "--dropout)")
    run.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    out = parser.add_argument_group("output")
    out.add_argument("--out-json", default="docs/benchmarks.json",
                     help="JSON results (default docs/benchmarks.json)")
    out.add_argument("--out-md", default="docs/BENCHMARKS.md",
                     help="markdown report (default docs/BENCHMARKS.md)")


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


# ---------------------------------------------------------- the benchmark


def experiment_config(s: Settings):
    from pipeline.config import ExperimentConfig

    cfg = ExperimentConfig(name="bench")
    m = cfg.model
    m.hidden_dim, m.intermediate_dim, m.num_heads = s.hidden, s.ff, s.heads
    m.num_layers, m.max_sequence_length, m.dropout = s.layers, s.seq, s.dropout
    cfg.train.global_batch_size = s.batch
    cfg.tokenizer.vocabulary_size = s.vocab
    cfg.validate()
    return cfg


def random_batches(s: Settings, count: int = 8):
    """`count` fixed-shape batches of random token ids (no padding) and labels."""
    import numpy as np

    rng = np.random.default_rng(s.seed)
    ids = rng.integers(1, s.vocab, size=(count * s.batch, s.seq), dtype=np.int32)
    labels = rng.integers(0, s.classes, size=count * s.batch, dtype=np.int32)
    return ids, labels


class OursCase:
    """Our TextClassifier with the project's optimizer and distributed step."""

    def __init__(self, cfg, s: Settings, precision: str, jit_compile: bool):
        import keras
        import tensorflow as tf

        from pipeline.distribute import get_strategy
        from pipeline.train import build_model, make_optimizer, make_train_step

        self.precision, self.jit_compile = precision, jit_compile
        # The dtype policy is global: set it for this model only.
        keras.config.set_dtype_policy(precision)
        try:
            self.strategy = get_strategy(cfg.runtime)
            with self.strategy.scope():
                self.model = build_model(cfg, s.vocab, s.classes)
                self.optimizer = make_optimizer(cfg.train, total_steps=100_000)
                self.optimizer.build(self.model.trainable_variables)
        finally:
            keras.config.set_dtype_policy("float32")
        num_classes = s.classes
        loss_fn = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=cfg.train.label_smoothing, reduction=None)
        model = self.model

        def compute_loss(inputs, labels):  # as pipeline.train.train's
            logits = model(inputs, training=True)
            per_example = loss_fn(tf.one_hot(labels, num_classes), logits)
            correct = tf.reduce_sum(tf.cast(
                tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                tf.float32))
            return per_example, correct

        self.compute_loss = compute_loss
        self.train_step = make_train_step(model, self.optimizer, self.strategy,
                                          compute_loss, s.batch, jit_compile=jit_compile)
        ids, labels = random_batches(s)
        inputs = {"token_ids": ids, "padding_mask": ids != 0}
        dataset = tf.data.Dataset.from_tensor_slices((inputs, labels)) \
            .batch(s.batch, drop_remainder=True).cache().repeat().prefetch(2)
        self.iterator = iter(self.strategy.experimental_distribute_dataset(dataset))
        self.no_stop = tf.constant(0.0)
        self.fixed_batch = ({"token_ids": tf.constant(ids[:s.batch]),
                             "padding_mask": tf.constant(ids[:s.batch] != 0)},
                            tf.constant(labels[:s.batch]))
        self.global_batch = s.batch

    @property
    def name(self) -> str:
        return f"ours {self.precision}" + (" + XLA" if self.jit_compile else "")

    def step(self) -> None:
        loss, _, _ = self.train_step(self.iterator, self.no_stop)
        float(loss)  # waits for the step

    def phase_functions(self):
        """forward only, and forward + backward (no optimizer update), as
        callables on a fixed batch, compiled like the training step."""
        import tensorflow as tf

        model, compute_loss, batch = self.model, self.compute_loss, self.global_batch

        def forward(inputs, labels):
            per_example, _ = compute_loss(inputs, labels)
            return tf.nn.compute_average_loss(per_example, global_batch_size=batch)

        def forward_backward(inputs, labels):
            with tf.GradientTape() as tape:
                loss = forward(inputs, labels)
            return loss, tape.gradient(loss, model.trainable_variables)

        fwd = tf.function(forward, jit_compile=self.jit_compile or None)
        fwd_bwd = tf.function(forward_backward, jit_compile=self.jit_compile or None)
        inputs, labels = self.fixed_batch

        def run_forward():
            float(fwd(inputs, labels))

        def run_forward_backward():
            loss, _ = fwd_bwd(inputs, labels)
            float(loss)

        return run_forward, run_forward_backward


class ReferenceCase:
    """keras-hub encoder of the same shape, compiled with Adam, train_on_batch."""

    def __init__(self, s: Settings):
        import keras
        import keras_hub
        import tensorflow as tf

        keras.config.set_dtype_policy("float32")
        if s.reference_keras_hub_defaults:
            block = {}
        else:  # the settings of our encoder block, so both do the same work
            block = {"dropout": s.dropout, "activation": "gelu", "normalize_first": True}
        self.block_settings = {"dropout": 0.0, "activation": "relu",
                               "normalize_first": False, **block}
        inputs = keras.Input((s.seq,), dtype="int32", name="token_ids")
        x = keras_hub.layers.TokenAndPositionEmbedding(
            vocabulary_size=s.vocab, sequence_length=s.seq, embedding_dim=s.hidden)(inputs)
        for _ in range(s.layers):
            x = keras_hub.layers.TransformerEncoder(
                intermediate_dim=s.ff, num_heads=s.heads, **block)(x)
        x = keras.layers.GlobalAveragePooling1D()(x)
        outputs = keras.layers.Dense(s.classes)(x)
        self.model = keras.Model(inputs, outputs, name="keras_hub_reference")
        self.model.compile(
            optimizer=keras.optimizers.Adam(),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        ids, labels = random_batches(s)
        self.batches = [(tf.constant(ids[i:i + s.batch]), tf.constant(labels[i:i + s.batch]))
                        for i in range(0, len(ids), s.batch)]
        self.position = 0

    @property
    def jit_compile(self) -> bool:
        return bool(self.model.jit_compile)

    def step(self) -> None:
        x, y = self.batches[self.position % len(self.batches)]
        self.position += 1
        self.model.train_on_batch(x, y)  # returns numpy: waits for the step


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


def measure_input_pipeline(s: Settings, cfg, texts, labels, tokenizer_path: str) -> dict:
    """Examples/s of pipeline.input.make_train_dataset from raw text to batches:
    the first epoch (tokenization, cache fill, shuffle, bucketing, batching) and
    the cached epochs after it."""
    import tensorflow as tf

    from pipeline.input import make_train_dataset
    from pipeline.tokenizer import InGraphTokenizer, read_model

    tokenizer = InGraphTokenizer(read_model(tokenizer_path), s.seq)
    source = tf.data.Dataset.from_tensor_slices(
        {"text": tf.constant(texts), "label": tf.constant(labels, tf.int32)})
    batches_per_epoch = max(1, len(texts) // s.batch)
    cold, warm = [], []
    lengths = []
    for _ in range(max(3, min(s.repeats, 5))):
        dataset = make_train_dataset(source, tokenizer, cfg, s.batch)
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


# ---------------------------------------------------------------- latency


def measure_latency(s: Settings, model, texts: list[str], tokenizer_path: str,
                    work_dir: str) -> dict:
    """Batch-1 and batch-N latency of the Keras model, the SavedModel and each
    TFLite variant (ai-edge-litert, 1 and 2 threads), interleaved."""
    import numpy as np
    import tensorflow as tf

    from export.quantize import QuantizationRecipe
    from export.saved_model import dir_size, export_serving
    from export.tflite import TFLiteClassifier, export_tflite
    from pipeline.config import ExportConfig
    from pipeline.tokenizer import PAD_ID, InGraphTokenizer, read_model

    tokenizer = InGraphTokenizer(read_model(tokenizer_path), s.seq)
    big = s.latency_batch
    sample_texts = [texts[i % len(texts)] for i in range(max(big, s.calibration_examples))]
    ids = tokenizer(tf.constant(sample_texts)).numpy()
    # Real token ids (padded texts) for the timed calls.
    batches = {1: ids[:1], big: ids[:big]}
    text_batches = {1: tf.constant(sample_texts[:1]), big: tf.constant(sample_texts[:big])}
    result: dict = {"batch_sizes": [1, big], "models": {}, "notes": []}

    start = time.time()
    labels = [f"class_{i}" for i in range(s.classes)]
    version_dir = export_serving(model, tokenizer_path, labels, work_dir, "bench", 1,
                                 log=lambda m: None, check_ops=True)
    result["saved_model"] = {"how": "export.saved_model.export_serving (the project's "
                             "export: ExportArchive, op check)",
                             "size_bytes": dir_size(version_dir),
                             "export_seconds": round(time.time() - start, 1)}
    log(f"[bench] SavedModel exported ({time.time() - start:.0f}s)")
    loaded = tf.saved_model.load(version_dir)
    token_sig = loaded.signatures["token_ids"]
    text_sig = loaded.signatures["serving_default"]

    e = ExportConfig()
    recipe = QuantizationRecipe(
        calibration_ids=ids[:s.calibration_examples] if "int8" in s.variants else None,
        mask_fill_value=e.int8_mask_fill_value, float_ops=list(e.int8_float_ops),
        per_channel=e.int8_per_channel, int8_output=e.int8_output)
    failures: dict[str, str] = {}
    start = time.time()
    paths = export_tflite(model, s.variants, os.path.join(work_dir, "edge"),
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
                runner = TFLiteClassifier(path, num_threads=threads)
                add(f"TFLite {variant}", "tflite", threads, batch,
                    lambda r=runner, x=batches[batch]: r(x), variant=variant,
                    size_bytes=os.path.getsize(path))
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


# -------------------------------------------------------------------- main


def run_bench(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Runs the benchmark; `argv` (the bench flags) is quoted in the report."""
    try:
        s = resolve(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started = time.time()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start = load_average()
    command = shlex.join(["python", "-m", "pipeline", "bench", *(argv or [])])
    log(f"== bench: {', '.join(f'{k} {v}' for k, v in s.shape().items())}; "
        f"load average at start {load_start}")

    import keras

    from pipeline.config import TokenizerConfig
    from pipeline.tokenizer import train_sentencepiece, vocabulary_size

    keras.utils.set_random_seed(s.seed)
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

        # 1. Training throughput.
        t0 = time.time()
        reference = ReferenceCase(s)
        ours = [OursCase(cfg, s, precision, jit)
                for precision in ("float32", "mixed_bfloat16") for jit in (False, True)]
        log(f"[bench] models built: ours {ours[0].model.count_params():,} parameters, "
            f"reference {reference.model.count_params():,} "
            f"({time.time() - t0:.0f}s); warming up (XLA compiles) ...")
        cases = {"reference": (reference.step, s.steps)}
        cases.update({case.name: (case.step, s.steps) for case in ours})
        # 2. The matmul peak runs in the same rounds, so it sees the same load.
        cases.update(matmul_cases(s))
        samples = interleave(cases, repeats=s.repeats, warmup=s.warmup,
                             label="training and matmul peak")
        peak = results["matmul_peak"] = matmul_peak(s, samples)
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
        results["training"] = {
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
                           "optimizer": "AdamW (pipeline.train.make_optimizer: warm-up "
                                        "+ cosine schedule, global-norm clipping)",
                           "loop": "pipeline.train.make_train_step, default strategy, "
                                   "tf.data iterator"},
            "flops_per_example_forward": forward_flops_per_example(
                s.seq, s.hidden, s.ff, s.layers, s.classes),
            "flops_per_example_training": flops,
        }
        sections["training"] = round(time.time() - t0, 1)

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
        results["where_the_time_goes"] = {"phases": phases, "op_profiles": profiles}
        sections["where_the_time_goes"] = round(time.time() - t0, 1)

        # 3 (ratio). Input pipeline against the fastest training rate.
        pipeline_rates["training_consumption_examples_per_second"] = \
            training[fastest_name]["examples_per_second"]
        pipeline_rates["ratio"] = pipeline_rates["first_epoch_examples_per_second"] / \
            training[fastest_name]["examples_per_second"]
        pipeline_rates["ratio_cached"] = pipeline_rates["cached_epoch_examples_per_second"] \
            / training[fastest_name]["examples_per_second"]

        # 4. Latency, from the float32 model.
        model = ours[0].model
        for case in ours[1:]:
            del case.model
        del ours[1:], reference, cases, split_cases
        gc.collect()
        t0 = time.time()
        latency = measure_latency(s, model, texts, tokenizer_path, work_dir)
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
    text = format_summary(results)
    log(text)
    write_json(args.out_json, results)
    write_markdown(args.out_md, results, text)
    log(f"wrote {args.out_json}, {args.out_md} ({results['seconds'] / 60:.1f} min)")
    return 0


def targets(results: dict) -> list[dict]:
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


def format_summary(r: dict) -> str:
    t, p, lat = r["training"], r["input_pipeline"], r["latency"]
    peak = r["matmul_peak"]
    shape = ", ".join(f"{k} {v}" for k, v in r["shape"].items())
    lines = ["", f"== bench results ({shape})",
             f"machine: {r['machine']['cpu']}, {r['machine']['usable_cpus']} usable CPUs; "
             f"load average {r['load_average_start']} at start, "
             f"{r['load_average_end']} at end; niceness {r.get('niceness_start')} at "
             f"start, {r.get('niceness_end')} at end",
             "", f"training (examples/s, median of {r['settings']['repeats']} x "
             f"{r['settings']['steps']} steps, warm-up excluded):"]
    for name, row in t["cases"].items():
        label = "reference keras-hub (train_on_batch, jit_compile=" \
            f"{row['jit_compile']})" if name == "reference" else name
        lines.append(f"  {label:<50} {row['examples_per_second']:9.1f}  "
                     f"{row['step_ms']:8.1f} ms/step  {row['gflops']:6.1f} GFLOP/s  "
                     f"{row['utilisation_percent']:5.1f}% of {row['peak_dtype']} peak  "
                     f"{row['vs_reference']:.2f}x")
    lines += [f"  fastest of ours: {t['fastest']}",
              f"training throughput ours/reference: {t['ratio_fastest_vs_reference']:.2f}x",
              "training throughput ours float32/reference: "
              f"{t['ratio_float32_vs_reference']:.2f}x",
              "",
              f"FLOPs: {t['flops_per_example_training'] / 1e9:.3f} GFLOP per training "
              f"example (3 x {t['flops_per_example_forward'] / 1e9:.3f} forward)",
              f"matmul peak ({peak['matrix_size']}x{peak['matrix_size']}, median): "
              f"float32 {peak['float32']['gflops_median']:.1f} GFLOP/s, bfloat16 "
              f"{peak['bfloat16']['gflops_median']:.1f} GFLOP/s",
              f"  ours fastest: {t['cases'][t['fastest']]['gflops']:.1f} GFLOP/s = "
              f"{t['cases'][t['fastest']]['utilisation_percent']:.1f}% of the "
              f"{t['cases'][t['fastest']]['peak_dtype']} peak",
              "",
              f"input pipeline ({p['corpus']}): raw text -> batches "
              f"{p['first_epoch_examples_per_second']:,.0f} examples/s (first epoch, "
              f"tokenization included), cached epochs "
              f"{p['cached_epoch_examples_per_second']:,.0f} examples/s; training consumes "
              f"{p['training_consumption_examples_per_second']:,.1f} examples/s",
              f"input pipeline / training consumption: {p['ratio']:.1f}x",
              f"  (cached epochs / training consumption: {p['ratio_cached']:.1f}x)",
              "", "latency (ms, median; weights are random: speed only, no accuracy "
              "check here):"]
    lines += ["  " + line for line in latency_table(lat, markdown=False)]
    edge = lat.get("edge_ratio")
    if edge:
        lines.append(f"edge latency fastest/float32 (batch 1, {edge['variant']}, "
                     f"{edge['threads']} threads): {edge['ratio']:.2f}")
    lines += ["", "targets of issue #8:"]
    for row in r["targets"]:
        lines.append(f"  {row['what']}: {row['measured']:.2f} (target {row['target']}) "
                     f"{'met' if row['met'] else 'MISSED'}")
    return "\n".join(lines)


def latency_table(lat: dict, markdown: bool) -> list[str]:
    """Rows: model; columns: batch x threads."""
    big = lat["batch_sizes"][1]
    columns = [(1, "tf"), (1, 1), (1, 2), (big, "tf"), (big, 1), (big, 2)]
    rows: dict[str, dict] = {}
    for info in lat["models"].values():
        rows.setdefault(info["model"], {})[(info["batch"], info["threads"])] = info
    headers = ["model", "size MB"] + [
        f"batch {b}, {'TF' if th == 'tf' else f'{th} thr'}" for b, th in columns]
    wanted = [c for c in columns if any(c in cells for cells in rows.values())]
    headers = headers[:2] + [h for h, c in zip(headers[2:], columns) if c in wanted]
    out = []
    if markdown:
        out.append("| " + " | ".join(headers) + " |")
        out.append("|---|" + "---:|" * (len(headers) - 1))
    else:
        out.append(f"{headers[0]:<42}" + "".join(f"{h:>17}" for h in headers[1:]))
    for name, cells in rows.items():
        size = next((c.get("size_bytes") for c in cells.values() if c.get("size_bytes")),
                    None)
        if size is None and name.startswith("SavedModel"):
            size = lat.get("saved_model", {}).get("size_bytes")
        values = [f"{size / 1e6:.2f}" if size else ""]
        values += [f"{cells[c]['median_ms']:.2f}" if c in cells else "" for c in wanted]
        if markdown:
            out.append(f"| {name} | " + " | ".join(values) + " |")
        else:
            out.append(f"{name:<42}" + "".join(f"{v:>17}" for v in values))
    return out


def observations(r: dict) -> list[str]:
    """Plain-language reading of the figures, computed from them (markdown)."""
    t, p, lat, peak = r["training"], r["input_pipeline"], r["latency"], r["matmul_peak"]
    cases, out = t["cases"], []
    ref = cases["reference"]["examples_per_second"]
    f32 = cases["ours float32"]
    fastest = cases[t["fastest"]]
    out.append(
        f"Fastest of ours: {t['fastest']}, {fastest['examples_per_second']:.1f} examples/s "
        f"= {t['ratio_fastest_vs_reference']:.2f}x the keras-hub reference "
        f"({ref:.1f}); in float32 ours runs at {t['ratio_float32_vs_reference']:.2f}x it.")
    for precision in ("float32", "mixed_bfloat16"):
        off, on = cases.get(f"ours {precision}"), cases.get(f"ours {precision} + XLA")
        if off and on:
            out.append(f"XLA (`jit_compile`) with {precision}: "
                       f"{on['examples_per_second'] / off['examples_per_second']:.2f}x the "
                       "rate without it.")
    bf16 = cases.get("ours mixed_bfloat16")
    if bf16:
        out.append(f"mixed_bfloat16 without XLA: "
                   f"{bf16['examples_per_second'] / f32['examples_per_second']:.2f}x float32 "
                   f"(the bf16 matmul peak is "
                   f"{peak['bfloat16']['gflops_median'] / peak['float32']['gflops_median']:.2f}"
                   "x the float32 one).")
    ceiling = peak["bfloat16"]["gflops_median"] * 1e9 / t["flops_per_example_training"]
    out.append(
        f"Ceiling: at 100% of the bfloat16 matmul peak and with no other work, a "
        f"training step of this shape would run at {ceiling:.0f} examples/s = "
        f"{ceiling / ref:.2f}x the reference. "
        + ("So the 2x target is out of reach on this CPU whatever the code does; "
           if ceiling / ref < TARGET_TRAINING_RATIO else
           f"The 2x target needs {100 * TARGET_TRAINING_RATIO * ref / ceiling:.0f}% "
           "utilisation of the bfloat16 peak; ")
        + f"ours reaches {fastest['utilisation_percent']:.0f}% of its precision's peak.")
    profiles = r["where_the_time_goes"]["op_profiles"]
    for name, prof in profiles.items():
        share = prof["by_category_percent"].get("matmul / einsum", 0.0)
        out.append(f"{name}: matmul / einsum ops take {share:.0f}% of the profiled op "
                   f"time, the other {100 - share:.0f}% is element-wise, reduction, "
                   "dropout-RNG and bookkeeping work.")
    a, b = profiles.get("ours float32"), profiles.get("ours mixed_bfloat16")
    if a and b:
        ms_a = {o["type"]: o["ms_per_step"] for o in a["top_op_types"]}
        ms_b = {o["type"]: o["ms_per_step"] for o in b["top_op_types"]}
        grew = sorted(((ms_b[k] - ms_a[k], k) for k in ms_a.keys() & ms_b.keys()
                       if ms_b[k] > 1.2 * ms_a[k]), reverse=True)
        shrank = sorted(((ms_a[k] - ms_b[k], k) for k in ms_a.keys() & ms_b.keys()
                         if ms_b[k] < ms_a[k] / 1.2), reverse=True)
        if shrank:
            out.append("From float32 to mixed_bfloat16 these ops got faster: " + ", ".join(
                f"`{k}` {ms_a[k]:.0f} -> {ms_b[k]:.0f} ms/step" for _, k in shrank) + ".")
        if grew:
            out.append("These got slower (their bf16 kernels are slower than the "
                       "float32 ones here): " + ", ".join(f"`{k}` {ms_a[k]:.0f} -> {ms_b[k]:.0f} ms/step"
                                             for _, k in grew) + ".")
    out.append(f"Input pipeline: {p['ratio']:.0f}x the training consumption from raw text "
               f"({p['ratio_cached']:.0f}x from the cache), so training is never "
               "input-bound at this shape.")
    edge = lat.get("edge_ratio")
    f32_rows = [m for m in lat["models"].values() if m.get("variant") == "float32"
                and m["batch"] == 1]
    if edge and f32_rows:
        best = min(f32_rows, key=lambda m: m["median_ms"])
        gflops = t["flops_per_example_forward"] / (best["median_ms"] / 1e3) / 1e9
        out.append(
            f"Edge: the fastest variant at batch 1 is {edge['variant']} with "
            f"{edge['threads']} thread(s), {edge['ratio']:.2f}x float32's latency. Float32 "
            f"TFLite at batch 1 already computes {gflops:.0f} GFLOP/s "
            f"({best['threads']} thread(s); TensorFlow's float32 matmul peak on all "
            f"cores was {peak['float32']['gflops_median']:.0f}); a ratio of {TARGET_EDGE_RATIO} would need "
            f"{1 / TARGET_EDGE_RATIO:.1f}x from int8 kernels over all of the forward pass, "
            "while the default int8 recipe keeps attention, softmax, LayerNorm and "
            "element-wise ops in float.")
    return out


def write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def _pct(x: float) -> str:
    return f"{x:.1f}%"


def write_markdown(path: str, r: dict, summary_text: str) -> None:
    t, p, lat, peak = r["training"], r["input_pipeline"], r["latency"], r["matmul_peak"]
    m, v, s = r["machine"], r["versions"], r["settings"]
    load_note = (
        f"**The machine was shared during this run** (1-minute load average "
        f"{r['load_average_start'][0]} at the start, above 1 on {m['usable_cpus']} CPUs): "
        "other TensorFlow jobs ran at the same time. The cases of each section are "
        "interleaved, so the load hit them alike and the ratios hold better than the "
        "absolute figures." if r["shared_machine"] else
        f"The 1-minute load average was {r['load_average_start'][0]} at the start "
        "(the machine was otherwise quiet).")
    nice = [r.get("niceness_start"), r.get("niceness_end")]
    if any(n for n in nice if n):
        load_note += (f" This process ran at niceness {nice[0]} at the start and "
                      f"{nice[1]} at the end (another job lowered its priority), so it "
                      "got less CPU time than the jobs beside it.")
    lines = [
        "# Benchmarks", "",
        "Written by `python -m pipeline bench` (`pipeline/bench.py`, issue #8). "
        "One process measures training throughput, FLOP utilisation, the tf.data "
        "input pipeline and serving / edge latency at one model shape.", "",
        "```bash", r["command"], "```", "",
        f"Run {r['date']}, {r['seconds'] / 60:.1f} min wall time.", "",
        "## Machine", "",
        "| | |", "|---|---|",
        f"| CPU | {m['cpu']} |",
        f"| CPUs | {m['logical_cpus']} logical, {m['usable_cpus']} usable by this process |",
        f"| relevant CPU flags | {', '.join(m['cpu_flags']) or 'none'}"
        f"{'' if any(f.startswith('amx') for f in m['cpu_flags']) else ' (no AMX)'} |",
        f"| memory | {m['memory_gb']} GB |",
        f"| load average (1, 5, 15 min) | {r['load_average_start']} at start, "
        f"{r['load_average_end']} at end |",
        f"| niceness of the bench process | {r.get('niceness_start')} at start, "
        f"{r.get('niceness_end')} at end |",
        f"| software | Python {m['python']}, TensorFlow {v['tensorflow']}, Keras "
        f"{v['keras']}, keras-hub {v['keras_hub']}, ai-edge-litert {v['ai_edge_litert']}, "
        f"numpy {v['numpy']}; oneDNN {v['onednn']} |",
        "", load_note, "",
        "## Targets", "",
        "| what | target | measured | |", "|---|---|---:|---|"]
    for row in r["targets"]:
        lines.append(f"| {row['what']} | {row['target']} | {row['measured']:.2f} | "
                     f"{'met' if row['met'] else '**missed**'} |")
    shape = r["shape"]
    lines += [
        "", "## Training throughput", "",
        f"Shape: vocabulary {shape['vocab']:,}, sequence {shape['seq']}, hidden "
        f"{shape['hidden']}, {shape['heads']} heads, feed-forward {shape['ff']:,}, "
        f"{shape['layers']} layers, batch {shape['batch']}, {shape['classes']} classes, "
        f"dropout {s['dropout']}. Fixed-shape random token batches (no padding). Median "
        f"of {s['repeats']} repeats of {s['steps']} steps after {s['warmup']} warm-up "
        "steps; the cases ran interleaved.", "",
        f"- **ours**: `TextClassifier` ({t['ours_model']['parameters']:,} parameters) built "
        "by `pipeline.train.build_model`, trained with `pipeline.train.make_train_step` "
        "under the default strategy from a tf.data iterator, optimizer "
        f"{t['ours_model']['optimizer']}. XLA (`jit_compile`) covers forward + backward, "
        "not the optimizer update. Its layers replace three Keras ops in training "
        "only, with the same functions and weights (tests/models/test_fast_training_ops.py): "
        "`models.layers.Dropout` (a 16-bit random draw per element instead of a float), "
        "`models.layers.LayerNormalization` and `models.layers.activations.gelu` (gradients "
        "written out instead of autodiff through the moments and `Erfc`; the GELU's forward "
        "and backward each one fused XLA kernel, the matmuls staying on oneDNN); the attention "
        "projections run as 2-D matmuls instead of broadcast batch matmuls. The reference "
        "runs Keras' own Dropout, LayerNormalization and GELU.",
        f"- **reference**: {t['reference_model']['layers']} "
        f"({t['reference_model']['parameters']:,} parameters), encoder settings "
        f"{t['reference_model']['encoder_settings']}, compiled with Adam and sparse "
        f"categorical cross-entropy, Keras' default `jit_compile` (resolved to "
        f"{t['reference_model']['jit_compile']} on this CPU-only machine), timed with "
        "`train_on_batch`.", "",
        "| model | precision | XLA | examples/s (median) | range | ms/step | GFLOP/s | "
        "utilisation | vs reference |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in t["cases"].items():
        low, high = row["examples_per_second_range"]
        bold = "**" if name == t["fastest"] else ""
        lines.append(
            f"| {bold}{'keras-hub reference' if name == 'reference' else name}{bold} | "
            f"{row['precision']} | {'on' if row['jit_compile'] else 'off'} | "
            f"{row['examples_per_second']:.1f} | {low:.1f} - {high:.1f} | "
            f"{row['step_ms']:.0f} | {row['gflops']:.1f} | "
            f"{_pct(row['utilisation_percent'])} of {row['peak_dtype']} | "
            f"{row['vs_reference']:.2f}x |")
    lines += [
        "", f"Fastest of ours: **{t['fastest']}**. "
        f"`training throughput ours/reference: {t['ratio_fastest_vs_reference']:.2f}x`; "
        f"`training throughput ours float32/reference: "
        f"{t['ratio_float32_vs_reference']:.2f}x`.", "",
        "## FLOPs and utilisation", "",
        f"FLOPs are counted analytically (`pipeline.bench.forward_flops_per_example`): "
        "per layer 4·2·S·H² (Q, K, V, output projections) + 2·2·S²·H (scores and "
        "weighted sum) + 2·2·S·H·FF (feed-forward), plus 2·H·classes for the head; "
        f"training = 3 x forward. Here: {t['flops_per_example_forward'] / 1e9:.3f} GFLOP "
        f"forward, {t['flops_per_example_training'] / 1e9:.3f} GFLOP per training example.",
        "",
        f"Matmul peak, measured in the same rounds as the training cases (`tf.matmul` "
        f"of two {peak['matrix_size']}x{peak['matrix_size']} matrices, median / best of "
        f"{peak['float32']['repeats']} repeats): float32 "
        f"{peak['float32']['gflops_median']:.1f} / {peak['float32']['gflops_best']:.1f} "
        f"GFLOP/s, bfloat16 {peak['bfloat16']['gflops_median']:.1f} / "
        f"{peak['bfloat16']['gflops_best']:.1f} GFLOP/s. Utilisation in the table above "
        "is achieved GFLOP/s over the median peak of the precision the matmuls run in.",
        "",
        "## Input pipeline", "",
        f"`pipeline.input.make_train_dataset` (tensorflow-text SentencePiece in the graph, "
        f"cache, shuffle buffer {p['shuffle_buffer']:,}, bucketing by length: "
        f"{p['bucket_by_length']}, batch {p['batch']}, prefetch) on {p['corpus']}, with a "
        f"SentencePiece model ({p['tokenizer_vocabulary']:,} pieces) trained in the run "
        f"by `pipeline.tokenizer.train_sentencepiece`. Median of {p['repeats']} fresh "
        "pipelines.", "",
        "| | examples/s | / training consumption |", "|---|---:|---:|",
        f"| raw text -> batches, first epoch (tokenization included) | "
        f"{p['first_epoch_examples_per_second']:,.0f} | {p['ratio']:.1f}x |",
        f"| later epochs (tokenized examples from the cache) | "
        f"{p['cached_epoch_examples_per_second']:,.0f} | {p['ratio_cached']:.1f}x |",
        f"| training consumption ({t['fastest']}) | "
        f"{p['training_consumption_examples_per_second']:,.1f} | |", "",
        f"`input pipeline / training consumption: {p['ratio']:.1f}x` (the pipeline was "
        "measured alone; in training it shares the CPUs with the step).", "",
        "## Latency", "",
        f"Milliseconds, median of interleaved calls after warm-up; batch 1 and batch "
        f"{lat['batch_sizes'][1]} of real token ids (padded WordNet texts). Keras and "
        "SavedModel run on TensorFlow's default thread pools (`TF` columns); TFLite with "
        "ai-edge-litert at 1 and 2 threads. The SavedModel is written by "
        f"{lat['saved_model']['how']}; `token_ids` is its int32 signature, `text` its "
        "`serving_default` signature (SentencePiece in the graph). TFLite variants come "
        "from `export.tflite.export_tflite` with the default int8 recipe "
        "(`export.quantize`, calibrated on real token ids).", "",
        "**Weights are random, so this measures speed only; the accuracy gate of the "
        "variants cannot be checked here. Their accuracy is in the export report "
        "(`report/report.md` of a training run, docs/QUANTIZATION.md).**", ""]
    lines += latency_table(lat, markdown=True)
    edge = lat.get("edge_ratio")
    if edge:
        lines += ["", f"`edge latency fastest/float32 (batch 1, {edge['variant']}, "
                  f"{edge['threads']} threads): {edge['ratio']:.2f}` "
                  f"({edge['median_ms']:.2f} ms against float32's "
                  f"{edge['float32_median_ms']:.2f} ms at its fastest, "
                  f"{edge['float32_threads']} thread(s))."]
    if lat.get("tflite_failures"):
        lines += ["", f"Variants that failed: {lat['tflite_failures']}"]
    lines += ["", "## Where the time goes", ""]
    lines += [f"- {line}" for line in observations(r)]
    lines.append("")
    phases = r["where_the_time_goes"]["phases"]
    statistic = next(iter(phases.values()), {}).get("statistic", "median")
    lines += ["Wall time per training step split by running forward only, then forward + "
              "backward (gradients, no update), then the full step, each compiled like "
              f"the step (interleaved; the {statistic} of the repeats of each). Backward = "
              "(forward + backward) - forward, optimizer + rest = step - (forward + "
              "backward): a difference smaller than the run-to-run noise is shown as "
              "\"not resolved\"; the op profiles below split the time by phase from op "
              "self times, which the load disturbs less.", "",
              "| model | forward ms | backward ms | optimizer + rest ms | step ms |",
              "|---|---:|---:|---:|---:|"]

    def ms(x):
        return f"{x:.0f}" if x > 0 else "not resolved"

    noisy = False
    for name, ph in phases.items():
        backward = ms(ph["backward_ms"])
        if ph["optimizer_and_rest_ms"] < 0 and backward != "not resolved":
            backward, noisy = backward + " *", True
        lines.append(f"| {name} | {ms(ph['forward_ms'])} | {backward} | "
                     f"{ms(ph['optimizer_and_rest_ms'])} | {ms(ph['step_ms'])} |")
    if noisy:
        lines += ["", "\\* forward + backward alone measured longer than the whole step, "
                  "so a burst of background load hit those repeats: this figure is an "
                  "overestimate."]
    for name, prof in r["where_the_time_goes"]["op_profiles"].items():
        lines += ["", f"Op profile of **{name}** (TensorFlow profiler, "
                  f"{prof['steps']} steps, self time of ops summed over threads: "
                  f"{prof['total_self_ms_per_step']:.0f} ms per step):", "",
                  "| category | share |", "|---|---:|"]
        lines += [f"| {k} | {_pct(x)} |" for k, x in prof["by_category_percent"].items()]
        lines += ["", "| phase (by op name) | share |", "|---|---:|"]
        lines += [f"| {k} | {_pct(x)} |" for k, x in prof["by_phase_percent"].items()]
        lines += ["", "| op type | share | ms per step |", "|---|---:|---:|"]
        lines += [f"| `{o['type']}` | {_pct(o['percent'])} | {o['ms_per_step']:.1f} |"
                  for o in prof["top_op_types"]]
    lines += ["", "## Printed output", "", "```", summary_text.strip(), "```", ""]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.bench", description=__doc__.splitlines()[0],
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_bench(parser.parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
