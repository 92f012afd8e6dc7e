"""Tests for `models.layers.TransformerDecoder`."""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from layer_test_utils import as_float32_numpy, run_layer_test

from models.layers import TransformerDecoder

BATCH, SEQ, SOURCE_SEQ, HIDDEN, ENCODER_DIM = 2, 6, 7, 16, 12
NUM_HEADS = 4
HEAD_DIM = HIDDEN // NUM_HEADS


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _inputs(seed=0):
    """Decoder inputs, encoder outputs and a source padding mask (lengths 7, 4)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, SEQ, HIDDEN)).astype("float32")
    source = rng.normal(size=(BATCH, SOURCE_SEQ, ENCODER_DIM)).astype("float32")
    source_mask = np.arange(SOURCE_SEQ)[None, :] < np.array([[SOURCE_SEQ], [4]])
    return x, source, source_mask


def _decoder(cross, norm_first=False, **kwargs):
    """A built decoder with random weights (biases and norms included)."""
    x, source, _ = _inputs()
    decoder = TransformerDecoder(
        intermediate_dim=32, num_heads=NUM_HEADS, norm_first=norm_first, **kwargs
    )
    decoder(x, source if cross else None)
    rng = np.random.default_rng(7)
    decoder.set_weights(
        [rng.normal(scale=0.3, size=w.shape).astype("float32") for w in decoder.weights]
    )
    return decoder


def _empty_cache(length=SEQ):
    return np.zeros((BATCH, 2, length, NUM_HEADS, HEAD_DIM), "float32")


# Dropout only in one case: its XLA training step compiles for seconds.
@pytest.mark.parametrize(
    "cross, norm_first, dropout", [(False, False, 0.0), (True, True, 0.1)]
)
def test_layer_basics(cross, norm_first, dropout):
    x, source, source_mask = _inputs()
    decoder_mask = np.arange(SEQ)[None, :] < np.array([[SEQ], [5]])
    input_data = {"decoder_sequence": x, "decoder_padding_mask": decoder_mask}
    if cross:
        input_data.update(encoder_sequence=source, encoder_padding_mask=source_mask)
    run_layer_test(
        TransformerDecoder,
        init_kwargs={
            "intermediate_dim": 32,
            "num_heads": NUM_HEADS,
            "dropout": dropout,
            "activation": "gelu",
            "layer_norm_epsilon": 1e-5,
            "norm_first": norm_first,
            "kernel_initializer": "glorot_uniform",
        },
        input_data=input_data,
        expected_output_shape=(BATCH, SEQ, HIDDEN),
        # Attention 8, two layer norms 4, two dense layers 4; cross-attention
        # adds attention 8 and a layer norm 2.
        expected_num_trainable_weights=26 if cross else 16,
    )


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_equals_keras_hub(cross, norm_first):
    x, source, source_mask = _inputs()
    decoder_mask = np.arange(SEQ)[None, :] < np.array([[SEQ], [5]])
    ours = _decoder(cross, norm_first)
    reference = keras_hub.layers.TransformerDecoder(
        intermediate_dim=32,
        num_heads=NUM_HEADS,
        activation="gelu",
        normalize_first=norm_first,
    )
    reference(x, source if cross else None)
    # Same sub-layers, created in another order: copy them one by one.
    pairs = [
        ("_self_attention_layer", "_self_attention_layer"),
        ("_self_attention_layer_norm", "_self_attention_layer_norm"),
        ("_feedforward_intermediate_dense", "_feedforward_intermediate_dense"),
        ("_feedforward_output_dense", "_feedforward_output_dense"),
        ("_feedforward_layer_norm", "_feedforward_layer_norm"),
    ]
    if cross:
        pairs += [
            ("_cross_attention_layer", "_cross_attention_layer"),
            ("_cross_attention_layer_norm", "_cross_attention_layer_norm"),
        ]
    for our_name, reference_name in pairs:
        getattr(reference, reference_name).set_weights(
            getattr(ours, our_name).get_weights()
        )
    assert len(reference.weights) == len(ours.weights)

    kwargs = {"decoder_padding_mask": decoder_mask}
    if cross:
        kwargs.update(encoder_sequence=source, encoder_padding_mask=source_mask)
    np.testing.assert_allclose(
        _numpy(ours(x, **kwargs)), _numpy(reference(x, **kwargs)), atol=1e-4
    )


def _cached_decode(decoder, x, chunks, source=None, source_mask=None,
                   decoder_mask=None):
    """Decodes `x` chunk by chunk (`chunks`: the chunk lengths) with caches,
    each chunk through a `tf.function` that takes the index as a tensor."""
    cross_cache = None
    if source is not None:
        cross_cache = decoder.compute_cross_attention_cache(source)

    @tf.function
    def step(inputs, self_cache, index):
        return decoder(
            inputs,
            decoder_padding_mask=decoder_mask,
            encoder_padding_mask=source_mask,
            self_attention_cache=self_cache,
            self_attention_cache_update_index=index,
            cross_attention_cache=cross_cache,
        )

    self_cache, outputs, start = _empty_cache(), [], 0
    for length in chunks:
        results = step(
            tf.constant(x[:, start : start + length]),
            tf.constant(self_cache),
            tf.constant(start, tf.int32),
        )
        assert len(results) == (3 if source is not None else 2)
        outputs.append(_numpy(results[0]))
        self_cache = _numpy(results[1])
        if source is not None:
            # The cross-attention cache comes back unchanged.
            np.testing.assert_array_equal(_numpy(results[2]), _numpy(cross_cache))
        start += length
    return np.concatenate(outputs, axis=1)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_cached_decoding_equals_full_pass(cross, norm_first):
    x, source, source_mask = _inputs()
    decoder = _decoder(cross, norm_first)
    if cross:
        expected = decoder(x, source, encoder_padding_mask=source_mask)
        source_kwargs = {"source": source, "source_mask": source_mask}
    else:
        expected = decoder(x)
        source_kwargs = {}
    expected = _numpy(expected)
    step_by_step = _cached_decode(decoder, x, [1] * SEQ, **source_kwargs)
    np.testing.assert_allclose(step_by_step, expected, atol=1e-5)
    # A prompt of 3 tokens in one call, then one token per call.
    prompt_then_steps = _cached_decode(decoder, x, [3, 1, 1, 1], **source_kwargs)
    np.testing.assert_allclose(prompt_then_steps, expected, atol=1e-5)


def test_cached_decoding_of_left_padded_prompts():
    x, _, _ = _inputs()
    decoder = _decoder(cross=False)
    # The second prompt is left-padded by 2: its positions 0 and 1 are padding.
    padding_mask = np.arange(SEQ)[None, :] >= np.array([[0], [2]])
    expected = _numpy(decoder(x, decoder_padding_mask=padding_mask))
    # With a cache the padding mask covers the cache positions.
    actual = _cached_decode(decoder, x, [3, 1, 1, 1], decoder_mask=padding_mask)
    np.testing.assert_allclose(actual[padding_mask], expected[padding_mask], atol=1e-5)
    # The padding does change the outputs: the mask is not a no-op.
    unmasked = _numpy(decoder(x))
    assert np.abs(unmasked[1, 2:] - expected[1, 2:]).max() > 1e-3


@pytest.mark.parametrize("cross", [False, True])
def test_outputs_do_not_depend_on_later_tokens(cross):
    x, source, _ = _inputs()
    decoder = _decoder(cross, norm_first=True)
    changed = x.copy()
    changed[:, 3:] = np.random.default_rng(9).normal(size=changed[:, 3:].shape)
    context = source if cross else None
    before = _numpy(decoder(x, context))
    after = _numpy(decoder(changed, context))
    np.testing.assert_allclose(after[:, :3], before[:, :3], atol=1e-6)
    assert np.abs(after[:, 3:] - before[:, 3:]).max() > 1e-3


def test_encoder_padding_does_not_change_outputs():
    x, source, source_mask = _inputs()
    decoder = _decoder(cross=True)
    expected = _numpy(decoder(x, source, encoder_padding_mask=source_mask))
    # Other values at the padded source positions: the same outputs.
    changed = np.where(source_mask[..., None], source, 100.0).astype("float32")
    actual = _numpy(decoder(x, changed, encoder_padding_mask=source_mask))
    np.testing.assert_allclose(actual, expected, atol=1e-6)
    # The padded source equals the source truncated to its real length.
    truncated = _numpy(decoder(x[1:], source[1:, :4]))
    np.testing.assert_allclose(truncated[0], expected[1], atol=1e-5)


def test_keras_file_round_trip_keeps_cross_attention(tmp_path):
    x, source, source_mask = _inputs()
    decoder_input = keras.Input((SEQ, HIDDEN))
    encoder_input = keras.Input((SOURCE_SEQ, ENCODER_DIM))
    mask_input = keras.Input((SOURCE_SEQ,), dtype="bool")
    outputs = TransformerDecoder(intermediate_dim=32, num_heads=NUM_HEADS)(
        decoder_input, encoder_input, encoder_padding_mask=mask_input
    )
    model = keras.Model([decoder_input, encoder_input, mask_input], outputs)
    path = str(tmp_path / "decoder.keras")
    model.save(path)
    # No custom_objects: the layer is registered.
    revived = keras.saving.load_model(path)
    assert revived.layers[-1].has_cross_attention
    np.testing.assert_allclose(
        _numpy(revived([x, source, source_mask])),
        _numpy(model([x, source, source_mask])),
        atol=1e-6,
    )


def test_symbolic_cached_call():
    decoder = _decoder(cross=True)
    outputs, self_cache, cross_cache = decoder(
        keras.Input((1, HIDDEN)),
        self_attention_cache=keras.Input((2, SEQ, NUM_HEADS, HEAD_DIM)),
        self_attention_cache_update_index=0,
        cross_attention_cache=keras.Input((2, SOURCE_SEQ, NUM_HEADS, HEAD_DIM)),
    )
    assert tuple(outputs.shape) == (None, 1, HIDDEN)
    assert tuple(self_cache.shape) == (None, 2, SEQ, NUM_HEADS, HEAD_DIM)
    assert tuple(cross_cache.shape) == (None, 2, SOURCE_SEQ, NUM_HEADS, HEAD_DIM)


def test_mixed_bfloat16_cached_decoding_is_finite():
    x, source, source_mask = _inputs()
    decoder = TransformerDecoder(
        intermediate_dim=32, num_heads=NUM_HEADS, dtype="mixed_bfloat16"
    )
    full = decoder(x, source, encoder_padding_mask=source_mask)
    assert keras.backend.standardize_dtype(full.dtype) == "bfloat16"
    assert np.all(np.isfinite(as_float32_numpy(full)))
    self_cache = _empty_cache()
    cross_cache = decoder.compute_cross_attention_cache(source)
    for i in range(SEQ):
        output, self_cache, cross_cache = decoder(
            x[:, i : i + 1],
            encoder_padding_mask=source_mask,
            self_attention_cache=self_cache,
            self_attention_cache_update_index=i,
            cross_attention_cache=cross_cache,
        )
        assert keras.backend.standardize_dtype(output.dtype) == "bfloat16"
        assert np.all(np.isfinite(as_float32_numpy(output)))
    assert keras.backend.standardize_dtype(self_cache.dtype) == "bfloat16"


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"intermediate_dim": 0, "num_heads": 2}, "intermediate_dim"),
        ({"intermediate_dim": 8, "num_heads": 0}, "num_heads"),
        ({"intermediate_dim": 8, "num_heads": 2, "dropout": 1.5}, "dropout"),
    ],
)
def test_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        TransformerDecoder(**kwargs)


def test_bad_num_heads_raises():
    x, _, _ = _inputs()
    decoder = TransformerDecoder(intermediate_dim=32, num_heads=3)
    with pytest.raises(ValueError, match="num_heads=3") as error:
        decoder(x)
    assert f"hidden_dim={HIDDEN}" in str(error.value)


def test_decoder_only_rejects_encoder_inputs():
    x, source, _ = _inputs()
    decoder = _decoder(cross=False)
    with pytest.raises(ValueError, match="encoder_sequence"):
        decoder(x, source)
    with pytest.raises(ValueError, match="cross_attention_cache"):
        decoder(
            x[:, :1],
            self_attention_cache=_empty_cache(),
            self_attention_cache_update_index=0,
            cross_attention_cache=np.zeros((BATCH, 2, SOURCE_SEQ, NUM_HEADS, HEAD_DIM)),
        )
    with pytest.raises(ValueError, match="no cross-attention"):
        decoder.compute_cross_attention_cache(source)


def test_cross_attention_decoder_needs_its_inputs():
    x, source, _ = _inputs()
    decoder = _decoder(cross=True)
    with pytest.raises(ValueError, match="encoder_sequence"):
        decoder(x)
    with pytest.raises(ValueError, match="cross_attention_cache"):
        decoder(
            x[:, :1],
            source,
            self_attention_cache=_empty_cache(),
            self_attention_cache_update_index=0,
        )


def test_padding_mask_must_cover_the_cache():
    x, _, _ = _inputs()
    decoder = _decoder(cross=False)
    with pytest.raises(ValueError, match="decoder_padding_mask"):
        decoder(
            x[:, :1],
            decoder_padding_mask=np.ones((BATCH, 1), bool),
            self_attention_cache=_empty_cache(),
            self_attention_cache_update_index=0,
        )
