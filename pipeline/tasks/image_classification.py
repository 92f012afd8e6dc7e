"""Image classification: pixels in, one of N labels out (the Vision Transformer).

Data: `pipeline/datasets/fashion_mnist.py` (the TFDS builder over the Debian
package dataset-fashion-mnist, validation carved from train by a fixed
stratified rule) or a folder of images (`class_name/*.png|jpg`). Assets:
`labels.txt`. Model: `models.VisionTransformer` (patch embedding with an
optional convolutional stem, the shared `TransformerEncoder` blocks, class
token / mean / attention pooling). Input: `tf.data` with seeded, stateless
augmentation (horizontal flips, small shifts: `augment.*`), so a resumed run
sees the same images. Loss, metrics and summary are text classification's
(this task subclasses it): accuracy picks the checkpoint; test accuracy,
macro-F1, per-class F1, the confusion matrix and a grid of misclassified test
images, beside a small CNN trained for the same epochs on the same augmented
stream. Export: `export/modules/image_classification.py`.
"""

from __future__ import annotations

import os
import time

import numpy as np

from pipeline.config import check
from pipeline.files import write_json, write_labels
from pipeline.tasks import register_task
from pipeline.tasks.base import sample_indices
from pipeline.tasks.text_classification import TextClassificationTask

MISCLASSIFIED_PNG = os.path.join("report", "misclassified.png")
SAMPLES_PNG = "data_samples.png"
POOLING = ("class_token", "mean", "attention")


@register_task("image_classification")
class ImageClassificationTask(TextClassificationTask):
    baseline_name = "small CNN, same epochs and augmented stream"
    edge_example = "image.png"

    @classmethod
    def validate_config(cls, cfg) -> None:
        m, d = cfg.model, cfg.data
        check(m.name == "vision_transformer", "model.name", m.name,
              "'vision_transformer' for task 'image_classification'")
        check(d.source in ("fashion_mnist", "image_folder"), "data.source", d.source,
              "'fashion_mnist' or 'image_folder' for task 'image_classification'")
        if d.source == "image_folder":
            check(bool(d.train_path), "data.train_path", d.train_path,
                  "a directory of class_name/*.png|jpg when data.source is 'image_folder'")
        check(m.pooling in POOLING, "model.pooling", m.pooling,
              " or ".join(map(repr, POOLING)) + " for task 'image_classification'")
        check(m.position_embedding in ("learned", "sine"), "model.position_embedding",
              m.position_embedding, "'learned' or 'sine'")
        stride = m.patch_size * (2 ** len(m.stem_channels) if m.stem_pooling else 1)
        check(m.patch_size > 0 and d.image_size % stride == 0, "model.patch_size",
              m.patch_size, f"> 0 and, times 2 per pooled stem conv, a divisor of "
              f"data.image_size={d.image_size}")
        check(all(isinstance(c, int) and c > 0 for c in m.stem_channels),
              "model.stem_channels", m.stem_channels, "a list of positive ints")
        check(m.position_embedding != "sine" or m.hidden_dim % 4 == 0, "model.hidden_dim",
              m.hidden_dim, "divisible by 4 with model.position_embedding 'sine'")
        check(not cfg.pretrain.enabled, "pretrain.enabled", cfg.pretrain.enabled,
              "false for task 'image_classification'")
        check(0 <= cfg.augment.max_shift_pixels < d.image_size, "augment.max_shift_pixels",
              cfg.augment.max_shift_pixels, f">= 0 and < data.image_size={d.image_size}")

    # --------------------------------------------------------------- data
    def prepare(self, strategy=None) -> None:
        """The images (with their data card and a PNG of samples) and labels.txt."""
        from pipeline.image_sources import (
            format_data_card,
            load_image_splits,
            write_sample_grid,
        )

        if self.splits is not None:
            return
        cfg, log = self.cfg, self.log
        self.splits = load_image_splits(cfg.data, cfg.runtime.artifacts_root, log=log)
        card = self.splits.data_card()
        card["samples_png"] = write_sample_grid(
            self.splits.images["train"], self.splits.labels["train"], self.label_names,
            self.path(SAMPLES_PNG), title=f"{cfg.name}: training images per class")
        log(format_data_card(card))
        write_json(self.path("data_card.json"), card)
        write_labels(self.label_names, self.path("tokenizer"))
        # The model's input normalization, from the train split only (one
        # value for all channels).
        self.pixel_mean = float(np.mean(card["train_pixel_mean"]) / 255.0)
        self.pixel_std = float(np.mean(card["train_pixel_std"]) / 255.0) or 1.0

    @property
    def labels_path(self) -> str:
        from pipeline.files import LABELS_FILE

        return self.path("tokenizer", LABELS_FILE)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        d = self.cfg.data
        return (d.image_size, d.image_size, d.image_channels)

    def num_examples(self, split: str) -> int:
        return len(self.splits.labels[split])

    def sample(self, split, max_examples=0, seed=None):
        images, labels = self.splits.images[split], self.splits.labels[split]
        return [{"image": images[i], "label": int(labels[i])}
                for i in sample_indices(len(labels), max_examples, seed)]

    def _source(self, split):
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices(
            {"image": self.splits.images[split],
             "label": self.splits.labels[split].astype(np.int32)})

    def augment(self, index, example: dict) -> dict:
        """One training example, flipped and shifted at random: stateless ops
        seeded by (train.seed, the example's position in the stream)."""
        import tensorflow as tf

        a = self.cfg.augment
        image = example["image"]
        seed = tf.stack([tf.constant(self.cfg.train.seed, tf.int64), index])
        if a.horizontal_flip:
            image = tf.image.stateless_random_flip_left_right(image, seed)
        if a.max_shift_pixels:
            s = a.max_shift_pixels
            padded = tf.pad(image, [[s, s], [s, s], [0, 0]])
            image = tf.image.stateless_random_crop(padded, self.image_shape, seed + 1)
        return {"image": image, "label": example["label"]}

    @staticmethod
    def finalize(batch: dict):
        return {"pixels": batch["image"]}, batch["label"]

    def preprocess(self, examples: dict) -> dict:
        """Images need no preprocessing outside the model (it scales the
        raw pixels itself); the identity keeps the Task interface."""
        return examples

    def train_dataset(self, batch_size, skip_batches=0, input_context=None):
        import tensorflow as tf

        t = self.cfg.train
        dataset = self._source("train")
        if input_context is not None and input_context.num_input_pipelines > 1:
            dataset = dataset.shard(input_context.num_input_pipelines,
                                    input_context.input_pipeline_id)
        dataset = dataset.shuffle(min(t.shuffle_buffer, self.num_examples("train")),
                                  seed=t.seed, reshuffle_each_iteration=True).repeat()
        dataset = dataset.enumerate().map(self.augment, num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.batch(batch_size, drop_remainder=True).map(self.finalize)
        if skip_batches:
            dataset = dataset.skip(skip_batches)
        options = tf.data.Options()
        options.deterministic = True
        return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)

    def eval_dataset(self, split, batch_size):
        import tensorflow as tf

        return self._source(split).batch(batch_size).map(self.finalize) \
            .prefetch(tf.data.AUTOTUNE)

    def input_signature(self):
        import tensorflow as tf

        return {"pixels": tf.TensorSpec((None, *self.image_shape), tf.uint8, name="pixels")}

    # -------------------------------------------------------------- model
    def build_model(self):
        from models import VisionTransformer

        m = self.cfg.model
        model = VisionTransformer(
            num_classes=self.num_classes, image_size=self.cfg.data.image_size,
            channels=self.cfg.data.image_channels, patch_size=m.patch_size,
            hidden_dim=m.hidden_dim, intermediate_dim=m.intermediate_dim,
            num_heads=m.num_heads, num_layers=m.num_layers, dropout=m.dropout,
            norm_first=m.norm_first, stem_channels=m.stem_channels,
            stem_pooling=m.stem_pooling, position_embedding=m.position_embedding, pooling=m.pooling,
            pixel_mean=self.pixel_mean, pixel_std=self.pixel_std, name=m.name)
        model({"pixels": np.zeros((1, *self.image_shape), np.uint8)})
        return model

    def initialize(self, model) -> None:
        """No pre-trained weights for images (yet)."""

    def learning_rate_multipliers(self, model):
        return None

    # ------------------------------------------------------------ metrics
    def on_validation(self, writer, step, state, model=None):
        """The first misclassified validation images, titled in TensorBoard."""
        import tensorflow as tf

        logits, labels = np.concatenate(state["logits"]), np.concatenate(state["labels"])
        wrong = np.flatnonzero(logits.argmax(-1) != labels)[:8]
        if not len(wrong):
            return
        names = self.label_names
        caption = ", ".join(f"#{i}: {names[labels[i]]} -> {names[logits[i].argmax()]}"
                            for i in wrong)
        with writer.as_default(step=step):
            tf.summary.image("misclassified_validation", self.splits.images["validation"][wrong],
                             max_outputs=8, description=caption)

    # ------------------------------------------------ test, baseline, report
    def test_figures(self, labels, predictions) -> dict:
        """The first 32 misclassified test images, titled true -> predicted."""
        from pipeline.plots import plot_image_grid

        wrong = np.flatnonzero(predictions != labels)[:32]
        names = self.label_names
        return {"misclassified_png": plot_image_grid(
            self.splits.images["test"][wrong],
            [f"{names[labels[i]]} -> {names[predictions[i]]}" for i in wrong],
            self.path(MISCLASSIFIED_PNG),
            title=f"{self.cfg.name}: misclassified test images (true -> predicted), "
                  f"{len(np.flatnonzero(predictions != labels)):,} in all")}

    def baseline(self) -> dict:
        """A small CNN (two conv + pool stages, a dense layer) trained for
        `train.epochs` epochs on the same augmented training stream, scored
        on the same test split."""
        import keras

        from pipeline.evaluate import classification_metrics

        start, log, t = time.time(), self.log, self.cfg.train
        keras.utils.set_random_seed(t.seed)
        batch = t.global_batch_size
        steps = max(1, self.num_examples("train") // batch)
        model = small_cnn(self.num_classes, self.image_shape, self.pixel_mean,
                          self.pixel_std)
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        log(f"[baseline] training a small CNN ({model.count_params():,} parameters) for "
            f"{t.epochs} epoch(s) of {steps:,} steps on the augmented train stream")
        model.fit(self.train_dataset(batch).map(lambda x, y: (x["pixels"], y)),
                  epochs=t.epochs, steps_per_epoch=steps, verbose=0)
        logits = model.predict(self.splits.images["test"], batch_size=256, verbose=0)
        metrics = classification_metrics(self.splits.labels["test"], logits.argmax(-1),
                                         self.label_names)
        metrics["parameters"] = int(model.count_params())
        metrics["seconds"] = round(time.time() - start, 1)
        log(f"[baseline] small CNN: accuracy {metrics['accuracy']:.4f} macro-F1 "
            f"{metrics['macro_f1']:.4f} ({metrics['seconds']:.0f}s)")
        return metrics

    def artifact_descriptions(self):
        return {os.path.join("tokenizer"): "labels.txt",
                SAMPLES_PNG: "sample training images per class",
                os.path.join("report", "confusion_matrix.png"): "confusion matrix",
                MISCLASSIFIED_PNG: "misclassified test images"}


def small_cnn(num_classes: int, image_shape, pixel_mean: float, pixel_std: float):
    """The CNN baseline: conv 32 -> pool -> conv 64 -> pool -> dense 128 ->
    logits, on pixels scaled like the ViT's."""
    import keras

    inputs = keras.Input(image_shape, name="pixels")
    x = keras.layers.Rescaling(1.0 / (255.0 * pixel_std), -pixel_mean / pixel_std)(inputs)
    for filters in (32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.3)(keras.layers.Dense(128, activation="relu")(x))
    outputs = keras.layers.Dense(num_classes, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="small_cnn")
