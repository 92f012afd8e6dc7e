"""Sinusoidal position encoding."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="transformer_pipeline")
class SinePositionEncoding(keras.layers.Layer):
    """Sinusoidal position encoding (Vaswani et al., 2017).

    Returns, for an embedded sequence, the encoding to add to it: feature `2k`
    of position `p` is `sin(p / max_wavelength ** (2k / hidden_dim))` and
    feature `2k + 1` is the cosine of the same angle. Numerically the same as
    `keras_hub.layers.SinePositionEncoding`, except that the angles are always
    computed in float32 and the result cast to the compute dtype (in bfloat16,
    positions above 256 would otherwise be rounded). The layer has no weights.

    Args:
        max_wavelength: int, the maximum angular wavelength of the sine and
            cosine curves. Defaults to `10000`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `trainable`, `dtype` etc.

    Call arguments:
        inputs: tensor of shape `(batch, seq, hidden_dim)`; only its shape is
            used.
        start_index: int or scalar int tensor, the position of the first
            token, for cached decoding. Defaults to `0`.

    Returns:
        A tensor of the same shape as `inputs`, in the compute dtype.

    Example:
    ```python
    embedded = keras.layers.Embedding(1000, 32)(token_ids)
    outputs = embedded + SinePositionEncoding()(embedded)
    ```
    """

    def __init__(self, max_wavelength=10000, **kwargs):
        super().__init__(**kwargs)
        if max_wavelength <= 0:
            raise ValueError(
                "`max_wavelength` must be positive. "
                f"Received: max_wavelength={max_wavelength}"
            )
        self.max_wavelength = max_wavelength
        self.built = True

    def call(self, inputs, start_index=0):
        shape = ops.shape(inputs)
        seq_length = shape[-2]
        hidden_dim = inputs.shape[-1] if inputs.shape[-1] is not None else shape[-1]

        positions = ops.arange(seq_length, dtype="int32") + ops.cast(
            start_index, "int32"
        )
        positions = ops.cast(positions, "float32")  # (seq,)
        feature = ops.arange(hidden_dim, dtype="int32")  # (hidden_dim,)
        exponent = ops.cast(2 * (feature // 2), "float32") / ops.cast(
            hidden_dim, "float32"
        )
        min_freq = ops.cast(1.0 / self.max_wavelength, "float32")
        timescales = ops.power(min_freq, exponent)  # (hidden_dim,)
        angles = ops.expand_dims(positions, 1) * timescales  # (seq, hidden_dim)
        cos_mask = ops.cast(feature % 2, "float32")  # 1 on odd features
        encoding = ops.sin(angles) * (1.0 - cos_mask) + ops.cos(angles) * cos_mask
        encoding = ops.cast(encoding, self.compute_dtype)
        return ops.broadcast_to(encoding, shape)  # (batch, seq, hidden)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"max_wavelength": self.max_wavelength})
        return config
