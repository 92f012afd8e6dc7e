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
