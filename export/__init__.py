"""Everything after a trained checkpoint: SavedModel, TFLite, edge bundle.

`export_all(task, model, reference)` is the one export path of every task;
what differs per task comes from its export module (`export/modules/`).
"""

from __future__ import annotations

import os


def export_all(task, model, reference, log=print) -> dict:
    """SavedModel (+ warm-up, op check), TFLite variants measured with the
    task's metric, the quantization report and the gated edge bundle."""
    from export.bundle import write_bundle
    from export.modules import make_export_module
    from export.quantize import QuantizationRecipe
    from export.report import choose_variant, format_table, summarize, write_report
    from export.saved_model import export_serving
    from export.tflite import evaluate_tflite, export_tflite
    from pipeline.config import ConfigError

    cfg, e = task.cfg, task.cfg.export
    run_dir = cfg.run_dir
    module = make_export_module(task, model)
    version_dir = export_serving(module, os.path.join(run_dir, "serving"), e.model_name,
                                 e.version, log=log)
    saved_model = module.saved_model_metrics(version_dir, reference)
    if saved_model:
        log(f"[export] SavedModel checked: {saved_model}")
    integer = {"int8", "int16x8"} & set(e.tflite_variants)
    recipe = QuantizationRecipe(
        calibration_inputs=module.calibration_inputs(
            module.tflite_signatures[0], e.int8_calibration_examples, cfg.train.seed)
        if integer else None,
        mask_fill_value=e.int8_mask_fill_value, float_ops=list(e.int8_float_ops),
        per_channel=e.int8_per_channel, int8_output=e.int8_output,
        int8_input=module.int8_input)
    failures = {}
    paths = export_tflite(module, e.tflite_variants, os.path.join(run_dir, "edge"), log=log,
                          recipe=recipe, failures=failures)
    tflite = evaluate_tflite(paths, module, reference, latency_runs=e.latency_runs,
                             log=log, failures=failures)
    gate = dict(metric=module.gate_metric, direction=module.gate_direction,
                scale=module.gate_scale)
    if e.edge_variant == "auto":
        chosen, reason = choose_variant(tflite, e.accuracy_gate_points, **gate)
    elif e.edge_variant in tflite:
        chosen, reason = e.edge_variant, f"{e.edge_variant}: set by export.edge_variant"
    else:
        raise ConfigError(f"export.edge_variant={e.edge_variant!r} could not be produced: "
                          f"{failures.get(e.edge_variant)}; choose another or 'auto'")
    summary = summarize(tflite, chosen, reason, e.accuracy_gate_points, failures, extra={
        "experiment": cfg.name, "task": task.name, "edge_variant_setting": e.edge_variant,
        "latency_unit": module.latency_unit,
        "int8_recipe": {"calibration_examples": e.int8_calibration_examples,
                        "calibration_split": "train",
                        "mask_fill_value": e.int8_mask_fill_value,
                        "float_ops": list(e.int8_float_ops),
                        "per_channel": e.int8_per_channel, "output": e.int8_output,
                        "input": module.int8_input}},
        **gate)
    report = write_report(os.path.join(run_dir, "report"), summary,
                          title=f"{cfg.name}: TFLite variants")
    metric = module.gate_metric
    bundle = write_bundle(
        os.path.join(run_dir, "edge", "bundle"), paths[chosen], task.name,
        files=module.bundle_files(), manifest=module.bundle_manifest(), variant=chosen,
        extra={metric: tflite[chosen][metric],
               "variant_choice": {"setting": e.edge_variant, "reason": reason,
                                  "accuracy_gate_points": e.accuracy_gate_points,
                                  f"float32_{metric}": tflite["float32"][metric]}},
        log=log)
    log(f"\n{format_table(summary)}\n\nedge bundle: {reason}\n"
        f"report: {report['markdown']}, {report['png']}")
    return {"saved_model": version_dir, "tflite": tflite, "edge_bundle": bundle,
            "quantization_report": report["json"], "saved_model_metrics": saved_model}
