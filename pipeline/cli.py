"""`python -m pipeline <command>`: the command line of the pipeline.

This module is the composition root: it runs the stages of pipeline/ and, for
`run` and `export`, the export/ package on the trained model.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

EXAMPLES = """\
examples:
  python -m pipeline run configs/text_classification.yaml
  python -m pipeline run configs/text_classification_debug.yaml --set train.epochs=2
  python -m pipeline prepare configs/text_classification.yaml
  python -m pipeline run configs/text_classification_pretrained.yaml
  python -m pipeline pretrain configs/text_classification_pretrained.yaml
  python -m pipeline train configs/text_classification.yaml --set runtime.strategy=mirrored \\
      --set runtime.logical_cpu_devices=2
  python -m pipeline evaluate configs/text_classification.yaml
  python -m pipeline export configs/text_classification.yaml
  python -m pipeline show-config configs/text_classification.yaml --set model.num_layers=4
  python -m pipeline tensorboard configs/text_classification.yaml --port 6006
  python -m pipeline launch --workers 2 configs/text_classification_debug.yaml
  python -m pipeline bench                      # performance report: docs/BENCHMARKS.md

Every run writes under artifacts/<experiment name>/; running the same command
again resumes training from the latest checkpoint there.
"""


def log(message: str) -> None:
    print(message, flush=True)


def _resolve(args):
    from pipeline.config import load_config

    return load_config(args.config, args.set or [])


def prepare(cfg, strategy=None):
    """Data (with its card), pre-training when enabled (cached), and the
    tokenizer; returns (splits, tokenizer path)."""
    from pipeline.evaluate import write_json
    from pipeline.sources import format_data_card, load_splits
    from pipeline.tokenizer import train_sentencepiece, write_labels

    cfg.save(os.path.join(cfg.run_dir, "config.yaml"))
    splits = load_splits(cfg.data, cfg.runtime.artifacts_root, log=log)
    card = splits.data_card()
    log(format_data_card(card))
    write_json(os.path.join(cfg.run_dir, "data_card.json"), card)
    tokenizer_dir = os.path.join(cfg.run_dir, "tokenizer")
    if cfg.pretrain.enabled:
        from pipeline.pretrain import pretrain

        cfg.model.init_checkpoint = pretrain(cfg, splits, log=log, strategy=strategy)
        cfg.save(os.path.join(cfg.run_dir, "config.yaml"))
    if cfg.model.init_checkpoint:
        # The pre-trained encoder's tokenizer: its ids are what it learned.
        import shutil

        from pipeline.pretrain import tokenizer_of
        from pipeline.tokenizer import MODEL_FILE

        source = tokenizer_of(cfg.model.init_checkpoint)
        os.makedirs(tokenizer_dir, exist_ok=True)
        tokenizer_path = os.path.join(tokenizer_dir, MODEL_FILE)
        shutil.copyfile(source, tokenizer_path + ".tmp")
        os.replace(tokenizer_path + ".tmp", tokenizer_path)
        log(f"[tokenizer] using the pre-trained encoder's {source}")
    else:
        tokenizer_path = train_sentencepiece(splits.texts["train"], cfg.tokenizer,
                                             tokenizer_dir, log=log)
    write_labels(splits.label_names, tokenizer_dir)
    return splits, tokenizer_path


def test_token_ids(cfg, splits, tokenizer_path):
    """Token ids and labels of the test split as numpy, padded to max length."""
    import numpy as np

    from pipeline.input import make_eval_dataset
    from pipeline.tokenizer import InGraphTokenizer, read_model

    tokenizer = InGraphTokenizer(read_model(tokenizer_path), cfg.model.max_sequence_length)
    batches = list(make_eval_dataset(splits.dataset("test"), tokenizer, cfg, 256))
    ids = np.concatenate([b[0]["token_ids"].numpy() for b in batches])
    labels = np.concatenate([b[1].numpy() for b in batches])
    return ids, labels


def evaluate_model(cfg, splits, tokenizer_path, model, baseline=True):
    """Test metrics of the model and the baseline, confusion matrix PNG."""
    import numpy as np

    from pipeline.evaluate import (classification_metrics, plot_confusion_matrix,
                                   tfidf_baseline)
    from pipeline.input import make_eval_dataset
    from pipeline.progress import Progress, counted
    from pipeline.tokenizer import InGraphTokenizer, read_model
    from pipeline.train import predict_logits

    start = time.time()
    tokenizer = InGraphTokenizer(read_model(tokenizer_path), cfg.model.max_sequence_length)
    data = make_eval_dataset(splits.dataset("test"), tokenizer, cfg,
                             cfg.train.global_batch_size)
    progress = Progress("[test]", "predicting", len(splits.labels["test"]), log=log,
                        interval_seconds=5)
    logits, labels = predict_logits(
        model, counted(data, progress, lambda batch: int(batch[1].shape[0])))
    predictions = logits.argmax(-1)
    metrics = classification_metrics(labels, predictions, splits.label_names)
    log(f"[test] model accuracy {metrics['accuracy']:.4f} macro-F1 "
        f"{metrics['macro_f1']:.4f} on {len(labels):,} examples "
        f"({time.time() - start:.1f}s)")
    figure = plot_confusion_matrix(
        labels, predictions, splits.label_names,
        os.path.join(cfg.run_dir, "report", "confusion_matrix.png"),
        f"{cfg.name}: test accuracy {metrics['accuracy']:.3f}, "
        f"macro-F1 {metrics['macro_f1']:.3f}")
    result = {"model": metrics, "confusion_matrix_png": figure}
    if baseline:
        result["baseline"] = tfidf_baseline(
            splits.texts["train"], splits.labels["train"], splits.texts["test"],
            splits.labels["test"], splits.label_names, log=log)
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    return result, probabilities


def export_all(cfg, splits, tokenizer_path, model, keras_probabilities):
    """SavedModel, TFLite variants (checked on the test split), edge bundle."""
    from export.bundle import write_bundle
    from export.saved_model import export_serving
    from export.quantize import QuantizationRecipe
    from export.report import choose_variant, format_table, summarize, write_report
    from export.tflite import evaluate_tflite, export_tflite

    run_dir, e = cfg.run_dir, cfg.export
    version_dir = export_serving(model, tokenizer_path, splits.label_names,
                                 os.path.join(run_dir, "serving"), e.model_name,
                                 e.version, log=log,
                                 warmup_texts=[str(t) for t in splits.texts["validation"][:16]])
    recipe = QuantizationRecipe(
        calibration_ids=calibration_token_ids(cfg, splits, tokenizer_path)
        if {"int8", "int16x8"} & set(e.tflite_variants) else None,
        mask_fill_value=e.int8_mask_fill_value, float_ops=list(e.int8_float_ops),
        per_channel=e.int8_per_channel, int8_output=e.int8_output)
    failures = {}
    paths = export_tflite(model, e.tflite_variants, os.path.join(run_dir, "edge"), log=log,
                          recipe=recipe, failures=failures)
    ids, labels = test_token_ids(cfg, splits, tokenizer_path)
    tflite = evaluate_tflite(paths, ids, labels, keras_probabilities,
                             latency_runs=e.latency_runs, log=log, failures=failures)
    if e.edge_variant == "auto":
        chosen, reason = choose_variant(tflite, e.accuracy_gate_points)
    elif e.edge_variant in tflite:
        chosen, reason = e.edge_variant, f"{e.edge_variant}: set by export.edge_variant"
    else:
        from pipeline.config import ConfigError

        raise ConfigError(f"export.edge_variant={e.edge_variant!r} could not be produced: "
                          f"{failures.get(e.edge_variant)}; choose another or 'auto'")
    summary = summarize(tflite, chosen, reason, e.accuracy_gate_points, failures, extra={
        "experiment": cfg.name, "edge_variant_setting": e.edge_variant,
        "int8_recipe": {"calibration_examples": e.int8_calibration_examples,
                        "calibration_split": "train",
                        "mask_fill_value": e.int8_mask_fill_value,
                        "float_ops": list(e.int8_float_ops),
                        "per_channel": e.int8_per_channel, "output": e.int8_output}})
    report = write_report(os.path.join(run_dir, "report"), summary,
                          title=f"{cfg.name}: TFLite variants")
    bundle = write_bundle(
        os.path.join(run_dir, "edge", "bundle"), paths[chosen], tokenizer_path,
        splits.label_names, cfg.model.max_sequence_length, chosen,
        extra={"accuracy": tflite[chosen]["accuracy"],
               "variant_choice": {"setting": e.edge_variant, "reason": reason,
                                  "accuracy_gate_points": e.accuracy_gate_points,
                                  "float32_accuracy": tflite["float32"]["accuracy"]}},
        log=log)
    log(f"\n{format_table(summary)}\n\nedge bundle: {reason}\n"
        f"report: {report['markdown']}, {report['png']}")
    return {"saved_model": version_dir, "tflite": tflite, "edge_bundle": bundle,
            "quantization_report": report["json"]}


def calibration_token_ids(cfg, splits, tokenizer_path):
    """int32 (n, max_sequence_length) token ids of n random train examples, the
    int8/int16x8 calibration set (n = export.int8_calibration_examples)."""
    import numpy as np
    import tensorflow as tf

    from pipeline.tokenizer import InGraphTokenizer, read_model

    texts = splits.texts["train"]
    n = min(cfg.export.int8_calibration_examples, len(texts))
    chosen = np.random.default_rng(cfg.train.seed).choice(len(texts), n, replace=False)
    tokenizer = InGraphTokenizer(read_model(tokenizer_path), cfg.model.max_sequence_length)
    return tokenizer(tf.constant([str(texts[i]) for i in sorted(chosen)])).numpy()


def run(cfg, do_export=True, strategy=None):
    from pipeline.evaluate import write_json
    from pipeline.train import train

    start = time.time()
    log(f"== {cfg.name}: writing to {cfg.run_dir}/")
    splits, tokenizer_path = prepare(cfg, strategy)
    result = train(cfg, splits, tokenizer_path, log=log, strategy=strategy)
    if strategy is not None and not _is_chief(strategy):
        log("[worker] training done; the chief (worker 0) evaluates and exports")
        return None
    evaluation, probabilities = evaluate_model(cfg, splits, tokenizer_path, result.model)
    metrics = {
        "experiment": cfg.name,
        "test": evaluation["model"],
        "baseline": evaluation["baseline"],
        "text": splits.description,
        "training": {
            "steps": result.steps, "steps_per_epoch": result.steps_per_epoch,
            "resumed_from_step": result.resumed_from_step,
            "seconds_this_process": round(result.train_seconds, 1),
            "examples_per_second": round(result.examples_per_second, 1),
            "best_validation_accuracy": result.best_validation_accuracy,
            "history": result.history,
            "strategy": cfg.runtime.strategy, "precision": cfg.runtime.precision,
            "parameters": int(result.model.count_params()),
        },
    }
    if cfg.model.init_checkpoint:
        metrics["pretraining"] = pretraining_summary(cfg)
    comparison = compare_with_from_scratch(cfg, metrics)
    if comparison:
        metrics["comparison"] = comparison
    if do_export:
        exported = export_all(cfg, splits, tokenizer_path, result.model, probabilities)
        metrics["tflite"] = exported["tflite"]
        metrics["artifacts"] = {k: v for k, v in exported.items() if k != "tflite"}
    metrics_path = os.path.join(cfg.run_dir, "metrics.json")
    write_json(metrics_path, metrics)
    write_training_curves(cfg, result.history)
    print_summary(cfg, metrics, time.time() - start)
    return metrics


def pretraining_summary(cfg) -> dict:
    from pipeline.pretrain import summary_of

    summary = summary_of(cfg.model.init_checkpoint) or {}
    return {"init_checkpoint": cfg.model.init_checkpoint,
            **{k: summary[k] for k in ("steps", "seconds", "loss", "masked_accuracy",
                                       "corpus") if k in summary}}


def compare_with_from_scratch(cfg, metrics) -> dict | None:
    """Test accuracy and macro-F1 of the from-scratch run (pretrain.
    from_scratch_experiment), this run and the baseline, when they share the
    test split and text."""
    import json

    name = cfg.pretrain.from_scratch_experiment
    if not name:
        return None
    path = os.path.join(cfg.runtime.artifacts_root, name, "metrics.json")
    rows = {}
    if os.path.isfile(path):
        with open(path) as f:
            other = json.load(f)
        if other.get("text") == metrics["text"] and \
                other["test"]["examples"] == metrics["test"]["examples"]:
            rows["from_scratch"] = {k: other["test"][k] for k in ("accuracy", "macro_f1")}
            rows["from_scratch"]["experiment"] = name
        else:
            log(f"[compare] {path} is not on the same test split and text; not compared")
    else:
        log(f"[compare] no {path}: run 'python -m pipeline run "
            f"configs/{name}.yaml' to put the from-scratch model in the comparison")
    key = "pretrained_finetuned" if cfg.model.init_checkpoint else "this_run"
    rows[key] = {k: metrics["test"][k] for k in ("accuracy", "macro_f1")}
    rows["baseline"] = {k: metrics["baseline"][k] for k in ("accuracy", "macro_f1")}
    return rows


def _is_chief(strategy) -> bool:
    from pipeline.distribute import worker_info

    return worker_info(strategy)[0]


def _strategy_first(cfg):
    """The strategy, created before any other TensorFlow work (required by
    MultiWorkerMirroredStrategy and by logical CPU devices)."""
    from pipeline.distribute import get_strategy

    return get_strategy(cfg.runtime)


def write_training_curves(cfg, history=None):
    """report/training_curves.png from the run's TensorBoard event files."""
    from pipeline.plots import TRAINING_CURVES_FILE, plot_training_curves

    path = plot_training_curves(
        os.path.join(cfg.run_dir, "tensorboard"),
        os.path.join(cfg.run_dir, "report", TRAINING_CURVES_FILE),
        title=f"{cfg.name}: training curves", history=history)
    log(f"[report] training curves {path}")
    return path


def print_summary(cfg, metrics, seconds):
    from export.saved_model import dir_size

    run_dir = cfg.run_dir
    test, base = metrics["test"], metrics["baseline"]
    lines = ["", f"== {cfg.name} done in {seconds / 60:.1f} min. Written under {run_dir}/:"]

    def entry(path, what):
        if os.path.exists(path):
            size = dir_size(path) if os.path.isdir(path) else os.path.getsize(path)
            lines.append(f"  {os.path.relpath(path, run_dir):<42} {size / 1e6:8.2f} MB  {what}")

    entry(os.path.join(run_dir, "config.yaml"), "resolved config")
    entry(os.path.join(run_dir, "tokenizer"), "spm.model, labels.txt")
    entry(os.path.join(run_dir, "checkpoints"), "tf.train checkpoints (rerun resumes)")
    entry(os.path.join(run_dir, "tensorboard"), f"tensorboard --logdir {run_dir}/tensorboard")
    entry(os.path.join(run_dir, "report", "training_curves.png"), "loss/accuracy/lr curves")
    entry(os.path.join(run_dir, "report", "confusion_matrix.png"), "confusion matrix")
    entry(os.path.join(run_dir, "metrics.json"), "test metrics, baseline, TFLite checks")
    if "artifacts" in metrics:
        entry(metrics["artifacts"]["saved_model"], "SavedModel for TF Serving")
        for variant, r in metrics["tflite"].items():
            entry(r["path"], f"TFLite {variant}")
        entry(metrics["artifacts"]["edge_bundle"], "edge bundle: python edge/app.py --bundle "
              f"{metrics['artifacts']['edge_bundle']} \"some text\"")
    lines.append("")
    lines.append(f"  test accuracy {test['accuracy']:.4f}  macro-F1 {test['macro_f1']:.4f}"
                 f"   (Transformer, {metrics['training']['parameters']:,} parameters)")
    lines.append(f"  test accuracy {base['accuracy']:.4f}  macro-F1 {base['macro_f1']:.4f}"
                 "   (baseline: TF-IDF + linear SVM, same split and text)")
    for variant, r in metrics.get("tflite", {}).items():
        lines.append(f"  TFLite {variant:<13} accuracy {r['accuracy']:.4f}  agreement "
                     f"{r['agreement_with_keras']:.4f}  batch-1 "
                     f"{r['latency_batch1']['threads_1']['median_ms']:.2f} ms")
    training = metrics["training"]
    if training["steps"] > training["resumed_from_step"]:
        lines.append(f"  training: {training['examples_per_second']:,.0f} examples/s over "
                     f"{training['steps'] - training['resumed_from_step']:,} steps in this "
                     f"run ({training['seconds_this_process'] / 60:.1f} min)")
    else:
        lines.append(f"  training: already complete ({training['steps']:,} steps); "
                     "delete checkpoints/ to train again")
    log("\n".join(lines))


def load_trained(cfg, splits, tokenizer_path):
    """The model with its best (else latest) checkpointed weights."""
    import tensorflow as tf

    from pipeline.tokenizer import vocabulary_size
    from pipeline.train import ModelVariables, build_model

    model = build_model(cfg, vocabulary_size(tokenizer_path), splits.num_classes)
    directory = os.path.join(cfg.run_dir, "checkpoints")
    path = tf.train.latest_checkpoint(os.path.join(directory, "best")) or \
        tf.train.latest_checkpoint(directory)
    if not path:
        raise FileNotFoundError(f"no checkpoint under {directory}: run "
                                "'python -m pipeline train <config>' first")
    tf.train.Checkpoint(model=ModelVariables(model)).restore(path).expect_partial() \
        .assert_existing_objects_matched()
    log(f"[model] restored {path}")
    return model


def serve_tensorboard(cfg, port=6006, every_run=False) -> int:
    """Serves the run's (or every run's) TensorBoard logs until Ctrl-C."""
    import threading

    from pipeline.summaries import launch_tensorboard

    logdir = cfg.runtime.artifacts_root if every_run else \
        os.path.join(cfg.run_dir, "tensorboard")
    try:
        url = launch_tensorboard(logdir, port=port)
    except OSError as err:  # port taken; FileNotFoundError goes to main()
        if isinstance(err, FileNotFoundError):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    log(f"TensorBoard {url} serving {logdir} (scalars, text, graphs, hparams); "
        "Ctrl-C stops it")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Train a Transformer from raw data and export it for TF Serving "
                    "and TFLite.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    helps = {
        "run": "prepare data and tokenizer, train (resuming), evaluate, export all",
        "prepare": "load the data (print its card) and train the tokenizer",
        "pretrain": "masked-LM pre-training of the encoder only (pretrain.*; cached "
                    "under <artifacts_root>/pretrained/ and reused by run/train)",
        "train": "prepare, then train or resume from the latest checkpoint",
        "evaluate": "test metrics and baseline of the trained model",
        "export": "SavedModel, TFLite variants and edge bundle of the trained model",
        "show-config": "print the resolved config",
        "tensorboard": "serve the run's TensorBoard logs on 127.0.0.1 (Ctrl-C stops it)",
        "launch": "start N multi-worker training processes on 127.0.0.1 (TF_CONFIG each)",
    }
    for name, text in helps.items():
        sub = commands.add_parser(name, help=text, description=text, epilog=EXAMPLES,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("config", help="YAML experiment config, e.g. "
                         "configs/text_classification.yaml")
        sub.add_argument("--set", action="append", metavar="KEY=VALUE",
                         help="override a config value, e.g. --set train.epochs=2 "
                         "(repeatable)")
    board = commands.choices["tensorboard"]
    board.add_argument("--port", type=int, default=6006,
                       help="port on 127.0.0.1 (default 6006; 0 picks a free one)")
    board.add_argument("--all", action="store_true",
                       help="serve every experiment under runtime.artifacts_root, "
                       "to compare runs (HParams dashboard)")
    from pipeline import bench as bench_module

    bench_help = ("training throughput, FLOP utilisation, input pipeline and latency "
                  "at one model shape (no config: flags only)")
    bench_parser = commands.add_parser(
        "bench", help=bench_help, description=bench_help, epilog=bench_module.EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_module.add_arguments(bench_parser)
    launcher = commands.choices["launch"]
    launcher.add_argument("--workers", type=int, default=2, help="number of workers")
    launcher.add_argument("--worker-command", default="run", choices=["run", "train"],
                          help="what each worker runs (the chief also evaluates and "
                          "exports with 'run')")
    launcher.add_argument("--timeout", type=float, default=0,
                          help="stop all workers after this many seconds (0 = none)")
    args = parser.parse_args(argv)
    if args.command == "bench":
        argv = sys.argv[1:] if argv is None else list(argv)
        return bench_module.run_bench(args, argv[1:])

    from export.check_serving import ServingCheckError
    from pipeline.config import ConfigError
    from pipeline.datasets.wordnet_topics import DataPackageMissing
    from pipeline.sources import DataError

    try:
        cfg = _resolve(args)
        if args.command == "show-config":
            import yaml

            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            return 0
        if args.command == "tensorboard":
            return serve_tensorboard(cfg, args.port, args.all)
        if args.command == "launch":
            from pipeline.launch import launch

            return launch(args.config, args.set or [], args.workers, args.worker_command,
                          args.timeout)
        if args.command == "run":
            run(cfg, strategy=_strategy_first(cfg))
        elif args.command == "prepare":
            prepare(cfg)
        elif args.command == "pretrain":
            from pipeline.config import ConfigError as _ConfigError

            if not cfg.pretrain.enabled:
                raise _ConfigError("config key 'pretrain.enabled' = False: this config "
                                   "has no pre-training (see configs/"
                                   "text_classification_pretrained.yaml)")
            from pipeline.pretrain import pretrain
            from pipeline.sources import load_splits

            strategy = _strategy_first(cfg)
            splits = load_splits(cfg.data, cfg.runtime.artifacts_root, log=log)
            log(f"[pretrain] encoder checkpoint: {pretrain(cfg, splits, log, strategy)}")
        elif args.command == "train":
            from pipeline.train import train

            strategy = _strategy_first(cfg)
            splits, tokenizer_path = prepare(cfg, strategy)
            result = train(cfg, splits, tokenizer_path, log=log, strategy=strategy)
            if _is_chief(strategy):
                write_training_curves(cfg, result.history)
        elif args.command in ("evaluate", "export"):
            from pipeline.evaluate import write_json

            splits, tokenizer_path = prepare(cfg)
            model = load_trained(cfg, splits, tokenizer_path)
            evaluation, probabilities = evaluate_model(
                cfg, splits, tokenizer_path, model, baseline=args.command == "evaluate")
            if args.command == "export":
                export_all(cfg, splits, tokenizer_path, model, probabilities)
            else:
                write_json(os.path.join(cfg.run_dir, "evaluation.json"),
                           {k: v for k, v in evaluation.items()})
        return 0
    except (ConfigError, DataError, DataPackageMissing, FileNotFoundError,
            ServingCheckError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        from pipeline.train import Preempted

        if isinstance(err, Preempted):
            print(f"[train] {err}", flush=True)
            return 143
        import tensorflow as tf

        if isinstance(err, tf.errors.OpError) and cfg.runtime.strategy == \
                "multi_worker_mirrored":
            print(f"error: multi-worker training stopped: {type(err).__name__}: "
                  f"{str(err).splitlines()[0][:300]}\nA peer worker probably failed. "
                  "Relaunch the same command to resume from the latest checkpoint.",
                  file=sys.stderr, flush=True)
            return 1
        raise
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the latest "
              "checkpoint", file=sys.stderr)
        return 130
