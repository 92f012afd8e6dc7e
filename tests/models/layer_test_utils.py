"""Shared checks that every layer of `models.layers` must pass."""

import inspect

import keras
import numpy as np
import tensorflow as tf

# Base-layer entries that `get_config()` adds on top of the constructor args.
_BASE_CONFIG_KEYS = {"name", "trainable", "dtype"}


def as_float32_numpy(x):
    """Converts a float tensor of any precision to a float32 numpy array."""
    return keras.ops.convert_to_numpy(keras.ops.cast(x, "float32"))


def _call(layer, input_data, **kwargs):
    if isinstance(input_data, dict):
        return layer(**input_data, **kwargs)
    return layer(input_data, **kwargs)


def _symbolic(input_data):
    """KerasTensors with the same shapes as `input_data`, batch left open."""

    def to_keras_tensor(x):
        x = np.asarray(x)
        return keras.KerasTensor((None,) + x.shape[1:], dtype=str(x.dtype))

    if isinstance(input_data, dict):
        return {k: to_keras_tensor(v) for k, v in input_data.items()}
    return to_keras_tensor(input_data)


def _assert_all_finite(values, what):
    for value in keras.tree.flatten(values):
        value = as_float32_numpy(value)
        assert np.all(np.isfinite(value)), f"{what} has non-finite values"


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    expected_output_dtype="float32",
    expected_num_trainable_weights=0,
    expected_num_non_trainable_weights=0,
    run_training_check=True,
    run_mixed_precision_check=True,
    atol=1e-5,
):
    """Runs the checks every layer must pass.

    1. `get_config()` holds exactly the constructor arguments (plus the base
       `name`, `trainable`, `dtype`) and survives a serialization round trip
       without `custom_objects`; `from_config(get_config())` with copied
       weights gives the same output.
    2. The weight counts, output shape and dtype are as expected, for a
       symbolic call (batch `None`), an eager call, and a call inside
       `tf.function(jit_compile=True)` (which must match the eager output).
    3. One XLA-compiled training step (`training=True`, SGD on the mean
       square of the output) leaves the loss, gradients and weights finite
       and changes the weights.
    4. Under the `mixed_bfloat16` policy every sub-layer has that policy,
       weights stay float32, and outputs are bfloat16 (float outputs only)
       and finite, eagerly and under XLA.

    Args:
        layer_cls: the layer class.
        init_kwargs: dict of constructor arguments.
        input_data: a numpy array (passed positionally) or a dict of numpy
            arrays (passed as keyword arguments, e.g. masks).
        expected_output_shape: tuple, the output shape for `input_data`.
        expected_output_dtype: str, the output dtype in float32.
        expected_num_trainable_weights: int.
        expected_num_non_trainable_weights: int.
        run_training_check: bool, whether to run check 3 (needs trainable
            weights).
        run_mixed_precision_check: bool, whether to run check 4.
        atol: float, tolerance for comparing outputs of the same weights.
    """
    keras.utils.set_random_seed(0)

    # Constructor arguments <-> config.
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    init_params = set(inspect.signature(layer_cls.__init__).parameters)
    init_params -= {"self", "kwargs"}
    assert set(config) - _BASE_CONFIG_KEYS == init_params
    for key, value in init_kwargs.items():
        # Objects (initializers, dtype policies) are serialized to dicts.
        if key != "dtype" and not isinstance(config[key], dict):
            assert config[key] == value, key

    # Symbolic call: shape with an unknown batch size, dtype.
    symbolic_output = _call(layer_cls(**init_kwargs), _symbolic(input_data))
    assert tuple(symbolic_output.shape) == (None,) + tuple(expected_output_shape[1:])
    assert keras.backend.standardize_dtype(symbolic_output.dtype) == (
        expected_output_dtype
    )

    # Eager call.
    output = _call(layer, input_data)
    assert tuple(output.shape) == tuple(expected_output_shape)
    assert keras.backend.standardize_dtype(output.dtype) == expected_output_dtype
    assert len(layer.trainable_weights) == expected_num_trainable_weights
    assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights
    output = keras.ops.convert_to_numpy(output)

    # Config round trip through the registry, with copied weights.
    serialized = keras.saving.serialize_keras_object(layer)
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is layer_cls
    assert revived.get_config() == config
    revived = layer_cls.from_config(config)
    _call(revived, input_data)
    revived.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(_call(revived, input_data)), output, atol=atol
    )

    # XLA-compiled call.
    jit_call = tf.function(lambda data: _call(layer, data), jit_compile=True)
    jit_output = jit_call(input_data)
    assert tuple(jit_output.shape) == tuple(expected_output_shape)
    assert keras.backend.standardize_dtype(jit_output.dtype) == (expected_output_dtype)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(jit_output), output, atol=atol
    )

    if run_training_check:
        _run_training_step(layer, input_data)

    if run_mixed_precision_check:
        _run_mixed_precision_check(
            layer_cls, init_kwargs, input_data, expected_output_dtype
        )


def _run_training_step(layer, input_data):
    assert layer.trainable_weights, "the training check needs trainable weights"
    optimizer = keras.optimizers.SGD(learning_rate=0.1)
    optimizer.build(layer.trainable_variables)
    before = [w.numpy() for w in layer.trainable_weights]

    @tf.function(jit_compile=True)
    def train_step(data):
        with tf.GradientTape() as tape:
            output = _call(layer, data, training=True)
            loss = keras.ops.mean(keras.ops.square(keras.ops.cast(output, "float32")))
        grads = tape.gradient(loss, layer.trainable_variables)
        optimizer.apply(grads, layer.trainable_variables)
        return loss, grads

    loss, grads = train_step(input_data)
    _assert_all_finite(loss, "training loss")
    assert all(g is not None for g in grads), "a weight got no gradient"
    _assert_all_finite(grads, "gradients")
    _assert_all_finite(layer.trainable_weights, "weights after one step")
    changed = [
        not np.array_equal(b, w.numpy())
        for b, w in zip(before, layer.trainable_weights)
    ]
    assert any(changed), "one training step changed no weight"


def _run_mixed_precision_check(
    layer_cls, init_kwargs, input_data, expected_output_dtype
):
    layer = layer_cls(**{**init_kwargs, "dtype": "mixed_bfloat16"})
    output = _call(layer, input_data)
    for sublayer in layer._flatten_layers(include_self=True, recursive=True):
        assert sublayer.dtype_policy.name == "mixed_bfloat16", sublayer.name
    for weight in layer.weights:
        assert keras.backend.standardize_dtype(weight.dtype) == "float32"
    if expected_output_dtype.startswith("float"):
        expected_output_dtype = "bfloat16"
    assert keras.backend.standardize_dtype(output.dtype) == expected_output_dtype
    _assert_all_finite(output, "mixed_bfloat16 output")
    jit_output = tf.function(lambda data: _call(layer, data), jit_compile=True)(
        input_data
    )
    _assert_all_finite(jit_output, "mixed_bfloat16 XLA output")
