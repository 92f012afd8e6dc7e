"""Patch embedding of a Vision Transformer: image -> a sequence of patch vectors."""

import keras
import numpy as np
from keras import ops

from models.layers._utils import check_positive_ints

_POSITION_MODES = ("learned", "sine")


def sine_positions_2d(grid_height, grid_width, hidden_dim, max_wavelength=10000):
    """Fixed 2-D sine-cosine positions (MAE, big_vision's `posemb_sincos_2d`):
    a `(grid_height * grid_width, hidden_dim)` float32 array whose first half
    encodes the patch's row and second half its column, each with the 1-D
    sine/cosine encoding of `SinePositionEncoding`. `hidden_dim` must be a
    multiple of 4."""
    if hidden_dim % 4:
        raise ValueError("2-D sine positions need `hidden_dim` divisible by 4. "
                         f"Received: hidden_dim={hidden_dim}")
    quarter = hidden_dim // 4
    omega = 1.0 / max_wavelength ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid_height), np.arange(grid_width), indexing="ij")
    parts = []
    for grid in (rows, cols):
        angles = grid.reshape(-1, 1) * omega[None, :]  # (patches, quarter)
        parts += [np.sin(angles), np.cos(angles)]
    return np.concatenate(parts, axis=1).astype("float32")  # (patches, hidden_dim)


@keras.saving.register_keras_serializable(package="transformer_pipeline")
class PatchEmbedding(keras.layers.Layer):
    """Cuts images into patches and embeds them, with positions and a class token.

    image `(batch, H, W, C)` -> optional convolutional stem (one 3x3 conv +
    GELU per entry of `stem_channels`, stride 1, each followed by a 3x3 max
    pool of stride 2 when `stem_pooling`, as in the tokenizer of Compact
    Convolutional Transformers) -> a `patch_size` x `patch_size`
    convolution with stride `patch_size` (one linear projection per
    non-overlapping patch) -> `(batch, patches, hidden_dim)` -> plus position
    embeddings -> a learned class token prepended when `class_token`.

    Args:
        image_size: int or `(height, width)`, the input size; each side must
            be divisible by `patch_size`.
        patch_size: int, the side of a square patch, in pixels of the stem's
            output (the image halved once per stem conv when `stem_pooling`).
        hidden_dim: int, the size of each patch vector.
        stem_channels: list of ints, the filters of the 3x3 stem convolutions
            (empty = a plain ViT patchify). Defaults to `()`.
        stem_pooling: bool, halve the resolution after each stem conv with
            a 3x3 max pool of stride 2. Defaults to `False`.
        position_embedding: `"learned"` (a trainable vector per position) or
            `"sine"` (fixed 2-D sine-cosine; the class token gets none).
            Defaults to `"learned"`.
        class_token: bool, prepend a learned class token. Defaults to `True`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `dtype` etc.

    Call arguments:
        images: float tensor `(batch, H, W, C)`, already normalized.

    Returns:
        `(batch, patches + class_token, hidden_dim)` in the compute dtype.
    """

    def __init__(self, image_size, patch_size, hidden_dim, stem_channels=(),
                 stem_pooling=False, position_embedding="learned", class_token=True,
                 **kwargs):
        super().__init__(**kwargs)
        height, width = (image_size, image_size) if isinstance(image_size, int) \
            else tuple(image_size)
        check_positive_ints(image_height=height, image_width=width,
                            patch_size=patch_size, hidden_dim=hidden_dim)
        stem_channels = [int(c) for c in stem_channels]
        stem_pooling = bool(stem_pooling)
        stride = patch_size * (2 ** len(stem_channels) if stem_pooling else 1)
        if height % stride or width % stride:
            raise ValueError(
                f"`image_size` {height}x{width} must be divisible by `patch_size` "
                "times 2 per pooled stem conv. Received: "
                f"patch_size={patch_size}, stem_channels={stem_channels}, "
                f"stem_pooling={stem_pooling}")
        if position_embedding not in _POSITION_MODES:
            raise ValueError(f"`position_embedding` must be one of {_POSITION_MODES}. "
                             f"Received: position_embedding={position_embedding!r}")
        for c in stem_channels:
            check_positive_ints(stem_channels=c)
        self.image_size = (height, width)
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.stem_channels = stem_channels
        self.stem_pooling = stem_pooling
        self.position_embedding = position_embedding
        self.class_token = bool(class_token)
        self.grid = (height // stride, width // stride)
        self.num_patches = self.grid[0] * self.grid[1]

        self.stem = [keras.layers.Conv2D(c, 3, padding="same", activation="gelu",
                                         dtype=self.dtype_policy, name=f"stem_conv_{i}")
                     for i, c in enumerate(stem_channels)]
        self.stem_pools = [keras.layers.MaxPooling2D(3, strides=2, padding="same",
                                                     dtype=self.dtype_policy,
                                                     name=f"stem_pool_{i}")
                           for i in range(len(stem_channels) if stem_pooling else 0)]
        self.projection = keras.layers.Conv2D(
            hidden_dim, patch_size, strides=patch_size, padding="valid",
            dtype=self.dtype_policy, name="patch_projection")

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv in self.stem:
            conv.build(shape)
            shape = shape[:-1] + (conv.filters,)
            if self.stem_pooling:
                shape = (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
        self.projection.build(shape)
        if self.class_token:
            self.cls = self.add_weight(
                shape=(1, 1, self.hidden_dim), name="class_token",
                initializer=keras.initializers.TruncatedNormal(stddev=0.02))
        if self.position_embedding == "learned":
            self.positions = self.add_weight(
                shape=(self.num_patches, self.hidden_dim), name="position_embedding",
                initializer=keras.initializers.TruncatedNormal(stddev=0.02))
        else:
            self.positions = self.add_weight(
                shape=(self.num_patches, self.hidden_dim), name="position_embedding",
                trainable=False,
                initializer=keras.initializers.Constant(
                    sine_positions_2d(*self.grid, self.hidden_dim)))
        self.built = True

    def call(self, images):
        x = images
        for i, conv in enumerate(self.stem):
            x = conv(x)  # (batch, H, W, stem)
            if self.stem_pooling:
                x = self.stem_pools[i](x)  # (batch, H / 2, W / 2, stem)
        x = self.projection(x)  # (batch, H / p, W / p, hidden_dim)
        x = ops.reshape(x, (-1, self.num_patches, self.hidden_dim))
        x = x + ops.cast(self.positions, x.dtype)[None]  # (batch, patches, hidden)
        if self.class_token:
            cls = ops.cast(self.cls, x.dtype)  # (1, 1, hidden_dim)
            cls = ops.broadcast_to(cls, (ops.shape(x)[0], 1, self.hidden_dim))
            x = ops.concatenate([cls, x], axis=1)  # (batch, 1 + patches, hidden)
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_patches + int(self.class_token), self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"image_size": list(self.image_size), "patch_size": self.patch_size,
                       "hidden_dim": self.hidden_dim, "stem_channels": self.stem_channels,
                       "stem_pooling": self.stem_pooling,
                       "position_embedding": self.position_embedding,
                       "class_token": self.class_token})
        return config
