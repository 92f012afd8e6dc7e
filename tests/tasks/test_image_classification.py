"""The image-classification task (a Vision Transformer on Fashion-MNIST from the
Debian package dataset-fashion-mnist): config rules, the tf.data input with
seeded augmentation and exact resume, and the debug run end to end: metrics
beside the CNN baseline, figures, the SavedModel on PNG/JPEG bytes (in-process
and through the local server over REST and gRPC), the TFLite variants with a
uint8-input full-int8 model, and the edge bundle."""

import io
import os

import numpy as np
import pytest

from pipeline.config import ConfigError, load_config
from tests.conftest import IMAGE_DEBUG_CONFIG, read_json


def _config(*overrides, tfds_dir=None, root="/tmp/unused"):
    extra = [f"data.tfds_data_dir={tfds_dir}"] if tfds_dir else []
    return load_config(IMAGE_DEBUG_CONFIG, [f"runtime.artifacts_root={root}", *extra,
                                            *overrides])


@pytest.mark.parametrize("override, key", [
    ("model.name=text_classifier", "model.name"),
    ("data.source=csv", "data.source"),
    ("model.pooling=first", "model.pooling"),
    ("model.patch_size=5", "model.patch_size"),
    ("model.position_embedding=rope", "model.position_embedding"),
    ("augment.max_shift_pixels=40", "augment.max_shift_pixels"),
    ("data.image_channels=2", "data.image_channels"),
])
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _config(override)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image.reshape(image.shape[:2]) if image.shape[-1] == 1 else image) \
        .save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def prepared(tfds_dir, tmp_path_factory):
    from pipeline.tasks import make_task

    cfg = _config(tfds_dir=tfds_dir, root=str(tmp_path_factory.mktemp("image_prepared")))
    task = make_task(cfg, log=lambda *_: None)
    task.prepare()
    return task


@pytest.mark.slow
def test_augmentation_is_seeded_and_resume_skips_exactly(prepared):
    """Batch k of a fresh stream equals batch 0 of a stream that skipped k
    (what a resumed run reads); the augmented images differ from the raw ones
    but stay within the image; evaluation images are never augmented."""
    batches = [b for _, b in zip(range(4), prepared.train_dataset(32))]
    resumed = next(iter(prepared.train_dataset(32, skip_batches=3)))
    np.testing.assert_array_equal(batches[3][0]["pixels"].numpy(),
                                  resumed[0]["pixels"].numpy())
    np.testing.assert_array_equal(batches[3][1].numpy(), resumed[1].numpy())
    pixels = batches[0][0]["pixels"].numpy()
    assert pixels.dtype == np.uint8 and pixels.shape == (32, 28, 28, 1)
    raw = {img.tobytes() for img in prepared.splits.images["train"]}
    changed = sum(img.tobytes() not in raw for img in pixels)
    assert changed > 8, "flips and shifts should change most training images"

    inputs, labels = next(iter(prepared.eval_dataset("test", 16)))
    np.testing.assert_array_equal(inputs["pixels"].numpy(),
                                  prepared.splits.images["test"][:16])
    np.testing.assert_array_equal(labels.numpy(), prepared.splits.labels["test"][:16])


@pytest.mark.slow
def test_run_writes_metrics_baseline_and_figures(image_run):
    cfg, metrics = image_run
    saved = read_json(os.path.join(cfg.run_dir, "metrics.json"))
    test = saved["test"]
    assert 0.2 < test["accuracy"] <= 1.0, "the debug ViT learns something in 2 epochs"
    assert set(test["per_class_f1"]) == set(read_labels(cfg))
    baseline = saved["baseline"]
    assert {"accuracy", "macro_f1", "parameters", "seconds"} <= set(baseline)
    for png in ("report/confusion_matrix.png", "report/misclassified.png",
                "data_samples.png"):
        path = os.path.join(cfg.run_dir, png)
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
    card = read_json(os.path.join(cfg.run_dir, "data_card.json"))
    assert card["splits"]["train"]["examples"] == 600


def read_labels(cfg):
    with open(os.path.join(cfg.run_dir, "tokenizer", "labels.txt")) as f:
        return [line.rstrip("\n") for line in f]


def _keras_classes(image_trained, images):
    _, model = image_trained
    return np.asarray(model(images, training=False)).argmax(-1)


@pytest.mark.slow
def test_saved_model_classifies_png_jpeg_and_pixels_like_keras(image_run, image_trained):
    import tensorflow as tf
    from PIL import Image

    cfg, metrics = image_run
    task, _ = image_trained
    images = task.splits.images["test"][:32]
    expected = _keras_classes(image_trained, images)
    loaded = tf.saved_model.load(metrics["artifacts"]["saved_model"])
    out = loaded.signatures["serving_default"](
        image_bytes=tf.constant([_png(img) for img in images]))
    np.testing.assert_array_equal(out["class_id"].numpy(), expected)
    labels = read_labels(cfg)
    assert [s.decode() for s in out["label"].numpy()] == [labels[i] for i in expected]
    by_pixels = loaded.signatures["pixels"](pixels=tf.constant(images))
    np.testing.assert_allclose(by_pixels["probabilities"].numpy(),
                               out["probabilities"].numpy(), atol=1e-6)

    # An RGB JPEG twice the size is converted to grey and resized in the graph.
    big = Image.fromarray(images[0][..., 0]).convert("RGB").resize((56, 56))
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", quality=95)
    jpeg = loaded.signatures["serving_default"](image_bytes=tf.constant([buffer.getvalue()]))
    assert jpeg["probabilities"].shape == (1, len(labels))
    # A GIF (decoded to RGB only by TensorFlow) of a test image classifies as its PNG.
    buffer = io.BytesIO()
    Image.fromarray(images[1][..., 0]).save(buffer, format="GIF")
    gif = loaded.signatures["serving_default"](image_bytes=tf.constant([buffer.getvalue()]))
    assert int(gif["class_id"][0]) == expected[1]
    assert metrics["saved_model"]["agreement_with_keras"] == 1.0

    with pytest.raises(tf.errors.InvalidArgumentError, match="(?i)image"):
        loaded.signatures["serving_default"](image_bytes=tf.constant([b"not an image"]))


@pytest.mark.slow
def test_local_server_classifies_png_bytes_over_rest_and_grpc(image_run, image_trained):
    from serving.process import LocalServerProcess

    cfg, metrics = image_run
    task, _ = image_trained
    images = task.splits.images["test"][:16]
    expected = [read_labels(cfg)[i] for i in _keras_classes(image_trained, images)]
    base = os.path.dirname(metrics["artifacts"]["saved_model"])
    server = LocalServerProcess(["--model_name", "image_classifier", "--model_base_path", base],
                                model="image_classifier", start_timeout=300)
    try:
        server.start()
        client = server.client(input_key="image_bytes")
        pngs = [_png(img) for img in images]
        for protocol in ("rest", "grpc"):
            assert client.predict(pngs, protocol).outputs["label"] == expected, protocol
        assert client.predict(pngs, "rest", format="inputs").outputs["label"] == expected
        from serving.client import ServingError

        with pytest.raises(ServingError, match="(?i)image") as err:
            client.predict([b"not an image at all"], "rest")
        assert err.value.status == 400
    finally:
        server.close()


@pytest.mark.slow
def test_tflite_variants_uint8_int8_and_bundle(image_run):
    from export.tflite import signature_details

    cfg, metrics = image_run
    tflite = metrics["tflite"]
    assert set(tflite) == {"float32", "float16", "dynamic_range", "int8"}
    assert tflite["float32"]["agreement_with_keras"] == 1.0
    int8 = signature_details(tflite["int8"]["path"])["serving_default"]
    assert int8["inputs"]["pixels"]["dtype"] == "uint8"
    assert int8["outputs"]["probabilities"]["dtype"] == "float32"
    # Every compute op is int8: only dequantization at the output (and ops on
    # constants the converter left) stay float.
    assert "FULLY_CONNECTED" not in tflite["int8"]["float_ops"]
    assert "BATCH_MATMUL" not in tflite["int8"]["float_ops"]
    assert abs(tflite["int8"]["accuracy"] - tflite["float32"]["accuracy"]) < 0.1
    manifest = read_json(os.path.join(metrics["artifacts"]["edge_bundle"], "manifest.json"))
    assert manifest["task"] == "image_classification"
    assert (manifest["image_height"], manifest["image_width"], manifest["channels"]) == \
        (28, 28, 1)
    assert manifest["labels"] == "labels.txt"
