"""`python -m pipeline bench --generation CONFIG`: text-generation speed of a
trained language-model run, at batch 1, in one process.

Every case continues the same test prompts (the first words of test texts)
greedily by `--new-tokens` ids:

  keras_no_cache   the Keras model re-run on the whole sequence for every new
                   id (one compiled function), the reference of the ratios
  keras_cache      `CausalLanguageModel.generate`: one pass over the prompt,
                   then one cached step per id (one compiled while loop)
  saved_model      the exported SavedModel's `generate` signature
                   (tokenization and detokenization included; it stops at eos)
  tflite_<variant> the edge app's prefill/decode loop over each exported
                   TFLite variant (ai-edge-litert, 1 thread)

Time to first token: the prompt's pass and the first id (Keras: the cached
prefill; SavedModel: `generate` with max_new_tokens=1, tokenization
included; TFLite: the `prefill` signature). The cases run interleaved
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


def run_generation_bench(config: str, overrides: list[str], prompts: int, new_tokens: int,
                         repeats: int, out_json: str, out_md: str, command: str) -> int:
    import keras_hub
    import tensorflow as tf

    from export.modules import make_export_module
    from export.tflite import TFLiteModel
    from pipeline.config import load_config
    from pipeline.tasks.language_modeling import agreement_prompts
    from pipeline.workflow import load_trained, prepare

    start = time.time()
    load = load_average()
    cfg = load_config(config, overrides)
    if cfg.task != "language_modeling":
        raise ValueError(f"--generation needs a language_modeling config; {config} has "
                         f"task {cfg.task!r}")
    task = prepare(cfg, log=lambda *_: None)
    model = load_trained(task)
    module = make_export_module(task, model)
    model = module.model                                   # float32, as exported
    texts = agreement_prompts(task.texts["test"], prompts)
    rows = [module.prompt_ids(t) for t in texts]
    longest = model.max_sequence_length
    new_tokens = min(new_tokens, longest - max(len(r) for r in rows))
    log(f"[bench] {cfg.name}: {len(rows)} test prompts ({min(map(len, rows))}-"
        f"{max(map(len, rows))} ids), {new_tokens} new ids each, greedy, batch 1")

    forward = tf.function(lambda ids: model({"token_ids": ids}, training=False)[0, -1],
                          reduce_retracing=True)

    def no_cache(prompt):
        ids = list(prompt)
        for _ in range(new_tokens):
            ids.append(int(tf.argmax(forward(tf.constant([ids], tf.int32)))))
        return ids[len(prompt):]

    generate = tf.function(
        lambda ids: model.generate(ids, tf.ones_like(ids, tf.bool), new_tokens, -1,
                                   keras_hub.samplers.GreedySampler()),
        reduce_retracing=True)
    prefill = tf.function(
        lambda ids: tf.argmax(model.call_with_cache(ids, 0, model.initial_cache(1))[0][0, -1]),
        reduce_retracing=True)

    def cached(prompt):
        return [int(i) for i in generate(tf.constant([prompt], tf.int32))[0, len(prompt):]]

    served = tf.saved_model.load(os.path.join(
        cfg.run_dir, "serving", cfg.export.model_name,
        str(max(int(v) for v in os.listdir(os.path.join(cfg.run_dir, "serving",
                                                         cfg.export.model_name))
                if v.isdigit())))).signatures["generate"]

    def saved(text, count=new_tokens):
        out = served(prompt=tf.constant([text]), max_new_tokens=tf.constant(count),
                     temperature=tf.constant(0.0), top_k=tf.constant(0),
                     top_p=tf.constant(1.0), seed=tf.constant(0))
        return int(out["num_tokens"][0])

    variants = {v: os.path.join(cfg.run_dir, "edge", f"{v}.tflite")
                for v in cfg.export.tflite_variants
                if os.path.isfile(os.path.join(cfg.run_dir, "edge", f"{v}.tflite"))}
    tflite = {v: TFLiteModel(p, num_threads=1) for v, p in variants.items()}

    def edge(model_, prompt):
        return module.greedy_tflite(model_, prompt, new_tokens, eos_id=-1)

    def edge_prefill(model_, prompt):
        from edge.runners.language_modeling import prefill_inputs

        return model_("prefill", **prefill_inputs(prompt, module.prefill_length))

    # Ids each case produces per run of all prompts (greedy: the same every run).
    tokens = {REFERENCE: len(rows) * new_tokens, "keras_cache": len(rows) * new_tokens,
              **{f"tflite_{v}": len(rows) * new_tokens for v in tflite}}
    ended = [saved(t) for t in texts]
    # the SavedModel stops at eos: its eos counts as a generated id
    tokens["saved_model"] = sum(n + (n < new_tokens) for n in ended)
    agreement = {"keras_cache": float(np.mean([cached(r) == no_cache(r) for r in rows]))}
    for v, m in tflite.items():
        agreement[f"tflite_{v}"] = float(np.mean([edge(m, r) == cached(r) for r in rows]))

    def over_prompts(fn, items):
        return lambda: [fn(item) for item in items]

    cases = {REFERENCE: (over_prompts(no_cache, rows), 1),
             "keras_cache": (over_prompts(cached, rows), 1),
             "saved_model": (over_prompts(saved, texts), 1),
             **{f"tflite_{v}": (over_prompts(functools.partial(edge, m), rows), 1)
                for v, m in tflite.items()}}
    log(f"[bench] generation: {len(cases)} cases x {repeats} repeats ...")
    samples = interleave(cases, repeats, warmup=1, label="generation")
    first_cases = {"keras_cache": (over_prompts(
                       lambda r: prefill(tf.constant([r], tf.int32)), rows), 1),
                   "saved_model": (over_prompts(functools.partial(saved, count=1), texts), 1),
                   **{f"tflite_{v}": (over_prompts(functools.partial(edge_prefill, m), rows),
                                      1) for v, m in tflite.items()}}
    log("[bench] time to first token ...")
    first = interleave(first_cases, repeats, warmup=1, label="first token")

    results = {}
    for name, seconds in samples.items():
        s = summary(seconds)
        results[name] = {"tokens_per_second": round(tokens[name] / s["median_s"], 1),
                         "seconds_all_prompts": s}
        if name in first:
            results[name]["time_to_first_token_ms"] = round(
                1000.0 * summary(first[name])["median_s"] / len(rows), 3)
        if name in agreement:
            results[name]["greedy_ids_equal_reference"] = agreement[name]
    reference = results[REFERENCE]["tokens_per_second"]
    for r in results.values():
        r["ratio_vs_keras_no_cache"] = round(r["tokens_per_second"] / reference, 2)
    report = {"command": command, "experiment": cfg.name, "run_dir": cfg.run_dir,
              "prompts": len(rows), "new_tokens": new_tokens, "repeats": repeats,
              "parameters": int(model.count_params()), "batch": 1,
              "machine": machine_info(), "load_average_at_start": load,
              "cases": results, "seconds": round(time.time() - start, 1)}
    text = format_table(report)
    log(text)
    for path, content in ((out_json, json.dumps(report, indent=1)),
                          (out_md, f"# Text generation speed\n\n`{command}`\n\n{text}\n")):
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
    log(f"wrote {out_json}, {out_md} ({report['seconds'] / 60:.1f} min)")
    return 0


def format_table(report: dict) -> str:
    lines = [f"{report['experiment']}: {report['parameters']:,} parameters, batch 1, "
             f"{report['prompts']} test prompts x {report['new_tokens']} new ids, greedy; "
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
                 "variant against keras_cache (greedy ids of every prompt). The SavedModel "
                 "stops at eos, its eos counted as an id.")
    return "\n".join(lines)
