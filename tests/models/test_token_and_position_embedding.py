"""Tests for `models.layers.TokenAndPositionEmbedding`."""

import math

import keras
import numpy as np
import pytest
from layer_test_utils import run_layer_test

from models.layers import SinePositionEncoding, TokenAndPositionEmbedding

TOKEN_IDS = np.array([[3, 7, 1, 0, 0], [9, 2, 2, 4, 5]], "int32")


def test_layer_basics():
    run_layer_test(
        TokenAndPositionEmbedding,
        init_kwargs={
            "vocabulary_size": 10,
            "hidden_dim": 8,
            "max_sequence_length": 6,
            "embeddings_initializer": "glorot_uniform",
            "scale_embeddings": True,
        },
        input_data=TOKEN_IDS,
        expected_output_shape=(2, 5, 8),
        expected_num_trainable_weights=1,
    )


@pytest.mark.parametrize("scale_embeddings", [True, False])
def test_output_is_scaled_embedding_plus_sine(scale_embeddings):
    layer = TokenAndPositionEmbedding(
        vocabulary_size=10,
        hidden_dim=8,
        max_sequence_length=6,
        scale_embeddings=scale_embeddings,
    )
    outputs = keras.ops.convert_to_numpy(layer(TOKEN_IDS))
    table = layer.token_embedding.embeddings.numpy()
    scale = math.sqrt(8) if scale_embeddings else 1.0
    positions = keras.ops.convert_to_numpy(
        SinePositionEncoding()(np.zeros((2, 5, 8), "float32"))
    )
    np.testing.assert_allclose(outputs, table[TOKEN_IDS] * scale + positions, atol=1e-6)


def test_token_embedding_is_exposed_before_build():
    layer = TokenAndPositionEmbedding(
        vocabulary_size=10, hidden_dim=8, max_sequence_length=6
    )
    assert isinstance(layer.token_embedding, keras.layers.Embedding)
    assert layer.token_embedding.name == "token_embedding"
    layer(TOKEN_IDS)
    assert tuple(layer.token_embedding.embeddings.shape) == (10, 8)


def test_rejects_sequences_longer_than_max_sequence_length():
    layer = TokenAndPositionEmbedding(
        vocabulary_size=10, hidden_dim=8, max_sequence_length=4
    )
    with pytest.raises(ValueError, match="max_sequence_length"):
        layer(TOKEN_IDS)


def test_rejects_bad_vocabulary_size():
    with pytest.raises(ValueError, match="vocabulary_size=0"):
        TokenAndPositionEmbedding(
            vocabulary_size=0, hidden_dim=8, max_sequence_length=4
        )
