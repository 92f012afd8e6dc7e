"""Layer normalization with a hand-written gradient, for training."""

import keras
import tensorflow as tf


def _layer_norm_fn(epsilon):
    @tf.custom_gradient
    def layer_norm(x, gamma, beta):
        # Statistics and the normalised values in float32 whatever the input
        # dtype, as keras.layers.LayerNormalization computes them.
        xf = tf.cast(x, tf.float32)
        mean = tf.reduce_mean(xf, axis=-1, keepdims=True)
        centered = xf - mean
        variance = tf.reduce_mean(tf.square(centered), axis=-1, keepdims=True)
        inv = tf.math.rsqrt(variance + epsilon)
        normalized = centered * inv
        outputs = normalized * gamma + beta

        def grad(dy):
            dy = tf.cast(dy, tf.float32)
            features = tf.shape(normalized)[-1]
            dgamma = tf.reduce_sum(tf.reshape(dy * normalized, [-1, features]), axis=0)
            dbeta = tf.reduce_sum(tf.reshape(dy, [-1, features]), axis=0)
            dnorm = dy * gamma
            dx = inv * (
                dnorm
                - tf.reduce_mean(dnorm, axis=-1, keepdims=True)
                - normalized * tf.reduce_mean(dnorm * normalized, axis=-1, keepdims=True)
            )
            return tf.cast(dx, x.dtype), dgamma, dbeta

        return tf.cast(outputs, x.dtype), grad

    return layer_norm


@keras.saving.register_keras_serializable(package="transformer_pipeline")
class LayerNormalization(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` whose training step runs a written-out
    gradient.

    Same arguments, weights (`gamma`, `beta`) and outputs as the Keras layer.
    With `training=True`, normalisation over the last axis with both `gamma`
    and `beta` runs `_layer_norm_fn`, whose backward pass is the closed form
    `dx = inv * (dn - mean(dn) - n * mean(dn * n))` (`n` the normalised input,
    `dn = dy * gamma`) instead of autodiff through the moments: fewer ops and
    passes over the activations, for a faster training step (the A/B is in
    docs/BENCHMARKS.md, "Measured history"). Anything else, inference
    included, is the Keras layer's own call, so exported graphs do not change.
    """

    def call(self, inputs, training=None):
        last_axis_only = list(self.axis) in ([-1], [len(inputs.shape) - 1])
        if training is True and self.center and self.scale and last_axis_only \
                and not self.rms_scaling:
            outputs = _layer_norm_fn(self.epsilon)(
                inputs,
                tf.convert_to_tensor(self.gamma),
                tf.convert_to_tensor(self.beta),
            )
            return tf.cast(outputs, self.compute_dtype)
        return super().call(inputs)
