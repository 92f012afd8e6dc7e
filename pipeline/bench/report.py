"""The bench's report: the printed summary, docs/benchmarks.json and
docs/BENCHMARKS.md, written from the dict `pipeline.bench.measure.measure_all`
returns (or one read back from a saved JSON file); nothing here measures.

The markdown page keeps the sections it does not generate: a `## ` section
of the existing file whose heading is not one of `GENERATED_SECTIONS` (e.g.
hand-written notes on the code layout or on measurements made outside the
bench) is carried over, in its order, before "Printed output".
"""

from __future__ import annotations

import json

from pipeline.bench.settings import TARGET_EDGE_RATIO, TARGET_TRAINING_RATIO
from pipeline.files import write_atomic

GENERATED_SECTIONS = ("Machine", "Targets", "Training throughput", "FLOPs and utilisation",
                      "Input pipeline", "Latency", "Where the time goes", "Printed output")


def format_summary(r: dict) -> str:
    t, p, lat = r["training"], r["input_pipeline"], r["latency"]
    peak = r["matmul_peak"]
    shape = ", ".join(f"{k} {v}" for k, v in r["shape"].items())
    lines = ["", f"== bench results ({shape})",
             f"machine: {r['machine']['cpu']}, {r['machine']['usable_cpus']} usable CPUs; "
             f"load average {r['load_average_start']} at start, "
             f"{r['load_average_end']} at end; niceness {r.get('niceness_start')} at "
             f"start, {r.get('niceness_end')} at end",
             "", f"training (examples/s, median of {r['settings']['repeats']} x "
             f"{r['settings']['steps']} steps, warm-up excluded):"]
    for name, row in t["cases"].items():
        label = "reference keras-hub (train_on_batch, jit_compile=" \
            f"{row['jit_compile']})" if name == "reference" else name
        lines.append(f"  {label:<50} {row['examples_per_second']:9.1f}  "
                     f"{row['step_ms']:8.1f} ms/step  {row['gflops']:6.1f} GFLOP/s  "
                     f"{row['utilisation_percent']:5.1f}% of {row['peak_dtype']} peak  "
                     f"{row['vs_reference']:.2f}x")
    lines += [f"  fastest of ours: {t['fastest']}",
              f"training throughput ours/reference: {t['ratio_fastest_vs_reference']:.2f}x",
              "training throughput ours float32/reference: "
              f"{t['ratio_float32_vs_reference']:.2f}x",
              "",
              f"FLOPs: {t['flops_per_example_training'] / 1e9:.3f} GFLOP per training "
              f"example (3 x {t['flops_per_example_forward'] / 1e9:.3f} forward)",
              f"matmul peak ({peak['matrix_size']}x{peak['matrix_size']}, median): "
              f"float32 {peak['float32']['gflops_median']:.1f} GFLOP/s, bfloat16 "
              f"{peak['bfloat16']['gflops_median']:.1f} GFLOP/s",
              f"  ours fastest: {t['cases'][t['fastest']]['gflops']:.1f} GFLOP/s = "
              f"{t['cases'][t['fastest']]['utilisation_percent']:.1f}% of the "
              f"{t['cases'][t['fastest']]['peak_dtype']} peak",
              "",
              f"input pipeline ({p['corpus']}): raw text -> batches "
              f"{p['first_epoch_examples_per_second']:,.0f} examples/s (first epoch, "
              f"tokenization included), cached epochs "
              f"{p['cached_epoch_examples_per_second']:,.0f} examples/s; training consumes "
              f"{p['training_consumption_examples_per_second']:,.1f} examples/s",
              f"input pipeline / training consumption: {p['ratio']:.1f}x",
              f"  (cached epochs / training consumption: {p['ratio_cached']:.1f}x)",
              "", "latency (ms, median; weights are random: speed only, no accuracy "
              "check here):"]
    lines += ["  " + line for line in latency_table(lat, markdown=False)]
    edge = lat.get("edge_ratio")
    if edge:
        lines.append(f"edge latency fastest/float32 (batch 1, {edge['variant']}, "
                     f"{edge['threads']} threads): {edge['ratio']:.2f}")
    lines += ["", "targets of issue #8:"]
    for row in r["targets"]:
        lines.append(f"  {row['what']}: {row['measured']:.2f} (target {row['target']}) "
                     f"{'met' if row['met'] else 'MISSED'}")
    return "\n".join(lines)


def latency_table(lat: dict, markdown: bool) -> list[str]:
    """Rows: model; columns: batch x threads."""
    big = lat["batch_sizes"][1]
    columns = [(1, "tf"), (1, 1), (1, 2), (big, "tf"), (big, 1), (big, 2)]
    rows: dict[str, dict] = {}
    for info in lat["models"].values():
        rows.setdefault(info["model"], {})[(info["batch"], info["threads"])] = info
    headers = ["model", "size MB"] + [
        f"batch {b}, {'TF' if th == 'tf' else f'{th} thr'}" for b, th in columns]
    wanted = [c for c in columns if any(c in cells for cells in rows.values())]
    headers = headers[:2] + [h for h, c in zip(headers[2:], columns) if c in wanted]
    out = []
    if markdown:
        out.append("| " + " | ".join(headers) + " |")
        out.append("|---|" + "---:|" * (len(headers) - 1))
    else:
        out.append(f"{headers[0]:<42}" + "".join(f"{h:>17}" for h in headers[1:]))
    for name, cells in rows.items():
        size = next((c.get("size_bytes") for c in cells.values() if c.get("size_bytes")),
                    None)
        if size is None and name.startswith("SavedModel"):
            size = lat.get("saved_model", {}).get("size_bytes")
        values = [f"{size / 1e6:.2f}" if size else ""]
        values += [f"{cells[c]['median_ms']:.2f}" if c in cells else "" for c in wanted]
        if markdown:
            out.append(f"| {name} | " + " | ".join(values) + " |")
        else:
            out.append(f"{name:<42}" + "".join(f"{v:>17}" for v in values))
    return out


def observations(r: dict) -> list[str]:
    """Plain-language reading of the figures, computed from them (markdown)."""
    t, p, lat, peak = r["training"], r["input_pipeline"], r["latency"], r["matmul_peak"]
    cases, out = t["cases"], []
    ref = cases["reference"]["examples_per_second"]
    f32 = cases["ours float32"]
    fastest = cases[t["fastest"]]
    out.append(
        f"Fastest of ours: {t['fastest']}, {fastest['examples_per_second']:.1f} examples/s "
        f"= {t['ratio_fastest_vs_reference']:.2f}x the keras-hub reference "
        f"({ref:.1f}); in float32 ours runs at {t['ratio_float32_vs_reference']:.2f}x it.")
    for precision in ("float32", "mixed_bfloat16"):
        off, on = cases.get(f"ours {precision}"), cases.get(f"ours {precision} + XLA")
        if off and on:
            out.append(f"XLA (`jit_compile`) with {precision}: "
                       f"{on['examples_per_second'] / off['examples_per_second']:.2f}x the "
                       "rate without it.")
    bf16 = cases.get("ours mixed_bfloat16")
    if bf16:
        out.append(f"mixed_bfloat16 without XLA: "
                   f"{bf16['examples_per_second'] / f32['examples_per_second']:.2f}x float32 "
                   f"(the bf16 matmul peak is "
                   f"{peak['bfloat16']['gflops_median'] / peak['float32']['gflops_median']:.2f}"
                   "x the float32 one).")
    ceiling = peak["bfloat16"]["gflops_median"] * 1e9 / t["flops_per_example_training"]
    out.append(
        f"Ceiling: at 100% of the bfloat16 matmul peak and with no other work, a "
        f"training step of this shape would run at {ceiling:.0f} examples/s = "
        f"{ceiling / ref:.2f}x the reference. "
        + ("So the 2x target is out of reach on this CPU whatever the code does; "
           if ceiling / ref < TARGET_TRAINING_RATIO else
           f"The 2x target needs {100 * TARGET_TRAINING_RATIO * ref / ceiling:.0f}% "
           "utilisation of the bfloat16 peak; ")
        + f"ours reaches {fastest['utilisation_percent']:.0f}% of its precision's peak.")
    profiles = r["where_the_time_goes"]["op_profiles"]
    for name, prof in profiles.items():
        share = prof["by_category_percent"].get("matmul / einsum", 0.0)
        out.append(f"{name}: matmul / einsum ops take {share:.0f}% of the profiled op "
                   f"time, the other {100 - share:.0f}% is element-wise, reduction, "
                   "dropout-RNG and bookkeeping work.")
    a, b = profiles.get("ours float32"), profiles.get("ours mixed_bfloat16")
    if a and b:
        ms_a = {o["type"]: o["ms_per_step"] for o in a["top_op_types"]}
        ms_b = {o["type"]: o["ms_per_step"] for o in b["top_op_types"]}
        grew = sorted(((ms_b[k] - ms_a[k], k) for k in ms_a.keys() & ms_b.keys()
                       if ms_b[k] > 1.2 * ms_a[k]), reverse=True)
        shrank = sorted(((ms_a[k] - ms_b[k], k) for k in ms_a.keys() & ms_b.keys()
                         if ms_b[k] < ms_a[k] / 1.2), reverse=True)
        if shrank:
            out.append("From float32 to mixed_bfloat16 these ops got faster: " + ", ".join(
                f"`{k}` {ms_a[k]:.0f} -> {ms_b[k]:.0f} ms/step" for _, k in shrank) + ".")
        if grew:
            out.append("These got slower (their bf16 kernels are slower than the "
                       "float32 ones here): " + ", ".join(
                           f"`{k}` {ms_a[k]:.0f} -> {ms_b[k]:.0f} ms/step"
                           for _, k in grew) + ".")
    out.append(f"Input pipeline: {p['ratio']:.0f}x the training consumption from raw text "
               f"({p['ratio_cached']:.0f}x from the cache), so training is never "
               "input-bound at this shape.")
    edge = lat.get("edge_ratio")
    f32_rows = [m for m in lat["models"].values() if m.get("variant") == "float32"
                and m["batch"] == 1]
    if edge and f32_rows:
        best = min(f32_rows, key=lambda m: m["median_ms"])
        gflops = t["flops_per_example_forward"] / (best["median_ms"] / 1e3) / 1e9
        out.append(
            f"Edge: the fastest variant at batch 1 is {edge['variant']} with "
            f"{edge['threads']} thread(s), {edge['ratio']:.2f}x float32's latency. Float32 "
            f"TFLite at batch 1 already computes {gflops:.0f} GFLOP/s "
            f"({best['threads']} thread(s); TensorFlow's float32 matmul peak on all "
            f"cores was {peak['float32']['gflops_median']:.0f}); a ratio of "
            f"{TARGET_EDGE_RATIO} would need "
            f"{1 / TARGET_EDGE_RATIO:.1f}x from int8 kernels over all of the forward pass, "
            "while the default int8 recipe keeps attention, softmax, LayerNorm and "
            "element-wise ops in float.")
    return out


def write_json(path: str, results: dict) -> str:
    """The results as indented JSON (anything not JSON-native as its str),
    written atomically."""
    return write_atomic(path, json.dumps(results, indent=2, default=str) + "\n")


def kept_sections(path: str) -> list[str]:
    """The `## ` sections of the markdown file at `path` (none if it does not
    exist) whose headings are not in GENERATED_SECTIONS, each as its lines
    without trailing blank lines."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    sections, current, fenced = [], None, False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        if line.startswith("## ") and not fenced:
            current = None if line[3:].strip() in GENERATED_SECTIONS else [line]
            if current is not None:
                sections.append(current)
        elif line.startswith("# ") and not fenced:
            current = None
        elif current is not None:
            current.append(line)
    return ["\n".join(section).rstrip() for section in sections]


def _pct(x: float) -> str:
    return f"{x:.1f}%"


def write_markdown(path: str, r: dict, summary_text: str) -> str:
    """The report page, written atomically over `path`; the sections of the
    existing page that are not generated here are kept (`kept_sections`)."""
    t, p, lat, peak = r["training"], r["input_pipeline"], r["latency"], r["matmul_peak"]
    m, v, s = r["machine"], r["versions"], r["settings"]
    load_note = (
        f"**The machine was shared during this run** (1-minute load average "
        f"{r['load_average_start'][0]} at the start, above 1 on {m['usable_cpus']} CPUs): "
        "other TensorFlow jobs ran at the same time. The cases of each section are "
        "interleaved, so the load hit them alike and the ratios hold better than the "
        "absolute figures." if r["shared_machine"] else
        f"The 1-minute load average was {r['load_average_start'][0]} at the start "
        "(the machine was otherwise quiet).")
    nice = [r.get("niceness_start"), r.get("niceness_end")]
    if any(n for n in nice if n):
        load_note += (f" This process ran at niceness {nice[0]} at the start and "
                      f"{nice[1]} at the end (another job lowered its priority), so it "
                      "got less CPU time than the jobs beside it.")
    lines = [
        "# Benchmarks", "",
        "Written by `python -m pipeline bench` (`pipeline/bench/`, issue #8). "
        "One process measures training throughput, FLOP utilisation, the tf.data "
        "input pipeline and serving / edge latency at one model shape.", "",
        "```bash", r["command"], "```", "",
        f"Run {r['date']}, {r['seconds'] / 60:.1f} min wall time.", "",
        "## Machine", "",
        "| | |", "|---|---|",
        f"| CPU | {m['cpu']} |",
        f"| CPUs | {m['logical_cpus']} logical, {m['usable_cpus']} usable by this process |",
        f"| relevant CPU flags | {', '.join(m['cpu_flags']) or 'none'}"
        f"{'' if any(f.startswith('amx') for f in m['cpu_flags']) else ' (no AMX)'} |",
        f"| memory | {m['memory_gb']} GB |",
        f"| load average (1, 5, 15 min) | {r['load_average_start']} at start, "
        f"{r['load_average_end']} at end |",
        f"| niceness of the bench process | {r.get('niceness_start')} at start, "
        f"{r.get('niceness_end')} at end |",
        f"| software | Python {m['python']}, TensorFlow {v['tensorflow']}, Keras "
        f"{v['keras']}, keras-hub {v['keras_hub']}, ai-edge-litert {v['ai_edge_litert']}, "
        f"numpy {v['numpy']}; oneDNN {v['onednn']} |",
        "", load_note, "",
        "## Targets", "",
        "| what | target | measured | |", "|---|---|---:|---|"]
    for row in r["targets"]:
        lines.append(f"| {row['what']} | {row['target']} | {row['measured']:.2f} | "
                     f"{'met' if row['met'] else '**missed**'} |")
    shape = r["shape"]
    lines += [
        "", "## Training throughput", "",
        f"Shape: vocabulary {shape['vocab']:,}, sequence {shape['seq']}, hidden "
        f"{shape['hidden']}, {shape['heads']} heads, feed-forward {shape['ff']:,}, "
        f"{shape['layers']} layers, batch {shape['batch']}, {shape['classes']} classes, "
        f"dropout {s['dropout']}. Fixed-shape random token batches (no padding). Median "
        f"of {s['repeats']} repeats of {s['steps']} steps after {s['warmup']} warm-up "
        "steps; the cases ran interleaved.", "",
        f"- **ours**: `models.TextClassifier` ({t['ours_model']['parameters']:,} "
        "parameters, the text-classification task's keyword arguments), trained with "
        f"{t['ours_model']['loop']}; optimizer {t['ours_model']['optimizer']}. "
        + ("XLA (`jit_compile`) covers forward + backward; the optimizer update is "
           "compiled with XLA on its own (`runtime.jit_compile_optimizer`, the default) "
           "but in the case marked \"optimizer uncompiled\". "
           if any("optimizer uncompiled" in name for name in t["cases"]) else
           # Results of runs before the update was compiled.
           "XLA (`jit_compile`) covers forward + backward, not the optimizer update. ")
        + "Its layers replace three "
        "Keras ops in training only, with the same functions and weights "
        "(tests/models/test_fast_training_ops.py): "
        "`models.layers.Dropout` (a 16-bit random draw per element instead of a float), "
        "`models.layers.LayerNormalization` and `models.layers.activations.gelu` (gradients "
        "written out instead of autodiff through the moments and `Erfc`; the GELU's forward "
        "and backward each one fused XLA kernel, the matmuls staying on oneDNN); the attention "
        "projections run as 2-D matmuls instead of broadcast batch matmuls. The reference "
        "runs Keras' own Dropout, LayerNormalization and GELU.",
        f"- **reference**: {t['reference_model']['layers']} "
        f"({t['reference_model']['parameters']:,} parameters), encoder settings "
        f"{t['reference_model']['encoder_settings']}, compiled with Adam and sparse "
        f"categorical cross-entropy, Keras' default `jit_compile` (resolved to "
        f"{t['reference_model']['jit_compile']} on this CPU-only machine), timed with "
        "`train_on_batch`.", "",
        "| model | precision | XLA | examples/s (median) | range | ms/step | GFLOP/s | "
        "utilisation | vs reference |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in t["cases"].items():
        low, high = row["examples_per_second_range"]
        bold = "**" if name == t["fastest"] else ""
        lines.append(
            f"| {bold}{'keras-hub reference' if name == 'reference' else name}{bold} | "
            f"{row['precision']} | {'on' if row['jit_compile'] else 'off'} | "
            f"{row['examples_per_second']:.1f} | {low:.1f} - {high:.1f} | "
            f"{row['step_ms']:.0f} | {row['gflops']:.1f} | "
            f"{_pct(row['utilisation_percent'])} of {row['peak_dtype']} | "
            f"{row['vs_reference']:.2f}x |")
    lines += [
        "", f"Fastest of ours: **{t['fastest']}**. "
        f"`training throughput ours/reference: {t['ratio_fastest_vs_reference']:.2f}x`; "
        f"`training throughput ours float32/reference: "
        f"{t['ratio_float32_vs_reference']:.2f}x`.", "",
        "## FLOPs and utilisation", "",
        f"FLOPs are counted analytically (`pipeline.bench.measure.forward_flops_per_example`): "
        "per layer 4·2·S·H² (Q, K, V, output projections) + 2·2·S²·H (scores and "
        "weighted sum) + 2·2·S·H·FF (feed-forward), plus 2·H·classes for the head; "
        f"training = 3 x forward. Here: {t['flops_per_example_forward'] / 1e9:.3f} GFLOP "
        f"forward, {t['flops_per_example_training'] / 1e9:.3f} GFLOP per training example.",
        "",
        f"Matmul peak, measured in the same rounds as the training cases (`tf.matmul` "
        f"of two {peak['matrix_size']}x{peak['matrix_size']} matrices, median / best of "
        f"{peak['float32']['repeats']} repeats): float32 "
        f"{peak['float32']['gflops_median']:.1f} / {peak['float32']['gflops_best']:.1f} "
        f"GFLOP/s, bfloat16 {peak['bfloat16']['gflops_median']:.1f} / "
        f"{peak['bfloat16']['gflops_best']:.1f} GFLOP/s. Utilisation in the table above "
        "is achieved GFLOP/s over the median peak of the precision the matmuls run in.",
        "",
        "## Input pipeline", "",
        f"`pipeline.input.make_train_dataset` (tensorflow-text SentencePiece in the graph, "
        f"cache, shuffle buffer {p['shuffle_buffer']:,}, bucketing by length: "
        f"{p['bucket_by_length']}, batch {p['batch']}, prefetch) on {p['corpus']}, with a "
        f"SentencePiece model ({p['tokenizer_vocabulary']:,} pieces) trained in the run "
        f"by `pipeline.tokenizer.train_sentencepiece`. Median of {p['repeats']} fresh "
        "pipelines.", "",
        "| | examples/s | / training consumption |", "|---|---:|---:|",
        f"| raw text -> batches, first epoch (tokenization included) | "
        f"{p['first_epoch_examples_per_second']:,.0f} | {p['ratio']:.1f}x |",
        f"| later epochs (tokenized examples from the cache) | "
        f"{p['cached_epoch_examples_per_second']:,.0f} | {p['ratio_cached']:.1f}x |",
        f"| training consumption ({t['fastest']}) | "
        f"{p['training_consumption_examples_per_second']:,.1f} | |", "",
        f"`input pipeline / training consumption: {p['ratio']:.1f}x` (the pipeline was "
        "measured alone; in training it shares the CPUs with the step).", "",
        "## Latency", "",
        f"Milliseconds, median of interleaved calls after warm-up; batch 1 and batch "
        f"{lat['batch_sizes'][1]} of real token ids (padded WordNet texts). Keras and "
        "SavedModel run on TensorFlow's default thread pools (`TF` columns); TFLite with "
        "ai-edge-litert at 1 and 2 threads. The SavedModel is written by "
        f"{lat['saved_model']['how']}; `token_ids` is its int32 signature, `text` its "
        "`serving_default` signature (SentencePiece in the graph). TFLite variants come "
        "from `export.tflite.export_tflite` with the default int8 recipe "
        "(`export.quantize`, calibrated on real token ids).", "",
        "**Weights are random, so this measures speed only; the accuracy gate of the "
        "variants cannot be checked here. Their accuracy is in the export report "
        "(`report/report.md` of a training run, docs/QUANTIZATION.md).**", ""]
    lines += latency_table(lat, markdown=True)
    edge = lat.get("edge_ratio")
    if edge:
        lines += ["", f"`edge latency fastest/float32 (batch 1, {edge['variant']}, "
                  f"{edge['threads']} threads): {edge['ratio']:.2f}` "
                  f"({edge['median_ms']:.2f} ms against float32's "
                  f"{edge['float32_median_ms']:.2f} ms at its fastest, "
                  f"{edge['float32_threads']} thread(s))."]
    if lat.get("tflite_failures"):
        lines += ["", f"Variants that failed: {lat['tflite_failures']}"]
    lines += ["", "## Where the time goes", ""]
    lines += [f"- {line}" for line in observations(r)]
    lines.append("")
    phases = r["where_the_time_goes"]["phases"]
    statistic = next(iter(phases.values()), {}).get("statistic", "median")
    lines += ["Wall time per training step split by running forward only, then forward + "
              "backward (gradients, no update), then the full step, each compiled like "
              f"the step (interleaved; the {statistic} of the repeats of each). Backward = "
              "(forward + backward) - forward, optimizer + rest = step - (forward + "
              "backward): a difference smaller than the run-to-run noise is shown as "
              "\"not resolved\"; the op profiles below split the time by phase from op "
              "self times, which the load disturbs less.", "",
              "| model | forward ms | backward ms | optimizer + rest ms | step ms |",
              "|---|---:|---:|---:|---:|"]

    def ms(x):
        return f"{x:.0f}" if x > 0 else "not resolved"

    noisy = False
    for name, ph in phases.items():
        backward = ms(ph["backward_ms"])
        if ph["optimizer_and_rest_ms"] < 0 and backward != "not resolved":
            backward, noisy = backward + " *", True
        lines.append(f"| {name} | {ms(ph['forward_ms'])} | {backward} | "
                     f"{ms(ph['optimizer_and_rest_ms'])} | {ms(ph['step_ms'])} |")
    if noisy:
        lines += ["", "\\* forward + backward alone measured longer than the whole step, "
                  "so a burst of background load hit those repeats: this figure is an "
                  "overestimate."]
    for name, prof in r["where_the_time_goes"]["op_profiles"].items():
        lines += ["", f"Op profile of **{name}** (TensorFlow profiler, "
                  f"{prof['steps']} steps, self time of ops summed over threads: "
                  f"{prof['total_self_ms_per_step']:.0f} ms per step):", "",
                  "| category | share |", "|---|---:|"]
        lines += [f"| {k} | {_pct(x)} |" for k, x in prof["by_category_percent"].items()]
        lines += ["", "| phase (by op name) | share |", "|---|---:|"]
        lines += [f"| {k} | {_pct(x)} |" for k, x in prof["by_phase_percent"].items()]
        lines += ["", "| op type | share | ms per step |", "|---|---:|---:|"]
        lines += [f"| `{o['type']}` | {_pct(o['percent'])} | {o['ms_per_step']:.1f} |"
                  for o in prof["top_op_types"]]
    for section in kept_sections(path):
        lines += ["", section]
    lines += ["", "## Printed output", "", "```", summary_text.strip(), "```", ""]
    return write_atomic(path, "\n".join(lines))




def render_markdown(json_path: str, md_path: str) -> str:
    """Rewrites the page at `md_path` from the results saved at `json_path`
    (after a change to this module), without measuring again."""
    with open(json_path, encoding="utf-8") as f:
        results = json.load(f)
    return write_markdown(md_path, results, format_summary(results))
