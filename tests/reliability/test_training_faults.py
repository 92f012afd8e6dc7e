"""kill -9 of a real training run at five points drawn by a seeded random draw: during
data preparation, tokenizer training, mid-epoch, a checkpoint write and an evaluation.
After each kill every artifact under its final name is complete, and rerunning the
same command finishes with test metrics within 1 point of an uninterrupted run.

Each run is `python -m pipeline run` (through tests/reliability/fault_entry.py) on
the debug experiment cut to 3 epochs of 46 steps, about 20 s. Kill moments: the
phases are recognised from the run's own progress lines and the kill lands a drawn
fraction of the phase's duration (measured in the uninterrupted run) after its
start; a checkpoint write lasts milliseconds, so that kill is made at a drawn
step inside the write (fault_entry.py stops the process there; the test checks
the half-written state on disk, then sends SIGKILL). A kill that the run
outpaced (the phase ended first) is retried, up to twice, at the same fraction
of the phase as that attempt timed it.
"""

from __future__ import annotations

import json
import os
import random
import re

import pytest

from tests.conftest import DEBUG_CONFIG
from tests.reliability import figures
from tests.reliability.artifacts import check_run_dir, temp_leftovers
from tests.reliability.processes import pipeline_command, run

pytestmark = pytest.mark.slow

FAULT_SEED = 9          # issue #9; change it to draw other moments
TOLERANCE = 0.01        # 1 point of accuracy / macro-F1
TINY = ["train.epochs=3", "train.log_every_steps=1", "train.checkpoint_every_steps=10",
        "export.tflite_variants=float32", "export.latency_runs=1"]
PHASES = ["data preparation", "tokenizer training", "mid-epoch", "checkpoint write",
          "evaluation"]


def overrides(root, tfds):
    return [f"runtime.artifacts_root={root}", f"data.tfds_data_dir={tfds}", *TINY]


def run_dir(root) -> str:
    return os.path.join(str(root), "text_classification_debug")


def final_metrics(root) -> dict:
    with open(os.path.join(run_dir(root), "metrics.json")) as f:
        test = json.load(f)["test"]
    return {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (fresh TFDS dir too): its metrics and phase timings."""
    root, tfds = tmp_path_factory.mktemp("reference"), tmp_path_factory.mktemp("tfds")
    outcome = run(pipeline_command("run", DEBUG_CONFIG, overrides(root, tfds)))
    assert outcome.returncode == 0, outcome.text[-3000:]
    spe = int(re.search(r"([\d,]+) steps/epoch", outcome.text).group(1).replace(",", ""))
    validation = {int(e): float(s) for e, s in re.findall(
        r"\[eval\] epoch (\d+) step [\d,]+: .*\(([\d.]+)s\)", outcome.text)}

    def span(a, b):
        return outcome.first(b) - outcome.first(a)

    return {"metrics": final_metrics(root), "tfds": str(tfds), "steps_per_epoch": spe,
            "data": span(r"^\[data\] preparing", r"^\[data\] wordnet_topics \(TFDS"),
            "tokenizer": span(r"^\[tokenizer\] training", r"^\[tokenizer\] wrote"),
            "validation": validation}


def draw_faults(reference) -> dict:
    """The five kill moments, from FAULT_SEED."""
    rng = random.Random(FAULT_SEED)
    spe = reference["steps_per_epoch"]
    mid_epoch, mid_step = rng.randint(1, 3), rng.randint(5, spe - 5)
    eval_epoch = rng.randint(1, 3)
    return {
        "data preparation": {"after": r"^\[data\] preparing",
                             "fraction": rng.uniform(0.15, 0.75), "span": reference["data"],
                             "until": r"^\[data\] wordnet_topics \(TFDS"},
        "tokenizer training": {"after": r"^\[tokenizer\] training",
                               "fraction": rng.uniform(0.15, 0.75),
                               "span": reference["tokenizer"], "until": r"^\[tokenizer\] wrote"},
        "mid-epoch": {"after": rf"^\[train\] step {(mid_epoch - 1) * spe + mid_step}/",
                      "fraction": 0.0, "span": 0.0, "until": rf"^\[eval\] epoch {mid_epoch} "},
        "checkpoint write": {"pause": rng.choice(["checkpoint.shards_written",
                                                  "checkpoint.merged",
                                                  "checkpoint.state_renaming"]),
                             "n": rng.randint(2, 8)},
        "evaluation": {"after": rf"^\[train\] step {eval_epoch * spe}/",
                       "fraction": rng.uniform(0.1, 0.6),
                       "span": reference["validation"][eval_epoch],
                       "until": rf"^\[eval\] epoch {eval_epoch} "},
    }


def half_written_state(point: str, root) -> None:
    """At the pause: the checkpoint on disk is in the state the point names."""
    directory = os.path.join(run_dir(root), "checkpoints")
    names = os.listdir(directory)
    best = os.listdir(os.path.join(directory, "best")) if "best" in names else []
    everything = names + best
    if point == "checkpoint.shards_written":
        assert any(n.endswith("_temp") for n in everything), everything
    elif point == "checkpoint.state_renaming":
        assert any(n.startswith("checkpoint.tmp") for n in everything), everything


@pytest.mark.parametrize("phase", PHASES)
def test_kill_9_then_rerun_finishes_with_the_same_metrics(phase, reference, tmp_path):
    fault = draw_faults(reference)[phase]
    attempts = []
    delay = fault.get("fraction", 0.0) * fault.get("span", 0.0)
    for attempt in range(3):
        root = tmp_path / f"attempt{attempt}"
        tfds = tmp_path / f"tfds{attempt}" if phase == "data preparation" else reference["tfds"]
        command = pipeline_command("run", DEBUG_CONFIG, overrides(root, tfds))
        if "pause" in fault:
            point = fault["pause"]
            killed = run(command, pause_at=f"{point}:{fault['n']}",
                         on_pause=lambda line, point=point, root=root:
                         half_written_state(point, root))
            hit = killed.paused is not None
            where = killed.paused
        else:
            killed = run(command, kill_after=(fault["after"], delay))
            hit = killed.killed_at is not None and killed.first(fault["until"]) is None
            where = f"{delay:.2f}s after /{fault['after']}/"
        attempts.append(where)
        assert killed.returncode == -9, (phase, killed.returncode, killed.text[-3000:])
        if hit:
            break
        # The run outpaced the kill (this machine's speed varies with its load): the
        # same fraction of the phase as this attempt timed it.
        figures.add("training kills that landed after their phase (retried)")
        began, ended = killed.first(fault["after"]), killed.first(fault["until"])
        delay = fault["fraction"] * (ended - began) if None not in (began, ended) \
            else delay / 2
    assert hit, f"{phase}: the kill landed after the phase in every attempt: {attempts}"
    figures.add("training faults injected (kill -9)")

    after_kill = check_run_dir(run_dir(root))          # no half-written artifact
    rerun = run(command)
    assert rerun.returncode == 0, rerun.text[-3000:]
    after_rerun = check_run_dir(run_dir(root))
    metrics = final_metrics(root)
    for key, value in reference["metrics"].items():
        assert abs(metrics[key] - value) <= TOLERANCE, (phase, key, metrics[key], value)
    if after_kill.get("checkpoints"):
        assert "resumed from" in rerun.text
    assert after_rerun["serving"] and after_rerun.get("bundle")
    figures.add("training faults survived (rerun finished, metrics within 1 point)")
    figures.note(f"training fault: {phase}",
                 f"killed at {where}; rerun test accuracy {metrics['accuracy']:.4f} "
                 f"(uninterrupted {reference['metrics']['accuracy']:.4f}), macro-F1 "
                 f"{metrics['macro_f1']:.4f} ({reference['metrics']['macro_f1']:.4f}); "
                 f"temporary leftovers: {len(temp_leftovers(run_dir(root)))}")
