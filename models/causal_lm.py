"""Decoder-only Transformer language model (GPT), with cached generation."""

import keras
import tensorflow as tf
from keras import ops

from models.layers._utils import check_positive_ints
from models.layers.masking import compute_segment_mask
from models.transformer_decoder_backbone import TransformerDecoderBackbone

SAMPLERS = ("greedy", "random", "top_k", "top_p")


def make_sampler(strategy="top_k", temperature=1.0, top_k=40, top_p=0.9, seed=None):
    """A keras-hub sampler by name: `"greedy"` (argmax), `"random"` (the whole
    distribution), `"top_k"` or `"top_p"` (nucleus), each at `temperature`
    (ignored by greedy) and, for the random ones, with `seed`.

    Raises:
        ValueError: naming the argument, for an unknown strategy or a
            non-positive temperature / top_k, or a top_p outside (0, 1].
    """
    import keras_hub

    if strategy not in SAMPLERS:
        raise ValueError(f"`strategy` must be one of {SAMPLERS}. Received: {strategy!r}")
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0. Received: {temperature!r}")
    if strategy == "greedy":
        return keras_hub.samplers.GreedySampler()
    if strategy == "random":
        return keras_hub.samplers.RandomSampler(seed=seed, temperature=temperature)
    if strategy == "top_k":
        if not (isinstance(top_k, int) and top_k > 0):
            raise ValueError(f"`top_k` must be an int > 0. Received: {top_k!r}")
        return keras_hub.samplers.TopKSampler(k=top_k, seed=seed, temperature=temperature)
    if not 0 < top_p <= 1:
        raise ValueError(f"`top_p` must be in (0, 1]. Received: {top_p!r}")
    return keras_hub.samplers.TopPSampler(p=top_p, seed=seed, temperature=temperature)


def seeded_logits_processor(seed, temperature=1.0, top_k=0, top_p=1.0):
    """A stateless sampler as a logits processor for `GreedySampler`: returns
    `process(logits, index)` whose argmax is a sample of
    `softmax(logits / temperature)` restricted to the `top_k` most likely
    tokens and to the smallest set whose probability reaches `top_p`
    (the Gumbel-max trick: argmax of `logits / T + Gumbel noise`).

    The noise of step `index` is drawn with `tf.random.stateless_uniform`
    from `(seed, index)`, so the same seed gives the same sample with no
    random state: what a SavedModel signature taking `seed` as an input
    needs (keras-hub's samplers keep theirs in a `SeedGenerator` variable).

    Args:
        seed: int or int32 scalar tensor.
        temperature: float or float32 scalar tensor; `<= 0` is greedy
            (argmax, no noise).
        top_k: int or int32 scalar tensor; `<= 0` keeps every token.
        top_p: float or float32 scalar tensor in `(0, 1]`; `1` keeps every
            token.
    """
    seed = tf.cast(seed, tf.int32)
    temperature = tf.cast(temperature, tf.float32)
    top_k = tf.cast(top_k, tf.int32)
    top_p = tf.cast(top_p, tf.float32)

    def process(logits, index):
        logits = tf.cast(logits, tf.float32)                    # (batch, vocab)
        vocab = tf.shape(logits)[-1]
        scaled = logits / tf.maximum(temperature, 1e-6)
        # top-k: keep the logits at or above the k-th largest.
        k = tf.where(top_k > 0, tf.minimum(top_k, vocab), vocab)
        kth = tf.math.top_k(scaled, k=k, sorted=True).values[:, -1:]
        keep = scaled >= kth
        # top-p: keep the most likely tokens until their mass reaches p.
        ordered = tf.sort(tf.where(keep, scaled, -1e9), direction="DESCENDING")
        probabilities = tf.nn.softmax(ordered)
        before = tf.cumsum(probabilities, axis=-1, exclusive=True)
        kept = tf.reduce_sum(tf.cast(before < top_p, tf.int32), axis=-1, keepdims=True)
        threshold = tf.gather(ordered, tf.maximum(kept, 1) - 1, batch_dims=1)
        keep = tf.logical_and(keep, scaled >= threshold)
        uniform = tf.random.stateless_uniform(
            tf.shape(logits), seed=tf.stack([seed, tf.cast(index, tf.int32)]),
            minval=1e-20, maxval=1.0)
        sampled = tf.where(keep, scaled - tf.math.log(-tf.math.log(uniform)), -1e9)
        return tf.where(temperature > 0, sampled, logits)

    return process


@keras.saving.register_keras_serializable(package="transformer_pipeline")
class CausalLanguageModel(keras.Model):
    """A GPT-style causal language model: a `TransformerDecoderBackbone`
    without cross-attention (`self.decoder`: token and sinusoidal position
    embedding, `num_layers` causal `TransformerDecoder` blocks, a final layer
    norm when `norm_first`, logits tied to the token embedding when
    `tie_embeddings`).

    Packed training rows: `inputs["segment_ids"]` gives each token its
    document within the row; attention never crosses documents
    (`compute_segment_mask` and-ed with the causal mask).

    Generation (keras-hub's `CausalLM.generate_step` layout): the prompts are
    right-padded into a buffer; one cached pass fills the cache for the
    whole buffer (`call_with_cache` at index 0), then a keras-hub sampler
    loops `next(prompt, cache, index)` from the shortest prompt's length,
    keeping each row's own prompt tokens and writing a sampled token
    elsewhere, until every row has produced `stop_token_id` or the buffer is
    full. Each step re-runs position `index - 1` with its real token, so the
    cache entries the first pass computed past a row's prompt are rewritten
    before they are read.

    Args:
        vocabulary_size: int, the number of token ids.
        hidden_dim: int. Defaults to `128`.
        intermediate_dim: int. Defaults to `256`.
        num_heads: int; must divide `hidden_dim`. Defaults to `4`.
        num_layers: int, the number of decoder blocks. Defaults to `2`.
        dropout: float in `[0, 1)`. Defaults to `0.1`.
        max_sequence_length: int, the longest sequence (prompt and generated
            tokens), also the cache length. Defaults to `128`.
        norm_first: bool, pre-norm (GPT-2) if `True`. Defaults to `True`.
        tie_embeddings: bool, whether the output projection is the
            transposed token embedding. Defaults to `True`.
        **kwargs: other keyword arguments passed to `keras.Model`.

    Call arguments:
        inputs: a dict with `"token_ids"` int32 `(batch, seq)` and optionally
            `"padding_mask"` bool/int `(batch, seq)` and `"segment_ids"` int
            `(batch, seq)`.
        training: bool, whether dropout is active.

    Returns:
        float32 logits `(batch, seq, vocabulary_size)`; those at position `t`
        predict the token at `t + 1`.

    Example:
    ```python
    lm = CausalLanguageModel(vocabulary_size=100, hidden_dim=16,
                             intermediate_dim=32, num_heads=2,
                             max_sequence_length=16)
    logits = lm({"token_ids": np.array([[1, 5, 9]], "int32")})  # (1, 3, 100)
    tokens = lm.generate(np.array([[1, 5, 0], [1, 5, 9]], "int32"),
                         np.array([[1, 1, 0], [1, 1, 1]], bool),
                         max_new_tokens=4, stop_token_id=2,
                         sampler=make_sampler("greedy"))  # (2, 7)
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        hidden_dim=128,
        intermediate_dim=256,
        num_heads=4,
        num_layers=2,
        dropout=0.1,
        max_sequence_length=128,
        norm_first=True,
        tie_embeddings=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.decoder = TransformerDecoderBackbone(
            vocabulary_size=vocabulary_size,
            hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim,
            num_heads=num_heads,
            num_layers=num_layers,
            max_sequence_length=max_sequence_length,
            dropout=dropout,
            norm_first=norm_first,
            tie_embeddings=tie_embeddings,
            dtype=self.dtype_policy,
            name="decoder",
        )
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.dropout = dropout
        self.max_sequence_length = max_sequence_length
        self.norm_first = norm_first
        self.tie_embeddings = tie_embeddings

    def build(self, input_shape=None):
        """Creates all weights (they do not depend on the sequence length)."""
        self.decoder.build()
        self.built = True

    def _build_if_needed(self):
        if not self.built:
            self.build({"token_ids": (None, None)})

    def call(self, inputs, training=None):
        if not isinstance(inputs, dict) or "token_ids" not in inputs:
            raise ValueError(
                "`inputs` must be a dict with 'token_ids' (and optionally "
                f"'padding_mask', 'segment_ids'). Received: inputs={inputs}"
            )
        segment_ids = inputs.get("segment_ids")
        attention_mask = None if segment_ids is None else compute_segment_mask(segment_ids)
        return self.decoder(
            inputs["token_ids"],
            padding_mask=inputs.get("padding_mask"),
            attention_mask=attention_mask,
            training=training,
        )

    # ----------------------------------------------------------- inference
    def initial_cache(self, batch_size):
        """The empty cache: zeros `(batch_size, num_layers, 2,
        max_sequence_length, num_heads, head_dim)` in the compute dtype."""
        self._build_if_needed()
        return self.decoder.initial_cache(batch_size)

    def call_with_cache(self, token_ids, index, cache):
        """Runs `token_ids` `(batch, seq)` at positions `index..` (no dropout);
        returns `(logits (batch, seq, vocab), cache)`."""
        self._build_if_needed()
        return self.decoder.call_with_cache(token_ids, index, cache)

    def generate(self, prompt_ids, prompt_mask, max_new_tokens, stop_token_id,
                 sampler, logits_processor=None):
        """Continues a batch of right-padded prompts.

        Args:
            prompt_ids: int32 `(batch, prompt_len)`, each row a prompt followed
                by padding.
            prompt_mask: bool/int `(batch, prompt_len)`, `True` on prompt
                tokens (a prefix of each row; every row holds at least one).
            max_new_tokens: int >= 1, or an int32 scalar tensor (then the
                buffer length is computed in the graph).
            stop_token_id: int, the end-of-text id.
            sampler: a `keras_hub.samplers.Sampler` (`make_sampler`).
            logits_processor: optional `fn(logits, index) -> logits` applied
                to each step's logits before the sampler (e.g.
                `seeded_logits_processor` with a `GreedySampler`).

        Returns:
            int32 `(batch, length)`, `length = min(prompt_len +
            max_new_tokens, max_sequence_length)`: each row's prompt and what
            follows it (cut it at the row's prompt length + max_new_tokens
            and at its first `stop_token_id` after the prompt).
        """
        is_int = isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool)
        if not (hasattr(max_new_tokens, "dtype") or (is_int and max_new_tokens >= 1)):
            raise ValueError(
                f"`max_new_tokens` must be an int >= 1. Received: {max_new_tokens!r}"
            )
        self._build_if_needed()
        prompt_ids = ops.cast(prompt_ids, "int32")
        prompt_mask = ops.cast(prompt_mask, "bool")
        prompt_length = prompt_ids.shape[1]
        if prompt_length is not None and prompt_length >= self.max_sequence_length:
            raise ValueError(
                "The prompts must be shorter than `max_sequence_length`"
                f"={self.max_sequence_length}. Received: prompt_ids.shape="
                f"{tuple(prompt_ids.shape)}"
            )
        if isinstance(max_new_tokens, int) and prompt_length is not None:
            pad = min(prompt_length + max_new_tokens, self.max_sequence_length) \
                - prompt_length
        else:
            width = ops.shape(prompt_ids)[1]
            pad = ops.minimum(width + ops.maximum(ops.cast(max_new_tokens, "int32"), 1),
                              self.max_sequence_length) - width
        batch_size = ops.shape(prompt_ids)[0]
        buffer = ops.pad(prompt_ids, [[0, 0], [0, pad]])
        mask = ops.pad(prompt_mask, [[0, 0], [0, pad]])
        _, cache = self.call_with_cache(buffer, 0, self.initial_cache(batch_size))
        index = ops.min(ops.sum(ops.cast(mask, "int32"), axis=1))

        def next(prompt, cache, index):
            token = ops.slice(prompt, [0, index - 1], [batch_size, 1])
            logits, cache = self.call_with_cache(token, index - 1, cache)
            logits = logits[:, 0, :]
            if logits_processor is not None:
                logits = logits_processor(logits, index)
            return logits, None, cache

        return sampler(next, buffer, cache=cache, index=index, mask=mask,
                       stop_token_ids=(stop_token_id,), model=self)

    def tflite_archive(self, prefill_length=None):
        """A `keras.export.ExportArchive` with the endpoints `prefill` and
        `decode`, batch 1, static shapes, float32 and int32 tensors only: the
        source of `tf.lite.TFLiteConverter.from_saved_model(dir,
        signature_keys=["prefill", "decode"])` on TFLite builtins (the cache
        update is a `DYNAMIC_UPDATE_SLICE`). The sampling loop runs in the
        app, passing `cache` from one call to the next (the prefill/decode
        layout of litert-torch's generative export).

        prefill  token_ids int32 (1, P): a prompt right-padded to P,
                 length int32 (): its true length (>= 1)
                 -> logits float32 (1, vocabulary_size) at position
                    `length - 1`, cache float32
                    (1, layers, 2, max_sequence_length, heads, head_dim)
        decode   token_ids int32 (1, 1), index int32 (): its position,
                 cache float32 (as above)
                 -> logits float32 (1, vocabulary_size), cache float32

        The prefill writes garbage keys and values at the padded positions
        `length..P-1`; the causal mask hides them and each decode step
        overwrites its own position before a later step reads it.

        Args:
            prefill_length: int, the static prompt length `P`. Defaults to
                `max_sequence_length - 1`.
        """
        if prefill_length is None:
            prefill_length = self.max_sequence_length - 1
        check_positive_ints(prefill_length=prefill_length)
        if prefill_length > self.max_sequence_length:
            raise ValueError(
                "`prefill_length` must be at most `max_sequence_length`. Received: "
                f"prefill_length={prefill_length}, "
                f"max_sequence_length={self.max_sequence_length}"
            )
        self._build_if_needed()
        d = self.decoder
        cache_shape = (1, self.num_layers, 2, self.max_sequence_length,
                       self.num_heads, d.head_dim)

        def prefill(token_ids, length):
            logits, cache = self.call_with_cache(token_ids, 0, d.initial_cache(1))
            last = tf.gather(logits, tf.reshape(length - 1, [1]), axis=1)  # (1, 1, V)
            return {"logits": last[:, 0, :], "cache": ops.cast(cache, "float32")}

        def decode(token_ids, index, cache):
            logits, cache = self.call_with_cache(
                token_ids, index, ops.cast(cache, self.compute_dtype))
            return {"logits": logits[:, 0, :], "cache": ops.cast(cache, "float32")}

        archive = keras.export.ExportArchive()
        archive.track(self)
        archive.add_endpoint("prefill", prefill, input_signature=[
            tf.TensorSpec((1, prefill_length), tf.int32, name="token_ids"),
            tf.TensorSpec((), tf.int32, name="length"),
        ])
        archive.add_endpoint("decode", decode, input_signature=[
            tf.TensorSpec((1, 1), tf.int32, name="token_ids"),
            tf.TensorSpec((), tf.int32, name="index"),
            tf.TensorSpec(cache_shape, tf.float32, name="cache"),
        ])
        return archive

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "num_heads": self.num_heads,
                "num_layers": self.num_layers,
                "dropout": self.dropout,
                "max_sequence_length": self.max_sequence_length,
                "norm_first": self.norm_first,
                "tie_embeddings": self.tie_embeddings,
            }
        )
        return config
