"""Tests for `models.layers.MultiHeadAttention`."""

import keras
import numpy as np
import pytest
from layer_test_utils import as_float32_numpy, run_layer_test

from models.layers import (
    MultiHeadAttention,
    compute_causal_mask,
    merge_padding_and_attention_mask,
)

BATCH, Q_LEN, KV_LEN, HIDDEN = 2, 5, 7, 12


def _data(seed=0):
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(BATCH, Q_LEN, HIDDEN)).astype("float32")
    value = rng.normal(size=(BATCH, KV_LEN, 10)).astype("float32")
    return query, value


def _padding_mask(lengths, max_length):
    return np.arange(max_length)[None, :] < np.array(lengths)[:, None]


def test_layer_basics():
    query, value = _data()
    mask = np.broadcast_to(
        _padding_mask([7, 3], KV_LEN)[:, None, :], (BATCH, Q_LEN, KV_LEN)
    )
    run_layer_test(
        MultiHeadAttention,
        init_kwargs={
            "num_heads": 3,
            "key_dim": 4,
            "value_dim": 6,
            "dropout": 0.1,
            "use_bias": True,
            "kernel_initializer": "glorot_uniform",
            "bias_initializer": "zeros",
        },
        input_data={"query": query, "value": value, "attention_mask": mask},
        expected_output_shape=(BATCH, Q_LEN, HIDDEN),
        expected_num_trainable_weights=8,
    )


def test_without_bias_has_four_weights():
    query, _ = _data()
    layer = MultiHeadAttention(num_heads=2, key_dim=3, use_bias=False)
    layer(query, query)
    assert len(layer.trainable_weights) == 4


def _copied_pair(num_heads, key_dim, value_dim, query, value):
    ours = MultiHeadAttention(num_heads=num_heads, key_dim=key_dim, value_dim=value_dim)
    ours(query, value)
    reference = keras.layers.MultiHeadAttention(
        num_heads=num_heads, key_dim=key_dim, value_dim=value_dim
    )
    reference(query, value)
    our_shapes = [tuple(w.shape) for w in ours.weights]
    assert our_shapes == [tuple(w.shape) for w in reference.weights]
    # Random biases, so that a bias mix-up cannot go unnoticed.
    rng = np.random.default_rng(42)
    weights = [rng.normal(scale=0.5, size=s).astype("float32") for s in our_shapes]
    ours.set_weights(weights)
    reference.set_weights(weights)
    return ours, reference


def _self_attention_masks():
    query, _ = _data()
    padding = merge_padding_and_attention_mask(
        query, _padding_mask([5, 2], Q_LEN), None
    )
    causal = compute_causal_mask(BATCH, Q_LEN, Q_LEN)
    both = merge_padding_and_attention_mask(query, _padding_mask([5, 2], Q_LEN), causal)
    return {"none": None, "padding": padding, "causal": causal, "both": both}


@pytest.mark.parametrize("mask_name", ["none", "padding", "causal", "both"])
def test_self_attention_equals_keras(mask_name):
    query, _ = _data()
    mask = _self_attention_masks()[mask_name]
    ours, reference = _copied_pair(3, 4, 4, query, query)
    expected = reference(query, query, attention_mask=mask)
    actual = ours(query, query, attention_mask=mask)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(actual),
        keras.ops.convert_to_numpy(expected),
        atol=1e-5,
    )


def test_cross_attention_and_scores_equal_keras():
    query, value = _data()
    key = np.random.default_rng(3).normal(size=(BATCH, KV_LEN, 9)).astype("float32")
    mask = merge_padding_and_attention_mask(query, _padding_mask([7, 3], KV_LEN), None)
    ours = MultiHeadAttention(num_heads=2, key_dim=3, value_dim=5)
    ours(query, value, key=key)
    reference = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3, value_dim=5)
    reference(query, value, key=key)
    reference.set_weights(ours.get_weights())

    expected, expected_scores = reference(
        query, value, key=key, attention_mask=mask, return_attention_scores=True
    )
    actual, actual_scores = ours(
        query, value, key=key, attention_mask=mask, return_attention_scores=True
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(actual),
        keras.ops.convert_to_numpy(expected),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(actual_scores),
        keras.ops.convert_to_numpy(expected_scores),
        atol=1e-5,
    )
    # Padded keys get no attention at all.
    assert np.all(keras.ops.convert_to_numpy(actual_scores)[1, :, :, 3:] == 0.0)


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_fully_masked_query_is_finite(dtype):
    query, _ = _data()
    layer = MultiHeadAttention(num_heads=3, key_dim=4, dtype=dtype)
    mask = np.zeros((BATCH, Q_LEN, Q_LEN), bool)
    mask[1] = True
    outputs, scores = layer(
        query, query, attention_mask=mask, return_attention_scores=True
    )
    assert np.all(np.isfinite(as_float32_numpy(outputs)))
    # A fully masked query attends uniformly.
    np.testing.assert_allclose(as_float32_numpy(scores)[0], 1.0 / Q_LEN, atol=1e-2)


def test_softmax_is_float32_under_mixed_precision():
    query, _ = _data()
    layer = MultiHeadAttention(num_heads=3, key_dim=4, dtype="mixed_bfloat16")
    outputs, scores = layer(query, query, return_attention_scores=True)
    assert keras.backend.standardize_dtype(outputs.dtype) == "bfloat16"
    sums = keras.ops.convert_to_numpy(
        keras.ops.sum(keras.ops.cast(scores, "float32"), -1)
    )
    np.testing.assert_allclose(sums, 1.0, atol=1e-2)


def test_dropout_honours_training():
    query, _ = _data()
    layer = MultiHeadAttention(num_heads=3, key_dim=4, dropout=0.5)
    plain = MultiHeadAttention(num_heads=3, key_dim=4)
    layer(query, query)
    plain(query, query)
    plain.set_weights(layer.get_weights())
    inference = keras.ops.convert_to_numpy(layer(query, query, training=False))
    default = keras.ops.convert_to_numpy(layer(query, query))
    training = keras.ops.convert_to_numpy(layer(query, query, training=True))
    expected = keras.ops.convert_to_numpy(plain(query, query))
    np.testing.assert_allclose(inference, expected, atol=1e-6)
    np.testing.assert_allclose(default, expected, atol=1e-6)
    assert np.abs(training - expected).max() > 1e-3


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"num_heads": 0, "key_dim": 4}, "num_heads"),
        ({"num_heads": 2, "key_dim": -1}, "key_dim"),
        ({"num_heads": 2, "key_dim": 4, "value_dim": 0}, "value_dim"),
        ({"num_heads": 2, "key_dim": 4, "dropout": 1.0}, "dropout"),
    ],
)
def test_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        MultiHeadAttention(**kwargs)
