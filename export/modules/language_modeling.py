"""Export module of language modeling (`models.CausalLanguageModel`).

SavedModel signatures (tensorflow-text SentencePiece, the cached generation
loop and detokenization inside the graph; TF core and tensorflow-text ops
only, as TF Serving needs):

  serving_default  prompt: string (batch,)
                   -> text: string (batch,): the prompt and its continuation,
                      completion: string (batch,): the continuation alone,
                      token_ids: int32 (batch, n): the generated ids (0 after
                      a row's end), num_tokens: int32 (batch,)
                   with the config's `generate.*` settings
  generate         prompt: string (batch,), max_new_tokens: int32 (),
                   temperature: float32 () (<= 0: greedy), top_k: int32 ()
                   (<= 0: off), top_p: float32 () (1: off), seed: int32 ()
                   -> the same outputs

A prompt becomes `[bos]` and at most `max_sequence_length - 2` of its ids.
Sampling is stateless (`models.causal_lm.seeded_logits_processor`: Gumbel-max
noise from `(seed, step)`), so a request's seed alone fixes its sample, with
no random state shared between requests. Generation stops at eos, after
`max_new_tokens` ids or at `max_sequence_length`.

TFLite: the `prefill` and `decode` signatures of
`CausalLanguageModel.tflite_archive()` (batch 1, static shapes, the KV cache
in and out, builtins only). Variants float32, float16 and dynamic_range (int8
and int16x8 calibrate one signature in export/quantize.py, so for this
two-signature model they fail and the report lists them as failed). Each
variant is measured with the loops the edge app runs
(`edge/runners/language_modeling`): test perplexity over every test text
(teacher-forced through prefill and decode), the share of test prompts whose
greedy continuation (first `AGREEMENT_TOKENS` ids) equals the Keras model's,
time to first token (prefill) and decode tokens/s. The gate compares
perplexities (`export.accuracy_gate_points` perplexity points). The written
SavedModel is checked the same way (`saved_model_metrics`).
"""

from __future__ import annotations

import functools
import time

import numpy as np

from export.modules import register_export_module
from export.modules.base import ExportModule, measure_latency_ms
from pipeline.tasks.language_modeling import AGREEMENT_TOKENS, agreement_prompts

WARMUP_TEXTS = 8
LATENCY_TOKENS = 32


def special_ids() -> tuple[int, ...]:
    """Ids detokenization drops: pad, unk, bos, eos."""
    from pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

    return (PAD_ID, UNK_ID, BOS_ID, EOS_ID)


def before_eos(ids, eos_id: int, limit: int = AGREEMENT_TOKENS) -> list[int]:
    """The first `limit` ids, cut before the first eos."""
    ids = [int(i) for i in ids][:limit]
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


def sampling_settings(g) -> dict:
    """The `generate` signature's inputs that give config `g`'s sampler."""
    greedy = g.strategy == "greedy"
    return {"temperature": 0.0 if greedy else float(g.temperature),
            "top_k": int(g.top_k) if g.strategy == "top_k" else 0,
            "top_p": float(g.top_p) if g.strategy == "top_p" else 1.0,
            "seed": int(g.seed), "max_new_tokens": int(g.max_new_tokens)}


@register_export_module("language_modeling")
class LanguageModelingExport(ExportModule):
    tflite_signatures = ("prefill", "decode")
    gate_metric = "perplexity"
    gate_direction = "min"
    gate_scale = 1.0          # gate points are perplexity points
    latency_unit = (f"one generation: prefill of a test prompt + {LATENCY_TOKENS - 1} "
                    "decode steps")

    def __init__(self, task, model):
        super().__init__(task, model)
        self.max_sequence_length = self.model.max_sequence_length
        self.prefill_length = self.max_sequence_length - 1

    # ---------------------------------------------------------- SavedModel
    def serving_archive(self):
        import keras
        import keras_hub
        import tensorflow as tf

        from models.causal_lm import seeded_logits_processor
        from pipeline.tokenizer import BOS_ID, EOS_ID

        model, tokenizer = self.model, self.task.tokenizer
        longest = self.max_sequence_length
        special = tf.constant(special_ids(), tf.int32)

        def generate(prompt, max_new_tokens, temperature, top_k, top_p, seed):
            tokens = tokenizer.ragged(prompt)[:, : longest - 2]
            bos = tf.fill([tokens.nrows(), 1], tf.constant(BOS_ID, tf.int32))
            ids = tf.concat([tf.RaggedTensor.from_tensor(bos), tokens], axis=1)
            lengths = tf.cast(ids.row_lengths(), tf.int32)         # (batch,)
            dense = ids.to_tensor(0)
            mask = tf.sequence_mask(lengths, tf.shape(dense)[1])
            max_new = tf.clip_by_value(max_new_tokens, 1, longest - 1)
            out = model.generate(
                dense, mask, max_new, EOS_ID, keras_hub.samplers.GreedySampler(),
                seeded_logits_processor(seed, temperature, top_k, top_p))
            positions = tf.range(tf.shape(out)[1])[None, :]
            new = (positions >= lengths[:, None]) & (positions < (lengths + max_new)[:, None])
            ended = tf.cumsum(tf.cast(new & tf.equal(out, EOS_ID), tf.int32), axis=1) > 0
            generated = new & ~ended                       # new ids before eos
            special_id = tf.reduce_any(tf.equal(out[..., None], special), axis=-1)
            completion = tf.ragged.boolean_mask(out, generated)
            prompt_part = positions < lengths[:, None]
            whole = tf.ragged.boolean_mask(out, (prompt_part | generated) & ~special_id)
            detokenize = tokenizer.tokenizer.detokenize
            return {"text": detokenize(whole),
                    "completion": detokenize(tf.ragged.boolean_mask(
                        out, generated & ~special_id)),
                    "token_ids": completion.to_tensor(0),
                    "num_tokens": tf.cast(completion.row_lengths(), tf.int32)}

        defaults = sampling_settings(self.cfg.generate)

        def serving_default(prompt):
            return generate(prompt, tf.constant(defaults["max_new_tokens"]),
                            tf.constant(defaults["temperature"]),
                            tf.constant(defaults["top_k"]), tf.constant(defaults["top_p"]),
                            tf.constant(defaults["seed"]))

        prompt_spec = tf.TensorSpec([None], tf.string, name="prompt")
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.track(tokenizer.tokenizer)
        archive.add_endpoint("serving_default", serving_default, input_signature=[prompt_spec])
        archive.add_endpoint("generate", generate, input_signature=[
            prompt_spec,
            tf.TensorSpec([], tf.int32, name="max_new_tokens"),
            tf.TensorSpec([], tf.float32, name="temperature"),
            tf.TensorSpec([], tf.int32, name="top_k"),
            tf.TensorSpec([], tf.float32, name="top_p"),
            tf.TensorSpec([], tf.int32, name="seed")])
        return archive

    def serving_assets(self):
        return {"spm.model": self.task.tokenizer_path}

    def warmup_requests(self):
        from export.warmup import text_requests

        prompts = agreement_prompts([e["text"] for e in self.task.sample(
            "validation", WARMUP_TEXTS)])
        return text_requests(prompts, input_key="prompt")

    def saved_model_metrics(self, directory, reference) -> dict:
        """The written SavedModel's greedy continuations of the agreement prompts
        against the Keras model's (`reference["greedy_ids"]`)."""
        import tensorflow as tf

        from pipeline.tokenizer import EOS_ID

        start = time.time()
        signature = tf.saved_model.load(directory).signatures["generate"]
        out = signature(prompt=tf.constant(reference["prompts"]),
                        max_new_tokens=tf.constant(AGREEMENT_TOKENS),
                        temperature=tf.constant(0.0), top_k=tf.constant(0),
                        top_p=tf.constant(1.0), seed=tf.constant(0))
        ids = [before_eos(row[:n], EOS_ID) for row, n in
               zip(out["token_ids"].numpy(), out["num_tokens"].numpy())]
        agreement = float(np.mean([a == b for a, b in
                                   zip(ids, reference["greedy_ids"], strict=True)]))
        return {"greedy_agreement_with_keras": agreement, "prompts": len(ids),
                "tokens": AGREEMENT_TOKENS, "seconds": round(time.time() - start, 1)}

    # -------------------------------------------------------------- TFLite
    def tflite_archive(self):
        return self.model.tflite_archive(self.prefill_length)

    def calibration_inputs(self, signature, max_examples, seed):
        raise ValueError("language_modeling: integer variants calibrate one signature; "
                         "this model has two (prefill, decode): use float16 or "
                         "dynamic_range")

    def prompt_ids(self, prompt: str) -> list[int]:
        """[bos] + the prompt's ids, as the task (and the SavedModel) makes them."""
        ids, lengths = self.task.prompt_ids([prompt])
        return [int(i) for i in ids[0, : lengths[0]]]

    def signatures(self, model):
        return functools.partial(model, "prefill"), functools.partial(model, "decode")

    def greedy_tflite(self, model, prompt_ids, max_new_tokens=AGREEMENT_TOKENS,
                      eos_id=None) -> list[int]:
        """A variant's greedy ids after `prompt_ids`: the edge app's loop."""
        from edge.runners.language_modeling import generate_tokens
        from pipeline.tokenizer import EOS_ID

        prefill, decode = self.signatures(model)
        return list(generate_tokens(prefill, decode, prompt_ids, self.prefill_length,
                                    max_new_tokens, EOS_ID if eos_id is None else eos_id,
                                    lambda logits: int(np.argmax(logits)),
                                    self.max_sequence_length))

    def latency_inputs(self):
        prompt = agreement_prompts(self.task.texts["test"], 1)[0]
        return {"prompt_ids": self.prompt_ids(prompt)}

    def latency_call(self, model):
        # eos_id -1 is never emitted: always LATENCY_TOKENS ids, the same work for
        # every variant.
        return (lambda prompt_ids: self.greedy_tflite(model, prompt_ids, LATENCY_TOKENS, -1),
                self.latency_inputs())

    def evaluate_tflite(self, runner, reference):
        """Test perplexity through prefill/decode, greedy agreement with the Keras
        model on the agreement prompts, time to first token and decode speed."""
        from edge.runners.language_modeling import prefill_inputs, score_tokens
        from pipeline.tokenizer import EOS_ID

        prefill, decode = self.signatures(runner)
        nll, count = 0.0, 0
        for ids in self.task.token_ids("test"):
            n, c = score_tokens(prefill, decode, ids, self.prefill_length)
            nll, count = nll + n, count + c
        greedy = [before_eos(self.greedy_tflite(runner, self.prompt_ids(p)), EOS_ID)
                  for p in reference["prompts"]]
        agreement = float(np.mean([a == b for a, b in
                                   zip(greedy, reference["greedy_ids"], strict=True)]))
        # Time to first token: prefill of a test prompt; decode: one step.
        prompt = self.latency_inputs()["prompt_ids"]
        inputs = prefill_inputs(prompt, self.prefill_length)
        first = measure_latency_ms(prefill, inputs, runs=30)["median_ms"]
        cache = prefill(**inputs)["cache"]
        step = {"token_ids": np.ones((1, 1), np.int32),
                "index": np.array(len(prompt), np.int32), "cache": cache}
        per_token = measure_latency_ms(decode, step, runs=30)["median_ms"]
        return {"perplexity": float(np.exp(nll / max(count, 1))), "tokens": count,
                "agreement_with_keras": agreement, "agreement_prompts": len(greedy),
                "time_to_first_token_ms": first, "decode_ms_per_token": per_token,
                "decode_tokens_per_second": round(1000.0 / per_token, 1)}

    # ---------------------------------------------------------------- edge
    def bundle_files(self):
        return {"spm.model": self.task.tokenizer_path}

    def bundle_manifest(self):
        from pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID, max_text_bytes

        g = self.cfg.generate
        return {"tokenizer": "spm.model",
                "max_sequence_length": self.max_sequence_length,
                "prefill_length": self.prefill_length,
                # the task's tokenizer reads this many bytes of a text
                "max_text_bytes": max_text_bytes(self.max_sequence_length - 1),
                "pad_id": PAD_ID, "bos_id": BOS_ID, "eos_id": EOS_ID,
                "special_ids": list(special_ids()),
                "generate": {"strategy": g.strategy, "temperature": float(g.temperature),
                             "top_k": int(g.top_k), "top_p": float(g.top_p),
                             "seed": int(g.seed), "max_new_tokens": int(g.max_new_tokens)}}

