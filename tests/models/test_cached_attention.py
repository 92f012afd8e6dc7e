"""Tests for the key/value cache of `models.layers.MultiHeadAttention`."""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from layer_test_utils import as_float32_numpy

from models.layers import (
    MultiHeadAttention,
    compute_causal_mask,
    merge_padding_and_attention_mask,
)

BATCH, SEQ, SOURCE_SEQ, HIDDEN = 2, 6, 7, 12
NUM_HEADS, KEY_DIM = 3, 4


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, SEQ, HIDDEN)).astype("float32")
    source = rng.normal(size=(BATCH, SOURCE_SEQ, 10)).astype("float32")
    return x, source


def _layer(x, value=None, **kwargs):
    layer = MultiHeadAttention(num_heads=NUM_HEADS, key_dim=KEY_DIM, **kwargs)
    layer(x, x if value is None else value)
    # Random biases, so that a bias mix-up cannot go unnoticed.
    rng = np.random.default_rng(42)
    layer.set_weights(
        [rng.normal(scale=0.5, size=w.shape).astype("float32") for w in layer.weights]
    )
    return layer


def _empty_cache(dtype="float32"):
    return np.zeros((BATCH, 2, SEQ, NUM_HEADS, KEY_DIM), dtype)


def _causal_full_pass(layer, x):
    return _numpy(layer(x, x, attention_mask=compute_causal_mask(BATCH, SEQ, SEQ)))


def _decode(layer, x, chunks, step_fn=None):
    """Runs `x` through `layer` chunk by chunk (`chunks`: the chunk lengths)
    with a self-attention cache; returns the outputs joined and the cache."""

    def step(inputs, cache, index):
        mask = compute_causal_mask(
            BATCH, SEQ, keras.ops.shape(inputs)[1], cache_index=index
        )
        return layer(
            inputs, inputs, attention_mask=mask, cache=cache, cache_update_index=index
        )

    step_fn = step_fn(step) if step_fn else step
    cache, outputs, start = _empty_cache(), [], 0
    for length in chunks:
        output, cache = step_fn(x[:, start : start + length], cache, start)
        outputs.append(_numpy(output))
        start += length
    return np.concatenate(outputs, axis=1), _numpy(cache)


def test_step_by_step_equals_full_causal_pass():
    x, _ = _data()
    layer = _layer(x)
    expected = _causal_full_pass(layer, x)
    actual, cache = _decode(layer, x, [1] * SEQ)
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    # The cache holds the projected keys and values of the whole sequence.
    np.testing.assert_allclose(cache, _numpy(layer.compute_cache(x)), atol=1e-5)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_prompt_then_steps_in_tf_function_with_tensor_index(jit_compile):
    x, _ = _data()
    layer = _layer(x)
    expected = _causal_full_pass(layer, x)

    def compiled(step):
        # One trace per chunk length; the index is a tensor argument.
        function = tf.function(step, jit_compile=jit_compile)
        return lambda inputs, cache, start: function(
            tf.constant(inputs), tf.constant(cache), tf.constant(start, tf.int32)
        )

    actual, _ = _decode(layer, x, [3, 1, 1, 1], step_fn=compiled)
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_cached_graph_updates_the_cache_with_dynamic_update_slice():
    x, _ = _data()
    layer = _layer(x)

    @tf.function
    def step(inputs, cache, index):
        mask = compute_causal_mask(BATCH, SEQ, 1, cache_index=index)
        return layer(
            inputs, inputs, attention_mask=mask, cache=cache, cache_update_index=index
        )

    graph = step.get_concrete_function(
        tf.TensorSpec((BATCH, 1, HIDDEN)),
        tf.TensorSpec((BATCH, 2, SEQ, NUM_HEADS, KEY_DIM)),
        tf.TensorSpec((), tf.int32),
    ).graph
    op_types = {op.type for op in graph.get_operations()}
    assert "XlaDynamicUpdateSlice" in op_types
    assert not {t for t in op_types if "TensorList" in t or "Scatter" in t}


def test_cross_attention_cache_is_used_as_is():
    x, source = _data()
    layer = _layer(x, source)
    padding_mask = np.arange(SOURCE_SEQ)[None, :] < np.array([[SOURCE_SEQ], [4]])
    mask = merge_padding_and_attention_mask(x, padding_mask, None)
    expected = _numpy(layer(x, source, attention_mask=mask))

    cache = layer.compute_cache(source)
    assert tuple(cache.shape) == (BATCH, 2, SOURCE_SEQ, NUM_HEADS, KEY_DIM)
    # `value` is ignored when the cache is not updated.
    output, returned = layer(x, None, attention_mask=mask, cache=cache)
    np.testing.assert_allclose(_numpy(output), expected, atol=1e-5)
    np.testing.assert_array_equal(_numpy(returned), _numpy(cache))


def test_scores_come_before_the_cache():
    x, _ = _data()
    layer = _layer(x)
    mask = compute_causal_mask(BATCH, SEQ, 1, cache_index=2)
    output, scores, cache = layer(
        x[:, 2:3], x[:, 2:3], attention_mask=mask, cache=_empty_cache(),
        cache_update_index=2, return_attention_scores=True,
    )
    assert tuple(output.shape) == (BATCH, 1, HIDDEN)
    assert tuple(scores.shape) == (BATCH, NUM_HEADS, 1, SEQ)
    assert tuple(cache.shape) == (BATCH, 2, SEQ, NUM_HEADS, KEY_DIM)
    # Positions after the index (not written yet) get no attention.
    assert np.all(_numpy(scores)[..., 3:] == 0.0)


def test_equals_keras_hub_cached_attention():
    x, _ = _data()
    ours = _layer(x)
    reference = keras_hub.layers.CachedMultiHeadAttention(
        num_heads=NUM_HEADS, key_dim=KEY_DIM
    )
    reference(x, x)
    reference.set_weights(ours.get_weights())
    our_cache = reference_cache = _empty_cache()
    for i in range(SEQ):
        mask = compute_causal_mask(BATCH, SEQ, 1, cache_index=i)
        step = x[:, i : i + 1]
        expected, reference_cache = reference(
            step, step, attention_mask=mask, cache=reference_cache,
            cache_update_index=i,
        )
        actual, our_cache = ours(
            step, step, attention_mask=mask, cache=our_cache, cache_update_index=i
        )
        np.testing.assert_allclose(_numpy(actual), _numpy(expected), atol=1e-5)
        np.testing.assert_allclose(
            _numpy(our_cache), _numpy(reference_cache), atol=1e-5
        )


def test_symbolic_cached_call():
    query = keras.Input((1, HIDDEN))
    cache = keras.Input((2, SEQ, NUM_HEADS, KEY_DIM))
    layer = MultiHeadAttention(num_heads=NUM_HEADS, key_dim=KEY_DIM)
    output, scores, new_cache = layer(
        query, query, cache=cache, cache_update_index=0, return_attention_scores=True
    )
    assert tuple(output.shape) == (None, 1, HIDDEN)
    assert tuple(scores.shape) == (None, NUM_HEADS, 1, SEQ)
    assert tuple(new_cache.shape) == (None, 2, SEQ, NUM_HEADS, KEY_DIM)


def test_mixed_bfloat16_cached_decoding_is_finite():
    x, _ = _data()
    layer = MultiHeadAttention(
        num_heads=NUM_HEADS, key_dim=KEY_DIM, dtype="mixed_bfloat16"
    )
    cache = _empty_cache()  # float32 in, cast to the compute dtype
    for i in range(SEQ):
        mask = compute_causal_mask(BATCH, SEQ, 1, cache_index=i)
        output, cache = layer(
            x[:, i : i + 1], x[:, i : i + 1], attention_mask=mask, cache=cache,
            cache_update_index=i,
        )
        assert keras.backend.standardize_dtype(output.dtype) == "bfloat16"
        assert keras.backend.standardize_dtype(cache.dtype) == "bfloat16"
        assert np.all(np.isfinite(as_float32_numpy(output)))
    assert np.all(np.isfinite(as_float32_numpy(cache)))


def test_the_cache_adds_no_weights():
    x, _ = _data()
    layer = _layer(x)
    before = [w.path for w in layer.weights]
    layer(x[:, :1], x[:, :1], cache=_empty_cache(), cache_update_index=0)
    layer.compute_cache(x)
    assert [w.path for w in layer.weights] == before
    assert len(layer.trainable_weights) == 8


def test_update_index_without_cache_raises():
    x, _ = _data()
    layer = _layer(x)
    with pytest.raises(ValueError, match="cache_update_index"):
        layer(x, x, cache_update_index=0)


def test_cache_of_wrong_shape_raises():
    x, _ = _data()
    layer = _layer(x)
    bad = np.zeros((BATCH, 2, SEQ, NUM_HEADS, KEY_DIM + 1), "float32")
    with pytest.raises(ValueError, match="cache.shape"):
        layer(x[:, :1], x[:, :1], cache=bad, cache_update_index=0)


def test_cache_needs_equal_key_and_value_dims():
    x, _ = _data()
    layer = _layer(x, value_dim=KEY_DIM + 2)
    with pytest.raises(ValueError, match="value_dim"):
        layer.compute_cache(x)
    with pytest.raises(ValueError, match="value_dim"):
        layer(x[:, :1], x[:, :1], cache=_empty_cache(), cache_update_index=0)
