"""pipeline.plots: training curves from the event files (resumed runs too), token lengths."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from pipeline import plots

PNG = b"\x89PNG\r\n\x1a\n"


def write_scalars(directory, points, tags=("loss",)):
    """One writer = one event file, as one training process writes it."""
    writer = tf.summary.create_file_writer(str(directory))
    with writer.as_default():
        for step, value in points:
            for tag in tags:
                tf.summary.scalar(tag, value, step=step)
    writer.close()


def image_size(path):
    import matplotlib.image

    return matplotlib.image.imread(path).shape[:2]


def test_a_resumed_run_reads_as_one_curve(tmp_path):
    # The first process logged up to step 40 but its last checkpoint was step 20;
    # the resumed process logs 30 and 40 again, then goes on.
    write_scalars(tmp_path, [(10, 1.0), (20, 1.0), (30, 1.0), (40, 1.0)])
    write_scalars(tmp_path, [(30, 2.0), (40, 2.0), (50, 2.0), (60, 2.0)])
    assert len(glob.glob(str(tmp_path / "events.out.tfevents.*"))) == 2
    steps, values = plots.read_scalars(str(tmp_path))["loss"]
    assert steps.tolist() == [10, 20, 30, 40, 50, 60]
    assert values.tolist() == [1.0, 1.0, 2.0, 2.0, 2.0, 2.0]


def test_a_run_restarted_from_scratch_replaces_the_old_curve(tmp_path):
    write_scalars(tmp_path, [(10, 1.0), (20, 1.0), (30, 1.0)])
    write_scalars(tmp_path, [(10, 3.0), (20, 3.0)])
    steps, values = plots.read_scalars(str(tmp_path))["loss"]
    assert steps.tolist() == [10, 20] and values.tolist() == [3.0, 3.0]


def test_a_truncated_event_file_keeps_its_complete_records(tmp_path):
    write_scalars(tmp_path, [(step, float(step)) for step in range(1, 101)])
    (path,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 7)  # a crash in the middle of a record
    steps, _ = plots.read_scalars(str(tmp_path))["loss"]
    assert steps.tolist() == list(range(1, 100))


def test_training_curves_png(tmp_path):
    tb = tmp_path / "tensorboard"
    write_scalars(tb / "train", [(s, 1.0 / s) for s in range(10, 101, 10)],
                  tags=("loss", "accuracy", "learning_rate", "examples_per_second"))
    write_scalars(tb / "validation", [(50, 0.5), (100, 0.6)], tags=("loss", "accuracy"))
    path = plots.plot_training_curves(str(tb), str(tmp_path / "report" / "curves.png"),
                                      title="test run")
    with open(path, "rb") as f:
        assert f.read(8) == PNG
    assert image_size(path) == (440, 1540)  # 14 x 4 inches at 110 dpi
    assert not glob.glob(str(tmp_path / "report" / "*.tmp*"))


def test_history_stands_in_for_missing_validation_events(tmp_path):
    write_scalars(tmp_path / "train", [(10, 2.0), (20, 1.5)], tags=("loss", "accuracy"))
    history = [{"step": 10, "epoch": 1, "validation_loss": 2.1, "validation_accuracy": 0.3},
               {"step": 20, "epoch": 2, "validation_loss": 1.9, "validation_accuracy": 0.4}]
    runs = plots.read_training_scalars(str(tmp_path), history)
    steps, values = runs["validation"]["accuracy"]
    assert steps.tolist() == [10, 20] and values.tolist() == [0.3, 0.4]
    assert runs["validation"]["loss"][1].tolist() == [2.1, 1.9]


def test_no_scalars_is_an_error_that_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="train the model first"):
        plots.plot_training_curves(str(tmp_path), str(tmp_path / "curves.png"))
    assert not os.path.exists(tmp_path / "curves.png")


def test_token_length_histogram_reports_the_truncated_share():
    figure = plots.token_lengths_figure(np.array([1, 2, 3, 40, 50]), 32)
    _, labels = figure.axes[0].get_legend_handles_labels()
    assert labels == ["max_sequence_length = 32 (40.0% of texts are truncated)"]


def test_debug_run_writes_the_pictures(debug_run):
    cfg, metrics = debug_run
    report = os.path.join(cfg.run_dir, "report")
    for name in ("training_curves.png", "confusion_matrix.png"):
        with open(os.path.join(report, name), "rb") as f:
            assert f.read(8) == PNG, name
    runs = plots.read_training_scalars(os.path.join(cfg.run_dir, "tensorboard"))
    training = metrics["training"]
    assert runs["train"]["loss"][0][-1] == training["steps"]
    assert set(runs["train"]) >= {"loss", "accuracy", "learning_rate", "examples_per_second"}
    steps, accuracy = runs["validation"]["accuracy"]
    assert steps.tolist() == [row["step"] for row in training["history"]]
    np.testing.assert_allclose(accuracy, [row["validation_accuracy"]
                                          for row in training["history"]], atol=1e-6)


def test_token_lengths_use_the_run_tokenizer_untruncated(debug_run, debug_splits, tmp_path):
    import sentencepiece as spm

    cfg, _ = debug_run
    tokenizer = os.path.join(cfg.run_dir, "tokenizer", "spm.model")
    texts = list(debug_splits.texts["train"][:200])
    lengths = plots.token_lengths(texts, tokenizer)
    processor = spm.SentencePieceProcessor(model_file=tokenizer)
    assert lengths.tolist() == [len(processor.encode(t)) for t in texts]
    assert lengths.max() > cfg.model.max_sequence_length  # not cut at the model's length
    path = plots.plot_token_lengths(texts, tokenizer, cfg.model.max_sequence_length,
                                    str(tmp_path / "token_lengths.png"))
    with open(path, "rb") as f:
        assert f.read(8) == PNG
