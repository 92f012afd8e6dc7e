"""TensorBoard: what a run logs, and `python -m pipeline tensorboard` serving it."""

import glob
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from pipeline import summaries
from tests.conftest import DEBUG_CONFIG, ROOT

SERVER_TIMEOUT_SECONDS = 90


def events(directory):
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        yield from tf.compat.v1.train.summary_iterator(path)


def test_flat_hparams_are_the_scalar_settings(debug_config):
    values = summaries.flat_hparams(debug_config.to_dict())
    assert values["model.hidden_dim"] == 32 and values["train.global_batch_size"] == 32
    assert values["runtime.precision"] == "float32" and values["data.source"] == "wordnet_topics"
    assert "runtime.artifacts_root" not in values and "data.wordnet_path" not in values
    assert not any(key.startswith("export.") for key in values)
    assert all(isinstance(v, (bool, int, float, str)) for v in values.values())


def test_sample_predictions_table():
    texts = ["a | pipe", "x" * 500, "  spaced\n text "]
    labels = np.array([0, 1, 1])
    logits = np.array([[3.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    table = summaries.sample_predictions_markdown(texts, labels, logits, ["cat", "dog"],
                                                  count=8)
    lines = table.splitlines()
    assert lines[0] == "| | text | true | predicted | p |"
    assert len([line for line in lines if line.startswith(("| \u2713", "| \u2717"))]) == 3
    assert "a \\| pipe" in lines[2]                     # a pipe cannot break the table
    assert lines[3].startswith("| \u2717 | xxx") and "\u2026" in lines[3]
    assert len(lines[3]) < 200                             # long texts are cut
    assert "| spaced text | dog | dog | 0.73 |" in lines[4]
    assert "2/3 right" in table


def test_debug_run_logs_predictions_graph_and_hparams(debug_run):
    cfg, metrics = debug_run
    tb = os.path.join(cfg.run_dir, "tensorboard")
    text_steps, hparams = [], []
    for event in events(os.path.join(tb, "validation")):
        for value in event.summary.value:
            if value.tag == "sample_predictions":
                text_steps.append(event.step)
                table = tf.make_ndarray(value.tensor).item().decode()
                assert table.startswith("| | text | true | predicted | p |")
            if value.metadata.plugin_data.plugin_name == "hparams":
                hparams.append(value.tag)
    assert text_steps == [row["step"] for row in metrics["training"]["history"]]
    assert "_hparams_/session_start_info" in hparams
    graphs = [event.graph_def for event in events(os.path.join(tb, "train"))
              if event.graph_def]
    assert len(graphs) == 1
    graph = tf.compat.v1.GraphDef.FromString(graphs[0])
    assert len(graph.node) > 50
    assert any("token_ids" in node.name for node in graph.node)


def read_lines(stream, lines):
    for line in stream:
        lines.put(line)


def get_json(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.mark.slow
def test_tensorboard_command_serves_the_debug_run(debug_run, debug_overrides, tmp_path):
    cfg, metrics = debug_run
    sets = [arg for override in debug_overrides for arg in ("--set", override)]
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "tensorboard", DEBUG_CONFIG, *sets,
             "--port", "0"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
    lines = queue.Queue()
    threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
    deadline = time.time() + SERVER_TIMEOUT_SECONDS
    try:
        url = None
        while url is None:
            assert time.time() < deadline, (tmp_path / "stderr.txt").read_text()[-3000:]
            assert process.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if line.startswith("TensorBoard http://"):
                url = line.split()[1]
        assert url.startswith("http://127.0.0.1:")  # loopback only

        expected = {"train": {"loss", "accuracy", "learning_rate", "examples_per_second"},
                    "validation": {"loss", "accuracy"}}
        while True:  # the logs load in the background
            tags = get_json(url + "data/plugin/scalars/tags")
            if all(set(tags.get(run, {})) >= want for run, want in expected.items()):
                break
            assert time.time() < deadline, tags
            time.sleep(1)

        listing = get_json(url + "data/plugins_listing")
        for plugin in ("scalars", "text", "graphs", "hparams"):
            assert listing[plugin]["enabled"], plugin
        assert get_json(url + "data/plugin/text/tags") == {"validation": ["sample_predictions"]}
        assert get_json(url + "data/plugin/graphs/info")["train"]["run_graph"]

        groups = get_json(url + "data/plugin/hparams/session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 10, "colParams": [],
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                "STATUS_RUNNING"]})["sessionGroups"]
        assert [g["name"] for g in groups] == [cfg.name]
        assert groups[0]["hparams"]["model.hidden_dim"] == 32
        values = {m["name"]["tag"]: m["value"] for m in groups[0]["metricValues"]}
        last = metrics["training"]["history"][-1]
        assert values["accuracy"] == pytest.approx(last["validation_accuracy"], abs=1e-6)
        assert values["loss"] == pytest.approx(last["validation_loss"], rel=1e-5)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def test_tensorboard_command_without_logs_says_to_train_first(tmp_path, capsys):
    from pipeline.cli import main

    code = main(["tensorboard", DEBUG_CONFIG, "--set", f"runtime.artifacts_root={tmp_path}"])
    assert code == 2
    assert "train first" in capsys.readouterr().err


def test_tensorboard_command_on_a_taken_port_says_what_to_do(debug_run, debug_overrides,
                                                             capsys):
    from pipeline.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sets = [arg for override in debug_overrides for arg in ("--set", override)]
        code = main(["tensorboard", DEBUG_CONFIG, *sets, "--port", str(port)])
    assert code == 2
    err = capsys.readouterr().err
    assert str(port) in err and "--port 0" in err


def test_help_shows_copy_pasteable_commands(capsys):
    from pipeline.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "prepare", "train", "evaluate", "export", "show-config",
                    "tensorboard"):
        assert f"python -m pipeline {command} configs/" in out, command
    with pytest.raises(SystemExit):
        main(["tensorboard", "--help"])
    out = capsys.readouterr().out
    assert "--port" in out and "127.0.0.1" in out and "python -m pipeline tensorboard" in out
