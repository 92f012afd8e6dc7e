"""Runner of `"task": "language_modeling"` bundles: a prompt -> its continuation, streamed.

Bundle: model.tflite with two signatures (the prefill/decode layout of litert-torch's
generative export; the sampling loop runs here, not in the graph):

  prefill  token_ids int32 (1, P): [bos] + prompt ids, right-padded to P; length int32 ()
           -> logits float32 (1, vocabulary) of position length - 1,
              cache float32 (1, layers, 2, T, heads, head_dim)
  decode   token_ids int32 (1, 1), index int32 (): its position, cache
           -> logits float32 (1, vocabulary), cache

and spm.model. Manifest keys read here: tokenizer, max_sequence_length (T),
prefill_length (P), max_text_bytes, pad_id, bos_id, eos_id, special_ids, and the sampling
defaults under `generate` (strategy, temperature, top_k, top_p, seed, max_new_tokens).

`generate_tokens` (the prefill/decode loop, a generator of ids) and `score_tokens`
(teacher-forced log-likelihood over the same two signatures) are what the export step
(export/modules/language_modeling.py) measures every TFLite variant with, so the
quantization report measures what the device runs. Sampling is numpy with a seeded
`numpy.random.Generator`: the same seed, prompt and bundle give the same text.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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

PREFILL, DECODE = "prefill", "decode"
SIGNATURES = (PREFILL, DECODE)
STRATEGIES = ("greedy", "random", "top_k", "top_p")

Signature = Callable[..., Mapping[str, np.ndarray]]


def sample_next(logits: np.ndarray, rng: np.random.Generator | None, strategy: str = "greedy",
                temperature: float = 1.0, top_k: int = 40, top_p: float = 0.9) -> int:
    """The next id from one position's logits (vocabulary,): argmax for "greedy" (or a
    temperature <= 0); else a draw from softmax(logits / temperature) over every token
    ("random"), the `top_k` most likely ("top_k") or the smallest set whose probability
    reaches `top_p` ("top_p"), the strategies of keras-hub's samplers."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    if strategy == "greedy" or temperature <= 0:
        return int(np.argmax(logits))
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    scaled = logits / temperature
    if strategy == "top_k":
        keep = np.argsort(-scaled, kind="stable")[: max(int(top_k), 1)]
    else:
        keep = np.arange(scaled.size)
    probabilities = np.exp(scaled[keep] - scaled[keep].max())
    probabilities /= probabilities.sum()
    if strategy == "top_p":
        order = np.argsort(-probabilities, kind="stable")
        before = np.cumsum(probabilities[order]) - probabilities[order]
        order = order[before < top_p] if top_p < 1 else order
        keep, probabilities = keep[order], probabilities[order] / probabilities[order].sum()
    return int(keep[rng.choice(keep.size, p=probabilities)])


def prefill_inputs(prompt_ids: Sequence[int], prefill_length: int,
                   pad_id: int = 0) -> dict[str, np.ndarray]:
    """prefill's inputs: the ids right-padded to `prefill_length`, and their count."""
    prompt_ids = [int(i) for i in prompt_ids]
    if not 1 <= len(prompt_ids) <= prefill_length:
        raise ValueError(f"a prompt of {len(prompt_ids)} ids: prefill takes 1 to "
                         f"{prefill_length}")
    ids = np.full((1, prefill_length), pad_id, dtype=np.int32)
    ids[0, : len(prompt_ids)] = prompt_ids
    return {"token_ids": ids, "length": np.array(len(prompt_ids), dtype=np.int32)}


def generate_tokens(prefill: Signature, decode: Signature, prompt_ids: Sequence[int],
                    prefill_length: int, max_new_tokens: int, eos_id: int,
                    choose: Callable[[np.ndarray], int], max_sequence_length: int,
                    pad_id: int = 0) -> Iterator[int]:
    """Yields the ids that follow `prompt_ids` ([bos] + prompt tokens), one per step, as
    they are produced: `prefill` runs once over the prompt, then `decode` once per token,
    fed the previous id, its position and the cache it returned the step before. Stops
    after `eos_id` (which is yielded), after `max_new_tokens` ids, or when the sequence
    fills the cache (`max_sequence_length`). `choose(logits (vocabulary,)) -> id` picks
    each id (`sample_next`)."""
    out = prefill(**prefill_inputs(prompt_ids, prefill_length, pad_id))
    cache, logits = out["cache"], out["logits"][0]
    position = len(prompt_ids)
    for _ in range(min(max_new_tokens, max_sequence_length - position)):
        token = choose(logits)
        yield token
        if token == eos_id or position >= max_sequence_length - 1:
            return
        out = decode(token_ids=np.full((1, 1), token, dtype=np.int32),
                     index=np.array(position, dtype=np.int32), cache=cache)
        cache, logits = out["cache"], out["logits"][0]
        position += 1


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def score_tokens(prefill: Signature, decode: Signature, ids: Sequence[int],
                 prefill_length: int, pad_id: int = 0) -> tuple[float, int]:
    """(negative log-likelihood in nats, number of predicted ids) of `ids` = [bos] tokens
    [eos] under teacher forcing: `prefill` of [bos] predicts ids[1], then `decode` of
    ids[i] at position i predicts ids[i + 1]: the test perplexity of the task, measured
    through the device's two signatures."""
    ids = [int(i) for i in ids]
    out = prefill(**prefill_inputs(ids[:1], prefill_length, pad_id))
    cache, nll = out["cache"], 0.0
    for position in range(1, len(ids)):
        nll -= float(log_softmax(out["logits"][0])[ids[position]])
        if position == len(ids) - 1:
            break
        out = decode(token_ids=np.full((1, 1), ids[position], dtype=np.int32),
                     index=np.array(position, dtype=np.int32), cache=cache)
        cache = out["cache"]
    return nll, len(ids) - 1


def format_generation(result: dict[str, Any]) -> str:
    """text<TAB>tokens<TAB>tokens/s<TAB>latency_ms."""
    return "{}\t{} tokens\t{:.1f} tokens/s\t{:.2f}".format(
        result["generated_text"].replace("\n", " "), len(result["token_ids"]),
        result["tokens_per_second"], result["latency_ms"])


def _strategy(value: str) -> str:
    if value not in STRATEGIES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(STRATEGIES)}")
    return value


class LanguageModelRunner(Runner):
    """run(prompt) -> {"text", "generated_text", "completion", "token_ids",
    "time_to_first_token_ms", "tokens_per_second", "latency_ms"}.

    `generated_text` is the prompt and its continuation as one text, `completion` the
    continuation alone, `token_ids` the generated ids (eos included when emitted).
    `stream(prompt, write)` writes the text as it is produced (the CLI's plain mode).
    Library extras: tokenize(prompt), generate(prompt_ids) (an iterator of ids),
    score(ids) (nats, count).
    """

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--max-new-tokens", type=positive_int, default=None, metavar="N",
                            help="ids to generate at most (default: the manifest's)")
        parser.add_argument("--sampling", type=_strategy, default=None,
                            metavar="{" + ",".join(STRATEGIES) + "}",
                            help="sampling strategy (default: the manifest's)")
        parser.add_argument("--temperature", type=float, default=None, metavar="T",
                            help="softmax temperature; <= 0 is greedy")
        parser.add_argument("--top-k-tokens", type=positive_int, default=None, metavar="K",
                            help="top_k sampling: the K most likely tokens")
        parser.add_argument("--top-p", type=float, default=None, metavar="P",
                            help="top_p (nucleus) sampling: the smallest set of mass P")
        parser.add_argument("--seed", type=int, default=None, metavar="S",
                            help="sampling seed: the same seed gives the same text")

    def __init__(self, bundle_dir: str | os.PathLike, manifest: Manifest,
                 num_threads: int | None = None, options: Mapping[str, Any] | None = None):
        super().__init__(bundle_dir, manifest, num_threads, options)
        self.max_sequence_length = manifest.get_int("max_sequence_length", minimum=2)
        self.prefill_length = manifest.get_int("prefill_length", minimum=1)
        # [bos] + at most prefill_length - 1 prompt tokens fill the prefill.
        self.tokenizer = SentencePieceTokenizer.from_manifest(
            self.path, manifest, length_key="prefill_length")
        self.tokenizer.max_sequence_length = self.prefill_length - 1
        self.processor = self.tokenizer.processor
        self.bos_id = manifest.get_int("bos_id")
        self.eos_id = manifest.get_int("eos_id")
        self.pad_id = self.tokenizer.pad_id
        special = manifest.raw.get("special_ids")
        _require(isinstance(special, list) and all(type(i) is int for i in special),
                 f"manifest.json: special_ids must be a list of integers, got {special!r}")
        self.special_ids = tuple(special)
        defaults = manifest.raw.get("generate")
        _require(isinstance(defaults, dict),
                 "manifest.json: generate must be an object of sampling defaults")
        self.settings = self._settings(defaults, self.options)
        self.prefill, self.decode = self.signature(PREFILL), self.signature(DECODE)
        self._check_tensors()

    @staticmethod
    def _settings(defaults: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
        """The sampling settings: an option given (not None) wins over the manifest."""
        names = {"strategy": "sampling", "temperature": "temperature",
                 "top_k": "top_k_tokens", "top_p": "top_p", "seed": "seed",
                 "max_new_tokens": "max_new_tokens"}
        settings = {}
        for key, option in names.items():
            value = options.get(option, options.get(key))
            settings[key] = defaults.get(key) if value is None else value
        checks = (("strategy", settings["strategy"] in STRATEGIES, f"one of {STRATEGIES}"),
                  ("temperature", isinstance(settings["temperature"], (int, float)),
                   "a number"),
                  ("top_k", type(settings["top_k"]) is int and settings["top_k"] >= 1,
                   "an integer >= 1"),
                  ("top_p", isinstance(settings["top_p"], (int, float))
                   and 0 < settings["top_p"] <= 1, "in (0, 1]"),
                  ("seed", type(settings["seed"]) is int, "an integer"),
                  ("max_new_tokens", type(settings["max_new_tokens"]) is int
                   and settings["max_new_tokens"] >= 1, "an integer >= 1"))
        for key, ok, what in checks:
            if not ok:
                raise ValueError(f"sampling setting {key} must be {what}, got "
                                 f"{settings[key]!r}")
        return settings

    def _check_tensors(self) -> None:
        """The signatures' tensors must be what `generate_tokens` feeds."""
        model = self.manifest.model
        prefill_in = self.prefill.get_input_details()
        decode_in = self.decode.get_input_details()
        for sig, details, names in (
                (PREFILL, prefill_in, ("token_ids", "length")),
                (PREFILL, self.prefill.get_output_details(), ("logits", "cache")),
                (DECODE, decode_in, ("token_ids", "index", "cache")),
                (DECODE, self.decode.get_output_details(), ("logits", "cache"))):
            missing = sorted(set(names) - set(details))
            _require(not missing, f"{model}: signature {sig!r} lacks tensors {missing} "
                     f"(it has {sorted(details)})")
        shape = [int(d) for d in prefill_in["token_ids"]["shape"]]
        if shape != [1, self.prefill_length]:
            raise BundleError(f"{model}: prefill takes token_ids of shape {shape} but "
                              f"manifest.json says prefill_length={self.prefill_length}")
        cache = [int(d) for d in decode_in["cache"]["shape"]]
        _require(len(cache) == 6 and cache[3] == self.max_sequence_length
                 and np.dtype(decode_in["cache"]["dtype"]) == np.float32,
                 f"{model}: decode's cache is {cache}, expected float32 (1, layers, 2, "
                 f"max_sequence_length={self.max_sequence_length}, heads, head_dim)")

    def tokenize(self, prompt: str) -> list[int]:
        """[bos] + the prompt's ids, as the pipeline makes them (at most prefill_length)."""
        ids = self.tokenizer(prompt)
        return [self.bos_id] + [int(i) for i in ids[ids != self.pad_id]]

    def generate(self, prompt_ids: Sequence[int], **settings: Any) -> Iterator[int]:
        """The ids after `prompt_ids`, as they are produced; `settings` override the
        runner's (strategy, temperature, top_k, top_p, seed, max_new_tokens)."""
        s = {**self.settings, **settings}
        rng = np.random.default_rng(s["seed"])
        return generate_tokens(
            self.prefill, self.decode, prompt_ids, self.prefill_length, s["max_new_tokens"],
            self.eos_id, lambda logits: sample_next(logits, rng, s["strategy"],
                                                    s["temperature"], s["top_k"],
                                                    s["top_p"]),
            self.max_sequence_length, self.pad_id)

    def score(self, ids: Sequence[int]) -> tuple[float, int]:
        """(negative log-likelihood in nats, predicted ids) of [bos] tokens [eos]."""
        return score_tokens(self.prefill, self.decode, ids, self.prefill_length, self.pad_id)

    def text_of(self, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> str:
        return detokenize(self.processor, list(prompt_ids) + list(new_ids), self.eos_id,
                          self.special_ids)

    def stream(self, prompt: str, write: Callable[[str], Any], **settings: Any
               ) -> dict[str, Any]:
        """Generates from `prompt`, writing the prompt's text and then each new piece of
        text as soon as its id is produced; returns the `run` result."""
        return self.run(prompt, write=write, **settings)

    def run(self, text: str, write: Callable[[str], Any] | None = None,
            **settings: Any) -> dict[str, Any]:
        text = self.check_input(text)
        prompt_ids = self.tokenize(text)
        shown = self.text_of(prompt_ids, [])
        if write is not None:
            write(shown)
        new_ids: list[int] = []
        start = time.perf_counter()
        first = None
        for token in self.generate(prompt_ids, **settings):
            first = first or time.perf_counter()
            new_ids.append(token)
            if write is not None:
                # sentencepiece adds the spaces between pieces while decoding: write
                # what the text gained since the last id.
                current = self.text_of(prompt_ids, new_ids)
                if current.startswith(shown):
                    write(current[len(shown):])
                shown = current
        elapsed = time.perf_counter() - start
        self.latencies_ms.append(elapsed * 1000.0)
        first = first or start
        decoded = max(len(new_ids) - 1, 0)    # ids after the first come from decode
        decode_seconds = elapsed - (first - start)
        return {"text": text,
                "generated_text": self.text_of(prompt_ids, new_ids),
                "completion": detokenize(self.processor, new_ids, self.eos_id,
                                         self.special_ids),
                "token_ids": [int(i) for i in new_ids],
                "time_to_first_token_ms": round((first - start) * 1000.0, 3),
                "tokens_per_second": round(decoded / decode_seconds, 1)
                if decoded and decode_seconds > 0 else 0.0,
                "latency_ms": round(elapsed * 1000.0, 3)}

    def format(self, result: dict[str, Any]) -> str:
        return format_generation(result)


def stream_to(out, runner: LanguageModelRunner, prompt: str) -> dict[str, Any]:
    """The CLI's plain mode: the text to `out` as it comes, then a line of figures to
    stderr."""
    result = runner.stream(prompt, lambda piece: (out.write(piece), out.flush()))
    out.write("\n")
    print(f"[{len(result['token_ids'])} tokens, first after "
          f"{result['time_to_first_token_ms']:.1f} ms, {result['tokens_per_second']:.1f} "
          f"tokens/s] {preview(prompt) or '(empty prompt)'}", file=sys.stderr)
    return result


register_runner("language_modeling", LanguageModelRunner)
