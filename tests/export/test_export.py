"""SavedModel (raw text in), TFLite variants and the edge bundle of the debug run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import HOSTILE_TEXTS


def test_saved_model_cli_shows_a_string_serving_default(saved_model_dir):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    out = subprocess.run([cli, "show", "--dir", saved_model_dir, "--all"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    default = out.stdout.split("signature_def['serving_default']")[1].split("signature_def[")[0]
    assert "dtype: DT_STRING" in default and "name: serving_default_text:0" in default
    for output in ("label", "class_id", "probabilities"):
        assert f"outputs['{output}']" in default
    assert "signature_def['token_ids']" in out.stdout


def test_saved_model_classifies_raw_text_like_the_keras_model(debug_run, debug_splits,
                                                              saved_model_dir, debug_trained):
    from pipeline.tokenizer import InGraphTokenizer, read_model

    cfg, _ = debug_run
    tokenizer_path = os.path.join(cfg.run_dir, "tokenizer", "spm.model")
    model = debug_trained[1]
    texts = [str(t) for t in debug_splits.texts["test"][:64]] + HOSTILE_TEXTS
    loaded = tf.saved_model.load(saved_model_dir)
    out = loaded.signatures["serving_default"](text=tf.constant(texts))
    ids = InGraphTokenizer(read_model(tokenizer_path), cfg.model.max_sequence_length)(
        tf.constant(texts))
    logits = model({"token_ids": ids, "padding_mask": ids != 0}, training=False)
    expected = tf.nn.softmax(logits).numpy()
    probabilities = out["probabilities"].numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    labels = [b.decode() for b in out["label"].numpy()]
    assert labels == [debug_splits.label_names[i] for i in expected.argmax(-1)]
    assert out["class_id"].dtype == tf.int32


def test_tflite_variants_agree_with_keras_on_the_test_split(debug_run):
    _, metrics = debug_run
    tflite = metrics["tflite"]
    assert set(tflite) == {"float32", "dynamic_range"}
    assert tflite["float32"]["agreement_with_keras"] == 1.0
    assert tflite["float32"]["max_abs_probability_diff"] < 1e-4
    assert tflite["dynamic_range"]["agreement_with_keras"] >= 0.99
    assert tflite["dynamic_range"]["size_bytes"] < tflite["float32"]["size_bytes"]
    for r in tflite.values():
        assert r["examples"] == metrics["test"]["examples"]
        assert r["latency_batch1"]["threads_1"]["median_ms"] > 0


def test_metrics_json_holds_model_and_baseline(debug_run):
    cfg, metrics = debug_run
    with open(os.path.join(cfg.run_dir, "metrics.json")) as f:
        on_disk = json.load(f)
    for key in ("accuracy", "macro_f1", "per_class_f1"):
        assert key in on_disk["test"] and key in on_disk["baseline"]
    assert len(on_disk["test"]["per_class_f1"]) == 26
    assert on_disk["baseline"]["examples"] == on_disk["test"]["examples"]
    assert os.path.getsize(os.path.join(cfg.run_dir, "report", "confusion_matrix.png")) > 10_000


def test_bundle_manifest_hashes_match(edge_bundle):
    from export.bundle import sha256

    with open(os.path.join(edge_bundle, "manifest.json")) as f:
        manifest = json.load(f)
    assert set(manifest["files"]) == {"model.tflite", "spm.model", "labels.txt"}
    for name, digest in manifest["files"].items():
        assert sha256(os.path.join(edge_bundle, name)) == digest


def test_crash_mid_export_keeps_the_previous_version(debug_run, saved_model_dir):
    """A failure while writing leaves the existing version directory untouched."""
    from export.saved_model import export_serving

    before = sorted(os.listdir(saved_model_dir))

    class CrashingArchive:
        def write_out(self, directory, **kwargs):
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, "saved_model.pb"), "wb") as f:
                f.write(b"half")
            raise OSError("disk full (simulated)")

    class CrashingModule:   # an export module whose SavedModel write fails
        def serving_archive(self):
            return CrashingArchive()

    root = os.path.dirname(os.path.dirname(saved_model_dir))
    version = int(os.path.basename(saved_model_dir))
    with pytest.raises(OSError, match="simulated"):
        export_serving(CrashingModule(), root,
                       os.path.basename(os.path.dirname(saved_model_dir)), version=version,
                       log=lambda *_: None)
    assert sorted(os.listdir(saved_model_dir)) == before
    loaded = tf.saved_model.load(saved_model_dir)
    assert loaded.signatures["serving_default"](text=tf.constant(["a dog"]))["label"].shape == (1,)
    versions = [d for d in os.listdir(os.path.dirname(saved_model_dir)) if d.isdigit()]
    assert versions == [str(version)]
    # The failed export removed its own temp dir (only a kill leaves one behind).
    assert sorted(os.listdir(os.path.dirname(saved_model_dir))) == [str(version)]
