"""Vision Transformer image classifier."""

import keras
from keras import ops

from models.layers._utils import check_backbone_args, check_positive_ints, make_block_stack
from models.layers.dropout import Dropout
from models.layers.patch_embedding import PatchEmbedding
from models.layers.transformer_encoder import TransformerEncoder

_POOLING_MODES = ("class_token", "mean", "attention")


@keras.saving.register_keras_serializable(package="transformer_pipeline")
class VisionTransformer(keras.Model):
    """A Vision Transformer (Dosovitskiy et al., 2021) with the options that
    make it work on small data sets (Hassani et al., 2021: Compact
    Convolutional Transformers).

    pixels `(batch, H, W, C)`, raw values 0..255 (uint8 or float) -> scaled to
    `(x / 255 - pixel_mean) / pixel_std` in float32 -> `PatchEmbedding`
    (optional 3x3 conv stem, patchify, positions, class token) -> dropout ->
    `num_layers` shared `TransformerEncoder` blocks (no mask: every patch is
    real) -> final norm (pre-norm) -> pooling -> dropout -> dense logits.

    Pooling: `"class_token"` reads the prepended class token, `"mean"`
    averages the patch vectors, `"attention"` is CCT's sequence pooling (a
    softmax-weighted sum of the patch vectors with learned weights).

    Precision: pooling and the head run in float32, so the logits are float32
    under a `mixed_bfloat16` policy too.

    Args:
        num_classes: int, the number of classes.
        image_size: int or `(height, width)`.
        channels: int, 1 (grey) or 3 (RGB).
        patch_size: int, the side of a square patch. Defaults to `4`.
        hidden_dim, intermediate_dim, num_heads, num_layers, dropout,
            norm_first: as in `TransformerEncoderBackbone`.
        stem_channels: filters of the 3x3 stem convolutions. Defaults to `()`.
        stem_pooling: bool, a stride-2 max pool after each stem conv (CCT).
            Defaults to `False`.
        position_embedding: `"learned"` or `"sine"`. Defaults to `"learned"`.
        pooling: one of `"class_token"`, `"mean"`, `"attention"`. Defaults
            to `"class_token"`.
        pixel_mean, pixel_std: floats, the normalization of the 0..1 pixels
            (per channel the same). Defaults to `0.5`, `0.5`.
        **kwargs: other keyword arguments passed to `keras.Model`.

    Call arguments:
        pixels: `(batch, H, W, C)` tensor of raw pixel values 0..255.
        training: bool, whether dropout is active.

    Returns:
        float32 logits of shape `(batch, num_classes)`.

    Example:
    ```python
    model = VisionTransformer(num_classes=10, image_size=28, channels=1)
    logits = model(np.zeros((2, 28, 28, 1), "uint8"))  # (2, 10)
    ```
    """

    def __init__(self, num_classes, image_size, channels=1, patch_size=4, hidden_dim=128,
                 intermediate_dim=256, num_heads=4, num_layers=4, dropout=0.1,
                 norm_first=True, stem_channels=(), stem_pooling=False,
                 position_embedding="learned",
                 pooling="class_token", pixel_mean=0.5, pixel_std=0.5, **kwargs):
        super().__init__(**kwargs)
        check_backbone_args(dropout, hidden_dim, num_heads, intermediate_dim=intermediate_dim,
                            num_layers=num_layers)
        check_positive_ints(num_classes=num_classes, channels=channels)
        if pooling not in _POOLING_MODES:
            raise ValueError(f"`pooling` must be one of {_POOLING_MODES}. "
                             f"Received: pooling={pooling!r}")
        if not pixel_std > 0:
            raise ValueError(f"`pixel_std` must be > 0. Received: pixel_std={pixel_std}")
        self.num_classes = num_classes
        self.image_size = (image_size, image_size) if isinstance(image_size, int) \
            else tuple(image_size)
        self.channels = channels
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.dropout = dropout
        self.norm_first = norm_first
        self.stem_channels = [int(c) for c in stem_channels]
        self.stem_pooling = bool(stem_pooling)
        self.position_embedding = position_embedding
        self.pooling = pooling
        self.pixel_mean = float(pixel_mean)
        self.pixel_std = float(pixel_std)

        self.patch_embedding = PatchEmbedding(
            self.image_size, patch_size, hidden_dim, stem_channels=self.stem_channels,
            stem_pooling=self.stem_pooling, position_embedding=position_embedding,
            class_token=pooling == "class_token",
            dtype=self.dtype_policy, name="patch_embedding")
        self.embeddings_dropout = Dropout(dropout, dtype=self.dtype_policy,
                                          name="embeddings_dropout")
        self.encoder_layers, self.final_layer_norm = make_block_stack(
            TransformerEncoder, num_layers, "transformer_layer_{}", intermediate_dim,
            num_heads, dropout, norm_first, self.dtype_policy)
        if pooling == "attention":
            self.attention_pool = keras.layers.Dense(1, dtype="float32", name="attention_pool")
        self.output_dropout = Dropout(dropout, dtype="float32", name="output_dropout")
        self.classifier_head = keras.layers.Dense(num_classes, dtype="float32", name="logits")

    def build(self, input_shape=None):
        """Creates all weights (the input shape follows from the constructor)."""
        height, width = self.image_size
        self.patch_embedding.build((None, height, width, self.channels))
        sequence_shape = (None, self.patch_embedding.compute_output_shape(
            (None, height, width, self.channels))[1], self.hidden_dim)
        for layer in self.encoder_layers:
            layer.build(sequence_shape)
        if self.final_layer_norm is not None:
            self.final_layer_norm.build(sequence_shape)
        if self.pooling == "attention":
            self.attention_pool.build(sequence_shape)
        self.classifier_head.build((None, self.hidden_dim))
        self.built = True

    def normalize(self, pixels):
        """Raw 0..255 pixels -> `(x / 255 - mean) / std`, float32."""
        x = ops.cast(pixels, "float32")
        return (x * (1.0 / 255.0) - self.pixel_mean) * (1.0 / self.pixel_std)

    def call(self, pixels, training=None):
        if isinstance(pixels, dict):
            pixels = pixels["pixels"]
        x = ops.cast(self.normalize(pixels), self.compute_dtype)  # (batch, H, W, C)
        x = self.patch_embedding(x)  # (batch, tokens, hidden_dim)
        x = self.embeddings_dropout(x, training=training)
        for layer in self.encoder_layers:
            x = layer(x, training=training)
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x, training=training)
        x = ops.cast(x, "float32")
        if self.pooling == "class_token":
            pooled = x[:, 0, :]  # (batch, hidden_dim)
        elif self.pooling == "mean":
            pooled = ops.mean(x, axis=1)
        else:
            weights = ops.softmax(self.attention_pool(x), axis=1)  # (batch, tokens, 1)
            pooled = ops.sum(weights * x, axis=1)  # (batch, hidden_dim)
        pooled = self.output_dropout(pooled, training=training)
        return ops.cast(self.classifier_head(pooled), "float32")  # (batch, classes)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_classes": self.num_classes, "image_size": list(self.image_size),
            "channels": self.channels, "patch_size": self.patch_size,
            "hidden_dim": self.hidden_dim, "intermediate_dim": self.intermediate_dim,
            "num_heads": self.num_heads, "num_layers": self.num_layers,
            "dropout": self.dropout, "norm_first": self.norm_first,
            "stem_channels": self.stem_channels,
            "stem_pooling": self.stem_pooling,
            "position_embedding": self.position_embedding, "pooling": self.pooling,
            "pixel_mean": self.pixel_mean, "pixel_std": self.pixel_std})
        return config
