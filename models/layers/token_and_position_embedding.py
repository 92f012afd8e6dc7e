"""Token embedding plus sinusoidal position encoding."""

import math

import keras
from keras import ops

from models.layers._utils import check_positive_ints, clone_initializer
from models.layers.sine_position_encoding import SinePositionEncoding


@keras.saving.register_keras_serializable(package="transformer_pipeline")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """Embeds token ids and adds a sinusoidal position encoding.

    `output = token_embedding(token_ids) * sqrt(hidden_dim) + sine_encoding`,
    the scaling being optional (`scale_embeddings`). The token embedding is the
    sub-layer `self.token_embedding` (a `keras.layers.Embedding` named
    `"token_embedding"`), so that an output head can tie its weights to
    `self.token_embedding.embeddings`. The position encoding has no weights.

    Args:
        vocabulary_size: int, the number of token ids.
        hidden_dim: int, the size of each embedding vector.
        max_sequence_length: int, the longest sequence the layer accepts. A
            statically known longer sequence raises a `ValueError` at build
            time.
        embeddings_initializer: string or `keras.initializers` initializer for
            the token embedding. Defaults to `"uniform"` (as keras-hub's
            `TokenAndPositionEmbedding`).
        scale_embeddings: bool, whether to multiply the token embeddings by
            `sqrt(hidden_dim)` before adding the position encoding. Defaults to
            `True`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `trainable`, `dtype` etc.

    Call arguments:
        inputs: int tensor of token ids, of shape `(batch, seq)`.
        start_index: int or scalar int tensor, the position of the first token,
            for cached decoding. Defaults to `0`.

    Returns:
        A tensor of shape `(batch, seq, hidden_dim)` in the compute dtype.

    Example:
    ```python
    layer = TokenAndPositionEmbedding(
        vocabulary_size=1000, hidden_dim=32, max_sequence_length=64
    )
    outputs = layer(np.array([[5, 9, 2, 0]], dtype="int32"))  # (1, 4, 32)
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        hidden_dim,
        max_sequence_length,
        embeddings_initializer="uniform",
        scale_embeddings=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_ints(vocabulary_size=vocabulary_size, hidden_dim=hidden_dim,
                            max_sequence_length=max_sequence_length)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.max_sequence_length = max_sequence_length
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.scale_embeddings = scale_embeddings
        # Created here rather than in `build()` (nothing depends on the input
        # shape) so that a tied output head can reference `token_embedding`
        # before the first call. No weights exist until `build()`.
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size,
            hidden_dim,
            embeddings_initializer=clone_initializer(self.embeddings_initializer),
            dtype=self.dtype_policy,
            name="token_embedding",
        )
        self.position_encoding = SinePositionEncoding(
            dtype=self.dtype_policy, name="position_encoding"
        )

    def build(self, inputs_shape):
        sequence_length = inputs_shape[-1]
        if sequence_length is not None and sequence_length > self.max_sequence_length:
            raise ValueError(
                "The input sequence is longer than `max_sequence_length`. "
                f"Received: sequence_length={sequence_length}, "
                f"max_sequence_length={self.max_sequence_length}"
            )
        self.token_embedding.build(inputs_shape)
        self.position_encoding.build(tuple(inputs_shape) + (self.hidden_dim,))
        self.built = True

    def call(self, inputs, start_index=0):
        x = self.token_embedding(inputs)  # (batch, seq, hidden_dim)
        if self.scale_embeddings:
            x = x * ops.cast(math.sqrt(self.hidden_dim), x.dtype)
        return x + self.position_encoding(x, start_index=start_index)

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape) + (self.hidden_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "hidden_dim": self.hidden_dim,
                "max_sequence_length": self.max_sequence_length,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
                "scale_embeddings": self.scale_embeddings,
            }
        )
        return config
