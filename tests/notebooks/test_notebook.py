"""notebooks/train.ipynb: committed without outputs; runs top to bottom on the debug config."""

import os
import re

import pytest

from tests.conftest import ROOT
from tests.notebooks.conftest import assert_no_outputs, assert_uses_the_pipeline, outputs_of
from tests.notebooks.conftest import read_notebook as read_notebook_at

NOTEBOOK = os.path.join(ROOT, "notebooks", "train.ipynb")


def read_notebook():
    return read_notebook_at(NOTEBOOK)


def test_notebook_is_committed_without_outputs():
    assert_no_outputs(read_notebook())


def test_notebook_uses_the_pipeline_and_defines_no_model_code():
    assert_uses_the_pipeline(read_notebook(), "configs/text_classification_debug.yaml")


@pytest.mark.slow
def test_notebook_runs_on_the_debug_config(tmp_path, tfds_dir, kernel_name, monkeypatch):
    from nbclient import NotebookClient

    root = tmp_path / "artifacts"
    monkeypatch.setenv("PIPELINE_NOTEBOOK_DEBUG", "1")
    monkeypatch.setenv("PIPELINE_NOTEBOOK_OVERRIDES",
                       f"runtime.artifacts_root={root};data.tfds_data_dir={tfds_dir}")
    notebook = read_notebook()
    client = NotebookClient(notebook, kernel_name=kernel_name, timeout=600,
                            resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}})
    client.execute()  # raises CellExecutionError, with the traceback, on any cell error

    run_dir = root / "text_classification_debug"
    for picture in ("token_lengths.png", "training_curves.png", "confusion_matrix.png"):
        path = run_dir / "report" / picture
        assert path.stat().st_size > 10_000, path
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "edge" / "bundle" / "manifest.json").is_file()
    assert (run_dir / "serving" / "text_classifier" / "1" / "saved_model.pb").is_file()

    text, images = outputs_of(notebook)
    assert images == 3  # token lengths, training curves, confusion matrix
    assert "experiment 'text_classification_debug'" in text
    assert "| Transformer |" in text and "| dynamic_range |" in text
    assert text.count("noun.") > 20  # data card, examples, side-by-side table
    agreement = re.search(r"agree on ([\d.]+)% of (\d+) test texts", text)
    assert agreement, text[-2000:]
    assert float(agreement.group(1)) >= 90.0 and int(agreement.group(2)) == 500
