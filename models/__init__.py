"""Keras Transformer task models.

Importing this package registers every layer and model with Keras
serialization (package `"transformer_pipeline"`), so a saved `.keras` file
loads without `custom_objects`.
"""

from models import layers
from models.text_classifier import TextClassifier

__all__ = ["TextClassifier", "layers"]
