"""Fixtures of the edge app tests (helpers in app_helpers.py)."""
from __future__ import annotations

import pytest

from tests.edge.app_helpers import make_edge_venv


@pytest.fixture(scope="session")
def edge_venv(tmp_path_factory):
    """The python of a venv with edge/requirements.txt alone (no TensorFlow), built once
    per session for every task's clean-venv test."""
    return make_edge_venv(tmp_path_factory.mktemp("edge_venv") / "venv")
