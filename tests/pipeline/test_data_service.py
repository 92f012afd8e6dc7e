"""The tf.data service (issue 19): a real dispatcher and two real worker
processes on 127.0.0.1 feed training (`python -m pipeline data-service`)."""

import collections
import copy
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from pipeline.config import ConfigError, load_config
from tests.conftest import DEBUG_CONFIG, LM_DEBUG_CONFIG, ROOT, read_json

# Validation and test accuracy of the debug experiment fed by the service
# against the same run on local input (the session's `debug_run`). The service
# changes only the order of the examples (initial weights, data and steps are
# the same): runs through it were within 0.014 of local input on both, while
# other seeds of the local run (other weights and order) spread over 0.035
# (docs/DATA_SERVICE.md). With the labels moved by one inside each batch the
# workers send, the run reached 0.14 on both (against 0.45 and 0.47), and no
# data at all ends the run through the step watchdog. Examples sent twice need
# not move accuracy much, so
# `test_the_stream_holds_every_example_with_its_label_and_no_batch_twice`
# checks the stream itself.
ACCURACY_TOLERANCE = 0.04


# ------------------------------------------------------------------ fast


@pytest.mark.parametrize("value", [
    "127.0.0.1", "http://127.0.0.1:5050", "grpc://127.0.0.1:0", "grpc://127.0.0.1:70000",
    "grpc://:5050", "grpc://two words:5050", "grpc://127.0.0.1:port", "grpc://a/b:5050"])
def test_a_bad_address_names_the_config_key(value):
    with pytest.raises(ConfigError, match=r"^config key 'runtime\.data_service' = .*"
                       r"grpc://HOST:PORT"):
        load_config(DEBUG_CONFIG, [f"runtime.data_service={value}"])


def test_addresses_are_normalised_and_local_input_is_the_default():
    from pipeline.data_service import parse_address

    assert load_config(DEBUG_CONFIG).runtime.data_service == ""
    assert parse_address("127.0.0.1:5050") == "grpc://127.0.0.1:5050"
    assert parse_address(" grpc://dispatcher.data.svc:05050 ") == \
        "grpc://dispatcher.data.svc:5050"
    assert parse_address("[::1]:5050") == "grpc://[::1]:5050"
    cfg = load_config(DEBUG_CONFIG, ["runtime.data_service=grpc://10.0.0.7:5050"])
    assert cfg.runtime.data_service == "grpc://10.0.0.7:5050"


def test_a_task_that_reads_its_data_locally_refuses_the_key():
    with pytest.raises(ConfigError, match=r"'runtime\.data_service' = .*task "
                       r"'language_modeling'"):
        load_config(LM_DEBUG_CONFIG, ["runtime.data_service=grpc://127.0.0.1:5050"])


def test_no_dispatcher_gives_a_message_naming_the_address_not_a_hang():
    """A closed port, and a port that accepts connections but speaks no gRPC."""
    from pipeline.data_service import DataServiceError, wait_for_dispatcher
    from pipeline.launch import free_ports

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        for port in (free_ports(1)[0], silent.getsockname()[1]):
            address = f"grpc://127.0.0.1:{port}"
            start = time.time()
            with pytest.raises(DataServiceError) as err:
                wait_for_dispatcher(address, timeout=2)
            assert time.time() - start < 10
            message = str(err.value)
            assert address in message and "runtime.data_service" in message
            assert "within 2s" in message and "python -m pipeline data-service" in message
    finally:
        silent.close()


@pytest.mark.slow
def test_training_without_a_dispatcher_fails_with_the_address_not_a_traceback(
        tmp_path, tfds_dir):
    from pipeline.launch import free_ports

    address = f"grpc://127.0.0.1:{free_ports(1)[0]}"
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", DEBUG_CONFIG,
         "--set", f"runtime.data_service={address}",
         "--set", "runtime.data_service_timeout_seconds=3",
         "--set", f"runtime.artifacts_root={tmp_path}",
         "--set", f"data.tfds_data_dir={tfds_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"error: no tf.data service dispatcher answered at {address} " \
           "(runtime.data_service) within 3s" in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr


def test_split_in_chunks_keeps_every_example_in_order():
    import tensorflow as tf

    from pipeline.input import split_in_chunks

    source = tf.data.Dataset.from_tensor_slices({"x": tf.range(1000)})
    got = [int(e["x"]) for e in split_in_chunks(source, 256)]
    assert got == list(range(1000))
    endless = source.repeat()
    assert split_in_chunks(endless, 256) is endless


# ------------------------------------------------- real service processes


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(log_path, pattern, timeout, process=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = open(log_path).read()
        match = re.search(pattern, text, re.M)
        if match:
            return match
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"{pattern!r} not seen within {timeout}s:\n{text[-3000:]}")


def start_service(log_path, workers=2):
    """`python -m pipeline data-service` in its own process group; returns
    (process, address, {name: pid} of the dispatcher and the workers)."""
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "data-service", "--workers", str(workers)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        address = wait_for(log_path, r"runtime\.data_service=(grpc://\S+)", 240,
                           process).group(1)
    except BaseException:
        stop_service(process, log_path)
        raise
    return process, address, children(log_path)


def children(log_path) -> dict[str, int]:
    text = open(log_path).read()
    return {name: int(pid) for name, pid in re.findall(
        r"^\[(d|s\d+)\] \[(?:dispatcher|worker)\] serving .*\(pid (\d+)", text, re.M)}


def stop_service(process, log_path):
    """SIGTERM, then SIGKILL of the group after 60 s; its children stop with it
    (they watch their parent) and are killed here if they did not."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    deadline = time.time() + 20
    while any(alive(p) for p in children(log_path).values()) and time.time() < deadline:
        time.sleep(0.5)
    for pid in children(log_path).values():
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A dispatcher and two workers, as separate processes, for this module."""
    log_path = tmp_path_factory.mktemp("data_service") / "service.log"
    process, address, pids = start_service(log_path)
    yield {"process": process, "address": address, "pids": pids, "log": log_path}
    stop_service(process, log_path)


def example_key(token_ids, label) -> tuple:
    return tuple(int(i) for i in token_ids if i != 0), int(label)


@pytest.mark.slow
def test_the_stream_holds_every_example_with_its_label_and_no_batch_twice(
        service, tmp_path, tfds_dir):
    """Three epochs' worth of batches of the training stream, read through the
    service: every (token ids, label) pair is one of the training split's
    (labels travel with their texts), at least 99% of the split's examples
    arrive (locally too, the two texts of <= 8 tokens wait longer than that
    for a full batch of their length), no batch arrives twice, and the first
    epoch's worth holds each example once (with ShardingPolicy.OFF each of
    the two workers would send every example: half of them distinct)."""
    from pipeline.input import make_train_dataset, tokenize_examples
    from pipeline.workflow import prepare

    cfg = load_config(DEBUG_CONFIG, [f"runtime.artifacts_root={tmp_path}",
                                     f"data.tfds_data_dir={tfds_dir}"])
    task = prepare(cfg, log=lambda *_: None)
    split = collections.Counter(
        example_key(e["token_ids"], e["label"]) for e in tokenize_examples(
            task.splits.dataset("train"), task.preprocess).as_numpy_iterator())
    batch = cfg.train.global_batch_size
    per_epoch = task.num_examples("train") // batch
    served = copy.deepcopy(cfg)
    served.runtime.data_service = service["address"]
    stream = iter(make_train_dataset(task.splits.dataset("train"), task.preprocess,
                                     served, batch))
    keys, batches = [], set()
    for _ in range(3 * per_epoch):
        inputs, labels = next(stream)
        ids = inputs["token_ids"].numpy()
        assert ids.shape[0] == batch
        assert (inputs["padding_mask"].numpy() == (ids != 0)).all()
        batches.add(hashlib.sha256(ids.tobytes() + labels.numpy().tobytes()).hexdigest())
        keys += [example_key(row, label) for row, label in zip(ids, labels.numpy())]
    unknown = [k for k in keys if k not in split]
    assert not unknown, f"{len(unknown)} examples that are not in the split: {unknown[:3]}"
    missing = set(split) - set(keys)
    assert len(missing) <= 0.01 * len(split), f"{len(missing)} examples never arrived"
    assert len(batches) == 3 * per_epoch, "a batch arrived twice"
    first_epoch = keys[:per_epoch * batch]
    distinct = len(set(first_epoch)) / len(first_epoch)
    print(f"through the service: {len(missing)} of {len(split)} examples not in 3 "
          f"epochs' worth; the first epoch's worth {distinct:.1%} distinct")
    assert distinct > 0.95, len(set(first_epoch))


@pytest.mark.slow
def test_two_trainers_read_disjoint_shards_through_their_own_jobs(service, tmp_path,
                                                                   tfds_dir):
    """The input contexts of a two-worker run, read side by side: each trainer
    gets one half of the split, an epoch's worth of it at a time."""
    import tensorflow as tf

    from pipeline.input import make_train_dataset
    from pipeline.workflow import prepare

    cfg = load_config(DEBUG_CONFIG, [f"runtime.artifacts_root={tmp_path}",
                                     f"data.tfds_data_dir={tfds_dir}",
                                     f"runtime.data_service={service['address']}"])
    task = prepare(cfg, log=lambda *_: None)
    batch, shard = 16, task.num_examples("train") // 2
    streams = [iter(make_train_dataset(
        task.splits.dataset("train"), task.preprocess, cfg, batch,
        input_context=tf.distribute.InputContext(2, index, 2))) for index in (0, 1)]
    seen = [[], []]
    for _ in range(2 * (shard // batch)):
        for index, stream in enumerate(streams):
            inputs, labels = next(stream)
            seen[index] += [example_key(row, label) for row, label in
                            zip(inputs["token_ids"].numpy(), labels.numpy())]
    first, second = set(seen[0]), set(seen[1])
    assert not first & second
    assert len(first | second) >= 0.99 * task.num_examples("train")
    for keys in seen:
        epoch = keys[:(shard // batch) * batch]
        assert len(set(epoch)) / len(epoch) > 0.95


@pytest.mark.slow
def test_a_split_streamed_from_files_goes_through_the_service_by_file(service, tmp_path):
    """A CSV split larger than data.sample_examples streams from 10 TFRecord
    shards: the dispatcher hands whole files to the workers, and an epoch's
    worth of the training stream holds the split's examples, each once."""
    from pipeline.bench.corpus import write_corpus
    from pipeline.input import tokenize_examples
    from pipeline.workflow import prepare

    corpus = write_corpus(str(tmp_path / "corpus"), rows=1000, eval_rows=100)
    cfg = load_config(DEBUG_CONFIG, [
        f"runtime.artifacts_root={tmp_path}", "data.source=csv",
        f"data.train_path={corpus['train']}", f"data.validation_path={corpus['validation']}",
        f"data.test_path={corpus['test']}", "data.max_examples_per_split=0",
        "data.sample_examples=50", "data.examples_per_shard=100",
        f"runtime.data_service={service['address']}"])
    task = prepare(cfg, log=lambda *_: None)
    assert not task.splits.complete("train")
    split = collections.Counter(
        example_key(e["token_ids"], e["label"]) for e in tokenize_examples(
            task.splits.dataset("train"), task.preprocess).as_numpy_iterator())
    batch = 20
    stream = iter(task.train_dataset(batch))
    keys = []
    for _ in range(1000 // batch):
        inputs, labels = next(stream)
        keys += [example_key(row, label) for row, label in
                 zip(inputs["token_ids"].numpy(), labels.numpy())]
    assert all(k in split for k in keys)
    assert len(set(keys)) / len(keys) > 0.95, len(set(keys))


@pytest.mark.slow
def test_training_through_the_service_reaches_the_metrics_of_local_input(
        service, debug_run, tmp_path, tfds_dir):
    local = debug_run[1]
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", DEBUG_CONFIG, "--no-export",
         "--set", f"runtime.data_service={service['address']}",
         "--set", f"runtime.artifacts_root={tmp_path}",
         "--set", f"data.tfds_data_dir={tfds_dir}",
         "--set", "runtime.step_timeout_seconds=60"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert re.search(rf"^\[train\] input: tf\.data service {re.escape(service['address'])}, "
                     r"2 worker\(s\) registered, jobs text_classification_debug-step0-\*",
                     run.stdout, re.M), run.stdout[-3000:]
    metrics = read_json(os.path.join(tmp_path, "text_classification_debug", "metrics.json"))
    assert metrics["training"]["steps"] == local["training"]["steps"]
    pairs = {"validation accuracy": (metrics["training"]["best_validation"]["value"],
                                     local["training"]["best_validation"]["value"]),
             "test accuracy": (metrics["test"]["accuracy"], local["test"]["accuracy"])}
    print("through the service / local input:",
          {k: f"{a:.4f} / {b:.4f}" for k, (a, b) in pairs.items()})
    for name, (served, reference) in pairs.items():
        assert abs(served - reference) <= ACCURACY_TOLERANCE, (name, served, reference)


@pytest.mark.slow
def test_bench_measures_local_and_service_input_in_one_run(tmp_path):
    """`python -m pipeline bench --data-service 2` at the tiny shape: both
    rates and their ratios, printed and in the JSON (no speed is asserted)."""
    out = tmp_path / "service.json"
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "bench", "--quick", "--data-service", "2",
         "--out-json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = read_json(out)
    assert results["workers"] == 2 and results["texts"] == 1000
    for case in ("local", "service"):
        assert results[case]["repeats"] == 3
        for key in ("first_epoch_examples_per_second", "next_epochs_examples_per_second"):
            assert results[case][key] > 0
    ratio = results["ratio_next_epochs"]
    assert ratio == pytest.approx(results["service"]["next_epochs_examples_per_second"]
                                  / results["local"]["next_epochs_examples_per_second"])
    assert re.search(rf"^service / local\s+{results['ratio_first_epoch']:.2f}x\s+"
                     rf"{ratio:.2f}x$", run.stdout, re.M), run.stdout[-2000:]


@pytest.mark.slow
def test_the_command_exits_non_zero_and_stops_the_rest_when_a_worker_dies(tmp_path):
    log_path = tmp_path / "service.log"
    process, _, pids = start_service(log_path)
    try:
        assert set(pids) == {"d", "s0", "s1"}, pids
        os.kill(pids["s0"], signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        stop_service(process, log_path)
    text = open(log_path).read()
    assert process.returncode == 1, text[-3000:]
    assert f"worker 0 (pid {pids['s0']}) exited with code -9" in text, text[-3000:]
    assert not any(alive(pid) for pid in pids.values())


@pytest.mark.slow
def test_sigterm_stops_the_dispatcher_and_the_workers(service):
    """Last in this module: it stops the module's service."""
    process = service["process"]
    assert process.poll() is None, "the service stopped by itself"
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    deadline = time.time() + 10
    while any(alive(p) for p in service["pids"].values()) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in service["pids"].values())
    text = open(service["log"]).read()
    assert "[data-service] stopping" in text
    assert len(re.findall(r"\[(?:dispatcher|worker)\] stopped", text)) == 3, text[-2000:]
