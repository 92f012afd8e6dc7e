"""Text classification: raw text in, one of N labels out.

Data: `pipeline/sources.py` (the WordNet topics TFDS builder, CSV/JSONL files
or a public TFDS name). Assets: a SentencePiece model trained on the train
split (or the pre-trained backbone's, when `pretrain.enabled` or
`model.init_checkpoint`) and `labels.txt`. Model: `models.TextClassifier`
(a `TransformerEncoderBackbone` + pooling + a dense head). Loss: categorical
cross-entropy with optional label smoothing. Metrics: accuracy (picks the best
checkpoint) and validation loss; test accuracy, macro-F1 and per-class F1
beside a TF-IDF + linear SVM baseline. Export: `export/modules/text_classification.py`.
"""

from __future__ import annotations

import os
import time

import numpy as np

from pipeline.config import ConfigError, check
from pipeline.evaluate import tfidf_baseline
from pipeline.files import copy_atomic, write_json, write_labels
from pipeline.tasks import register_task
from pipeline.tasks.base import Task, sample_indices, softmax

CONFUSION_MATRIX_PNG = os.path.join("report", "confusion_matrix.png")


@register_task("text_classification")
class TextClassificationTask(Task):
    best_metric = "accuracy"
    best_direction = "max"
    log_names = {"accuracy": "acc"}
    supports_data_service = True
    baseline_name = "TF-IDF + linear SVM, same split and text"

    @classmethod
    def validate_config(cls, cfg) -> None:
        m, d = cfg.model, cfg.data
        check(m.pooling in ("mean", "first"), "model.pooling", m.pooling,
              "'mean' or 'first'")
        check(m.name == "text_classifier", "model.name", m.name, "'text_classifier'")
        source_ok = d.source in ("wordnet_topics", "csv", "jsonl") or (
            d.source.startswith("tfds:") and len(d.source) > 5)
        check(source_ok, "data.source", d.source,
              "'wordnet_topics', 'csv', 'jsonl' or 'tfds:<name>'")
        if d.source in ("csv", "jsonl"):
            check(bool(d.train_path), "data.train_path", d.train_path,
                  f"a file path when data.source is '{d.source}'")
        if cfg.pretrain.enabled:
            from pipeline.tasks.masked_lm import MaskedLMTask

            MaskedLMTask.validate_config(cfg)

    def __init__(self, cfg, log=print):
        super().__init__(cfg, log)
        self.splits = None
        self.tokenizer_path: str | None = None
        self._tokenizer = None
        self._loss = None
        self._forward = {}

    # --------------------------------------------------------------- data
    def prepare(self, strategy=None) -> None:
        """Data (with its card), pre-training when enabled (cached), the
        tokenizer and labels.txt."""
        from pipeline.sources import format_data_card, load_splits
        from pipeline.tokenizer import MODEL_FILE, train_sentencepiece

        if self.splits is not None:
            return
        cfg, log = self.cfg, self.log
        self.splits = load_splits(cfg.data, cfg.runtime.artifacts_root, log=log)
        card = self.splits.data_card()
        log(format_data_card(card))
        write_json(self.path("data_card.json"), card)
        tokenizer_dir = self.path("tokenizer")
        if cfg.pretrain.enabled:
            from pipeline.tasks.masked_lm import pretrain

            cfg.model.init_checkpoint = pretrain(cfg, self.splits, log=log,
                                                 strategy=strategy)
            cfg.save(self.path("config.yaml"))
        if cfg.model.init_checkpoint:
            # The pre-trained backbone's tokenizer: its ids are what it learned.
            from pipeline.tasks.masked_lm import tokenizer_of

            source = tokenizer_of(cfg.model.init_checkpoint)
            self.tokenizer_path = copy_atomic(source, os.path.join(tokenizer_dir,
                                                                   MODEL_FILE))
            log(f"[tokenizer] using the pre-trained encoder's {source}")
        else:
            self.tokenizer_path = train_sentencepiece(
                [e["text"] for e in self.sample("train")], cfg.tokenizer,
                tokenizer_dir, log=log)
        write_labels(self.label_names, tokenizer_dir)

    @property
    def label_names(self) -> list[str]:
        return self.splits.label_names

    @property
    def num_classes(self) -> int:
        return self.splits.num_classes

    def num_examples(self, split: str) -> int:
        return self.splits.num_examples(split)

    def sample(self, split, max_examples=0, seed=None):
        """Examples of the split's sample (the whole split unless it streams:
        then a seeded sample of `data.sample_examples`)."""
        texts, labels = self.splits.sample(split)
        return [{"text": str(texts[i]), "label": int(labels[i])}
                for i in sample_indices(len(texts), max_examples, seed)]

    @property
    def tokenizer(self):
        """The in-graph SentencePiece tokenizer (tensorflow-text)."""
        from pipeline.tokenizer import InGraphTokenizer, read_model

        if self._tokenizer is None:
            self._tokenizer = InGraphTokenizer(read_model(self.tokenizer_path),
                                               self.cfg.model.max_sequence_length)
        return self._tokenizer

    def preprocess(self, examples: dict) -> dict:
        """{"text": (batch,) string, "label"} -> {"token_ids": (batch, longest)
        int32, "length", "label"}: what `pipeline.input` maps over the data
        before it buckets and batches."""
        from pipeline.input import tokenize

        return tokenize(self.tokenizer, examples)

    def train_dataset(self, batch_size, skip_batches=0, input_context=None):
        from pipeline.input import make_train_dataset

        # A function of the input context: a split streamed from files is
        # sharded by file across workers.
        return make_train_dataset(lambda ctx: self.splits.dataset("train", ctx),
                                  self.preprocess, self.cfg, batch_size,
                                  skip_batches=skip_batches, input_context=input_context,
                                  cache=self.splits.complete("train"))

    def eval_dataset(self, split, batch_size):
        from pipeline.input import make_eval_dataset

        return make_eval_dataset(self.splits.dataset(split), self.preprocess, self.cfg,
                                 batch_size, cache=self.splits.complete(split))

    def input_signature(self):
        import tensorflow as tf

        length = self.cfg.model.max_sequence_length
        return {"token_ids": tf.TensorSpec([None, length], tf.int32, name="token_ids"),
                "padding_mask": tf.TensorSpec([None, length], tf.bool,
                                              name="padding_mask")}

    # -------------------------------------------------------------- model
    def build_model(self):
        import tensorflow as tf

        from models import TextClassifier
        from pipeline.tokenizer import vocabulary_size

        m = self.cfg.model
        model = TextClassifier(
            vocabulary_size=vocabulary_size(self.tokenizer_path),
            num_classes=self.num_classes, hidden_dim=m.hidden_dim,
            intermediate_dim=m.intermediate_dim, num_heads=m.num_heads,
            num_layers=m.num_layers, dropout=m.dropout,
            max_sequence_length=m.max_sequence_length, norm_first=m.norm_first,
            pooling=m.pooling, name=m.name)
        model({"token_ids": tf.zeros((1, m.max_sequence_length), tf.int32),
               "padding_mask": tf.ones((1, m.max_sequence_length), tf.bool)})
        return model

    def initialize(self, model) -> None:
        if self.cfg.model.init_checkpoint:
            from pipeline.tasks.masked_lm import init_backbone

            init_backbone(model.backbone, self.cfg.model.init_checkpoint, self.log)

    def learning_rate_multipliers(self, model):
        from pipeline.trainer import layerwise_multipliers

        t = self.cfg.train
        if t.encoder_learning_rate_multiplier == 1.0 and t.layer_decay == 1.0:
            return None
        return layerwise_multipliers(model.backbone.layer_groups(), t.layer_decay,
                                     t.encoder_learning_rate_multiplier)

    # --------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, targets, training=True):
        import keras
        import tensorflow as tf

        if self._loss is None:
            self._loss = keras.losses.CategoricalCrossentropy(
                from_logits=True, label_smoothing=self.cfg.train.label_smoothing,
                reduction=None)
            self._class_weights = None
            if self.cfg.train.class_weight_power:
                self._class_weights = tf.constant(class_weights(
                    self.splits.splits["train"].per_class, self.num_classes,
                    self.cfg.train.class_weight_power), tf.float32)
        logits = model(inputs, training=training)
        per_example = self._loss(tf.one_hot(targets, self.num_classes), logits)
        if self._class_weights is not None:
            per_example = per_example * tf.gather(self._class_weights, targets)
        correct = tf.reduce_sum(tf.cast(
            tf.equal(tf.argmax(logits, -1, output_type=tf.int32), targets), tf.float32))
        return per_example, {"accuracy": correct}

    # ------------------------------------------------------------ metrics
    def logits(self, model, inputs) -> np.ndarray:
        """The model's logits of one batch (inference, a compiled function)."""
        import tensorflow as tf

        if id(model) not in self._forward:
            self._forward = {id(model): tf.function(
                lambda x: model(x, training=False))}
        return self._forward[id(model)](inputs).numpy()

    def validation_step(self, model, inputs, targets):
        return {"logits": self.logits(model, inputs), "labels": targets.numpy()}

    def reduce_aggregated_logs(self, state):
        import keras

        logits, labels = np.concatenate(state["logits"]), np.concatenate(state["labels"])
        loss = float(np.mean(keras.ops.convert_to_numpy(
            keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                         from_logits=True))))
        from pipeline.evaluate import classification_metrics

        metrics = classification_metrics(labels, np.argmax(logits, -1), self.label_names)
        return {"loss": loss, "accuracy": metrics["accuracy"],
                "macro_f1": metrics["macro_f1"]}

    def on_validation(self, writer, step, state, model=None):
        from pipeline import summaries

        summaries.write_sample_predictions(
            writer, step, self.splits.sample("validation")[0],
            np.concatenate(state["labels"]), np.concatenate(state["logits"]),
            self.label_names)

    # ------------------------------------------------ test, baseline, report
    def evaluate(self, model, baseline=True):
        """Test accuracy, macro-F1, per-class F1, the confusion matrix PNG and
        the TF-IDF + linear SVM baseline on the same split and text."""
        from pipeline.evaluate import classification_metrics, plot_confusion_matrix
        from pipeline.progress import Progress, counted
        from pipeline.trainer import validate

        start, log = time.time(), self.log
        data = self.eval_dataset("test", self.cfg.train.global_batch_size)
        progress = Progress("[test]", "predicting", self.num_examples("test"), log=log,
                            interval_seconds=5)
        _, state = validate(self, model, counted(
            data, progress, lambda batch: int(batch[1].shape[0])))
        logits, labels = np.concatenate(state["logits"]), np.concatenate(state["labels"])
        predictions = logits.argmax(-1)
        metrics = classification_metrics(labels, predictions, self.label_names)
        log(f"[test] model accuracy {metrics['accuracy']:.4f} macro-F1 "
            f"{metrics['macro_f1']:.4f} on {len(labels):,} examples "
            f"({time.time() - start:.1f}s)")
        figure = plot_confusion_matrix(
            labels, predictions, self.label_names, self.path(CONFUSION_MATRIX_PNG),
            f"{self.cfg.name}: test accuracy {metrics['accuracy']:.3f}, "
            f"macro-F1 {metrics['macro_f1']:.3f}")
        result = {"test": metrics, "confusion_matrix_png": figure,
                  "text": self.splits.description, "reference": softmax(logits)}
        result.update(self.test_figures(labels, predictions))
        if baseline:
            result["baseline"] = self.baseline()
        return result

    def test_figures(self, labels, predictions) -> dict:
        """Extra test-split figures of a subclass: metrics.json key -> path."""
        return {}

    def baseline(self) -> dict:
        """The classical baseline's test metrics on the same split and text:
        TF-IDF + a linear SVM (`baseline_name`). A split that streams from
        files is represented by its sample (`data.sample_examples`); the
        result says how many examples it trained and was tested on."""
        train, test = self.sample("train"), self.sample("test")
        for split, examples in (("train", train), ("test", test)):
            if len(examples) < self.num_examples(split):
                self.log(f"[baseline] {split}: a seeded sample of {len(examples):,} of "
                         f"{self.num_examples(split):,} examples (data.sample_examples)")
        result = tfidf_baseline(
            [e["text"] for e in train], np.array([e["label"] for e in train]),
            [e["text"] for e in test], np.array([e["label"] for e in test]),
            self.label_names, log=self.log)
        if len(train) < self.num_examples("train") or len(test) < self.num_examples("test"):
            result.update(train_examples=len(train), test_examples=len(test))
        return result

    def summary_lines(self, metrics):
        """The model, the from-scratch run it is compared with (when there is
        one), the baseline, and a plain verdict against the baseline."""
        test, lines = metrics["test"], []
        kind = "pre-trained + fine-tuned" if self.cfg.model.init_checkpoint else \
            "Transformer"
        lines.append(f"  test accuracy {test['accuracy']:.4f}  macro-F1 "
                     f"{test['macro_f1']:.4f}   ({kind}, "
                     f"{metrics['training']['parameters']:,} parameters)")
        scratch = metrics.get("comparison", {}).get("from_scratch")
        if scratch:
            lines.append(f"  test accuracy {scratch['accuracy']:.4f}  macro-F1 "
                         f"{scratch['macro_f1']:.4f}   (Transformer from scratch: "
                         f"experiment {scratch['experiment']})")
        if "baseline" in metrics:
            base = metrics["baseline"]
            lines.append(f"  test accuracy {base['accuracy']:.4f}  macro-F1 "
                         f"{base['macro_f1']:.4f}   (baseline: {self.baseline_name})")
            lines.append(verdict(test, base))
        return lines

    def artifact_descriptions(self):
        return {os.path.join("tokenizer"): "spm.model, labels.txt",
                CONFUSION_MATRIX_PNG: "confusion matrix"}


def class_weights(counts, num_classes: int, power: float) -> np.ndarray:
    """Per-class loss weights (n / n_class)**power from the examples per class
    (`counts`), scaled so that their mean over those examples is 1 (the loss
    keeps its scale, so the learning rate chosen without weights still fits).
    A class without examples gets weight 0: there is nothing to learn it from."""
    counts = np.asarray(counts, np.int64)
    assert counts.shape == (num_classes,), (counts.shape, num_classes)
    weights = np.zeros(num_classes, np.float64)
    present = counts > 0
    weights[present] = (counts.sum() / counts[present]) ** power
    weights /= (weights * counts).sum() / counts.sum()
    return weights.astype(np.float32)


def verdict(model: dict, baseline: dict) -> str:
    """One plain line: does the model beat the baseline on both metrics?"""
    deltas = {name: 100 * (model[key] - baseline[key])
              for name, key in (("accuracy", "accuracy"), ("macro-F1", "macro_f1"))}
    shown = ", ".join(f"{name} {d:+.2f} points" for name, d in deltas.items())
    losing = [name for name, d in deltas.items() if d <= 0]
    if not losing:
        return f"  => the Transformer beats the baseline ({shown})"
    return (f"  => the Transformer does NOT beat the baseline on {' and '.join(losing)} "
            f"({shown})")


__all__ = ["ConfigError", "TextClassificationTask", "class_weights", "verdict"]
