"""notebooks/translation.ipynb: committed without outputs; runs top to bottom on the
translation debug config."""

import os
import re

import pytest
import yaml

from tests.conftest import ROOT, TRANSLATION_DEBUG_CONFIG
from tests.notebooks.conftest import (
    assert_no_outputs,
    assert_uses_the_pipeline,
    outputs_of,
    read_notebook,
)

NOTEBOOK = os.path.join(ROOT, "notebooks", "translation.ipynb")


def test_translation_notebook_is_committed_without_outputs():
    assert_no_outputs(read_notebook(NOTEBOOK))


def test_translation_notebook_uses_the_pipeline_and_defines_no_model_code():
    assert_uses_the_pipeline(read_notebook(NOTEBOOK), "configs/translation_debug.yaml")


@pytest.mark.slow
def test_translation_notebook_runs_on_the_debug_config(tmp_path, tfds_dir, kernel_name,
                                                       monkeypatch):
    from nbclient import NotebookClient

    root = tmp_path / "artifacts"
    monkeypatch.setenv("PIPELINE_NOTEBOOK_DEBUG", "1")
    monkeypatch.setenv("PIPELINE_NOTEBOOK_OVERRIDES",
                       f"runtime.artifacts_root={root};data.tfds_data_dir={tfds_dir}")
    notebook = read_notebook(NOTEBOOK)
    client = NotebookClient(notebook, kernel_name=kernel_name, timeout=600,
                            resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}})
    client.execute()  # raises CellExecutionError, with the traceback, on any cell error

    run_dir = root / "translation_debug"
    for picture in ("token_lengths.png", "training_curves.png"):
        path = run_dir / "report" / picture
        assert path.stat().st_size > 10_000, path
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "serving" / "translator" / "1" / "saved_model.pb").is_file()
    assert (run_dir / "edge" / "bundle" / "manifest.json").is_file()

    text, images = outputs_of(notebook)
    assert images == 2  # token lengths, training curves
    assert "experiment 'translation_debug'" in text
    assert "| Transformer, greedy |" in text
    assert "| Transformer, beam search |" in text  # generate.num_beams: 4 by default
    with open(TRANSLATION_DEBUG_CONFIG, encoding="utf-8") as f:
        variants = yaml.safe_load(f)["export"]["tflite_variants"]
    rows = [f"| {variant} |" for variant in ("dynamic_range", "float16") if variant in variants]
    assert rows and any(row in text for row in rows), text[-2000:]
    agreement = re.search(r"give the same translation for ([\d.]+)% of (\d+) test sentences",
                          text)
    assert agreement, text[-2000:]
    assert float(agreement.group(1)) >= 90.0 and int(agreement.group(2)) == 100
