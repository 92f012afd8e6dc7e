"""Fixtures of the serving tests: a served copy of the debug export and a local server.

The local server runs as a real child process (python -m serving.local_server) on
free 127.0.0.1 ports, is configured by the shipped serving/models.config (only
base_path rewritten to a temporary copy of the model) and is always stopped at
the end of the session.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import ROOT

SERVING_DIR = os.path.join(ROOT, "serving")


def copy_version(src: str, model_root: str, version: int) -> str:
    """Copies a SavedModel to model_root/<version>/ atomically (temp dir, rename)."""
    final = os.path.join(model_root, str(version))
    tmp = os.path.join(model_root, f".tmp-{version}")
    shutil.copytree(src, tmp)
    os.rename(tmp, final)
    return final


@pytest.fixture(scope="session")
def model_name(saved_model_dir):
    return os.path.basename(os.path.dirname(saved_model_dir))


@pytest.fixture(scope="session")
def served_root(saved_model_dir, model_name, tmp_path_factory):
    """A model base path with versions 1 and 2, both the debug run's SavedModel."""
    root = str(tmp_path_factory.mktemp("served") / model_name)
    os.makedirs(root)
    copy_version(saved_model_dir, root, 1)
    copy_version(saved_model_dir, root, 2)
    return root


@pytest.fixture(scope="session")
def served_config(served_root, model_name, tmp_path_factory):
    """serving/models.config with base_path pointing at served_root."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    with open(os.path.join(SERVING_DIR, "models.config"), encoding="utf-8") as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    model = config.model_config_list.config[0]
    model.name, model.base_path = model_name, served_root
    path = str(tmp_path_factory.mktemp("config") / "models.config")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text_format.MessageToString(config))
    return path


@pytest.fixture(scope="session")
def local_server(served_config, model_name):
    from serving.process import LocalServerProcess

    server = LocalServerProcess(
        ["--model_config_file", served_config,
         "--monitoring_config_file", os.path.join(SERVING_DIR, "monitoring.config"),
         "--enable_batching",
         "--batching_parameters_file", os.path.join(SERVING_DIR, "batching_parameters.txt"),
         "--max_request_bytes", "1000000", "--max_batch_size", "1000"],
        model=model_name, start_timeout=300)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def reference(debug_splits, saved_model_dir):
    """Texts with the SavedModel's labels and probabilities (loaded in this process)."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (SentencepieceOp for the SavedModel)

    from tests.conftest import HOSTILE_TEXTS

    texts = [str(t) for t in debug_splits.texts["test"][:48]] + HOSTILE_TEXTS
    loaded = tf.saved_model.load(saved_model_dir)
    out = loaded.signatures["serving_default"](text=tf.constant(texts))
    return {"texts": texts,
            "probabilities": out["probabilities"].numpy(),
            "labels": [b.decode() for b in out["label"].numpy()]}


@pytest.fixture(scope="session")
def keras_labels(debug_run, debug_splits, reference, debug_trained):
    """The trained Keras model's labels for reference["texts"]."""
    import numpy as np
    import tensorflow as tf

    from pipeline.tokenizer import InGraphTokenizer, read_model

    cfg, _ = debug_run
    tokenizer_path = os.path.join(cfg.run_dir, "tokenizer", "spm.model")
    model = debug_trained[1]
    ids = InGraphTokenizer(read_model(tokenizer_path), cfg.model.max_sequence_length)(
        tf.constant(reference["texts"]))
    logits = model({"token_ids": ids, "padding_mask": ids != 0}, training=False)
    return [debug_splits.label_names[i] for i in np.argmax(logits, -1)]
