"""Decoder-only Transformer language model (GPT), with cached generation."""

import keras
from keras import ops

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
                 sampler):
        """Continues a batch of right-padded prompts.

        Args:
            prompt_ids: int32 `(batch, prompt_len)`, each row a prompt followed
                by padding.
            prompt_mask: bool/int `(batch, prompt_len)`, `True` on prompt
                tokens (a prefix of each row; every row holds at least one).
            max_new_tokens: int >= 1.
            stop_token_id: int, the end-of-text id.
            sampler: a `keras_hub.samplers.Sampler` (`make_sampler`).

        Returns:
            int32 `(batch, length)`, `length = min(prompt_len +
            max_new_tokens, max_sequence_length)`: each row's prompt and what
            follows it (cut it at the row's prompt length + max_new_tokens
            and at its first `stop_token_id` after the prompt).
        """
        if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
            raise ValueError(
                f"`max_new_tokens` must be an int >= 1. Received: {max_new_tokens!r}"
            )
        self._build_if_needed()
        prompt_ids = ops.cast(prompt_ids, "int32")
        prompt_mask = ops.cast(prompt_mask, "bool")
        prompt_length = prompt_ids.shape[1]
        if prompt_length is None or prompt_length >= self.max_sequence_length:
            raise ValueError(
                "The prompts must have a static length below `max_sequence_length`"
                f"={self.max_sequence_length}. Received: prompt_ids.shape="
                f"{tuple(prompt_ids.shape)}"
            )
        length = min(prompt_length + max_new_tokens, self.max_sequence_length)
        batch_size = ops.shape(prompt_ids)[0]
        pad = length - prompt_length
        buffer = ops.pad(prompt_ids, [[0, 0], [0, pad]])
        mask = ops.pad(prompt_mask, [[0, 0], [0, pad]])
        _, cache = self.call_with_cache(buffer, 0, self.initial_cache(batch_size))
        index = ops.min(ops.sum(ops.cast(mask, "int32"), axis=1))

        def next(prompt, cache, index):
            token = ops.slice(prompt, [0, index - 1], [batch_size, 1])
            logits, cache = self.call_with_cache(token, index - 1, cache)
            return logits[:, 0, :], None, cache

        return sampler(next, buffer, cache=cache, index=index, mask=mask,
                       stop_token_ids=(stop_token_id,), model=self)

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
