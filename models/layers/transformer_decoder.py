"""Transformer decoder block, with key/value caches for autoregressive decoding."""

import keras
from keras import ops

from models.layers._transformer_block import TransformerBlock
from models.layers.masking import compute_causal_mask, merge_padding_and_attention_mask


@keras.saving.register_keras_serializable(package="transformer_pipeline")
class TransformerDecoder(TransformerBlock):
    """One Transformer decoder block: causal self-attention, optional
    cross-attention over an encoder's outputs, then a feed-forward net.

    Called as `layer(decoder_sequence)` it is a decoder-only block (GPT);
    called as `layer(decoder_sequence, encoder_sequence)` it also attends to
    the encoder outputs (the original encoder-decoder Transformer). Which of
    the two is fixed by the first call (or `build`): the cross-attention
    weights exist only if an `encoder_sequence` shape was given.

    Each sub-block has a residual connection and a `LayerNormalization`:
    applied to the sub-block input when `norm_first=True` (pre-norm, as
    GPT-2), or after the residual sum when `norm_first=False` (post-norm, as
    the original Transformer). Dropout is applied to the attention
    probabilities, to each attention output and to the feed-forward output.
    The head size is `hidden_dim // num_heads` for both attentions, where
    `hidden_dim` is the last dimension of `decoder_sequence`. The arguments,
    sub-layers and their names are those of `TransformerEncoder`, plus
    `cross_attention_layer` and `cross_attention_layer_norm`.

    Masking: the self-attention always applies a causal mask (query `i` sees
    keys `0..i`), and-ed with `decoder_attention_mask` when given, merged with
    `decoder_padding_mask` by
    `models.layers.merge_padding_and_attention_mask`; the cross-attention
    masks the encoder padding given by `encoder_padding_mask`. A query whose
    keys are all masked gets finite outputs.

    Cached decoding (keras-hub's `TransformerDecoder` semantics): pass a
    `self_attention_cache` of shape `(batch, 2, max_length, num_heads,
    head_dim)` (zeros at the start) and `self_attention_cache_update_index`,
    the position of the first token of `decoder_sequence`. The block writes
    the keys and values of these tokens into the cache at that index, lets
    the token at absolute position `p` attend to positions `0..p` of the
    cache, and returns the updated cache. `decoder_sequence` may hold one
    token (a decoding step) or several (a prompt); the index may be a
    tensor. A block with cross-attention also needs a `cross_attention_cache`
    from `compute_cross_attention_cache(encoder_sequence)`, computed once per
    source and used as is at every step (`encoder_sequence` may then be
    `None`). Fed the same tokens, the cached steps give the outputs of the
    full causal pass. Caches are for inference, not training.

    Args:
        intermediate_dim: int, the hidden size of the feed-forward network.
        num_heads: int, the number of attention heads; must divide the hidden
            size of the inputs.
        dropout: float in `[0, 1)`, the dropout rate used everywhere in the
            block. Defaults to `0.0`.
        activation: string or callable, the activation of the feed-forward
            network. Defaults to `"gelu"`.
        layer_norm_epsilon: float, the epsilon of the layer normalizations.
            Defaults to `1e-5`.
        norm_first: bool, pre-norm if `True`, post-norm if `False`. Defaults
            to `False`.
        kernel_initializer: string or `keras.initializers` initializer for the
            dense and attention kernels. Defaults to `"glorot_uniform"`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `trainable`, `dtype` etc.

    Call arguments:
        decoder_sequence: tensor of shape `(batch, seq, hidden_dim)`; with a
            self-attention cache, the `seq` tokens at positions
            `self_attention_cache_update_index + 0..seq-1`.
        encoder_sequence: optional tensor of shape
            `(batch, source_seq, encoder_dim)`, the encoder outputs. Leave it
            `None` for a decoder-only block.
        decoder_padding_mask: optional bool/int tensor, `True`/`1` for real
            tokens, of shape `(batch, seq)`; with a self-attention cache, of
            shape `(batch, max_length)`, over the cache positions (e.g. to
            mask a left-padded prompt).
        encoder_padding_mask: optional bool/int tensor of shape
            `(batch, source_seq)`, `True`/`1` for real source tokens.
        self_attention_cache: optional float tensor of shape
            `(batch, 2, max_length, num_heads, head_dim)`.
        self_attention_cache_update_index: optional int or scalar int tensor,
            where in `self_attention_cache` to write the new keys and values.
            `None` uses the cache as is.
        cross_attention_cache: optional float tensor of shape
            `(batch, 2, source_seq, num_heads, head_dim)`, from
            `compute_cross_attention_cache`. A block with cross-attention
            takes both caches or neither.
        decoder_attention_mask: optional bool/int tensor of shape
            `(batch, seq, seq)` (`(batch, seq, max_length)` with a cache),
            `True`/`1` where a query may attend to a key; combined with the
            causal mask by a logical AND (e.g. `compute_segment_mask` for
            packed sequences, so no document attends to another).
        training: bool, whether dropout is active.

    Returns:
        A tensor of the same shape and dtype as `decoder_sequence`; with
        caches, `(outputs, self_attention_cache)` for a decoder-only block and
        `(outputs, self_attention_cache, cross_attention_cache)` for a block
        with cross-attention.

    Example:
    ```python
    decoder = TransformerDecoder(intermediate_dim=64, num_heads=4)
    x = np.random.uniform(size=(2, 6, 32)).astype("float32")
    source = np.random.uniform(size=(2, 9, 32)).astype("float32")
    y = decoder(x, source)  # (2, 6, 32)

    # The same outputs one token at a time.
    self_cache = np.zeros((2, 2, 6, 4, 8), "float32")
    cross_cache = decoder.compute_cross_attention_cache(source)
    for i in range(6):
        y_i, self_cache, cross_cache = decoder(
            x[:, i : i + 1],
            self_attention_cache=self_cache,
            self_attention_cache_update_index=i,
            cross_attention_cache=cross_cache,
        )  # y_i == y[:, i : i + 1]
    ```
    """

    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        head_dim = self._head_dim(decoder_sequence_shape[-1])
        self._self_attention_layer = self._make_attention(
            "self_attention_layer",
            head_dim,
            decoder_sequence_shape,
            decoder_sequence_shape,
        )
        self._self_attention_layer_norm = self._make_layer_norm(
            "self_attention_layer_norm", decoder_sequence_shape
        )
        self._self_attention_dropout = self._make_dropout("self_attention_dropout")
        self._cross_attention_layer = None
        if encoder_sequence_shape is not None:
            self._cross_attention_layer = self._make_attention(
                "cross_attention_layer",
                head_dim,
                decoder_sequence_shape,
                encoder_sequence_shape,
            )
            self._cross_attention_layer_norm = self._make_layer_norm(
                "cross_attention_layer_norm", decoder_sequence_shape
            )
            self._cross_attention_dropout = self._make_dropout(
                "cross_attention_dropout"
            )
        self._build_feedforward(decoder_sequence_shape)
        self.built = True

    @property
    def has_cross_attention(self):
        """Whether the block was built with cross-attention."""
        return getattr(self, "_cross_attention_layer", None) is not None

    def compute_cross_attention_cache(self, encoder_sequence):
        """The cross-attention keys and values of `encoder_sequence`, for
        `call(..., cross_attention_cache=)`.

        Args:
            encoder_sequence: tensor of shape `(batch, source_seq, encoder_dim)`.

        Returns:
            A tensor of shape `(batch, 2, source_seq, num_heads, head_dim)` in
            the compute dtype.
        """
        if not self.has_cross_attention:
            raise ValueError(
                "This TransformerDecoder has no cross-attention: build it with "
                "an `encoder_sequence` shape (or call it with an "
                "`encoder_sequence`) first. Received: "
                f"encoder_sequence.shape={tuple(encoder_sequence.shape)}"
            )
        return self._cross_attention_layer.compute_cache(encoder_sequence)

    def call(
        self,
        decoder_sequence,
        encoder_sequence=None,
        decoder_padding_mask=None,
        encoder_padding_mask=None,
        self_attention_cache=None,
        self_attention_cache_update_index=None,
        cross_attention_cache=None,
        decoder_attention_mask=None,
        training=None,
    ):
        self._check_call(encoder_sequence, self_attention_cache, cross_attention_cache)
        x = decoder_sequence  # (batch, seq, hidden_dim)

        # Self-attention block.
        self_attention_mask = self._self_attention_mask(
            x,
            decoder_padding_mask,
            decoder_attention_mask,
            self_attention_cache,
            self_attention_cache_update_index,
        )  # (batch, seq, seq or max_length)
        x, self_attention_cache = self._attention_sub_block(
            x, None, self._self_attention_layer, self._self_attention_layer_norm,
            self._self_attention_dropout, self_attention_mask,
            self_attention_cache, self_attention_cache_update_index, training,
        )

        # Cross-attention block.
        if self.has_cross_attention:
            # (batch, seq, source_seq) bool, or None
            cross_attention_mask = merge_padding_and_attention_mask(
                x, encoder_padding_mask, None
            )
            x, cross_attention_cache = self._attention_sub_block(
                x, encoder_sequence, self._cross_attention_layer,
                self._cross_attention_layer_norm, self._cross_attention_dropout,
                cross_attention_mask, cross_attention_cache, None, training,
            )

        x = self._feedforward_block(x, training)
        if self_attention_cache is None:
            return x
        if self.has_cross_attention:
            return x, self_attention_cache, cross_attention_cache
        return x, self_attention_cache

    def _attention_sub_block(self, x, value, attention_layer, layer_norm, dropout,
                             attention_mask, cache, cache_update_index, training):
        """One attention sub-block (residual + norm around the attention);
        `value` None is self-attention (over the sub-block's own input).
        Returns `(outputs, cache)`, the cache as given when it is None."""
        residual = x
        x = self._sub_block_input(x, layer_norm, training)
        x = attention_layer(
            query=x,
            value=x if value is None else value,
            attention_mask=attention_mask,
            cache=cache,
            cache_update_index=cache_update_index,
            training=training,
        )
        if cache is not None:
            x, cache = x
        x = self._sub_block_output(x, residual, layer_norm, dropout, training)
        return x, cache

    def _check_call(self, encoder_sequence, self_attention_cache, cross_attention_cache):
        uses_encoder = encoder_sequence is not None or cross_attention_cache is not None
        if self.has_cross_attention and not uses_encoder:
            raise ValueError(
                "This TransformerDecoder was built with cross-attention: pass "
                "`encoder_sequence` (or `cross_attention_cache`). Received: "
                "encoder_sequence=None, cross_attention_cache=None"
            )
        if not self.has_cross_attention and uses_encoder:
            raise ValueError(
                "This TransformerDecoder was built without cross-attention "
                "(decoder-only); `encoder_sequence` and `cross_attention_cache` "
                "must be None. Call it with an `encoder_sequence` the first time "
                "to build one with cross-attention."
            )
        if self.has_cross_attention and (
            (self_attention_cache is None) != (cross_attention_cache is None)
        ):
            raise ValueError(
                "A TransformerDecoder with cross-attention takes both "
                "`self_attention_cache` and `cross_attention_cache`, or neither. "
                f"Received: self_attention_cache is None: "
                f"{self_attention_cache is None}, cross_attention_cache is None: "
                f"{cross_attention_cache is None}"
            )

    def _self_attention_mask(self, x, padding_mask, attention_mask, cache,
                             cache_update_index):
        """The causal mask, `(batch, seq, kv_len)` bool, merged with the
        padding mask and the attention mask; `kv_len` is `seq`, or
        `max_length` with a cache."""
        shape = ops.shape(x)
        batch_size, output_length = shape[0], shape[1]
        input_length = output_length if cache is None else ops.shape(cache)[2]
        if padding_mask is not None and cache is not None:
            static_lengths = (padding_mask.shape[-1], cache.shape[2])
            if None not in static_lengths and static_lengths[0] != static_lengths[1]:
                raise ValueError(
                    "With a `self_attention_cache`, `decoder_padding_mask` covers "
                    "the cache positions: (batch, max_length). Received: "
                    f"decoder_padding_mask.shape={tuple(padding_mask.shape)}, "
                    f"self_attention_cache.shape={tuple(cache.shape)}"
                )
        # Query i is the token at cache_update_index + i: it sees keys 0..that.
        cache_index = 0 if cache_update_index is None else cache_update_index
        causal_mask = compute_causal_mask(
            batch_size, input_length, output_length, cache_index
        )
        if attention_mask is not None:
            causal_mask = ops.logical_and(causal_mask, ops.cast(attention_mask, "bool"))
        return merge_padding_and_attention_mask(x, padding_mask, causal_mask)

    def compute_output_shape(self, decoder_sequence_shape, encoder_sequence_shape=None):
        return decoder_sequence_shape

    def compute_output_spec(
        self,
        decoder_sequence,
        encoder_sequence=None,
        decoder_padding_mask=None,
        encoder_padding_mask=None,
        self_attention_cache=None,
        self_attention_cache_update_index=None,
        cross_attention_cache=None,
        decoder_attention_mask=None,
        training=None,
    ):
        outputs = keras.KerasTensor(decoder_sequence.shape, dtype=self.compute_dtype)
        if self_attention_cache is None:
            return outputs
        outputs = (
            outputs,
            keras.KerasTensor(self_attention_cache.shape, dtype=self.compute_dtype),
        )
        if cross_attention_cache is None:
            return outputs
        return outputs + (
            keras.KerasTensor(cross_attention_cache.shape, dtype=self.compute_dtype),
        )
