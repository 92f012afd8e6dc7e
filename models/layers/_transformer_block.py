"""What the Transformer encoder and decoder blocks share.

`TransformerBlock` holds the constructor arguments of both blocks, builds
their sub-layers (attention, layer normalization, dropout, feed-forward
network) and runs the residual wrapper around each sub-block, pre- or
post-norm. It is a private base class: use `TransformerEncoder` or
`TransformerDecoder`.
"""

import keras

from models.layers import activations
from models.layers._utils import check_dropout, check_positive_ints, clone_initializer
from models.layers.dropout import Dropout
from models.layers.layer_normalization import LayerNormalization
from models.layers.multi_head_attention import MultiHeadAttention


class TransformerBlock(keras.layers.Layer):
    """Base class of `TransformerEncoder` and `TransformerDecoder`.

    Sub-classes create their sub-layers in `build()` with the `_make_*`
    helpers and `_build_feedforward()`, in a fixed order (the order of
    `weights` and the numbering of dropout seed generators follow it), and
    run each sub-block as

    ```python
    residual = x
    x = self._sub_block_input(x, layer_norm, training)
    x = sub_block(x)
    x = self._sub_block_output(x, residual, layer_norm, dropout, training)
    ```

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

    def _head_dim(self, hidden_dim):
        """`hidden_dim // num_heads`; a ValueError unless it divides evenly."""
        if hidden_dim is None or hidden_dim % self.num_heads != 0:
            raise ValueError(
                "The hidden size of the inputs must be divisible by `num_heads`. "
                f"Received: hidden_dim={hidden_dim}, num_heads={self.num_heads}"
            )
        return hidden_dim // self.num_heads

    def _make_attention(self, name, head_dim, query_shape, value_shape):
        """A built `MultiHeadAttention` with `num_heads` heads of `head_dim`."""
        layer = MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=head_dim,
            dropout=self.dropout,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name=name,
        )
        layer.build(query_shape, value_shape)
        return layer

    def _make_layer_norm(self, name, inputs_shape):
        """A built `LayerNormalization` with the block's epsilon."""
        layer = LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
        )
        layer.build(inputs_shape)
        return layer

    def _make_dropout(self, name):
        return Dropout(rate=self.dropout, dtype=self.dtype_policy, name=name)

    def _build_feedforward(self, inputs_shape):
        """Creates the feed-forward sub-block: layer norm, the two dense
        layers, dropout."""
        hidden_dim = inputs_shape[-1]
        intermediate_shape = tuple(inputs_shape[:-1]) + (self.intermediate_dim,)
        self._feedforward_layer_norm = self._make_layer_norm(
            "feedforward_layer_norm", inputs_shape
        )
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
        self._feedforward_dropout = self._make_dropout("feedforward_dropout")

    def _sub_block_input(self, x, layer_norm, training):
        """The input of a sub-block: `x` normalized (pre-norm) or `x`."""
        if self.norm_first:
            return layer_norm(x, training=training)
        return x

    def _sub_block_output(self, x, residual, layer_norm, dropout, training):
        """`residual + dropout(x)`, then normalized (post-norm)."""
        x = dropout(x, training=training)
        x = x + residual
        if not self.norm_first:
            x = layer_norm(x, training=training)
        return x

    def _feedforward_block(self, x, training):
        """The feed-forward sub-block with its residual connection."""
        residual = x
        x = self._sub_block_input(x, self._feedforward_layer_norm, training)
        x = self._feedforward_intermediate_dense(x)  # (batch, seq, intermediate)
        if self._fused_gelu:
            x = activations.gelu(x, training=training)
        x = self._feedforward_output_dense(x)  # (batch, seq, hidden_dim)
        return self._sub_block_output(
            x, residual, self._feedforward_layer_norm, self._feedforward_dropout,
            training,
        )

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
