"""`models.losses.sparse_softmax_cross_entropy` computes TensorFlow's sparse
softmax cross-entropy (values and gradients); its speed is measured by a
micro-benchmark (docstring), not here."""

import numpy as np
import pytest
import tensorflow as tf

from models.losses import sparse_softmax_cross_entropy


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_values_and_gradients_match_tensorflow(dtype):
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(scale=4.0, size=(7, 50)).astype("float32"))
    logits = tf.cast(logits, dtype)
    labels = tf.constant(rng.integers(0, 50, size=7), tf.int32)
    weights = tf.constant(rng.uniform(size=7).astype("float32"))  # a non-uniform upstream
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        ours = sparse_softmax_cross_entropy(labels, logits)
        reference = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels, tf.cast(logits, tf.float32))
        ours_total = tf.reduce_sum(ours * weights)
        reference_total = tf.reduce_sum(reference * weights)
    assert ours.dtype == tf.float32 and ours.shape == (7,)
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-5, atol=1e-5)
    ours_grad = tape.gradient(ours_total, logits)
    reference_grad = tape.gradient(reference_total, logits)
    assert ours_grad.dtype == logits.dtype
    np.testing.assert_allclose(tf.cast(ours_grad, tf.float32).numpy(),
                               tf.cast(reference_grad, tf.float32).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_huge_logits_stay_finite():
    logits = tf.constant([[1e4, -1e4, 0.0], [-3e4, -3e4, -3e4]])
    labels = tf.constant([1, 2])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = sparse_softmax_cross_entropy(labels, logits)
        total = tf.reduce_sum(loss)
    grad = tape.gradient(total, logits)
    np.testing.assert_allclose(loss.numpy(), [2e4, np.log(3.0)], rtol=1e-6)
    np.testing.assert_allclose(grad.numpy(), [[1.0, -1.0, 0.0], [1 / 3, 1 / 3, -2 / 3]],
                               atol=1e-6)
