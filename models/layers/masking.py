"""The one place that builds attention masks.

Every mask produced here is a boolean tensor in which `True` means "may
attend". Attention layers take masks of shape `(batch, q_len, kv_len)`.
"""

from keras import ops


def compute_causal_mask(batch_size, input_length, output_length, cache_index=0):
    """Computes a causal attention mask for a Transformer decoder.

    Query position `i` (shifted by `cache_index`) may attend to key position
    `j` if and only if `i + cache_index >= j`.

    Args:
        batch_size: int or scalar int tensor, the batch size of the mask.
        input_length: int or scalar int tensor, the length of the key/value
            sequence.
        output_length: int or scalar int tensor, the length of the query
            sequence.
        cache_index: int or scalar int tensor. The position of the first query
            token. During cached decoding with `output_length=1` and
            `cache_index=5`, the query attends to key positions `0..5`.
            Defaults to `0`.

    Returns:
        A bool tensor of shape `(batch_size, output_length, input_length)`.

    Example:
    ```python
    mask = compute_causal_mask(batch_size=2, input_length=3, output_length=3)
    # mask[0] == [[True, False, False],
    #             [True, True, False],
    #             [True, True, True]]
    ```
    """
    i = ops.arange(output_length, dtype="int32")
    i = i + ops.cast(cache_index, "int32")
    i = ops.expand_dims(i, axis=1)  # (output_length, 1)
    j = ops.arange(input_length, dtype="int32")  # (input_length,)
    mask = ops.expand_dims(ops.greater_equal(i, j), axis=0)  # (1, out, in)
    return ops.broadcast_to(mask, (batch_size, output_length, input_length))


def compute_segment_mask(segment_ids):
    """The attention mask of packed sequences: a query attends only to keys of
    its own segment (document), so packed documents never see each other.

    Args:
        segment_ids: int tensor of shape `(batch, seq)`, one id per document
            within a row (padding may take any id; mask it separately).

    Returns:
        A bool tensor of shape `(batch, seq, seq)`, `True` where the query's
        and the key's segment ids are equal.

    Example:
    ```python
    mask = compute_segment_mask([[0, 0, 1]])
    # mask[0] == [[True, True, False],
    #             [True, True, False],
    #             [False, False, True]]
    ```
    """
    segment_ids = ops.convert_to_tensor(segment_ids)
    return ops.equal(ops.expand_dims(segment_ids, 2), ops.expand_dims(segment_ids, 1))


def merge_padding_and_attention_mask(inputs, padding_mask, attention_mask):
    """Merges a padding mask with a custom attention mask.

    Semantics follow keras-hub's `merge_padding_and_attention_mask`, except
    that the result is always boolean with the full shape
    `(batch, q_len, kv_len)`, and that only explicit masks are used (an
    implicit Keras mask carried by `inputs` is ignored; pass it as
    `padding_mask`).

    Args:
        inputs: the query sequence, of shape `(batch, q_len, hidden_dim)`.
            Only its shape is used.
        padding_mask: `None` or a bool/int tensor of shape
            `(batch, kv_len)`; `True`/`1` marks a real token, `False`/`0` a
            padding token that must not be attended to.
        attention_mask: `None` or a bool/int tensor of shape
            `(batch, q_len, kv_len)`; `True`/`1` means "may attend".

    Returns:
        `None` if both masks are `None`, else a bool tensor of shape
        `(batch, q_len, kv_len)` that is the logical AND of the two masks.

    Raises:
        ValueError: if `padding_mask` is not rank 2 or `attention_mask` is not
            rank 3.
    """
    if padding_mask is not None and len(padding_mask.shape) != 2:
        raise ValueError(
            "`padding_mask` should have shape (batch_size, sequence_length). "
            f"Received: padding_mask.shape={padding_mask.shape}"
        )
    if attention_mask is not None and len(attention_mask.shape) != 3:
        raise ValueError(
            "`attention_mask` should have shape (batch_size, target_length, "
            f"source_length). Received: attention_mask.shape="
            f"{attention_mask.shape}"
        )
    if padding_mask is None and attention_mask is None:
        return None
    if attention_mask is not None:
        attention_mask = ops.cast(attention_mask, "bool")
        if padding_mask is None:
            return attention_mask
    padding_mask = ops.cast(padding_mask, "bool")
    padding_mask = ops.expand_dims(padding_mask, axis=1)  # (batch, 1, kv_len)
    if attention_mask is not None:
        return ops.logical_and(padding_mask, attention_mask)
    shape = ops.shape(padding_mask)
    q_len = ops.shape(inputs)[1]
    return ops.broadcast_to(padding_mask, (shape[0], q_len, shape[2]))
