"""Tests for `models.layers.SinePositionEncoding`."""

import keras
import keras_hub
import numpy as np
import pytest
from layer_test_utils import as_float32_numpy, run_layer_test

from models.layers import SinePositionEncoding


def test_layer_basics():
    run_layer_test(
        SinePositionEncoding,
        init_kwargs={"max_wavelength": 1000},
        input_data=np.zeros((2, 6, 8), "float32"),
        expected_output_shape=(2, 6, 8),
        run_training_check=False,
    )


@pytest.mark.parametrize(
    "shape, max_wavelength",
    [((2, 7, 16), 10000), ((1, 50, 9), 10000), ((3, 4, 6), 100)],
)
def test_equals_keras_hub(shape, max_wavelength):
    inputs = np.random.default_rng(0).normal(size=shape).astype("float32")
    ours = SinePositionEncoding(max_wavelength=max_wavelength)(inputs)
    reference = keras_hub.layers.SinePositionEncoding(max_wavelength=max_wavelength)(
        inputs
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours),
        keras.ops.convert_to_numpy(reference),
        atol=1e-5,
    )


def test_start_index_equals_keras_hub():
    inputs = np.zeros((2, 3, 8), "float32")
    ours = SinePositionEncoding()(inputs, start_index=5)
    reference = keras_hub.layers.SinePositionEncoding()(inputs, start_index=5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours),
        keras.ops.convert_to_numpy(reference),
        atol=1e-5,
    )


def test_start_index_shifts_positions():
    full = SinePositionEncoding()(np.zeros((1, 8, 4), "float32"))
    tail = SinePositionEncoding()(np.zeros((1, 3, 4), "float32"), start_index=5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(full)[:, 5:],
        keras.ops.convert_to_numpy(tail),
        atol=1e-6,
    )


def test_bfloat16_angles_are_computed_in_float32():
    inputs = np.zeros((1, 512, 8), "float32")
    ours = SinePositionEncoding(dtype="mixed_bfloat16")(inputs)
    exact = SinePositionEncoding()(inputs)
    # Only the final cast rounds: bfloat16 has 8 mantissa bits.
    np.testing.assert_allclose(
        as_float32_numpy(ours),
        keras.ops.convert_to_numpy(exact),
        atol=2**-8,
    )


def test_rejects_bad_max_wavelength():
    with pytest.raises(ValueError, match="max_wavelength"):
        SinePositionEncoding(max_wavelength=0)
