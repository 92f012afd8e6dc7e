"""The task interface: what one Transformer task owns on the shared pipeline.

A task reads top to bottom as data -> model -> loss -> metrics -> report
(TF Model Garden's `base_task.Task`; keras-hub's backbone + preprocessor +
head). The trainer (`pipeline/trainer.py`), the workflow
(`pipeline/workflow.py`) and the export path (`export/`, with one export
module per task in `export/modules/`) call only these methods, so a new task
is a subclass registered with `@register_task("name")`, a model, an export
module and an edge runner, and nothing else is copied.

Batches are `(inputs, targets)` pairs of dicts of tensors. Whole data sets
never cross the interface: what needs examples in Python (tokenizer
training, the classical baseline, the data card, calibration) asks for a
bounded `sample`.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from pipeline.config import ExperimentConfig, TrainConfig


class Task:
    """Base class of every task. Subclasses override what their task needs.

    Attributes:
        name: the registry name, the value of the config key `task`.
        best_metric: the validation metric that picks the best checkpoint and
            the one export's variant gate compares.
        best_direction: "max" or "min" for `best_metric`.
        log_prefix: the prefix of the trainer's progress lines.
    """

    name: ClassVar[str] = ""
    best_metric: ClassVar[str] = "accuracy"
    best_direction: ClassVar[str] = "max"
    log_prefix: ClassVar[str] = "[train]"
    # Short names of logged values in the progress lines ({"accuracy": "acc"}).
    log_names: ClassVar[dict[str, str]] = {}
    # The config key of the global batch size, for error messages.
    batch_size_key: ClassVar[str] = "train.global_batch_size"
    # What the end-of-run summary shows as the edge app's input.
    edge_example: ClassVar[str] = '"some text"'
    # Whether `train_dataset` honours `runtime.data_service` (it builds its
    # stream with `pipeline.input.make_train_dataset`).
    supports_data_service: ClassVar[bool] = False

    def __init__(self, cfg: ExperimentConfig, log=print):
        self.cfg = cfg
        self.log = log

    # ------------------------------------------------------------- config
    @classmethod
    def validate_config(cls, cfg: ExperimentConfig) -> None:
        """Checks the task's own config rules; raises ConfigError naming the key."""

    # --------------------------------------------------------------- data
    @property
    def run_dir(self) -> str:
        """Where the task's training writes (checkpoints/, tensorboard/)."""
        return self.cfg.run_dir

    def train_config(self) -> TrainConfig:
        """Batch size, steps, schedule and checkpointing of the trainer."""
        return self.cfg.train

    def prepare(self, strategy=None) -> None:
        """Loads the data and builds the assets (tokenizers, labels) under
        run_dir; idempotent, so every command can call it."""
        raise NotImplementedError

    def num_examples(self, split: str) -> int:
        raise NotImplementedError

    def sample(self, split: str, max_examples: int = 0, seed: int | None = None
               ) -> list[dict]:
        """Up to `max_examples` raw examples of `split` (0 = all) as Python
        dicts; a seeded random choice when `seed` is given, else the first."""
        raise NotImplementedError

    def preprocess(self, examples: dict) -> dict:
        """A pure `dict -> dict` tf function from a batch of raw examples to
        model features: the same eagerly and inside `Dataset.map`."""
        raise NotImplementedError

    def train_dataset(self, batch_size: int, skip_batches: int = 0,
                      input_context=None):
        """An endless, deterministic tf.data stream of (inputs, targets)
        batches; `skip_batches` completed steps are skipped (exact resume)."""
        raise NotImplementedError

    def eval_dataset(self, split: str, batch_size: int):
        """The whole split, in order, as (inputs, targets) batches; None when
        the task has no such split (then the trainer does not validate)."""
        raise NotImplementedError

    def input_signature(self) -> dict | None:
        """`tf.TensorSpec`s of the model's inputs (the TensorBoard graph)."""
        return None

    def tensorboard_dirs(self) -> tuple[str, str | None]:
        """(train, validation) summary directories; validation None = none."""
        return (self.path("tensorboard", "train"), self.path("tensorboard", "validation"))

    def write_start_summaries(self, train_writer, validation_writer, model) -> None:
        """Written once when training starts: the hyper-parameters (HParams)
        and the model graph."""
        from pipeline import summaries

        summaries.write_hparams(validation_writer, self.cfg.to_dict(),
                                trial_id=self.cfg.name)
        signature = self.input_signature()
        if signature is not None:
            summaries.write_model_graph(train_writer, model, signature)

    # -------------------------------------------------------------- model
    def build_model(self):
        """The task model, built (every weight exists)."""
        raise NotImplementedError

    def initialize(self, model) -> None:
        """Loads initial weights (e.g. a pre-trained backbone) into a new model;
        not called when training resumes from a checkpoint."""

    def learning_rate_multipliers(self, model) -> dict[str, float] | None:
        """Variable path -> learning-rate factor (layer-wise decay); None = 1."""
        return None

    # --------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, targets, training: bool = True):
        """`(per_example_loss, logs)` of one replica's batch.

        per_example_loss: shape (batch,). logs: name -> a scalar tensor summed
        over the batch; the trainer sums them over replicas and steps and shows
        them divided by the examples (e.g. the number of correct predictions
        -> accuracy).
        """
        raise NotImplementedError

    # ------------------------------------------------------------ metrics
    def validation_step(self, model, inputs, targets) -> Any:
        """What one validation batch contributes, as numpy values."""
        raise NotImplementedError

    def aggregate_logs(self, state: Any, step_logs: Any) -> Any:
        """Folds one batch's `validation_step` output into `state` (None at
        first); corpus metrics such as BLEU keep every batch here."""
        if state is None:
            return {k: [v] for k, v in step_logs.items()}
        for k, v in step_logs.items():
            state[k].append(v)
        return state

    def reduce_aggregated_logs(self, state: Any) -> dict[str, float]:
        """The metrics of the whole split; must hold `best_metric`."""
        raise NotImplementedError

    def on_validation(self, writer, step: int, state: Any, model=None) -> None:
        """Extra TensorBoard output per validation (e.g. sample predictions)."""

    def is_better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best if self.best_direction == "max" else value < best

    # ------------------------------------------------ test, baseline, report
    def evaluate(self, model, baseline: bool = True) -> dict:
        """Test metrics of the model (and of the task's baseline).

        Returns {"test": metrics, "baseline": metrics (when asked),
        "reference": what export compares its artifacts with (e.g. the
        model's test probabilities)}.
        """
        raise NotImplementedError

    def summary_lines(self, metrics: dict) -> list[str]:
        """The lines of the end-of-run summary that show the task's metrics."""
        return [f"  test {self.best_metric} {metrics['test'][self.best_metric]:.4f}"]

    def artifact_descriptions(self) -> dict[str, str]:
        """Run-dir-relative paths the summary lists, with what each one is."""
        return {}

    # ------------------------------------------------------------ helpers
    @property
    def processor(self):
        """The Python SentencePiece processor of `self.tokenizer_path`
        (detokenization of generated ids)."""
        import sentencepiece as spm

        if getattr(self, "_processor", None) is None:
            self._processor = spm.SentencePieceProcessor(model_file=self.tokenizer_path)
        return self._processor

    def detokenize(self, rows) -> list[str]:
        """Text of each row of generated ids: the ids before its first eos,
        special ids (pad, unk, bos, eos) dropped."""
        from pipeline.tokenizer import EOS_ID

        out = []
        for row in rows:
            row = [int(i) for i in row]
            row = row[: row.index(EOS_ID)] if EOS_ID in row else row
            out.append(self.processor.decode([i for i in row if i > 3]))
        return out

    def path(self, *parts: str) -> str:
        return os.path.join(self.run_dir, *parts)


def sample_indices(total: int, max_examples: int = 0, seed: int | None = None):
    """The indices `Task.sample` returns: the first `max_examples` (0 = all),
    or a seeded random choice of that many, in order, when `seed` is given."""
    n = total if not max_examples else min(max_examples, total)
    if seed is None:
        return range(n)
    return sorted(np.random.default_rng(seed).choice(total, n, replace=False))


def softmax(logits: np.ndarray) -> np.ndarray:
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    return probabilities / probabilities.sum(-1, keepdims=True)
