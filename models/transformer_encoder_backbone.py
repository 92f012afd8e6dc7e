"""Transformer encoder backbone: embeddings, encoder blocks, final norm."""

import keras

from models.layers._utils import check_backbone_args, make_block_stack, token_ids_shape_of
from models.layers.dropout import Dropout
from models.layers.token_and_position_embedding import TokenAndPositionEmbedding
from models.layers.transformer_encoder import TransformerEncoder


@keras.saving.register_keras_serializable(package="transformer_pipeline")
class TransformerEncoderBackbone(keras.layers.Layer):
    """Token ids to contextual vectors: the part every encoder task shares.

    token ids -> `TokenAndPositionEmbedding` -> dropout -> `num_layers` x
    `TransformerEncoder` -> final `LayerNormalization` (only when
    `norm_first`, since pre-norm blocks leave their output unnormalized).

    Heads live in the task models (`TextClassifier`, `MaskedLanguageModel`);
    pre-training and fine-tuning share the backbone's weights, and
    `layer_groups()` gives the layer-wise learning-rate schedule its groups.

    Args:
        vocabulary_size: int, the number of token ids.
        hidden_dim: int, the size of the embeddings and encoder outputs.
        intermediate_dim: int, the hidden size of each feed-forward network.
        num_heads: int, the number of attention heads; must divide
            `hidden_dim`.
        num_layers: int, the number of encoder blocks.
        dropout: float in `[0, 1)`, the dropout rate of the embeddings and the
            encoder blocks.
        max_sequence_length: int, the longest accepted sequence.
        norm_first: bool, pre-norm encoder blocks (and a final layer norm) if
            `True`, post-norm if `False`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `dtype` etc.

    Call arguments:
        inputs: a dict with `"token_ids"`, an int32 tensor of shape
            `(batch, seq)`, and `"padding_mask"`, a bool/int tensor of shape
            `(batch, seq)` that is `True`/`1` for real tokens.
        training: bool, whether dropout is active.

    Returns:
        A tensor of shape `(batch, seq, hidden_dim)` in the compute dtype.

    Example:
    ```python
    backbone = TransformerEncoderBackbone(
        vocabulary_size=100, hidden_dim=16, intermediate_dim=32, num_heads=2,
        num_layers=1, dropout=0.0, max_sequence_length=8)
    x = backbone({"token_ids": np.array([[5, 4, 7, 0]], "int32"),
                  "padding_mask": np.array([[1, 1, 1, 0]], bool)})  # (1, 4, 16)
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        hidden_dim=128,
        intermediate_dim=256,
        num_heads=4,
        num_layers=2,
        dropout=0.1,
        max_sequence_length=64,
        norm_first=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_backbone_args(
            dropout, hidden_dim, num_heads, vocabulary_size=vocabulary_size,
            intermediate_dim=intermediate_dim, num_layers=num_layers,
            max_sequence_length=max_sequence_length,
        )
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.dropout = dropout
        self.max_sequence_length = max_sequence_length
        self.norm_first = norm_first

        self.embedding = TokenAndPositionEmbedding(
            vocabulary_size=vocabulary_size,
            hidden_dim=hidden_dim,
            max_sequence_length=max_sequence_length,
            dtype=self.dtype_policy,
            name="embedding",
        )
        self.embeddings_dropout = Dropout(
            dropout, dtype=self.dtype_policy, name="embeddings_dropout"
        )
        self.encoder_layers, self.final_layer_norm = make_block_stack(
            TransformerEncoder, num_layers, "transformer_layer_{}", intermediate_dim,
            num_heads, dropout, norm_first, self.dtype_policy,
        )

    def build(self, input_shape):
        """Creates all weights.

        Args:
            input_shape: a dict with a `"token_ids"` shape `(batch, seq)`, or
                such a shape itself.
        """
        token_ids_shape = token_ids_shape_of(input_shape)
        sequence_shape = token_ids_shape + (self.hidden_dim,)
        self.embedding.build(token_ids_shape)
        for layer in self.encoder_layers:
            layer.build(sequence_shape)
        if self.final_layer_norm is not None:
            self.final_layer_norm.build(sequence_shape)
        self.built = True

    def call(self, inputs, training=None):
        token_ids = inputs["token_ids"]  # (batch, seq)
        padding_mask = keras.ops.cast(inputs["padding_mask"], "bool")  # (batch, seq)
        x = self.embedding(token_ids)  # (batch, seq, hidden_dim)
        x = self.embeddings_dropout(x, training=training)
        for layer in self.encoder_layers:
            x = layer(x, padding_mask=padding_mask, training=training)
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x, training=training)
        return x

    def layer_groups(self):
        """`num_layers + 2` lists of trainable variables from the input up: the
        embedding, each encoder block, then the final norm (empty when
        `norm_first=False`). Layer-wise learning-rate decay gives group g of G
        the factor `decay ** (G - 1 - g)`."""
        groups = [list(self.embedding.trainable_variables)]
        groups += [list(layer.trainable_variables) for layer in self.encoder_layers]
        norm = self.final_layer_norm
        groups.append(list(norm.trainable_variables) if norm is not None else [])
        return groups

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, dict):
            input_shape = input_shape["token_ids"]
        return tuple(input_shape) + (self.hidden_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "num_heads": self.num_heads,
                "num_layers": self.num_layers,
                "dropout": self.dropout,
                "max_sequence_length": self.max_sequence_length,
                "norm_first": self.norm_first,
            }
        )
        return config
