"""Training loop: TensorBoard, checkpoints, resume, strategies."""

import glob
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from tests.conftest import DEBUG_CONFIG, ROOT


def scalar_tags(directory):
    tags = set()
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    return tags


def test_debug_run_writes_tensorboard_and_checkpoints(debug_run):
    cfg, metrics = debug_run
    assert {"loss", "accuracy", "learning_rate", "examples_per_second"} <= scalar_tags(
        os.path.join(cfg.run_dir, "tensorboard", "train"))
    assert {"loss", "accuracy"} <= scalar_tags(
        os.path.join(cfg.run_dir, "tensorboard", "validation"))
    latest = tf.train.latest_checkpoint(os.path.join(cfg.run_dir, "checkpoints"))
    assert latest and latest.endswith(f"-{metrics['training']['steps']}")
    assert os.path.isfile(os.path.join(cfg.run_dir, "config.yaml"))
    assert metrics["training"]["steps"] == 6 * metrics["training"]["steps_per_epoch"]


@pytest.fixture
def small_config(tmp_path, tfds_dir):
    from pipeline.config import load_config

    def make(*overrides):
        return load_config(DEBUG_CONFIG, [f"runtime.artifacts_root={tmp_path}",
                                          f"data.tfds_data_dir={tfds_dir}",
                                          "train.epochs=1", *overrides])
    return make


def train_once(cfg):
    from pipeline.workflow import prepare, train

    lines = []
    result = train(prepare(cfg, log=lines.append))
    return result, "\n".join(lines)


@pytest.mark.slow
def test_rerun_resumes_from_the_latest_checkpoint(small_config):
    first, _ = train_once(small_config("train.max_steps=6", "train.checkpoint_every_steps=3"))
    assert first.steps == 6 and first.resumed_from_step == 0
    second, log = train_once(small_config("train.max_steps=10",
                                          "train.checkpoint_every_steps=3"))
    assert second.resumed_from_step == 6 and second.steps == 10
    assert "resumed from" in log
    done, _ = train_once(small_config("train.max_steps=10"))
    assert done.resumed_from_step == 10 and done.steps == 10


@pytest.mark.slow
def test_truncated_newest_checkpoint_falls_back_to_the_previous(small_config):
    cfg = small_config("train.max_steps=6", "train.checkpoint_every_steps=3")
    train_once(cfg)
    directory = os.path.join(cfg.run_dir, "checkpoints")
    newest = tf.train.latest_checkpoint(directory)
    for path in glob.glob(newest + ".data-*"):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 3)
    result, log = train_once(small_config("train.max_steps=8", "train.checkpoint_every_steps=3"))
    assert "is unreadable" in log and "ckpt-6" in log
    assert result.resumed_from_step == 3 and result.steps == 8


@pytest.mark.slow
def test_one_device_strategy(small_config):
    result, log = train_once(small_config("runtime.strategy=one_device", "train.max_steps=4"))
    assert result.steps == 4 and "one_device (1 replica(s))" in log


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tmp_path, tfds_dir):
    """MirroredStrategy with 2 replicas needs a fresh process (logical devices)."""
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", DEBUG_CONFIG,
         "--set", f"runtime.artifacts_root={tmp_path}", "--set", f"data.tfds_data_dir={tfds_dir}",
         "--set", "runtime.strategy=mirrored", "--set", "runtime.logical_cpu_devices=2",
         "--set", "train.max_steps=6", "--set", "train.epochs=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mirrored (2 replica(s))" in out.stdout
    assert "step 6/6" in out.stdout


def test_bad_config_key_gives_a_clear_cli_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipeline", "run", DEBUG_CONFIG,
                          "--set", "train.epoch=2"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert "unknown config key 'train.epoch'" in out.stderr
    assert "Traceback" not in out.stderr
