"""Text files prepared once into sharded TFRecords, so that data larger than
memory streams.

A CSV, JSONL or plain-text file is read once, row by row, by the row parser
of `pipeline.sources` (so a malformed row still gets its file and row number),
and written to `<artifacts_root>/prepared/<name>-<fingerprint>/`:

  <split>-00000.tfrecord ...   tf.train.Examples {"text", "label"} (UTF-8
                               bytes), `data.examples_per_shard` per file, in
                               row order
  prepared.json                written last: per split the examples, the
                               count of each label, the shard files and a
                               seeded sample of at most `data.sample_examples`
                               examples (what the tokenizer trainer, the
                               classical baseline and the data card read)

Nothing is held whole: the pass keeps counters and the bounded sample
(reservoir sampling), and the directory is assembled under a temporary name
and renamed into place, so a crash leaves no half-written data set. A rerun
with the same files (sha256) and settings reuses it.

`read_shards` streams the files with tf.data: in row order, and for a
multi-worker input pipeline by file (worker i reads shards i, i + n, ...)
when there are at least as many shards as workers, else by element.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pipeline.files import (
    remove_stale_temps,
    replace_dir,
    sha256,
    temp_dir_path,
    temp_dir_pattern,
    write_json,
)
from pipeline.progress import Progress

FORMAT = 1
SUMMARY = "prepared.json"
SAMPLE_SEED = 20261207


class Reservoir:
    """A uniform random sample of at most `size` items of a stream (algorithm
    R, seeded), returned in stream order; all of them when the stream is no
    longer than `size`."""

    def __init__(self, size: int, seed: int = SAMPLE_SEED):
        self.size, self.seen, self.items = size, 0, []
        self.rng = random.Random(seed)

    def add(self, item) -> None:
        if len(self.items) < self.size:
            self.items.append((self.seen, item))
        else:
            j = self.rng.randrange(self.seen + 1)
            if j < self.size:
                self.items[j] = (self.seen, item)
        self.seen += 1

    def ordered(self) -> list:
        return [item for _, item in sorted(self.items, key=lambda pair: pair[0])]


def pipelines(input_context) -> tuple[int, int]:
    """(number of input pipelines, this one's index) of a tf.distribute
    InputContext; (1, 0) for none."""
    if input_context is None:
        return 1, 0
    return input_context.num_input_pipelines, input_context.input_pipeline_id


def shard_elements(dataset, input_context):
    """Element sharding: the fallback for a source that is not split in files."""
    n, i = pipelines(input_context)
    return dataset.shard(n, i) if n > 1 else dataset


class _ShardWriter:
    def __init__(self, directory: str, split: str, per_shard: int):
        self.directory, self.split, self.per_shard = directory, split, per_shard
        self.files, self.count, self.writer = [], 0, None

    def write(self, record: bytes) -> None:
        import tensorflow as tf

        if self.count % self.per_shard == 0:
            self.close()
            name = f"{self.split}-{len(self.files):05d}.tfrecord"
            self.files.append(name)
            self.writer = tf.io.TFRecordWriter(os.path.join(self.directory, name))
        self.writer.write(record)
        self.count += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def encode(text: str, label: str) -> bytes:
    """One record: a tf.train.Example of UTF-8 "text" and "label"."""
    from tensorflow.core.example import example_pb2, feature_pb2

    def feature(value: str):
        return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(
            value=[value.encode("utf-8", "surrogatepass")]))

    return example_pb2.Example(features=feature_pb2.Features(feature={
        "text": feature(text), "label": feature(label)})).SerializeToString()


def fingerprint(paths: Iterable[str], settings: dict) -> str:
    """sha256 of the files' contents and the settings, 12 hex digits."""
    digest = {"format": FORMAT, "settings": settings,
              "files": [[p, sha256(p)] for p in paths if p]}
    return hashlib.sha256(json.dumps(digest, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Prepared:
    """A prepared directory: its path and summary (`SUMMARY`)."""
    out_dir: str
    summary: dict

    @property
    def name(self) -> str:
        """`<kind>-<fingerprint>`: what the data depends on."""
        return os.path.basename(self.out_dir)

    def split(self, split: str) -> dict:
        return self.summary["splits"][split]

    def files(self, split: str) -> list[str]:
        return [os.path.join(self.out_dir, f) for f in self.split(split)["files"]]


def prepare(artifacts_root: str, kind: str, paths: Iterable[str], settings: dict,
            rows: Callable[[], Iterable[tuple[str, str, str]]], splits: Iterable[str],
            examples_per_shard: int, sample_examples: int,
            max_examples_per_split: int = 0, log=print) -> Prepared:
    """Writes `<artifacts_root>/prepared/<kind>-<fingerprint>/` from `rows()`,
    an iterator of (split, text, label); the fingerprint is of the files
    (`paths`), `settings` and the sizes. Reuses a complete directory."""
    splits = list(splits)
    key = {**settings, "splits": splits, "examples_per_shard": examples_per_shard,
           "sample_examples": sample_examples,
           "max_examples_per_split": max_examples_per_split}
    out_dir = os.path.join(artifacts_root, "prepared",
                           f"{kind}-{fingerprint(list(paths), key)}")
    summary_path = os.path.join(out_dir, SUMMARY)
    if os.path.isfile(summary_path):
        with open(summary_path, encoding="utf-8") as f:
            return Prepared(out_dir, json.load(f))
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    remove_stale_temps(parent, temp_dir_pattern(r".+"))
    tmp = temp_dir_path(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    writers = {s: _ShardWriter(tmp, s, examples_per_shard) for s in splits}
    samples = {s: Reservoir(sample_examples) for s in splits}
    labels = {s: Counter() for s in splits}
    progress = Progress("[data]", f"preparing {out_dir}", unit="rows", log=log)
    try:
        for split, text, label in rows():
            progress.update(1)
            writer = writers[split]
            if max_examples_per_split and writer.count >= max_examples_per_split:
                continue
            writer.write(encode(text, label))
            samples[split].add((text, label))
            labels[split][label] += 1
        for writer in writers.values():
            writer.close()
        progress.done()
        summary = {"format": FORMAT, "splits": {s: {
            "examples": writers[s].count, "files": writers[s].files,
            "labels": dict(labels[s]), "sample": samples[s].ordered()} for s in splits}}
        write_json(os.path.join(tmp, SUMMARY), summary)
        replace_dir(tmp, out_dir)
    except BaseException:
        for writer in writers.values():
            writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Prepared(out_dir, summary)


def read_shards(files: list[str], input_context=None):
    """tf.data.Dataset of {"text": tf.string, "label": tf.string} of the shard
    files, in order; sharded by file across input pipelines when there are
    enough files, else by element."""
    import tensorflow as tf

    n, i = pipelines(input_context)
    dataset = tf.data.Dataset.from_tensor_slices(files)
    by_file = n > 1 and len(files) >= n
    if by_file:
        dataset = dataset.shard(n, i)
    dataset = dataset.flat_map(lambda path: tf.data.TFRecordDataset(
        path, buffer_size=1 << 20))
    spec = {"text": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.string)}
    dataset = dataset.batch(1024).map(lambda records: tf.io.parse_example(records, spec),
                                      num_parallel_calls=tf.data.AUTOTUNE,
                                      deterministic=True).unbatch()
    if n > 1 and not by_file:
        dataset = dataset.shard(n, i)
    return dataset
