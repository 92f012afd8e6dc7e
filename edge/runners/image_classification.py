"""Runner of `"task": "image_classification"` bundles: image file -> label, probability, top-k.

Bundle: model.tflite (signature `serving_default`: `pixels` (1, H, W, C) -> `probabilities`
(1, num_classes)) and labels.txt (line i is class i). The input holds raw pixel values
0..255: float32 for the float32, float16 and dynamic-range variants (the model scales them
itself), uint8 (or int8) for the full-integer variant, whose values are quantized with the
input tensor's own parameters, q = clip(round(x / scale + zero_point)) (normally scale 1,
zero point 0: the pixels themselves). Quantized probabilities are dequantized.

Manifest keys read here: image_height (H), image_width (W), channels (C: 1 grey, 3 RGB),
and (classification.ClassifierRunner) labels, input_name, output_name.

An input is the path of a PNG or JPEG file. It is decoded with Pillow (no TensorFlow), turned
upright by its EXIF orientation, converted to Pillow mode "L" (C = 1) or "RGB" (C = 3; an
alpha channel is dropped) and resized to (W, H) with bilinear filtering only when its size
differs. A path that is missing, a directory or not a readable PNG/JPEG raises InputError
naming the file and the reason.
"""
from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import (
    INSTALL_HINT,
    InputError,
    Manifest,
    RuntimeMissingError,
    _require,
    register_runner,
    valid_text,
)
from .classification import ClassifierRunner, quantization_parameters

__all__ = ["IMAGE_FORMATS", "MAX_PIXELS", "ImageClassificationRunner"]

IMAGE_FORMATS = ("PNG", "JPEG")   # the decoders Pillow may use (no other format plugin)
MODES = {1: "L", 3: "RGB"}        # channels -> Pillow mode
# Larger images are refused before their pixels are decoded (64 Mi pixels, e.g. 8192 x
# 8192: a 48-megapixel photo fits; below Pillow's own decompression-bomb warning).
MAX_PIXELS = 1 << 26


def _import_pillow():
    try:
        from PIL import Image, ImageOps  # type: ignore
    except ImportError as e:
        raise RuntimeMissingError(f"Pillow is not importable ({e}); image_classification "
                                  f"bundles need it; install with: {INSTALL_HINT}") from None
    return Image, ImageOps


class ImageClassificationRunner(ClassifierRunner):
    """run(image_path) -> {"text": image_path, "label", "probability",
    "top_k": [[label, p], ...], "latency_ms"} (latency: decoding + inference).

    Library extras: classify(paths, top_k), classify_one(path, top_k),
    classify_pixels(array, top_k) for pixels already in memory, pixels(path) (the model's
    input array of a file), predict(array), labels, num_classes, image_height, image_width,
    channels.

    Example:
        runner = load_bundle("artifacts/image_classification/edge/bundle")
        runner.run("shoe.png")["label"]
        runner.classify_pixels(np.zeros((28, 28), np.uint8), top_k=3)
    """

    def __init__(self, bundle_dir: str | os.PathLike, manifest: Manifest,
                 num_threads: int | None = None, options: Mapping[str, Any] | None = None):
        super().__init__(bundle_dir, manifest, num_threads, options)
        self._pil, self._pil_ops = _import_pillow()
        self._pil.preinit()   # the decoders load now, not during the first image's latency
        self.image_height = manifest.get_int("image_height", minimum=1)
        self.image_width = manifest.get_int("image_width", minimum=1)
        self.channels = manifest.get_int("channels", minimum=1)
        _require(self.channels in MODES, "manifest.json: channels must be 1 (grey) or 3 "
                 f"(RGB), got {self.channels}")
        self.mode = MODES[self.channels]
        dtype, (scale, _) = self.input_dtype, quantization_parameters(self.input_detail)
        _require(dtype == np.float32 or dtype == np.uint8 or (dtype == np.int8 and scale > 0),
                 "model.tflite: input must take float32 pixel values or uint8/int8 quantized "
                 f"ones, it takes {dtype.name}"
                 + (" without quantization parameters" if dtype == np.int8 else ""))
        self.input_shape = (1, self.image_height, self.image_width, self.channels)
        self._require_input_shape(self.input_shape, "(batch, height, width, channels)",
                                  ["image_height", "image_width", "channels"])
        self._check_classes(np.zeros(self.input_shape, np.float32))

    # -- inputs
    def check_input(self, value: Any) -> str:
        """The path of an existing regular file (str or os.PathLike), as a str."""
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError("image_classification takes an image file path, got "
                            f"{type(value).__name__}")
        path = os.fsdecode(value)
        shown = valid_text(path)
        if not path.strip():
            raise InputError("empty image path (give the path of a PNG or JPEG file)")
        try:
            mode = os.stat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise InputError(f"image file not found: {shown}") from None
        except OSError as e:
            raise InputError(f"cannot read image file {shown}: {e.strerror or e}") from None
        except ValueError:   # a NUL character
            raise InputError(f"invalid image path {shown!r}: it contains a NUL character") \
                from None
        if stat.S_ISDIR(mode):
            raise InputError(f"{shown} is a directory, not an image file")
        if not stat.S_ISREG(mode):
            raise InputError(f"{shown} is not a regular file (a PNG or JPEG file is needed)")
        return path

    def pixels(self, path: str | os.PathLike) -> np.ndarray:
        """float32 (1, H, W, C) pixel values 0..255 of an image file: decoded, upright,
        converted and resized as the model takes them. InputError when the file is not a
        readable PNG or JPEG image."""
        return self._decode(self.check_input(path))

    def _decode(self, path: str) -> np.ndarray:
        """`pixels` of a path `check_input` accepted."""
        shown = valid_text(path)
        with warnings.catch_warnings():
            warnings.simplefilter("error", self._pil.DecompressionBombWarning)
            try:
                image = self._pil.open(path, formats=IMAGE_FORMATS)
            except self._pil.UnidentifiedImageError:
                raise InputError(f"{shown} is not a PNG or JPEG image (Pillow cannot "
                                 "identify it as one)") from None
            except (self._pil.DecompressionBombError, self._pil.DecompressionBombWarning):
                raise InputError(f"{shown} has more than the {MAX_PIXELS:,} pixels this app "
                                 "decodes; make it smaller first") from None
            except OSError as e:
                raise InputError(f"cannot read image file {shown}: {e.strerror or e}") \
                    from None
        with image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise InputError(f"{shown} has more than the {MAX_PIXELS:,} pixels this "
                                 f"app decodes ({width}x{height}); make it smaller first")
            try:
                return self._model_input(self._pil_ops.exif_transpose(image))
            except Exception as e:   # any decoder error of this file is an error of the input
                reason = str(e) or type(e).__name__
                raise InputError(f"{shown} is a damaged or incomplete {image.format} image "
                                 f"({reason})") from None

    def _model_input(self, image) -> np.ndarray:
        """A Pillow image as float32 (1, H, W, C): converted to the model's mode, resized
        (bilinear) to (W, H) when its size differs."""
        image = image.convert(self.mode)
        size = (self.image_width, self.image_height)
        if image.size != size:
            image = image.resize(size, self._pil.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.float32).reshape(self.input_shape)

    # -- the runner interface
    def infer(self, path: str, top_k: int | None = None) -> dict[str, Any]:
        return self.ranked(self.predict(self._decode(path))[0], top_k)

    def classify_pixels(self, pixels: np.ndarray, top_k: int | None = None
                        ) -> dict[str, Any]:
        """The result for pixels already in memory: a uint8 array (H, W) grey, or (H, W, C)
        with C = 1 (grey), 3 (RGB) or 4 (RGBA), any size; converted and resized as a
        decoded file is. Returns {"label", "probability", "top_k": [[label, p], ...],
        "latency_ms"} (latency: conversion + inference, counted in stats())."""
        array = np.asarray(pixels)
        if array.dtype != np.uint8:
            raise TypeError(f"pixels must be a uint8 array, got dtype {array.dtype}")
        if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))) \
                or 0 in array.shape:
            raise InputError("pixels must have shape (height, width) or (height, width, "
                             f"channels) with 1, 3 or 4 channels, got {array.shape}")
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]

        def infer_pixels() -> dict[str, Any]:
            image = self._pil.fromarray(np.ascontiguousarray(array))
            return self.ranked(self.predict(self._model_input(image))[0], top_k)

        return self.timed(infer_pixels)


register_runner("image_classification", ImageClassificationRunner)
