"""Shared by the notebook tests: a kernelspec for this interpreter, reading a
notebook and the text and pictures of an executed one."""

import json
import sys

import nbformat
import pytest


def read_notebook(path):
    """The notebook at `path` (nbformat v4), validated."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    return notebook


def code_source(notebook):
    return "\n".join(c.source for c in notebook.cells if c.cell_type == "code")


def assert_no_outputs(notebook):
    """Committed without outputs: every code cell unexecuted."""
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert cells
    for cell in cells:
        assert cell.outputs == [], f"cell with outputs: {cell.source[:80]!r}"
        assert cell.execution_count is None, f"executed cell: {cell.source[:80]!r}"


def assert_uses_the_pipeline(notebook, debug_config):
    """A keras-io style header; the pipeline's functions and no model code; the
    full experiment unless DEBUG, whose config is `debug_config`."""
    import re

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
    assert debug_config in source


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
