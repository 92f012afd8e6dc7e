"""Transformer encoder text classifier."""

import keras
from keras import ops

from models.layers._utils import check_positive_ints, token_ids_shape_of
from models.layers.dropout import Dropout
from models.transformer_encoder_backbone import TransformerEncoderBackbone

_POOLING_MODES = ("mean", "first")
_BACKBONE_ARGUMENTS = ("vocabulary_size", "hidden_dim", "intermediate_dim", "num_heads",
                       "num_layers", "dropout", "max_sequence_length", "norm_first")


@keras.saving.register_keras_serializable(package="transformer_pipeline")
class TextClassifier(keras.Model):
    """A Transformer encoder backbone with a classification head.

    token ids -> `TransformerEncoderBackbone` (embeddings, `num_layers`
    encoder blocks, final norm) -> pooling -> dropout -> dense logits.

    The backbone is `self.backbone` (what pre-training trains and
    `layer_groups()` splits for layer-wise learning rates); the head is
    `self.output_dropout` and `self.classifier_head`.

    Building: sub-layers are created in `__init__` but have no weights until
    the model is built, either by calling it once on a dummy batch
    (`model(dummy_batch)`) or by `model.build({"token_ids": (None, seq),
    "padding_mask": (None, seq)})`. After that every weight exists, so a
    checkpoint can be restored or weights copied.

    Precision: pooling and the classifier head always run in float32, so the
    logits are float32 even under a `mixed_bfloat16` policy.

    Masking: padding positions never influence the logits. With
    `pooling="mean"` the pooled vector is the mean over real tokens, divided by
    `max(count, 1)` so that an all-padding row gives finite logits.
    With `pooling="first"` the vector of the first token is used (put a
    classification token there).

    Args:
        vocabulary_size: int, the number of token ids.
        num_classes: int, the number of classes.
        hidden_dim: int, the size of the embeddings and encoder outputs.
            Defaults to `128`.
        intermediate_dim: int, the hidden size of each feed-forward network.
            Defaults to `256`.
        num_heads: int, the number of attention heads; must divide
            `hidden_dim`. Defaults to `4`.
        num_layers: int, the number of encoder blocks. Defaults to `2`.
        dropout: float in `[0, 1)`, the dropout rate of the embeddings, the
            encoder blocks and the pooled vector. Defaults to `0.1`.
        max_sequence_length: int, the longest accepted sequence. Defaults to
            `64`.
        norm_first: bool, pre-norm encoder blocks (and a final layer norm) if
            `True`, post-norm if `False`. Defaults to `True`.
        pooling: `"mean"` or `"first"`. Defaults to `"mean"`.
        **kwargs: other keyword arguments passed to `keras.Model`, including
            `name`, `dtype` etc.

    Call arguments:
        inputs: a dict with `"token_ids"`, an int32 tensor of shape
            `(batch, seq)`, and `"padding_mask"`, a bool/int tensor of shape
            `(batch, seq)` that is `True`/`1` for real tokens.
        training: bool, whether dropout is active.

    Returns:
        float32 logits of shape `(batch, num_classes)`.

    Example:
    ```python
    model = TextClassifier(vocabulary_size=8000, num_classes=26)
    logits = model(
        {
            "token_ids": np.array([[12, 7, 99, 0]], dtype="int32"),
            "padding_mask": np.array([[1, 1, 1, 0]], dtype="int32"),
        }
    )  # (1, 26)
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        num_classes,
        hidden_dim=128,
        intermediate_dim=256,
        num_heads=4,
        num_layers=2,
        dropout=0.1,
        max_sequence_length=64,
        norm_first=True,
        pooling="mean",
        **kwargs,
    ):
        super().__init__(**kwargs)
        # The backbone checks its own arguments.
        self.backbone = TransformerEncoderBackbone(
            vocabulary_size=vocabulary_size,
            hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim,
            num_heads=num_heads,
            num_layers=num_layers,
            dropout=dropout,
            max_sequence_length=max_sequence_length,
            norm_first=norm_first,
            dtype=self.dtype_policy,
            name="backbone",
        )
        check_positive_ints(num_classes=num_classes)
        if pooling not in _POOLING_MODES:
            raise ValueError(
                f"`pooling` must be one of {_POOLING_MODES}. "
                f"Received: pooling={pooling!r}"
            )
        self.num_classes = num_classes
        self.pooling = pooling
        for name in _BACKBONE_ARGUMENTS:
            setattr(self, name, getattr(self.backbone, name))

        # The pooled vector and the head are float32 under every policy.
        self.output_dropout = Dropout(
            dropout, dtype="float32", name="output_dropout"
        )
        self.classifier_head = keras.layers.Dense(
            num_classes, dtype="float32", name="logits"
        )

    def build(self, input_shape):
        """Creates all weights.

        Args:
            input_shape: a dict with a `"token_ids"` shape `(batch, seq)`, or
                such a shape itself.
        """
        token_ids_shape = token_ids_shape_of(input_shape)
        self.backbone.build(token_ids_shape)
        self.classifier_head.build((token_ids_shape[0], self.hidden_dim))
        self.built = True

    def call(self, inputs, training=None):
        if not isinstance(inputs, dict) or not {"token_ids", "padding_mask"} <= set(
            inputs
        ):
            raise ValueError(
                "`inputs` must be a dict with keys 'token_ids' and "
                f"'padding_mask'. Received: inputs={inputs}"
            )
        padding_mask = ops.cast(inputs["padding_mask"], "bool")  # (batch, seq)
        x = self.encode(inputs, training=training)  # (batch, seq, hidden_dim)
        x = ops.cast(x, "float32")
        if self.pooling == "mean":
            mask = ops.cast(ops.expand_dims(padding_mask, -1), "float32")
            total = ops.sum(x * mask, axis=1)  # (batch, hidden_dim)
            count = ops.maximum(ops.sum(mask, axis=1), 1.0)  # (batch, 1)
            pooled = total / count
        else:
            pooled = x[:, 0, :]  # (batch, hidden_dim)
        pooled = self.output_dropout(pooled, training=training)
        logits = self.classifier_head(pooled)  # (batch, num_classes)
        return ops.cast(logits, "float32")

    def encode(self, inputs, training=None):
        """The backbone alone: the sequence output before pooling.

        The backbone is what pre-training (`models.MaskedLanguageModel`)
        trains, so a masked-LM's weights are the ones the classifier uses.

        Args:
            inputs: a dict with `"token_ids"` and `"padding_mask"`, as `call`.
            training: bool, whether dropout is active.

        Returns:
            A tensor of shape `(batch, seq, hidden_dim)` in the compute dtype.
        """
        return self.backbone(inputs, training=training)

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, dict):
            input_shape = input_shape["token_ids"]
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in _BACKBONE_ARGUMENTS})
        config.update({"num_classes": self.num_classes, "pooling": self.pooling})
        return config
