"""Typed experiment configuration.

Precedence: dataclass defaults, then the YAML file, then ``--set a.b=value``
overrides. Every value is type-checked; an unknown key is an error that names
it. ``ExperimentConfig.validate()`` checks cross-field rules and is called by
every entry point.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


TFLITE_VARIANTS = ("float32", "float16", "dynamic_range", "int8", "int16x8")
INT8_FLOAT_OPS = ("BATCH_MATMUL", "SELECT_V2", "SOFTMAX", "MEAN", "SQUARED_DIFFERENCE",
                  "RSQRT", "ADD", "MUL")


# Real configs are a few kB. The limits keep a hostile file or override from
# costing seconds in the (pure-Python) YAML parser; libyaml's CSafeLoader is not
# used because deeply nested input crashes it (segmentation fault).
MAX_CONFIG_FILE_BYTES = 256 * 1024
MAX_OVERRIDE_CHARS = 64 * 1024


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


@dataclass
class DataConfig:
    # Where examples come from: "wordnet_topics" (TFDS builder over the Debian
    # package wordnet-base), "csv", "jsonl", or "tfds:<public name>";
    # translation: "trans_de_en" (TFDS builder over the package trans-de-en);
    # image_classification: "fashion_mnist" (TFDS builder over the package
    # dataset-fashion-mnist) or "image_folder" (train_path/<class>/*.png|jpg).
    source: str = "wordnet_topics"
    # wordnet_topics: path of WordNet's noun data file.
    wordnet_path: str = "/usr/share/wordnet/data.noun"
    # wordnet_topics: prefix the definition with the synset's lemmas ("a, b: def").
    include_lemmas: bool = True
    # trans_de_en (translation): the Ding German-English dictionary of the
    # Debian package trans-de-en.
    dictionary_path: str = "/usr/share/trans/de-en"
    # fortunes (language_modeling): the fortune cookie files of the Debian
    # package fortunes, one example per entry.
    fortunes_path: str = "/usr/share/games/fortunes"
    # fashion_mnist (image_classification): the directory of the four IDX
    # files of the Debian package dataset-fashion-mnist.
    images_path: str = "/usr/share/datasets/fashion-mnist"
    # image_classification: images are decoded to image_channels channels
    # (1 = grey, 3 = RGB) and resized (bilinear) to image_size x image_size pixels.
    image_size: int = 28
    image_channels: int = 1
    # csv/jsonl: files per split; empty validation/test paths mean a stable
    # 80/10/10 hash split of the train file. image_folder: directories with one
    # subdirectory per class; the hash is of each file's path under train_path.
    train_path: str = ""
    validation_path: str = ""
    test_path: str = ""
    # csv/jsonl/tfds: names of the text and label columns (features).
    text_column: str = "text"
    label_column: str = "label"
    # csv/jsonl: allowed labels in class-id order; empty = sorted labels of train
    # (image_folder: the class directory names).
    labels: list[str] = field(default_factory=list)
    # tfds: split names (TFDS slicing syntax allowed).
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str = "test"
    # TFDS data directory; relative paths are under the artifacts root.
    tfds_data_dir: str = "tensorflow_datasets"
    # Keep at most this many examples per split (0 = all); for debug runs.
    max_examples_per_split: int = 0
    # Text sources stream: a split of more examples than this is read from its
    # files at every pass (not held in memory); the tokenizer trainer, the
    # classical baseline and the data card read a seeded sample of this many.
    sample_examples: int = 200000
    # csv/jsonl: examples per TFRecord shard of the prepared data (multi-worker
    # training reads disjoint shards when there are at least as many as workers).
    examples_per_shard: int = 100000


@dataclass
class TokenizerConfig:
    # SentencePiece vocabulary size (including pad/unk/bos/eos).
    vocabulary_size: int = 8000
    # SentencePiece model type: "unigram" or "bpe".
    model_type: str = "unigram"
    # Fraction of characters covered by the vocabulary.
    character_coverage: float = 0.9995
    # Lowercase text before training and tokenizing (applied in the model graph).
    lowercase: bool = False


@dataclass
class ModelConfig:
    # Task model class in models/: currently "text_classifier".
    name: str = "text_classifier"
    hidden_dim: int = 128
    intermediate_dim: int = 256
    num_heads: int = 4
    num_layers: int = 2
    dropout: float = 0.1
    # Token ids per example; longer texts are truncated.
    max_sequence_length: int = 64
    # Pre-LayerNorm (True) or post-LayerNorm (False) encoder blocks.
    norm_first: bool = True
    # Sequence pooling for classification: "mean" or "first".
    pooling: str = "mean"
    # Encoder weights to start from: an encoder checkpoint written by
    # pre-training (<dir>/encoder/encoder-N, or its directory); "" = random.
    # Pre-training (pretrain.enabled) sets it. Its tokenizer
    # (<dir>/tokenizer/spm.model) replaces the task's own.
    init_checkpoint: str = ""
    # image_classification (model.name "vision_transformer"): the side of a
    # square patch in pixels; the filters of the 3x3 convolutional stem before
    # patchifying ([] = a plain ViT; Compact Convolutional Transformers use
    # one); whether a 3x3 max pool of stride 2 follows each stem conv (CCT's
    # tokenizer; patch_size then counts pixels of the pooled map); "learned"
    # or "sine" (fixed 2-D) positions. model.pooling is then
    # "class_token", "mean" or "attention" (CCT's sequence pooling).
    patch_size: int = 4
    stem_channels: list[int] = field(default_factory=list)
    stem_pooling: bool = False
    position_embedding: str = "learned"


@dataclass
class TrainConfig:
    # Examples per optimizer step summed over all replicas.
    global_batch_size: int = 64
    epochs: int = 3
    # Peak learning rate after warm-up.
    learning_rate: float = 1e-3
    # Fraction of total steps spent warming up linearly from 0.
    warmup_fraction: float = 0.05
    # Learning-rate decay after warm-up: "cosine" or "constant".
    decay: str = "cosine"
    weight_decay: float = 0.01
    # Clip gradients to this global norm (0 = no clipping).
    clip_norm: float = 1.0
    label_smoothing: float = 0.0
    # Classification: weight each example's loss by (n_train / n_class)**power,
    # scaled so the mean weight over the training split is 1. 0 = plain
    # cross-entropy; 1 = "balanced" (scikit-learn's class_weight); between
    # trades a little accuracy for the rare classes (macro-F1).
    class_weight_power: float = 0.0
    # Save a checkpoint every N optimizer steps (and at every epoch end).
    checkpoint_every_steps: int = 500
    keep_checkpoints: int = 3
    # Print a progress line and write TensorBoard scalars every N steps.
    log_every_steps: int = 50
    shuffle_buffer: int = 100000
    # Pad batches to bucket boundaries of the sequence length (fewer pads).
    bucket_by_length: bool = True
    # Stop when validation accuracy has not improved for N epochs (0 = never).
    early_stopping_patience: int = 0
    # Stop after this many steps in total (0 = epochs * steps per epoch).
    max_steps: int = 0
    # Validate on the first N batches of the validation split only (0 = all
    # of it): for tasks whose validation metric is slow (translation decodes
    # every sentence), a fixed subset picks the best checkpoint sooner.
    validation_max_batches: int = 0
    seed: int = 42
    # Fine-tuning: learning rate of the encoder (embedding and blocks) relative
    # to train.learning_rate; the head always gets the full rate.
    encoder_learning_rate_multiplier: float = 1.0
    # Fine-tuning: layer-wise learning-rate decay; block i of n gets
    # multiplier * layer_decay**(n - i), the embedding layer_decay**(n + 1).
    layer_decay: float = 1.0


@dataclass
class AugmentConfig:
    # Training-time image augmentation in tf.data (image_classification);
    # validation and test images are never changed. Random per example but
    # deterministic given train.seed, so a resumed run sees the same images.
    horizontal_flip: bool = True
    # Random shift of up to N pixels each way (zero padding, then a crop).
    max_shift_pixels: int = 2


@dataclass
class PretrainConfig:
    # BERT-style masked-language-model pre-training of the encoder before the
    # task (pipeline/tasks/masked_lm.py). The result is cached under
    # <artifacts_root>/pretrained/<fingerprint>/ and reused when present.
    enabled: bool = False
    # Unlabeled text: "wordnet" (every gloss and usage example of data.noun,
    # data.verb, data.adj and data.adv from wordnet-base, minus the noun synsets
    # of pretrain.exclude_splits), "train_split" (the task's own training
    # texts, e.g. of a CSV/JSONL source; validation and test texts never)
    # and/or paths of .txt (a text per line), .csv or .jsonl files (column
    # data.text_column).
    corpora: list[str] = field(default_factory=lambda: ["wordnet"])
    # Directory holding WordNet's data.* files.
    wordnet_dir: str = "/usr/share/wordnet"
    # Noun synsets of these splits of the task never enter pre-training.
    exclude_splits: list[str] = field(default_factory=lambda: ["validation", "test"])
    steps: int = 10000
    global_batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    # Fraction of tokens selected for prediction; of those 80% become [MASK],
    # 10% a random token, 10% stay (keras_hub.layers.MaskedLMMaskGenerator).
    mask_rate: float = 0.15
    # Most predictions per sequence (selected positions beyond it are dropped).
    max_predictions: int = 8
    checkpoint_every_steps: int = 1000
    log_every_steps: int = 100
    seed: int = 7
    # Experiment (under the same artifacts root) holding this classifier
    # trained from random weights, shown next to the pre-trained one and the
    # baseline in the summary and metrics.json. When its metrics.json is
    # missing, the run trains it (this config, pretraining off, no export;
    # cached like any run). "" = no comparison.
    from_scratch_experiment: str = ""


@dataclass
class RuntimeConfig:
    # tf.distribute strategy: "default", "one_device", "mirrored",
    # "multi_worker_mirrored" (cluster from the TF_CONFIG environment variable)
    # or "tpu" (needs a TPU; none is reachable on this project's machines).
    strategy: str = "default"
    # one_device: the device; mirrored: empty = all local devices.
    devices: list[str] = field(default_factory=list)
    # tpu: the TPU name or grpc:// address ("" = local / from the environment).
    tpu_address: str = ""
    # multi_worker_mirrored: a collective op waiting longer than this for a
    # peer fails (a dead worker ends the job instead of hanging it).
    collective_timeout_seconds: int = 60
    # Exit when one training step takes longer than this (0 = no watchdog);
    # the first step, which traces and compiles, is allowed 5 times as long.
    step_timeout_seconds: int = 120
    # Split the CPU into N logical devices (0 = leave as is); lets "mirrored"
    # run with several replicas on a CPU-only machine.
    logical_cpu_devices: int = 0
    # Keras dtype policy: "float32" or "mixed_bfloat16".
    precision: str = "float32"
    # Compile the train step's forward and backward pass with XLA (slower than
    # none on this CPU in bfloat16: README, performance).
    jit_compile: bool = False
    # Compile the optimizer update with XLA (fused AdamW; default strategy
    # only: a distributed strategy's update all-reduces and stays uncompiled).
    jit_compile_optimizer: bool = True
    # Root of everything a run writes; the run goes to <root>/<experiment>.
    artifacts_root: str = "artifacts"
    # Address of a tf.data service dispatcher, grpc://HOST:PORT: its workers
    # tokenize the training split, this process shuffles and batches what
    # they send ("" = all the input work in this process). `python -m
    # pipeline data-service` starts one; validation and test are read locally.
    data_service: str = ""
    # Fail when the data_service dispatcher does not answer within this time.
    data_service_timeout_seconds: int = 60


@dataclass
class ExportConfig:
    # Model name in serving/<model_name>/<version>/.
    model_name: str = "text_classifier"
    # SavedModel version; 0 = one more than the newest existing version.
    version: int = 0
    # TFLite variants to convert: "float32", "float16", "dynamic_range",
    # "int8" (full integer, int32 token ids in), "int16x8".
    tflite_variants: list[str] = field(
        default_factory=lambda: list(TFLITE_VARIANTS)
    )
    # Variant copied into the edge bundle; "auto" = the smallest (then fastest)
    # variant within export.accuracy_gate_points of float32 test accuracy.
    edge_variant: str = "auto"
    # Accuracy loss allowed against float32 for "auto", in points (0.5 = half
    # a percentage point of test accuracy).
    accuracy_gate_points: float = 0.5
    # Batch-1 latency runs per TFLite variant and thread count (median reported).
    latency_runs: int = 100
    # int8/int16x8: train-split examples fed to the calibrator.
    int8_calibration_examples: int = 500
    # int8/int16x8: value written over the attention-mask fill constant (-1e9)
    # of the TFLite graph before calibration, so attention scores keep a usable
    # int8 scale (docs/QUANTIZATION.md); 0 = keep the model's value.
    int8_mask_fill_value: float = -20.0
    # int8: TFLite ops kept in float (the quantization debugger's deny-list).
    # The default keeps attention scores/softmax, LayerNorm and element-wise
    # ops in float: as accurate as full int8 and ~4x faster at batch 1 on CPU
    # (docs/QUANTIZATION.md); [] = every op in int8.
    int8_float_ops: list[str] = field(default_factory=lambda: list(INT8_FLOAT_OPS))
    # int8/int16x8: per-channel (true) or per-tensor (false) int8 weights.
    int8_per_channel: bool = True
    # int8: type of the probabilities output, "float32" or "int8" (the app
    # dequantizes with the output's scale and zero point).
    int8_output: str = "float32"


@dataclass
class GenerateConfig:
    # Text generation (language_modeling): keras-hub's samplers.
    # "greedy", "random", "top_k" or "top_p".
    strategy: str = "top_k"
    temperature: float = 1.0
    top_k: int = 40
    top_p: float = 0.9
    # The sampling seed: the same seed, prompts and model give the same text.
    seed: int = 1234
    max_new_tokens: int = 48
    # Prompts of the sample generations in metrics.json and TensorBoard
    # ("" = from the start of a text).
    prompts: list[str] = field(default_factory=lambda: [
        "", "The secret of", "Love is", "A computer", "Never"])
    # translation: beam search on the test split (beside greedy) and in the
    # edge app's --beams default: beams (1 = greedy only) and the GNMT
    # length penalty alpha (0 = rank by log-probability alone).
    num_beams: int = 4
    length_penalty: float = 0.6


@dataclass
class ExperimentConfig:
    # Experiment name; the run's directory is <artifacts_root>/<name>.
    name: str = "text_classification"
    # The task (pipeline/tasks/): "text_classification" or another registered
    # task; each task validates the sections it reads.
    task: str = "text_classification"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    @property
    def run_dir(self) -> str:
        return os.path.join(self.runtime.artifacts_root, self.name)

    def validate(self) -> ExperimentConfig:
        """Checks cross-field rules; raises ConfigError naming the keys."""
        m, t, r, e = self.model, self.train, self.runtime, self.export
        _check(bool(self.name) and self.name.isprintable() and "/" not in self.name
               and self.name not in (".", ".."), "name", self.name,
               "a non-empty printable name without '/', not '.' or '..'")
        _check(m.hidden_dim % m.num_heads == 0, "model.hidden_dim",
               m.hidden_dim, f"divisible by model.num_heads={m.num_heads}")
        for key in ("hidden_dim", "intermediate_dim", "num_heads", "num_layers",
                    "max_sequence_length"):
            _check(getattr(m, key) > 0, f"model.{key}", getattr(m, key), "> 0")
        _check(0.0 <= m.dropout < 1.0, "model.dropout", m.dropout, "in [0, 1)")
        _check(self.data.image_size >= 4, "data.image_size", self.data.image_size,
               ">= 4 (pixels per side)")
        _check(self.data.image_channels in (1, 3), "data.image_channels",
               self.data.image_channels, "1 (grey) or 3 (RGB)")
        for key in ("sample_examples", "examples_per_shard"):
            _check(getattr(self.data, key) > 0, f"data.{key}", getattr(self.data, key),
                   "> 0")
        _check(self.tokenizer.vocabulary_size >= 16, "tokenizer.vocabulary_size",
               self.tokenizer.vocabulary_size, ">= 16")
        _check(self.tokenizer.model_type in ("unigram", "bpe"),
               "tokenizer.model_type", self.tokenizer.model_type,
               "'unigram' or 'bpe'")
        _check(t.global_batch_size > 0, "train.global_batch_size",
               t.global_batch_size, "> 0")
        _check(t.epochs > 0, "train.epochs", t.epochs, "> 0")
        _check(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "> 0")
        _check(0.0 <= t.warmup_fraction < 1.0, "train.warmup_fraction",
               t.warmup_fraction, "in [0, 1)")
        _check(t.decay in ("cosine", "constant"), "train.decay", t.decay,
               "'cosine' or 'constant'")
        _check(0.0 <= t.label_smoothing < 1.0, "train.label_smoothing",
               t.label_smoothing, "in [0, 1)")
        _check(0.0 <= t.class_weight_power <= 1.0, "train.class_weight_power",
               t.class_weight_power, "in [0, 1]")
        _check(t.checkpoint_every_steps > 0, "train.checkpoint_every_steps",
               t.checkpoint_every_steps, "> 0")
        _check(t.log_every_steps > 0, "train.log_every_steps",
               t.log_every_steps, "> 0")
        _check(t.validation_max_batches >= 0, "train.validation_max_batches",
               t.validation_max_batches, ">= 0 (0 = the whole validation split)")
        _check(r.strategy in STRATEGIES, "runtime.strategy", r.strategy,
               "one of " + ", ".join(repr(s) for s in STRATEGIES))
        _check(r.collective_timeout_seconds > 0, "runtime.collective_timeout_seconds",
               r.collective_timeout_seconds, "> 0")
        _check(r.step_timeout_seconds >= 0, "runtime.step_timeout_seconds",
               r.step_timeout_seconds, ">= 0")
        _check(r.precision in ("float32", "mixed_bfloat16"), "runtime.precision",
               r.precision, "'float32' or 'mixed_bfloat16'")
        if r.data_service:
            from pipeline.data_service import parse_address

            parse_address(r.data_service)
        _check(r.data_service_timeout_seconds > 0, "runtime.data_service_timeout_seconds",
               r.data_service_timeout_seconds, "> 0")
        for variant in e.tflite_variants:
            _check(variant in TFLITE_VARIANTS, "export.tflite_variants", variant,
                   "each one of " + ", ".join(map(repr, TFLITE_VARIANTS)))
        _check("float32" in e.tflite_variants, "export.tflite_variants",
               e.tflite_variants, "a list that holds 'float32' (the reference)")
        _check(len(set(e.tflite_variants)) == len(e.tflite_variants),
               "export.tflite_variants", e.tflite_variants, "no repeated variant")
        _check(e.edge_variant == "auto" or e.edge_variant in e.tflite_variants,
               "export.edge_variant", e.edge_variant,
               f"'auto' or one of export.tflite_variants={e.tflite_variants}")
        _check(e.accuracy_gate_points >= 0, "export.accuracy_gate_points",
               e.accuracy_gate_points, ">= 0")
        _check(e.latency_runs >= 1, "export.latency_runs", e.latency_runs, ">= 1")
        _check(e.int8_calibration_examples >= 1, "export.int8_calibration_examples",
               e.int8_calibration_examples, ">= 1")
        _check(e.int8_mask_fill_value <= 0, "export.int8_mask_fill_value",
               e.int8_mask_fill_value, "<= 0 (0 keeps the model's fill value)")
        _check(e.int8_output in ("float32", "int8"), "export.int8_output",
               e.int8_output, "'float32' or 'int8'")
        for op in e.int8_float_ops:
            _check(op.isupper() and op.replace("_", "").isalnum(),
                   "export.int8_float_ops", op,
                   "TFLite op names in upper case, e.g. MEAN, RSQRT, SOFTMAX")
        _check(e.version >= 0, "export.version", e.version, ">= 0")
        _check(t.encoder_learning_rate_multiplier >= 0,
               "train.encoder_learning_rate_multiplier",
               t.encoder_learning_rate_multiplier, ">= 0")
        _check(0 < t.layer_decay <= 1, "train.layer_decay", t.layer_decay, "in (0, 1]")
        from pipeline.tasks import get_task_class

        try:
            task = get_task_class(self.task)
        except KeyError as err:
            raise ConfigError(f"config key 'task' = {_shown(self.task)}: "
                              f"{err.args[0]}") from None
        _check(not r.data_service or task.supports_data_service, "runtime.data_service",
               r.data_service, f"'' for task {self.task!r}, whose training data is read "
               "in the trainer's process only")
        task.validate_config(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str) -> None:
        from pipeline.files import write_atomic

        write_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def check(ok: bool, key: str, value: Any, expected: str) -> None:
    """Raises ConfigError naming `key` when `ok` is false (tasks use it too)."""
    _check(ok, key, value, expected)


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' = {_shown(value)}: expected {expected}")


def _shown(value: Any, limit: int = 200) -> str:
    """repr of a value for an error message, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Returns value as type tp, or raises ConfigError naming key."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):  # "--set export.tflite_variants=a,b"
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(
                f"config key '{key}': expected a list of {_type_name(item_tp)}, "
                f"got {type(value).__name__} {_shown(value)}")
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            if "\x00" in value:
                raise ConfigError(f"config key '{key}': contains a NUL character")
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(
        f"config key '{key}': expected {_type_name(tp)}, "
        f"got {type(value).__name__} {_shown(value)}")


def _apply(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    if not isinstance(values, dict):
        raise ConfigError(
            f"config key '{prefix.rstrip('.') or '<root>'}': expected a mapping, "
            f"got {type(values).__name__}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown config key {_shown(full)}{hint} "
                f"(known keys: {', '.join(prefix + n for n in names)})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            _apply(getattr(obj, key), value, prefix=f"{full}.")
        else:
            setattr(obj, key, _coerce(full, value, tp))


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parses "a.b=value" (value in YAML syntax) into (["a", "b"], value)."""
    if "=" not in text:
        raise ConfigError(f"override {_shown(text)}: expected key=value, e.g. "
                          "train.epochs=3")
    if len(text) > MAX_OVERRIDE_CHARS:
        raise ConfigError(f"override {_shown(text[:40])}...: longer than "
                          f"{MAX_OVERRIDE_CHARS:,} characters")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {_shown(text)}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    except (RecursionError, ValueError) as err:
        raise ConfigError(f"override {_shown(key)}: value cannot be read: "
                          f"{_yaml_limit(err)}") \
            from None
    return key.split("."), value


def _yaml_limit(err: Exception) -> str:
    """What a RecursionError / huge-integer ValueError of the YAML parser means."""
    if isinstance(err, RecursionError):
        return "nested too deeply"
    return str(err).split(";")[0]   # "Exceeds the limit (4300 digits) for integer ..."


def load_config(path: str | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Builds the experiment config from defaults, a YAML file and overrides."""
    cfg = ExperimentConfig()
    if path:
        if not os.path.isfile(path):
            import glob

            shipped = sorted(glob.glob(os.path.join(
                os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                "configs", "*.yaml")))
            raise ConfigError(
                f"config file not found: {path} (from {os.getcwd()}); pass a YAML file, "
                "e.g. one of: " + ", ".join(os.path.relpath(p) for p in shipped))
        if os.path.getsize(path) > MAX_CONFIG_FILE_BYTES:
            raise ConfigError(f"{path}: {os.path.getsize(path):,} bytes; a config file "
                              f"may hold at most {MAX_CONFIG_FILE_BYTES:,}")
        with open(path, encoding="utf-8") as f:
            try:
                values = yaml.safe_load(f) or {}
            except yaml.YAMLError as err:
                raise ConfigError(f"{path}: not valid YAML: {err}") from None
            except UnicodeDecodeError as err:
                raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: "
                                  f"{err.reason})") from None
            except (RecursionError, ValueError) as err:
                raise ConfigError(f"{path}: not valid YAML here: {_yaml_limit(err)}") \
                    from None
        _apply(cfg, values)
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _apply(cfg, nested)
    return cfg.validate()
