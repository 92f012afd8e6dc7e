"""The trainer: one `strategy.run` loop for every task and tf.distribute strategy.

`model.fit` is not used: under MultiWorkerMirroredStrategy it fails in Keras
3.15 + TF 2.21 (keras-team/keras#20585). This loop owns the step counter,
the data position, checkpoints (tf.train.CheckpointManager), the best
checkpoint by the task's validation metric, TensorBoard, the progress output,
the SIGTERM save and the step watchdog, and resumes from the latest readable
checkpoint. What differs between tasks (data, model, loss, metrics) comes from
the task (`pipeline/tasks/base.py`).
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

from pipeline.config import TrainConfig
from pipeline.distribute import get_strategy, worker_info
from pipeline.progress import format_duration
from pipeline.tokenizer import set_global_seed


@dataclass
class TrainResult:
    model: keras.Model
    steps: int
    steps_per_epoch: int
    train_seconds: float         # wall time of this process's loop, evaluation included
    examples_per_second: float   # training throughput of the steps alone
    best_metric: str             # the task's metric that picked the best checkpoint
    best_validation: float | None  # its best value (None: no validation ran)
    resumed_from_step: int
    history: list[dict]          # one row per validation: step, epoch, metrics
    last_logs: dict              # the last logged window: loss and the task's logs


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

    `multipliers` maps a trainable variable's Keras path to its factor (1 for
    a path not in it), read when the optimizer is built: layer-wise
    learning-rate decay and a lower backbone rate for fine-tuning. Weight
    decay keeps the base rate.
    """

    def __init__(self, multipliers: dict[str, float], **kwargs):
        super().__init__(**kwargs)
        self._multiplier_of_path = dict(multipliers)
        self._multipliers: list[float] = []

    def build(self, variables):
        super().build(variables)
        self._multipliers = [float(self._multiplier_of_path.get(v.path, 1.0))
                             for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        factor = self._multipliers[self._get_variable_index(variable)]
        if factor != 1.0:
            learning_rate = learning_rate * factor
        return super().update_step(gradient, variable, learning_rate)


def layerwise_multipliers(layer_groups, layer_decay: float = 1.0,
                          multiplier: float = 1.0) -> dict[str, float]:
    """Variable path -> factor for a backbone's `layer_groups()` (input first):
    group g of G gets `multiplier * layer_decay ** (G - 1 - g)`."""
    groups = list(layer_groups)
    return {v.path: multiplier * layer_decay ** (len(groups) - 1 - g)
            for g, variables in enumerate(groups) for v in variables}


def make_optimizer(t: TrainConfig, total_steps: int,
                   multipliers: dict[str, float] | None = None
                   ) -> keras.optimizers.Optimizer:
    """AdamW with warm-up + decay, clipping and, when `multipliers` has a
    factor other than 1, a learning-rate factor per variable."""
    schedule = WarmupSchedule(t.learning_rate, int(t.warmup_fraction * total_steps),
                              total_steps, t.decay)
    kwargs = dict(learning_rate=schedule, weight_decay=t.weight_decay,
                  global_clipnorm=t.clip_norm or None)
    if multipliers and any(f != 1.0 for f in multipliers.values()):
        return LayerwiseAdamW(multipliers, **kwargs)
    return keras.optimizers.AdamW(**kwargs)


def compiles_optimizer(strategy: tf.distribute.Strategy, setting: bool = True) -> bool:
    """Whether the optimizer update is compiled with XLA: when `setting`
    (runtime.jit_compile_optimizer) and the strategy is the default one. Under
    a distribution strategy the update all-reduces the gradients across
    replicas (a merge call), which XLA cannot hold."""
    return bool(setting) and not tf.distribute.has_strategy() and \
        strategy is tf.distribute.get_strategy()


def make_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                    strategy: tf.distribute.Strategy, compute_loss,
                    global_batch_size: int, jit_compile: bool = False,
                    jit_compile_optimizer: bool = False):
    """The distributed training step shared by every task and by the benchmark.

    `compute_loss(inputs, targets)` runs the model (training=True) on one
    replica's batch and returns `(per_example_loss, logs)`: the loss of each
    example, shape (batch,), and a dict of float scalars summed over the batch
    (e.g. the number of correct predictions), shown in the progress lines.

    Returns `train_step(iterator, stop_requested)`, a tf.function that takes
    the next batch from a distributed iterator, applies one optimizer step on
    every replica and returns the loss, the logs and the stop flag, each
    summed over replicas. With `jit_compile`, the forward and backward pass is
    compiled with XLA. With `jit_compile_optimizer` (only for the default
    strategy: see `compiles_optimizer`), the optimizer update is: AdamW's
    ~10 small ops per variable, clipping and weight decay become a few fused
    kernels. On an idle machine that is worth ~2% at the quickstart's shape
    (`python -m pipeline bench`); with other processes on the cores, where
    each small op waits for a core, an update took 21 of a 56 ms step
    uncompiled and 7 compiled (README, the quickstart's budget).
    """
    if jit_compile_optimizer and not compiles_optimizer(strategy):
        raise ValueError("make_train_step: jit_compile_optimizer needs the default "
                         "strategy (the update of a distributed one all-reduces)")
    def forward_backward(inputs, targets):
        with tf.GradientTape() as tape:
            per_example, logs = compute_loss(inputs, targets)
            loss = tf.nn.compute_average_loss(
                per_example, global_batch_size=global_batch_size)
        grads = tape.gradient(loss, model.trainable_variables)
        return loss, logs, grads

    if jit_compile:
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def update(grads):
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    if jit_compile_optimizer:
        compiled_update = tf.function(update, jit_compile=True)

        def apply(grads):
            # Sparse gradients (an embedding's IndexedSlices) enter XLA dense:
            # for a token repeated in a batch, Adam's second moment then takes
            # the square of its summed gradient (textbook Adam), where Keras'
            # sparse path sums the squares of each occurrence's gradient.
            compiled_update([tf.convert_to_tensor(g) for g in grads])
    else:
        apply = update

    def replica_step(inputs, targets, stop_requested):
        loss, logs, grads = forward_backward(inputs, targets)
        apply(grads)
        return loss, logs, tf.identity(stop_requested)

    def total(value):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)

    @tf.function
    def train_step(iterator, stop_requested):
        inputs, targets = next(iterator)
        loss, logs, stop = strategy.run(replica_step,
                                        args=(inputs, targets, stop_requested))
        # The stop flag is reduced like the loss, so every worker agrees to stop
        # after the same step, whichever worker received SIGTERM.
        return total(loss), {k: total(v) for k, v in logs.items()}, total(stop)

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
    """Ends the process when a step hangs (e.g. a peer worker was killed);
    `cause` is the likely reason the message gives."""

    def __init__(self, timeout_seconds: int, log,
                 cause: str = "a peer worker has probably died"):
        self.timeout, self.log, self.cause = timeout_seconds, log, cause
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
                         f"{self.timeout}s (runtime.step_timeout_seconds); "
                         f"{self.cause}. Exiting; rerun the same command to resume "
                         "from the latest checkpoint.")
                sys.stdout.flush()
                os._exit(75)


def weights_digest(model: keras.Model) -> str:
    """sha256 of all weights, to compare replicas across processes."""
    digest = hashlib.sha256()
    for v in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(v)).tobytes())
    return digest.hexdigest()[:16]


def train(task, log=print, strategy: tf.distribute.Strategy | None = None) -> TrainResult:
    """Trains (or resumes) the task's model; returns it with its best weights.

    Raises Preempted after saving a checkpoint when SIGTERM arrives.
    """
    t, cfg = task.train_config(), task.cfg
    prefix = task.log_prefix
    strategy = strategy or get_strategy(cfg.runtime)
    keras.config.set_dtype_policy(cfg.runtime.precision)
    set_global_seed(t.seed)
    is_chief, worker, num_workers = worker_info(strategy)
    replicas = strategy.num_replicas_in_sync
    if t.global_batch_size % replicas:
        raise ValueError(
            f"config key '{task.batch_size_key}' = {t.global_batch_size}: must be "
            f"divisible by the number of replicas ({replicas})")
    steps_per_epoch = max(1, task.num_examples("train") // t.global_batch_size)
    total_steps = t.max_steps or t.epochs * steps_per_epoch
    sign = 1.0 if task.best_direction == "max" else -1.0

    with strategy.scope():
        model = task.build_model()
        optimizer = make_optimizer(t, total_steps, task.learning_rate_multipliers(model))
        optimizer.build(model.trainable_variables)
        # The best validation value times `sign` (so larger is better), in
        # float32 as it is checkpointed.
        best_val = tf.Variable(-np.inf, dtype=tf.float32, trainable=False)
        bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False)
    checkpoint = tf.train.Checkpoint(model=ModelVariables(model), optimizer=optimizer,
                                     best_validation=best_val,
                                     epochs_without_improvement=bad_epochs)
    ckpt_dir = os.path.join(task.run_dir, "checkpoints")
    saver = _Saver(checkpoint, ckpt_dir, is_chief, worker, max_to_keep=t.keep_checkpoints)
    best_saver = _Saver(tf.train.Checkpoint(model=ModelVariables(model)),
                        os.path.join(ckpt_dir, "best"), is_chief, worker,
                        max_to_keep=1, checkpoint_name="best")
    restored = restore_latest(checkpoint, saver.reader, log)
    start_step = int(optimizer.iterations.numpy())
    if restored:
        log(f"{prefix} resumed from {restored} at step {start_step:,}/{total_steps:,}")
    else:
        task.initialize(model)
    log(f"{prefix} task {task.name}, strategy {cfg.runtime.strategy} ({replicas} "
        f"replica(s)"
        f"{f' on {num_workers} workers, this is worker {worker}' if num_workers > 1 else ''}), "
        f"{model.count_params():,} parameters, precision {cfg.runtime.precision}, "
        f"global batch {t.global_batch_size}, {steps_per_epoch:,} steps/epoch, "
        f"{total_steps:,} steps")

    per_replica_batch = t.global_batch_size // replicas
    if cfg.runtime.data_service and task.supports_data_service:
        from pipeline import data_service

        address = data_service.parse_address(cfg.runtime.data_service)
        workers = data_service.wait_for_dispatcher(
            address, cfg.runtime.data_service_timeout_seconds)
        log(f"{prefix} input: tf.data service {address}, {len(workers)} worker(s) "
            f"registered{'' if workers else ' (training waits for one)'}, jobs "
            f"{data_service.job_prefix(cfg, start_step)}-*, one per epoch: each "
            "example once per epoch, in no reproducible order")
    train_data = strategy.distribute_datasets_from_function(
        lambda ctx: task.train_dataset(per_replica_batch, skip_batches=start_step,
                                       input_context=ctx))
    val_data = task.eval_dataset("validation", t.global_batch_size)
    if val_data is not None and t.validation_max_batches:
        val_data = val_data.take(t.validation_max_batches)

    def compute_loss(inputs, targets):
        return task.compute_loss(model, inputs, targets, training=True)

    train_step = make_train_step(
        model, optimizer, strategy, compute_loss, t.global_batch_size,
        jit_compile=cfg.runtime.jit_compile,
        jit_compile_optimizer=compiles_optimizer(strategy, cfg.runtime.jit_compile_optimizer))

    sigterm = threading.Event()
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGTERM, lambda *_: sigterm.set())
    watchdog = _Watchdog(cfg.runtime.step_timeout_seconds, log)
    if cfg.runtime.data_service and task.supports_data_service:
        watchdog.cause = (f"a peer worker, or a worker or the dispatcher of the "
                          f"tf.data service at {cfg.runtime.data_service}, has probably "
                          "died")

    train_dir, val_dir = task.tensorboard_dirs()
    if is_chief:
        train_writer = tf.summary.create_file_writer(train_dir)
        val_writer = tf.summary.create_file_writer(val_dir) if val_dir else \
            tf.summary.create_noop_writer()
    else:
        train_writer = val_writer = tf.summary.create_noop_writer()
    task.write_start_summaries(train_writer, val_writer, model)
    history: list[dict] = []
    step = start_step
    iterator = iter(train_data)
    window_loss, window_logs = 0.0, {}
    window_steps, window_start = 0, time.time()
    run_start, steps_run, step_seconds = time.time(), 0, 0.0
    stop = preempted = False
    last_logs: dict = {}
    while step < total_steps and not stop:
        step_start = time.time()
        watchdog.arm(first=steps_run == 0)
        loss, logs, stop_flag = train_step(
            iterator, tf.constant(1.0 if sigterm.is_set() else 0.0))
        loss = float(loss)  # waits for the step
        logs = {k: float(v) for k, v in logs.items()}
        watchdog.disarm()
        preempted = float(stop_flag) > 0
        step_seconds += time.time() - step_start
        step += 1
        steps_run += 1
        window_loss += loss
        for k, v in logs.items():
            window_logs[k] = window_logs.get(k, 0.0) + v
        window_steps += 1
        if step % t.log_every_steps == 0 or step == total_steps:
            elapsed = time.time() - window_start
            rate = window_steps * t.global_batch_size / max(elapsed, 1e-9)
            lr = float(optimizer.learning_rate)
            last_logs = {"loss": window_loss / window_steps, **{
                k: v / (window_steps * t.global_batch_size) for k, v in window_logs.items()}}
            eta = (total_steps - step) * t.global_batch_size / max(rate, 1e-9)
            epoch = (step - 1) // steps_per_epoch + 1
            shown = "  ".join(f"{task.log_names.get(k, k)} {v:.4f}" if k == "loss" else
                              f"{task.log_names.get(k, k)} {v:.3f}"
                              for k, v in last_logs.items())
            log(f"{prefix} step {step:,}/{total_steps:,} (epoch {epoch}/"
                f"{math.ceil(total_steps / steps_per_epoch)})  {shown}  "
                f"lr {lr:.2e}  {rate:,.0f} ex/s  ETA {format_duration(eta)}")
            with train_writer.as_default(step=step):
                for k, v in last_logs.items():
                    tf.summary.scalar(k, v)
                tf.summary.scalar("learning_rate", lr)
                tf.summary.scalar("examples_per_second", rate)
            window_loss, window_logs = 0.0, {}
            window_steps, window_start = 0, time.time()
        end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
        if end_of_epoch and val_data is not None:
            val_start = time.time()
            metrics, state = validate(task, model, val_data)
            value = metrics[task.best_metric]
            epoch = math.ceil(step / steps_per_epoch)
            improved = sign * value > float(best_val.numpy())
            if improved:
                best_val.assign(sign * value)
                bad_epochs.assign(0)
                best_saver.save(step)
            else:
                bad_epochs.assign_add(1)
            history.append({"step": step, "epoch": epoch,
                            **{f"validation_{k}": v for k, v in metrics.items()}})
            with val_writer.as_default(step=step):
                for k, v in metrics.items():
                    tf.summary.scalar(k, v)
            task.on_validation(val_writer, step, state, model)
            shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            log(f"[eval] epoch {epoch} step {step:,}: validation {shown}"
                f"{'  (best)' if improved else ''} ({time.time() - val_start:.1f}s)")
            if t.early_stopping_patience and int(bad_epochs.numpy()) >= \
                    t.early_stopping_patience:
                log(f"{prefix} early stop: no improvement for {int(bad_epochs.numpy())} "
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
    log(f"{prefix} finished at step {step:,}; final weights digest {weights_digest(model)}")
    best_path = best_saver.reader.latest_checkpoint
    best = float(best_val.numpy()) * sign if np.isfinite(best_val.numpy()) else None
    if is_chief and best_path:
        tf.train.Checkpoint(model=ModelVariables(model)).restore(
            best_path).assert_existing_objects_matched()
        log(f"{prefix} restored the best weights (validation {task.best_metric} "
            f"{best:.4f}) from {best_path}")
    return TrainResult(
        model=model, steps=step, steps_per_epoch=steps_per_epoch,
        train_seconds=train_seconds,
        examples_per_second=steps_run * t.global_batch_size / max(step_seconds, 1e-9),
        best_metric=task.best_metric, best_validation=best,
        resumed_from_step=start_step, history=history, last_logs=last_logs)


def validate(task, model, dataset) -> tuple[dict[str, float], object]:
    """The task's metrics over a whole split: validation_step per batch, folded
    by aggregate_logs, then reduce_aggregated_logs. Returns (metrics, state)."""
    state = None
    for inputs, targets in dataset:
        state = task.aggregate_logs(state, task.validation_step(model, inputs, targets))
    return task.reduce_aggregated_logs(state), state


def load_best(task, model=None, log=print):
    """The task's model with its best (else latest) checkpointed weights."""
    model = model or task.build_model()
    directory = os.path.join(task.run_dir, "checkpoints")
    path = tf.train.latest_checkpoint(os.path.join(directory, "best")) or \
        tf.train.latest_checkpoint(directory)
    if not path:
        raise FileNotFoundError(f"no checkpoint under {directory}: run "
                                "'python -m pipeline train <config>' first")
    tf.train.Checkpoint(model=ModelVariables(model)).restore(path).expect_partial() \
        .assert_existing_objects_matched()
    log(f"[model] restored {path}")
    return model
