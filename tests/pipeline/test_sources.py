"""Data sources: the wordnet_topics TFDS builder and CSV/JSONL files."""

import json
from collections import Counter

import pytest

from pipeline.config import DataConfig
from pipeline.datasets.wordnet_topics import (
    DEFAULT_PATH,
    NOUN_LEXNAMES,
    DataPackageMissing,
    parse_line,
    read_synsets,
    split_of,
)
from pipeline.sources import DataError, load_splits

QUIET = dict(log=lambda *_: None)


def test_parse_line_of_data_noun():
    line = ("02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 023 @ 02083346 n "
            "0000 | a member of the genus Canis; \"the dog barked all night\"  ")
    row = parse_line(line)
    assert row == {"id": "02084071", "lemmas": "dog, domestic dog, Canis familiaris",
                   "definition": 'a member of the genus Canis; "the dog barked all night"',
                   "label": "noun.animal"}
    assert parse_line("  1 This software and database is being provided") is None


def test_all_synsets_parse_into_26_classes_with_a_stable_80_10_10_split():
    rows = list(read_synsets(DEFAULT_PATH))
    assert len(rows) == 82115
    assert set(r["label"] for r in rows) == set(NOUN_LEXNAMES) and len(NOUN_LEXNAMES) == 26
    counts = Counter(split_of(r["id"]) for r in rows)
    assert 0.78 < counts["train"] / len(rows) < 0.82
    assert 0.09 < counts["validation"] / len(rows) < 0.11
    assert split_of("02084071") == split_of("02084071")


def test_missing_package_names_the_apt_command(tmp_path):
    cfg = DataConfig(wordnet_path=str(tmp_path / "data.noun"))
    with pytest.raises(DataPackageMissing, match="apt-get install -y .*wordnet-base"):
        load_splits(cfg, str(tmp_path), **QUIET)


def test_wordnet_topics_through_tfds(debug_splits):
    splits = debug_splits
    assert splits.label_names == NOUN_LEXNAMES
    for split in ("train", "validation", "test"):
        assert len(splits.texts[split]) == 1500
        assert all(": " in t for t in splits.texts[split][:20])  # "lemmas: definition"
    card = splits.data_card()
    assert card["splits"]["train"]["examples"] == 1500
    assert sum(card["splits"]["test"]["per_class"].values()) == 1500


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_csv_source_with_hash_split_and_given_labels(tmp_path):
    rows = "".join(f'"text number {i}, with a comma",{"ab"[i % 2]}\n' for i in range(200))
    path = write(tmp_path / "d.csv", "sentence,topic\n" + rows)
    cfg = DataConfig(source="csv", train_path=path, text_column="sentence",
                     label_column="topic", labels=["b", "a"])
    splits = load_splits(cfg, str(tmp_path), **QUIET)
    assert splits.label_names == ["b", "a"]
    assert sum(len(splits.texts[s]) for s in splits.texts) == 200
    assert 120 < len(splits.texts["train"]) < 185
    first = {t: y for s in splits.texts for t, y in zip(splits.texts[s], splits.labels[s])}
    assert first["text number 0, with a comma"] == 1  # "a" is class 1
    ds = splits.dataset("train")
    example = next(iter(ds))
    assert example["text"].dtype.name == "string" and example["label"].dtype.name == "int32"


def test_csv_missing_column_names_file_and_row(tmp_path):
    path = write(tmp_path / "d.csv", "text,category\nhello,a\n")
    with pytest.raises(DataError, match=r"d\.csv: row 1 \(header\): missing column 'label'"):
        load_splits(DataConfig(source="csv", train_path=path), str(tmp_path), **QUIET)
    path = write(tmp_path / "e.csv", "text,label\nhello,a\nshort row\n")
    with pytest.raises(DataError, match=r"e\.csv: row 3: missing value"):
        load_splits(DataConfig(source="csv", train_path=path), str(tmp_path), **QUIET)


def test_unknown_label_names_file_and_row(tmp_path):
    train = write(tmp_path / "train.jsonl", "".join(
        json.dumps({"text": f"t{i}", "label": "x" if i % 2 else "y"}) + "\n" for i in range(30)))
    test = write(tmp_path / "test.jsonl", '{"text": "a", "label": "x"}\n'
                 '{"text": "b", "label": "zzz"}\n')
    cfg = DataConfig(source="jsonl", train_path=train, validation_path=train, test_path=test)
    with pytest.raises(DataError, match=r"test\.jsonl: row 2: unknown label 'zzz'"):
        load_splits(cfg, str(tmp_path), **QUIET)


@pytest.mark.parametrize("line, message", [
    ('{"text": "a"', r"row 1: not valid JSON"),
    ('["a", "x"]', r"row 1: expected a JSON object"),
    ('{"text": 3, "label": "x"}', r"row 1: column 'text' must be a string"),
    ('{"label": "x"}', r"row 1: missing column 'text'"),
])
def test_malformed_jsonl_rows(tmp_path, line, message):
    path = write(tmp_path / "d.jsonl", line + "\n")
    with pytest.raises(DataError, match=message):
        load_splits(DataConfig(source="jsonl", train_path=path), str(tmp_path), **QUIET)


def test_public_tfds_name_uses_the_real_builder_and_fails_clearly_offline(tmp_path):
    """tfds:<name> goes through tfds.builder; an unknown name is named in the error."""
    cfg = DataConfig(source="tfds:no_such_dataset_xyz")
    with pytest.raises(Exception, match="no_such_dataset_xyz"):
        load_splits(cfg, str(tmp_path), **QUIET)


def test_empty_split_is_an_error(tmp_path):
    path = write(tmp_path / "d.csv", "text,label\n")
    with pytest.raises(DataError, match="split 'train' has no examples"):
        load_splits(DataConfig(source="csv", train_path=path), str(tmp_path), **QUIET)
