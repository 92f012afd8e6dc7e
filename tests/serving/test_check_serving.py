"""The op check: our export passes; a planted tf.py_function fails it and the export."""

import os
import subprocess
import sys

import pytest
import tensorflow as tf

from export.check_serving import check_saved_model
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def py_function_saved_model(tmp_path_factory):
    """A SavedModel whose serving signature calls tf.py_function (EagerPyFunc)."""

    class Planted(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, text):
            length = tf.py_function(lambda t: tf.strings.length(t), [text], tf.int32)
            return {"length": length}

    module = Planted()
    path = str(tmp_path_factory.mktemp("planted") / "1")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


def test_our_export_passes_and_lists_its_ops(saved_model_dir):
    result = check_saved_model(saved_model_dir)
    assert result.ok, result.error()
    assert {"SentencepieceOp", "SentencepieceTokenizeOp"} <= result.text
    assert {"MatMul", "Softmax", "StatefulPartitionedCall"} <= result.core
    assert "SentencepieceOp" in result.summary()


def test_a_py_function_fails_naming_the_op(py_function_saved_model):
    result = check_saved_model(py_function_saved_model)
    assert not result.ok
    assert set(result.offending) == {"EagerPyFunc"}
    assert "EagerPyFunc" in result.error() and "tf.py_function" in result.error()


@pytest.mark.slow
def test_command_line_exit_codes(saved_model_dir, py_function_saved_model, tmp_path):
    def run(path):
        return subprocess.run([sys.executable, "-m", "export.check_serving", path],
                              capture_output=True, text=True, timeout=600, cwd=ROOT,
                              check=False)

    ok = run(saved_model_dir)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "SentencepieceTokenizeOp" in ok.stdout and "tensorflow-text" in ok.stdout
    bad = run(py_function_saved_model)
    assert bad.returncode == 1
    assert "EagerPyFunc" in bad.stderr and "Traceback" not in bad.stderr
    missing = run(str(tmp_path))
    assert missing.returncode == 2 and "no saved_model.pb" in missing.stderr


def test_export_serving_refuses_a_model_with_the_planted_op(py_function_saved_model,
                                                           tmp_path):
    """export_serving runs the check on its temp dir and keeps no version dir."""
    import shutil

    from export import check_serving, saved_model

    class PlantedArchive:
        def write_out(self, path, verbose=False):
            shutil.copytree(py_function_saved_model, path)

    class PlantedModule:   # an export module whose graph holds EagerPyFunc
        def serving_archive(self):
            return PlantedArchive()

        def serving_assets(self):
            return {}

        def warmup_requests(self):
            return []

    root = tmp_path / "serving"
    with pytest.raises(check_serving.ServingCheckError, match="EagerPyFunc"):
        saved_model.export_serving(PlantedModule(), str(root), "m", log=lambda *_: None)
    assert os.listdir(root / "m") == []   # neither 1/ nor the temp dir
