"""Data sources: every source yields the same thing, `TextSplits`.

  wordnet_topics   the TFDS builder in pipeline/datasets/ (Debian wordnet-base)
  csv / jsonl      users' own files, text and label columns named in the config
  tfds:<name>      any public TFDS data set (needs the network the first time)

A split is held as numpy arrays (text as Python str objects, label as int32)
so the tokenizer trainer and the classical baseline read exactly the examples
that `TextSplits.dataset()` feeds to tf.data.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass

import numpy as np

from pipeline.config import DataConfig
from pipeline.files import hash_split
from pipeline.progress import Progress

SPLITS = ("train", "validation", "test")


class DataError(ValueError):
    """Bad input data; the message names the file and row."""


@dataclass
class TextSplits:
    label_names: list[str]
    texts: dict[str, np.ndarray]   # split -> (n,) object array of str
    labels: dict[str, np.ndarray]  # split -> (n,) int32 class ids
    description: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def dataset(self, split: str):
        """tf.data.Dataset of {"text": tf.string, "label": tf.int32}."""
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices({
            "text": tf.constant(list(self.texts[split]), dtype=tf.string),
            "label": tf.constant(self.labels[split], dtype=tf.int32),
        })

    def data_card(self) -> dict:
        """Examples per split and class, text length percentiles."""
        card = {"source": self.description, "num_classes": self.num_classes,
                "splits": {}}
        for split in SPLITS:
            texts, labels = self.texts[split], self.labels[split]
            counts = np.bincount(labels, minlength=self.num_classes)
            card["splits"][split] = {
                "examples": int(len(texts)),
                "per_class": {n: int(c) for n, c in zip(self.label_names, counts)},
                **length_percentiles(texts),
            }
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
    names = list(splits["train"]["per_class"])
    width = max(len(n) for n in names)
    lines.append(f"  {'class':<{width}} " + " ".join(f"{s:>10}" for s in SPLITS))
    for n in names:
        lines.append(f"  {n:<{width}} " + " ".join(
            f"{splits[s]['per_class'][n]:>10,}" for s in SPLITS))
    return "\n".join(lines)


def _limit(splits: TextSplits, max_examples: int) -> TextSplits:
    if max_examples > 0:
        for s in SPLITS:
            splits.texts[s] = splits.texts[s][:max_examples]
            splits.labels[s] = splits.labels[s][:max_examples]
    return splits


def load_splits(cfg: DataConfig, artifacts_root: str = "artifacts",
                log=print) -> TextSplits:
    """Loads the configured source into TextSplits."""
    start = time.time()
    if cfg.source == "wordnet_topics":
        splits = _load_wordnet_topics(cfg, artifacts_root, log)
    elif cfg.source in ("csv", "jsonl"):
        splits = _load_files(cfg)
    elif cfg.source.startswith("tfds:"):
        splits = _load_public_tfds(cfg, artifacts_root)
    else:
        raise DataError(f"config key 'data.source' = {cfg.source!r}: unknown source")
    splits = _limit(splits, cfg.max_examples_per_split)
    for s in SPLITS:
        if len(splits.texts[s]) == 0:
            raise DataError(f"{splits.description}: split '{s}' has no examples")
    log(f"[data] {splits.description}: " + ", ".join(
        f"{s} {len(splits.texts[s]):,}" for s in SPLITS)
        + f" examples, {splits.num_classes} classes ({time.time() - start:.1f}s)")
    return splits


READ_BATCH = 4096


def tfds_data_dir(cfg: DataConfig, artifacts_root: str) -> str:
    if os.path.isabs(cfg.tfds_data_dir):
        return cfg.tfds_data_dir
    return os.path.join(artifacts_root, cfg.tfds_data_dir)


def _load_wordnet_topics(cfg: DataConfig, artifacts_root: str, log) -> TextSplits:
    import tensorflow_datasets as tfds

    from pipeline.datasets.wordnet_topics import WordnetTopics, require_file

    require_file(cfg.wordnet_path)
    tfds.disable_progress_bar()
    builder = WordnetTopics(wordnet_path=cfg.wordnet_path,
                            data_dir=tfds_data_dir(cfg, artifacts_root), log=log)
    log(f"[data] preparing TFDS wordnet_topics from {cfg.wordnet_path} "
        f"into {builder.data_dir} (cached after the first run)")
    builder.download_and_prepare()
    texts, labels = {}, {}
    for split in SPLITS:
        # TFDS slicing reads only what a debug run keeps.
        spec = f"{split}[:{cfg.max_examples_per_split}]" if cfg.max_examples_per_split \
            else split
        # Read in batches: one example at a time reads ~5,000 examples/s.
        batches = tfds.as_numpy(builder.as_dataset(split=spec, shuffle_files=False,
                                                   batch_size=READ_BATCH))
        t, y = [], []
        progress = Progress("[data]", f"reading {split}",
                            builder.info.splits[split].num_examples, log=log)
        for batch in batches:
            progress.update(len(batch["label"]))
            for lemmas, definition in zip(batch["lemmas"], batch["definition"]):
                definition = definition.decode("utf-8")
                if cfg.include_lemmas:
                    definition = f"{lemmas.decode('utf-8')}: {definition}"
                t.append(definition)
            y.extend(batch["label"].tolist())
        # TFDS shuffles examples by key at prepare time: order is stable.
        texts[split] = np.array(t, dtype=object)
        labels[split] = np.array(y, dtype=np.int32)
    names = builder.info.features["label"].names
    text = "lemmas: definition" if cfg.include_lemmas else "definition"
    return TextSplits(names, texts, labels,
                      f"wordnet_topics (TFDS, text = '{text}')")


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


def _split_rows(cfg: DataConfig, label_col: str | None) -> dict[str, list[tuple]]:
    """(path, row number, text, label) of every row, by split: the split's own
    file, else a stable hash split of the train file (pipeline.files.hash_split)."""
    rows = {s: [] for s in SPLITS}
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
            rows[target].append((path, number, text, label))
    return rows


def load_texts(cfg: DataConfig) -> dict[str, list[str]]:
    """A user's own unlabeled corpus (language modeling), by split: "csv" and
    "jsonl" rows' `data.text_column`, or "text" files with one text per
    non-empty line; files per split, or a stable 80/10/10 hash split of
    `data.train_path`. Raises DataError naming the file and row."""
    if cfg.source not in ("csv", "jsonl", "text"):
        raise DataError(f"config key 'data.source' = {cfg.source!r}: a corpus is read "
                        "from 'csv', 'jsonl' or 'text' files")
    if not cfg.train_path:
        raise DataError("config key 'data.train_path' is empty: name the corpus file")
    rows = _split_rows(cfg, None)
    texts = {s: [r[2] for r in rows[s]] for s in SPLITS}
    if cfg.max_examples_per_split:
        texts = {s: t[: cfg.max_examples_per_split] for s, t in texts.items()}
    for s in SPLITS:
        if not texts[s]:
            raise DataError(f"{cfg.source} {cfg.train_path}: split '{s}' has no texts")
    return texts


def _load_files(cfg: DataConfig) -> TextSplits:
    fmt = cfg.source
    rows = _split_rows(cfg, cfg.label_column)
    names = list(cfg.labels) or sorted({r[3] for r in rows["train"]})
    index = {n: i for i, n in enumerate(names)}
    texts, labels = {}, {}
    for split in SPLITS:
        ids = []
        for path, number, _, label in rows[split]:
            if label not in index:
                known = ", ".join(_brief(n, 40) for n in names[:10])
                raise DataError(f"{path}: row {number}: unknown label {_brief(label, 80)} "
                                f"(known: {known}{', ...' if len(names) > 10 else ''})")
            ids.append(index[label])
        texts[split] = np.array([r[2] for r in rows[split]], dtype=object)
        labels[split] = np.array(ids, dtype=np.int32)
    return TextSplits(names, texts, labels, f"{fmt} {cfg.train_path}")


def _load_public_tfds(cfg: DataConfig, artifacts_root: str) -> TextSplits:
    import tensorflow_datasets as tfds

    name = cfg.source[len("tfds:"):]
    builder = tfds.builder(name, data_dir=tfds_data_dir(cfg, artifacts_root))
    builder.download_and_prepare()
    label_feature = builder.info.features[cfg.label_column]
    names = list(label_feature.names)
    texts, labels = {}, {}
    for split, spec in (("train", cfg.train_split),
                        ("validation", cfg.validation_split),
                        ("test", cfg.test_split)):
        t, y = [], []
        for row in tfds.as_numpy(builder.as_dataset(split=spec)):
            value = row[cfg.text_column]
            t.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
            y.append(row[cfg.label_column])
        texts[split] = np.array(t, dtype=object)
        labels[split] = np.array(y, dtype=np.int32)
    return TextSplits(names, texts, labels, f"tfds:{name}")
