"""Tests for `models.layers.TransformerEncoder`."""

import keras
import keras_hub
import numpy as np
import pytest
from layer_test_utils import run_layer_test

from models.layers import TransformerEncoder, compute_causal_mask

BATCH, SEQ, HIDDEN = 2, 6, 16


def _inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, SEQ, HIDDEN)).astype("float32")
    padding_mask = np.arange(SEQ)[None, :] < np.array([[SEQ], [3]])
    return x, padding_mask


# Dropout only in one case: its XLA training step compiles for seconds.
@pytest.mark.parametrize("norm_first, dropout", [(False, 0.0), (True, 0.1)])
def test_layer_basics(norm_first, dropout):
    x, padding_mask = _inputs()
    run_layer_test(
        TransformerEncoder,
        init_kwargs={
            "intermediate_dim": 32,
            "num_heads": 2,
            "dropout": dropout,
            "activation": "gelu",
            "layer_norm_epsilon": 1e-5,
            "norm_first": norm_first,
            "kernel_initializer": "glorot_uniform",
        },
        input_data={"inputs": x, "padding_mask": padding_mask},
        expected_output_shape=(BATCH, SEQ, HIDDEN),
        # Attention 8, two layer norms 4, two dense layers 4.
        expected_num_trainable_weights=16,
    )


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("use_causal_mask", [False, True])
def test_equals_keras_hub(norm_first, use_causal_mask):
    x, padding_mask = _inputs()
    attention_mask = compute_causal_mask(BATCH, SEQ, SEQ) if use_causal_mask else None
    ours = TransformerEncoder(intermediate_dim=32, num_heads=4, norm_first=norm_first)
    ours(x)
    reference = keras_hub.layers.TransformerEncoder(
        intermediate_dim=32,
        num_heads=4,
        activation="gelu",
        normalize_first=norm_first,
    )
    reference(x)
    shapes = [tuple(w.shape) for w in ours.weights]
    assert shapes == [tuple(w.shape) for w in reference.weights]
    rng = np.random.default_rng(7)
    weights = [rng.normal(scale=0.3, size=s).astype("float32") for s in shapes]
    ours.set_weights(weights)
    reference.set_weights(weights)

    expected = reference(x, padding_mask=padding_mask, attention_mask=attention_mask)
    actual = ours(x, padding_mask=padding_mask, attention_mask=attention_mask)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(actual),
        keras.ops.convert_to_numpy(expected),
        atol=1e-4,
    )


def test_pre_and_post_norm_differ():
    x, _ = _inputs()
    post = TransformerEncoder(intermediate_dim=32, num_heads=2, norm_first=False)
    pre = TransformerEncoder(intermediate_dim=32, num_heads=2, norm_first=True)
    post(x)
    pre(x)
    pre.set_weights(post.get_weights())
    post_out = keras.ops.convert_to_numpy(post(x))
    pre_out = keras.ops.convert_to_numpy(pre(x))
    # Post-norm output is layer-normalised: zero mean, unit variance per token.
    np.testing.assert_allclose(post_out.mean(-1), 0.0, atol=1e-4)
    np.testing.assert_allclose(post_out.std(-1), 1.0, atol=1e-2)
    # Pre-norm output is the raw residual stream.
    assert np.abs(pre_out.std(-1) - 1.0).max() > 0.05


def test_bad_num_heads_raises():
    x, _ = _inputs()
    encoder = TransformerEncoder(intermediate_dim=32, num_heads=3)
    with pytest.raises(ValueError, match="num_heads=3") as error:
        encoder(x)
    assert "hidden_dim=16" in str(error.value)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"intermediate_dim": 0, "num_heads": 2}, "intermediate_dim"),
        ({"intermediate_dim": 8, "num_heads": 0}, "num_heads"),
        ({"intermediate_dim": 8, "num_heads": 2, "dropout": -0.1}, "dropout"),
    ],
)
def test_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        TransformerEncoder(**kwargs)
