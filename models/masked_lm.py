"""Masked-language-model pre-training of a TextClassifier's encoder."""

import keras

from models.layers.masked_lm_head import MaskedLMHead
from models.text_classifier import TextClassifier


class MaskedLanguageModel(keras.Model):
    """BERT-style masked-LM on top of a `TextClassifier`'s encoder.

    The encoder is the classifier's own (`encoder.encode`), so pre-training
    trains exactly the weights fine-tuning starts from; the classifier head is
    frozen and unused here. The output head (`MaskedLMHead`) ties its
    projection to the encoder's token embedding.

    Args:
        encoder: a `TextClassifier` whose encoder is pre-trained.
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
    encoder = TextClassifier(vocabulary_size=100, num_classes=2, hidden_dim=16,
                             intermediate_dim=32, num_heads=2, num_layers=1)
    mlm = MaskedLanguageModel(encoder)
    logits = mlm({"token_ids": np.array([[5, 4, 7, 0]], "int32"),
                  "padding_mask": np.array([[1, 1, 1, 0]], bool),
                  "mask_positions": np.array([[1]], "int32")})  # (1, 1, 100)
    ```
    """

    def __init__(self, encoder, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(encoder, TextClassifier):
            raise ValueError(
                f"`encoder` must be a `TextClassifier`. Received: encoder={encoder!r}"
            )
        self.encoder = encoder
        self.encoder.classifier_head.trainable = False
        self.mlm_head = MaskedLMHead(
            token_embedding=encoder.embedding.token_embedding,
            dtype=encoder.dtype_policy, name="mlm_head",
        )

    def build(self, input_shape):
        token_ids_shape = tuple(input_shape["token_ids"])
        if not self.encoder.built:
            self.encoder.build({"token_ids": token_ids_shape})
        self.mlm_head.build(token_ids_shape + (self.encoder.hidden_dim,),
                            tuple(input_shape["mask_positions"]))
        self.built = True

    def call(self, inputs, training=None):
        x = self.encoder.encode(inputs, training=training)  # (batch, seq, hidden)
        return self.mlm_head(x, mask_positions=inputs["mask_positions"])
