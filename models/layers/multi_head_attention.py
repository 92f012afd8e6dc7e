"""Multi-head scaled dot-product attention."""

import math

import keras
import tensorflow as tf
from keras import ops

from models.layers._utils import check_dropout, check_positive_ints, clone_initializer
from models.layers.dropout import Dropout

# Added to the scores of masked positions. Finite on purpose: a row in which
# every key is masked (e.g. an all-padding text) then gets a uniform softmax
# instead of NaN. The scores are float32 when it is added, so it is exact.
_MASK_FILL_VALUE = -1e9


@keras.saving.register_keras_serializable(package="transformer_pipeline")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head scaled dot-product attention.

    Projects `query`, `key` and `value` into `num_heads` heads, computes
    `softmax(q k^T / sqrt(key_dim))` over the keys, applies it to the values
    and projects the heads back to the hidden size of `query`. The weights
    have the same shapes and order as those of `keras.layers.MultiHeadAttention`
    with rank-3 inputs, so weights can be copied between the two:
    query kernel `(hidden_dim, num_heads, key_dim)`, query bias
    `(num_heads, key_dim)`, then key, value, and the output kernel
    `(num_heads, value_dim, hidden_dim)` and bias `(hidden_dim,)`.

    The softmax runs in float32 under a mixed-precision policy. Masked
    positions get a large negative score (not `-inf`), so a query whose keys
    are all masked gets a uniform distribution and finite outputs, never NaN.
    The layer uses only ops that XLA and the TFLite converter accept.

    Cached decoding (the semantics of keras-hub's `CachedMultiHeadAttention`):
    a cache holds the projected keys and values of a sequence, stacked,
    `(batch, 2, max_length, num_heads, key_dim)`, so an autoregressive loop
    projects each new token once instead of the whole prefix at every step.

    - Self-attention: pass `cache` and `cache_update_index`; the keys and
      values of `value`/`key` (the new step or steps) are written into the
      cache at that index along the sequence axis (`keras.ops.slice_update`,
      the builtin `DYNAMIC_UPDATE_SLICE` in TFLite), the queries attend over
      the whole updated cache, and the layer returns `(output, cache)`. The
      positions not yet written hold whatever the cache held (zeros at the
      start): `attention_mask` must mask them, e.g.
      `compute_causal_mask(batch, max_length, q_len, cache_update_index)`.
    - Cross-attention: compute the cache once per source with
      `compute_cache(encoder_outputs)` and pass it with
      `cache_update_index=None`; it is used as is (`value` and `key` are
      ignored and may be `None`) and returned unchanged.

    A cache needs `value_dim == key_dim`. It is cast to the compute dtype.
    Without a cache the layer and its weights are those of the uncached
    layer; the cache is for inference, not training.

    Args:
        num_heads: int, the number of attention heads.
        key_dim: int, the size of each head for query and key.
        value_dim: int, the size of each head for value. Defaults to
            `key_dim`.
        dropout: float in `[0, 1)`, the dropout rate on the attention
            probabilities. Defaults to `0.0`.
        use_bias: bool, whether the projections have biases. Defaults to
            `True`.
        kernel_initializer: string or `keras.initializers` initializer for the
            projection kernels. Defaults to `"glorot_uniform"`.
        bias_initializer: string or `keras.initializers` initializer for the
            projection biases. Defaults to `"zeros"`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `trainable`, `dtype` etc.

    Call arguments:
        query: tensor of shape `(batch, q_len, query_dim)`.
        value: tensor of shape `(batch, kv_len, value_dim_in)`. With a
            `cache` and a `cache_update_index`, the `steps` new positions
            `(batch, steps, value_dim_in)`; with a `cache` and no index,
            ignored.
        key: optional tensor of shape `(batch, kv_len, key_dim_in)` (or
            `steps`, as `value`). Defaults to `value`.
        attention_mask: optional bool tensor of shape `(batch, q_len, kv_len)`
            (`kv_len` is `max_length` with a cache); `True` means the query
            position may attend to the key position. Build it with
            `models.layers.merge_padding_and_attention_mask` or
            `models.layers.compute_causal_mask`.
        cache: optional float tensor of shape
            `(batch, 2, max_length, num_heads, key_dim)`, the projected keys
            (`[:, 0]`) and values (`[:, 1]`).
        cache_update_index: optional int or scalar int tensor, the position
            in `cache` of the first new step. Needs `cache`.
        return_attention_scores: bool. If `True`, also return the attention
            probabilities of shape `(batch, num_heads, q_len, kv_len)`
            (before dropout).
        training: bool, whether dropout is active.

    Returns:
        A tensor of shape `(batch, q_len, query_dim)`; then the attention
        probabilities if `return_attention_scores=True`; then the (updated)
        cache if `cache` is given. One tensor alone, else a tuple.

    Example:
    ```python
    layer = MultiHeadAttention(num_heads=2, key_dim=8)
    x = np.random.uniform(size=(2, 5, 16)).astype("float32")
    mask = np.tril(np.ones((5, 5), dtype=bool))[None].repeat(2, axis=0)
    y = layer(x, x, attention_mask=mask)  # (2, 5, 16)

    # The same outputs one step at a time, with a self-attention cache.
    cache = np.zeros((2, 2, 5, 2, 8), "float32")
    for i in range(5):
        step_mask = compute_causal_mask(2, 5, 1, cache_index=i)
        y_i, cache = layer(
            x[:, i : i + 1], x[:, i : i + 1], attention_mask=step_mask,
            cache=cache, cache_update_index=i,
        )  # y_i == y[:, i : i + 1]
    ```
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_ints(num_heads=num_heads, key_dim=key_dim)
        if value_dim is not None:
            check_positive_ints(value_dim=value_dim)
        check_dropout(dropout)
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = value_dim
        self.dropout = dropout
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def _projection(self, equation, output_shape, bias_axes, name):
        return keras.layers.EinsumDense(
            equation,
            output_shape=output_shape,
            bias_axes=bias_axes if self.use_bias else None,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, query_shape, value_shape, key_shape=None):
        key_shape = value_shape if key_shape is None else key_shape
        for arg, shape in (
            ("query", query_shape),
            ("value", value_shape),
            ("key", key_shape),
        ):
            if len(shape) != 3:
                raise ValueError(
                    f"`{arg}` must have rank 3 (batch, seq, dim). "
                    f"Received: {arg}.shape={tuple(shape)}"
                )
        value_dim = self.value_dim or self.key_dim
        hidden_dim = query_shape[-1]
        # Same einsum equations (and so weight shapes) as
        # `keras.layers.MultiHeadAttention` on rank-3 inputs.
        self._query_dense = self._projection(
            "abc,cde->abde", (None, self.num_heads, self.key_dim), "de", "query"
        )
        self._query_dense.build(query_shape)
        self._key_dense = self._projection(
            "abc,cde->abde", (None, self.num_heads, self.key_dim), "de", "key"
        )
        self._key_dense.build(key_shape)
        self._value_dense = self._projection(
            "abc,cde->abde", (None, self.num_heads, value_dim), "de", "value"
        )
        self._value_dense.build(value_shape)
        self._output_dense = self._projection(
            "abcd,cde->abe", (None, hidden_dim), "e", "attention_output"
        )
        self._output_dense.build(
            (query_shape[0], query_shape[1], self.num_heads, value_dim)
        )
        self._dropout_layer = Dropout(
            rate=self.dropout, dtype=self.dtype_policy, name="attention_dropout"
        )
        self.built = True

    def call(
        self,
        query,
        value,
        key=None,
        attention_mask=None,
        cache=None,
        cache_update_index=None,
        return_attention_scores=False,
        training=None,
    ):
        query = self._project(self._query_dense, query, 1)  # (b, q, heads, key_dim)
        if cache is None:
            if cache_update_index is not None:
                raise ValueError(
                    "`cache_update_index` needs a `cache`. Received: cache=None, "
                    f"cache_update_index={cache_update_index}"
                )
            key = value if key is None else key
            key = self._project(self._key_dense, key, 1)  # (b, kv, heads, key_dim)
            value = self._project(self._value_dense, value, 1)  # (b, kv, h, v_dim)
        else:
            self._check_cache(cache)
            cache = ops.cast(cache, self.compute_dtype)
            if cache_update_index is not None:
                # The new steps' keys and values, written in place at
                # `cache_update_index` along the sequence axis (a
                # DYNAMIC_UPDATE_SLICE in TFLite).
                update = self.compute_cache(value, key)  # (b, 2, steps, h, d)
                start = [0, 0, ops.cast(cache_update_index, "int32"), 0, 0]
                cache = ops.slice_update(cache, start, update)
            key, value = ops.unstack(cache, num=2, axis=1)  # (b, max_len, h, d)

        output, probs = self._attend(query, key, value, attention_mask, training)
        outputs = (output,)
        if return_attention_scores:
            outputs += (probs,)
        if cache is not None:
            outputs += (cache,)
        return outputs[0] if len(outputs) == 1 else outputs

    def compute_cache(self, value, key=None):
        """Projects `key` and `value` into a cache for `call(..., cache=)`.

        For cross-attention, compute the cache once per source sequence and
        pass it to every decoding step with `cache_update_index=None`.

        Args:
            value: tensor of shape `(batch, kv_len, value_dim_in)`.
            key: optional tensor of shape `(batch, kv_len, key_dim_in)`.
                Defaults to `value`.

        Returns:
            The projected keys and values stacked on axis 1, a tensor of shape
            `(batch, 2, kv_len, num_heads, key_dim)` in the compute dtype.
        """
        self._check_cache_dims()
        key = value if key is None else key
        key = self._project(self._key_dense, key, 1)  # (b, kv, heads, key_dim)
        value = self._project(self._value_dense, value, 1)  # (b, kv, heads, key_dim)
        return ops.stack((key, value), axis=1)  # (b, 2, kv, heads, key_dim)

    def _attend(self, query, key, value, attention_mask, training):
        """Attention of the projected heads; returns the projected output and
        the attention probabilities."""
        query = ops.multiply(
            query, ops.cast(1.0 / math.sqrt(float(self.key_dim)), query.dtype)
        )
        scores = ops.einsum("bthd,bshd->bhts", query, key)  # (b, h, q, kv)
        # Mask and normalise in float32 whatever the compute dtype.
        scores = ops.cast(scores, "float32")
        if attention_mask is not None:
            mask = ops.cast(attention_mask, "bool")
            mask = ops.expand_dims(mask, axis=1)  # (batch, 1, q_len, kv_len)
            scores = ops.where(mask, scores, _MASK_FILL_VALUE)
        probs = ops.softmax(scores, axis=-1)  # (batch, heads, q_len, kv_len)
        probs = ops.cast(probs, self.compute_dtype)
        dropped = self._dropout_layer(probs, training=training)

        output = ops.einsum("bhts,bshd->bthd", dropped, value)  # (b, q, h, v)
        output = self._project(self._output_dense, output, 2)  # (b, q, hidden_dim)
        return output, probs

    def _check_cache_dims(self):
        if self.value_dim is not None and self.value_dim != self.key_dim:
            raise ValueError(
                "A key/value cache stacks keys and values, so it needs "
                "`value_dim` equal to `key_dim`. Received: "
                f"value_dim={self.value_dim}, key_dim={self.key_dim}"
            )

    def _check_cache(self, cache):
        self._check_cache_dims()
        shape = tuple(cache.shape)
        expected = (2, self.num_heads, self.key_dim)
        if len(shape) != 5 or (shape[1], shape[3], shape[4]) != expected:
            raise ValueError(
                "`cache` must have shape (batch, 2, max_length, num_heads, "
                f"key_dim) = (batch, 2, max_length, {self.num_heads}, "
                f"{self.key_dim}). Received: cache.shape={shape}"
            )

    # The projections own their weights as `EinsumDense` layers (the shapes
    # of `keras.layers.MultiHeadAttention`), but run as one 2-D matmul each:
    # the einsum "abc,cde->abde" runs as a batch matmul broadcasting the
    # kernel over the batch, and its kernel gradient as a batch of products
    # then a sum; the 2-D form avoids both (docs/BENCHMARKS.md, "Measured
    # history").

    def _project(self, dense, inputs, contracted):
        """`dense` (an `EinsumDense`) on `inputs` (batch, seq, ...) as one 2-D
        matmul: the last `contracted` axes of `inputs` meet the first
        `contracted` axes of the kernel; returns (batch, seq, *other kernel axes)."""
        kernel_shape = tuple(dense.kernel.shape)
        inner = math.prod(kernel_shape[:contracted])
        outer = kernel_shape[contracted:]
        kernel = ops.reshape(ops.cast(dense.kernel, self.compute_dtype),
                             (inner, math.prod(outer)))
        shape = tf.shape(inputs)
        x = ops.matmul(ops.reshape(inputs, (-1, inner)), kernel)
        if dense.bias is not None:
            x = x + ops.reshape(ops.cast(dense.bias, x.dtype), (-1,))
        return ops.reshape(x, (shape[0], shape[1]) + outer)

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        return query_shape

    def compute_output_spec(
        self,
        query,
        value,
        key=None,
        attention_mask=None,
        cache=None,
        cache_update_index=None,
        return_attention_scores=False,
        training=None,
    ):
        outputs = (keras.KerasTensor(query.shape, dtype=self.compute_dtype),)
        if return_attention_scores:
            if cache is not None:
                kv_len = cache.shape[2]
            else:
                kv_len = (value if key is None else key).shape[1]
            scores_shape = (query.shape[0], self.num_heads, query.shape[1], kv_len)
            outputs += (keras.KerasTensor(scores_shape, dtype=self.compute_dtype),)
        if cache is not None:
            outputs += (keras.KerasTensor(cache.shape, dtype=self.compute_dtype),)
        return outputs[0] if len(outputs) == 1 else outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "value_dim": self.value_dim,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
