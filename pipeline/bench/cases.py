"""What the bench times: our classifier's training step, the keras-hub reference's,
and the export module that writes our model's SavedModel and TFLite files.

Every case works on the same fixed-shape random token batches (no padding):
only speed is measured, so the weights and labels are random.
"""

from __future__ import annotations

from export.modules.text_classification import TextClassificationExport
from pipeline.bench.settings import Settings


def experiment_config(s: Settings):
    """The project's default ExperimentConfig at the bench's shape."""
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


def build_classifier(cfg, vocabulary_size: int, num_classes: int):
    """`models.TextClassifier` with the keyword arguments of the task's model
    (`TextClassificationTask.build_model`), weights created by one call on a
    dummy batch. The task reads its vocabulary from a trained tokenizer; the
    bench fixes it, so the shape does not depend on the tokenizer."""
    import tensorflow as tf

    from models import TextClassifier

    m = cfg.model
    model = TextClassifier(
        vocabulary_size=vocabulary_size, num_classes=num_classes,
        hidden_dim=m.hidden_dim, intermediate_dim=m.intermediate_dim,
        num_heads=m.num_heads, num_layers=m.num_layers, dropout=m.dropout,
        max_sequence_length=m.max_sequence_length, norm_first=m.norm_first,
        pooling=m.pooling, name=m.name)
    model({"token_ids": tf.zeros((1, m.max_sequence_length), tf.int32),
           "padding_mask": tf.ones((1, m.max_sequence_length), tf.bool)})
    return model


class OursCase:
    """Our TextClassifier with the project's optimizer and distributed step."""

    def __init__(self, cfg, s: Settings, precision: str, jit_compile: bool,
                 compile_optimizer: bool = True):
        import keras
        import tensorflow as tf

        from pipeline.distribute import get_strategy
        from pipeline.trainer import compiles_optimizer, make_optimizer, make_train_step

        self.precision, self.jit_compile = precision, jit_compile
        # The dtype policy is global: set it for this model only.
        keras.config.set_dtype_policy(precision)
        try:
            self.strategy = get_strategy(cfg.runtime)
            with self.strategy.scope():
                self.model = build_classifier(cfg, s.vocab, s.classes)
                self.optimizer = make_optimizer(cfg.train, total_steps=100_000)
                self.optimizer.build(self.model.trainable_variables)
        finally:
            keras.config.set_dtype_policy("float32")
        num_classes = s.classes
        loss_fn = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=cfg.train.label_smoothing, reduction=None)
        model = self.model

        def compute_loss(inputs, labels):  # as TextClassificationTask.compute_loss
            logits = model(inputs, training=True)
            per_example = loss_fn(tf.one_hot(labels, num_classes), logits)
            correct = tf.reduce_sum(tf.cast(
                tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                tf.float32))
            return per_example, {"accuracy": correct}

        self.compute_loss = compute_loss
        # As the trainer does: the update compiled with XLA under the default
        # strategy (runtime.jit_compile_optimizer), unless this case is the
        # uncompiled comparison.
        self.compile_optimizer = compiles_optimizer(self.strategy, compile_optimizer)
        self.train_step = make_train_step(model, self.optimizer, self.strategy,
                                          compute_loss, s.batch, jit_compile=jit_compile,
                                          jit_compile_optimizer=self.compile_optimizer)
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
        return f"ours {self.precision}" + (" + XLA" if self.jit_compile else "") + \
            ("" if self.compile_optimizer else ", optimizer uncompiled")

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


class _ExportTask:
    """What the text-classification export module reads of its task, for a
    model that no task trained: the config, the tokenizer and the labels."""

    name = "text_classification"

    def __init__(self, cfg, tokenizer_path: str, label_names: list[str]):
        from pipeline.tokenizer import InGraphTokenizer, read_model

        self.cfg, self.tokenizer_path, self.label_names = cfg, tokenizer_path, label_names
        self.tokenizer = InGraphTokenizer(read_model(tokenizer_path),
                                          cfg.model.max_sequence_length)


class BenchExport(TextClassificationExport):
    """The project's text-classification export module for the bench's float32
    model: `serving_archive()` for `export.saved_model.export_serving`, and
    `tflite_archive()` (`probabilities_archive` of the model) with
    `tflite_signatures` for `export.tflite.export_tflite`.

    `labels.txt` must lie beside the tokenizer (`serving_assets` copies both).
    No TF Serving warm-up requests are written: the bench calls the
    signatures itself, after its own warm-up calls.
    """

    def __init__(self, model, cfg, tokenizer_path: str, label_names: list[str]):
        super().__init__(_ExportTask(cfg, tokenizer_path, label_names), model)

    def warmup_requests(self):
        return []
