"""The decoder half of the Transformer: token ids -> decoder blocks ->
vocabulary logits, full-sequence or cached, with or without cross-attention."""

import keras
from keras import ops

from models.layers._utils import check_backbone_args, check_bools, make_block_stack
from models.layers.dropout import Dropout
from models.layers.token_and_position_embedding import TokenAndPositionEmbedding
from models.layers.transformer_decoder import TransformerDecoder


@keras.saving.register_keras_serializable(package="transformer_pipeline")
class TransformerDecoderBackbone(keras.layers.Layer):
    """A stack of `TransformerDecoder` blocks between a token embedding and
    the vocabulary logits: the decoder of `Translator` (with cross-attention)
    and the whole of `CausalLanguageModel` (without).

    token ids -> `TokenAndPositionEmbedding` (`self.embedding`: a shared one
    when `embedding` is given, else its own) -> dropout -> `num_layers` x
    `TransformerDecoder` (`self.decoder_layers`) -> final
    `LayerNormalization` (`self.final_layer_norm`, only when `norm_first`) ->
    logits: the transposed token-embedding matrix when `tie_embeddings` (no
    bias), else a `Dense` (`self.output_dense`). The projection runs in
    float32, so the logits are float32 under every policy; caches are in the
    compute dtype.

    Caches of all blocks are stacked on axis 1: the self-attention cache is
    `(batch, num_layers, 2, max_sequence_length, num_heads, head_dim)`, the
    cross-attention cache `(batch, num_layers, 2, source_seq, num_heads,
    head_dim)`. `call` runs the whole sequence (training, teacher forcing);
    `call_with_cache` runs `seq` tokens starting at position `index` (one
    token for a decoding step, a whole prompt for a prefill), writing their
    keys and values into the cache. Fed the same tokens, the cached calls
    give the logits of `call`.

    Args:
        vocabulary_size: int, the number of token ids.
        hidden_dim: int, the size of the embeddings and of every block's output.
        intermediate_dim: int, the hidden size of each feed-forward network.
        num_heads: int, the number of attention heads; must divide `hidden_dim`.
        num_layers: int, the number of decoder blocks.
        max_sequence_length: int, the longest decoder sequence, also the length
            of the self-attention cache.
        dropout: float in `[0, 1)`, the dropout rate of the embeddings and of
            every block. Defaults to `0.1`.
        norm_first: bool, pre-norm blocks and a final layer norm if `True`,
            post-norm if `False`. Defaults to `True`.
        tie_embeddings: bool, whether the output projection is the transposed
            token-embedding matrix. Defaults to `True`.
        cross_attention: bool, whether the blocks attend to an encoder's
            outputs. Defaults to `False`.
        embedding: optional built or unbuilt `TokenAndPositionEmbedding` of
            `(vocabulary_size, hidden_dim)` to share (e.g. an encoder's); not
            part of this layer's config. Defaults to a new one.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Example:
    ```python
    decoder = TransformerDecoderBackbone(vocabulary_size=100, hidden_dim=16,
                                         intermediate_dim=32, num_heads=2,
                                         num_layers=2, max_sequence_length=8)
    ids = np.array([[1, 5, 9, 4]], "int32")
    logits = decoder(ids)  # (1, 4, 100)
    cache = decoder.initial_cache(1)
    prefill, cache = decoder.call_with_cache(ids[:, :3], 0, cache)
    step, cache = decoder.call_with_cache(ids[:, 3:], 3, cache)  # == logits[:, 3:]
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        hidden_dim,
        intermediate_dim,
        num_heads,
        num_layers,
        max_sequence_length,
        dropout=0.1,
        norm_first=True,
        tie_embeddings=True,
        cross_attention=False,
        embedding=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_backbone_args(
            dropout, hidden_dim, num_heads, vocabulary_size=vocabulary_size,
            intermediate_dim=intermediate_dim, num_layers=num_layers,
            max_sequence_length=max_sequence_length,
        )
        check_bools(norm_first=norm_first, tie_embeddings=tie_embeddings,
                    cross_attention=cross_attention)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.max_sequence_length = max_sequence_length
        self.dropout = dropout
        self.norm_first = norm_first
        self.tie_embeddings = tie_embeddings
        self.cross_attention = cross_attention
        self.head_dim = hidden_dim // num_heads

        if embedding is None:
            embedding = TokenAndPositionEmbedding(
                vocabulary_size=vocabulary_size,
                hidden_dim=hidden_dim,
                max_sequence_length=max_sequence_length,
                dtype=self.dtype_policy,
                name="embedding",
            )
        self.embedding = embedding
        self.embeddings_dropout = Dropout(
            dropout, dtype=self.dtype_policy, name="embeddings_dropout"
        )
        self.decoder_layers, self.final_layer_norm = make_block_stack(
            TransformerDecoder, num_layers, "decoder_layer_{}", intermediate_dim,
            num_heads, dropout, norm_first, self.dtype_policy,
        )
        # The output projection is float32 under every policy.
        self.output_dense = None
        if not tie_embeddings:
            self.output_dense = keras.layers.Dense(
                vocabulary_size, dtype="float32", name="logits"
            )

    def build(self, token_ids_shape=None, encoder_sequence_shape=None):
        """Creates all weights (they do not depend on the sequence lengths)."""
        if not self.embedding.built:
            self.embedding.build((None, None))
        sequence_shape = (None, None, self.hidden_dim)
        encoder_shape = sequence_shape if self.cross_attention else None
        for layer in self.decoder_layers:
            layer.build(sequence_shape, encoder_shape)
        if self.final_layer_norm is not None:
            self.final_layer_norm.build(sequence_shape)
        if self.output_dense is not None:
            self.output_dense.build(sequence_shape)
        self.built = True

    def _check_inputs(self, token_ids, encoder_sequence, cross_cache=None):
        length = token_ids.shape[-1]
        if length is not None and length > self.max_sequence_length:
            raise ValueError(
                "`token_ids` is longer than `max_sequence_length`. Received: "
                f"token_ids.shape={tuple(token_ids.shape)}, "
                f"max_sequence_length={self.max_sequence_length}"
            )
        uses_encoder = encoder_sequence is not None or cross_cache is not None
        if uses_encoder != self.cross_attention:
            raise ValueError(
                f"This decoder was built with cross_attention={self.cross_attention}: "
                "pass an encoder sequence (or cross-attention cache) if and only if "
                "it has cross-attention."
            )

    def call(self, token_ids, padding_mask=None, encoder_sequence=None,
             encoder_padding_mask=None, attention_mask=None, training=None):
        """Logits of every position, float32 `(batch, seq, vocabulary_size)`.

        Args:
            token_ids: int32 `(batch, seq)`.
            padding_mask: optional bool/int `(batch, seq)`, `True` for real tokens.
            encoder_sequence: `(batch, source_seq, hidden)`, with cross-attention.
            encoder_padding_mask: optional bool/int `(batch, source_seq)`.
            attention_mask: optional bool `(batch, seq, seq)`, and-ed with the
                causal mask (e.g. `compute_segment_mask` of packed documents).
            training: bool, whether dropout is active.
        """
        self._check_inputs(token_ids, encoder_sequence)
        if padding_mask is not None:
            padding_mask = ops.cast(padding_mask, "bool")
        if encoder_padding_mask is not None:
            encoder_padding_mask = ops.cast(encoder_padding_mask, "bool")
        x = self.embedding(token_ids)  # (batch, seq, hidden_dim)
        x = self.embeddings_dropout(x, training=training)
        for layer in self.decoder_layers:
            x = layer(
                x,
                encoder_sequence,
                decoder_padding_mask=padding_mask,
                encoder_padding_mask=encoder_padding_mask,
                decoder_attention_mask=attention_mask,
                training=training,
            )
        return self.logits(x, training)

    def logits(self, x, training=None):
        """Final norm and the float32 projection to the vocabulary."""
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x, training=training)
        x = ops.cast(x, "float32")
        if self.output_dense is not None:
            return self.output_dense(x)
        embeddings = ops.cast(
            self.embedding.token_embedding.embeddings, "float32"
        )  # (vocab, hidden_dim)
        return ops.matmul(x, ops.transpose(embeddings))

    # ----------------------------------------------------------- inference
    def initial_cache(self, batch_size):
        """Zeros of shape `(batch_size, num_layers, 2, max_sequence_length,
        num_heads, head_dim)` in the compute dtype: the empty self-attention
        cache."""
        shape = (batch_size, self.num_layers, 2, self.max_sequence_length,
                 self.num_heads, self.head_dim)
        return ops.zeros(shape, dtype=self.compute_dtype)

    def compute_cross_attention_cache(self, encoder_sequence):
        """The cross-attention keys and values of every block, stacked:
        `(batch, num_layers, 2, source_seq, num_heads, head_dim)`."""
        caches = [layer.compute_cross_attention_cache(encoder_sequence)
                  for layer in self.decoder_layers]  # each (b, 2, S, h, d)
        return ops.stack(caches, axis=1)

    def check_cache(self, arg, cache):
        """Raises a ValueError naming `arg` unless `cache` has the stacked
        per-block layout `(batch, num_layers, 2, length, num_heads, head_dim)`."""
        shape = tuple(cache.shape)
        heads = (self.num_heads, self.head_dim)
        if len(shape) != 6 or shape[1:3] != (self.num_layers, 2) or shape[4:] != heads:
            raise ValueError(
                f"`{arg}` must have shape (batch, num_layers, 2, length, num_heads, "
                f"head_dim) = (batch, {self.num_layers}, 2, length, {self.num_heads}, "
                f"{self.head_dim}). Received: {arg}.shape={shape}"
            )

    def call_with_cache(self, token_ids, index, cache, cross_cache=None,
                        encoder_padding_mask=None, padding_mask=None):
        """Runs `seq` tokens at positions `index..index+seq-1` (inference: no
        dropout), writing their keys and values into `cache` at `index`.

        Args:
            token_ids: int32 `(batch, seq)`.
            index: int or scalar int32 tensor, the position of `token_ids[:, 0]`.
            cache: the self-attention cache (`initial_cache` or a previous call).
            cross_cache: with cross-attention, from `compute_cross_attention_cache`.
            encoder_padding_mask: optional bool/int `(batch, source_seq)`.
            padding_mask: optional bool/int `(batch, max_sequence_length)` over
                the cache positions (`False` where a key must not be seen).

        Returns:
            `(logits, cache)`: float32 logits `(batch, seq, vocabulary_size)`
            (those at position `p` predict the token at `p + 1`) and the
            updated cache.
        """
        self._check_inputs(token_ids, None, cross_cache)
        self.check_cache("cache", cache)
        if cross_cache is not None:
            self.check_cache("cross_cache", cross_cache)
            cross_caches = ops.unstack(cross_cache, num=self.num_layers, axis=1)
        else:
            cross_caches = [None] * self.num_layers
        if encoder_padding_mask is not None:
            encoder_padding_mask = ops.cast(encoder_padding_mask, "bool")
        if padding_mask is not None:
            padding_mask = ops.cast(padding_mask, "bool")
        index = ops.cast(index, "int32")
        x = self.embedding(token_ids, start_index=index)  # (b, seq, hidden)
        new_caches = []
        for layer, layer_cache, layer_cross_cache in zip(
            self.decoder_layers, ops.unstack(cache, num=self.num_layers, axis=1),
            cross_caches,
        ):
            outputs = layer(
                x,
                decoder_padding_mask=padding_mask,
                encoder_padding_mask=encoder_padding_mask,
                self_attention_cache=layer_cache,  # (b, 2, max_len, h, d)
                self_attention_cache_update_index=index,
                cross_attention_cache=layer_cross_cache,  # (b, 2, S, h, d)
                training=False,
            )
            x, layer_cache = outputs[0], outputs[1]
            new_caches.append(layer_cache)
        return self.logits(x, False), ops.stack(new_caches, axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "num_heads": self.num_heads,
                "num_layers": self.num_layers,
                "max_sequence_length": self.max_sequence_length,
                "dropout": self.dropout,
                "norm_first": self.norm_first,
                "tie_embeddings": self.tie_embeddings,
                "cross_attention": self.cross_attention,
            }
        )
        return config
