"""kill -9 during SavedModel export, TFLite conversion and edge-bundle writing leaves the
previous versions intact, and no incomplete version directory is ever visible to the
local server's poller.

`python -m pipeline export` (through tests/reliability/fault_entry.py) runs on a copy
of the session's debug run while a real local server polls the model base path every
second and a watcher thread lists it every 2 ms. Each phase is stopped at a step drawn
by a seeded random draw among the steps fault_entry.py knows (variables written,
files complete but not renamed, the rename itself, ...); the test checks the disk at
that moment, kills the process with SIGKILL, checks again, and finally reruns the
export to completion: the server loads the new version and the new bundle verifies.
"""

from __future__ import annotations

import glob
import hashlib
import os
import random
import re
import shutil
import threading
import time

import pytest

from tests.conftest import DEBUG_CONFIG
from tests.reliability import figures
from tests.reliability.artifacts import check_bundle, version_complete
from tests.reliability.processes import pipeline_command, run

pytestmark = pytest.mark.slow

FAULT_SEED = 9
POINTS = {
    "SavedModel export": ["savedmodel.shards_written", "savedmodel.merged",
                          "savedmodel.renaming"],
    "TFLite conversion": ["tflite.converting", "tflite.renaming"],
    "bundle writing": ["bundle.copying", "bundle.renaming", "bundle.swapped"],
}


def tree_digest(path: str) -> dict[str, str]:
    digests = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                digests[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return digests


class Watcher(threading.Thread):
    """Lists the model base path every 2 ms, as a poller would: every numbered entry
    must be a complete SavedModel; the bundle must always be there."""

    def __init__(self, model_root: str, bundle: str):
        super().__init__(daemon=True)
        self.model_root, self.bundle = model_root, bundle
        self.stop, self.polls, self.violations = threading.Event(), 0, []

    def run(self):
        while not self.stop.is_set():
            for entry in os.listdir(self.model_root):
                if entry.isdigit() and not version_complete(os.path.join(self.model_root, entry)):
                    self.violations.append(f"incomplete version directory visible: {entry}")
            if not os.path.isfile(os.path.join(self.bundle, "manifest.json")):
                self.violations.append("edge/bundle missing or without manifest.json")
            self.polls += 1
            time.sleep(0.002)


@pytest.fixture
def exported_run(debug_run, tfds_dir, tmp_path):
    """A copy of the debug run (checkpoints, tokenizer, SavedModel version 1, bundle)."""
    cfg, _ = debug_run
    root = tmp_path / "artifacts"
    shutil.copytree(cfg.run_dir, root / cfg.name)
    overrides = [f"runtime.artifacts_root={root}", f"data.tfds_data_dir={tfds_dir}",
                 "export.tflite_variants=float32", "export.latency_runs=1"]
    return str(root / cfg.name), pipeline_command("export", DEBUG_CONFIG, overrides)


def test_kill_9_during_export_leaves_the_previous_version_and_the_poller_sees_no_partial_version(
        exported_run, debug_config):
    from serving.process import LocalServerProcess
    from serving.servables import version_dirs

    run_dir, command = exported_run
    model_name = debug_config.export.model_name
    model_root = os.path.join(run_dir, "serving", model_name)
    bundle = os.path.join(run_dir, "edge", "bundle")
    assert sorted(version_dirs(model_root)) == [1]
    version_1 = tree_digest(os.path.join(model_root, "1"))
    rng = random.Random(FAULT_SEED)
    with LocalServerProcess(["--model_name", model_name, "--model_base_path", model_root,
                             "--file_system_poll_wait_seconds", "1"],
                            model=model_name) as server:
        watcher = Watcher(model_root, bundle)
        watcher.start()
        try:
            for phase, points in POINTS.items():
                point = rng.choice(points)

                def intact(_line=None):
                    assert tree_digest(os.path.join(model_root, "1")) == version_1
                    for path in version_dirs(model_root).values():
                        assert version_complete(path), path
                    check_bundle(bundle)       # old or new, never partial
                    for tflite in glob.glob(os.path.join(run_dir, "edge", "*.tflite")):
                        from ai_edge_litert.interpreter import Interpreter

                        Interpreter(model_path=tflite).get_signature_list()

                killed = run(command, pause_at=f"{point}:1", on_pause=intact)
                figures.add("export faults injected (kill -9)")
                assert killed.paused, f"{phase}: never reached {point}:\n{killed.text[-3000:]}"
                assert killed.returncode == -9
                intact()
                time.sleep(1.5)                # a poll of the server after the kill
                assert server.alive()
                assert server.client(retries=0).predict(["a small dog"]).outputs["label"]
                figures.add("export faults survived (previous version intact)")
                figures.note(f"export fault: {phase}", killed.paused.split(": ")[0])

            finished = run(command)
            assert finished.returncode == 0, finished.text[-3000:]
            new = max(version_dirs(model_root))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                states = {s["version"]: s["state"] for s in
                          server.client().status()["model_version_status"]}
                if states.get(str(new)) == "AVAILABLE":
                    break
                time.sleep(0.5)
            assert states.get(str(new)) == "AVAILABLE", states
            assert server.client(version=new, retries=0).predict(
                ["a small dog"], protocol="grpc").model_version == new
            log = server.log_text()
        finally:
            watcher.stop.set()
            watcher.join(10)
    assert watcher.violations == [], watcher.violations[:5]
    assert watcher.polls > 1000
    assert "failed to load" not in log, log[-3000:]
    check_bundle(bundle)
    assert re.search(r"\[export\] edge bundle", finished.text)
    leftovers = [p for p in glob.glob(os.path.join(run_dir, "**", ".*tmp*"), recursive=True)
                 + glob.glob(os.path.join(run_dir, "edge", "*.tmp-*"))]
    assert leftovers == [], leftovers         # the killed exports' temp dirs are cleaned up
    figures.note("export poller check", f"{watcher.polls:,} listings of the model base path "
                 f"during {len(POINTS)} killed exports and one complete one: "
                 f"{len(watcher.violations)} incomplete version directories seen")


SWAP_CHILD = """
import os, signal, sys
sys.path.insert(0, {root!r})
import pipeline.files as files

def pause(what):
    print("paused after " + what, flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)

rename, exchange = os.rename, files._exchange
def paused_rename(src, dst):
    rename(src, dst)
    pause("rename " + src + " -> " + dst)
def paused_exchange(a, b):
    swapped = exchange(a, b)
    pause("exchange")
    return swapped
os.rename, files._exchange = paused_rename, paused_exchange
files.replace_dir({tmp!r}, {final!r})
"""


def test_kill_9_inside_the_bundle_swap_leaves_a_complete_bundle(edge_bundle, tmp_path):
    """The swap of a new bundle for the old one, killed right after its first step
    (the step the seeded draw above may not pick): the bundle is the old or the new
    one, complete, never absent. Before the fix the old one was renamed away first."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.reliability.processes import _wait_stopped

    final, tmp = tmp_path / "edge" / "bundle", tmp_path / "edge" / ".bundle.tmp-1"
    shutil.copytree(edge_bundle, final)
    shutil.copytree(edge_bundle, tmp)
    (tmp / "labels.txt").write_text("new\n", encoding="utf-8")    # tell them apart
    (tmp / "manifest.json").write_text((tmp / "manifest.json").read_text().replace(
        hashlib.sha256((final / "labels.txt").read_bytes()).hexdigest(),
        hashlib.sha256(b"new\n").hexdigest()))
    old, new = tree_digest(str(final)), tree_digest(str(tmp))
    child = subprocess.Popen([sys.executable, "-c", SWAP_CHILD.format(
        root=ROOT, tmp=str(tmp), final=str(final))], stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.startswith("paused after"), line
        _wait_stopped(child)
        check_bundle(str(final))
        assert tree_digest(str(final)) in (old, new)
    finally:
        child.kill()
        child.wait(30)
    figures.add("export faults injected (kill -9)")
    check_bundle(str(final))
    assert tree_digest(str(final)) in (old, new)
    figures.add("export faults survived (previous version intact)")
    figures.note("export fault: bundle swap", line.strip())
