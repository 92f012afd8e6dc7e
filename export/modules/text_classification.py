"""Export module of text classification.

SavedModel signatures (tensorflow-text SentencePiece inside the graph):

  serving_default  text: string (batch,) -> label: string (batch,),
                   class_id: int32 (batch,), probabilities: float32 (batch, classes)
  token_ids        token_ids: int32 (batch, seq <= max_sequence_length)
                   -> class_id, probabilities
  tokenize         text: string (batch,) -> token_ids: int32 (batch, max_sequence_length)

TFLite: one signature `serving_default`, int32 token_ids (batch,
max_sequence_length) -> float32 probabilities; int8 calibrated on train-split
token ids. Its metric is test accuracy (the variant gate compares it, in
points), with agreement with Keras. Bundle: spm.model, labels.txt.
"""

from __future__ import annotations

import numpy as np

from export.modules import register_export_module
from export.modules.base import ExportModule

INPUT_NAME, OUTPUT_NAME, SIGNATURE = "token_ids", "probabilities", "serving_default"
WARMUP_TEXTS = 16


def probabilities_archive(model, max_sequence_length: int):
    """The TFLite source of a classifier: `serving_default`, int32 token_ids
    (batch, max_sequence_length) -> float32 probabilities."""
    import keras
    import tensorflow as tf

    from pipeline.tokenizer import PAD_ID

    def probabilities(token_ids):
        # With PAD_ID 0 a cast is `!= PAD_ID` without int32 arithmetic in the
        # graph, which TFLite's int16x8 calibrator cannot handle.
        padding_mask = tf.cast(token_ids, tf.bool) if PAD_ID == 0 else \
            tf.not_equal(token_ids, PAD_ID)
        logits = model({"token_ids": token_ids, "padding_mask": padding_mask},
                       training=False)
        return {OUTPUT_NAME: tf.nn.softmax(logits, axis=-1)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, probabilities, input_signature=[
        tf.TensorSpec([None, max_sequence_length], tf.int32, name=INPUT_NAME)])
    return archive


@register_export_module("text_classification")
class TextClassificationExport(ExportModule):
    tflite_signatures = (SIGNATURE,)
    gate_metric = "accuracy"

    def __init__(self, task, model):
        super().__init__(task, model)
        self.length = self.cfg.model.max_sequence_length
        self._test = None

    @property
    def labels_path(self) -> str:
        import os

        from pipeline.files import LABELS_FILE

        return os.path.join(os.path.dirname(self.task.tokenizer_path), LABELS_FILE)

    # ---------------------------------------------------------- SavedModel
    def serving_archive(self):
        import keras
        import tensorflow as tf

        from pipeline.tokenizer import PAD_ID

        model, length = self.model, self.length
        tokenizer = self.task.tokenizer
        labels = tf.constant(self.task.label_names)

        def classify(token_ids):
            probabilities = tf.nn.softmax(model(
                {"token_ids": token_ids, "padding_mask": tf.not_equal(token_ids, PAD_ID)},
                training=False), axis=-1)
            class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            return class_id, probabilities

        def serve_text(text):
            class_id, probabilities = classify(tokenizer(text))
            return {"label": tf.gather(labels, class_id), "class_id": class_id,
                    "probabilities": probabilities}

        def serve_token_ids(token_ids):
            token_ids = token_ids[:, :length]
            class_id, probabilities = classify(token_ids)
            return {"class_id": class_id, "probabilities": probabilities}

        def tokenize(text):
            return {"token_ids": tokenizer(text)}

        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.track(tokenizer.tokenizer)
        archive.add_endpoint("serving_default", serve_text, input_signature=[
            tf.TensorSpec([None], tf.string, name="text")])
        archive.add_endpoint("token_ids", serve_token_ids, input_signature=[
            tf.TensorSpec([None, None], tf.int32, name="token_ids")])
        archive.add_endpoint("tokenize", tokenize, input_signature=[
            tf.TensorSpec([None], tf.string, name="text")])
        return archive

    def serving_assets(self):
        return {"spm.model": self.task.tokenizer_path, "labels.txt": self.labels_path}

    def warmup_requests(self):
        from export.warmup import text_requests

        return text_requests([e["text"] for e in self.task.sample("validation",
                                                                  WARMUP_TEXTS)])

    # -------------------------------------------------------------- TFLite
    def tflite_archive(self):
        return probabilities_archive(self.model, self.length)

    def token_ids(self, texts: list[str]) -> np.ndarray:
        """int32 (n, max_sequence_length) ids, as the SavedModel tokenizes."""
        import tensorflow as tf

        return self.task.tokenizer(tf.constant(texts)).numpy()

    def calibration_inputs(self, signature, max_examples, seed):
        examples = self.task.sample("train", max_examples, seed=seed)
        ids = self.token_ids([e["text"] for e in examples])
        return [{INPUT_NAME: ids[i:i + 1]} for i in range(len(ids))]

    def test_split(self) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and labels of the test split, padded to the maximum length."""
        if self._test is None:
            batches = list(self.task.eval_dataset("test", 256))
            self._test = (np.concatenate([b[0]["token_ids"].numpy() for b in batches]),
                          np.concatenate([b[1].numpy() for b in batches]))
        return self._test

    def latency_inputs(self):
        ids, _ = self.test_split()
        return {INPUT_NAME: ids[:1].astype(np.int32)}

    def predict_tflite(self, runner, ids: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """float32 probabilities of a TFLite variant (`TFLiteModel`)."""
        return np.concatenate([
            runner(SIGNATURE, **{INPUT_NAME: ids[i:i + batch_size].astype(np.int32)}
                   )[OUTPUT_NAME] for i in range(0, len(ids), batch_size)])

    def evaluate_tflite(self, runner, reference):
        ids, labels = self.test_split()
        probabilities = self.predict_tflite(runner, ids)
        predictions = probabilities.argmax(-1)
        return {"accuracy": float(np.mean(predictions == labels)),
                "agreement_with_keras": float(np.mean(
                    predictions == reference.argmax(-1))),
                "max_abs_probability_diff": float(np.max(np.abs(
                    probabilities - reference))),
                "examples": int(len(labels))}

    # ---------------------------------------------------------------- edge
    def bundle_files(self):
        return {"spm.model": self.task.tokenizer_path, "labels.txt": self.labels_path}

    def bundle_manifest(self):
        from pipeline.tokenizer import PAD_ID, max_text_bytes

        return {"tokenizer": "spm.model", "labels": "labels.txt",
                "max_sequence_length": self.length,
                "max_text_bytes": max_text_bytes(self.length), "pad_id": PAD_ID,
                "input_name": INPUT_NAME, "output_name": OUTPUT_NAME}
