"""Fixtures for tests/edge: a genuine tiny edge bundle built without the pipeline.

`tiny_bundle` is a bundle directory (model.tflite, spm.model, labels.txt, manifest.json)
made by tests/edge/make_tiny_bundle.py in a subprocess, so this pytest process never imports
tensorflow. `tiny_bundle_reference` holds the Keras model's probabilities on sample texts:
{"texts": [...], "probabilities": [[p_class0, ...], ...], "labels": [...]}.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.fixture(scope="session")
def _tiny_bundle_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_edge")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(HERE / "make_tiny_bundle.py"), str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"building the tiny bundle failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return out


@pytest.fixture(scope="session")
def tiny_bundle(_tiny_bundle_dir) -> Path:
    return _tiny_bundle_dir / "bundle"


@pytest.fixture(scope="session")
def tiny_bundle_reference(_tiny_bundle_dir) -> dict:
    return json.loads((_tiny_bundle_dir / "reference.json").read_text(encoding="utf-8"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slow test (creates a fresh venv, installs from PyPI)")
