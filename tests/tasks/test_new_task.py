"""A new task defined here, through the public interfaces only: predict a
text's length bucket. A task, a model, an export module and an edge runner,
then the whole pipeline (training, evaluation, SavedModel, TFLite, bundle, edge
app) runs it. Its size is the measure of how cheap a new task is.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from export.modules import ExportModule, register_export_module
from pipeline.tasks import Task, register_task
from tests.conftest import ROOT

BUCKETS = (4, 8, 16)   # word counts: <= 4, <= 8, <= 16, more
WORDS = "red green blue small large old new cat dog tree house river stone".split()


def bucket(text):
    return int(np.searchsorted(BUCKETS, len(text.split())))


# ---------------------------------------------------------------- the task
@register_task("text_length")
class TextLengthTask(Task):
    best_metric = "accuracy"

    def prepare(self, strategy=None):
        from pipeline.tokenizer import InGraphTokenizer, read_model, train_sentencepiece

        rng = np.random.default_rng(0)
        sizes = {"train": 1200, "validation": 200, "test": 300}
        self.examples = {
            split: [" ".join(rng.choice(WORDS, rng.integers(1, 25))) for _ in range(n)]
            for split, n in sizes.items()}
        self.tokenizer_path = train_sentencepiece(
            self.examples["train"], self.cfg.tokenizer, self.path("tokenizer"), self.log)
        self.tokenizer = InGraphTokenizer(read_model(self.tokenizer_path),
                                          self.cfg.model.max_sequence_length)

    def num_examples(self, split):
        return len(self.examples[split])

    def sample(self, split, max_examples=0, seed=None):
        texts = self.examples[split][:max_examples or None]
        return [{"text": t, "label": bucket(t)} for t in texts]

    def preprocess(self, examples):
        ids = self.tokenizer(examples["text"])
        return {"token_ids": ids, "padding_mask": ids != 0, "label": examples["label"]}

    def _batches(self, split, batch_size, train=False):
        examples = self.sample(split)
        data = tf.data.Dataset.from_tensor_slices(
            {"text": [e["text"] for e in examples], "label": [e["label"] for e in examples]})
        if train:
            data = data.shuffle(len(examples), seed=1).repeat()
        return data.batch(batch_size, drop_remainder=train).map(self.preprocess).map(
            lambda d: ({"token_ids": d["token_ids"], "padding_mask": d["padding_mask"]},
                       d["label"]))

    def train_dataset(self, batch_size, skip_batches=0, input_context=None):
        return self._batches("train", batch_size, train=True).skip(skip_batches)

    def eval_dataset(self, split, batch_size):
        return self._batches(split, batch_size)

    def build_model(self):
        from pipeline.tokenizer import vocabulary_size

        model = LengthModel(vocabulary_size(self.tokenizer_path), len(BUCKETS) + 1)
        length = self.cfg.model.max_sequence_length
        model({"token_ids": tf.zeros((1, length), tf.int32),
               "padding_mask": tf.ones((1, length), tf.bool)})
        return model

    def compute_loss(self, model, inputs, targets, training=True):
        logits = model(inputs, training=training)
        loss = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
        correct = tf.reduce_sum(tf.cast(tf.equal(
            tf.argmax(logits, -1, output_type=tf.int32), targets), tf.float32))
        return loss, {"accuracy": correct}

    def validation_step(self, model, inputs, targets):
        predicted = np.argmax(model(inputs, training=False), -1)
        return {"correct": [int(np.sum(predicted == targets.numpy()))],
                "count": [len(predicted)]}

    def reduce_aggregated_logs(self, state):
        return {"accuracy": sum(map(sum, state["correct"])) / sum(map(sum, state["count"]))}

    def evaluate(self, model, baseline=True):
        from pipeline.trainer import validate

        metrics, _ = validate(self, model, self.eval_dataset("test", 64))
        labels = [e["label"] for e in self.sample("test")]
        result = {"test": metrics, "reference": metrics["accuracy"]}
        if baseline:   # the majority bucket of the train split
            majority = np.bincount([e["label"] for e in self.sample("train")]).argmax()
            result["baseline"] = {"accuracy": float(np.mean(np.equal(labels, majority)))}
        return result


# --------------------------------------------------------------- the model
class LengthModel(keras.Model):
    """Embeddings summed over real tokens, then a dense layer."""

    def __init__(self, vocabulary_size, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.embedding = keras.layers.Embedding(vocabulary_size, 16)
        self.head = keras.layers.Dense(num_classes)

    def call(self, inputs, training=None):
        mask = keras.ops.cast(keras.ops.expand_dims(inputs["padding_mask"], -1), "float32")
        summed = keras.ops.sum(self.embedding(inputs["token_ids"]) * mask, axis=1)
        return self.head(summed)


# ------------------------------------------------------- the export module
@register_export_module("text_length")
class TextLengthExport(ExportModule):
    def _archive(self, name, function, spec):
        archive = keras.export.ExportArchive()
        archive.track(self.model)
        archive.track(self.task.tokenizer.tokenizer)
        archive.add_endpoint(name, function, input_signature=[spec])
        return archive

    def _probabilities(self, token_ids):
        inputs = {"token_ids": token_ids, "padding_mask": token_ids != 0}
        return tf.nn.softmax(self.model(inputs, training=False))

    def serving_archive(self):
        def serve(text):
            probabilities = self._probabilities(self.task.tokenizer(text))
            return {"bucket": tf.argmax(probabilities, -1, output_type=tf.int32)}
        return self._archive("serving_default", serve, tf.TensorSpec([None], tf.string))

    def tflite_archive(self):
        length = self.cfg.model.max_sequence_length
        return self._archive("serving_default",
                             lambda ids: {"probabilities": self._probabilities(ids)},
                             tf.TensorSpec([None, length], tf.int32, name="token_ids"))

    def _ids(self, split):
        return self.task.tokenizer(tf.constant([e["text"] for e in
                                                self.task.sample(split)])).numpy()

    def calibration_inputs(self, signature, max_examples, seed):
        return [{"token_ids": row[None]} for row in self._ids("train")[:max_examples]]

    def latency_inputs(self):
        return {"token_ids": self._ids("test")[:1]}

    def evaluate_tflite(self, runner, reference):
        probabilities = runner("serving_default", token_ids=self._ids("test"))
        labels = [e["label"] for e in self.task.sample("test")]
        accuracy = float(np.mean(probabilities["probabilities"].argmax(-1) == labels))
        return {"accuracy": accuracy, "examples": len(labels)}

    def bundle_files(self):
        return {"spm.model": self.task.tokenizer_path}

    def bundle_manifest(self):
        return {"tokenizer": "spm.model", "buckets": list(BUCKETS),
                "max_sequence_length": self.cfg.model.max_sequence_length}


# -------------------------------------------------------------- the test
@pytest.mark.slow
def test_a_task_defined_here_runs_through_the_whole_pipeline(tmp_path):
    from pipeline.config import load_config
    from pipeline.workflow import run

    cfg = load_config(None, [
        "task=text_length", "name=text_length", f"runtime.artifacts_root={tmp_path}",
        "tokenizer.vocabulary_size=40", "model.max_sequence_length=32",
        "train.global_batch_size=32", "train.epochs=20", "train.learning_rate=0.05",
        "export.model_name=text_length", "export.tflite_variants=[float32,dynamic_range]",
        "export.latency_runs=5"])
    metrics = run(cfg)

    assert metrics["task"] == "text_length"
    assert metrics["test"]["accuracy"] > metrics["baseline"]["accuracy"] + 0.2, metrics
    assert metrics["training"]["best_validation"]["metric"] == "accuracy"
    for variant in ("float32", "dynamic_range"):
        assert abs(metrics["tflite"][variant]["accuracy"] - metrics["test"]["accuracy"]) < 0.05

    # The SavedModel takes raw text.
    served = tf.saved_model.load(metrics["artifacts"]["saved_model"])
    texts = ["red cat", " ".join(["dog"] * 7), " ".join(["old tree"] * 6)]
    got = served.signatures["serving_default"](text=tf.constant(texts))["bucket"].numpy()
    assert list(got) == [bucket(t) for t in texts]

    # The bundle names the task; the edge app runs it with this module's runner.
    bundle = metrics["artifacts"]["edge_bundle"]
    with open(os.path.join(bundle, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["task"] == "text_length"
    assert set(manifest["signatures"]["serving_default"]["inputs"]) == {"token_ids"}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "tasks",
                                                       "text_length_runner.py"),
                          "--bundle", bundle, *texts],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert [int(line.split("\t")[0]) for line in out.stdout.splitlines()] == \
        [bucket(t) for t in texts]
