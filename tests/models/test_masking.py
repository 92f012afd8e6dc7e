"""Tests for `models.layers.masking` and masked encoder behaviour."""

import keras
import numpy as np
import pytest
from layer_test_utils import as_float32_numpy

from models.layers import (
    TransformerEncoder,
    compute_causal_mask,
    merge_padding_and_attention_mask,
)


def test_causal_mask_is_lower_triangular():
    mask = keras.ops.convert_to_numpy(compute_causal_mask(2, 4, 4))
    assert mask.dtype == bool
    assert mask.shape == (2, 4, 4)
    np.testing.assert_array_equal(mask[1], np.tril(np.ones((4, 4), dtype=bool)))


def test_causal_mask_with_cache_index():
    mask = keras.ops.convert_to_numpy(
        compute_causal_mask(1, input_length=6, output_length=1, cache_index=3)
    )
    np.testing.assert_array_equal(mask[0, 0], [True] * 4 + [False] * 2)


def test_merge_without_masks_is_none():
    inputs = np.zeros((2, 3, 4), "float32")
    assert merge_padding_and_attention_mask(inputs, None, None) is None


def test_merge_padding_only_broadcasts_over_queries():
    inputs = np.zeros((2, 3, 4), "float32")
    padding_mask = np.array([[1, 1, 0], [1, 0, 0]], "int32")
    mask = keras.ops.convert_to_numpy(
        merge_padding_and_attention_mask(inputs, padding_mask, None)
    )
    assert mask.dtype == bool
    assert mask.shape == (2, 3, 3)
    for query in range(3):
        np.testing.assert_array_equal(mask[:, query, :], padding_mask.astype(bool))


def test_merge_padding_and_causal_is_logical_and():
    inputs = np.zeros((2, 3, 4), "float32")
    padding_mask = np.array([[True, True, False], [True, True, True]])
    causal = compute_causal_mask(2, 3, 3)
    mask = keras.ops.convert_to_numpy(
        merge_padding_and_attention_mask(inputs, padding_mask, causal)
    )
    expected = np.tril(np.ones((3, 3), dtype=bool))[None] & padding_mask[:, None, :]
    np.testing.assert_array_equal(mask, expected)


def test_merge_attention_only_is_cast_to_bool():
    inputs = np.zeros((1, 2, 4), "float32")
    attention_mask = np.array([[[1, 0], [1, 1]]], "int32")
    mask = keras.ops.convert_to_numpy(
        merge_padding_and_attention_mask(inputs, None, attention_mask)
    )
    np.testing.assert_array_equal(mask, attention_mask.astype(bool))


@pytest.mark.parametrize(
    "padding_shape, attention_shape, argument",
    [((2, 3, 1), None, "padding_mask"), (None, (2, 3), "attention_mask")],
)
def test_merge_rejects_bad_ranks(padding_shape, attention_shape, argument):
    inputs = np.zeros((2, 3, 4), "float32")
    padding = None if padding_shape is None else np.ones(padding_shape, bool)
    attention = None if attention_shape is None else np.ones(attention_shape, bool)
    with pytest.raises(ValueError, match=argument):
        merge_padding_and_attention_mask(inputs, padding, attention)


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_padded_equals_truncated_at_real_positions(norm_first):
    rng = np.random.default_rng(0)
    encoder = TransformerEncoder(
        intermediate_dim=32, num_heads=2, norm_first=norm_first
    )
    real_length, padded_length = 5, 9
    x = rng.normal(size=(2, padded_length, 16)).astype("float32")
    # Padding positions hold garbage: it must not leak into real positions.
    x[:, real_length:] = rng.normal(scale=100.0, size=(2, 4, 16))
    padding_mask = np.arange(padded_length)[None, :] < real_length
    padding_mask = np.repeat(padding_mask, 2, axis=0)

    padded = encoder(x, padding_mask=padding_mask)
    truncated = encoder(x[:, :real_length])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(padded)[:, :real_length],
        keras.ops.convert_to_numpy(truncated),
        atol=1e-5,
    )


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_fully_masked_row_stays_finite(dtype):
    encoder = TransformerEncoder(intermediate_dim=32, num_heads=2, dtype=dtype)
    x = np.random.default_rng(1).normal(size=(2, 4, 16)).astype("float32")
    padding_mask = np.array([[False] * 4, [True, True, False, False]])
    outputs = encoder(x, padding_mask=padding_mask)
    assert np.all(np.isfinite(as_float32_numpy(outputs)))
