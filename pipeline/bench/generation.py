"""`python -m pipeline bench --generation CONFIG`: decoding speed of a trained
language-model or translation run, at batch 1, in one process.

Every case decodes the same test inputs greedily by `--new-tokens` ids
(language model: continuations of the first words of test texts;
translation: translations of test sentences):

  keras_no_cache   the Keras model re-run on the whole sequence (a
                   translator: encoder and decoder) for every new id (one
                   compiled function), the reference of the ratios
  keras_cache      the KV-cached loop (`CausalLanguageModel.generate`,
                   `Translator.greedy_decode`: one compiled while loop)
  saved_model      the exported SavedModel (`generate`, `serving_default`;
                   tokenization and detokenization included; it stops at eos)
  tflite_<variant> the edge app's loop over each exported TFLite variant's two
                   signatures (ai-edge-litert, 1 thread)

Time to first token: the input's pass and the first id (language model: the
cached prefill, `generate` with max_new_tokens=1, the `prefill` signature;
translation: encode + the first decode step). A task's cases are one class
here (`CASES`); the timing, ratios and report are shared. The cases run interleaved
(`measure.interleave`), so a load that comes and goes hits them alike; the
ratios are against keras_no_cache measured in the same run.
"""

from __future__ import annotations

import functools
import json
import os
import time

import numpy as np

from pipeline.bench.measure import interleave, load_average, log, machine_info, summary

REFERENCE = "keras_no_cache"


class LanguageModelCases:
    """The cases of a language model: greedy continuations of test prompts (the
    first words of test texts) by `new_tokens` ids, eos never stopping them."""

    def __init__(self, task, module, prompts: int, new_tokens: int):
        import keras_hub
        import tensorflow as tf

        from pipeline.tasks.language_modeling import agreement_prompts

        self.module, model = module, module.model          # float32, as exported
        self.texts = agreement_prompts(task.texts["test"], prompts)
        self.rows = [module.prompt_ids(t) for t in self.texts]
        self.new_tokens = new_tokens = min(
            new_tokens, model.max_sequence_length - max(len(r) for r in self.rows))
        self.description = (f"{len(self.rows)} test prompts ({min(map(len, self.rows))}-"
                            f"{max(map(len, self.rows))} ids), {new_tokens} new ids each")
        self._forward = tf.function(
            lambda ids: model({"token_ids": ids}, training=False)[0, -1],
            reduce_retracing=True)
        self._generate = tf.function(
            lambda ids: model.generate(ids, tf.ones_like(ids, tf.bool), new_tokens, -1,
                                       keras_hub.samplers.GreedySampler()),
            reduce_retracing=True)
        self._prefill = tf.function(
            lambda ids: tf.argmax(model.call_with_cache(ids, 0, model.initial_cache(1))[0][
                0, -1]), reduce_retracing=True)
        self.served = latest_saved_model(task.cfg).signatures["generate"]

    def no_cache(self, prompt):
        import tensorflow as tf

        ids = list(prompt)
        for _ in range(self.new_tokens):
            ids.append(int(tf.argmax(self._forward(tf.constant([ids], tf.int32)))))
        return ids[len(prompt):]

    def cached(self, prompt):
        import tensorflow as tf

        out = self._generate(tf.constant([prompt], tf.int32))[0, len(prompt):]
        return [int(i) for i in out]

    def saved(self, text, count=None):
        import tensorflow as tf

        out = self.served(prompt=tf.constant([text]),
                          max_new_tokens=tf.constant(count or self.new_tokens),
                          temperature=tf.constant(0.0), top_k=tf.constant(0),
                          top_p=tf.constant(1.0), seed=tf.constant(0))
        return int(out["num_tokens"][0])

    def edge(self, tflite, prompt):
        return self.module.greedy_tflite(tflite, prompt, self.new_tokens, eos_id=-1)

    def edge_first(self, tflite, prompt):
        from edge.runners.language_modeling import prefill_inputs

        return tflite("prefill", **prefill_inputs(prompt, self.module.prefill_length))

    def saved_tokens(self) -> int:
        # it stops at eos, which counts as a generated id
        return sum(n + (n < self.new_tokens) for n in (self.saved(t) for t in self.texts))

    def cases(self):
        """name -> (per-input callable, inputs); and the time-to-first-token ones."""
        import tensorflow as tf

        timed = {REFERENCE: (self.no_cache, self.rows),
                 "keras_cache": (self.cached, self.rows),
                 "saved_model": (self.saved, self.texts)}
        first = {"keras_cache": (lambda r: self._prefill(tf.constant([r], tf.int32)),
                                 self.rows),
                 "saved_model": (functools.partial(self.saved, count=1), self.texts)}
        return timed, first


class TranslationCases:
    """The cases of a translator: greedy translations of test sentences by
    `new_tokens` ids, eos never stopping them (the SavedModel stops at eos)."""

    def __init__(self, task, module, prompts: int, new_tokens: int):
        import tensorflow as tf

        from pipeline.tokenizer import BOS_ID, EOS_ID

        self.module, model = module, module.model          # float32, as exported
        self.texts = task.pairs["test"]["de"][:prompts]
        self.rows = list(module.source_ids(self.texts))
        self.new_tokens = new_tokens = min(new_tokens, model.max_target_length)
        self.description = (f"{len(self.rows)} test sentences, {new_tokens} target ids "
                            "each")
        self.bos, self.eos = BOS_ID, EOS_ID

        def full(ids, target):
            return model({"source_ids": ids, "source_padding_mask": ids != 0,
                          "target_ids": target,
                          "target_padding_mask": tf.ones_like(target)}, training=False)[0, -1]

        self._forward = tf.function(full, reduce_retracing=True)
        self._greedy = tf.function(
            lambda ids, eos: model.greedy_decode(ids, ids != 0, BOS_ID, eos, new_tokens))
        self._first = tf.function(
            lambda ids: tf.argmax(model.decode_step(
                tf.fill([1, 1], BOS_ID), 0, model.initial_self_cache(1),
                model.encode(ids, ids != 0), ids != 0)[0][0]))
        self.served = latest_saved_model(task.cfg).signatures["serving_default"]

    def no_cache(self, source):
        import tensorflow as tf

        ids, target = tf.constant(source[None, :]), [self.bos]
        for _ in range(self.new_tokens):
            target.append(int(tf.argmax(self._forward(ids, tf.constant([target],
                                                                       tf.int32)))))
        return target[1:]

    def cached(self, source, eos=-1):
        import tensorflow as tf

        return [int(i) for i in self._greedy(tf.constant(source[None, :]),
                                             tf.constant(eos))[0]]

    def saved(self, text):
        import tensorflow as tf

        return self.served(text=tf.constant([text]))["translation"]

    def edge(self, tflite, source):
        from edge.runners.translation import greedy_decode

        shape = tflite.signature("decode").get_input_details()["self_cache"]["shape"]
        return list(greedy_decode(functools.partial(tflite, "encode"),
                                  functools.partial(tflite, "decode"), source, shape,
                                  self.bos, -1, self.new_tokens))

    def edge_first(self, tflite, source):
        from edge.runners.translation import greedy_decode

        shape = tflite.signature("decode").get_input_details()["self_cache"]["shape"]
        return greedy_decode(functools.partial(tflite, "encode"),
                             functools.partial(tflite, "decode"), source, shape,
                             self.bos, -1, 1)

    def saved_tokens(self) -> int:
        # the SavedModel stops at eos: the float32 Keras model's ids up to it
        total = 0
        for source in self.rows:
            ids = [i for i in self.cached(source, self.eos)]
            total += ids.index(self.eos) + 1 if self.eos in ids else self.new_tokens
        return total

    def cases(self):
        import tensorflow as tf

        timed = {REFERENCE: (self.no_cache, self.rows),
                 "keras_cache": (self.cached, self.rows),
                 "saved_model": (self.saved, self.texts)}
        first = {"keras_cache": (lambda r: self._first(tf.constant(r[None, :])), self.rows)}
        return timed, first


CASES = {"language_modeling": LanguageModelCases, "translation": TranslationCases}
# Default report files per task.
OUTPUTS = {"language_modeling": ("docs/generation_benchmarks.json",
                                 "docs/GENERATION_BENCHMARKS.md"),
           "translation": ("docs/translation_benchmarks.json",
                           "docs/TRANSLATION_BENCHMARKS.md")}


def latest_saved_model(cfg):
    """The newest exported SavedModel version of a run, loaded."""
    import tensorflow as tf

    root = os.path.join(cfg.run_dir, "serving", cfg.export.model_name)
    versions = [int(v) for v in os.listdir(root) if v.isdigit()] \
        if os.path.isdir(root) else []
    if not versions:
        raise FileNotFoundError(f"no SavedModel under {root}: run the config with its "
                                "export first (python -m pipeline run <config>)")
    return tf.saved_model.load(os.path.join(root, str(max(versions))))


def run_generation_bench(config: str, overrides: list[str], prompts: int, new_tokens: int,
                         repeats: int, out_json: str | None, out_md: str | None,
                         command: str) -> int:
    from export.modules import make_export_module
    from export.tflite import TFLiteModel
    from pipeline.config import load_config
    from pipeline.workflow import load_trained, prepare

    start = time.time()
    load = load_average()
    cfg = load_config(config, overrides)
    if cfg.task not in CASES:
        raise ValueError(f"--generation needs a {' or '.join(CASES)} config; {config} has "
                         f"task {cfg.task!r}")
    out_json, out_md = out_json or OUTPUTS[cfg.task][0], out_md or OUTPUTS[cfg.task][1]
    task = prepare(cfg, log=lambda *_: None)
    module = make_export_module(task, load_trained(task))
    bench = CASES[cfg.task](task, module, prompts, new_tokens)
    model = module.model
    log(f"[bench] {cfg.name}: {bench.description}, greedy, batch 1")
    variants = {v: os.path.join(cfg.run_dir, "edge", f"{v}.tflite")
                for v in cfg.export.tflite_variants
                if os.path.isfile(os.path.join(cfg.run_dir, "edge", f"{v}.tflite"))}
    tflite = {v: TFLiteModel(p, num_threads=1) for v, p in variants.items()}

    timed, first = bench.cases()
    for v, m in tflite.items():
        timed[f"tflite_{v}"] = (functools.partial(bench.edge, m), bench.rows)
        first[f"tflite_{v}"] = (functools.partial(bench.edge_first, m), bench.rows)
    # Ids each case produces per run over all inputs (greedy: the same every run).
    tokens = {name: len(bench.rows) * bench.new_tokens for name in timed}
    tokens["saved_model"] = bench.saved_tokens()
    agreement = {"keras_cache": float(np.mean(
        [bench.cached(r) == bench.no_cache(r) for r in bench.rows]))}
    for v, m in tflite.items():
        agreement[f"tflite_{v}"] = float(np.mean(
            [list(bench.edge(m, r)) == bench.cached(r) for r in bench.rows]))

    def over_inputs(fn, items):
        return lambda: [fn(item) for item in items]

    log(f"[bench] generation: {len(timed)} cases x {repeats} repeats ...")
    samples = interleave({k: (over_inputs(*v), 1) for k, v in timed.items()}, repeats,
                         warmup=1, label="generation")
    log("[bench] time to first token ...")
    firsts = interleave({k: (over_inputs(*v), 1) for k, v in first.items()}, repeats,
                        warmup=1, label="first token")

    results = {}
    for name, seconds in samples.items():
        s = summary(seconds)
        results[name] = {"tokens_per_second": round(tokens[name] / s["median_s"], 1),
                         "seconds_all_inputs": s}
        if name in firsts:
            results[name]["time_to_first_token_ms"] = round(
                1000.0 * summary(firsts[name])["median_s"] / len(bench.rows), 3)
        if name in agreement:
            results[name]["greedy_ids_equal_reference"] = agreement[name]
    reference = results[REFERENCE]["tokens_per_second"]
    for r in results.values():
        r["ratio_vs_keras_no_cache"] = round(r["tokens_per_second"] / reference, 2)
    report = {"command": command, "experiment": cfg.name, "task": cfg.task,
              "run_dir": cfg.run_dir, "inputs": bench.description,
              "prompts": len(bench.rows), "new_tokens": bench.new_tokens,
              "repeats": repeats, "parameters": int(model.count_params()), "batch": 1,
              "machine": machine_info(), "load_average_at_start": load,
              "cases": results, "seconds": round(time.time() - start, 1)}
    text = format_table(report)
    log(text)
    for path, content in ((out_json, json.dumps(report, indent=1)),
                          (out_md, f"# Decoding speed: {cfg.name}\n\n`{command}`\n\n"
                                   f"{text}\n")):
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
    log(f"wrote {out_json}, {out_md} ({report['seconds'] / 60:.1f} min)")
    return 0


def format_table(report: dict) -> str:
    lines = [f"{report['experiment']}: {report['parameters']:,} parameters, batch 1, "
             f"{report['inputs']}, greedy; "
             f"median of {report['repeats']} interleaved repeats; load average at start "
             f"{report['load_average_at_start']}",
             "",
             "| case | tokens/s | vs Keras without cache | time to first token (ms) | "
             "same ids as reference |",
             "|---|---:|---:|---:|---:|"]
    for name, r in report["cases"].items():
        first = r.get("time_to_first_token_ms")
        same = r.get("greedy_ids_equal_reference")
        lines.append(f"| {name} | {r['tokens_per_second']:,.1f} | "
                     f"{r['ratio_vs_keras_no_cache']:.2f}x | "
                     f"{'-' if first is None else f'{first:.2f}'} | "
                     f"{'-' if same is None else f'{100 * same:.0f}%'} |")
    lines.append("")
    lines.append("same ids as reference: keras_cache against keras_no_cache, each TFLite "
                 "variant against keras_cache (greedy ids of every input). The SavedModel "
                 "stops at eos (its ids counted up to it, eos included); its time to first "
                 "token includes tokenization.")
    return "\n".join(lines)
