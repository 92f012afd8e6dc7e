"""Cached decoding with our layers converts to TFLite builtins and runs in
ai-edge-litert step by step (DESIGN.md: `encode` + one-step `decode`
signatures, the KV cache as inputs and outputs, the loop in the app)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from tflite_test_utils import assert_builtins_only, convert_archive

from models.layers import TokenAndPositionEmbedding, TransformerDecoder, TransformerEncoder

VOCAB, HIDDEN, NUM_HEADS, SOURCE_SEQ, TARGET_SEQ = 32, 16, 2, 8, 6
HEAD_DIM = HIDDEN // NUM_HEADS


class _ToyTranslator(keras.Model):
    """Encoder-decoder with a one-step cached `decode`, batch 1."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.source_embedding = TokenAndPositionEmbedding(
            VOCAB, HIDDEN, SOURCE_SEQ, name="source_embedding"
        )
        self.target_embedding = TokenAndPositionEmbedding(
            VOCAB, HIDDEN, TARGET_SEQ, name="target_embedding"
        )
        self.encoder = TransformerEncoder(
            intermediate_dim=32, num_heads=NUM_HEADS, name="encoder"
        )
        self.decoder = TransformerDecoder(
            intermediate_dim=32, num_heads=NUM_HEADS, norm_first=True, name="decoder"
        )
        self.head = keras.layers.Dense(VOCAB, name="head")

    def _encoder_outputs(self, source_ids, source_padding_mask):
        x = self.source_embedding(source_ids)
        return self.encoder(x, padding_mask=source_padding_mask)

    def call(self, inputs):
        """The full teacher-forced pass: logits `(batch, target_seq, vocab)`."""
        source_ids, source_padding_mask, target_ids = inputs
        encoded = self._encoder_outputs(source_ids, source_padding_mask)
        x = self.decoder(
            self.target_embedding(target_ids),
            encoded,
            encoder_padding_mask=source_padding_mask,
        )
        return self.head(x)

    def encode(self, source_ids, source_padding_mask):
        encoded = self._encoder_outputs(source_ids, source_padding_mask)
        return {
            "cross_attention_cache": self.decoder.compute_cross_attention_cache(encoded)
        }

    def decode(self, token_ids, index, self_attention_cache, cross_attention_cache,
               source_padding_mask):
        x = self.target_embedding(token_ids, start_index=index)  # (1, 1, hidden)
        x, self_attention_cache, _ = self.decoder(
            x,
            encoder_padding_mask=source_padding_mask,
            self_attention_cache=self_attention_cache,
            self_attention_cache_update_index=index,
            cross_attention_cache=cross_attention_cache,
        )
        logits = self.head(ops.squeeze(x, axis=1))  # (1, vocab)
        return {"logits": logits, "self_attention_cache": self_attention_cache}


@pytest.mark.slow
def test_encode_and_cached_decode_run_in_litert(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(0)
    source_ids = rng.integers(1, VOCAB, size=(1, SOURCE_SEQ)).astype("int32")
    source_padding_mask = (np.arange(SOURCE_SEQ) < 6)[None].astype("int32")
    target_ids = rng.integers(1, VOCAB, size=(1, TARGET_SEQ)).astype("int32")

    model = _ToyTranslator(name="toy_translator")
    full_logits = ops.convert_to_numpy(
        model((source_ids, source_padding_mask, target_ids))
    )

    def keras_decode():
        """Teacher-forced cached decoding in Keras: logits per step."""
        cross_cache = model.encode(source_ids, source_padding_mask)[
            "cross_attention_cache"
        ]
        self_cache = np.zeros((1, 2, TARGET_SEQ, NUM_HEADS, HEAD_DIM), "float32")
        for i in range(TARGET_SEQ):
            outputs = model.decode(
                target_ids[:, i : i + 1], np.int32(i), self_cache, cross_cache,
                source_padding_mask,
            )
            self_cache = outputs["self_attention_cache"]
            yield ops.convert_to_numpy(outputs["logits"])

    keras_logits = np.stack(list(keras_decode()), axis=1)
    np.testing.assert_allclose(keras_logits, full_logits, atol=1e-5)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "encode",
        model.encode,
        input_signature=[
            tf.TensorSpec((1, SOURCE_SEQ), tf.int32, name="source_ids"),
            tf.TensorSpec((1, SOURCE_SEQ), tf.int32, name="source_padding_mask"),
        ],
    )
    archive.add_endpoint(
        "decode",
        model.decode,
        input_signature=[
            tf.TensorSpec((1, 1), tf.int32, name="token_ids"),
            tf.TensorSpec((), tf.int32, name="index"),
            tf.TensorSpec((1, 2, TARGET_SEQ, NUM_HEADS, HEAD_DIM), tf.float32,
                          name="self_attention_cache"),
            tf.TensorSpec((1, 2, SOURCE_SEQ, NUM_HEADS, HEAD_DIM), tf.float32,
                          name="cross_attention_cache"),
            tf.TensorSpec((1, SOURCE_SEQ), tf.int32, name="source_padding_mask"),
        ],
    )
    # Builtins only: a Flex op fails the conversion.
    flatbuffer = convert_archive(archive, tmp_path / "saved_model", ["encode", "decode"])
    op_names = assert_builtins_only(flatbuffer)
    assert "DYNAMIC_UPDATE_SLICE" in op_names

    interpreter = Interpreter(model_content=flatbuffer)
    assert set(interpreter.get_signature_list()) == {"encode", "decode"}
    encode = interpreter.get_signature_runner("encode")
    decode = interpreter.get_signature_runner("decode")
    cross_cache = encode(source_ids=source_ids, source_padding_mask=source_padding_mask)[
        "cross_attention_cache"
    ]
    self_cache = np.zeros((1, 2, TARGET_SEQ, NUM_HEADS, HEAD_DIM), "float32")
    for i in range(TARGET_SEQ):
        outputs = decode(
            token_ids=target_ids[:, i : i + 1],
            index=np.array(i, "int32"),
            self_attention_cache=self_cache,
            cross_attention_cache=cross_cache,
            source_padding_mask=source_padding_mask,
        )
        self_cache = outputs["self_attention_cache"]  # passed back to the next step
        np.testing.assert_allclose(
            outputs["logits"], keras_logits[:, i], atol=1e-4, err_msg=f"step {i}"
        )
