"""Data sources: every source yields the same thing, `TextSplits`.

  wordnet_topics   the TFDS builder in pipeline/datasets/ (Debian wordnet-base)
  csv / jsonl      users' own files, text and label columns named in the config
  tfds:<name>      any public TFDS data set (needs the network the first time)

No split is held whole. Each one is read once, as a stream, for its size, its
examples per class and a seeded sample of at most `data.sample_examples`
examples (what the tokenizer trainer, the classical baseline and the data card
read). TFDS data sets are then read with tfds from their TFRecord shards; CSV
and JSONL files are prepared once into sharded TFRecords (`pipeline.prepared`,
with the same row-level error messages) and read with tf.data. A split no
larger than the sample is the sample: it is fed from memory, exactly as
before streaming existed.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.config import DataConfig
from pipeline.files import hash_split
from pipeline.prepared import Reservoir, pipelines, shard_elements
from pipeline.progress import Progress

SPLITS = ("train", "validation", "test")


class DataError(ValueError):
    """Bad input data; the message names the file and row."""


@dataclass
class SplitData:
    """One split: its size, its examples per class and a bounded sample."""
    examples: int
    per_class: list[int]
    texts: np.ndarray    # (n,) object array of str: a seeded sample, in order
    labels: np.ndarray   # (n,) int32 class ids of those texts

    @property
    def complete(self) -> bool:
        """The sample holds every example of the split."""
        return len(self.texts) == self.examples


@dataclass
class TextSplits:
    label_names: list[str]
    splits: dict[str, SplitData]
    description: str = ""
    # (split, tf.distribute.InputContext or None) -> the whole split streamed
    # from files, {"text": tf.string, "label": tf.int32}, sharded for that
    # input pipeline; None when every split is complete.
    stream: Callable | None = field(default=None, repr=False)
    # What the data depends on (prepared files' sha256 and settings, or the
    # TFDS data set and splits): names a streamed split in cache keys.
    fingerprint: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def num_examples(self, split: str) -> int:
        return self.splits[split].examples

    def complete(self, split: str) -> bool:
        return self.splits[split].complete or self.stream is None

    @property
    def texts(self) -> dict[str, np.ndarray]:
        """Every split's texts, in memory: only when no split streams."""
        self._require_complete("texts")
        return {s: d.texts for s, d in self.splits.items()}

    @property
    def labels(self) -> dict[str, np.ndarray]:
        """Every split's class ids, in memory: only when no split streams."""
        self._require_complete("labels")
        return {s: d.labels for s, d in self.splits.items()}

    def _require_complete(self, what: str) -> None:
        streamed = [s for s in self.splits if not self.complete(s)]
        if streamed:
            raise ValueError(f"TextSplits.{what}: {', '.join(streamed)} stream from files "
                             "(more examples than data.sample_examples); read "
                             "dataset() or sample()")

    def sample(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(texts, labels) of the split's sample: the whole split when complete."""
        return self.splits[split].texts, self.splits[split].labels

    def dataset(self, split: str, input_context=None):
        """tf.data.Dataset of {"text": tf.string, "label": tf.int32}: the whole
        split, in order, this input pipeline's share of it (by file when the
        split streams from enough files, else by element)."""
        import tensorflow as tf

        if not self.complete(split):
            return self.stream(split, input_context)
        data = self.splits[split]
        return shard_elements(tf.data.Dataset.from_tensor_slices({
            "text": tf.constant(list(data.texts), dtype=tf.string),
            "label": tf.constant(data.labels, dtype=tf.int32),
        }), input_context)

    def data_card(self) -> dict:
        """Examples per split and class, text length percentiles (of the
        sample when a split is larger: `length_sample` says how many)."""
        card = {"source": self.description, "num_classes": self.num_classes,
                "splits": {}}
        for split in SPLITS:
            data = self.splits[split]
            card["splits"][split] = {
                "examples": int(data.examples),
                "per_class": {n: int(c) for n, c in zip(self.label_names, data.per_class)},
                **length_percentiles(data.texts),
            }
            if not data.complete:
                card["splits"][split]["length_sample"] = len(data.texts)
        return card


def length_percentiles(texts) -> dict:
    """Characters and whitespace words per text: p50, p90, p99 and max (zeros
    for no texts); shared by every data card."""
    chars = np.array([len(t) for t in texts]) if len(texts) else np.zeros(1)
    words = np.array([len(t.split()) for t in texts]) if len(texts) else np.zeros(1)
    return {
        "chars_p50_p90_p99_max": [int(np.percentile(chars, q))
                                  for q in (50, 90, 99)] + [int(chars.max())],
        "words_p50_p90_p99_max": [int(np.percentile(words, q))
                                  for q in (50, 90, 99)] + [int(words.max())],
    }


def format_lengths(name: str, lengths: dict) -> str:
    """One data-card line of `length_percentiles`."""
    return (f"  {name:<10} chars p50/p90/p99/max {lengths['chars_p50_p90_p99_max']}"
            f"  words {lengths['words_p50_p90_p99_max']}")


def format_data_card(card: dict) -> str:
    lines = [f"Data card: {card['source']}"]
    splits = card["splits"]
    lines.append("  " + "  ".join(
        f"{s}: {splits[s]['examples']:,}" for s in SPLITS) + " examples")
    for s in SPLITS:
        lines.append(format_lengths(s, splits[s]))
        if "length_sample" in splits[s]:
            lines[-1] += f"  (of a sample of {splits[s]['length_sample']:,})"
    names = list(splits["train"]["per_class"])
    width = max(len(n) for n in names)
    lines.append(f"  {'class':<{width}} " + " ".join(f"{s:>10}" for s in SPLITS))
    for n in names:
        lines.append(f"  {n:<{width}} " + " ".join(
            f"{splits[s]['per_class'][n]:>10,}" for s in SPLITS))
    return "\n".join(lines)


def load_splits(cfg: DataConfig, artifacts_root: str = "artifacts",
                log=print) -> TextSplits:
    """The configured source as TextSplits (one streaming pass per split)."""
    start = time.time()
    if cfg.source == "wordnet_topics":
        splits = _load_wordnet_topics(cfg, artifacts_root, log)
    elif cfg.source in ("csv", "jsonl"):
        splits = _load_files(cfg, artifacts_root, log)
    elif cfg.source.startswith("tfds:"):
        splits = _load_public_tfds(cfg, artifacts_root, log)
    else:
        raise DataError(f"config key 'data.source' = {cfg.source!r}: unknown source")
    for s in SPLITS:
        if splits.num_examples(s) == 0:
            raise DataError(f"{splits.description}: split '{s}' has no examples")
    log(f"[data] {splits.description}: " + ", ".join(
        f"{s} {splits.num_examples(s):,}" for s in SPLITS)
        + f" examples, {splits.num_classes} classes ({time.time() - start:.1f}s)")
    streamed = [s for s in SPLITS if not splits.complete(s)]
    if streamed:
        log(f"[data] {', '.join(streamed)} streamed from files (more than "
            f"data.sample_examples = {cfg.sample_examples:,} examples); the tokenizer, "
            "the baseline and the data card read a seeded sample of that many")
    return splits


READ_BATCH = 4096


def tfds_data_dir(cfg: DataConfig, artifacts_root: str) -> str:
    if os.path.isabs(cfg.tfds_data_dir):
        return cfg.tfds_data_dir
    return os.path.join(artifacts_root, cfg.tfds_data_dir)


def _tfds_splits(builder, specs: dict[str, str], example, names: list[str],
                 sample_examples: int, description: str, log) -> TextSplits:
    """TextSplits over a prepared TFDS builder: `specs` maps each split to its
    TFDS split (slicing allowed); `example` maps a TFDS example to {"text":
    tf.string, "label": int}. One pass per split reads sizes, counts and the
    sample; `stream` reads the TFRecord shards with tfds, by file when a
    split has at least a shard per input pipeline."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def read(split, read_config=None):
        return builder.as_dataset(split=specs[split], shuffle_files=False,
                                  read_config=read_config)

    def convert(e):
        out = example(e)
        return {"text": out["text"], "label": tf.cast(out["label"], tf.int32)}

    data = {}
    for split in SPLITS:
        sample, counts = Reservoir(sample_examples), np.zeros(len(names), np.int64)
        base = specs[split].split("[")[0]
        progress = Progress("[data]", f"reading {split}",
                            builder.info.splits[base].num_examples, log=log)
        # Batches: one example at a time reads ~5,000 examples/s.
        batches = read(split).batch(READ_BATCH).map(
            convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        for batch in tfds.as_numpy(batches):
            progress.update(len(batch["label"]))
            counts += np.bincount(batch["label"], minlength=len(names))
            for text, label in zip(batch["text"], batch["label"].tolist()):
                sample.add((text.decode("utf-8"), label))
        items = sample.ordered()
        data[split] = SplitData(
            int(sample.seen), counts.tolist(),
            np.array([t for t, _ in items], dtype=object),
            np.array([y for _, y in items], dtype=np.int32))

    def stream(split, input_context=None):
        n, _ = pipelines(input_context)
        base = specs[split].split("[")[0]
        by_file = n > 1 and builder.info.splits[base].num_shards >= n
        dataset = read(split, tfds.ReadConfig(
            input_context=input_context if by_file else None))
        dataset = dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=True)
        return dataset if by_file else shard_elements(dataset, input_context)

    # TFDS shuffles examples by key at prepare time: the order is stable.
    return TextSplits(names, data, description, stream,
                      f"{builder.info.full_name}:{json.dumps(specs, sort_keys=True)}")


def _load_wordnet_topics(cfg: DataConfig, artifacts_root: str, log) -> TextSplits:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from pipeline.datasets.wordnet_topics import WordnetTopics, require_file

    require_file(cfg.wordnet_path)
    tfds.disable_progress_bar()
    builder = WordnetTopics(wordnet_path=cfg.wordnet_path,
                            data_dir=tfds_data_dir(cfg, artifacts_root), log=log)
    log(f"[data] preparing TFDS wordnet_topics from {cfg.wordnet_path} "
        f"into {builder.data_dir} (cached after the first run)")
    builder.download_and_prepare()
    # TFDS slicing reads only what a debug run keeps.
    specs = {s: f"{s}[:{cfg.max_examples_per_split}]" if cfg.max_examples_per_split
             else s for s in SPLITS}

    def example(e):
        text = tf.strings.join([e["lemmas"], e["definition"]], separator=": ") \
            if cfg.include_lemmas else e["definition"]
        return {"text": text, "label": e["label"]}

    names = builder.info.features["label"].names
    text = "lemmas: definition" if cfg.include_lemmas else "definition"
    return _tfds_splits(builder, specs, example, names, cfg.sample_examples,
                        f"wordnet_topics (TFDS, text = '{text}')", log)


CSV_FIELD_LIMIT = 16 << 20   # characters in one CSV field (Python's default: 131,072)


def _read_rows(path: str, fmt: str, text_col: str, label_col: str):
    """Yields (row_number, text, label) of a CSV (header row) or JSONL file."""
    if not os.path.isfile(path):
        raise DataError(f"data file not found: {path}")
    number = 0
    try:
        for number, text, label in _parse_rows(path, fmt, text_col, label_col):
            for value in (text, label):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:   # invalid bytes, or a "\\ud800" JSON escape
                    raise DataError(f"{path}: row {number}: not valid UTF-8 text: "
                                    f"{_brief(value, 60)}") from None
            yield number, text, label
    except csv.Error as err:
        raise DataError(f"{path}: row {number + 1}: not valid CSV: {err}") from None


def _parse_rows(path: str, fmt: str, text_col: str, label_col: str):
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    # A UTF-8 BOM is skipped; invalid bytes become lone surrogates here and are
    # reported with their row.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        if fmt == "csv":
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            for col, key in ((text_col, "text_column"), (label_col, "label_column")):
                if col is not None and col not in header:
                    raise DataError(
                        f"{path}: row 1 (header): missing column '{col}' "
                        f"(data.{key}); columns are "
                        f"[{', '.join(_brief(c, 40) for c in header[:20])}"
                        f"{', ...' if len(header) > 20 else ''}]")
            for number, row in enumerate(reader, 2):
                if row.get(text_col) is None or (label_col is not None
                                                 and row.get(label_col) is None):
                    raise DataError(f"{path}: row {number}: missing value for "
                                    f"'{text_col}'" + (f" or '{label_col}'" if label_col
                                                       else ""))
                yield number, row[text_col], ("" if label_col is None
                                              else row[label_col].strip())
        elif fmt == "text":
            for number, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield number, line, ""
        else:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}: row {number}: not valid JSON: {err.msg}") from None
                except RecursionError:
                    raise DataError(f"{path}: row {number}: not valid JSON here: nested "
                                    "too deeply") from None
                except ValueError as err:   # an integer of more than 4,300 digits
                    raise DataError(f"{path}: row {number}: not valid JSON here: "
                                    f"{str(err).split(';')[0]}") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}: row {number}: expected a JSON object")
                for col in (text_col, label_col):
                    if col is not None and col not in row:
                        raise DataError(f"{path}: row {number}: missing column '{col}'")
                text = row[text_col]
                if not isinstance(text, str):
                    raise DataError(f"{path}: row {number}: column '{text_col}' "
                                    f"must be a string, got {type(text).__name__}")
                if label_col is None:
                    yield number, text, ""
                    continue
                label = row[label_col]
                if isinstance(label, bool) or not isinstance(label, (str, int)):
                    raise DataError(f"{path}: row {number}: column '{label_col}' must be "
                                    f"a string or an integer, got {type(label).__name__}")
                yield number, text, str(label).strip()


def _brief(text: str, limit: int) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _iter_split_rows(cfg: DataConfig, label_col: str | None):
    """(split, path, row number, text, label) of every row, in file order: the
    split's own file, else a stable hash split of the train file
    (pipeline.files.hash_split)."""
    paths = {"train": cfg.train_path, "validation": cfg.validation_path,
             "test": cfg.test_path}
    for split, path in paths.items():
        if not path:
            continue
        for number, text, label in _read_rows(path, cfg.source, cfg.text_column, label_col):
            target = split
            if split == "train" and not (cfg.validation_path and cfg.test_path):
                target = hash_split(text)
                if target != "train" and paths[target]:
                    target = "train"
            yield target, path, number, text, label


def _split_rows(cfg: DataConfig, label_col: str | None) -> dict[str, list[tuple]]:
    """`_iter_split_rows` held in memory: (path, row number, text, label) by split."""
    rows = {s: [] for s in SPLITS}
    for split, path, number, text, label in _iter_split_rows(cfg, label_col):
        rows[split].append((path, number, text, label))
    return rows


def _check_corpus_config(cfg: DataConfig) -> None:
    if cfg.source not in ("csv", "jsonl", "text"):
        raise DataError(f"config key 'data.source' = {cfg.source!r}: a corpus is read "
                        "from 'csv', 'jsonl' or 'text' files")
    if not cfg.train_path:
        raise DataError("config key 'data.train_path' is empty: name the corpus file")


def _require_texts(cfg: DataConfig, count) -> None:
    for s in SPLITS:
        if not count(s):
            raise DataError(f"{cfg.source} {cfg.train_path}: split '{s}' has no texts")


def load_texts(cfg: DataConfig) -> dict[str, list[str]]:
    """`load_corpus`'s texts held whole in memory, by split: the reference the
    streaming loader is tested against (the pipeline itself streams with
    `load_corpus`). Raises DataError naming the file and row."""
    _check_corpus_config(cfg)
    rows = _split_rows(cfg, None)
    texts = {s: [r[2] for r in rows[s]] for s in SPLITS}
    if cfg.max_examples_per_split:
        texts = {s: t[: cfg.max_examples_per_split] for s, t in texts.items()}
    _require_texts(cfg, lambda s: texts[s])
    return texts


def load_corpus(cfg: DataConfig, artifacts_root: str = "artifacts",
                log=print) -> TextSplits:
    """A user's own unlabeled corpus (language modeling) as TextSplits whose one
    label is "": "csv" and "jsonl" rows' `data.text_column`, or "text" files
    with one text per non-empty line; files per split, or a stable 80/10/10
    hash split of `data.train_path`. Streams as `load_splits` does (a split
    larger than `data.sample_examples` is read from its prepared shards).
    Raises DataError naming the file and row."""
    _check_corpus_config(cfg)
    splits = _load_files(cfg, artifacts_root, log, label_column=None)
    _require_texts(cfg, splits.num_examples)
    return splits


def _load_files(cfg: DataConfig, artifacts_root: str, log,
                label_column: str | None = "") -> TextSplits:
    """CSV/JSONL rows (or text lines, with no label: `label_column` None)
    prepared once into sharded TFRecords (`pipeline.prepared`)."""
    import tensorflow as tf

    from pipeline import prepared

    paths = [cfg.train_path, cfg.validation_path, cfg.test_path]
    for path in paths:
        if path and not os.path.isfile(path):
            raise DataError(f"data file not found: {path}")
    if label_column == "":
        label_column = cfg.label_column
    first_row = {}   # (split, label) -> where it first occurs

    def rows():
        for split, path, number, text, label in _iter_split_rows(cfg, label_column):
            first_row.setdefault((split, label), (path, number))
            yield split, text, label

    settings = {"source": cfg.source, "text_column": cfg.text_column,
                "label_column": label_column, "paths": [bool(p) for p in paths]}
    data_files = prepared.prepare(artifacts_root, cfg.source, paths, settings, rows,
                                  SPLITS, cfg.examples_per_shard, cfg.sample_examples,
                                  cfg.max_examples_per_split, log=log)
    info = data_files.summary["splits"]
    names = (list(cfg.labels) if label_column is not None else []) or \
        sorted(info["train"]["labels"])
    index = {n: i for i, n in enumerate(names)}
    for split in SPLITS:
        unknown = [label for label in info[split]["labels"] if label not in index]
        if unknown:
            # The first unknown label's row (read again when the data is cached).
            where = first_row or _first_rows(cfg, label_column)
            path, number = min(where[(split, label)] for label in unknown)
            label = next(lab for lab in unknown if where[(split, lab)] == (path, number))
            known = ", ".join(_brief(n, 40) for n in names[:10])
            raise DataError(f"{path}: row {number}: unknown label {_brief(label, 80)} "
                            f"(known: {known}{', ...' if len(names) > 10 else ''})")
    data = {}
    for split in SPLITS:
        sample = info[split]["sample"]
        counts = [info[split]["labels"].get(n, 0) for n in names]
        data[split] = SplitData(info[split]["examples"], counts,
                                np.array([t for t, _ in sample], dtype=object),
                                np.array([index[y] for _, y in sample], dtype=np.int32))

    def class_id(e):
        # No lookup table: a dataset with one cannot go to a tf.data service.
        hits = tf.cast(tf.equal(tf.constant(names), e["label"]), tf.int32)
        return {"text": e["text"], "label": tf.cast(tf.argmax(hits), tf.int32)}

    def stream(split, input_context=None):
        return prepared.read_shards(data_files.files(split), input_context).map(
            class_id, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    return TextSplits(names, data, f"{cfg.source} {cfg.train_path}", stream,
                      data_files.name)


def _first_rows(cfg: DataConfig, label_column: str | None) -> dict:
    """(split, label) -> (path, row number) of its first row."""
    first = {}
    for split, path, number, _, label in _iter_split_rows(cfg, label_column):
        first.setdefault((split, label), (path, number))
    return first


def _load_public_tfds(cfg: DataConfig, artifacts_root: str, log) -> TextSplits:
    import tensorflow_datasets as tfds

    name = cfg.source[len("tfds:"):]
    builder = tfds.builder(name, data_dir=tfds_data_dir(cfg, artifacts_root))
    builder.download_and_prepare()
    names = list(builder.info.features[cfg.label_column].names)
    specs = {"train": cfg.train_split, "validation": cfg.validation_split,
             "test": cfg.test_split}
    if cfg.max_examples_per_split:
        specs = {s: f"{v}[:{cfg.max_examples_per_split}]" if "[" not in v else v
                 for s, v in specs.items()}
    return _tfds_splits(builder, specs,
                        lambda e: {"text": e[cfg.text_column], "label": e[cfg.label_column]},
                        names, cfg.sample_examples, f"tfds:{name}", log)
