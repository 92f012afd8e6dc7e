"""The edge app on image_classification bundles (issue 18): image files decoded with Pillow,
fed to a real converted model, ranked like text classification.

The bundles come from tiny Keras models built here (Rescaling(1/255) + Flatten + Dense +
softmax), exported with `keras.export.ExportArchive` (signature `serving_default`:
`pixels` float32 (1, 28, 28, C) -> {"probabilities"}), converted with the TFLite converter
and written with `export.bundle.write_bundle`. Every probability the runner reports must
equal what the TFLite interpreter returns for the same pixels.
"""
from __future__ import annotations

import importlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.edge.app_helpers import app, run_app, run_blocked

# The modules as the app imports them (edge/ on sys.path: app_helpers loaded the app).
classification = importlib.import_module("runners.classification")
image_runner = importlib.import_module("runners.image_classification")

LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
          "Sneaker", "Bag", "Ankle boot"]
SIZE = 28
ALL = len(LABELS)      # top_k that reports every class


# --------------------------------------------------------------------------- fast checks


def test_top_k_is_one_option_shared_by_the_classifiers():
    parser = app.build_parser()
    assert parser.parse_args(["--bundle", "b", "--top-k", "3", "x.png"]).top_k == 3
    groups = {g.title: [a.dest for a in g._group_actions] for g in parser._action_groups}
    assert groups["image_classification, text_classification options"] == ["top_k"]
    assert sum(1 for a in parser._actions if "--top-k" in a.option_strings) == 1
    assert app.runner_class("image_classification") is app.ImageClassificationRunner
    assert issubclass(app.ClassificationRunner, classification.ClassifierRunner)
    assert issubclass(app.ImageClassificationRunner, classification.ClassifierRunner)


def test_quantize_and_dequantize_honour_the_tensor_parameters():
    pixels = np.array([0.0, 1.0, 2.0, 3.0, 255.0], np.float32)
    # q = clip(round(x / scale + zero_point)), halves away from zero as in TFLite
    q = classification.quantize(pixels, {"dtype": np.uint8, "quantization": (2.0, 3)})
    assert q.dtype == np.uint8 and q.tolist() == [3, 4, 4, 5, 131]
    q = classification.quantize(pixels, {"dtype": np.int8, "quantization": (1.0, -128)})
    assert q.dtype == np.int8 and q.tolist() == [-128, -127, -126, -125, 127]
    q = classification.quantize(pixels * 4, {"dtype": np.uint8, "quantization": (1.0, 0)})
    assert q.tolist() == [0, 4, 8, 12, 255]                      # clipped, not wrapped
    same = classification.quantize(pixels, {"dtype": np.float32, "quantization": (0.0, 0)})
    assert same.dtype == np.float32 and same.tolist() == pixels.tolist()
    ids = classification.quantize(np.array([[5, 7]]), {"dtype": np.int32,
                                                      "quantization": (0.0, 0)})
    assert ids.dtype == np.int32 and ids.tolist() == [[5, 7]]   # token ids: a plain cast
    real = classification.dequantize(np.array([[-128, 0, 127]], np.int8),
                                     {"dtype": np.int8, "quantization": (1 / 256, -128)})
    assert real.dtype == np.float32 and real.tolist() == [[0.0, 0.5, 255 / 256]]


def test_rank_puts_non_finite_values_last():
    ranked = classification.rank(np.array([0.2, np.nan, 0.5, 0.3], np.float32),
                                 ["a", "b", "c", "d"], 4)
    assert ranked["label"] == "c" and ranked["probability"] == pytest.approx(0.5)
    assert [label for label, _ in ranked["top_k"]] == ["c", "d", "a", "b"]
    assert ranked["top_k"][-1][1] is None


# --------------------------------------------------------------------------- bundles


def _keras_model(channels: int, seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, channels), batch_size=1, name="pixels")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(len(LABELS))(x)
    return keras.Model(inputs, keras.layers.Softmax()(x))


def _saved_model(model, channels: int, directory: Path) -> Path:
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)

    @tf.function(input_signature=[tf.TensorSpec((1, SIZE, SIZE, channels), tf.float32,
                                                name="pixels")])
    def serve(pixels):
        return {"probabilities": model(pixels)}

    archive.add_endpoint("serving_default", serve)
    archive.write_out(str(directory), verbose=False)
    return directory


def _convert(saved_model: Path, channels: int, path: Path, full_int8: bool = False,
             calibration_max: int = 255, output_type=None) -> Path:
    """float32, or full int8 with uint8 input (calibrated on random images of pixels
    0..calibration_max) and `output_type` output (default float32)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if full_int8:
        rng = np.random.default_rng(1)

        def representative():
            for _ in range(8):
                image = rng.integers(0, calibration_max + 1, (1, SIZE, SIZE, channels))
                image[0, 0, 0, 0], image[0, 0, 1, 0] = 0, calibration_max   # the full range
                yield {"pixels": image.astype(np.float32)}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = output_type or tf.float32
    path.write_bytes(converter.convert())
    return path


def _write_bundle(directory: Path, tflite: Path, channels: int, variant: str) -> Path:
    from export.bundle import write_bundle

    labels = directory.parent / f"{directory.name}_labels.txt"
    labels.write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    manifest = {"labels": "labels.txt", "image_height": SIZE, "image_width": SIZE,
                "channels": channels, "input_name": "pixels", "output_name": "probabilities"}
    write_bundle(str(directory), str(tflite), "image_classification",
                 files={"labels.txt": str(labels)}, manifest=manifest, variant=variant,
                 log=lambda *_: None)
    return directory


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """name -> bundle directory:
    float32      grey (channels 1), float32 input and output
    int8         grey, full int8: uint8 input (scale 1, zero point 0), float32 output
    int8_scaled  grey, full int8 calibrated on pixels 0..127: uint8 input of scale ~0.5
                 (pixels above 127 clip), int8 output
    rgb          channels 3, float32
    """
    import tensorflow as tf

    root = tmp_path_factory.mktemp("image_bundles")
    grey = _saved_model(_keras_model(1, seed=3), 1, root / "grey_saved_model")
    rgb = _saved_model(_keras_model(3, seed=4), 3, root / "rgb_saved_model")
    return {
        "float32": _write_bundle(root / "float32", _convert(grey, 1, root / "f32.tflite"), 1,
                                 "float32"),
        "int8": _write_bundle(root / "int8", _convert(grey, 1, root / "int8.tflite",
                                                      full_int8=True), 1, "int8"),
        "int8_scaled": _write_bundle(
            root / "int8_scaled", _convert(grey, 1, root / "int8s.tflite", full_int8=True,
                                           calibration_max=127, output_type=tf.int8),
            1, "int8"),
        "rgb": _write_bundle(root / "rgb", _convert(rgb, 3, root / "rgb.tflite"), 3,
                             "float32"),
    }


@pytest.fixture(scope="module")
def runners(bundles):
    return {name: app.load_bundle(path) for name, path in bundles.items()}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """grey: a 28x28 grey PNG; rgb: a 56x40 RGB PNG (to resize and convert); jpeg: the RGB
    picture as JPEG; rgba: a 30x30 RGBA PNG."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = {"grey": root / "grey.png", "rgb": root / "rgb_56x40.png",
             "jpeg": root / "photo.jpg", "rgba": root / "rgba.png"}
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(paths["grey"])
    rgb = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(paths["rgb"])
    Image.fromarray(rgb).save(paths["jpeg"], quality=90)
    Image.fromarray(rng.integers(0, 256, (30, 30, 4), dtype=np.uint8)).save(paths["rgba"])
    return paths


def expected_pixels(path: Path, channels: int) -> np.ndarray:
    """The documented preparation, done here with Pillow directly: mode L or RGB, bilinear
    resize to 28x28 when the size differs; float32 (1, 28, 28, C) of 0..255."""
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != (SIZE, SIZE):
            image = image.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        return np.asarray(image, np.float32).reshape(1, SIZE, SIZE, channels)


def model_input(bundle: Path, pixels: np.ndarray) -> np.ndarray:
    """Real pixel values as the model's input tensor takes them: for uint8,
    q = clip(round(x / scale + zero_point)) with the tensor's own parameters."""
    from ai_edge_litert.interpreter import Interpreter

    source = Interpreter(model_path=str(bundle / "model.tflite")) \
        .get_signature_runner("serving_default").get_input_details()["pixels"]
    if source["dtype"] != np.uint8:
        return pixels
    scale, zero_point = source["quantization"]
    return np.clip(np.floor(pixels / scale + zero_point + 0.5), 0, 255).astype(np.uint8)


def interpreter_probabilities(bundle: Path, pixels: np.ndarray) -> np.ndarray:
    """The TFLite interpreter's own output for real pixel values (quantized as
    `model_input` says), the output dequantized when it is int8."""
    from ai_edge_litert.interpreter import Interpreter

    signature = Interpreter(model_path=str(bundle / "model.tflite")) \
        .get_signature_runner("serving_default")
    out = signature(pixels=model_input(bundle, pixels))["probabilities"]
    result = signature.get_output_details()["probabilities"]
    if result["dtype"] == np.int8:
        scale, zero_point = result["quantization"]
        out = (out.astype(np.float32) - zero_point) * np.float32(scale)
    return out[0]


def as_probabilities(result: dict) -> list[float]:
    """Each label's probability from a result ranked over all classes."""
    found = dict(result["top_k"])
    assert len(found) == ALL
    return [found[label] for label in LABELS]


# --------------------------------------------------------------------------- the runner


@pytest.mark.slow
@pytest.mark.parametrize("name", ["float32", "int8", "int8_scaled", "rgb"])
@pytest.mark.parametrize("image", ["grey", "rgb", "jpeg", "rgba"])
def test_probabilities_equal_the_interpreter(bundles, runners, images, name, image,
                                            monkeypatch):
    runner, channels = runners[name], runners[name].channels
    pixels = expected_pixels(images[image], channels)
    np.testing.assert_array_equal(runner.pixels(images[image]), pixels)
    want = interpreter_probabilities(bundles[name], pixels)
    fed = []
    signature = runner._runner
    monkeypatch.setattr(runner, "_runner", lambda **inputs: fed.append(inputs) or
                        signature(**inputs))
    result = runner.classify_one(images[image], top_k=ALL)
    (inputs,) = fed                  # the tensor the model got: the same pixels, quantized
    assert list(inputs) == ["pixels"] and inputs["pixels"].dtype == runner.input_dtype
    np.testing.assert_array_equal(inputs["pixels"], model_input(bundles[name], pixels))
    assert list(result) == ["text", "label", "probability", "top_k", "latency_ms"]
    assert result["text"] == str(images[image]) and result["latency_ms"] > 0
    assert as_probabilities(result) == [float(p) for p in want]          # exact
    assert result["label"] == LABELS[int(np.argmax(want))]
    assert result["probability"] == float(want.max())
    ranked = [p for _, p in result["top_k"]]
    assert ranked == sorted(ranked, reverse=True)
    assert runner.run(images[image])["top_k"] == result["top_k"][:1]      # --top-k 1


@pytest.mark.slow
def test_bundle_tensors_are_what_the_contract_says(runners):
    float_input = runners["float32"].input_detail
    assert float_input["dtype"] == np.float32 and list(float_input["shape"]) == [1, 28, 28, 1]
    int8 = runners["int8"].input_detail
    assert int8["dtype"] == np.uint8 and tuple(int8["quantization"]) == (1.0, 0)
    scaled = runners["int8_scaled"]
    scale, zero_point = scaled.input_detail["quantization"]
    assert scaled.input_detail["dtype"] == np.uint8 and 0.4 < scale < 0.6
    assert scaled.output_detail["dtype"] == np.int8
    assert list(runners["rgb"].input_detail["shape"]) == [1, 28, 28, 3]
    assert [r.num_classes for r in runners.values()] == [10] * 4


@pytest.mark.slow
def test_grey_png_pixels_are_the_file_and_exif_orientation_is_applied(runners, images,
                                                                      tmp_path):
    runner = runners["float32"]
    with Image.open(images["grey"]) as image:
        grey = np.asarray(image)
    np.testing.assert_array_equal(runner.pixels(images["grey"])[0, :, :, 0], grey)
    exif = Image.Exif()
    exif[0x0112] = 3                       # Orientation: rotate 180
    rotated = tmp_path / "rotated.png"
    Image.fromarray(grey).save(rotated, exif=exif)
    np.testing.assert_array_equal(runner.pixels(rotated)[0, :, :, 0], grey[::-1, ::-1])
    # an RGB file for the RGB model: the bytes unchanged when no resize is needed
    rgb = np.random.default_rng(5).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb28.png")
    np.testing.assert_array_equal(runners["rgb"].pixels(tmp_path / "rgb28.png")[0], rgb)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["float32", "int8", "rgb"])
def test_classify_pixels_equals_the_file(runners, images, name):
    runner = runners[name]
    for image in ("grey", "rgb", "rgba"):
        with Image.open(images[image]) as file:
            array = np.asarray(file)
        from_file = runner.classify_one(images[image], top_k=ALL)
        from_array = runner.classify_pixels(array, top_k=ALL)
        assert list(from_array) == ["label", "probability", "top_k", "latency_ms"]
        assert from_array["top_k"] == from_file["top_k"]
        if array.ndim == 2:
            assert runner.classify_pixels(array[:, :, None], top_k=ALL)["top_k"] == \
                from_file["top_k"]
    count = runner.stats()["count"]
    runner.classify_pixels(np.zeros((SIZE, SIZE), np.uint8))
    assert runner.stats()["count"] == count + 1
    with pytest.raises(TypeError, match="uint8"):
        runner.classify_pixels(np.zeros((SIZE, SIZE), np.float32))
    for shape in [(SIZE,), (SIZE, SIZE, 2), (0, SIZE), (1, SIZE, SIZE, 1)]:
        with pytest.raises(app.InputError, match="shape"):
            runner.classify_pixels(np.zeros(shape, np.uint8))


# --------------------------------------------------------------------------- bad inputs


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header announces width x height grey pixels (the data is not there)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, images) -> dict[str, tuple[Path, str]]:
    """name -> (path, the message the app must give for it)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    text = root / "notes.txt"
    text.write_text("not an image\n", encoding="utf-8")
    truncated = root / "truncated.png"
    data = images["rgb"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    truncated_jpeg = root / "truncated.jpg"
    data = images["jpeg"].read_bytes()
    truncated_jpeg.write_bytes(data[: len(data) // 2])
    too_large = f"has more than the {image_runner.MAX_PIXELS:,} pixels"
    huge = png_header(root / "huge.png", 9000, 9000)          # 81 Mpixels: refused by the app
    bomb = png_header(root / "bomb.png", 20000, 20000)        # 400 Mpixels: refused by Pillow
    fake = root / "fake.png"                    # a PNG name, GIF bytes: not PNG or JPEG
    Image.new("L", (4, 4)).save(fake, format="GIF")
    empty = root / "empty.png"
    empty.write_bytes(b"")
    folder = root / "folder.png"
    folder.mkdir()
    missing = root / "missing.png"
    return {
        "missing": (missing, f"image file not found: {missing}"),
        "directory": (folder, f"{folder} is a directory, not an image file"),
        "text": (text, f"{text} is not a PNG or JPEG image"),
        "empty": (empty, f"{empty} is not a PNG or JPEG image"),
        "gif": (fake, f"{fake} is not a PNG or JPEG image"),
        "truncated": (truncated, f"{truncated} is a damaged or incomplete PNG image "
                                 "(image file is truncated"),
        "truncated_jpeg": (truncated_jpeg, f"{truncated_jpeg} is a damaged or incomplete "
                                           "JPEG image ("),
        "huge": (huge, f"{huge} {too_large} this app decodes (9000x9000)"),
        "bomb": (bomb, f"{bomb} {too_large} this app decodes; make it smaller first"),
    }


@pytest.mark.slow
def test_bad_inputs_raise_input_error_in_the_library(runners, bad_inputs, images):
    runner = runners["float32"]
    for path, message in bad_inputs.values():
        with pytest.raises(app.InputError) as info:
            runner.run(path)
        assert str(info.value).startswith(message), (str(info.value), message)
    with pytest.raises(app.InputError, match="empty image path"):
        runner.run("")
    with pytest.raises(app.InputError, match="NUL"):
        runner.run("a\0b.png")
    with pytest.raises(TypeError, match="image file path"):
        runner.run(np.zeros((SIZE, SIZE), np.uint8))
    assert runner.run(Path(images["grey"]))["text"] == str(images["grey"])   # os.PathLike


@pytest.mark.slow
def test_bad_inputs_through_the_app_are_reported_and_skipped(bundles, bad_inputs, images,
                                                            runners, tmp_path):
    bundle = bundles["int8"]
    bad = list(bad_inputs.values())
    # arguments: each bad path is one precise error line; the good ones still run; exit 1
    proc = run_app("--bundle", bundle, images["grey"], *[p for p, _ in bad], images["rgb"])
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(bad)
    for line, (_, message) in zip(errors, bad):
        assert line.startswith(f"error: {message}") and line.endswith("(skipped)"), line
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    for line, image in zip(lines, ("grey", "rgb")):
        want = runners["int8"].run(images[image])
        label, probability, _, shown = line.split("\t")
        assert (label, shown) == (want["label"], app.preview(str(images[image])))
        assert probability == f"{want['probability']:.4f}"
    assert "latency_ms: count=2" in proc.stderr

    # JSONL: the bad lines named by number, the others run; exit 1
    src = tmp_path / "in.jsonl"
    rows = [json.dumps({"text": str(images["grey"])}), json.dumps(str(bad_inputs["text"][0])),
            "{not json", json.dumps(str(images["jpeg"])),
            json.dumps({"text": str(bad_inputs["truncated"][0])})]
    src.write_text("\n".join(rows) + "\n", encoding="utf-8")
    proc = run_app("--bundle", bundle, "--jsonl", src, "--top-k", 3)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in results] == [str(images["grey"]), str(images["jpeg"])]
    assert all(len(r["top_k"]) == 3 for r in results)
    assert results[1]["top_k"] == runners["int8"].classify_one(images["jpeg"], 3)["top_k"]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {src}: line 2: {bad_inputs['text'][1]} (Pillow cannot identify it as one) "
        "(skipped)",
        f"error: {src}: line 3: not valid JSON (Expecting property name enclosed in double "
        "quotes at column 2) (skipped)",
        errors[2],
        f"error: 1 malformed line(s) and 2 line(s) whose input could not be run in {src} "
        "were skipped"]
    assert errors[2].startswith(f"error: {src}: line 5: {bad_inputs['truncated'][1]}")

    # stdin lines; all good: exit 0
    proc = run_app("--bundle", bundle, "--json",
                   input=f"{images['grey']}\n{images['rgba']}\n")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["text"] for line in proc.stdout.splitlines()] == \
        [str(images["grey"]), str(images["rgba"])]


@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    ({"channels": 2}, "manifest.json: channels must be 1 (grey) or 3 (RGB), got 2"),
    ({"image_height": 32}, "takes input [1, 28, 28, 1] but manifest.json says "
                           "image_height=32"),
    ({"channels": 3}, "takes input [1, 28, 28, 1] but manifest.json says channels=3"),
    ({"image_width": None}, "manifest.json: image_width must be an integer >= 1, got None"),
], ids=["channels_2", "height", "channels_3", "no_width"])
def test_bundle_keys_that_do_not_fit_the_model_are_refused(bundles, images, tmp_path,
                                                           change, message):
    import shutil

    bundle = shutil.copytree(bundles["float32"], tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.update(change)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    proc = run_app("--bundle", bundle, images["grey"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr


@pytest.mark.slow
def test_runs_without_tensorflow_and_needs_pillow(bundles, images):
    proc = run_blocked(["tensorflow", "keras", "tf_keras"],
                       ["--bundle", bundles["int8"], "--top-k", "2", images["rgb"]])
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY_MODULES=\n" in proc.stderr
    assert len(proc.stdout.splitlines()) == 2
    proc = run_blocked(["PIL"], ["--bundle", bundles["int8"], images["rgb"]])
    assert proc.returncode == 3 and "Traceback" not in proc.stderr.split("HEAVY")[0]
    assert "Pillow is not importable" in proc.stderr
    assert "pip install -r edge/requirements.txt" in proc.stderr


@pytest.mark.slow
def test_clean_venv_classifies_a_png(bundles, runners, images, edge_venv):
    """The venv of edge/requirements.txt alone (no TensorFlow; Pillow from that file) runs
    the app on a PNG that must be converted and resized, with the probabilities of the
    runner here."""
    proc = run_app("--bundle", bundles["float32"], "--json", "--top-k", ALL, images["rgb"],
                   images["grey"], python=edge_venv, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    want = runners["float32"].classify([images["rgb"], images["grey"]], top_k=ALL)
    assert [g["top_k"] for g in got] == [w["top_k"] for w in want]
    assert [g["text"] for g in got] == [str(images["rgb"]), str(images["grey"])]
