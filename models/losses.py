"""Sparse softmax cross-entropy with a hand-written gradient, for training
over large vocabularies."""

import tensorflow as tf


def sparse_softmax_cross_entropy(labels, logits):
    """Per-row `-log softmax(logits)[label]`: the same function as
    `tf.nn.sparse_softmax_cross_entropy_with_logits` (and
    `keras.losses.sparse_categorical_crossentropy(..., from_logits=True)`).

    The forward pass keeps `exp(logits - max)` and the backward pass forms
    `softmax - one_hot(label)` from it, where TensorFlow's fused kernel
    materialises the gradient matrix in the forward pass and autodiff then
    scales it. Over a masked-LM head's (1,290 predictions x 8,000 tokens)
    logits, forward + backward with the projection took 52 ms against 62 ms
    with TensorFlow's op in float32 (40 against 51 with a bfloat16
    projection; a one-off micro-benchmark, 2026-12-06). Computes in float32.

    Args:
        labels: int tensor of shape `(n,)`, the target ids.
        logits: float tensor of shape `(n, vocabulary_size)`.

    Returns:
        float32 tensor of shape `(n,)`.
    """
    labels = tf.cast(labels, tf.int32)
    logits = tf.cast(logits, tf.float32)

    @tf.custom_gradient
    def cross_entropy(z):
        peak = tf.stop_gradient(tf.reduce_max(z, axis=-1, keepdims=True))
        shifted = z - peak
        exp = tf.exp(shifted)
        total = tf.reduce_sum(exp, axis=-1, keepdims=True)
        loss = (tf.squeeze(tf.math.log(total), -1)
                - tf.gather(shifted, labels, batch_dims=1))

        def grad(upstream):
            one_hot = tf.one_hot(labels, tf.shape(z)[-1], dtype=z.dtype)
            return upstream[:, None] * (exp / total - one_hot)

        return loss, grad

    return cross_entropy(logits)
