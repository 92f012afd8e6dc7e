"""Pictures of a run, written as PNGs under `artifacts/<exp>/report/`.

  training_curves.png  loss, accuracy and learning rate against the step, read
                       back from the TensorBoard event files, so a run resumed
                       over several processes still shows its whole curve
  token_lengths.png    SentencePiece tokens per text against the model's
                       `max_sequence_length` (the notebook's data card)

The confusion matrix is `pipeline.evaluate.plot_confusion_matrix`. Figures are
drawn on `matplotlib.figure.Figure` without pyplot, so nothing changes the
global matplotlib backend (the notebook keeps its inline one).
"""

from __future__ import annotations

import glob
import os

import numpy as np

TRAINING_CURVES_FILE = "training_curves.png"
TOKEN_LENGTHS_FILE = "token_lengths.png"
# (title, tags, runs drawn) of the panels of training_curves.png; a panel
# draws the first of its tags that a run logged (classification logs
# "accuracy", translation and language modeling "token_accuracy").
PANELS = (("loss", ("loss",), ("train", "validation")),
          ("accuracy", ("accuracy", "token_accuracy"), ("train", "validation")),
          ("learning rate", ("learning_rate",), ("train",)))
COLORS = {"train": "tab:blue", "validation": "tab:orange"}


def read_scalars(directory: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scalar summaries of one run directory: tag -> (steps, values).

    Reads every `events.out.tfevents.*` file of `directory` (one per process
    that wrote to it) in the order they were written. When a restarted
    process logs a step at or before one already seen, the later points are
    replaced, the way TensorBoard purges orphaned data: a run resumed from an
    older checkpoint keeps one clean curve.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    files = []  # (first event's wall time, path, [(tag, step, value), ...])
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        start, points = None, []
        for event in EventFileLoader(path).Load():  # stops at a truncated record
            start = event.wall_time if start is None else start
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    points.append((value.tag, int(event.step), float(
                        tensor_util.make_ndarray(value.tensor).item())))
        if points:
            files.append((start, path, points))
    series: dict[str, tuple[list, list]] = {}
    ordered = (point for _, _, points in sorted(files) for point in points)
    for tag, step, scalar in ordered:
        steps, values = series.setdefault(tag, ([], []))
        if steps and step <= steps[-1]:
            keep = [i for i, s in enumerate(steps) if s < step]
            steps[:], values[:] = [steps[i] for i in keep], [values[i] for i in keep]
        steps.append(step)
        values.append(scalar)
    return {tag: (np.array(s, np.int64), np.array(v, np.float64))
            for tag, (s, v) in series.items()}


def read_training_scalars(tensorboard_dir: str, history: list[dict] | None = None
                          ) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """{"train": {tag: (steps, values)}, "validation": {...}} of a run.

    `history` (`TrainResult.history`, or metrics.json's training.history) is
    used for the validation curves when there are no validation event files.
    """
    runs = {run: read_scalars(os.path.join(tensorboard_dir, run))
            for run in ("train", "validation")}
    if not runs["validation"] and history:
        steps = np.array([row["step"] for row in history], np.int64)
        tags = [k[len("validation_"):] for k in history[0] if k.startswith("validation_")]
        runs["validation"] = {tag: (steps, np.array([row[f"validation_{tag}"]
                                                     for row in history]))
                              for tag in tags}
    return runs


def training_curves_figure(runs: dict, title: str = ""):
    """A `matplotlib.figure.Figure` of loss, accuracy and learning rate."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4))
    axes = fig.subplots(1, len(PANELS))
    for ax, (name, tags, run_names) in zip(axes, PANELS):
        present = [t for t in tags if any(t in runs.get(run, {}) for run in run_names)]
        tag = present[0] if present else tags[0]
        name = tag.replace("_", " ") if tag != tags[0] else name
        drawn = False
        for run in run_names:
            if tag not in runs.get(run, {}):
                continue
            steps, values = runs[run][tag]
            marker = "o" if run == "validation" else None
            ax.plot(steps, values, marker=marker, markersize=4, color=COLORS[run],
                    label=run)
            drawn = True
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if drawn and len(run_names) > 1:
            ax.legend()
        if tag == "learning_rate" and drawn:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str, dpi: int = 110) -> str:
    """Writes `fig` to `path` atomically; returns the path."""
    from pipeline.files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    return path


def plot_training_curves(tensorboard_dir: str, path: str, title: str = "",
                         history: list[dict] | None = None) -> str:
    """Writes the training curves of a run to `path` (PNG); returns the path.

    Raises:
      FileNotFoundError: neither event files nor `history` hold any scalar.
    """
    runs = read_training_scalars(tensorboard_dir, history)
    if not any(runs.values()):
        raise FileNotFoundError(
            f"no training scalars under {tensorboard_dir}/{{train,validation}}: "
            "train the model first ('python -m pipeline train <config>')")
    return save_figure(training_curves_figure(runs, title), path)


def token_lengths(texts, tokenizer_path: str) -> np.ndarray:
    """SentencePiece tokens per text (not truncated), with the run's spm.model."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=tokenizer_path)
    return np.array([len(ids) for ids in processor.encode([str(t) for t in texts])],
                    np.int64)


def token_lengths_figure(lengths: np.ndarray, max_sequence_length: int,
                         title: str = ""):
    """Histogram of tokens per text with the truncation length marked."""
    from matplotlib.figure import Figure

    lengths = np.asarray(lengths)
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    top = int(max(lengths.max(initial=0), max_sequence_length)) + 1
    bins = np.arange(0, top + 1, max(1, top // 60))
    ax.hist(lengths, bins=bins, color="tab:blue", alpha=0.8)
    cut = float(np.mean(lengths > max_sequence_length)) if len(lengths) else 0.0
    ax.axvline(max_sequence_length, color="tab:red", linestyle="--",
               label=f"max_sequence_length = {max_sequence_length} "
                     f"({cut:.1%} of texts are truncated)")
    ax.set_xlabel("SentencePiece tokens per text")
    ax.set_ylabel("texts")
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_token_lengths(texts, tokenizer_path: str, max_sequence_length: int,
                       path: str, title: str = "") -> str:
    """Writes the token-length histogram of `texts` to `path` (PNG)."""
    lengths = token_lengths(texts, tokenizer_path)
    if not len(lengths):
        raise ValueError("plot_token_lengths: no texts")
    return save_figure(token_lengths_figure(lengths, max_sequence_length, title), path)


def image_grid_figure(images, titles: list[str] | None = None, columns: int = 8,
                      title: str = "", row_labels: list[str] | None = None):
    """A grid of uint8 images `(H, W, C)` (C = 1 or 3; None = a blank cell),
    `columns` per row, each with its title, each row with its label (the
    data card's samples per class, misclassified test images)."""
    from matplotlib.figure import Figure

    n = len(images)
    rows = max(1, -(-n // columns))
    fig = Figure(figsize=(1.2 * columns + (1.6 if row_labels else 0),
                          (1.45 if titles else 1.0) * rows + (0.4 if title else 0)))
    axes = np.asarray(fig.subplots(rows, columns, squeeze=False))
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if i >= n or images[i] is None:
            continue
        image = np.asarray(images[i])
        grey = image.ndim == 2 or image.shape[-1] == 1
        ax.imshow(image.reshape(image.shape[:2]) if grey else image,
                  cmap="gray" if grey else None, vmin=0, vmax=255)
        if titles:
            ax.set_title(titles[i], fontsize=6)
    for row, label in enumerate(row_labels or []):
        axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_image_grid(images, titles: list[str] | None, path: str, columns: int = 8,
                    title: str = "", row_labels: list[str] | None = None) -> str:
    """`image_grid_figure` written to `path` (PNG, atomically)."""
    return save_figure(image_grid_figure(images, titles, columns, title, row_labels), path)
