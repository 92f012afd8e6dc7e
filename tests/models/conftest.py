"""Pytest setup for the tests of `models/`."""

import os
import sys

import keras
import pytest

# `--import-mode=importlib` (pytest.ini) does not put test directories on
# sys.path; the tests here import their helper `layer_test_utils` by name.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(autouse=True)
def _fixed_seed_and_policy():
    """Every test starts from the same seeds and the float32 policy."""
    keras.utils.set_random_seed(1337)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
