"""Training loop: one `strategy.run` loop for every tf.distribute strategy.

`model.fit` is not used: under MultiWorkerMirroredStrategy it fails in Keras
3.15 + TF 2.21 (keras-team/keras#20585). This loop owns the step counter,
the data position, checkpoints (tf.train.CheckpointManager), TensorBoard and
the progress output, and resumes from the latest readable checkpoint.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from pipeline import summaries
from pipeline.config import ExperimentConfig, TrainConfig
from pipeline.distribute import get_strategy, worker_info
from pipeline.input import make_eval_dataset, make_train_dataset
from pipeline.progress import format_duration
from pipeline.sources import TextSplits
from pipeline.tokenizer import InGraphTokenizer, read_model, vocabulary_size


@dataclass
class TrainResult:
    model: keras.Model
    steps: int
    steps_per_epoch: int
    train_seconds: float         # wall time of this process's loop, evaluation included
    examples_per_second: float   # training throughput of the steps alone
    best_validation_accuracy: float
    resumed_from_step: int
    history: list[dict]          # one row per validation: step, epoch, metrics


def build_model(cfg: ExperimentConfig, vocab_size: int, num_classes: int) -> keras.Model:
    """Builds the task model named by model.name, with weights created."""
    from models import TextClassifier

    m = cfg.model
    model = TextClassifier(
        vocabulary_size=vocab_size, num_classes=num_classes,
        hidden_dim=m.hidden_dim, intermediate_dim=m.intermediate_dim,
        num_heads=m.num_heads, num_layers=m.num_layers, dropout=m.dropout,
        max_sequence_length=m.max_sequence_length, norm_first=m.norm_first,
        pooling=m.pooling, name=cfg.model.name)
    dummy = {"token_ids": tf.zeros((1, m.max_sequence_length), tf.int32),
             "padding_mask": tf.ones((1, m.max_sequence_length), tf.bool)}
    model(dummy)
    return model


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then cosine decay to 0 (or constant)."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int,
                 decay: str = "cosine"):
        self.peak, self.warmup_steps = peak, warmup_steps
        self.total_steps, self.decay = total_steps, decay

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.cast(max(self.warmup_steps, 1), tf.float32)
        total = tf.cast(max(self.total_steps, 1), tf.float32)
        warm = self.peak * (step + 1.0) / warmup
        if self.decay == "cosine":
            progress = tf.clip_by_value((step - warmup) / tf.maximum(total - warmup, 1.0),
                                        0.0, 1.0)
            after = self.peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
        else:
            after = tf.constant(self.peak, tf.float32)
        return tf.where(step < warmup, warm, after)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "decay": self.decay}


class LayerwiseAdamW(keras.optimizers.AdamW):
    """AdamW with a fixed learning-rate multiplier per variable.

    `multiplier(path)` gives the factor of each trainable variable (by its
    Keras path) when the optimizer is built: layer-wise learning-rate decay
    and a lower encoder rate for fine-tuning. Weight decay keeps the base rate.
    """

    def __init__(self, multiplier, **kwargs):
        super().__init__(**kwargs)
        self._multiplier = multiplier
        self._multipliers: list[float] = []

    def build(self, variables):
        super().build(variables)
        self._multipliers = [float(self._multiplier(v.path)) for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        factor = self._multipliers[self._get_variable_index(variable)]
        if factor != 1.0:
            learning_rate = learning_rate * factor
        return super().update_step(gradient, variable, learning_rate)


def learning_rate_multiplier(t: TrainConfig, num_layers: int):
    """path -> factor: block i of n gets encoder_learning_rate_multiplier *
    layer_decay**(n - i), the embedding layer_decay**(n + 1), the rest 1."""
    def multiplier(path: str) -> float:
        block = re.search(r"/transformer_layer_(\d+)/", path)
        if block:
            return t.encoder_learning_rate_multiplier * \
                t.layer_decay ** (num_layers - int(block.group(1)))
        if "/embedding/" in path:
            return t.encoder_learning_rate_multiplier * t.layer_decay ** (num_layers + 1)
        if "/final_layer_norm/" in path:
            return t.encoder_learning_rate_multiplier
        return 1.0
    return multiplier


def make_optimizer(t: TrainConfig, total_steps: int,
                   num_layers: int = 0) -> keras.optimizers.Optimizer:
    schedule = WarmupSchedule(t.learning_rate, int(t.warmup_fraction * total_steps),
                              total_steps, t.decay)
    kwargs = dict(learning_rate=schedule, weight_decay=t.weight_decay,
                  global_clipnorm=t.clip_norm or None)
    if t.encoder_learning_rate_multiplier != 1.0 or t.layer_decay != 1.0:
        return LayerwiseAdamW(learning_rate_multiplier(t, num_layers), **kwargs)
    return keras.optimizers.AdamW(**kwargs)


def make_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                    strategy: tf.distribute.Strategy, compute_loss,
                    global_batch_size: int, jit_compile: bool = False):
    """The distributed training step shared by every task and by the benchmark.

    `compute_loss(inputs, labels)` runs the model (training=True) on one
    replica's batch and returns `(per_example_loss, correct)`: the loss of each
    example, shape (batch,), and the number of correct predictions (a float
    scalar, for the accuracy printed during training).

    Returns `train_step(iterator, stop_requested)`, a tf.function that takes
    the next batch from a distributed iterator, applies one optimizer step on
    every replica and returns the loss, the correct count and the stop flag,
    each summed over replicas. With `jit_compile`, the forward and backward
    pass is compiled with XLA (the optimizer update is not).
    """
    def forward_backward(inputs, labels):
        with tf.GradientTape() as tape:
            per_example, correct = compute_loss(inputs, labels)
            loss = tf.nn.compute_average_loss(
                per_example, global_batch_size=global_batch_size)
        grads = tape.gradient(loss, model.trainable_variables)
        return loss, correct, grads

    if jit_compile:
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def replica_step(inputs, labels, stop_requested):
        loss, correct, grads = forward_backward(inputs, labels)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, correct, tf.identity(stop_requested)

    @tf.function
    def train_step(iterator, stop_requested):
        inputs, labels = next(iterator)
        loss, correct, stop = strategy.run(replica_step,
                                           args=(inputs, labels, stop_requested))
        # The stop flag is reduced like the loss, so every worker agrees to stop
        # after the same step, whichever worker received SIGTERM.
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, stop, axis=None))

    return train_step


class ModelVariables(tf.Module):
    """Every variable of a Keras model, keyed by its path, for tf.train.Checkpoint.

    Keras 3 keeps sub-layers held in Python lists (e.g. `encoder_layers`) in
    its own trackers, which tf.train.Checkpoint does not traverse; checkpointing
    the variables by path saves all of them, dropout RNG state included.
    """

    def __init__(self, model: keras.Model):
        super().__init__(name=None)
        variables: dict[str, keras.Variable] = {}
        for v in model.variables:
            # Keras numbers dropout RNG states globally ("seed_generator_7"), so
            # the number depends on what the process built before: drop it and
            # number them in the model's own (deterministic) variable order.
            base = re.sub(r"seed_generator_\d+", "seed_generator", v.path)
            key, n = base, 1
            while key in variables:
                key, n = f"{base}_{n}", n + 1
            variables[key] = v
        self.by_path = variables


class EncoderVariables(tf.Module):
    """The encoder's variables of a TextClassifier (no head, no dropout state),
    keyed by path: what pre-training hands to fine-tuning."""

    def __init__(self, classifier: keras.Model):
        super().__init__(name=None)
        head = {id(v) for v in classifier.classifier_head.variables}
        self.by_path = {key: v for key, v in ModelVariables(classifier).by_path.items()
                        if id(v) not in head and "seed_generator" not in key}


def init_from_pretrained(model: keras.Model, init_checkpoint: str, log=print) -> str:
    """Loads pre-trained encoder weights into `model`; returns the path read."""
    path = tf.train.latest_checkpoint(init_checkpoint) if os.path.isdir(
        init_checkpoint) else init_checkpoint
    if not path or not tf.io.gfile.exists(f"{path}.index"):
        raise FileNotFoundError(
            f"config key 'model.init_checkpoint' = {init_checkpoint!r}: no encoder "
            "checkpoint there (expected <dir>/encoder/encoder-N written by pre-training)")
    try:
        tf.train.Checkpoint(encoder=EncoderVariables(model)).read(path) \
            .assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as err:
        raise ValueError(
            f"config key 'model.init_checkpoint' = {init_checkpoint!r}: its weights do "
            f"not fit this model (model.* must match pre-training): "
            f"{str(err).splitlines()[0][:300]}") from None
    log(f"[train] encoder initialised from pre-trained {path}")
    return path


def restore_latest(checkpoint: tf.train.Checkpoint,
                   manager: tf.train.CheckpointManager, log=print) -> str | None:
    """Restores the newest readable checkpoint; skips truncated ones."""
    for path in reversed(manager.checkpoints):
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
            return path
        except Exception as err:  # noqa: BLE001 - any unreadable file: try older
            log(f"[train] checkpoint {path} is unreadable "
                f"({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
                "trying the previous one")
    return None


def predict_logits(model: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """Runs the model over (inputs, labels) batches; returns (logits, labels)."""
    @tf.function
    def forward(inputs):
        return model(inputs, training=False)

    logits, labels = [], []
    for inputs, y in dataset:
        logits.append(forward(inputs).numpy())
        labels.append(y.numpy())
    return np.concatenate(logits), np.concatenate(labels)


class Preempted(Exception):
    """SIGTERM arrived; every worker saved a checkpoint at `step` and stops."""

    def __init__(self, step: int, path: str):
        super().__init__(f"SIGTERM received: checkpoint {path} saved at step {step}; "
                         "rerun the same command to resume from it")
        self.step, self.path = step, path


class _Saver:
    """CheckpointManager the tf.distribute way: the chief writes `directory`,
    other workers write a private temporary directory that is then removed."""

    def __init__(self, checkpoint, directory: str, is_chief: bool, worker: int,
                 **kwargs):
        self.is_chief = is_chief
        self.directory = directory if is_chief else os.path.join(
            os.path.dirname(directory.rstrip("/")), ".worker_tmp",
            f"worker_{worker}", os.path.basename(directory.rstrip("/")))
        self.manager = tf.train.CheckpointManager(checkpoint, self.directory, **kwargs)
        # Every worker reads what the chief wrote.
        self.reader = self.manager if is_chief else tf.train.CheckpointManager(
            checkpoint, directory, **kwargs)

    def save(self, step: int) -> str:
        path = self.manager.save(checkpoint_number=step)
        if not self.is_chief:
            shutil.rmtree(self.directory, ignore_errors=True)
            return os.path.join(self.reader.directory, os.path.basename(path))
        return path


class _Watchdog:
    """Ends the process when a step hangs (e.g. a peer worker was killed)."""

    def __init__(self, timeout_seconds: int, log):
        self.timeout, self.log = timeout_seconds, log
        self.deadline: float | None = None
        if timeout_seconds:
            threading.Thread(target=self._watch, daemon=True,
                             name="step-watchdog").start()

    def arm(self, first: bool) -> None:
        if self.timeout:
            self.deadline = time.time() + self.timeout * (5 if first else 1)

    def disarm(self) -> None:
        self.deadline = None

    def _watch(self) -> None:
        while True:
            time.sleep(1.0)
            if self.deadline is not None and time.time() > self.deadline:
                self.log(f"[train] error: no training step finished within "
                         f"{self.timeout}s (runtime.step_timeout_seconds); a peer "
                         "worker has probably died. Exiting; rerun the same command "
                         "to resume from the latest checkpoint.")
                sys.stdout.flush()
                os._exit(75)


def weights_digest(model: keras.Model) -> str:
    """sha256 of all weights, to compare replicas across processes."""
    digest = hashlib.sha256()
    for v in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(v)).tobytes())
    return digest.hexdigest()[:16]


def train(cfg: ExperimentConfig, splits: TextSplits, tokenizer_path: str,
          log=print, strategy: tf.distribute.Strategy | None = None) -> TrainResult:
    """Trains (or resumes) the task model; returns it with its best weights.

    Raises Preempted after saving a checkpoint when SIGTERM arrives.
    """
    t, run_dir = cfg.train, cfg.run_dir
    strategy = strategy or get_strategy(cfg.runtime)
    keras.config.set_dtype_policy(cfg.runtime.precision)
    keras.utils.set_random_seed(t.seed)
    is_chief, worker, num_workers = worker_info(strategy)
    replicas = strategy.num_replicas_in_sync
    if t.global_batch_size % replicas:
        raise ValueError(
            f"config key 'train.global_batch_size' = {t.global_batch_size}: must be "
            f"divisible by the number of replicas ({replicas})")
    tokenizer = InGraphTokenizer(read_model(tokenizer_path), cfg.model.max_sequence_length)
    vocab_size = vocabulary_size(tokenizer_path)
    num_classes = splits.num_classes
    steps_per_epoch = max(1, len(splits.texts["train"]) // t.global_batch_size)
    total_steps = t.max_steps or t.epochs * steps_per_epoch

    with strategy.scope():
        model = build_model(cfg, vocab_size, num_classes)
        optimizer = make_optimizer(t, total_steps, cfg.model.num_layers)
        optimizer.build(model.trainable_variables)
        best_val = tf.Variable(-1.0, dtype=tf.float32, trainable=False)
        bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False)
    checkpoint = tf.train.Checkpoint(model=ModelVariables(model), optimizer=optimizer,
                                     best_validation_accuracy=best_val,
                                     epochs_without_improvement=bad_epochs)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    saver = _Saver(checkpoint, ckpt_dir, is_chief, worker, max_to_keep=t.keep_checkpoints)
    best_saver = _Saver(tf.train.Checkpoint(model=ModelVariables(model)),
                        os.path.join(ckpt_dir, "best"), is_chief, worker,
                        max_to_keep=1, checkpoint_name="best")
    restored = restore_latest(checkpoint, saver.reader, log)
    start_step = int(optimizer.iterations.numpy())
    if restored:
        log(f"[train] resumed from {restored} at step {start_step:,}/{total_steps:,}")
    elif cfg.model.init_checkpoint:
        init_from_pretrained(model, cfg.model.init_checkpoint, log)
    log(f"[train] strategy {cfg.runtime.strategy} ({replicas} replica(s)"
        f"{f' on {num_workers} workers, this is worker {worker}' if num_workers > 1 else ''}), "
        f"{model.count_params():,} parameters, precision {cfg.runtime.precision}, "
        f"global batch {t.global_batch_size}, {steps_per_epoch:,} steps/epoch, "
        f"{total_steps:,} steps")

    per_replica_batch = t.global_batch_size // replicas
    train_source = splits.dataset("train")

    def dataset_fn(input_context):
        return make_train_dataset(train_source, tokenizer, cfg, per_replica_batch,
                                  skip_batches=start_step, input_context=input_context)

    train_data = strategy.distribute_datasets_from_function(dataset_fn)
    val_data = make_eval_dataset(splits.dataset("validation"), tokenizer, cfg,
                                 t.global_batch_size)
    loss_fn = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=t.label_smoothing, reduction=None)

    def classification_loss(inputs, labels):
        logits = model(inputs, training=True)
        per_example = loss_fn(tf.one_hot(labels, num_classes), logits)
        correct = tf.reduce_sum(tf.cast(
            tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32))
        return per_example, correct

    train_step = make_train_step(model, optimizer, strategy, classification_loss,
                                 t.global_batch_size, jit_compile=cfg.runtime.jit_compile)

    sigterm = threading.Event()
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGTERM, lambda *_: sigterm.set())
    watchdog = _Watchdog(cfg.runtime.step_timeout_seconds, log)

    tb_dir = os.path.join(run_dir, "tensorboard")
    if is_chief:
        train_writer = tf.summary.create_file_writer(os.path.join(tb_dir, "train"))
        val_writer = tf.summary.create_file_writer(os.path.join(tb_dir, "validation"))
    else:
        train_writer = val_writer = tf.summary.create_noop_writer()
    summaries.write_hparams(val_writer, cfg.to_dict(), trial_id=cfg.name)
    summaries.write_model_graph(train_writer, model, cfg.model.max_sequence_length)
    history: list[dict] = []
    step = start_step
    iterator = iter(train_data)
    window_loss = window_correct = 0.0
    window_steps, window_start = 0, time.time()
    run_start, steps_run, step_seconds = time.time(), 0, 0.0
    stop = preempted = False
    while step < total_steps and not stop:
        step_start = time.time()
        watchdog.arm(first=steps_run == 0)
        loss, correct, stop_flag = train_step(
            iterator, tf.constant(1.0 if sigterm.is_set() else 0.0))
        loss, correct = float(loss), float(correct)  # waits for the step
        watchdog.disarm()
        preempted = float(stop_flag) > 0
        step_seconds += time.time() - step_start
        step += 1
        steps_run += 1
        window_loss += loss
        window_correct += correct
        window_steps += 1
        if step % t.log_every_steps == 0 or step == total_steps:
            elapsed = time.time() - window_start
            rate = window_steps * t.global_batch_size / max(elapsed, 1e-9)
            lr = float(optimizer.learning_rate)
            avg_loss = window_loss / window_steps
            acc = window_correct / (window_steps * t.global_batch_size)
            eta = (total_steps - step) * t.global_batch_size / max(rate, 1e-9)
            epoch = (step - 1) // steps_per_epoch + 1
            log(f"[train] step {step:,}/{total_steps:,} (epoch {epoch}/"
                f"{math.ceil(total_steps / steps_per_epoch)})  loss {avg_loss:.4f}  "
                f"acc {acc:.3f}  lr {lr:.2e}  {rate:,.0f} ex/s  "
                f"ETA {format_duration(eta)}")
            with train_writer.as_default(step=step):
                tf.summary.scalar("loss", avg_loss)
                tf.summary.scalar("accuracy", acc)
                tf.summary.scalar("learning_rate", lr)
                tf.summary.scalar("examples_per_second", rate)
            window_loss = window_correct = 0.0
            window_steps, window_start = 0, time.time()
        end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
        if end_of_epoch:
            val_start = time.time()
            logits, labels = predict_logits(model, val_data)
            val_loss = float(np.mean(keras.ops.convert_to_numpy(
                keras.losses.sparse_categorical_crossentropy(
                    labels, logits, from_logits=True))))
            val_acc = float(np.mean(np.argmax(logits, -1) == labels))
            epoch = math.ceil(step / steps_per_epoch)
            improved = val_acc > float(best_val.numpy())
            if improved:
                best_val.assign(val_acc)
                bad_epochs.assign(0)
                best_saver.save(step)
            else:
                bad_epochs.assign_add(1)
            history.append({"step": step, "epoch": epoch, "validation_loss": val_loss,
                            "validation_accuracy": val_acc})
            with val_writer.as_default(step=step):
                tf.summary.scalar("loss", val_loss)
                tf.summary.scalar("accuracy", val_acc)
            summaries.write_sample_predictions(val_writer, step, splits.texts["validation"],
                                               labels, logits, splits.label_names)
            log(f"[eval] epoch {epoch} step {step:,}: validation loss {val_loss:.4f} "
                f"accuracy {val_acc:.4f}{'  (best)' if improved else ''} "
                f"({time.time() - val_start:.1f}s)")
            if t.early_stopping_patience and int(bad_epochs.numpy()) >= \
                    t.early_stopping_patience:
                log(f"[train] early stop: no improvement for {int(bad_epochs.numpy())} "
                    "epoch(s)")
                stop = True
        if preempted:
            path = saver.save(step)
            train_writer.flush()
            val_writer.flush()
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
            raise Preempted(step, path)
        if step % t.checkpoint_every_steps == 0 or end_of_epoch or stop:
            saver.save(step)
        if window_steps == 0:  # exclude logging/eval time from the rate window
            window_start = time.time()
    train_writer.flush()
    val_writer.flush()
    train_seconds = time.time() - run_start
    if previous_handler is not None:
        signal.signal(signal.SIGTERM, previous_handler)
    log(f"[train] finished at step {step:,}; final weights digest {weights_digest(model)}")
    best_path = best_saver.reader.latest_checkpoint
    if is_chief and best_path:
        tf.train.Checkpoint(model=ModelVariables(model)).restore(
            best_path).assert_existing_objects_matched()
        log(f"[train] restored the best weights (validation accuracy "
            f"{float(best_val.numpy()):.4f}) from {best_path}")
    return TrainResult(
        model=model, steps=step, steps_per_epoch=steps_per_epoch,
        train_seconds=train_seconds,
        examples_per_second=steps_run * t.global_batch_size / max(step_seconds, 1e-9),
        best_validation_accuracy=float(best_val.numpy()),
        resumed_from_step=start_step, history=history)
