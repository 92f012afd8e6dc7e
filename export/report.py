"""Quantization report: the gated choice of the edge variant, JSON, Markdown, PNG.

`choose_variant` picks the default edge model: the smallest (then fastest at
batch 1, one thread) TFLite variant whose test accuracy is within
`gate_points` accuracy points of the float32 variant. float32 itself is always
within its own gate, so when every quantized variant loses too much, float32
is chosen.

`write_report` writes, for every run, under artifacts/<exp>/report/:

  quantization.json   every variant's measurements, failures, the choice and why
  report.md           the same as a table
  quantization.png    size vs batch-1 latency, each point labelled with accuracy
"""

from __future__ import annotations

import json
import os

from pipeline.files import atomic_path, write_atomic

REPORT_JSON, REPORT_MD, REPORT_PNG = "quantization.json", "report.md", "quantization.png"
_EPS = 1e-9  # accuracies are ratios of counts; compare with a hair of slack


def _latency(result: dict, threads: int) -> float:
    return float(result["latency_batch1"][f"threads_{threads}"]["median_ms"])


def _shown(value: float, scale: float) -> str:
    return f"{100 * value:.2f}%" if scale == 100 else f"{value:.4g}"


def _within(value: float, reference: float, gate_points: float, direction: str,
            scale: float) -> bool:
    """`value` at most `gate_points` (in units of 1/scale) worse than reference."""
    worse = (reference - value) if direction == "max" else (value - reference)
    return worse * scale <= gate_points + _EPS * scale


def choose_variant(results: dict[str, dict], gate_points: float = 0.5,
                   metric: str = "accuracy", direction: str = "max",
                   scale: float = 100.0) -> tuple[str, str]:
    """(variant, reason): smallest, then fastest, variant within the gate.

    Args:
        results: per variant at least `metric`, "size_bytes" and
            "latency_batch1" {"threads_1": {"median_ms"}}; must hold float32.
        gate_points: allowed loss of `metric` against float32, in points (with
            scale 100 and accuracy: 0.5 = half a percentage point).
        metric, direction: the task's metric and whether larger ("max") or
            smaller ("min") is better.
        scale: points per unit of the metric.
    """
    if gate_points < 0:
        raise ValueError(f"export.accuracy_gate_points must be >= 0, got {gate_points}")
    if "float32" not in results:
        raise ValueError(f"the {metric} gate compares with float32, which is not among "
                         f"the evaluated variants {sorted(results)}")
    if direction not in ("max", "min"):
        raise ValueError(f"direction must be 'max' or 'min', got {direction!r}")
    reference = results["float32"][metric]
    floor = reference - gate_points / scale if direction == "max" else \
        reference + gate_points / scale
    bound = ">=" if direction == "max" else "<="
    within = [v for v, r in results.items()
              if _within(r[metric], reference, gate_points, direction, scale)]
    outside = [v for v in results if v not in within]
    chosen = min(within, key=lambda v: (results[v]["size_bytes"], _latency(results[v], 1)))
    r = results[chosen]
    ruled_out = "; ".join(
        f"{v} {_shown(results[v][metric], scale)} "
        f"({scale * (results[v][metric] - reference):+.2f} points)" for v in outside)
    if chosen == "float32" and len(results) > 1:
        why = (f"float32: no quantized variant is within {gate_points:g} {metric} points "
               f"of float32 ({_shown(reference, scale)}, gate {bound} "
               f"{_shown(floor, scale)})")
    else:
        why = (f"{chosen}: smallest ({r['size_bytes'] / 1e6:.2f} MB), then fastest "
               f"({_latency(r, 1):.3f} ms batch-1, 1 thread), of the variants within "
               f"{gate_points:g} {metric} points of float32 ({_shown(r[metric], scale)} "
               f"vs {_shown(reference, scale)}, gate {bound} {_shown(floor, scale)})")
    if ruled_out:
        why += f"; outside the gate: {ruled_out}"
    return chosen, why


def summarize(results: dict[str, dict], chosen: str, reason: str, gate_points: float,
              failures: dict[str, str] | None = None, extra: dict | None = None,
              metric: str = "accuracy", direction: str = "max",
              scale: float = 100.0) -> dict:
    """The content of quantization.json."""
    reference = results["float32"][metric]
    variants = {}
    for v, r in results.items():
        variants[v] = {
            "file": os.path.basename(r.get("path", f"{v}.tflite")),
            metric: r[metric],
            f"{metric}_delta_points": round(scale * (r[metric] - reference), 4),
            "agreement_with_keras": r.get("agreement_with_keras"),
            "size_bytes": r["size_bytes"],
            "latency_ms_batch1_1_thread": _latency(r, 1),
            "latency_ms_batch1_2_threads": _latency(r, 2),
            "latency_runs": r["latency_batch1"]["threads_1"].get("runs"),
            "examples": r.get("examples"),
            "within_gate": _within(r[metric], reference, gate_points, direction, scale),
        }
    summary = {
        "metric": metric, "direction": direction, "scale": scale,
        "accuracy_gate_points": gate_points,
        f"float32_{metric}": reference,
        "chosen": chosen,
        "reason": reason,
        "variants": variants,
        "failed": dict(failures or {}),
    }
    summary.update(extra or {})
    return summary


def format_table(summary: dict) -> str:
    """Markdown table of every variant, the chosen one marked."""
    metric, scale = summary.get("metric", "accuracy"), summary.get("scale", 100.0)
    lines = [f"| variant | {metric} | vs float32 | agreement | size (MB) | "
             "batch-1 ms, 1 thread | batch-1 ms, 2 threads | within gate |",
             "|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for v, r in summary["variants"].items():
        name = f"**{v}** (chosen)" if v == summary["chosen"] else v
        agreement = r["agreement_with_keras"]
        lines.append(
            f"| {name} | {_shown(r[metric], scale)} | {r[f'{metric}_delta_points']:+.2f} | "
            + (f"{100 * agreement:.2f}% | " if agreement is not None else "- | ")
            + f"{r['size_bytes'] / 1e6:.2f} | {r['latency_ms_batch1_1_thread']:.3f} | "
            f"{r['latency_ms_batch1_2_threads']:.3f} | "
            f"{'yes' if r['within_gate'] else 'no'} |")
    for v, why in summary.get("failed", {}).items():
        lines.append(f"| {v} | failed: {why[:120]} | | | | | | |")
    return "\n".join(lines)


def plot(summary: dict, path: str, title: str = "") -> str:
    """Size vs batch-1 latency (1 thread), points labelled with accuracy."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 5), dpi=120)
    axes = figure.add_subplot()
    points = {v: (r["size_bytes"] / 1e6, r["latency_ms_batch1_1_thread"])
              for v, r in summary["variants"].items()}
    span = max(max(x for x, _ in points.values()), 1e-9)

    def below(v):
        """Label below the point when a close neighbour in size sits higher."""
        x, y = points[v]
        return any(abs(ox - x) < 0.08 * span and oy > y
                   for o, (ox, oy) in points.items() if o != v)

    for v, r in summary["variants"].items():
        x, y = points[v]
        chosen = v == summary["chosen"]
        axes.scatter([x], [y], s=90 if chosen else 45, marker="*" if chosen else "o",
                     color="tab:red" if chosen else ("tab:blue" if r["within_gate"]
                                                     else "tab:gray"), zorder=3)
        value = _shown(r[summary.get("metric", "accuracy")], summary.get("scale", 100.0))
        axes.annotate(f"{v}\n{value}" + (" (chosen)" if chosen else ""),
                      (x, y), textcoords="offset points", fontsize=8,
                      xytext=(7, -24) if below(v) else (7, 5))
    axes.set_xlabel("file size (MB)")
    axes.set_ylabel("batch-1 latency, median (ms, 1 thread, log scale)")
    axes.set_yscale("log")
    axes.set_title(title or f"TFLite variants (gate: {summary['accuracy_gate_points']:g} "
                   f"{summary.get('metric', 'accuracy')} points of float32)", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.margins(x=0.25, y=0.2)
    axes.set_xlim(left=0)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp)
    return path


def write_report(report_dir: str, summary: dict, title: str = "") -> dict[str, str]:
    """Writes quantization.json, report.md and quantization.png; returns their paths."""
    os.makedirs(report_dir, exist_ok=True)
    paths = {"json": os.path.join(report_dir, REPORT_JSON),
             "markdown": os.path.join(report_dir, REPORT_MD),
             "png": os.path.join(report_dir, REPORT_PNG)}
    write_atomic(paths["json"], json.dumps(summary, indent=2) + "\n")
    runs = {r["latency_runs"] for r in summary["variants"].values()}
    recipe = summary.get("int8_recipe")
    unit = summary.get("latency_unit")
    md = [f"# {title or 'Quantization report'}", "",
          f"Evaluated with ai_edge_litert on the test split "
          f"({_first(summary, 'examples')} examples); latency is the median of "
          f"{', '.join(str(r) for r in sorted(runs, key=str))} batch-1 runs after warm-up"
          + (f" (one run: {unit})." if unit else "."),
          "", format_table(summary), "",
          f"**Edge bundle variant: {summary['chosen']}.** {summary['reason']}.", "",
          f"![size vs latency]({REPORT_PNG})", ""]
    if recipe:
        md += ["int8 / int16x8 recipe: " + ", ".join(f"{k}={v}" for k, v in recipe.items()),
               ""]
    write_atomic(paths["markdown"], "\n".join(md))
    plot(summary, paths["png"], title)
    return paths


def _first(summary: dict, key: str):
    for r in summary["variants"].values():
        return r.get(key)
    return None



