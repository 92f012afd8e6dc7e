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


def _tiny_classifier(seed):
    import keras

    from models import TextClassifier

    keras.utils.set_random_seed(seed)
    model = TextClassifier(vocabulary_size=40, num_classes=3, hidden_dim=8,
                           intermediate_dim=16, num_heads=2, num_layers=2, dropout=0.0,
                           max_sequence_length=8)
    model({"token_ids": tf.ones((1, 8), tf.int32), "padding_mask": tf.ones((1, 8), tf.bool)})
    return model


@pytest.mark.parametrize("layer_decay", [1.0, 0.5])
def test_compiled_optimizer_update_matches_the_uncompiled_one(layer_decay):
    """runtime.jit_compile_optimizer changes how AdamW's update runs (XLA), not
    what it computes: warm-up, clipping, weight decay, per-layer rates and the
    embedding's sparse gradient give the same weights after a few steps."""
    import keras
    import numpy as np

    from pipeline.config import TrainConfig
    from pipeline.trainer import (
        layerwise_multipliers,
        make_optimizer,
        make_train_step,
    )

    rng = np.random.default_rng(0)
    # No token twice in a batch: for a repeated token, Keras' sparse path
    # squares each occurrence's gradient into Adam's second moment, while
    # the compiled update (dense gradients) squares their sum, as textbook
    # Adam does.
    ids = np.stack([rng.permutation(np.arange(1, 40))[:32].reshape(4, 8)
                    for _ in range(5)]).astype("int32")
    labels = rng.integers(0, 3, (5, 4)).astype("int32")
    t = TrainConfig(learning_rate=0.05, warmup_fraction=0.4, weight_decay=0.1,
                    clip_norm=0.5)
    strategy = tf.distribute.get_strategy()
    weights = {}
    for compiled in (False, True):
        model = _tiny_classifier(seed=1)
        multipliers = layerwise_multipliers(model.backbone.layer_groups(), layer_decay)
        optimizer = make_optimizer(t, total_steps=5, multipliers=multipliers)
        optimizer.build(model.trainable_variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                             reduction=None)

        def compute_loss(inputs, targets, model=model, loss_fn=loss_fn):
            return loss_fn(targets, model(inputs, training=True)), {}

        step = make_train_step(model, optimizer, strategy, compute_loss, 4,
                               jit_compile_optimizer=compiled)
        data = tf.data.Dataset.from_tensor_slices(
            ({"token_ids": ids, "padding_mask": ids > 0}, labels))
        iterator = iter(data)
        for _ in range(5):
            step(iterator, tf.constant(0.0))
        assert int(optimizer.iterations.numpy()) == 5
        weights[compiled] = [v.numpy() for v in model.trainable_variables]
    start = [v.numpy() for v in _tiny_classifier(seed=1).trainable_variables]
    moved = [np.abs(a - w).max() > 1e-3 for a, w in zip(weights[False], start)]
    # Training moved the weights: all but the attention keys' biases, whose
    # gradient is zero up to rounding (softmax ignores a shift shared by every
    # key), so they drift by noise alone and are only checked to stay put.
    assert np.mean(moved) > 0.8, moved
    for a, b, w, m in zip(weights[False], weights[True], start, moved):
        if m:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        else:
            assert np.abs(b - w).max() < 1e-3


def test_optimizer_is_compiled_only_under_the_default_strategy():
    from pipeline.trainer import compiles_optimizer, make_train_step

    default = tf.distribute.get_strategy()
    assert compiles_optimizer(default)
    assert not compiles_optimizer(default, setting=False)
    one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
    assert not compiles_optimizer(one_device)
    with one_device.scope():
        assert not compiles_optimizer(tf.distribute.get_strategy())
    with pytest.raises(ValueError, match="default strategy"):
        make_train_step(None, None, one_device, None, 4, jit_compile_optimizer=True)
