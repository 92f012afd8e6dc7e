"""The stages of a run, for every task: what the CLI, the notebook and the
tests call.

  prepare(cfg)              -> the task, with data and assets ready
  train(task)               -> TrainResult (the shared trainer, resuming)
  load_trained(task)        -> the model with its best checkpointed weights
  evaluate(task, model)     -> test metrics (+ baseline, + the export reference)
  export(task, model, ref)  -> SavedModel, TFLite variants, report, edge bundle
  run(cfg)                  -> all of it; writes metrics.json and the summary

This module is the composition root: it runs the stages of pipeline/ and,
for export, the export/ package (which depends on pipeline/, not the reverse).
"""

from __future__ import annotations

import json
import os
import time

from pipeline.files import write_json


def log(message: str) -> None:
    print(message, flush=True)


def prepare(cfg, strategy=None, log=log):
    """Writes the resolved config and prepares the task's data and assets."""
    from pipeline.tasks import make_task

    cfg.save(os.path.join(cfg.run_dir, "config.yaml"))
    task = make_task(cfg, log=log)
    task.prepare(strategy)
    return task


def train(task, strategy=None):
    from pipeline.trainer import train as run_trainer

    return run_trainer(task, log=task.log, strategy=strategy)


def load_trained(task):
    """The task's model with its best (else latest) checkpointed weights."""
    from pipeline.trainer import load_best

    return load_best(task, log=task.log)


def evaluate(task, model, baseline: bool = True) -> dict:
    return task.evaluate(model, baseline=baseline)


def export(task, model, reference) -> dict:
    """SavedModel, TFLite variants (checked on the test split), edge bundle."""
    from export import export_all

    return export_all(task, model, reference, log=task.log)


def is_chief(strategy) -> bool:
    from pipeline.distribute import worker_info

    return strategy is None or worker_info(strategy)[0]


def run(cfg, do_export: bool = True, strategy=None):
    """Every stage; returns the metrics written to metrics.json (None on a
    worker other than the chief, which alone evaluates and exports)."""
    start = time.time()
    log(f"== {cfg.name}: writing to {cfg.run_dir}/")
    task = prepare(cfg, strategy)
    result = train(task, strategy)
    if not is_chief(strategy):
        log("[worker] training done; the chief (worker 0) evaluates and exports")
        return None
    evaluation = evaluate(task, result.model)
    metrics = {"experiment": cfg.name, "task": task.name,
               **{k: v for k, v in evaluation.items()
                  if k not in ("reference", "confusion_matrix_png")}}
    metrics["training"] = {
        "steps": result.steps, "steps_per_epoch": result.steps_per_epoch,
        "resumed_from_step": result.resumed_from_step,
        "seconds_this_process": round(result.train_seconds, 1),
        "examples_per_second": round(result.examples_per_second, 1),
        "best_validation": {"metric": result.best_metric,
                            "value": result.best_validation},
        "history": result.history,
        "strategy": cfg.runtime.strategy, "precision": cfg.runtime.precision,
        "parameters": int(result.model.count_params()),
    }
    if cfg.model.init_checkpoint:
        metrics["pretraining"] = pretraining_summary(cfg)
    if do_export:
        exported = export(task, result.model, evaluation["reference"])
        metrics["tflite"] = exported["tflite"]
        if exported["saved_model_metrics"]:
            metrics["saved_model"] = exported["saved_model_metrics"]
        metrics["artifacts"] = {k: v for k, v in exported.items()
                                if k not in ("tflite", "saved_model_metrics")}
    comparison = compare_with_from_scratch(cfg, metrics, strategy)
    if comparison:
        metrics["comparison"] = comparison
    write_json(os.path.join(cfg.run_dir, "metrics.json"), metrics)
    write_training_curves(cfg, result.history)
    print_summary(task, metrics, time.time() - start)
    return metrics


def pretraining_summary(cfg) -> dict:
    from pipeline.tasks.masked_lm import summary_of

    summary = summary_of(cfg.model.init_checkpoint) or {}
    return {"init_checkpoint": cfg.model.init_checkpoint,
            **{k: summary[k] for k in ("steps", "seconds", "loss", "masked_accuracy",
                                       "corpus") if k in summary}}


def from_scratch_config(cfg):
    """This config with pretraining off: the same classifier, tokenizer
    settings, data and fine-tuning schedule, from random weights (no layer
    decay, which only means something for pre-trained layers)."""
    import copy

    from pipeline.config import PretrainConfig

    twin = copy.deepcopy(cfg)
    twin.name = cfg.pretrain.from_scratch_experiment
    # Off, and the defaults: pre-training settings do not make another twin.
    twin.pretrain = PretrainConfig(enabled=False)
    twin.model.init_checkpoint = ""
    twin.train.layer_decay = 1.0
    return twin.validate()


def _same_test(other: dict, metrics: dict) -> bool:
    return other.get("text") == metrics.get("text") and \
        other.get("test", {}).get("examples") == metrics["test"]["examples"]


def compare_with_from_scratch(cfg, metrics, strategy=None) -> dict | None:
    """Test accuracy and macro-F1 of the from-scratch model (experiment
    pretrain.from_scratch_experiment), this run and the baseline, on the same
    test split and text. A missing (or stale) from-scratch experiment is
    trained here first (cached: its checkpoints resume, its metrics.json is
    reused), without export."""
    name = cfg.pretrain.from_scratch_experiment
    if not name or "baseline" not in metrics or not cfg.model.init_checkpoint:
        return None
    twin = from_scratch_config(cfg)
    rows = {"pretrained_finetuned": {k: metrics["test"][k] for k in ("accuracy", "macro_f1")}}
    baseline = {k: metrics["baseline"][k] for k in ("accuracy", "macro_f1")}
    changed = settings_changed(os.path.join(twin.run_dir, "config.yaml"), twin,
                               ignore=HOW_A_RUN_IS_RUN)
    if changed:
        log(f"[compare] {twin.run_dir}/ holds a from-scratch run with other settings "
            f"({', '.join(changed[:6])}): not compared, not overwritten. Delete it, or "
            "name another pretrain.from_scratch_experiment, to train the twin again")
        return {**rows, "baseline": baseline}
    path = os.path.join(twin.run_dir, "metrics.json")
    other = None
    if os.path.isfile(path):
        with open(path) as f:
            other = json.load(f)
        if not _same_test(other, metrics):
            log(f"[compare] {path} is not on this run's test split and text: "
                "running the from-scratch experiment again (it resumes from its "
                "checkpoints and is evaluated on this split)")
            other = None
    if other is None and cfg.runtime.strategy == "multi_worker_mirrored":
        # The other workers have finished: the chief does not train alone.
        log(f"[compare] no from-scratch model yet: run 'python -m pipeline run <this "
            f"config> --no-export --set name={name} --set pretrain.enabled=false --set "
            "train.layer_decay=1.0 --set runtime.strategy=default' to add it to the "
            "comparison")
    elif other is None:
        log(f"[compare] training the same classifier from random weights for the "
            f"comparison: experiment {name} (pretraining off, not exported)")
        other = run(twin, do_export=False, strategy=strategy)
    if other is not None:
        rows["from_scratch"] = {**{k: other["test"][k] for k in ("accuracy", "macro_f1")},
                                "experiment": name}
    return {**rows, "baseline": baseline}


# Config keys that say how or under which name a run is run, not what it
# trains: a from-scratch twin launched by hand (the multi-worker hint above)
# with another strategy or stale pretrain.* values is still the same twin.
HOW_A_RUN_IS_RUN = ("name", "pretrain.", "runtime.strategy", "runtime.devices",
                    "runtime.tpu_address", "runtime.collective_timeout_seconds",
                    "runtime.step_timeout_seconds", "runtime.logical_cpu_devices",
                    "runtime.data_service")


def settings_changed(saved_config: str, cfg, ignore=()) -> list[str]:
    """The config keys whose value in `saved_config` (a run's config.yaml)
    differs from `cfg`'s, but for keys starting with one of `ignore`; []
    when the file does not exist."""
    import yaml

    if not os.path.isfile(saved_config):
        return []
    with open(saved_config, encoding="utf-8") as f:
        saved = yaml.safe_load(f) or {}

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out

    old, new = flat(saved), flat(cfg.to_dict())
    return sorted(k for k in old.keys() | new.keys()
                  if old.get(k) != new.get(k) and not k.startswith(tuple(ignore)))


def write_training_curves(cfg, history=None):
    """report/training_curves.png from the run's TensorBoard event files."""
    from pipeline.plots import TRAINING_CURVES_FILE, plot_training_curves

    path = plot_training_curves(
        os.path.join(cfg.run_dir, "tensorboard"),
        os.path.join(cfg.run_dir, "report", TRAINING_CURVES_FILE),
        title=f"{cfg.name}: training curves", history=history)
    log(f"[report] training curves {path}")
    return path


def print_summary(task, metrics, seconds):
    from pipeline.files import dir_size

    cfg = task.cfg
    run_dir = cfg.run_dir
    lines = ["", f"== {cfg.name} done in {seconds / 60:.1f} min. Written under {run_dir}/:"]

    def entry(path, what):
        if os.path.exists(path):
            size = dir_size(path) if os.path.isdir(path) else os.path.getsize(path)
            lines.append(f"  {os.path.relpath(path, run_dir):<42} {size / 1e6:8.2f} MB  {what}")

    entry(os.path.join(run_dir, "config.yaml"), "resolved config")
    for relative, what in task.artifact_descriptions().items():
        if relative.startswith("tokenizer"):
            entry(os.path.join(run_dir, relative), what)
    entry(os.path.join(run_dir, "checkpoints"), "tf.train checkpoints (rerun resumes)")
    entry(os.path.join(run_dir, "tensorboard"), f"tensorboard --logdir {run_dir}/tensorboard")
    entry(os.path.join(run_dir, "report", "training_curves.png"), "loss/metric/lr curves")
    for relative, what in task.artifact_descriptions().items():
        if not relative.startswith("tokenizer"):
            entry(os.path.join(run_dir, relative), what)
    entry(os.path.join(run_dir, "metrics.json"), "test metrics, baseline, TFLite checks")
    if "artifacts" in metrics:
        entry(metrics["artifacts"]["saved_model"], "SavedModel for TF Serving")
        for variant, r in metrics["tflite"].items():
            entry(r["path"], f"TFLite {variant}")
        entry(metrics["artifacts"]["edge_bundle"], "edge bundle: python edge/app.py --bundle "
              f"{metrics['artifacts']['edge_bundle']} {task.edge_example}")
    lines.append("")
    lines.extend(task.summary_lines(metrics))
    for variant, r in metrics.get("tflite", {}).items():
        agreement = r.get("agreement_with_keras")
        lines.append(f"  TFLite {variant:<13} {task.best_metric} {r[task.best_metric]:.4f}"
                     + (f"  agreement {agreement:.4f}" if agreement is not None else "")
                     + f"  batch-1 {r['latency_batch1']['threads_1']['median_ms']:.2f} ms")
    training = metrics["training"]
    if training["steps"] > training["resumed_from_step"]:
        lines.append(f"  training: {training['examples_per_second']:,.0f} examples/s over "
                     f"{training['steps'] - training['resumed_from_step']:,} steps in this "
                     f"run ({training['seconds_this_process'] / 60:.1f} min)")
    else:
        lines.append(f"  training: already complete ({training['steps']:,} steps); "
                     "delete checkpoints/ to train again")
    log("\n".join(lines))
