"""notebooks/train.ipynb: committed without outputs; runs top to bottom on the debug config."""

import json
import os
import re
import sys

import nbformat
import pytest

from tests.conftest import ROOT

NOTEBOOK = os.path.join(ROOT, "notebooks", "train.ipynb")


def read_notebook():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    return notebook


def code_source(notebook):
    return "\n".join(c.source for c in notebook.cells if c.cell_type == "code")


def test_notebook_is_committed_without_outputs():
    cells = [c for c in read_notebook().cells if c.cell_type == "code"]
    assert cells
    for cell in cells:
        assert cell.outputs == [], f"cell with outputs: {cell.source[:80]!r}"
        assert cell.execution_count is None, f"executed cell: {cell.source[:80]!r}"


def test_notebook_uses_the_pipeline_and_defines_no_model_code():
    notebook = read_notebook()
    assert notebook.cells[0].cell_type == "markdown"
    assert notebook.cells[0].source.startswith("# ")
    assert "**Description:**" in notebook.cells[0].source
    source = code_source(notebook)
    for redefinition in ("keras.layers", "class ", "def ", "GradientTape", ".fit(",
                         "compile("):
        assert redefinition not in source, redefinition
    for call in ("load_config(", "workflow.prepare(", "workflow.train(",
                 "workflow.evaluate(", "workflow.export(", "load_bundle("):
        assert call in source, call
    # The constant chooses the experiment; the full one unless DEBUG is switched on.
    assert re.search(r"^DEBUG = False$", source, re.MULTILINE)
    assert "configs/text_classification_debug.yaml" in source


@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
    """A kernelspec for this interpreter (the venv), found through JUPYTER_PATH.

    Works in a fresh clone with no `jupyter kernelspec install` step, and does
    not depend on whatever `python3` kernel the user has installed.
    """
    name = "pipeline-tests"
    directory = tmp_path / "jupyter" / "kernels" / name
    directory.mkdir(parents=True)
    (directory / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pipeline tests (venv)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return name


def outputs_of(notebook):
    texts, images = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                texts.append(output.text)
            elif output.output_type in ("display_data", "execute_result"):
                images += "image/png" in output.data
                texts.append(output.data.get("text/markdown", ""))
                texts.append(output.data.get("text/plain", ""))
    return "\n".join(texts), images


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
