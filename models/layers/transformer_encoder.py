"""Transformer encoder block."""

import keras

from models.layers._transformer_block import TransformerBlock
from models.layers.masking import merge_padding_and_attention_mask


@keras.saving.register_keras_serializable(package="transformer_pipeline")
class TransformerEncoder(TransformerBlock):
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

    def build(self, inputs_shape):
        head_dim = self._head_dim(inputs_shape[-1])
        self._self_attention_layer = self._make_attention(
            "self_attention_layer", head_dim, inputs_shape, inputs_shape
        )
        self._self_attention_layer_norm = self._make_layer_norm(
            "self_attention_layer_norm", inputs_shape
        )
        self._self_attention_dropout = self._make_dropout("self_attention_dropout")
        self._build_feedforward(inputs_shape)
        self.built = True

    def call(self, inputs, padding_mask=None, attention_mask=None, training=None):
        # (batch, seq, seq) bool, or None
        self_attention_mask = merge_padding_and_attention_mask(
            inputs, padding_mask, attention_mask
        )

        # Self-attention block.
        x = inputs  # (batch, seq, hidden_dim)
        residual = x
        x = self._sub_block_input(x, self._self_attention_layer_norm, training)
        x = self._self_attention_layer(
            query=x,
            value=x,
            attention_mask=self_attention_mask,
            training=training,
        )
        x = self._sub_block_output(
            x, residual, self._self_attention_layer_norm,
            self._self_attention_dropout, training,
        )

        # Feed-forward block.
        return self._feedforward_block(x, training)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape
