"""Subclassed Keras Transformer layers and the mask helpers they use."""

from models.layers.dropout import Dropout
from models.layers.layer_normalization import LayerNormalization
from models.layers.masked_lm_head import MaskedLMHead
from models.layers.masking import (
    compute_causal_mask,
    compute_segment_mask,
    merge_padding_and_attention_mask,
)
from models.layers.multi_head_attention import MultiHeadAttention
from models.layers.patch_embedding import PatchEmbedding
from models.layers.sine_position_encoding import SinePositionEncoding
from models.layers.token_and_position_embedding import TokenAndPositionEmbedding
from models.layers.transformer_decoder import TransformerDecoder
from models.layers.transformer_encoder import TransformerEncoder

__all__ = [
    "Dropout",
    "LayerNormalization",
    "MaskedLMHead",
    "MultiHeadAttention",
    "PatchEmbedding",
    "SinePositionEncoding",
    "TokenAndPositionEmbedding",
    "TransformerDecoder",
    "TransformerEncoder",
    "compute_causal_mask",
    "compute_segment_mask",
    "merge_padding_and_attention_mask",
]
