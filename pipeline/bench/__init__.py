"""`python -m pipeline bench`: where the time goes, in one process (issue #8).

    python -m pipeline bench                       # reference shape, writes docs/
    python -m pipeline bench --quick --out-json /tmp/b.json --out-md /tmp/B.md

At one model shape (default: vocabulary 8,000, sequence 128, hidden 256, 4
heads, feed-forward 1,024, 4 layers, batch 32, 4 classes) it measures
training throughput of our classifier against a keras-hub reference, FLOP
utilisation against a measured matmul peak, the tf.data input pipeline, and
serving / edge latency (Keras, SavedModel, TFLite variants).

The package:

  settings.py  shapes, run settings and targets; the flags resolved (`resolve`)
  cases.py     what is timed: our model's step, the reference's, the export module
  measure.py   the measurements; `measure_all` returns one JSON-ready dict
  report.py    that dict as the printed summary, JSON and markdown
  input_service.py  `--data-service N`: the training input's examples/s, local
               against a tf.data service of N worker processes

This module is the command-line entry `pipeline/cli.py` uses: `EXAMPLES`,
`add_arguments` and `run_bench`. Results go to a JSON file and a markdown
page (default docs/benchmarks.json, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from pipeline.bench.settings import QUICK_SHAPE, REFERENCE_SHAPE

EXAMPLES = """\
examples:
  python -m pipeline bench          # reference shape -> docs/benchmarks.json, docs/BENCHMARKS.md
  python -m pipeline bench --layers 2 --hidden 128 --ff 512 \
      --out-json /tmp/b.json --out-md /tmp/B.md
  python -m pipeline bench --repeats 7 --steps 10 --variants float32,int8
  python -m pipeline bench --quick --out-json /tmp/b.json --out-md /tmp/B.md   # tiny shape, ~1 min
  python -m pipeline bench --generation configs/language_model.yaml   # decoding speed
  python -m pipeline bench --generation configs/translation.yaml
  python -m pipeline bench --data-service 2     # input examples/s, local vs tf.data service

Run it on an otherwise idle machine: the load average at the start is written
into the report, which says so when the machine was shared.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench flags; shape and run settings default to None (= from --quick or
    the reference shape)."""
    shape = parser.add_argument_group(
        "model shape (default: the reference shape "
        + ", ".join(f"{k} {v}" for k, v in REFERENCE_SHAPE.items()) + ")")
    for key, text in (("vocab", "vocabulary size"), ("seq", "sequence length"),
                      ("hidden", "hidden size"), ("heads", "attention heads"),
                      ("ff", "feed-forward (intermediate) size"),
                      ("layers", "encoder layers"), ("batch", "training batch size"),
                      ("classes", "number of classes")):
        shape.add_argument(f"--{key}", type=int, metavar="N", help=text)
    shape.add_argument("--dropout", type=float, default=0.1,
                       help="dropout of both models (default 0.1, the project's default)")
    run = parser.add_argument_group("run settings")
    run.add_argument("--quick", action="store_true",
                     help="tiny shape and few repeats (tests, smoke runs): "
                     + ", ".join(f"{k} {v}" for k, v in QUICK_SHAPE.items()))
    run.add_argument("--repeats", type=int, metavar="N",
                     help="timed repeats per case (median reported; default 5)")
    run.add_argument("--steps", type=int, metavar="N",
                     help="training steps per timed repeat (default 4)")
    run.add_argument("--warmup", type=int, metavar="N",
                     help="untimed warm-up steps/calls per case (default 2)")
    run.add_argument("--matmul-size", type=int, metavar="N",
                     help="side of the square matrices of the matmul peak (default 2048)")
    run.add_argument("--input-texts", type=int, metavar="N",
                     help="texts in the input-pipeline corpus (default 20000)")
    run.add_argument("--latency-runs", type=int, metavar="N",
                     help="timed batch-1 calls per case (batch-N: a fifth; default 50)")
    run.add_argument("--latency-batch", type=int, metavar="N",
                     help="the larger latency batch (default 32)")
    run.add_argument("--variants", metavar="LIST",
                     help="TFLite variants, comma-separated "
                     "(default float32,float16,dynamic_range,int8)")
    run.add_argument("--calibration-examples", type=int, metavar="N",
                     help="int8 calibration texts (default 100)")
    run.add_argument("--profile-steps", type=int, metavar="N",
                     help="training steps traced for the op profile (0 = none; default 3)")
    run.add_argument("--reference-keras-hub-defaults", action="store_true",
                     help="reference encoder with keras-hub's defaults (relu, post-norm, "
                     "no dropout) instead of our block's settings (gelu, pre-norm, "
                     "--dropout)")
    run.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    gen = parser.add_argument_group(
        "decoding (pipeline/bench/generation.py): tokens/s and time to first token of a "
        "trained language-model or translation run, Keras without and with the cache, "
        "SavedModel, each TFLite variant")
    gen.add_argument("--generation", metavar="CONFIG",
                     help="the language_modeling or translation config of a trained, "
                     "exported run (e.g. configs/language_model.yaml, "
                     "configs/translation.yaml); the shape flags do not apply")
    gen.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="config override of --generation's config (repeatable)")
    gen.add_argument("--prompts", type=int, default=20, metavar="N",
                     help="test prompts or sentences (default 20)")
    gen.add_argument("--new-tokens", type=int, default=32, metavar="N",
                     help="ids generated per input (default 32; at most the model's "
                     "room)")
    service = parser.add_argument_group(
        "input through a tf.data service (pipeline/bench/input_service.py)")
    service.add_argument("--data-service", type=int, default=0, metavar="N",
                         help="measure the training input's examples/s locally and "
                         "through a tf.data service of N worker processes on 127.0.0.1 "
                         "(same run, alternating); uses --input-texts, --seq, --batch, "
                         "--vocab, --repeats; writes JSON only with --out-json")
    out = parser.add_argument_group("output")
    out.add_argument("--out-json", default=None,
                     help="JSON results (default docs/benchmarks.json; with --generation "
                     "docs/generation_benchmarks.json or docs/translation_benchmarks.json)")
    out.add_argument("--out-md", default=None,
                     help="markdown report (default docs/BENCHMARKS.md; with --generation "
                     "docs/GENERATION_BENCHMARKS.md or docs/TRANSLATION_BENCHMARKS.md)")


def run_bench(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Measures, prints the summary and writes the JSON and markdown files;
    `argv` (the bench flags) is quoted in the report. Returns the exit code."""
    from pipeline.bench.settings import resolve

    command = shlex.join(["python", "-m", "pipeline", "bench", *(argv or [])])
    if args.generation:
        from pipeline.bench.generation import run_generation_bench
        from pipeline.config import ConfigError

        if args.prompts < 1 or args.new_tokens < 1 or (args.repeats or 3) < 1:
            print("error: --prompts, --new-tokens and --repeats must be >= 1",
                  file=sys.stderr)
            return 2
        try:
            return run_generation_bench(
                args.generation, args.set, args.prompts, args.new_tokens, args.repeats or 3,
                args.out_json, args.out_md, command)
        except (ConfigError, ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.data_service:
        if args.data_service < 1:
            print("error: --data-service must be >= 1 (workers)", file=sys.stderr)
            return 2
        try:
            s = resolve(args)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        from pipeline.bench.input_service import run_input_service_bench

        return run_input_service_bench(s, args.data_service, args.out_json, command)
    args.out_json = args.out_json or "docs/benchmarks.json"
    args.out_md = args.out_md or "docs/BENCHMARKS.md"
    try:
        s = resolve(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from pipeline.bench import report
    from pipeline.bench.measure import log, measure_all

    results = measure_all(s, command)
    text = report.format_summary(results)
    log(text)
    report.write_json(args.out_json, results)
    report.write_markdown(args.out_md, results, text)
    log(f"wrote {args.out_json}, {args.out_md} ({results['seconds'] / 60:.1f} min)")
    return 0


def main(argv=None) -> int:
    """`python -m pipeline.bench`: the same flags without the `pipeline` CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.bench", description=__doc__.splitlines()[0],
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_bench(parser.parse_args(argv), argv)
