"""Multi-worker training with real processes on 127.0.0.1 (bounded in time)."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import DEBUG_CONFIG, ROOT

pytestmark = pytest.mark.slow


def overrides(root, tfds_dir, *extra):
    out = []
    for o in (f"runtime.artifacts_root={root}", f"data.tfds_data_dir={tfds_dir}",
              "train.epochs=1", *extra):
        out += ["--set", o]
    return out


def launch(root, tfds_dir, *extra, timeout=420):
    cmd = [sys.executable, "-m", "pipeline", "launch", "--workers", "2",
           "--worker-command", "train", DEBUG_CONFIG, *overrides(root, tfds_dir, *extra)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def losses(text, prefix=""):
    return [float(m.group(1)) for m in re.finditer(
        rf"^{re.escape(prefix)}\[train\] step [\d,]+/[\d,]+ .*?loss ([\d.]+)", text, re.M)]


def test_two_workers_end_with_identical_weights_and_match_mirrored(tmp_path, tfds_dir):
    out = launch(tmp_path / "mw", tfds_dir, "train.max_steps=30")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    digests = re.findall(r"^\[w(\d)\] \[train\] finished at step 30; final weights digest "
                         r"(\w+)", out.stdout, re.M)
    assert len(digests) == 2 and digests[0][1] == digests[1][1], digests
    assert "2 replica(s) on 2 workers" in out.stdout
    # The same global batch in one process with 2 replicas.
    single = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", DEBUG_CONFIG,
         *overrides(tmp_path / "ms", tfds_dir, "train.max_steps=30",
                    "runtime.strategy=mirrored", "runtime.logical_cpu_devices=2")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    assert "mirrored (2 replica(s))" in single.stdout
    multi_curve, mirrored_curve = losses(out.stdout, "[w0] "), losses(single.stdout)
    assert len(multi_curve) == len(mirrored_curve) == 3
    # Each worker reads its own shard of the data, so batches differ from the
    # single-process run: the curves agree within 0.25 nats at every logged step.
    for a, b in zip(multi_curve, mirrored_curve):
        assert abs(a - b) < 0.25, (multi_curve, mirrored_curve)


def start_workers(root, tfds_dir, *extra):
    """Launcher in its own process group; returns (process, log path)."""
    log_path = os.path.join(str(root), "launch.log")
    os.makedirs(str(root), exist_ok=True)
    log = open(log_path, "w")
    cmd = [sys.executable, "-m", "pipeline", "launch", "--workers", "2",
           "--worker-command", "train", DEBUG_CONFIG, *overrides(root, tfds_dir, *extra)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            text=True), log_path


def wait_for(log_path, pattern, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = open(log_path).read()
        match = re.search(pattern, text, re.M)
        if match:
            return match, text
        time.sleep(0.5)
    raise AssertionError(f"{pattern!r} not seen within {timeout}s:\n"
                         f"{open(log_path).read()[-3000:]}")


def test_kill_9_of_a_worker_ends_the_job_and_a_relaunch_finishes(tmp_path, tfds_dir):
    extra = ("train.max_steps=400", "train.checkpoint_every_steps=20",
             "runtime.step_timeout_seconds=30", "runtime.collective_timeout_seconds=30",
             "train.log_every_steps=10")
    process, log_path = start_workers(tmp_path, tfds_dir, *extra)
    try:
        match, _ = wait_for(log_path, r"^\[launch\] worker 1 pid (\d+)", 120)
        worker1 = int(match.group(1))
        wait_for(log_path, r"^\[w0\] \[train\] step 50/400", 240)
        os.kill(worker1, signal.SIGKILL)
        killed_at = time.time()
        wait_for(log_path, r"^\[launch\] worker exit codes", 120)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    text = open(log_path).read()
    codes = re.search(r"worker exit codes \[(-?\d+), (-?\d+)\]", text)
    assert process.returncode != 0 and codes and int(codes.group(1)) != 0, text[-2000:]
    # Worker 0 noticed the dead peer by itself (collective timeout or watchdog).
    assert "killing the remaining workers" not in text, text[-2000:]
    assert time.time() - killed_at < 60 + 5
    relaunch = launch(tmp_path, tfds_dir, *extra, timeout=600)
    assert relaunch.returncode == 0, relaunch.stdout[-3000:]
    resumed = re.search(r"^\[w0\] \[train\] resumed from .*ckpt-(\d+) at step", relaunch.stdout,
                        re.M)
    assert resumed and int(resumed.group(1)) >= 40, relaunch.stdout[-3000:]
    assert re.search(r"^\[w0\] \[train\] finished at step 400;", relaunch.stdout, re.M)


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_repeats_no_step(tmp_path, tfds_dir):
    extra = ("train.max_steps=400", "train.checkpoint_every_steps=1000",
             "train.log_every_steps=1")
    process, log_path = start_workers(tmp_path, tfds_dir, *extra)
    try:
        match, _ = wait_for(log_path, r"^\[launch\] worker 1 pid (\d+)", 120)
        wait_for(log_path, r"^\[w1\] \[train\] step 30/400", 240)
        os.kill(int(match.group(1)), signal.SIGTERM)
        _, text = wait_for(log_path, r"^\[launch\] worker exit codes", 120)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    saved = re.search(r"^\[w0\] \[train\] SIGTERM received: checkpoint \S+ckpt-(\d+) saved "
                      r"at step (\d+)", text, re.M)
    assert saved, text[-3000:]
    step = int(saved.group(2))
    assert int(saved.group(1)) == step
    last_logged = max(int(s) for s in re.findall(r"^\[w0\] \[train\] step (\d+)/400", text, re.M))
    assert last_logged == step
    relaunch = launch(tmp_path, tfds_dir, *extra, "train.max_steps=" + str(step + 5))
    assert relaunch.returncode == 0, relaunch.stdout[-3000:]
    assert re.search(rf"^\[w0\] \[train\] resumed from \S+ckpt-{step} at step {step}",
                     relaunch.stdout, re.M)
    first = re.search(r"^\[w0\] \[train\] step (\d+)/", relaunch.stdout, re.M)
    assert int(first.group(1)) == step + 1


def _ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def test_two_workers_in_two_network_namespaces(tmp_path, tfds_dir):
    """Each worker on its own test host: a network namespace joined by a veth pair."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces (ip netns add)")
    if subprocess.run(["which", "ip"], capture_output=True).returncode != 0:
        pytest.skip("the 'ip' command (Debian iproute2) is not installed")
    tag = str(os.getpid() % 10000)
    spaces, links = [f"ptw{tag}a", f"ptw{tag}b"], [f"ptv{tag}a", f"ptv{tag}b"]
    addresses = ["10.231.7.1", "10.231.7.2"]
    try:
        for ns in spaces:
            made = _ip("netns", "add", ns)
            if made.returncode:
                pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
        assert _ip("link", "add", links[0], "type", "veth", "peer", "name",
                   links[1]).returncode == 0
        for ns, link, address in zip(spaces, links, addresses):
            assert _ip("link", "set", link, "netns", ns).returncode == 0
            for args in (("addr", "add", f"{address}/24", "dev", link),
                         ("link", "set", link, "up"), ("link", "set", "lo", "up")):
                assert _ip("netns", "exec", ns, "ip", *args).returncode == 0
        # Prepare data and tokenizer once, like the launcher does.
        base = overrides(tmp_path, tfds_dir, "train.max_steps=12",
                         "runtime.strategy=multi_worker_mirrored")
        prepared = subprocess.run([sys.executable, "-m", "pipeline", "prepare", DEBUG_CONFIG,
                                   *overrides(tmp_path, tfds_dir)], cwd=ROOT,
                                  capture_output=True, text=True, timeout=300)
        assert prepared.returncode == 0, prepared.stderr[-2000:]
        from pipeline.distribute import tf_config_for

        cluster = [f"{a}:23456" for a in addresses]
        workers = [subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "pipeline", "train",
             DEBUG_CONFIG, *base],
            cwd=ROOT, env=dict(os.environ, TF_CONFIG=tf_config_for(cluster, i)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i, ns in enumerate(spaces)]
        outputs = []
        for w in workers:
            try:
                outputs.append(w.communicate(timeout=300)[0])
            except subprocess.TimeoutExpired:
                for other in workers:
                    other.kill()
                raise
        assert [w.returncode for w in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
        digests = [re.search(r"final weights digest (\w+)", o).group(1) for o in outputs]
        assert digests[0] == digests[1]
        assert "2 replica(s) on 2 workers, this is worker 1" in outputs[1]
    finally:
        for ns in spaces:
            _ip("netns", "del", ns)
