"""Export module of translation (German -> English, `models.Translator`).

SavedModel signature (tensorflow-text SentencePiece and greedy decoding inside
the graph):

  serving_default  text: string (batch,) -> translation: string (batch,)

The graph tokenizes like the training data (InGraphTokenizer), decodes with
`Translator.greedy_decode` (a `tf.while_loop` over the cached decoder step)
and detokenizes with tensorflow-text (`SentencepieceTokenizer.detokenize`) the
ids before the first eos, special ids dropped: TF core and tensorflow-text ops
only, as TF Serving needs.

TFLite: the two signatures of `Translator.tflite_archive()` (batch 1, static
shapes, the KV cache as inputs and outputs, builtins only):

  encode  source_ids, source_padding_mask int32 (1, S) -> cross_cache
  decode  token_ids int32 (1, 1), index int32 (), self_cache, cross_cache,
          source_padding_mask -> logits float32 (1, vocabulary), self_cache

Variants float32, float16 and dynamic_range (the translation configs list
these); int8 and int16x8 calibrate a single signature in export/quantize.py,
so for this two-signature model they fail and the report lists them as failed.
Each variant is measured with the greedy loop the edge app runs
(`edge/runners/translation.greedy_decode`, numpy over the two signatures): test
BLEU and chrF (sacrebleu) and the share of test sentences translated exactly
as the Keras model's greedy decoding does. Latency: a full-length translation
(encode + max_target_length decode steps). Bundle: spm.model and the
decoding constants in the manifest.
"""

from __future__ import annotations

import functools

import numpy as np

from export.modules import register_export_module
from export.modules.base import ExportModule

WARMUP_TEXTS = 16
INPUT_NAME, OUTPUT_NAME = "text", "translation"


def special_ids() -> tuple[int, ...]:
    """Ids detokenization drops: pad, unk, bos, eos."""
    from pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

    return (PAD_ID, UNK_ID, BOS_ID, EOS_ID)


def pad_tokens(rows: list[np.ndarray], length: int) -> np.ndarray:
    """Generated ids of several sentences as int32 (n, length), zeros after each
    row's end: the layout of `Translator.greedy_decode`'s output."""
    out = np.zeros((len(rows), length), dtype=np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


@register_export_module("translation")
class TranslationExport(ExportModule):
    tflite_signatures = ("encode", "decode")
    gate_metric = "bleu"
    gate_direction = "max"
    gate_scale = 1.0          # BLEU is already in points
    latency_unit = "one full-length translation: encode + max_target_length decode steps"

    def __init__(self, task, model):
        super().__init__(task, model)
        self.max_source_length = self.model.max_source_length
        self.max_target_length = self.model.max_target_length
        self._test_ids = None

    # ---------------------------------------------------------- SavedModel
    def serving_archive(self):
        import keras
        import tensorflow as tf

        from pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID

        model, tokenizer = self.model, self.task.tokenizer
        special = tf.constant(special_ids(), tf.int32)

        def translate(text):
            source_ids = tokenizer(text)                        # (batch, S)
            tokens = model.greedy_decode(source_ids, tf.not_equal(source_ids, PAD_ID),
                                         BOS_ID, EOS_ID)        # (batch, T)
            # Keep the ids before the first eos that are not special ids.
            eos_seen = tf.cumsum(tf.cast(tf.equal(tokens, EOS_ID), tf.int32), axis=1)
            special_id = tf.reduce_any(tf.equal(tokens[..., None], special), axis=-1)
            keep = tf.logical_and(tf.equal(eos_seen, 0), tf.logical_not(special_id))
            pieces = tf.ragged.boolean_mask(tokens, keep)       # (batch, None)
            return {OUTPUT_NAME: tokenizer.tokenizer.detokenize(pieces)}

        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.track(tokenizer.tokenizer)
        archive.add_endpoint("serving_default", translate, input_signature=[
            tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
        return archive

    def serving_assets(self):
        return {"spm.model": self.task.tokenizer_path}

    def warmup_requests(self):
        from export.warmup import text_requests

        return text_requests([e["de"] for e in self.task.sample("validation",
                                                                WARMUP_TEXTS)],
                             input_key=INPUT_NAME)

    def saved_model_metrics(self, directory, reference) -> dict:
        """The written SavedModel's translations of the test split against the
        Keras model's greedy ones (`reference`, in test order)."""
        import time

        import tensorflow as tf

        start = time.time()
        translate = tf.saved_model.load(directory).signatures["serving_default"]
        texts = self.task.pairs["test"]["de"]
        served = []
        for i in range(0, len(texts), 256):
            out = translate(**{INPUT_NAME: tf.constant(texts[i:i + 256])})[OUTPUT_NAME]
            served += [t.decode("utf-8") for t in out.numpy()]
        return {"greedy_agreement_with_keras": float(np.mean(
                    [a == b for a, b in zip(served, reference, strict=True)])),
                "sentences": len(served), "seconds": round(time.time() - start, 1)}

    # -------------------------------------------------------------- TFLite
    def tflite_archive(self):
        return self.model.tflite_archive()

    def source_ids(self, texts: list[str]) -> np.ndarray:
        """int32 (n, max_source_length) ids, as the SavedModel and the training
        data tokenize."""
        import tensorflow as tf

        return self.task.tokenizer(tf.constant(texts)).numpy()

    def calibration_inputs(self, signature, max_examples, seed):
        # Only `encode` inputs come from text; export/quantize.py calibrates
        # one signature, so integer variants of this model fail there anyway.
        if signature != "encode":
            raise ValueError(f"translation: no calibration inputs for signature "
                             f"{signature!r} (only 'encode')")
        examples = self.task.sample("train", max_examples, seed=seed)
        ids = self.source_ids([e["de"] for e in examples])
        return [{"source_ids": ids[i:i + 1], "source_padding_mask":
                 (ids[i:i + 1] != 0).astype(np.int32)} for i in range(len(ids))]

    def test_ids(self) -> np.ndarray:
        """Source ids of the whole test split, in order."""
        if self._test_ids is None:
            self._test_ids = self.source_ids(self.task.pairs["test"]["de"])
        return self._test_ids

    def latency_inputs(self):
        return {"source_ids": self.test_ids()[:1]}

    def greedy_tflite(self, model, source_ids: np.ndarray, eos_id: int | None = None
                      ) -> np.ndarray:
        """A TFLite variant's (`TFLiteModel`) greedy ids of one padded source:
        the edge app's loop."""
        from edge.runners.translation import greedy_decode
        from pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID

        shape = model.signature("decode").get_input_details()["self_cache"]["shape"]
        return greedy_decode(functools.partial(model, "encode"),
                             functools.partial(model, "decode"), source_ids, shape,
                             BOS_ID, EOS_ID if eos_id is None else eos_id,
                             self.max_target_length, PAD_ID)

    def latency_call(self, model):
        # eos_id -1 is never emitted: always max_target_length decode steps, so
        # every variant is timed on the same work.
        return (lambda source_ids: self.greedy_tflite(model, source_ids, eos_id=-1),
                self.latency_inputs())

    def translate_tflite(self, model, ids: np.ndarray) -> np.ndarray:
        """Greedy ids of every row of `ids`, int32 (n, max_target_length)."""
        return pad_tokens([self.greedy_tflite(model, row) for row in ids],
                          self.max_target_length)

    def evaluate_tflite(self, runner, reference):
        """Test BLEU/chrF of the variant's greedy translations, and their
        agreement with `reference`, the Keras model's greedy translations of
        the test split in order (`TranslationTask.evaluate`)."""
        from pipeline.tasks.translation import corpus_scores

        hypotheses = self.task.detokenize(self.translate_tflite(runner, self.test_ids()))
        return {**corpus_scores(hypotheses, self.task.pairs["test"]["en"]),
                "agreement_with_keras": float(np.mean(
                    [h == k for h, k in zip(hypotheses, reference, strict=True)])),
                "examples": len(hypotheses)}

    # ---------------------------------------------------------------- edge
    def bundle_files(self):
        return {"spm.model": self.task.tokenizer_path}

    def bundle_manifest(self):
        from pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID, max_text_bytes

        return {"tokenizer": "spm.model", "source_language": "de",
                "target_language": "en",
                "max_source_length": self.max_source_length,
                "max_target_length": self.max_target_length,
                "max_text_bytes": max_text_bytes(self.max_source_length),
                "pad_id": PAD_ID, "bos_id": BOS_ID, "eos_id": EOS_ID,
                "special_ids": list(special_ids()),
                "decoding": "greedy",
                # the edge app's beam search (--beams N) ranks finished beams so
                "num_beams": self.cfg.generate.num_beams,
                "length_penalty": self.cfg.generate.length_penalty}
