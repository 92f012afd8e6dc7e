"""`python -m pipeline <command>`: the command line of the pipeline.

A thin command layer over `pipeline/workflow.py` (the stages, for every task),
which the notebook and the tests import too.
"""

from __future__ import annotations

import argparse
import os
import sys

EXAMPLES = """\
examples:
  python -m pipeline run configs/text_classification.yaml
  python -m pipeline run configs/text_classification_debug.yaml --set train.epochs=2
  python -m pipeline run configs/text_classification.yaml --no-export
  python -m pipeline prepare configs/text_classification.yaml
  python -m pipeline pretrain configs/text_classification.yaml
  python -m pipeline run configs/language_model.yaml
  python -m pipeline bench --generation configs/language_model.yaml   # decoding speed
  python -m pipeline run configs/csv_pretrained.yaml
  python -m pipeline train configs/text_classification.yaml --set runtime.strategy=mirrored \\
      --set runtime.logical_cpu_devices=2
  python -m pipeline evaluate configs/text_classification.yaml
  python -m pipeline export configs/text_classification.yaml
  python -m pipeline show-config configs/text_classification.yaml --set model.num_layers=4
  python -m pipeline tensorboard configs/text_classification.yaml --port 6006
  python -m pipeline launch --workers 2 configs/text_classification_debug.yaml
  python -m pipeline data-service --workers 2   # tf.data service; prints its address
  python -m pipeline run configs/text_classification_debug.yaml \
      --set runtime.data_service=grpc://127.0.0.1:PORT
  python -m pipeline bench                      # performance report: docs/BENCHMARKS.md

Every run writes under artifacts/<experiment name>/; running the same command
again resumes training from the latest checkpoint there.
"""


def _resolve(args):
    from pipeline.config import load_config

    return load_config(args.config, args.set or [])


def _strategy_first(cfg):
    """The strategy, created before any other TensorFlow work (required by
    MultiWorkerMirroredStrategy and by logical CPU devices)."""
    from pipeline.distribute import get_strategy

    return get_strategy(cfg.runtime)


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
    print(f"TensorBoard {url} serving {logdir} (scalars, text, graphs, hparams); "
        "Ctrl-C stops it", flush=True)
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
    service_help = ("start a tf.data service on 127.0.0.1 (a dispatcher and N worker "
                    "processes) for runtime.data_service; Ctrl-C stops it")
    service = commands.add_parser(
        "data-service", help=service_help, description=service_help, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    service.add_argument("--workers", type=int, default=2, help="number of workers")
    service.add_argument("--port", type=int, default=0,
                         help="dispatcher port (default: a free one)")
    service.add_argument("--work-dir", "--work_dir", dest="work_dir", default="",
                         help="directory where the dispatcher journals its state "
                         "(a restarted dispatcher recovers it)")
    service.add_argument("--timeout", type=float, default=120,
                         help="seconds for the dispatcher and every worker to come up "
                         "(default 120)")
    commands.choices["run"].add_argument(
        "--no-export", action="store_true",
        help="stop after evaluation (metrics.json without the SavedModel, TFLite and "
        "edge bundle; `export` adds them later)")
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
    if args.command == "data-service":
        from pipeline.data_service import serve

        return serve(args.workers, args.port, args.work_dir, args.timeout)

    from export.check_serving import ServingCheckError
    from pipeline.config import ConfigError
    from pipeline.data_service import DataServiceError
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
        from pipeline import workflow

        if args.command == "run":
            workflow.run(cfg, do_export=not args.no_export, strategy=_strategy_first(cfg))
        elif args.command == "prepare":
            workflow.prepare(cfg)
        elif args.command == "pretrain":
            if not cfg.pretrain.enabled:
                raise ConfigError("config key 'pretrain.enabled' = False: this config "
                                  "has no pre-training (see configs/"
                                  "text_classification.yaml)")
            from pipeline.sources import load_splits
            from pipeline.tasks.masked_lm import pretrain

            strategy = _strategy_first(cfg)
            splits = load_splits(cfg.data, cfg.runtime.artifacts_root, log=workflow.log)
            workflow.log(f"[pretrain] encoder checkpoint: "
                         f"{pretrain(cfg, splits, workflow.log, strategy)}")
        elif args.command == "train":
            strategy = _strategy_first(cfg)
            task = workflow.prepare(cfg, strategy)
            result = workflow.train(task, strategy)
            if workflow.is_chief(strategy):
                workflow.write_training_curves(cfg, result.history)
        elif args.command in ("evaluate", "export"):
            task = workflow.prepare(cfg)
            model = workflow.load_trained(task)
            evaluation = workflow.evaluate(task, model,
                                           baseline=args.command == "evaluate")
            if args.command == "export":
                workflow.export(task, model, evaluation["reference"])
            else:
                from pipeline.files import write_json

                write_json(os.path.join(cfg.run_dir, "evaluation.json"),
                           {k: v for k, v in evaluation.items() if k != "reference"})
        return 0
    except (ConfigError, DataError, DataPackageMissing, FileNotFoundError,
            ServingCheckError, DataServiceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        from pipeline.trainer import Preempted

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
