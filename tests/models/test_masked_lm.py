"""Tests for `models.MaskedLanguageModel` and its `MaskedLMHead`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import models


def _model(dtype):
    backbone = models.TransformerEncoderBackbone(
        vocabulary_size=50, hidden_dim=16, intermediate_dim=32, num_heads=2,
        num_layers=1, max_sequence_length=12, dtype=dtype)
    return models.MaskedLanguageModel(backbone, dtype=dtype)


def _inputs():
    rng = np.random.default_rng(0)
    return {"token_ids": rng.integers(5, 50, size=(3, 10)).astype("int32"),
            "padding_mask": np.arange(10)[None, :] < np.array([[10], [6], [2]]),
            "mask_positions": np.array([[1, 4], [0, 5], [1, 1]], "int32")}


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_logits_are_float32_and_a_training_step_is_finite(dtype):
    """Under mixed_bfloat16 the head's float32 logits add its float32 bias
    (the variable reads as bfloat16 there; adding it raised before the fix)."""
    model = _model(dtype)
    inputs = _inputs()
    logits = model(inputs)
    assert logits.shape == (3, 2, 50) and logits.dtype == "float32"
    assert all(w.dtype == "float32" for w in model.weights)
    targets = tf.constant([[7, 8], [9, 10], [11, 11]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            targets, model(inputs, training=True), from_logits=True))
    grads = tape.gradient(loss, model.trainable_weights)
    assert np.isfinite(float(loss))
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)


def test_mixed_precision_logits_follow_the_float32_model():
    """The same weights in float32 and mixed_bfloat16 give close logits."""
    full, mixed = _model("float32"), _model("mixed_bfloat16")
    inputs = _inputs()
    full(inputs), mixed(inputs)
    mixed.set_weights(full.get_weights())
    np.testing.assert_allclose(mixed(inputs).numpy(), full(inputs).numpy(), atol=0.15)


def test_with_mask_weights_only_the_real_predictions_are_scored():
    """`mask_weights` packs the logits of weight > 0 (row-major): the same
    values as the full logits at those slots, none for the padded ones."""
    model = _model("float32")
    inputs = _inputs()
    weights = np.array([[1, 1], [1, 0], [0, 0]], "float32")
    full = model(inputs).numpy()
    packed = model({**inputs, "mask_weights": weights}).numpy()
    assert packed.shape == (3, 50)
    np.testing.assert_allclose(packed, full[weights > 0], rtol=1e-5, atol=1e-5)
