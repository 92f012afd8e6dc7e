"""Tests for `models.TextClassifier`."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf
from layer_test_utils import as_float32_numpy

import models

SMALL = {
    "vocabulary_size": 64,
    "num_classes": 3,
    "hidden_dim": 32,
    "intermediate_dim": 64,
    "num_heads": 2,
    "num_layers": 2,
    "max_sequence_length": 12,
}


def _batch(batch_size=4, seq=8, seed=0):
    """Token ids with 0 as padding: lengths seq, seq-3, 1 and 0 (all padding)."""
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(1, SMALL["vocabulary_size"], size=(batch_size, seq))
    lengths = np.array([seq, seq - 3, 1, 0])[:batch_size]
    padding_mask = np.arange(seq)[None, :] < lengths[:, None]
    token_ids = np.where(padding_mask, token_ids, 0).astype("int32")
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def _model(**kwargs):
    return models.TextClassifier(**{**SMALL, **kwargs})


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_output_shape_and_dtype(dtype):
    model = _model(dtype=dtype)
    logits = model(_batch())
    assert tuple(logits.shape) == (4, 3)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.all(np.isfinite(_numpy(logits)))


def test_xla_call_equals_eager():
    model = _model()
    batch = _batch()
    expected = _numpy(model(batch))
    actual = tf.function(model, jit_compile=True)(batch)
    np.testing.assert_allclose(_numpy(actual), expected, atol=1e-5)


def test_weights_exist_after_one_call_or_build():
    called = _model()
    assert not called.weights
    called(_batch())
    built = _model()
    built.build({"token_ids": (None, 8), "padding_mask": (None, 8)})
    # Embedding 1, two blocks of 16, final norm 2, head 2.
    assert len(called.weights) == len(built.weights) == 1 + 2 * 16 + 2 + 2
    assert len(called.backbone.encoder_layers) == 2
    assert called.backbone.embedding.token_embedding.embeddings.shape == (64, 32)
    assert called.backbone.final_layer_norm is not None
    assert _model(norm_first=False).backbone.final_layer_norm is None
    # The backbone holds every weight but the head's.
    assert len(called.backbone.weights) == len(called.weights) - 2
    groups = called.backbone.layer_groups()
    assert [len(g) for g in groups] == [1, 16, 16, 2]
    assert len(_model(norm_first=False).backbone.layer_groups()[-1]) == 0


def test_config_round_trip():
    model = _model(dropout=0.2, pooling="first", norm_first=False)
    batch = _batch()
    expected = _numpy(model(batch))
    config = model.get_config()
    init_params = set(inspect.signature(models.TextClassifier.__init__).parameters)
    assert set(config) - {"name", "trainable", "dtype"} == init_params - {
        "self",
        "kwargs",
    }
    revived = models.TextClassifier.from_config(config)
    revived(batch)
    revived.set_weights(model.get_weights())
    assert revived.get_config() == config
    np.testing.assert_allclose(_numpy(revived(batch)), expected, atol=1e-6)


def test_keras_file_round_trip_without_custom_objects(tmp_path):
    model = _model()
    batch = _batch()
    expected = _numpy(model(batch))
    path = str(tmp_path / "classifier.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is models.TextClassifier
    assert restored.get_config() == model.get_config()
    np.testing.assert_allclose(_numpy(restored(batch)), expected, atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "first"])
@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_all_padding_row_gives_finite_logits(pooling, norm_first, dtype):
    model = _model(pooling=pooling, norm_first=norm_first, dtype=dtype)
    batch = _batch()
    assert not batch["padding_mask"][3].any()
    logits = model(batch)
    assert np.all(np.isfinite(as_float32_numpy(logits)))


@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_logits_do_not_depend_on_padding(pooling):
    model = _model(pooling=pooling)
    short = _batch(batch_size=3, seq=6)
    long = {
        "token_ids": np.pad(short["token_ids"], ((0, 0), (0, 4)), constant_values=7),
        "padding_mask": np.pad(short["padding_mask"], ((0, 0), (0, 4))),
    }
    np.testing.assert_allclose(_numpy(model(long)), _numpy(model(short)), atol=1e-5)


def test_integer_padding_mask_equals_bool():
    model = _model()
    batch = _batch()
    int_batch = {**batch, "padding_mask": batch["padding_mask"].astype("int32")}
    np.testing.assert_allclose(
        _numpy(model(int_batch)), _numpy(model(batch)), atol=1e-6
    )


def test_dropout_only_in_training():
    model = _model(dropout=0.3)
    batch = _batch()
    inference = _numpy(model(batch))
    np.testing.assert_array_equal(_numpy(model(batch, training=False)), inference)
    assert np.abs(_numpy(model(batch, training=True)) - inference).max() > 1e-4


def test_fit_reduces_loss():
    model = _model(dropout=0.0)
    batch = _batch()
    labels = np.array([0, 1, 2, 1])
    model.compile(
        # SGD: tracing Adam's update costs seconds more on this machine.
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        # XLA would spend most of the test compiling; layers test it already.
        jit_compile=False,
    )
    first = model.train_on_batch(batch, labels)
    for _ in range(10):
        last = model.train_on_batch(batch, labels)
    assert np.isfinite(last)
    assert last < first


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"pooling": "max"}, "pooling='max'"),
        ({"num_heads": 3}, "num_heads=3"),
        ({"num_layers": 0}, "num_layers=0"),
        ({"dropout": 1.5}, "dropout=1.5"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _model(**kwargs)


def test_rejects_inputs_without_padding_mask():
    model = _model()
    with pytest.raises(ValueError, match="padding_mask"):
        model({"token_ids": _batch()["token_ids"]})


@pytest.mark.slow
def test_tflite_conversion_matches_keras(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model = _model(dropout=0.0)
    batch = _batch()
    model(batch)

    @tf.function(
        input_signature=[tf.TensorSpec((None, None), tf.int32, name="token_ids")]
    )
    def serve(token_ids):
        padding_mask = tf.not_equal(token_ids, 0)
        logits = model({"token_ids": token_ids, "padding_mask": padding_mask})
        return {"probabilities": tf.nn.softmax(logits)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=serve)
    saved_model_dir = str(tmp_path / "saved_model")
    archive.write_out(saved_model_dir, verbose=False)

    expected = tf.nn.softmax(model(batch)).numpy()
    sizes = {}
    for variant, optimizations, atol in [
        ("float32", [], 1e-4),
        ("dynamic_range", [tf.lite.Optimize.DEFAULT], 2e-2),
    ]:
        # Without `signature_keys` the converter takes "serving_default" (the
        # alias ExportArchive adds) and the TFLite signature is named so.
        converter = tf.lite.TFLiteConverter.from_saved_model(
            saved_model_dir, signature_keys=["serve"]
        )
        converter.optimizations = optimizations
        flatbuffer = converter.convert()
        sizes[variant] = len(flatbuffer)
        runner = Interpreter(model_content=flatbuffer).get_signature_runner("serve")
        assert runner.get_input_details()["token_ids"]["dtype"] == np.int32
        # Two shapes through one interpreter: the sequence length is dynamic.
        for seq in (8, 5):
            token_ids = batch["token_ids"][:, :seq]
            actual = runner(token_ids=token_ids)["probabilities"]
            reference = expected if seq == 8 else serve(token_ids)["probabilities"]
            np.testing.assert_allclose(actual, reference, atol=atol, err_msg=variant)
    # Dynamic-range quantization stores the large kernels as int8.
    assert sizes["dynamic_range"] < 0.75 * sizes["float32"]
