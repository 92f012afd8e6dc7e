"""GELU with a hand-written, XLA-fused gradient, for training."""

import math

import keras
import tensorflow as tf

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# Forward and backward are each one XLA-compiled function: XLA fuses their
# element-wise ops into one pass over the activations, where TensorFlow's
# kernels make one pass per op. Only these element-wise bodies are compiled;
# the matmuls around them stay on oneDNN (XLA's own matmuls were slower here,
# docs/BENCHMARKS.md). Both compute in float32 whatever the input dtype.
@tf.function(jit_compile=True, autograph=False)
def _gelu_forward(x):
    xf = tf.cast(x, tf.float32)
    return tf.cast(xf * (0.5 * (1.0 + tf.math.erf(xf * _SQRT_HALF))), x.dtype)


@tf.function(jit_compile=True, autograph=False)
def _gelu_backward(x, dy):
    xf = tf.cast(x, tf.float32)
    cdf = 0.5 * (1.0 + tf.math.erf(xf * _SQRT_HALF))
    pdf = tf.exp(-0.5 * tf.square(xf)) * _INV_SQRT_2PI
    return tf.cast(tf.cast(dy, tf.float32) * (cdf + xf * pdf), dy.dtype)


@tf.custom_gradient
def _gelu_exact(x):
    def grad(dy):
        return _gelu_backward(x, dy)

    return _gelu_forward(x), grad


def gelu(x, training=False):
    """Exact GELU, `x * Phi(x)`, the same function as
    `keras.activations.gelu(x, approximate=False)`.

    With `training=True` it runs `_gelu_exact`: its gradient
    `Phi(x) + x * phi(x)` is written out instead of derived by autodiff through
    `Erfc`, and forward and backward each run as one fused XLA kernel, to make
    the training step faster (the micro-benchmark against the Keras op is in
    docs/BENCHMARKS.md, "Measured history"). At inference it is
    `keras.activations.gelu`, so exported graphs (SavedModel, TFLite) are the
    ones the Keras op gives.
    """
    if training is True:
        return _gelu_exact(x)
    return keras.activations.gelu(x, approximate=False)
