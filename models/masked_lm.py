"""Masked-language-model pre-training of an encoder backbone."""

import keras

from models.layers.masked_lm_head import MaskedLMHead
from models.transformer_encoder_backbone import TransformerEncoderBackbone


class MaskedLanguageModel(keras.Model):
    """BERT-style masked-LM head on a `TransformerEncoderBackbone`.

    The backbone is the one fine-tuning starts from (a `TextClassifier` of the
    same shape loads its weights). The output head (`MaskedLMHead`) ties its
    projection to the backbone's token embedding.

    Args:
        backbone: the `TransformerEncoderBackbone` to pre-train.
        **kwargs: other keyword arguments passed to `keras.Model`.

    Call arguments:
        inputs: a dict with `"token_ids"` (int32, `(batch, seq)`, with masked
            tokens already replaced), `"padding_mask"` (bool, `(batch, seq)`)
            and `"mask_positions"` (int32, `(batch, num_predictions)`).
        training: bool, whether dropout is active.

    Returns:
        float32 logits of shape `(batch, num_predictions, vocabulary_size)`.

    Example:
    ```python
    backbone = TransformerEncoderBackbone(vocabulary_size=100, hidden_dim=16,
                                          intermediate_dim=32, num_heads=2,
                                          num_layers=1)
    mlm = MaskedLanguageModel(backbone)
    logits = mlm({"token_ids": np.array([[5, 4, 7, 0]], "int32"),
                  "padding_mask": np.array([[1, 1, 1, 0]], bool),
                  "mask_positions": np.array([[1]], "int32")})  # (1, 1, 100)
    ```
    """

    def __init__(self, backbone, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(backbone, TransformerEncoderBackbone):
            raise ValueError(
                "`backbone` must be a `TransformerEncoderBackbone`. "
                f"Received: backbone={backbone!r}"
            )
        self.backbone = backbone
        self.mlm_head = MaskedLMHead(
            token_embedding=backbone.embedding.token_embedding,
            dtype=backbone.dtype_policy, name="mlm_head",
        )

    def build(self, input_shape):
        token_ids_shape = tuple(input_shape["token_ids"])
        if not self.backbone.built:
            self.backbone.build(token_ids_shape)
        self.mlm_head.build(token_ids_shape + (self.backbone.hidden_dim,),
                            tuple(input_shape["mask_positions"]))
        self.built = True

    def call(self, inputs, training=None):
        """Logits `(batch, predictions, vocab)`; with `inputs["mask_weights"]`,
        the logits of the predictions of weight > 0 only, `(selected, vocab)`
        (what training needs: padded prediction slots are skipped)."""
        x = self.backbone(inputs, training=training)  # (batch, seq, hidden)
        return self.mlm_head(x, mask_positions=inputs["mask_positions"],
                             mask_weights=inputs.get("mask_weights"))
