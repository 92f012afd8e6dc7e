"""Data larger than memory: splits stream from prepared TFRecord shards, shard
by file across real worker processes, and train under a memory limit that
loading the corpus whole exceeds."""

import contextlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from pipeline.bench.corpus import write_corpus
from pipeline.config import load_config
from pipeline.sources import DataError, load_splits
from tests.conftest import DEBUG_CONFIG, ROOT

QUIET = dict(log=lambda *_: None)
ITEM = re.compile(rb"\(item (\d+)\)")


def csv_config(corpus, root, *extra):
    return load_config(DEBUG_CONFIG, [
        "data.source=csv", f"data.train_path={corpus['train']}",
        f"data.validation_path={corpus['validation']}", f"data.test_path={corpus['test']}",
        "data.max_examples_per_split=0", f"runtime.artifacts_root={root}", *extra])


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    return write_corpus(str(tmp_path_factory.mktemp("corpus")), rows=1000, eval_rows=100)


def items(dataset):
    return [int(ITEM.search(e["text"]).group(1)) for e in dataset.as_numpy_iterator()]


def test_a_streamed_split_reads_what_memory_holds(small_corpus, tmp_path):
    """The same CSV held in memory and streamed from 10 shards: the same
    examples in the same order, the same card counts, a bounded sample; the
    training stream of a resumed run skips exactly the batches already read."""
    from pipeline.input import make_train_dataset
    from pipeline.tasks.text_classification import TextClassificationTask

    whole = load_splits(csv_config(small_corpus, tmp_path).data, str(tmp_path), **QUIET)
    cfg = csv_config(small_corpus, tmp_path, "data.sample_examples=50",
                     "data.examples_per_shard=100")
    streamed = load_splits(cfg.data, str(tmp_path), **QUIET)
    assert whole.complete("train") and not streamed.complete("train")
    prepared = [d for d in os.listdir(tmp_path / "prepared") if d.startswith("csv-")]
    shards = sorted(f for d in prepared for f in os.listdir(tmp_path / "prepared" / d)
                    if f.startswith("train-"))
    assert len(shards) == 10 + 1                          # 10 here, 1 in the other dir
    a = list(whole.dataset("train").as_numpy_iterator())
    b = list(streamed.dataset("train").as_numpy_iterator())
    assert [(e["text"], e["label"]) for e in a] == [(e["text"], e["label"]) for e in b]
    assert len(a) == 1000
    assert whole.data_card()["splits"]["train"]["per_class"] == \
        streamed.data_card()["splits"]["train"]["per_class"]
    assert streamed.data_card()["splits"]["train"]["length_sample"] == 50
    texts, labels = streamed.sample("train")
    assert len(texts) == 50 and set(texts) <= {e["text"].decode() for e in a}
    with pytest.raises(ValueError, match="stream from files"):
        _ = streamed.texts

    task = TextClassificationTask(cfg, **QUIET)
    task.prepare()
    assert task.num_examples("train") == 1000 and len(task.sample("train")) == 50

    def batches(skip):
        data = make_train_dataset(lambda ctx: streamed.dataset("train", ctx),
                                  task.preprocess, cfg, 16, skip_batches=skip, cache=False)
        return [x["token_ids"] for x, _ in data.take(8 - skip).as_numpy_iterator()]

    for full, resumed in zip(batches(0)[3:], batches(3)):
        np.testing.assert_array_equal(full, resumed)


def test_a_bad_label_is_named_with_its_row_also_when_prepared_data_is_reused(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,label\n" + "".join(f"text {i},a\n" for i in range(30))
                    + "a late text,zzz\n", encoding="utf-8")
    cfg = load_config(None, ["data.source=csv", f"data.train_path={path}",
                             "data.labels=[a]"]).data
    for _ in range(2):   # the second load reads the prepared files
        with pytest.raises(DataError, match=r"data\.csv: row 32: unknown label 'zzz'"):
            load_splits(cfg, str(tmp_path), **QUIET)
    assert not [d for d in os.listdir(tmp_path / "prepared") if ".tmp-" in d]


def worker_share(config_path: str, out_path: str) -> None:
    """One worker process of the sharding test: the input context its real
    MultiWorkerMirroredStrategy gives, and the items of the train split that
    `TextSplits.dataset` streams to it."""
    import tensorflow as tf

    from pipeline.distribute import get_strategy

    cfg = load_config(config_path)
    strategy = get_strategy(cfg.runtime)
    contexts = []
    strategy.distribute_datasets_from_function(
        lambda ctx: contexts.append(ctx) or tf.data.Dataset.range(1))
    splits = load_splits(cfg.data, cfg.runtime.artifacts_root, **QUIET)
    ctx = contexts[0]
    with open(out_path, "w") as f:
        json.dump({"pipeline": ctx.input_pipeline_id, "pipelines": ctx.num_input_pipelines,
                   "items": items(splits.dataset("train", ctx))}, f)


@pytest.mark.slow
@pytest.mark.parametrize("per_shard", [100, 100000])
def test_two_worker_processes_read_disjoint_shards(small_corpus, tmp_path, per_shard):
    """Two real processes on 127.0.0.1 under MultiWorkerMirroredStrategy: with
    10 shards each reads whole files (worker i: shards i, i + 2, ...); with
    one shard, every other example. Together: every example once."""
    from pipeline.distribute import tf_config_for
    from pipeline.launch import free_ports

    cfg = csv_config(small_corpus, tmp_path, "data.sample_examples=50",
                     f"data.examples_per_shard={per_shard}",
                     "runtime.strategy=multi_worker_mirrored")
    load_splits(cfg.data, str(tmp_path), **QUIET)        # prepared once, as launch does
    cfg.save(str(tmp_path / "config.yaml"))
    addresses = [f"127.0.0.1:{p}" for p in free_ports(2)]
    code = ("import sys; from tests.pipeline.test_streaming import worker_share; "
            "worker_share(sys.argv[1], sys.argv[2])")
    outs = [str(tmp_path / f"w{i}.json") for i in range(2)]
    processes = [subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "config.yaml"), outs[i]], cwd=ROOT,
        env=dict(os.environ, TF_CONFIG=tf_config_for(addresses, i)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    for p in processes:
        output, _ = p.communicate(timeout=180)
        assert p.returncode == 0, output[-3000:]
    shares = [json.load(open(o)) for o in outs]
    assert [(s["pipeline"], s["pipelines"]) for s in shares] == [(0, 2), (1, 2)]
    seen = [set(s["items"]) for s in shares]
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(1000))
    assert all(len(s["items"]) == len(set(s["items"])) for s in shares)
    if per_shard == 100:     # whole files: worker 0 has shards 0, 2, 4, 6, 8
        assert seen[0] == {i for i in range(1000) if (i // 100) % 2 == 0}
    else:                    # one file: element sharding
        assert seen[0] == set(range(0, 1000, 2))


# --------------------------------------------------------- memory limit
LIMIT_MB = 1200       # the cgroup limit on the memory of each process (page cache included)
BIG_ROWS = 2_500_000  # 328 MB of CSV; ~1.6 GB when held whole as Python strings


def memory_cgroup(name: str, limit_bytes: int) -> str | None:
    """A cgroup v1 memory group with `limit_bytes` (root), or None."""
    base = "/sys/fs/cgroup/memory"
    path = os.path.join(base, name)
    try:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit_bytes))
    except OSError:
        return None
    return path


def run_limited(cmd, cgroup, log_path):
    """Runs `cmd` inside `cgroup`; returns (exit code, peak MB of the group,
    the process's max RSS MB)."""
    for name, value in (("memory.max_usage_in_bytes", "0"), ("memory.failcnt", "0")):
        with open(os.path.join(cgroup, name), "w") as f:
            f.write(value)

    def enter():
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, cwd=ROOT, preexec_fn=enter, stdout=log,
                             stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    with open(os.path.join(cgroup, "memory.max_usage_in_bytes")) as f:
        peak = int(f.read()) / 2**20
    return os.waitstatus_to_exitcode(status), peak, usage.ru_maxrss / 1024


WHOLE = """
import sys
import tensorflow as tf
from pipeline.config import load_config
from pipeline.sources import load_texts
cfg = load_config(None, ["data.source=csv", "data.train_path=" + sys.argv[1],
                         "data.validation_path=" + sys.argv[2],
                         "data.test_path=" + sys.argv[3]])
texts = load_texts(cfg.data)["train"]            # every row, held whole
data = tf.data.Dataset.from_tensor_slices(texts)  # as sources did before streaming
print("held", len(texts), "texts")
"""


@pytest.mark.slow
def test_pretraining_and_training_stream_under_a_memory_limit_loading_whole_exceeds(
        tmp_path):
    cgroup = memory_cgroup(f"pipeline-test-{os.getpid()}", LIMIT_MB << 20)
    if cgroup is None:
        pytest.skip("no writable cgroup v1 memory controller (needs root)")
    try:
        corpus = write_corpus(str(tmp_path / "big"), rows=BIG_ROWS, eval_rows=1000)
        train = [sys.executable, "-m", "pipeline", "train", DEBUG_CONFIG]
        for o in ("data.source=csv", f"data.train_path={corpus['train']}",
                  f"data.validation_path={corpus['validation']}",
                  f"data.test_path={corpus['test']}", "data.max_examples_per_split=0",
                  "data.sample_examples=20000", "train.shuffle_buffer=10000",
                  "train.max_steps=30", "pretrain.enabled=true",
                  "pretrain.corpora=[train_split]", "pretrain.steps=30",
                  f"runtime.artifacts_root={tmp_path / 'art'}"):
            train += ["--set", o]
        code, peak, rss = run_limited(train, cgroup, tmp_path / "stream.log")
        text = open(tmp_path / "stream.log").read()
        print(f"streaming: exit {code}, peak {peak:.0f} MB in the cgroup "
              f"(limit {LIMIT_MB} MB), max RSS {rss:.0f} MB")
        assert code == 0, text[-3000:]
        assert "train streamed from files" in text
        assert re.search(r"\[pretrain\] done: 30 steps", text)
        assert re.search(r"\[train\] finished at step 30", text)
        assert f"train {BIG_ROWS:,}," in text
        code, whole_peak, whole_rss = run_limited(
            [sys.executable, "-c", WHOLE, corpus["train"], corpus["validation"],
             corpus["test"]], cgroup, tmp_path / "whole.log")
        print(f"held whole: exit {code}, peak {whole_peak:.0f} MB in the cgroup, "
              f"max RSS {whole_rss:.0f} MB")
        assert code != 0 and "held" not in open(tmp_path / "whole.log").read()
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(cgroup)
