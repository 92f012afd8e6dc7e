"""Tests for the training-speed layers: `models.layers.Dropout`,
`models.layers.LayerNormalization` and `models.layers.activations.gelu`.

Each must compute what the Keras op it replaces computes (values and
gradients), only faster; the speed itself is measured by
`python -m pipeline bench`, not here.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from layer_test_utils import as_float32_numpy, run_layer_test

from models.layers import Dropout, LayerNormalization
from models.layers.activations import gelu

# ------------------------------------------------------------------ Dropout


def test_dropout_layer_basics():
    x = np.random.default_rng(0).normal(size=(2, 5, 6)).astype("float32")
    run_layer_test(
        Dropout,
        init_kwargs={"rate": 0.1, "seed": 3},
        input_data=x,
        expected_output_shape=(2, 5, 6),
        run_training_check=False,
    )


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_statistics(rate):
    x = np.ones((1000, 1001), "float32")  # odd size: the last uint32 is split
    y = keras.ops.convert_to_numpy(Dropout(rate, seed=1)(x, training=True))
    dropped = y == 0
    # 1,001,000 draws: the standard error of the drop fraction is <= 0.0005.
    assert abs(dropped.mean() - rate) < 0.003
    kept = y[~dropped]
    np.testing.assert_allclose(kept, 1.0 / (1.0 - round(rate * 65536) / 65536), rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.01  # inverted dropout keeps the expectation
    # The two 16-bit halves of each uint32 are independent draws.
    flat = dropped.reshape(-1)[:1_000_000].reshape(-1, 2)
    both = (flat[:, 0] & flat[:, 1]).mean()
    assert abs(both - rate * rate) < 0.003


def test_dropout_identity_outside_training_and_at_rate_zero():
    x = np.random.default_rng(1).normal(size=(3, 4)).astype("float32")
    layer = Dropout(0.3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(Dropout(0.0)(x, training=True)), x)


def test_dropout_masks_change_per_call_and_follow_the_seed():
    x = np.ones((64, 64), "float32")
    a, b = Dropout(0.5, seed=7), Dropout(0.5, seed=7)
    first = keras.ops.convert_to_numpy(a(x, training=True))
    second = keras.ops.convert_to_numpy(a(x, training=True))
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, keras.ops.convert_to_numpy(b(x, training=True)))


def test_dropout_gradient_is_the_mask_times_the_scale():
    x = tf.constant(np.random.default_rng(2).normal(size=(8, 9)).astype("float32"))
    layer = Dropout(0.25, seed=4)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        total = tf.reduce_sum(y)
    grad = tape.gradient(total, x).numpy()
    scale = 1.0 / (1.0 - 0.25)
    np.testing.assert_allclose(grad, np.where(y.numpy() == 0, 0.0, scale), rtol=1e-6)


def test_dropout_keeps_bfloat16():
    x = tf.ones((4, 6), tf.bfloat16)
    y = Dropout(0.5, dtype="mixed_bfloat16")(x, training=True)
    assert y.dtype == tf.bfloat16


def test_dropout_rejects_bad_rate():
    with pytest.raises(ValueError, match="dropout"):
        Dropout(1.0)


# --------------------------------------------------------- LayerNormalization


def _random_layer_norms(shape, seed=0):
    rng = np.random.default_rng(seed)
    ours, reference = LayerNormalization(epsilon=1e-5), keras.layers.LayerNormalization(
        epsilon=1e-5)
    ours.build(shape)
    reference.build(shape)
    weights = [rng.normal(size=shape[-1:]).astype("float32") for _ in range(2)]
    ours.set_weights(weights)
    reference.set_weights(weights)
    return ours, reference


def test_layer_norm_serializes_and_trains_under_xla():
    shape = (2, 5, 6)
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    layer, _ = _random_layer_norms(shape)
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is LayerNormalization
    revived(x)
    revived.set_weights(layer.get_weights())
    np.testing.assert_array_equal(revived(x).numpy(), layer(x).numpy())

    @tf.function(jit_compile=True)
    def grads(data):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(data, training=True)))
        return tape.gradient(loss, layer.trainable_variables)

    assert all(np.all(np.isfinite(g.numpy())) for g in grads(x))


def test_layer_norm_training_path_equals_keras_values_and_gradients():
    shape = (3, 7, 16)
    x = tf.constant((np.random.default_rng(3).normal(size=shape) * 3 + 1).astype("float32"))
    ours, reference = _random_layer_norms(shape)
    upstream = tf.constant(np.random.default_rng(4).normal(size=shape).astype("float32"))
    results = []
    for layer in (ours, reference):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * upstream)
        grads = tape.gradient(loss, [x] + layer.trainable_variables)
        results.append([y.numpy()] + [g.numpy() for g in grads])
    for name, a, b in zip(["output", "dx", "dgamma", "dbeta"], *results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=name)


def test_layer_norm_inference_is_the_keras_call():
    shape = (2, 4, 8)
    x = np.random.default_rng(5).normal(size=shape).astype("float32")
    ours, reference = _random_layer_norms(shape)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours(x)),
                                  keras.ops.convert_to_numpy(reference(x)))


def test_layer_norm_mixed_bfloat16_training_path():
    shape = (2, 4, 8)
    x = np.random.default_rng(6).normal(size=shape).astype("float32")
    layer = LayerNormalization(dtype="mixed_bfloat16")
    reference = keras.layers.LayerNormalization()
    y = layer(tf.cast(x, tf.bfloat16), training=True)
    assert y.dtype == tf.bfloat16
    np.testing.assert_allclose(as_float32_numpy(y), reference(x).numpy(), atol=0.05)


# ---------------------------------------------------------------------- GELU


def test_gelu_training_path_equals_keras_values_and_gradients():
    x = tf.constant(np.linspace(-6, 6, 1001).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours = gelu(x, training=True)
        reference = keras.activations.gelu(x, approximate=False)
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), atol=1e-6)
    np.testing.assert_allclose(tape.gradient(ours, x).numpy(),
                               tape.gradient(reference, x).numpy(), atol=1e-5)


def test_gelu_inference_is_the_keras_op_and_keeps_bfloat16():
    x = tf.constant(np.linspace(-3, 3, 17).astype("float32"))
    np.testing.assert_array_equal(gelu(x).numpy(),
                                  keras.activations.gelu(x, approximate=False).numpy())
    y = gelu(tf.cast(x, tf.bfloat16), training=True)
    assert y.dtype == tf.bfloat16
    np.testing.assert_allclose(as_float32_numpy(y),
                               keras.activations.gelu(x, approximate=False).numpy(),
                               atol=0.02)
