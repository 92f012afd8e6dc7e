"""Masked-language-model head with weights tied to the token embedding."""

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="transformer_pipeline")
class MaskedLMHead(keras.layers.Layer):
    """Predicts the original tokens at masked positions (BERT's MLM head).

    Gathers the encoder outputs at `mask_positions`, applies a dense layer
    with a GELU activation and a `LayerNormalization`, then scores every
    vocabulary entry with the transposed token-embedding matrix (weights tied,
    as in BERT) plus a per-token bias, in the compute dtype. Logits are
    float32 under every policy.

    Args:
        token_embedding: a built or unbuilt `keras.layers.Embedding` of shape
            `(vocabulary_size, hidden_dim)` whose matrix projects back to the
            vocabulary (e.g. `TokenAndPositionEmbedding.token_embedding`).
        activation: string or callable, the activation of the intermediate
            dense layer. Defaults to `"gelu"`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `dtype` etc.

    Call arguments:
        inputs: tensor of shape `(batch, seq, hidden_dim)`, the encoder output.
        mask_positions: int32 tensor of shape `(batch, num_predictions)`, the
            positions to predict (padded entries may point anywhere; give them
            weight 0 in the loss).
        mask_weights: optional tensor of shape `(batch, num_predictions)`;
            when given, only the predictions with a weight > 0 are scored.

    Returns:
        float32 logits of shape `(batch, num_predictions, vocabulary_size)`,
        or, with `mask_weights`, `(num_selected, vocabulary_size)`: the
        predictions of weight > 0 in row-major order.

    Example:
    ```python
    embedding = keras.layers.Embedding(100, 16)
    embedding.build((None,))
    head = MaskedLMHead(token_embedding=embedding)
    x = np.random.uniform(size=(2, 10, 16)).astype("float32")
    logits = head(x, mask_positions=np.array([[1, 4], [0, 9]]))  # (2, 2, 100)
    ```
    """

    def __init__(self, token_embedding, activation="gelu", layer_norm_epsilon=1e-5,
                 **kwargs):
        super().__init__(**kwargs)
        if not isinstance(token_embedding, keras.layers.Embedding):
            raise ValueError(
                "`token_embedding` must be a `keras.layers.Embedding`. "
                f"Received: token_embedding={token_embedding!r}"
            )
        self.token_embedding = token_embedding
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = layer_norm_epsilon

    def build(self, inputs_shape, mask_positions_shape=None):
        hidden_dim = inputs_shape[-1]
        self._intermediate_dense = keras.layers.Dense(
            hidden_dim, activation=self.activation, dtype=self.dtype_policy,
            name="intermediate_dense",
        )
        self._intermediate_dense.build((None, None, hidden_dim))
        self._layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy,
            name="layer_norm",
        )
        self._layer_norm.build((None, None, hidden_dim))
        self.output_bias = self.add_weight(
            name="output_bias", shape=(self.token_embedding.input_dim,),
            initializer="zeros", dtype="float32",
        )
        self.built = True

    def call(self, inputs, mask_positions, mask_weights=None):
        positions = ops.cast(mask_positions, "int32")  # (batch, predictions)
        x = ops.take_along_axis(
            inputs, ops.expand_dims(positions, -1), axis=1
        )  # (batch, predictions, hidden_dim)
        if mask_weights is not None:
            # Only the real predictions: the vocabulary projection is most of
            # the head's cost, and padded slots (weight 0) are most slots.
            x = tf.boolean_mask(x, ops.greater(mask_weights, 0))  # (selected, hidden)
        x = self._layer_norm(self._intermediate_dense(x))
        # The projection runs in the compute dtype (bfloat16 under
        # mixed_bfloat16: most of the head's cost), the logits are float32.
        table = ops.cast(self.token_embedding.embeddings, self.compute_dtype)
        logits = ops.cast(ops.matmul(ops.cast(x, self.compute_dtype),
                                     ops.transpose(table)), "float32")
        # Under a mixed policy the bias variable reads as the compute dtype.
        return logits + ops.cast(self.output_bias, "float32")

    def compute_output_shape(self, inputs_shape, mask_positions_shape=None):
        num_predictions = mask_positions_shape[1] if mask_positions_shape else None
        return (inputs_shape[0], num_predictions, self.token_embedding.input_dim)

    def get_config(self):
        # The embedding is shared, not owned: rebuild it with the model.
        config = super().get_config()
        config.update(
            {
                "activation": keras.activations.serialize(self.activation),
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config
