"""Shared fixtures: one real debug run of the whole pipeline per test session.

The debug experiment (configs/text_classification_debug.yaml) trains on real
WordNet data from the Debian package wordnet-base, in a temporary artifacts
root, and exports the SavedModel, the TFLite variants and the edge bundle.
Tests read those artifacts instead of re-running the pipeline. The
translation debug experiment (`translation_run`) is run the same way, once,
for the tests that read its artifacts.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEBUG_CONFIG = os.path.join(ROOT, "configs", "text_classification_debug.yaml")
TRANSLATION_DEBUG_CONFIG = os.path.join(ROOT, "configs", "translation_debug.yaml")
LM_DEBUG_CONFIG = os.path.join(ROOT, "configs", "language_model_debug.yaml")
IMAGE_DEBUG_CONFIG = os.path.join(ROOT, "configs", "image_classification_debug.yaml")

# Texts every path must classify: empty, whitespace, 100 kB, non-ASCII.
HOSTILE_TEXTS = ["", "   \t ", "word " * 20_000, "Ärger über Öl — 日本語のテキスト 🙂",
                 "a small domesticated carnivorous mammal"]


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """One TFDS data dir for the session (wordnet_topics is prepared once)."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


@pytest.fixture(scope="session")
def debug_overrides(tmp_path_factory, tfds_dir):
    root = str(tmp_path_factory.mktemp("artifacts"))
    return [f"runtime.artifacts_root={root}", f"data.tfds_data_dir={tfds_dir}"]


@pytest.fixture(scope="session")
def debug_config(debug_overrides):
    from pipeline.config import load_config

    return load_config(DEBUG_CONFIG, debug_overrides)


@pytest.fixture(scope="session")
def debug_run(debug_config):
    """Runs the whole debug experiment once; returns (config, metrics)."""
    from pipeline.workflow import run

    metrics = run(debug_config)
    return debug_config, metrics


@pytest.fixture(scope="session")
def debug_trained(debug_run):
    """(task, model): the debug run's prepared task and its best weights."""
    from pipeline.workflow import load_trained, prepare

    cfg, _ = debug_run
    task = prepare(cfg, log=lambda *_: None)
    return task, load_trained(task)


@pytest.fixture(scope="session")
def debug_splits(debug_run):
    from pipeline.sources import load_splits

    cfg, _ = debug_run
    return load_splits(cfg.data, cfg.runtime.artifacts_root, log=lambda *_: None)


@pytest.fixture(scope="session")
def saved_model_dir(debug_run):
    return debug_run[1]["artifacts"]["saved_model"]


@pytest.fixture(scope="session")
def edge_bundle(debug_run):
    return debug_run[1]["artifacts"]["edge_bundle"]


@pytest.fixture(scope="session")
def edge_bundle_reference(debug_run, saved_model_dir, edge_bundle):
    """Texts with the Keras-equivalent probabilities of the bundled TFLite model.

    The reference is the SavedModel's `token_ids` signature (the Keras model's
    graph) on the same token ids the app computes.
    """
    import numpy as np
    import tensorflow as tf

    from pipeline.tokenizer import InGraphTokenizer, read_model

    cfg, _ = debug_run
    with open(os.path.join(edge_bundle, "labels.txt")) as f:
        labels = [line.strip() for line in f if line.strip()]
    from pipeline.sources import load_splits

    splits = load_splits(cfg.data, cfg.runtime.artifacts_root, log=lambda *_: None)
    texts = [str(t) for t in splits.texts["test"][:48]]
    tokenizer = InGraphTokenizer(read_model(os.path.join(edge_bundle, "spm.model")),
                                 cfg.model.max_sequence_length)
    loaded = tf.saved_model.load(saved_model_dir)
    ids = tokenizer(tf.constant(texts))
    probabilities = loaded.signatures["token_ids"](token_ids=ids)["probabilities"]
    return {"texts": texts, "probabilities": np.asarray(probabilities).tolist(),
            "labels": labels}


def run_debug_experiment(config, root, tfds_dir):
    """`config` trained and exported under the artifacts root `root`: (config,
    metrics)."""
    from pipeline.config import load_config
    from pipeline.workflow import run

    cfg = load_config(config, [f"runtime.artifacts_root={root}",
                               f"data.tfds_data_dir={tfds_dir}"])
    return cfg, run(cfg)


def trained(debug_run):
    """(task, model): a debug run's prepared task and its best weights."""
    from pipeline.workflow import load_trained, prepare

    cfg, _ = debug_run
    task = prepare(cfg, log=lambda *_: None)
    return task, load_trained(task)


@pytest.fixture(scope="session")
def translation_run(tmp_path_factory, tfds_dir):
    """The translation debug experiment (configs/translation_debug.yaml), trained and
    exported once per session in a temporary artifacts root: (config, metrics)."""
    return run_debug_experiment(TRANSLATION_DEBUG_CONFIG,
                                str(tmp_path_factory.mktemp("translation_artifacts")),
                                tfds_dir)


@pytest.fixture(scope="session")
def translation_trained(translation_run):
    """(task, model): the translation debug run's prepared task and its best weights."""
    return trained(translation_run)


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory, tfds_dir):
    """The language-model debug experiment (configs/language_model_debug.yaml), trained
    and exported once per session in a temporary artifacts root: (config, metrics)."""
    return run_debug_experiment(LM_DEBUG_CONFIG, str(tmp_path_factory.mktemp("lm_artifacts")),
                                tfds_dir)


@pytest.fixture(scope="session")
def lm_trained(lm_run):
    """(task, model): the language-model debug run's prepared task and its best weights."""
    return trained(lm_run)


@pytest.fixture(scope="session")
def image_run(tmp_path_factory, tfds_dir):
    """The image-classification debug experiment (configs/image_classification_debug.yaml),
    trained and exported once per session in a temporary artifacts root: (config,
    metrics)."""
    return run_debug_experiment(IMAGE_DEBUG_CONFIG,
                                str(tmp_path_factory.mktemp("image_artifacts")), tfds_dir)


@pytest.fixture(scope="session")
def image_trained(image_run):
    """(task, model): the image debug run's prepared task and its best weights."""
    return trained(image_run)


def read_json(path):
    with open(path) as f:
        return json.load(f)
