"""Dropout whose random mask needs half the random bits of `keras.layers.Dropout`'s."""

import keras
import tensorflow as tf

from models.layers._utils import check_dropout

# Random bits per element: the rate is rounded to a multiple of 2**-_BITS.
_BITS = 16


@keras.saving.register_keras_serializable(package="transformer_pipeline")
class Dropout(keras.layers.Layer):
    """Inverted dropout with a mask drawn from 16 random bits per element.

    In training, each element is zeroed with probability `rate` and the others
    are scaled by `1 / (1 - rate)`; at inference the layer is the identity. It
    is a drop-in for `keras.layers.Dropout` (the same `rate` and `seed`
    arguments and `seed_generator` attribute; no `noise_shape`).

    Why it exists: `keras.layers.Dropout` (through
    `tf.nn.experimental.stateless_dropout`) draws one uniform float per
    element in the input dtype from a Philox generator, a large non-matmul
    cost of a training step (the op profiles of `python -m pipeline bench`;
    docs/BENCHMARKS.md, "Measured history"). Here one 32-bit Philox output
    serves two elements and the mask is an integer compare.

    The drop probability is `rate` rounded to a multiple of 1/65536
    (0.1 becomes 0.100006); the scale uses the rounded value, so the
    expected output equals the input exactly.

    Args:
        rate: float in `[0, 1)`, the fraction of elements to drop.
        seed: optional int, the seed of the layer's `keras.random.SeedGenerator`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name` and `dtype`.

    Call arguments:
        inputs: a floating tensor of any shape.
        training: bool, whether to drop (`True`) or pass through.

    Example:
    ```python
    layer = Dropout(0.1, seed=1)
    y = layer(np.ones((2, 8), "float32"), training=True)
    ```
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        check_dropout(rate)
        self.rate = rate
        self.seed = seed
        self.supports_masking = True
        self._threshold = min(int(round(rate * 2**_BITS)), 2**_BITS - 1)
        self._scale = 1.0 / (1.0 - self._threshold / 2**_BITS)
        if rate > 0:
            self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    def call(self, inputs, training=False):
        if not training or self._threshold == 0:
            return inputs
        seed = self.seed_generator.next()
        # Stateless ops want an int32 seed; the generator's state is int64.
        seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
        size = tf.size(inputs)
        words = tf.math.floordiv(size + 1, 2)  # two 16-bit draws per uint32
        bits = tf.random.stateless_uniform(
            [words], seed=seed, minval=None, maxval=None, dtype=tf.uint32
        )
        draws = tf.reshape(tf.bitcast(bits, tf.uint16), [-1])[:size]
        keep = tf.reshape(
            draws >= tf.constant(self._threshold, tf.uint16), tf.shape(inputs)
        )
        scaled = inputs * tf.cast(self._scale, inputs.dtype)
        return tf.where(keep, scaled, tf.zeros_like(scaled))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config
