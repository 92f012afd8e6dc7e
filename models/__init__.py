"""Keras Transformer task models.

Importing this package registers every layer and model with Keras
serialization (package `"transformer_pipeline"`), so a saved `.keras` file
loads without `custom_objects`.
"""

from models import layers
from models.causal_lm import CausalLanguageModel
from models.masked_lm import MaskedLanguageModel
from models.text_classifier import TextClassifier
from models.transformer_decoder_backbone import TransformerDecoderBackbone
from models.transformer_encoder_backbone import TransformerEncoderBackbone
from models.translator import Translator
from models.vision_transformer import VisionTransformer

__all__ = [
    "CausalLanguageModel",
    "MaskedLanguageModel",
    "TextClassifier",
    "TransformerDecoderBackbone",
    "TransformerEncoderBackbone",
    "Translator",
    "VisionTransformer",
    "layers",
]
