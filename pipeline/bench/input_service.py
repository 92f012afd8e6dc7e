"""`python -m pipeline bench --data-service N`: input examples/s of the
training stream read locally against read through a tf.data service of N
worker processes on 127.0.0.1, measured in the same run.

Both read `pipeline.input.make_train_dataset` on the bench's corpus (WordNet
noun glosses, `--input-texts`) with a SentencePiece model trained in the run,
at the bench's sequence length and batch:

  local    the stream built in this process (`runtime.data_service` = ""):
           tokenize, cache, shuffle, bucket, batch, prefetch
  service  the same config with `runtime.data_service` set to a dispatcher
           and N workers started here (`pipeline.data_service.LocalService`,
           the processes of `python -m pipeline data-service`): the workers
           tokenize, every epoch (no cache); this process shuffles, buckets
           and batches what they send

Each repeat builds a fresh stream (the service: a new job) and times its
first epoch (from the iterator's creation: tokenization, the cache fill or
the service's start-up) and the two epochs after it; local and service
repeats alternate, so a background load slows both alike. The ratios are
service / local of the medians.
"""

from __future__ import annotations

import copy
import datetime
import gc
import json
import os
import shutil
import statistics
import tempfile
import time

from pipeline.bench.measure import (
    library_versions,
    load_average,
    load_corpus,
    log,
    machine_info,
    niceness,
)
from pipeline.bench.settings import Settings


def _epochs(dataset, batches_per_epoch: int) -> tuple[float, float]:
    """Seconds of the first epoch (from the iterator's creation) and of one
    epoch after it (the mean of two)."""
    t0 = time.perf_counter()
    iterator = iter(dataset)
    for _ in range(batches_per_epoch):
        next(iterator)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(2 * batches_per_epoch):
        next(iterator)
    return first, (time.perf_counter() - t0) / 2


def measure_input_service(s: Settings, workers: int, command: str) -> dict:
    import functools

    import tensorflow as tf

    from pipeline.bench.cases import experiment_config
    from pipeline.config import TokenizerConfig
    from pipeline.data_service import LocalService
    from pipeline.input import make_train_dataset, tokenize
    from pipeline.tokenizer import InGraphTokenizer, read_model, train_sentencepiece

    started = time.time()
    load_start = load_average()
    results: dict = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command, "machine": machine_info(), "versions": library_versions(),
        "load_average_start": load_start, "niceness": niceness(), "workers": workers}
    work_dir = tempfile.mkdtemp(prefix="bench-service-")
    try:
        texts, labels, corpus = load_corpus(s.input_texts, s.seed)
        labels = [x % s.classes for x in labels]
        tokenizer_path = train_sentencepiece(
            texts, TokenizerConfig(vocabulary_size=s.vocab),
            os.path.join(work_dir, "tokenizer"), log=lambda m: None)
        preprocess = functools.partial(
            tokenize, InGraphTokenizer(read_model(tokenizer_path), s.seq))
        source = tf.data.Dataset.from_tensor_slices(
            {"text": tf.constant(texts), "label": tf.constant(labels, tf.int32)})
        cfg = experiment_config(s)
        batches = max(1, len(texts) // s.batch)
        results.update({"corpus": corpus, "texts": len(texts), "batch": s.batch,
                        "sequence_length": s.seq, "batches_per_epoch": batches})
        log(f"[bench] corpus: {corpus}; starting a tf.data service with {workers} "
            "worker(s)")
        times: dict[str, dict[str, list[float]]] = {
            "local": {"first": [], "next": []}, "service": {"first": [], "next": []}}
        with LocalService(workers) as service:
            address = service.start()
            for repeat in range(max(3, min(s.repeats, 5))):
                for case in ("local", "service") if repeat % 2 == 0 else \
                        ("service", "local"):
                    case_cfg = copy.deepcopy(cfg)
                    if case == "service":
                        case_cfg.runtime.data_service = address
                    first, after = _epochs(
                        make_train_dataset(source, preprocess, case_cfg, s.batch), batches)
                    times[case]["first"].append(first)
                    times[case]["next"].append(after)
                    log(f"[bench] repeat {repeat + 1} {case:<7}: first epoch "
                        f"{batches * s.batch / first:8,.0f} examples/s, then "
                        f"{batches * s.batch / after:8,.0f}")
                    gc.collect()
                if service.exited():
                    raise RuntimeError("tf.data service: " + "; ".join(service.exited()))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    examples = batches * s.batch
    for case, t in times.items():
        results[case] = {
            "first_epoch_examples_per_second": examples / statistics.median(t["first"]),
            "next_epochs_examples_per_second": examples / statistics.median(t["next"]),
            "repeats": len(t["first"])}
    results["ratio_first_epoch"] = (results["service"]["first_epoch_examples_per_second"]
                                    / results["local"]["first_epoch_examples_per_second"])
    results["ratio_next_epochs"] = (results["service"]["next_epochs_examples_per_second"]
                                    / results["local"]["next_epochs_examples_per_second"])
    results["load_average_end"] = load_average()
    results["seconds"] = round(time.time() - started, 1)
    return results


def format_summary(r: dict) -> str:
    lines = [f"== input examples/s, local against a tf.data service of {r['workers']} "
             f"worker process(es) on 127.0.0.1 ({r['corpus']}, batch {r['batch']}, "
             f"sequence {r['sequence_length']}, median of {r['local']['repeats']})",
             f"{'':<10}{'first epoch':>14}{'next epochs':>14}"]
    for case in ("local", "service"):
        lines.append(f"{case:<10}{r[case]['first_epoch_examples_per_second']:>14,.0f}"
                     f"{r[case]['next_epochs_examples_per_second']:>14,.0f}")
    lines.append(f"{'service / local':<10}{r['ratio_first_epoch']:>9.2f}x"
                 f"{r['ratio_next_epochs']:>13.2f}x")
    lines.append("local: tokenization in the first epoch, then from the cache; service: "
                 "the workers tokenize every epoch, this process shuffles and batches")
    lines.append(f"load average {r['load_average_start']} at the start, "
                 f"{r['load_average_end']} at the end; {r['machine']['usable_cpus']} "
                 f"usable CPUs; command: {r['command']}")
    return "\n".join(lines)


def run_input_service_bench(s: Settings, workers: int, out_json: str | None,
                            command: str) -> int:
    results = measure_input_service(s, workers, command)
    log(format_summary(results))
    if out_json:
        from pipeline.files import write_atomic

        write_atomic(out_json, json.dumps(results, indent=2) + "\n")
        log(f"wrote {out_json}")
    return 0
