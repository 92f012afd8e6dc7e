"""Quantized TFLite variants, the accuracy-gated choice, the report, the int8 bundle.

The gate and the report are checked on synthetic numbers (fast); every variant
is converted from the trained debug model and run with ai_edge_litert (slow);
an int8 bundle with an int8 output goes through edge/app.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from export.report import choose_variant, format_table, summarize, write_report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APP = os.path.join(ROOT, "edge", "app.py")


def result(accuracy, size_mb, ms1, ms2=None):
    return {"accuracy": accuracy, "agreement_with_keras": accuracy,
            "size_bytes": int(size_mb * 1e6),
            "examples": 1000, "path": "x.tflite",
            "latency_batch1": {"threads_1": {"median_ms": ms1, "runs": 100},
                               "threads_2": {"median_ms": ms2 or ms1, "runs": 100}}}


# ------------------------------------------------------------------ the gate


def test_gate_picks_the_smallest_variant_within_the_gate():
    results = {"float32": result(0.835, 5.2, 1.0), "float16": result(0.835, 2.6, 0.9),
               "dynamic_range": result(0.832, 1.40, 0.5), "int8": result(0.8335, 1.38, 0.8),
               "int16x8": result(0.73, 2.4, 18.0)}
    chosen, reason = choose_variant(results, gate_points=0.5)
    assert chosen == "int8"
    assert "smallest" in reason and "int16x8" in reason  # names what was ruled out


def test_gate_breaks_size_ties_by_latency():
    results = {"float32": result(0.80, 5.0, 1.0), "a": result(0.80, 1.0, 0.9),
               "b": result(0.80, 1.0, 0.4)}
    assert choose_variant(results)[0] == "b"


def test_gate_boundary_is_inclusive_and_configurable():
    results = {"float32": result(0.800, 5.0, 1.0), "int8": result(0.795, 1.3, 0.8)}
    assert choose_variant(results, gate_points=0.5)[0] == "int8"     # exactly -0.5 points
    assert choose_variant(results, gate_points=0.4)[0] == "float32"
    assert choose_variant(results, gate_points=0.0)[0] == "float32"


def test_no_variant_within_the_gate_gives_float32():
    results = {"float32": result(0.835, 5.2, 1.0), "dynamic_range": result(0.82, 1.4, 0.5),
               "int8": result(0.686, 1.38, 2.3), "int16x8": result(0.25, 2.4, 30.0)}
    chosen, reason = choose_variant(results, gate_points=0.5)
    assert chosen == "float32"
    assert "no quantized variant" in reason


def test_a_better_quantized_variant_is_within_the_gate():
    results = {"float32": result(0.835, 5.2, 1.0), "int8": result(0.84, 1.38, 1.2)}
    assert choose_variant(results)[0] == "int8"


def test_gate_errors_are_clear():
    with pytest.raises(ValueError, match="float32"):
        choose_variant({"int8": result(0.8, 1.0, 1.0)})
    with pytest.raises(ValueError, match="accuracy_gate_points"):
        choose_variant({"float32": result(0.8, 1.0, 1.0)}, gate_points=-1)


# -------------------------------------------------------------------- config


def test_config_defaults_list_every_variant_and_auto():
    from export.quantize import VARIANTS
    from pipeline.config import TFLITE_VARIANTS, ExportConfig, load_config

    assert TFLITE_VARIANTS == VARIANTS
    assert ExportConfig().tflite_variants == list(VARIANTS)
    assert ExportConfig().edge_variant == "auto" and ExportConfig().accuracy_gate_points == 0.5
    cfg = load_config(os.path.join(ROOT, "configs", "text_classification.yaml"))
    # The default experiment leaves the slow, never-chosen int16x8 out (docs/QUANTIZATION.md).
    assert cfg.export.tflite_variants == [v for v in VARIANTS if v != "int16x8"]
    assert cfg.export.edge_variant == "auto"


@pytest.mark.parametrize("override, key", [
    ("export.tflite_variants=[float32,int4]", "export.tflite_variants"),
    ("export.tflite_variants=[int8,dynamic_range]", "export.tflite_variants"),
    ("export.edge_variant=int8", "export.edge_variant"),  # not among the debug variants
    ("export.accuracy_gate_points=-1", "export.accuracy_gate_points"),
    ("export.int8_output=uint8", "export.int8_output"),
    ("export.int8_float_ops=[layer norm]", "export.int8_float_ops"),
    ("export.int8_calibration_examples=0", "export.int8_calibration_examples"),
])
def test_config_rejects_bad_export_values(override, key):
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(os.path.join(ROOT, "configs", "text_classification_debug.yaml"), [override])


# -------------------------------------------------------------------- report


def test_report_files_are_written(tmp_path):
    results = {"float32": result(0.835, 5.2, 1.0, 1.1), "dynamic_range": result(0.8349, 1.4, 0.5),
               "int8": result(0.836, 1.38, 0.9)}
    chosen, reason = choose_variant(results)
    summary = summarize(results, chosen, reason, 0.5, failures={"int16x8": "calibration failed"},
                        extra={"experiment": "t"})
    paths = write_report(str(tmp_path / "report"), summary, title="t: TFLite variants")
    on_disk = json.loads(open(paths["json"]).read())
    assert on_disk["chosen"] == "int8" and on_disk["failed"] == {"int16x8": "calibration failed"}
    assert on_disk["variants"]["int8"]["within_gate"] is True
    assert on_disk["variants"]["int8"]["accuracy_delta_points"] == pytest.approx(0.1)
    md = open(paths["markdown"]).read()
    for variant in ("float32", "dynamic_range", "int8", "int16x8"):
        assert f"| {variant}" in md or f"| **{variant}**" in md
    assert "**int8** (chosen)" in md and "83.60%" in md and "1.38" in md
    assert "quantization.png" in md
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(paths["png"]) > 10_000
    assert len(format_table(summary).splitlines()) == 2 + 3 + 1  # header, 3 variants, 1 failed


# ------------------------------------------------- every variant, real model


@pytest.fixture(scope="module")
def debug_model(debug_run, debug_trained):
    from export.modules import make_export_module

    cfg, _ = debug_run
    task, model = debug_trained
    module = make_export_module(task, model)
    ids, labels = module.test_split()
    probabilities = []
    for i in range(0, len(ids), 256):
        batch = ids[i:i + 256]
        logits = np.asarray(model({"token_ids": batch, "padding_mask": batch != 0},
                                  training=False))
        e = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities.append(e / e.sum(-1, keepdims=True))
    calibration = module.calibration_inputs("serving_default", 200, cfg.train.seed)
    return {"cfg": cfg, "model": model, "module": module,
            "tokenizer": task.tokenizer_path, "calibration": calibration,
            "ids": ids, "labels": labels, "probabilities": np.concatenate(probabilities)}


@pytest.mark.slow
def test_every_variant_converts_and_runs(debug_model, tmp_path):
    from export.quantize import VARIANTS, QuantizationRecipe
    from export.tflite import evaluate_tflite, export_tflite, tensor_details

    d = debug_model
    assert len(d["calibration"]) == 200
    first = d["calibration"][0]["token_ids"]
    assert first.shape == (1, d["cfg"].model.max_sequence_length) and first.dtype == np.int32
    failures = {}
    paths = export_tflite(d["module"], list(VARIANTS), str(tmp_path), log=lambda *_: None,
                          recipe=QuantizationRecipe(d["calibration"]), failures=failures)
    assert failures == {} and set(paths) == set(VARIANTS)
    results = evaluate_tflite(paths, d["module"], d["probabilities"], latency_runs=100,
                              log=lambda *_: None, failures=failures)
    assert failures == {} and set(results) == set(VARIANTS)
    sizes = {v: r["size_bytes"] for v, r in results.items()}
    assert sizes["float16"] < sizes["float32"] and sizes["int8"] < sizes["float16"]
    assert sizes["dynamic_range"] < sizes["float16"]
    agreement = {v: r["agreement_with_keras"] for v, r in results.items()}
    assert agreement["float32"] == 1.0 and agreement["float16"] >= 0.99
    assert agreement["dynamic_range"] >= 0.95 and agreement["int8"] >= 0.9, agreement
    chance = 1.0 / d["probabilities"].shape[1]
    assert results["int16x8"]["accuracy"] > 2 * chance, results["int16x8"]
    for r in results.values():
        assert r["latency_batch1"]["threads_1"]["runs"] == 100
        assert r["latency_batch1"]["threads_2"]["median_ms"] > 0
    details = tensor_details(paths["int8"])
    assert details["input"]["dtype"] == "int32" and details["output"]["dtype"] == "float32"
    chosen, _ = choose_variant(results, 0.5)
    assert results[chosen]["accuracy"] >= results["float32"]["accuracy"] - 0.005


@pytest.mark.slow
def test_int8_bundle_with_int8_output_classifies_through_the_app(debug_model, tmp_path):
    from export.bundle import write_bundle
    from export.quantize import QuantizationRecipe
    from export.tflite import TFLiteModel, export_tflite
    from tests.conftest import HOSTILE_TEXTS

    d, module = debug_model, debug_model["module"]
    recipe = QuantizationRecipe(d["calibration"], int8_output="int8")
    paths = export_tflite(module, ["int8"], str(tmp_path / "edge"), log=lambda *_: None,
                          recipe=recipe)
    with open(os.path.join(os.path.dirname(d["tokenizer"]), "labels.txt")) as f:
        labels = [line.strip() for line in f if line.strip()]
    bundle = write_bundle(str(tmp_path / "bundle"), paths["int8"], "text_classification",
                          files=module.bundle_files(), manifest=module.bundle_manifest(),
                          variant="int8", log=lambda *_: None)
    manifest = json.loads(open(os.path.join(bundle, "manifest.json")).read())
    assert manifest["variant"] == "int8" and manifest["task"] == "text_classification"
    signature = manifest["signatures"]["serving_default"]
    out = signature["outputs"]["probabilities"]
    assert out["dtype"] == "int8" and out["quantization"]["scale"] > 0
    assert signature["inputs"]["token_ids"]["dtype"] == "int32"
    assert manifest["input_name"] == "token_ids" and manifest["pad_id"] == 0

    ids, keras_prob = d["ids"][:200], d["probabilities"][:200]
    tflite_prob = module.predict_tflite(TFLiteModel(paths["int8"]), ids)
    assert np.mean(tflite_prob.argmax(-1) == keras_prob.argmax(-1)) >= 0.9

    from pipeline.sources import load_splits

    splits = load_splits(d["cfg"].data, d["cfg"].runtime.artifacts_root, log=lambda *_: None)
    texts = [str(t) for t in splits.texts["test"][:40]] + HOSTILE_TEXTS
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in texts),
                   encoding="utf-8")
    proc = subprocess.run([sys.executable, APP, "--bundle", bundle, "--jsonl", str(src),
                           "--top-k", "3"], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(got) == len(texts)
    for g in got:
        assert g["label"] in labels and 0.0 <= g["probability"] <= 1.0
        assert [p for _, p in g["top_k"]] == sorted((p for _, p in g["top_k"]), reverse=True)
    # the app's dequantized probabilities are the runtime's, on the app's token ids
    import tensorflow as tf

    from pipeline.tokenizer import InGraphTokenizer, read_model

    app_ids = InGraphTokenizer(read_model(d["tokenizer"]), d["cfg"].model.max_sequence_length)(
        tf.constant(texts[:40])).numpy()
    want = module.predict_tflite(TFLiteModel(paths["int8"]), app_ids)
    assert [g["label"] for g in got[:40]] == [labels[i] for i in want.argmax(-1)]
    np.testing.assert_allclose([g["probability"] for g in got[:40]], want.max(-1), atol=1e-6)


def test_debug_run_writes_the_report_and_a_gated_bundle(debug_run):
    cfg, metrics = debug_run
    report_dir = os.path.join(cfg.run_dir, "report")
    summary = json.loads(open(os.path.join(report_dir, "quantization.json")).read())
    assert set(summary["variants"]) == set(cfg.export.tflite_variants)
    assert os.path.getsize(os.path.join(report_dir, "quantization.png")) > 10_000
    md = open(os.path.join(report_dir, "report.md")).read()
    assert all(v in md for v in cfg.export.tflite_variants)
    manifest = json.loads(open(os.path.join(metrics["artifacts"]["edge_bundle"],
                                            "manifest.json")).read())
    chosen = summary["chosen"]
    assert manifest["variant"] == chosen
    assert manifest["variant_choice"]["setting"] == "auto"
    assert manifest["variant_choice"]["reason"] == summary["reason"]
    assert metrics["tflite"][chosen]["accuracy"] >= metrics["tflite"]["float32"]["accuracy"] - 0.005
    for key in ("input_name", "output_name", "max_sequence_length", "pad_id", "files",
                "pipeline_version", "signatures", "task"):
        assert key in manifest
