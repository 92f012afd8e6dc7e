"""TensorBoard summaries beyond the training scalars.

`pipeline.train` writes the scalars (loss, accuracy, learning rate, examples
per second) itself; this module adds, into the same log directory:

  hparams             the run's hyper-parameters for the HParams dashboard,
                      in `tensorboard/validation` (one session per run), with
                      the validation loss and accuracy as its metrics
  graph               the op graph of one forward pass of the model
                      (Graphs dashboard), in `tensorboard/train`
  sample_predictions  a Markdown table of the first validation examples with
                      the true and predicted class after every evaluation
                      (Text dashboard), in `tensorboard/validation`

Every function takes the writer to write with, so the caller decides which
worker writes. `launch_tensorboard` serves the logs.
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

# Config sections whose scalar values are logged as hyper-parameters.
HPARAM_SECTIONS = ("data", "tokenizer", "model", "train", "runtime")
# Data keys worth a column; paths and column names are not hyper-parameters.
DATA_HPARAMS = ("source", "include_lemmas", "max_examples_per_split")
NOT_HPARAMS = ("runtime.artifacts_root",)
SAMPLE_PREDICTIONS = 8    # validation examples in the text summary
SAMPLE_TEXT_CHARS = 120   # longer texts are cut in the table


def flat_hparams(config: dict) -> dict[str, bool | int | float | str]:
    """{"model.hidden_dim": 128, ...}: the scalar values of the tuned sections.

    Args:
      config: `ExperimentConfig.to_dict()`.
    """
    values = {}
    for section in HPARAM_SECTIONS:
        for key, value in config.get(section, {}).items():
            if section == "data" and key not in DATA_HPARAMS:
                continue
            name = f"{section}.{key}"
            if isinstance(value, (bool, int, float, str)) and name not in NOT_HPARAMS:
                values[name] = value
    return values


def write_hparams(writer, config: dict, trial_id: str,
                  start_time_secs: float | None = None) -> None:
    """Writes this run's hyper-parameters (HParams plugin) with `writer`.

    Call it with the validation writer: the HParams plugin looks for a
    session's metrics in the session's own directory and below it, and a
    session at the log directory's root (".") finds none. The plugin infers
    the hyper-parameter types and the metrics (validation loss and accuracy)
    from the logs, so pointing TensorBoard at the artifacts root
    (`python -m pipeline tensorboard <config> --all`) compares every
    experiment in one table.
    """
    from tensorboard.plugins.hparams import api as hp

    with writer.as_default():
        hp.hparams(flat_hparams(config), trial_id=trial_id,
                   start_time_secs=int(start_time_secs or time.time()))
    writer.flush()


def write_model_graph(writer, model, input_signature: dict) -> None:
    """Writes the op graph of one forward pass to `writer`.

    Args:
      input_signature: the model's input dict as `tf.TensorSpec`s.
    """
    @tf.function(input_signature=[input_signature])
    def forward(inputs):
        return model(inputs, training=False)

    graph = forward.get_concrete_function().graph
    with writer.as_default():
        tf.summary.graph(graph)
    writer.flush()


def _cell(text: str) -> str:
    """One Markdown table cell: one line, pipes escaped, cut to length."""
    text = " ".join(str(text).split())
    if len(text) > SAMPLE_TEXT_CHARS:
        text = text[: SAMPLE_TEXT_CHARS - 1] + "\u2026"
    return text.replace("\\", "\\\\").replace("|", "\\|") or "(empty)"


def sample_predictions_markdown(texts, labels: np.ndarray, logits: np.ndarray,
                                label_names: list[str],
                                count: int = SAMPLE_PREDICTIONS) -> str:
    """A Markdown table of the first `count` examples: text, true, predicted, p.

    Args:
      texts: the split's texts, in the order of `labels` and `logits`.
      labels: (n,) int class ids.
      logits: (n, num_classes) float model outputs.
      label_names: class id -> name.
    """
    count = min(count, len(labels), len(texts))
    logits = np.asarray(logits[:count], np.float64)
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    predicted = probabilities.argmax(-1)
    rows = ["| | text | true | predicted | p |", "|---|---|---|---|---|"]
    for i in range(count):
        mark = "\u2713" if predicted[i] == labels[i] else "\u2717"
        rows.append(f"| {mark} | {_cell(texts[i])} | {_cell(label_names[labels[i]])} | "
                    f"{_cell(label_names[predicted[i]])} | "
                    f"{probabilities[i, predicted[i]]:.2f} |")
    right = int(np.sum(predicted == np.asarray(labels[:count])))
    rows.append("")
    rows.append(f"{right}/{count} right on these examples (the first {count} of the "
                "validation split, the same ones at every evaluation).")
    return "\n".join(rows)


def write_sample_predictions(writer, step: int, texts, labels: np.ndarray,
                             logits: np.ndarray, label_names: list[str],
                             count: int = SAMPLE_PREDICTIONS) -> None:
    """Writes `sample_predictions_markdown` as a text summary at `step`."""
    table = sample_predictions_markdown(texts, labels, logits, label_names, count)
    with writer.as_default(step=step):
        tf.summary.text("sample_predictions", table)


def launch_tensorboard(logdir: str, port: int = 6006, host: str = "127.0.0.1") -> str:
    """Starts a TensorBoard server over `logdir` in a daemon thread; returns its URL.

    Args:
      logdir: a run's `tensorboard/` dir, or a parent of several runs.
      port: TCP port; 0 picks a free one (the URL tells which).
      host: interface to bind; loopback by default, so the server is not
        reachable from other machines.

    Raises:
      FileNotFoundError: `logdir` holds no event files yet.
      OSError: the port is taken or cannot be bound (the message says what to do).
    """
    import glob
    import os

    from tensorboard import program

    if not glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True):
        raise FileNotFoundError(
            f"no TensorBoard event files under {logdir}: train first, e.g. "
            "'python -m pipeline train <config>' (TensorBoard shows a run while it trains)")
    board = program.TensorBoard()
    # The Python loader: no data-server subprocess to outlive us; logs are small.
    board.configure(argv=[None, "--logdir", logdir, "--host", host,
                          "--port", str(port), "--load_fast", "false"])
    try:
        return board.launch()
    except program.TensorBoardServerException as err:
        raise OSError(f"TensorBoard could not start on {host}:{port}: {err.msg}. "
                      "Pass another port, e.g. --port 6007, or --port 0 for a free one"
                      ) from None
