"""Private helpers shared by the layers of this package."""

import keras


def clone_initializer(initializer):
    """Returns a fresh copy of a Keras initializer.

    Sub-layers must not share one initializer instance: a seeded initializer
    would give every sibling weight the same values.

    Args:
        initializer: a `keras.initializers.Initializer` instance.

    Returns:
        A new initializer with the same config.
    """
    if not isinstance(initializer, keras.initializers.Initializer):
        return initializer
    return initializer.__class__.from_config(initializer.get_config())


def check_positive_ints(**values):
    """Raises a ValueError naming the first argument that is not an int > 0."""
    for arg, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(
                f"`{arg}` must be a positive integer. Received: {arg}={value}"
            )


def check_dropout(dropout):
    """Raises a ValueError unless 0 <= dropout < 1."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout}")


def token_ids_shape_of(input_shape):
    """The `(batch, seq)` shape of `token_ids` in a model's `build` argument:
    a dict with a `"token_ids"` shape, or such a shape itself."""
    if isinstance(input_shape, dict):
        return tuple(input_shape["token_ids"])
    return tuple(input_shape)


def make_block_stack(block_class, num_layers, name_format, intermediate_dim, num_heads,
                     dropout, norm_first, dtype):
    """The blocks of a backbone, `num_layers` x `block_class` (GELU), named
    `name_format.format(i)`, with the final `LayerNormalization` that pre-norm
    stacks end with (`None` for post-norm): `(blocks, final_layer_norm)`."""
    from models.layers.layer_normalization import LayerNormalization

    blocks = [
        block_class(
            intermediate_dim=intermediate_dim,
            num_heads=num_heads,
            dropout=dropout,
            activation="gelu",
            norm_first=norm_first,
            dtype=dtype,
            name=name_format.format(i),
        )
        for i in range(num_layers)
    ]
    final_layer_norm = None
    if norm_first:
        final_layer_norm = LayerNormalization(
            epsilon=1e-5, dtype=dtype, name="final_layer_norm"
        )
    return blocks, final_layer_norm


def check_backbone_args(dropout, hidden_dim, num_heads, **positive_ints):
    """The argument checks every backbone shares: `hidden_dim`, `num_heads`
    and each of `positive_ints` an int > 0, `hidden_dim` divisible by
    `num_heads`, `dropout` in [0, 1). Raises a ValueError naming the argument."""
    check_positive_ints(hidden_dim=hidden_dim, num_heads=num_heads, **positive_ints)
    if hidden_dim % num_heads != 0:
        raise ValueError(
            "`hidden_dim` must be divisible by `num_heads`. "
            f"Received: hidden_dim={hidden_dim}, num_heads={num_heads}"
        )
    check_dropout(dropout)


def check_bools(**values):
    """Raises a ValueError naming the first argument that is not a bool."""
    for arg, value in values.items():
        if not isinstance(value, bool):
            raise ValueError(f"`{arg}` must be a bool. Received: {arg}={value!r}")
