"""`python -m pipeline bench` at a tiny shape: printed ratios, JSON and markdown;
and the report alone, from the committed docs/benchmarks.json.

A benchmark is not a timed test: nothing here asserts a speed, only that every
figure is produced, is a positive number and lands where it was asked to.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

RATIO_LINES = {
    "training": r"^training throughput ours/reference: (\S+)x$",
    "training_float32": r"^training throughput ours float32/reference: (\S+)x$",
    "input": r"^input pipeline / training consumption: (\S+)x$",
    "edge": r"^edge latency fastest/float32 \(batch 1, (float32|dynamic_range), "
            r"([12]) threads\): (\S+)$",
}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    json_path, md_path = out / "nested" / "bench.json", out / "BENCH.md"
    before = docs_outputs()
    command = [sys.executable, "-m", "pipeline", "bench", "--quick",
               "--vocab", "200", "--seq", "16", "--hidden", "32", "--layers", "2",
               "--batch", "4", "--repeats", "2", "--steps", "2",
               "--variants", "float32,dynamic_range",
               "--out-json", str(json_path), "--out-md", str(md_path)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json_path, md_path, before, docs_outputs()


def docs_outputs():
    """Modification times of the bench's default outputs (None if absent)."""
    paths = [os.path.join(ROOT, "docs", name) for name in ("benchmarks.json", "BENCHMARKS.md")]
    return {p: os.path.getmtime(p) if os.path.exists(p) else None for p in paths}


@pytest.mark.slow
def test_bench_prints_every_ratio_as_a_positive_number(bench_run):
    stdout = bench_run[0]
    lines = stdout.splitlines()
    for name, pattern in RATIO_LINES.items():
        found = [re.match(pattern, line) for line in lines]
        found = [m for m in found if m]
        assert len(found) == 1, f"{name}: no line matching {pattern!r} in\n{stdout}"
        assert float(found[0].groups()[-1]) > 0, found[0].group(0)


@pytest.mark.slow
def test_bench_json_has_every_section(bench_run):
    _, json_path, _, _, _ = bench_run
    r = json.loads(json_path.read_text())
    assert r["shape"] == {"vocab": 200, "seq": 16, "hidden": 32, "heads": 2, "ff": 64,
                          "layers": 2, "batch": 4, "classes": 4}
    assert {"machine", "versions", "load_average_start", "command", "seconds",
            "matmul_peak", "training", "input_pipeline", "latency",
            "where_the_time_goes", "targets"} <= set(r)
    assert r["machine"]["cpu"] and r["machine"]["usable_cpus"] >= 1
    cases = r["training"]["cases"]
    assert set(cases) == {"reference", "ours float32", "ours float32 + XLA",
                          "ours mixed_bfloat16", "ours mixed_bfloat16 + XLA",
                          "ours mixed_bfloat16, optimizer uncompiled"}
    for row in cases.values():
        assert row["examples_per_second"] > 0 and row["gflops"] > 0
        assert row["utilisation_percent"] > 0 and row["repeats"] == 2
    assert r["training"]["fastest"] in cases and r["training"]["fastest"] != "reference"
    assert cases["reference"]["jit_compile"] is False    # Keras' "auto" on CPU
    # 2 layers: 8*S*H^2 + 4*S^2*H + 4*S*H*FF each, plus the head; x3 to train.
    forward = 2 * (8 * 16 * 32 ** 2 + 4 * 16 ** 2 * 32 + 4 * 16 * 32 * 64) + 2 * 32 * 4
    assert r["training"]["flops_per_example_forward"] == forward
    assert r["training"]["flops_per_example_training"] == 3 * forward
    for dtype in ("float32", "bfloat16"):
        assert r["matmul_peak"][dtype]["gflops_median"] > 0
    pipeline = r["input_pipeline"]
    assert pipeline["first_epoch_examples_per_second"] > 0 and pipeline["ratio"] > 0
    latency = r["latency"]["models"].values()
    tflite = {(m["variant"], m["threads"], m["batch"]) for m in latency
              if m["kind"] == "tflite"}
    assert tflite == {(v, t, b) for v in ("float32", "dynamic_range") for t in (1, 2)
                      for b in (1, 32)}
    assert {m["model"] for m in latency if m["kind"] == "tensorflow"} == {
        "Keras (tf.function)", "SavedModel token_ids",
        "SavedModel text (tokenization in graph)"}
    assert all(m["median_ms"] > 0 for m in latency)
    assert r["latency"]["edge_ratio"]["ratio"] > 0
    phases = r["where_the_time_goes"]["phases"]
    assert "ours float32" in phases and all(p["step_ms"] > 0 for p in phases.values())
    assert len(r["targets"]) == 3
    assert all(isinstance(t["met"], bool) and t["measured"] > 0 for t in r["targets"])


@pytest.mark.slow
def test_bench_writes_markdown_to_the_given_path_and_leaves_docs_alone(bench_run):
    _, _, md_path, before, after = bench_run
    text = md_path.read_text()
    for heading in ("# Benchmarks", "## Machine", "## Targets", "## Training throughput",
                    "## FLOPs and utilisation", "## Input pipeline", "## Latency",
                    "## Where the time goes"):
        assert heading in text
    assert "python -m pipeline bench --quick" in text
    assert "speed only" in text
    assert before == after, "the bench test must not write to docs/"


def test_flop_formula_matches_the_issue():
    from pipeline.bench.measure import forward_flops_per_example, training_flops_per_example

    s, h, ff, layers, classes = 128, 256, 1024, 4, 4
    per_layer = 4 * 2 * s * h * h + 2 * 2 * s * s * h + 2 * 2 * s * h * ff
    assert forward_flops_per_example(s, h, ff, layers, classes) == \
        layers * per_layer + 2 * h * classes
    assert training_flops_per_example(s, h, ff, layers, classes) == \
        3 * forward_flops_per_example(s, h, ff, layers, classes)


def test_bench_rejects_bad_flags(capsys):
    from pipeline.cli import main

    assert main(["bench", "--quick", "--hidden", "30", "--heads", "4"]) == 2
    assert "--hidden 30 must be divisible by --heads 4" in capsys.readouterr().err
    assert main(["bench", "--quick", "--variants", "int8"]) == 2
    assert "--variants must include float32" in capsys.readouterr().err


GENERATED_HEADINGS = ("## Machine", "## Targets", "## Training throughput",
                      "## FLOPs and utilisation", "## Input pipeline", "## Latency",
                      "## Where the time goes", "## Printed output")


def committed_results() -> dict:
    with open(os.path.join(ROOT, "docs", "benchmarks.json"), encoding="utf-8") as f:
        return json.load(f)


def test_report_keeps_the_sections_it_does_not_write_and_replaces_its_own(tmp_path):
    from pipeline.bench import report

    page = tmp_path / "BENCH.md"
    page.write_text("# Benchmarks\n\nold intro\n\n## Targets\n\nstale targets\n\n"
                    "## Notes\n\nhand-written, kept\n\n```\n## not a heading\n```\n\n"
                    "## Printed output\n\n```\n## stale printed output\n```\n")
    results = committed_results()
    text = report.format_summary(results)
    report.write_markdown(str(page), results, text)
    report.write_markdown(str(page), results, text)   # a rerun keeps it once
    written = page.read_text()
    assert "stale" not in written and "old intro" not in written
    assert written.count("## Notes\n\nhand-written, kept\n\n```\n## not a heading\n```") == 1
    assert written.index("## Notes") < written.index("## Printed output")
    for heading in GENERATED_HEADINGS:
        assert written.count(f"\n{heading}\n") == 1, heading
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_committed_page_is_the_committed_json_rendered(tmp_path):
    """docs/BENCHMARKS.md is what report.py writes from docs/benchmarks.json (plus
    its hand-written sections): after a change to report.py, rerun the bench or
    `report.render_markdown("docs/benchmarks.json", "docs/BENCHMARKS.md")`."""
    from pipeline.bench import report

    committed = os.path.join(ROOT, "docs", "BENCHMARKS.md")
    page = tmp_path / "BENCHMARKS.md"
    page.write_text(open(committed, encoding="utf-8").read())
    report.render_markdown(os.path.join(ROOT, "docs", "benchmarks.json"), str(page))
    assert page.read_text() == open(committed, encoding="utf-8").read()
    assert "## Code layout" in page.read_text() and "## Measured history" in page.read_text()
