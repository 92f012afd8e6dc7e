"""Encoder-decoder Transformer for translation, with cached greedy decoding."""

import keras
import tensorflow as tf
from keras import ops

from models.layers._utils import check_backbone_args, check_bools, check_positive_ints
from models.transformer_decoder_backbone import TransformerDecoderBackbone
from models.transformer_encoder_backbone import TransformerEncoderBackbone

# The TFLite signatures of `Translator.tflite_archive()`, in order.
TFLITE_SIGNATURES = ("encode", "decode")
# The keys of `Translator.call`'s inputs, each (batch, seq).
_INPUT_NAMES = ("source_ids", "source_padding_mask", "target_ids", "target_padding_mask")


@keras.saving.register_keras_serializable(package="transformer_pipeline")
class Translator(keras.Model):
    """Encoder-decoder Transformer (Vaswani et al., 2017) over one shared
    vocabulary (one SentencePiece model for both languages).

    source ids -> `TransformerEncoderBackbone` (`self.encoder`: embedding,
    `num_encoder_layers` encoder blocks, final norm when `norm_first`).
    target ids -> `TransformerDecoderBackbone` (`self.decoder`: a
    `TokenAndPositionEmbedding`, the encoder's own embedding layer when
    `tie_embeddings`, else a second one -> dropout -> `num_decoder_layers` x
    `TransformerDecoder` with cross-attention over the encoder outputs ->
    final `LayerNormalization` when `norm_first` -> vocabulary logits: the
    transposed token-embedding matrix when `tie_embeddings` (no bias), else a
    `Dense`).

    Precision: the output projection runs in float32, so the logits are
    float32 even under a `mixed_bfloat16` policy. Caches are in the compute
    dtype.

    Masking: source padding is masked in the encoder and in every
    cross-attention, so padded source positions never change the outputs.
    The decoder self-attention is causal (position `t` sees targets `0..t`)
    and also masks `target_padding_mask`.

    Inference, one source at a time or batched (keras-hub's `Seq2SeqLM`
    layout; DESIGN.md: the loop lives outside the exported graph for TFLite):

    - `encode(source_ids, source_padding_mask)` runs the encoder once and
      returns the cross-attention keys and values of every decoder layer,
      `cross_cache`, `(batch, num_decoder_layers, 2, source_seq, num_heads,
      head_dim)`.
    - `initial_self_cache(batch_size)` gives the zero self-attention cache,
      `(batch, num_decoder_layers, 2, max_target_length, num_heads,
      head_dim)`.
    - `decode_step(token_ids, index, self_cache, cross_cache,
      source_padding_mask)` embeds one token at position `index`, writes its
      keys and values into `self_cache` at `index` and returns the logits of
      the next token and the updated cache. Fed the same prefix it gives the
      logits of the teacher-forced `call`.
    - `greedy_decode(...)` loops `decode_step` in a `tf.while_loop` (usable
      inside a `tf.function` or a SavedModel).
    - `tflite_archive()` writes `encode` and `decode` as the two endpoints of
      a `keras.export.ExportArchive` with static shapes and batch 1, which
      convert to TFLite builtins (the cache update is `DYNAMIC_UPDATE_SLICE`).

    Per-layer caches are stacked on axis 1 (`ops.unstack`/`ops.stack`, the
    builtins `UNPACK`/`PACK`).

    Building: all weights exist after the first call or after `model.build`
    with the dict of input shapes (weights do not depend on the sequence
    lengths); `encode`, `decode_step`, `greedy_decode` and `tflite_archive`
    build the model if needed.

    Args:
        vocabulary_size: int, the number of token ids of the shared
            vocabulary.
        hidden_dim: int, the size of the embeddings and of every block's
            output. Defaults to `128`.
        intermediate_dim: int, the hidden size of each feed-forward network.
            Defaults to `256`.
        num_heads: int, the number of attention heads; must divide
            `hidden_dim`. Defaults to `4`.
        num_encoder_layers: int, the number of encoder blocks. Defaults to `2`.
        num_decoder_layers: int, the number of decoder blocks. Defaults to `2`.
        dropout: float in `[0, 1)`, the dropout rate of the embeddings and of
            every block. Defaults to `0.1`.
        max_source_length: int, the longest source sequence. Defaults to `32`.
        max_target_length: int, the longest target sequence (decoder input),
            also the length of the self-attention cache. Defaults to `32`.
        norm_first: bool, pre-norm blocks (and a final layer norm after the
            encoder and after the decoder) if `True`, post-norm if `False`.
            Defaults to `True`.
        tie_embeddings: bool, whether the encoder and the decoder share one
            token embedding and the output projection is its transpose.
            Defaults to `True`.
        **kwargs: other keyword arguments passed to `keras.Model`, including
            `name`, `dtype` etc.

    Call arguments:
        inputs: a dict with
            `"source_ids"`: int32 `(batch, source_seq)`,
            `"source_padding_mask"`: bool/int `(batch, source_seq)`, `True`/`1`
            for real tokens,
            `"target_ids"`: int32 `(batch, target_seq)`, the decoder input
            (bos followed by the target without its last token),
            `"target_padding_mask"` (optional): bool/int `(batch, target_seq)`.
        training: bool, whether dropout is active.

    Returns:
        float32 logits of shape `(batch, target_seq, vocabulary_size)`; those
        at position `t` predict the target token `t` (teacher forcing).

    Example:
    ```python
    model = Translator(vocabulary_size=100, hidden_dim=16, intermediate_dim=32,
                       num_heads=2, max_source_length=8, max_target_length=8)
    source_ids = np.array([[5, 9, 7, 2, 0, 0]], "int32")
    source_padding_mask = source_ids != 0
    logits = model({"source_ids": source_ids,
                    "source_padding_mask": source_padding_mask,
                    "target_ids": np.array([[1, 11, 12]], "int32"),
                    "target_padding_mask": np.ones((1, 3), bool)})  # (1, 3, 100)
    tokens = model.greedy_decode(source_ids, source_padding_mask,
                                 bos_id=1, eos_id=2)  # (1, 8) int32
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        hidden_dim=128,
        intermediate_dim=256,
        num_heads=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dropout=0.1,
        max_source_length=32,
        max_target_length=32,
        norm_first=True,
        tie_embeddings=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_backbone_args(
            dropout, hidden_dim, num_heads, vocabulary_size=vocabulary_size,
            intermediate_dim=intermediate_dim, num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers, max_source_length=max_source_length,
            max_target_length=max_target_length,
        )
        check_bools(norm_first=norm_first, tie_embeddings=tie_embeddings)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.num_heads = num_heads
        self.num_encoder_layers = num_encoder_layers
        self.num_decoder_layers = num_decoder_layers
        self.dropout = dropout
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.norm_first = norm_first
        self.tie_embeddings = tie_embeddings
        self.head_dim = hidden_dim // num_heads

        self.encoder = TransformerEncoderBackbone(
            vocabulary_size=vocabulary_size,
            hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim,
            num_heads=num_heads,
            num_layers=num_encoder_layers,
            dropout=dropout,
            max_sequence_length=max_source_length,
            norm_first=norm_first,
            dtype=self.dtype_policy,
            name="encoder",
        )
        # Tied: one layer, one token-embedding matrix, tracked once in
        # `weights`. Its position encoding has no weights and no length limit
        # once built; the decoder checks the target length.
        self.decoder = TransformerDecoderBackbone(
            vocabulary_size=vocabulary_size,
            hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim,
            num_heads=num_heads,
            num_layers=num_decoder_layers,
            max_sequence_length=max_target_length,
            dropout=dropout,
            norm_first=norm_first,
            tie_embeddings=tie_embeddings,
            cross_attention=True,
            embedding=self.encoder.embedding if tie_embeddings else None,
            dtype=self.dtype_policy,
            name="decoder",
        )

    def build(self, input_shape):
        """Creates all weights; they do not depend on the sequence lengths.

        Args:
            input_shape: the dict of shapes of `call`'s inputs, e.g.
                `{"source_ids": (None, None), "source_padding_mask": (None,
                None), "target_ids": (None, None), "target_padding_mask":
                (None, None)}` (what `encode`, `decode_step` and
                `greedy_decode` use when the model is not built yet). Only
                its structure is used; Keras keeps it for the `.keras` file
                and for the default SavedModel signature, so pass a dict.
        """
        self.encoder.build((None, None))
        self.decoder.build()
        self.built = True

    def _build_if_needed(self):
        if not self.built:
            self.build({name: (None, None) for name in _INPUT_NAMES})

    # ------------------------------------------------------------ training
    def call(self, inputs, training=None):
        required = {"source_ids", "source_padding_mask", "target_ids"}
        if not isinstance(inputs, dict) or not required <= set(inputs):
            raise ValueError(
                "`inputs` must be a dict with keys 'source_ids', "
                "'source_padding_mask', 'target_ids' (and optionally "
                f"'target_padding_mask'). Received: inputs={inputs}"
            )
        source_padding_mask = ops.cast(inputs["source_padding_mask"], "bool")
        encoded = self._encoder_outputs(
            inputs["source_ids"], source_padding_mask, training
        )  # (batch, source_seq, hidden_dim)
        self._check_length("target_ids", inputs["target_ids"], self.max_target_length,
                           "max_target_length")
        return self.decoder(
            inputs["target_ids"],
            padding_mask=inputs.get("target_padding_mask"),
            encoder_sequence=encoded,
            encoder_padding_mask=source_padding_mask,
            training=training,
        )  # (batch, target_seq, vocab)

    def _encoder_outputs(self, source_ids, source_padding_mask, training=None):
        self._check_length("source_ids", source_ids, self.max_source_length,
                           "max_source_length")
        return self.encoder(
            {"token_ids": source_ids, "padding_mask": source_padding_mask},
            training=training,
        )

    @staticmethod
    def _check_length(arg, ids, max_length, max_arg):
        length = ids.shape[-1]
        if length is not None and length > max_length:
            raise ValueError(
                f"`{arg}` is longer than `{max_arg}`. Received: "
                f"{arg}.shape={tuple(ids.shape)}, {max_arg}={max_length}"
            )

    # ----------------------------------------------------------- inference
    def encode(self, source_ids, source_padding_mask):
        """The cross-attention keys and values of every decoder layer, computed
        once per source (inference: no dropout).

        Args:
            source_ids: int32 tensor `(batch, source_seq)`.
            source_padding_mask: bool/int tensor `(batch, source_seq)`.

        Returns:
            `cross_cache`, a tensor of shape `(batch, num_decoder_layers, 2,
            source_seq, num_heads, head_dim)` in the compute dtype.
        """
        self._build_if_needed()
        source_padding_mask = ops.cast(source_padding_mask, "bool")
        encoded = self._encoder_outputs(source_ids, source_padding_mask, False)
        return self.decoder.compute_cross_attention_cache(encoded)

    def initial_self_cache(self, batch_size):
        """The empty self-attention cache of `decode_step`.

        Args:
            batch_size: int or scalar int tensor.

        Returns:
            Zeros of shape `(batch_size, num_decoder_layers, 2,
            max_target_length, num_heads, head_dim)` in the compute dtype.
        """
        self._build_if_needed()
        return self.decoder.initial_cache(batch_size)

    def decode_step(self, token_ids, index, self_cache, cross_cache,
                    source_padding_mask):
        """One cached decoding step (inference: no dropout).

        Args:
            token_ids: int32 tensor `(batch, 1)`, the decoder input at
                position `index` (bos at position 0).
            index: int or scalar int32 tensor, the position of `token_ids`
                (`0 <= index < max_target_length`).
            self_cache: tensor `(batch, num_decoder_layers, 2,
                max_target_length, num_heads, head_dim)`, from
                `initial_self_cache` or the previous step.
            cross_cache: tensor `(batch, num_decoder_layers, 2, source_seq,
                num_heads, head_dim)`, from `encode`.
            source_padding_mask: bool/int tensor `(batch, source_seq)`.

        Returns:
            `(logits, self_cache)`: float32 logits `(batch, vocabulary_size)`
            of the token at position `index + 1`, and the cache with the keys
            and values of `token_ids` written at `index`.
        """
        self._build_if_needed()
        self.decoder.check_cache("self_cache", self_cache)
        logits, self_cache = self.decoder.call_with_cache(
            token_ids, index, self_cache, cross_cache=cross_cache,
            encoder_padding_mask=source_padding_mask,
        )
        return ops.squeeze(logits, axis=1), self_cache  # (b, vocab)

    def _check_max_length(self, max_length):
        """`max_length`, or `max_target_length` when None; a ValueError unless
        an int in [1, max_target_length]."""
        max_length = self.max_target_length if max_length is None else max_length
        if (not isinstance(max_length, int) or isinstance(max_length, bool)
                or not 1 <= max_length <= self.max_target_length):
            raise ValueError(
                "`max_length` must be an int in [1, max_target_length="
                f"{self.max_target_length}]. Received: max_length={max_length!r}"
            )
        return max_length

    def greedy_decode(self, source_ids, source_padding_mask, bos_id, eos_id,
                      max_length=None):
        """Greedy (argmax) decoding of a batch of sources.

        A `tf.while_loop` over `decode_step`, so it runs eagerly, inside a
        `tf.function` and in a SavedModel (no Python loop over tensors, no
        TensorArray). The loop stops once every row has emitted `eos_id`.

        Args:
            source_ids: int32 tensor `(batch, source_seq)`.
            source_padding_mask: bool/int tensor `(batch, source_seq)`.
            bos_id: int or scalar int tensor, the first decoder input.
            eos_id: int or scalar int tensor, the end-of-sequence id.
            max_length: int, the number of tokens to generate at most, in
                `[1, max_target_length]`. Defaults to `max_target_length`.

        Returns:
            int32 tensor `(batch, max_length)`: the generated tokens after
            bos, the eos included; every position after a row's eos (and
            every position not reached) is 0 (padding).
        """
        max_length = self._check_max_length(max_length)
        self._build_if_needed()
        source_padding_mask = ops.cast(source_padding_mask, "bool")
        batch_size = ops.shape(source_ids)[0]
        cross_cache = self.encode(source_ids, source_padding_mask)
        eos_id = ops.cast(eos_id, "int32")

        def cond(index, token_ids, self_cache, tokens, finished):
            return ops.logical_and(
                ops.less(index, max_length),
                ops.logical_not(ops.all(finished)),
            )

        def body(index, token_ids, self_cache, tokens, finished):
            logits, self_cache = self.decode_step(
                token_ids, index, self_cache, cross_cache, source_padding_mask
            )
            next_ids = ops.cast(ops.argmax(logits, axis=-1), "int32")  # (batch,)
            next_ids = ops.where(finished, ops.zeros_like(next_ids), next_ids)
            finished = ops.logical_or(finished, ops.equal(next_ids, eos_id))
            next_ids = ops.expand_dims(next_ids, axis=1)  # (batch, 1)
            tokens = ops.slice_update(tokens, [0, index], next_ids)
            return index + 1, next_ids, self_cache, tokens, finished

        loop_vars = (
            ops.convert_to_tensor(0, "int32"),
            ops.full((batch_size, 1), ops.cast(bos_id, "int32"), dtype="int32"),
            self.initial_self_cache(batch_size),
            ops.zeros((batch_size, max_length), dtype="int32"),
            ops.zeros((batch_size,), dtype="bool"),
        )
        _, _, _, tokens, _ = tf.while_loop(
            cond, body, loop_vars, maximum_iterations=max_length
        )
        return tokens

    def beam_decode(self, source_ids, source_padding_mask, bos_id, eos_id,
                    num_beams=4, length_penalty=0.6, max_length=None, pad_id=0):
        """Beam search over a batch of sources: keras-hub's `BeamSampler`
        (`next(prompt, cache, index)` over `decode_step`; the cache it
        carries and reorders is the self-attention cache, one per beam), with
        two additions it lacks:

        - a beam that has emitted `eos_id` is frozen: its next id is
          `pad_id` with probability 1, so its score stops changing;
        - the finished beams are ranked by `log p / ((5 + n) / 6) **
          length_penalty` (GNMT, Wu et al. 2016), `n` the ids up to and
          including eos; 0 ranks by `log p` alone.

        Args:
            source_ids, source_padding_mask, bos_id, eos_id, max_length: as
                in `greedy_decode`.
            num_beams: int >= 1.
            length_penalty: float >= 0.
            pad_id: int, the id written after a beam's eos.

        Returns:
            int32 tensor `(batch, max_length)` in `greedy_decode`'s layout:
            the best beam's ids after bos, eos included, 0 afterwards.
        """
        import keras_hub

        max_length = self._check_max_length(max_length)
        check_positive_ints(num_beams=num_beams)
        if not length_penalty >= 0:
            raise ValueError(f"`length_penalty` must be >= 0. Received: {length_penalty}")
        self._build_if_needed()
        source_padding_mask = ops.cast(source_padding_mask, "bool")
        batch_size = ops.shape(source_ids)[0]
        cross_cache = self.encode(source_ids, source_padding_mask)
        eos_id = ops.cast(eos_id, "int32")
        # The buffer: bos at position 0 (kept), then max_length ids.
        prompt = ops.concatenate([
            ops.full((batch_size, 1), ops.cast(bos_id, "int32"), dtype="int32"),
            ops.zeros((batch_size, max_length), dtype="int32")], axis=1)
        mask = ops.concatenate([ops.ones((batch_size, 1), "bool"),
                                ops.zeros((batch_size, max_length), "bool")], axis=1)
        # Only the self-attention cache differs between beams. The sampler
        # reorders beams within a source, so row b * num_beams + k always
        # belongs to source b: the cross-attention cache and the source mask
        # are repeated once here, not carried (and gathered) every step.
        cross = ops.repeat(cross_cache, num_beams, axis=0)
        padding = ops.repeat(source_padding_mask, num_beams, axis=0)
        frozen = ops.log(ops.one_hot(pad_id, self.vocabulary_size) + 1e-30)  # (vocab,)

        def next(prompt, self_cache, index):
            token = ops.slice(prompt, [0, index - 1], [ops.shape(prompt)[0], 1])
            logits, self_cache = self.decode_step(token, index - 1, self_cache, cross,
                                                  padding)
            # A beam whose ids so far (after bos) hold eos is finished.
            positions = ops.arange(ops.shape(prompt)[1])[None, :]
            done = ops.any(ops.logical_and(ops.equal(prompt, eos_id),
                                           ops.logical_and(positions >= 1,
                                                           positions < index)), axis=1)
            logits = ops.where(done[:, None], ops.cast(frozen, logits.dtype)[None, :],
                               logits)
            return logits, None, self_cache

        sampler = keras_hub.samplers.BeamSampler(num_beams=num_beams,
                                                 return_all_beams=True)
        beams, log_probs = sampler(next, prompt, cache=self.initial_self_cache(batch_size),
                                   index=1, mask=mask,
                                   stop_token_ids=(eos_id,), model=self)
        beams = beams[:, :, 1:]                                   # (batch, beams, T)
        is_eos = ops.cast(ops.equal(beams, eos_id), "int32")
        seen = ops.cumsum(is_eos, axis=-1)
        # ids up to and including the first eos; the rest is padding.
        keep = ops.logical_or(ops.equal(seen, 0),
                              ops.logical_and(ops.equal(seen, 1), ops.equal(is_eos, 1)))
        lengths = ops.sum(ops.cast(keep, "float32"), axis=-1)
        scores = log_probs / ops.power((5.0 + lengths) / 6.0, length_penalty)
        best = ops.argmax(scores, axis=-1)                          # (batch,)
        tokens = ops.take_along_axis(ops.where(keep, beams, 0), best[:, None, None],
                                     axis=1)
        return ops.cast(ops.squeeze(tokens, axis=1), "int32")

    # -------------------------------------------------------------- export
    def tflite_archive(self, source_length=None):
        """A `keras.export.ExportArchive` with the endpoints `encode` and
        `decode` (`TFLITE_SIGNATURES`), batch 1, static shapes, float32 and
        int32 tensors only: the source of
        `tf.lite.TFLiteConverter.from_saved_model(dir, signature_keys=
        ["encode", "decode"])` on TFLite builtins. The greedy loop runs in the
        app, passing `self_cache` from one `decode` to the next.

        encode  source_ids int32 (1, S), source_padding_mask int32 (1, S)
                -> cross_cache float32 (1, layers, 2, S, heads, head_dim)
        decode  token_ids int32 (1, 1), index int32 (), self_cache float32
                (1, layers, 2, max_target_length, heads, head_dim),
                cross_cache float32 (as above), source_padding_mask int32 (1, S)
                -> logits float32 (1, vocabulary_size), self_cache float32

        Args:
            source_length: int, the static source length `S`. Defaults to
                `max_source_length`.

        Returns:
            The archive; `write_out(dir)` writes the SavedModel.
        """
        if source_length is None:
            source_length = self.max_source_length
        check_positive_ints(source_length=source_length)
        if source_length > self.max_source_length:
            raise ValueError(
                "`source_length` must be at most `max_source_length`. Received: "
                f"source_length={source_length}, "
                f"max_source_length={self.max_source_length}"
            )
        self._build_if_needed()
        caches = (self.num_decoder_layers, 2)
        heads = (self.num_heads, self.head_dim)
        self_cache_shape = (1,) + caches + (self.max_target_length,) + heads
        cross_cache_shape = (1,) + caches + (source_length,) + heads

        def encode(source_ids, source_padding_mask):
            cross_cache = self.encode(source_ids, source_padding_mask)
            return {"cross_cache": ops.cast(cross_cache, "float32")}

        def decode(token_ids, index, self_cache, cross_cache, source_padding_mask):
            logits, self_cache = self.decode_step(
                token_ids, index, self_cache, cross_cache, source_padding_mask
            )
            return {"logits": logits, "self_cache": ops.cast(self_cache, "float32")}

        source_specs = [
            tf.TensorSpec((1, source_length), tf.int32, name="source_ids"),
            tf.TensorSpec((1, source_length), tf.int32, name="source_padding_mask"),
        ]
        archive = keras.export.ExportArchive()
        archive.track(self)
        archive.add_endpoint("encode", encode, input_signature=source_specs)
        archive.add_endpoint("decode", decode, input_signature=[
            tf.TensorSpec((1, 1), tf.int32, name="token_ids"),
            tf.TensorSpec((), tf.int32, name="index"),
            tf.TensorSpec(self_cache_shape, tf.float32, name="self_cache"),
            tf.TensorSpec(cross_cache_shape, tf.float32, name="cross_cache"),
            source_specs[1],
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
                "num_encoder_layers": self.num_encoder_layers,
                "num_decoder_layers": self.num_decoder_layers,
                "dropout": self.dropout,
                "max_source_length": self.max_source_length,
                "max_target_length": self.max_target_length,
                "norm_first": self.norm_first,
                "tie_embeddings": self.tie_embeddings,
            }
        )
        return config
