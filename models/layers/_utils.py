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
