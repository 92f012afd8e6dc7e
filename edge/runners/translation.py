"""Runner of `"task": "translation"` bundles: German text -> English text.

Bundle: model.tflite with two signatures (the layout of DESIGN.md for autoregressive
models on TFLite builtins; the loop runs here, not in the graph):

  encode  source_ids int32 (1, S), source_padding_mask int32 (1, S)
          -> cross_cache float32 (1, layers, 2, S, heads, head_dim)
  decode  token_ids int32 (1, 1), index int32 (), self_cache float32
          (1, layers, 2, T, heads, head_dim), cross_cache, source_padding_mask
          -> logits float32 (1, vocabulary), self_cache float32

and spm.model (one SentencePiece model for both languages). Manifest keys read here:
tokenizer, max_source_length (S), max_target_length (T), max_text_bytes, pad_id, bos_id,
eos_id, special_ids.

`greedy_decode` is the one numpy greedy loop over those two signatures: the edge app runs
it, and the export step (export/modules/translation.py) measures every TFLite variant
with it, so what the quantization report measures is what the device runs.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .base import (
    BundleError,
    Manifest,
    Runner,
    SentencePieceTokenizer,
    _require,
    detokenize,
    positive_int,
    preview,
    register_runner,
)

ENCODE, DECODE = "encode", "decode"
SIGNATURES = (ENCODE, DECODE)

Signature = Callable[..., Mapping[str, np.ndarray]]


def greedy_decode(encode: Signature, decode: Signature, source_ids: np.ndarray,
                  self_cache_shape: Sequence[int], bos_id: int, eos_id: int,
                  max_length: int, pad_id: int = 0) -> np.ndarray:
    """Greedy (argmax) decoding of one source with the `encode` and `decode` signatures.

    `encode` runs once; then `decode` runs once per generated token, fed the previous token,
    its position and the self-attention cache it returned the step before (zeros at first),
    until it emits `eos_id` or `max_length` tokens were generated: the loop of
    `models.Translator.greedy_decode`, batch 1.

    Args:
        encode, decode: callables taking the signature's inputs by name and returning its
            outputs by name (an interpreter's signature runners, or any wrapper of them).
        source_ids: int (S,) or (1, S) source token ids, right-padded with `pad_id` to the
            signature's static length S.
        self_cache_shape: the shape of decode's `self_cache` input,
            (1, layers, 2, T, heads, head_dim).
        bos_id, eos_id: the first decoder input and the end-of-sequence id.
        max_length: the number of tokens to generate at most (at most T).

    Returns:
        int32 (n,): the generated ids after bos, eos included when it was emitted
        (n <= max_length).
    """
    source_ids = np.asarray(source_ids, dtype=np.int32).reshape(1, -1)
    padding_mask = (source_ids != pad_id).astype(np.int32)
    cross_cache = encode(source_ids=source_ids,
                         source_padding_mask=padding_mask)["cross_cache"]
    self_cache = np.zeros(tuple(self_cache_shape), dtype=np.float32)
    token = np.full((1, 1), bos_id, dtype=np.int32)
    generated: list[int] = []
    for index in range(max_length):
        out = decode(token_ids=token, index=np.array(index, dtype=np.int32),
                     self_cache=self_cache, cross_cache=cross_cache,
                     source_padding_mask=padding_mask)
        self_cache = out["self_cache"]
        next_id = int(np.argmax(out["logits"][0]))
        generated.append(next_id)
        if next_id == eos_id:
            break
        token = np.full((1, 1), next_id, dtype=np.int32)
    return np.array(generated, dtype=np.int32)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def beam_decode(encode: Signature, decode: Signature, source_ids: np.ndarray,
                self_cache_shape: Sequence[int], bos_id: int, eos_id: int,
                max_length: int, pad_id: int = 0, num_beams: int = 4,
                length_penalty: float = 0.6) -> np.ndarray:
    """Beam search of one source with the `encode` and `decode` signatures: the search of
    `models.Translator.beam_decode`, batch 1, one `decode` call per live beam and step.

    Each step extends every live beam by its `num_beams` most likely ids and keeps the
    `num_beams` best sums of log-probabilities; a beam that emitted `eos_id` is kept as it
    is. When every kept beam has ended (or after `max_length` ids) the beam with the best
    `log p / ((5 + n) / 6) ** length_penalty` wins, `n` its ids (eos included).

    Returns:
        int32 (n,): the best beam's ids after bos, eos included when it was emitted.
    """
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    source_ids = np.asarray(source_ids, dtype=np.int32).reshape(1, -1)
    padding_mask = (source_ids != pad_id).astype(np.int32)
    cross_cache = encode(source_ids=source_ids,
                         source_padding_mask=padding_mask)["cross_cache"]
    # (score, ids, self_cache, finished)
    beams = [(0.0, [], np.zeros(tuple(self_cache_shape), dtype=np.float32), False)]
    for index in range(max_length):
        candidates = []
        for score, ids, cache, finished in beams:
            if finished:
                candidates.append((score, ids, cache, True))
                continue
            token = np.full((1, 1), ids[-1] if ids else bos_id, dtype=np.int32)
            out = decode(token_ids=token, index=np.array(index, dtype=np.int32),
                         self_cache=cache, cross_cache=cross_cache,
                         source_padding_mask=padding_mask)
            log_p = _log_softmax(out["logits"][0])
            for next_id in np.argsort(-log_p, kind="stable")[:num_beams]:
                candidates.append((score + float(log_p[next_id]), ids + [int(next_id)],
                                   out["self_cache"], int(next_id) == eos_id))
        beams = sorted(candidates, key=lambda c: -c[0])[:num_beams]
        if all(finished for *_, finished in beams):
            break
    best = max(beams, key=lambda b: b[0] / ((5.0 + len(b[1])) / 6.0) ** length_penalty)
    return np.array(best[1], dtype=np.int32)


def format_translation(result: dict[str, Any]) -> str:
    """translation<TAB>latency_ms<TAB>source preview."""
    return "{}\t{:.2f}\t{}".format(result["translation"], result["latency_ms"],
                                   preview(result["text"]))


class TranslationRunner(Runner):
    """run(text) -> {"text", "translation", "token_ids", "latency_ms"}.

    Decoding is greedy, or beam search with `--beams N` (N > 1; the manifest's
    `num_beams` and `length_penalty` are the defaults of the library options
    `beams` and `length_penalty`).

    `token_ids` are the generated ids (eos included when emitted). Library extras:
    translate(texts), tokenize(text), generate(source_ids), max_source_length,
    max_target_length.
    """

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--beams", type=positive_int, default=None, metavar="N",
                            help="beam search with N beams (1 = greedy, the default)")

    def __init__(self, bundle_dir: str | os.PathLike, manifest: Manifest,
                 num_threads: int | None = None, options: Mapping[str, Any] | None = None):
        super().__init__(bundle_dir, manifest, num_threads, options)
        beams = self.options.get("beams")
        self.num_beams = 1 if beams is None else beams
        if type(self.num_beams) is not int or self.num_beams < 1:
            raise ValueError(f"beams must be an integer >= 1, got {beams!r}")
        penalty = self.options.get("length_penalty")
        self.length_penalty = float(manifest.raw.get("length_penalty", 0.6)
                                    if penalty is None else penalty)
        self.tokenizer = SentencePieceTokenizer.from_manifest(
            self.path, manifest, length_key="max_source_length")
        self.processor = self.tokenizer.processor
        self.max_source_length = self.tokenizer.max_sequence_length
        self.max_target_length = manifest.get_int("max_target_length", minimum=1)
        self.bos_id = manifest.get_int("bos_id")
        self.eos_id = manifest.get_int("eos_id")
        special = manifest.raw.get("special_ids")
        _require(isinstance(special, list) and all(type(i) is int for i in special),
                 f"manifest.json: special_ids must be a list of integers, got {special!r}")
        self.special_ids = tuple(special)
        self.encoder, self.decoder = self.signature(ENCODE), self.signature(DECODE)
        self.self_cache_shape = self._check_tensors()

    def _check_tensors(self) -> tuple[int, ...]:
        """The signatures' tensors must be what `greedy_decode` feeds; returns the
        self-attention cache shape."""
        model = self.manifest.model
        encode_in = self.encoder.get_input_details()
        decode_in = self.decoder.get_input_details()
        decode_out = self.decoder.get_output_details()
        for sig, details, names in (
                (ENCODE, encode_in, ("source_ids", "source_padding_mask")),
                (ENCODE, self.encoder.get_output_details(), ("cross_cache",)),
                (DECODE, decode_in, ("token_ids", "index", "self_cache", "cross_cache",
                                     "source_padding_mask")),
                (DECODE, decode_out, ("logits", "self_cache"))):
            missing = sorted(set(names) - set(details))
            _require(not missing, f"{model}: signature {sig!r} lacks tensors {missing} "
                     f"(it has {sorted(details)})")
        for name in ("self_cache", "cross_cache"):
            dtype = np.dtype(decode_in[name]["dtype"])
            _require(dtype == np.float32, f"{model}: decode input {name!r} is {dtype.name}; "
                     "this runner passes float32 caches")
        _require(np.dtype(decode_out["logits"]["dtype"]) == np.float32,
                 f"{model}: decode output 'logits' must be float32")
        source_shape = [int(d) for d in encode_in["source_ids"]["shape"]]
        if source_shape != [1, self.max_source_length]:
            raise BundleError(f"{model}: encode takes source_ids of shape {source_shape} but "
                              f"manifest.json says max_source_length="
                              f"{self.max_source_length}")
        cache_shape = tuple(int(d) for d in decode_in["self_cache"]["shape"])
        _require(len(cache_shape) == 6 and cache_shape[3] == self.max_target_length,
                 f"{model}: decode's self_cache has shape {list(cache_shape)}, expected "
                 f"(1, layers, 2, max_target_length={self.max_target_length}, heads, "
                 "head_dim)")
        return cache_shape

    def tokenize(self, text: str) -> np.ndarray:
        """int32 (max_source_length,) source ids, as the pipeline makes them."""
        return self.tokenizer(text)

    def generate(self, source_ids: np.ndarray) -> np.ndarray:
        """The ids of padded source ids: greedy (`greedy_decode`) or, with beams > 1,
        beam search (`beam_decode`)."""
        if self.num_beams > 1:
            return beam_decode(self.encoder, self.decoder, source_ids, self.self_cache_shape,
                               self.bos_id, self.eos_id, self.max_target_length,
                               self.tokenizer.pad_id, self.num_beams, self.length_penalty)
        return greedy_decode(self.encoder, self.decoder, source_ids, self.self_cache_shape,
                             self.bos_id, self.eos_id, self.max_target_length,
                             self.tokenizer.pad_id)

    def infer(self, text: str) -> dict[str, Any]:
        ids = self.generate(self.tokenize(text))
        return {"translation": detokenize(self.processor, ids, self.eos_id,
                                          self.special_ids),
                "token_ids": [int(i) for i in ids]}

    def format(self, result: dict[str, Any]) -> str:
        return format_translation(result)

    def translate(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """One `run` result per text."""
        return [self.run(t) for t in texts]


register_runner("translation", TranslationRunner)
