"""Transformer encoder block."""

import keras

from models.layers import activations
from models.layers._utils import check_dropout, check_positive_ints, clone_initializer
from models.layers.dropout import Dropout
from models.layers.layer_normalization import LayerNormalization
from models.layers.masking import merge_padding_and_attention_mask
from models.layers.multi_head_attention import MultiHeadAttention


@keras.saving.register_keras_serializable(package="transformer_pipeline")
class TransformerEncoder(keras.layers.Layer):
    """One Transformer encoder block: self-attention, then a feed-forward net.

    Each of the two sub-blocks has a residual connection and a
    `LayerNormalization`: applied to the sub-block input when
    `norm_first=True` (pre-norm, as GPT-2), or after the residual sum when
    `norm_first=False` (post-norm, as BERT and the original Transformer).
    Dropout is applied to the attention probabilities, to the attention output
    and to the feed-forward output. The head size is
    `hidden_dim // num_heads`, where `hidden_dim` is the last input dimension.

    Masking: `padding_mask` and `attention_mask` are combined with
    `models.layers.merge_padding_and_attention_mask`. Outputs at padding
    positions are computed (from the real tokens) but carry no meaning; outputs
    at real positions do not depend on the padding. A query whose keys are all
    masked gets finite outputs.

    Args:
        intermediate_dim: int, the hidden size of the feed-forward network.
        num_heads: int, the number of attention heads; must divide the hidden
            size of the inputs.
        dropout: float in `[0, 1)`, the dropout rate used everywhere in the
            block. Defaults to `0.0`.
        activation: string or callable, the activation of the feed-forward
            network. Defaults to `"gelu"`.
        layer_norm_epsilon: float, the epsilon of the layer normalizations.
            Defaults to `1e-5`.
        norm_first: bool, pre-norm if `True`, post-norm if `False`. Defaults
            to `False`.
        kernel_initializer: string or `keras.initializers` initializer for the
            dense and attention kernels. Defaults to `"glorot_uniform"`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `trainable`, `dtype` etc.

    Call arguments:
        inputs: tensor of shape `(batch, seq, hidden_dim)`.
        padding_mask: optional bool/int tensor of shape `(batch, seq)`,
            `True`/`1` for real tokens.
        attention_mask: optional bool/int tensor of shape `(batch, seq, seq)`,
            `True`/`1` where a query position may attend to a key position.
        training: bool, whether dropout is active.

    Returns:
        A tensor of the same shape and dtype as `inputs`.

    Example:
    ```python
    encoder = TransformerEncoder(intermediate_dim=64, num_heads=4)
    x = np.random.uniform(size=(2, 10, 32)).astype("float32")
    padding_mask = np.arange(10)[None, :] < np.array([[7], [10]])
    y = encoder(x, padding_mask=padding_mask)  # (2, 10, 32)
    ```
    """

    def __init__(
        self,
        intermediate_dim,
        num_heads,
        dropout=0.0,
        activation="gelu",
        layer_norm_epsilon=1e-5,
        norm_first=False,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_ints(intermediate_dim=intermediate_dim, num_heads=num_heads)
        check_dropout(dropout)
        self.intermediate_dim = intermediate_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.norm_first = norm_first
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, inputs_shape):
        hidden_dim = inputs_shape[-1]
        if hidden_dim is None or hidden_dim % self.num_heads != 0:
            raise ValueError(
                "The hidden size of the inputs must be divisible by `num_heads`. "
                f"Received: hidden_dim={hidden_dim}, num_heads={self.num_heads}"
            )
        intermediate_shape = tuple(inputs_shape[:-1]) + (self.intermediate_dim,)

        self._self_attention_layer = MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=hidden_dim // self.num_heads,
            dropout=self.dropout,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="self_attention_layer",
        )
        self._self_attention_layer.build(inputs_shape, inputs_shape)
        self._self_attention_layer_norm = LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="self_attention_layer_norm",
        )
        self._self_attention_layer_norm.build(inputs_shape)
        self._self_attention_dropout = Dropout(
            rate=self.dropout,
            dtype=self.dtype_policy,
            name="self_attention_dropout",
        )

        self._feedforward_layer_norm = LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="feedforward_layer_norm",
        )
        self._feedforward_layer_norm.build(inputs_shape)
        # Exact GELU runs outside the Dense layer, so that training can use
        # its cheaper hand-written gradient (models/layers/activations.py).
        self._fused_gelu = self.activation is keras.activations.gelu
        self._feedforward_intermediate_dense = keras.layers.Dense(
            self.intermediate_dim,
            activation=None if self._fused_gelu else self.activation,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="feedforward_intermediate_dense",
        )
        self._feedforward_intermediate_dense.build(inputs_shape)
        self._feedforward_output_dense = keras.layers.Dense(
            hidden_dim,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="feedforward_output_dense",
        )
        self._feedforward_output_dense.build(intermediate_shape)
        self._feedforward_dropout = Dropout(
            rate=self.dropout,
            dtype=self.dtype_policy,
            name="feedforward_dropout",
        )
        self.built = True

    def call(self, inputs, padding_mask=None, attention_mask=None, training=None):
        # (batch, seq, seq) bool, or None
        self_attention_mask = merge_padding_and_attention_mask(
            inputs, padding_mask, attention_mask
        )

        # Self-attention block.
        x = inputs  # (batch, seq, hidden_dim)
        residual = x
        if self.norm_first:
            x = self._self_attention_layer_norm(x, training=training)
        x = self._self_attention_layer(
            query=x,
            value=x,
            attention_mask=self_attention_mask,
            training=training,
        )
        x = self._self_attention_dropout(x, training=training)
        x = x + residual
        if not self.norm_first:
            x = self._self_attention_layer_norm(x, training=training)

        # Feed-forward block.
        residual = x
        if self.norm_first:
            x = self._feedforward_layer_norm(x, training=training)
        x = self._feedforward_intermediate_dense(x)  # (batch, seq, intermediate)
        if self._fused_gelu:
            x = activations.gelu(x, training=training)
        x = self._feedforward_output_dense(x)  # (batch, seq, hidden_dim)
        x = self._feedforward_dropout(x, training=training)
        x = x + residual
        if not self.norm_first:
            x = self._feedforward_layer_norm(x, training=training)
        return x

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "num_heads": self.num_heads,
                "dropout": self.dropout,
                "activation": keras.activations.serialize(self.activation),
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "norm_first": self.norm_first,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config
