"""Tests for `models.layers.PatchEmbedding` and `models.VisionTransformer`."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from layer_test_utils import run_layer_test
from tflite_test_utils import assert_builtins_only, convert_archive

import models
from models.layers.patch_embedding import PatchEmbedding, sine_positions_2d

SMALL = {"num_classes": 5, "image_size": 12, "channels": 1, "patch_size": 4,
         "hidden_dim": 16, "intermediate_dim": 32, "num_heads": 2, "num_layers": 2,
         "dropout": 0.0}


def _images(n=3, shape=(12, 12, 1), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype("uint8")


@pytest.mark.parametrize("class_token", [True, False])
@pytest.mark.parametrize("stem, stem_pooling, patch_size",
                         [([], False, 4), ([4], False, 4), ([4, 4], True, 1)])
def test_patch_embedding_layer(class_token, stem, stem_pooling, patch_size):
    # 8 x 12 pixels -> 2 x 3 patches of 4, or 2 x 3 after two pooled stem convs
    run_layer_test(
        PatchEmbedding,
        init_kwargs={"image_size": [8, 12], "patch_size": patch_size, "hidden_dim": 8,
                     "stem_channels": stem, "stem_pooling": stem_pooling,
                     "position_embedding": "learned", "class_token": class_token},
        input_data=np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype("float32"),
        expected_output_shape=(2, 6 + int(class_token), 8),
        # projection kernel+bias, positions, stem kernel+bias each, class token
        expected_num_trainable_weights=3 + 2 * len(stem) + int(class_token),
    )


def test_patch_embedding_is_a_linear_projection_of_each_patch():
    """Without a stem, patch (i, j)'s vector is its flattened pixels times the
    projection kernel, plus the bias and its position: patches never mix."""
    layer = PatchEmbedding(8, 4, 6, class_token=False)
    images = np.random.default_rng(1).normal(size=(2, 8, 8, 2)).astype("float32")
    out = keras.ops.convert_to_numpy(layer(images))
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in layer.projection.weights)
    positions = keras.ops.convert_to_numpy(layer.positions)
    for i in range(2):
        for j in range(2):
            patch = images[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4, :]
            expected = np.einsum("bhwc,hwcd->bd", patch, kernel) + bias + positions[2 * i + j]
            np.testing.assert_allclose(out[:, 2 * i + j], expected, atol=1e-5)


def test_pooled_stem_is_conv_then_3x3_stride_2_max_pool():
    """With `stem_pooling`, each stem conv's output is max-pooled (3x3 window,
    stride 2, SAME padding) before the next conv and the patchify."""
    layer = PatchEmbedding(8, 2, 6, stem_channels=[3], stem_pooling=True, class_token=False)
    images = np.random.default_rng(2).normal(size=(2, 8, 8, 1)).astype("float32")
    out = keras.ops.convert_to_numpy(layer(images))
    assert layer.grid == (2, 2) and out.shape == (2, 4, 6)
    pooled = tf.nn.max_pool2d(layer.stem[0](images), 3, 2, "SAME")  # (2, 4, 4, 3)
    expected = keras.ops.convert_to_numpy(layer.projection(pooled)).reshape(2, 4, 6)
    expected += keras.ops.convert_to_numpy(layer.positions)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_sine_positions_2d_rows_and_columns():
    table = sine_positions_2d(3, 4, 8)
    assert table.shape == (12, 8)
    # Same row -> same first half; same column -> same second half.
    np.testing.assert_array_equal(table[4, :4], table[7, :4])
    np.testing.assert_array_equal(table[1, 4:], table[9, 4:])
    assert not np.allclose(table[0], table[5])
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_positions_2d(2, 2, 6)


@pytest.mark.parametrize("pooling", ["class_token", "mean", "attention"])
@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_output_shape_dtype_and_config_round_trip(pooling, dtype):
    model = models.VisionTransformer(**SMALL, pooling=pooling, stem_channels=[4],
                                     position_embedding="sine", dtype=dtype)
    images = _images()
    logits = model(images)
    assert tuple(logits.shape) == (3, 5)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(logits)))
    clone = models.VisionTransformer.from_config(model.get_config())
    clone.build()
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(images)),
                               keras.ops.convert_to_numpy(logits), atol=1e-5)


def test_uint8_float_and_dict_inputs_give_the_same_logits():
    model = models.VisionTransformer(**SMALL)
    images = _images()
    expected = keras.ops.convert_to_numpy(model(images))
    for x in (images.astype("float32"), {"pixels": images}):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), expected, atol=1e-6)


def test_normalization_uses_the_pixel_statistics():
    model = models.VisionTransformer(**SMALL, pixel_mean=0.25, pixel_std=0.5)
    x = keras.ops.convert_to_numpy(model.normalize(np.array([0, 255, 51], "uint8")))
    np.testing.assert_allclose(x, [-0.5, 1.5, -0.1], atol=1e-6)


def test_training_changes_the_logits_and_learns_a_separable_task():
    """Bright images are class 1, dark ones class 0: a few steps learn it."""
    keras.utils.set_random_seed(0)
    model = models.VisionTransformer(**{**SMALL, "num_classes": 2})
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 64)
    images = (rng.integers(0, 100, (64, 12, 12, 1)) + 155 * labels[:, None, None, None]) \
        .astype("uint8")
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(images, labels, epochs=15, batch_size=16, verbose=0)
    accuracy = np.mean(keras.ops.convert_to_numpy(model(images)).argmax(-1) == labels)
    assert accuracy == 1.0


@pytest.mark.parametrize("kwargs, message", [
    ({"pooling": "max"}, "pooling"),
    ({"patch_size": 5}, "divisible by `patch_size`"),
    ({"stem_channels": [4, 4, 4], "stem_pooling": True, "patch_size": 1}, "stem_pooling=True"),
    ({"pixel_std": 0.0}, "pixel_std"),
    ({"hidden_dim": 15}, "num_heads"),
])
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.VisionTransformer(**{**SMALL, **kwargs})


def test_tflite_float32_uses_builtins_and_matches_keras(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model = models.VisionTransformer(**{**SMALL, "patch_size": 2}, stem_channels=[4],
                                     stem_pooling=True, pooling="attention")
    images = _images(1)
    expected = keras.ops.convert_to_numpy(model(images))
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", lambda pixels: {"logits": model(pixels)},
                         input_signature=[tf.TensorSpec([1, 12, 12, 1], tf.float32,
                                                        name="pixels")])
    flatbuffer = convert_archive(archive, tmp_path / "saved", ["serving_default"])
    assert_builtins_only(flatbuffer)
    runner = Interpreter(model_content=flatbuffer).get_signature_runner("serving_default")
    np.testing.assert_allclose(runner(pixels=images.astype("float32"))["logits"],
                               expected, atol=1e-4)
