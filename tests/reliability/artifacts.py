"""Checks that every artifact a run has written under its final name is complete.

A killed run may leave temporary files (names with .tmp, _temp, .incomplete, a
leading dot); those are not artifacts. Everything else must open and read whole.
"""

from __future__ import annotations

import glob
import json
import os
import re

import yaml

from tests.conftest import ROOT

TEMP_NAME = re.compile(r"(^\.|\.tmp|_temp$|_temp/|incomplete|\.old-\d+$)")


def is_temp(path: str) -> bool:
    return any(TEMP_NAME.search(part) for part in path.split(os.sep))


def temp_leftovers(directory: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            if TEMP_NAME.search(name):
                found.append(os.path.relpath(os.path.join(root, name), directory))
    return sorted(found)


def check_checkpoints(directory: str) -> list[str]:
    """Every checkpoint the state file lists reads whole; returns their paths."""
    import tensorflow as tf

    if not os.path.exists(os.path.join(directory, "checkpoint")):
        return []
    state = tf.train.get_checkpoint_state(directory)
    assert state is not None, f"{directory}/checkpoint does not parse"
    paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    for path in paths:
        if not os.path.isabs(path):
            path = os.path.join(directory, path)
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    return paths


def check_run_dir(run_dir: str) -> dict:
    """Asserts that every final-named artifact under run_dir is complete."""
    found = {}
    if not os.path.isdir(run_dir):
        return found
    for name in ("config.yaml",):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                assert isinstance(yaml.safe_load(f), dict), path
            found[name] = True
    for path in glob.glob(os.path.join(run_dir, "*.json")) + \
            glob.glob(os.path.join(run_dir, "*", "*.json")):
        if not is_temp(os.path.relpath(path, run_dir)):
            with open(path) as f:
                json.load(f)
            found[os.path.relpath(path, run_dir)] = True
    tokenizer = os.path.join(run_dir, "tokenizer")
    if os.path.exists(os.path.join(tokenizer, "spm.model")):
        import sentencepiece as spm

        assert spm.SentencePieceProcessor(
            model_file=os.path.join(tokenizer, "spm.model")).get_piece_size() > 4
        found["tokenizer/spm.model"] = True
    if os.path.exists(os.path.join(tokenizer, "labels.txt")):
        with open(os.path.join(tokenizer, "labels.txt"), encoding="utf-8") as f:
            assert len([line for line in f if line.strip()]) >= 2
    checkpoints = os.path.join(run_dir, "checkpoints")
    found["checkpoints"] = check_checkpoints(checkpoints)
    found["best"] = check_checkpoints(os.path.join(checkpoints, "best"))
    for png in glob.glob(os.path.join(run_dir, "report", "*.png")):
        with open(png, "rb") as f:
            data = f.read()
        assert data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82"), png
    found["serving"] = check_serving_root(os.path.join(run_dir, "serving"))
    for tflite in glob.glob(os.path.join(run_dir, "edge", "*.tflite")):
        from ai_edge_litert.interpreter import Interpreter

        Interpreter(model_path=tflite).get_signature_list()
    bundle = os.path.join(run_dir, "edge", "bundle")
    if os.path.exists(bundle):
        check_bundle(bundle)
        found["bundle"] = True
    return found


def check_serving_root(serving_dir: str) -> list[str]:
    """Every numbered version directory holds a complete SavedModel."""
    versions = []
    for model_root in glob.glob(os.path.join(serving_dir, "*")):
        for entry in os.listdir(model_root):
            if entry.isdigit():
                assert version_complete(os.path.join(model_root, entry)), \
                    f"incomplete version directory {model_root}/{entry}"
                versions.append(os.path.join(model_root, entry))
    return versions


def version_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "saved_model.pb")) and \
        os.path.isfile(os.path.join(path, "variables", "variables.index")) and \
        bool(glob.glob(os.path.join(path, "variables", "variables.data-*")))


def check_bundle(bundle: str) -> None:
    """The edge app's own verification: manifest valid, every sha256 matches."""
    import importlib.util
    import sys

    name = "edge_app_reliability"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "edge", "app.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    app = sys.modules[name]
    app.verify_files(bundle, app.read_manifest(bundle))
