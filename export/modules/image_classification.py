"""Export module of image classification (the Vision Transformer).

SavedModel signatures (decoding and resizing inside the graph):

  serving_default  image_bytes: string (batch,), encoded PNG/JPEG/GIF/BMP
                   -> label: string (batch,), class_id: int32 (batch,),
                   probabilities: float32 (batch, classes)
  pixels           pixels: uint8 (batch, H, W, C) -> label, class_id, probabilities

Each image is decoded to RGB, converted to grey when the model takes grey
(ITU-R 601 weights, as Pillow's convert("L")) and resized (bilinear) to the
model's size when it differs. Over REST, binary strings travel as
{"b64": "..."}.

TFLite: one signature `serving_default`, `pixels` (batch, H, W, C) -> float32
`probabilities`. The float variants take float32 pixel values 0..255; the
full-int8 variant takes them as uint8 (`int8_input`), calibrated on train
images, so an app feeds decoded pixels as they are. Its metric is test
accuracy (the gate compares it, in points), with agreement with Keras.
Bundle: labels.txt and the image geometry in the manifest.
"""

from __future__ import annotations

import numpy as np

from export.modules import register_export_module
from export.modules.base import ExportModule

INPUT_NAME, OUTPUT_NAME, SIGNATURE = "pixels", "probabilities", "serving_default"
WARMUP_IMAGES = 8
GREY_WEIGHTS = (0.299, 0.587, 0.114)


def encode_png(images: np.ndarray) -> list[bytes]:
    """PNG bytes of uint8 images (n, H, W, C)."""
    import tensorflow as tf

    return [tf.io.encode_png(image).numpy() for image in images]


@register_export_module("image_classification")
class ImageClassificationExport(ExportModule):
    tflite_signatures = (SIGNATURE,)
    gate_metric = "accuracy"
    latency_unit = "one image (batch 1)"
    int8_input = "uint8"

    def __init__(self, task, model):
        super().__init__(task, model)
        self.shape = task.image_shape  # (H, W, C)

    # ---------------------------------------------------------- SavedModel
    def serving_archive(self):
        import keras
        import tensorflow as tf

        model = self.model
        height, width, channels = self.shape
        labels = tf.constant(self.task.label_names)

        def classify(pixels):
            probabilities = tf.nn.softmax(model(pixels, training=False), axis=-1)
            class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            return {"label": tf.gather(labels, class_id), "class_id": class_id,
                    "probabilities": probabilities}

        def decode(image_bytes):
            # Every format to RGB first (GIF decodes to RGB only), then to grey
            # with ITU-R 601 weights, as Pillow's convert("L") does.
            image = tf.io.decode_image(image_bytes, channels=3,
                                       expand_animations=False)  # (h, w, 3) uint8
            if channels == 1:
                grey = tf.tensordot(tf.cast(image, tf.float32), GREY_WEIGHTS, axes=1)
                image = tf.cast(tf.round(grey), tf.uint8)[..., None]  # (h, w, 1)
            size = tf.shape(image)[:2]
            same = tf.logical_and(tf.equal(size[0], height), tf.equal(size[1], width))
            return tf.cond(same, lambda: image, lambda: tf.cast(tf.clip_by_value(
                tf.round(tf.image.resize(image, (height, width), method="bilinear")),
                0, 255), tf.uint8))

        def serve_bytes(image_bytes):
            pixels = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec(
                (height, width, channels), tf.uint8))
            return classify(pixels)

        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", serve_bytes, input_signature=[
            tf.TensorSpec([None], tf.string, name="image_bytes")])
        archive.add_endpoint("pixels", classify, input_signature=[
            tf.TensorSpec([None, height, width, channels], tf.uint8, name="pixels")])
        return archive

    def serving_assets(self):
        return {"labels.txt": self.task.labels_path}

    def warmup_requests(self):
        images = np.stack([e["image"] for e in self.task.sample("validation",
                                                                 WARMUP_IMAGES)])
        encoded = np.array(encode_png(images), dtype=object)
        return ([("serving_default", {"image_bytes": encoded[i:i + 1]})
                 for i in range(len(encoded))]
                + [("serving_default", {"image_bytes": encoded}),
                   ("pixels", {"pixels": images})])

    def saved_model_metrics(self, directory, reference):
        """The written SavedModel's `serving_default` on PNG bytes of the first
        256 test images against the Keras model's classes."""
        import tensorflow as tf

        n = min(256, self.task.num_examples("test"))
        images = self.task.splits.images["test"][:n]
        serve = tf.saved_model.load(directory).signatures["serving_default"]
        out = serve(image_bytes=tf.constant(encode_png(images)))
        probabilities = out["probabilities"].numpy()
        keras_classes = reference[:n].argmax(-1)
        return {"png_examples": n,
                "agreement_with_keras": float(np.mean(
                    out["class_id"].numpy() == keras_classes)),
                "max_abs_probability_diff": float(np.max(np.abs(
                    probabilities - reference[:n])))}

    # -------------------------------------------------------------- TFLite
    def tflite_archive(self):
        import keras
        import tensorflow as tf

        model = self.model

        def probabilities(pixels):
            return {OUTPUT_NAME: tf.nn.softmax(model(pixels, training=False), axis=-1)}

        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(SIGNATURE, probabilities, input_signature=[
            tf.TensorSpec([None, *self.shape], tf.float32, name=INPUT_NAME)])
        return archive

    def calibration_inputs(self, signature, max_examples, seed):
        return [{INPUT_NAME: e["image"][None].astype(np.float32)}
                for e in self.task.sample("train", max_examples, seed=seed)]

    def latency_inputs(self):
        return {INPUT_NAME: self.task.splits.images["test"][:1].astype(np.float32)}

    def latency_call(self, model):
        # TFLiteModel.__call__ quantizes the pixels for a uint8-input model,
        # as the edge app does.
        return (lambda **inputs: model(SIGNATURE, **inputs)), self.latency_inputs()

    def predict_tflite(self, runner, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """float32 probabilities of a TFLite variant (`TFLiteModel`)."""
        return np.concatenate([
            runner(SIGNATURE, **{INPUT_NAME: images[i:i + batch_size].astype(np.float32)}
                   )[OUTPUT_NAME] for i in range(0, len(images), batch_size)])

    def evaluate_tflite(self, runner, reference):
        images, labels = self.task.splits.images["test"], self.task.splits.labels["test"]
        probabilities = self.predict_tflite(runner, images)
        predictions = probabilities.argmax(-1)
        return {"accuracy": float(np.mean(predictions == labels)),
                "agreement_with_keras": float(np.mean(predictions == reference.argmax(-1))),
                "max_abs_probability_diff": float(np.max(np.abs(
                    probabilities - reference))),
                "examples": int(len(labels))}

    # ---------------------------------------------------------------- edge
    def bundle_files(self):
        return {"labels.txt": self.task.labels_path}

    def bundle_manifest(self):
        height, width, channels = self.shape
        return {"labels": "labels.txt", "image_height": height, "image_width": width,
                "channels": channels, "input_name": INPUT_NAME, "output_name": OUTPUT_NAME}
