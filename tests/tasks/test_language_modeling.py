"""The language-modeling task on the shared pipeline: packed rows whose
documents do not see each other, padding out of the loss, perplexity beside
unigram/bigram baselines on the same tokens, seeded samples, and a real
(tiny) training run."""

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ConfigError, load_config
from pipeline.tasks import make_task
from pipeline.tasks.language_modeling import ngram_baselines
from pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID
from tests.conftest import ROOT

DEBUG_CONFIG = os.path.join(ROOT, "configs", "language_model_debug.yaml")


@pytest.fixture(scope="module")
def debug_cfg(tmp_path_factory, tfds_dir):
    root = str(tmp_path_factory.mktemp("lm_artifacts"))
    return load_config(DEBUG_CONFIG, [f"runtime.artifacts_root={root}",
                                      f"data.tfds_data_dir={tfds_dir}"])


@pytest.fixture(scope="module")
def task(debug_cfg):
    task = make_task(debug_cfg, log=lambda *_: None)
    task.prepare()
    return task


def test_texts_get_bos_and_eos_and_fit_one_sequence(task):
    length = task.cfg.model.max_sequence_length
    for ids in task.token_ids("validation"):
        assert ids[0] == BOS_ID and ids[-1] == EOS_ID
        assert 3 <= len(ids) <= length + 1 and PAD_ID not in ids


def test_packed_rows_hold_every_train_token_in_order(task):
    """The first rows of the stream, concatenated, are whole texts of the
    train split (bos ... eos), each a run of one segment id."""
    length = task.cfg.model.max_sequence_length
    train = {tuple(ids.tolist()) for ids in task.token_ids("train")}
    ids, segments = [], []
    for inputs, targets in task.train_dataset(4).take(6):
        assert inputs["token_ids"].shape == (4, length)
        np.testing.assert_array_equal(inputs["token_ids"][:, 1:], targets["ids"][:, :-1])
        for row_ids, row_segments, row_targets, weights in zip(
                inputs["token_ids"].numpy(), inputs["segment_ids"].numpy(),
                targets["ids"].numpy(), targets["weights"].numpy()):
            ids += list(row_ids) + [row_targets[-1]]
            segments += list(row_segments) + [-1]
            # A target is weighted iff it continues the input's text.
            starts = row_targets == BOS_ID
            assert (weights[starts] == 0).all()
    # Rows overlap by nothing: row r + 1 starts after row r's last target.
    texts, current = [], []
    for token in ids:
        current.append(int(token))
        if token == EOS_ID:
            texts.append(tuple(current))
            current = []
    whole = [t for t in texts[1:] if t[0] == BOS_ID]
    assert len(whole) >= 5
    assert all(t in train for t in whole)


def test_evaluation_scores_every_test_token_once(task):
    """Bucketed evaluation batches hold every text once: their weighted
    targets are the test split's ids after bos, eos included."""
    expected = sorted(tuple(ids[1:].tolist()) for ids in task.token_ids("test"))
    seen = []
    for inputs, targets in task.eval_dataset("test", 8):
        np.testing.assert_array_equal(inputs["token_ids"][:, 1:], targets["ids"][:, :-1])
        for row, weights in zip(targets["ids"].numpy(), targets["weights"].numpy()):
            seen.append(tuple(row[weights > 0].tolist()))
    assert sorted(seen) == expected


def test_padding_and_text_boundaries_do_not_count_in_the_loss(task):
    vocab = 50
    targets = {"ids": tf.constant([[5, 6, EOS_ID, 0], [7, EOS_ID, BOS_ID, 9]]),
               "weights": tf.constant([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0]])}
    logits = tf.random.stateless_normal((2, 4, vocab), seed=(1, 2))
    noise = tf.where(targets["weights"][..., None] > 0, 0.0, 100.0 * tf.ones_like(logits))
    loss_a, logs_a = task.compute_loss(lambda x, training: logits, {}, targets)
    loss_b, logs_b = task.compute_loss(lambda x, training: logits + noise, {}, targets)
    np.testing.assert_allclose(loss_a.numpy(), loss_b.numpy(), rtol=1e-6)
    assert float(logs_a["token_accuracy"]) == float(logs_b["token_accuracy"])
    # The mean over examples is the mean over the 6 weighted tokens.
    expected = -np.mean([tf.nn.log_softmax(logits[r, c]).numpy()[targets["ids"][r, c]]
                         for r, c in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 3)]])
    assert float(tf.reduce_mean(loss_a)) == pytest.approx(expected, rel=1e-5)


def test_ngram_baselines_on_a_known_corpus():
    train = [np.array([BOS_ID, 5, 6, EOS_ID]), np.array([BOS_ID, 5, 6, EOS_ID])]
    test = [np.array([BOS_ID, 5, 6, EOS_ID])]
    b = ngram_baselines(train, test, vocabulary_size=8)
    assert b["unigram"]["tokens"] == 3
    # unigram counts (add-one): 5 -> 3, 6 -> 3, eos -> 3 of 8 + 6 = 14
    assert b["unigram"]["perplexity"] == pytest.approx(14 / 3)
    # bigram: (bos,5) 2+1 / 2+8 each step alike -> 3/10
    assert b["bigram_add_one"]["perplexity"] == pytest.approx(10 / 3)


def test_other_data_sources_and_bad_generation_keys_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"data\.source"):
        load_config(DEBUG_CONFIG, ["data.source=wordnet_topics"])
    with pytest.raises(ConfigError, match=r"generate\.strategy"):
        load_config(DEBUG_CONFIG, ["generate.strategy=beam"])
    with pytest.raises(ConfigError, match=r"generate\.temperature"):
        load_config(DEBUG_CONFIG, ["generate.temperature=0"])


@pytest.mark.slow
def test_a_tiny_language_model_trains_and_reports_perplexity_beside_both_baselines(
        lm_run, task):
    cfg, metrics = lm_run
    saved = json.load(open(os.path.join(cfg.run_dir, "metrics.json")))
    assert saved["task"] == "language_modeling"
    test = saved["test"]
    assert set(saved["baselines"]) == {"unigram", "bigram_add_one"}
    tokens = sum(len(ids) - 1 for ids in task.token_ids("test"))
    assert saved["baselines"]["unigram"]["tokens"] == tokens
    assert 1.0 < test["perplexity"] < task.cfg.tokenizer.vocabulary_size
    assert test["loss"] == pytest.approx(math.log(test["perplexity"]), rel=1e-6)
    assert [s["prompt"] for s in test["samples"]] == ["", "The secret of"]
    assert test["samples"][1]["text"].startswith("The secret of")
    history = saved["training"]["history"]
    assert len(history) == 2 and all("validation_perplexity" in row for row in history)
    assert saved["training"]["best_validation"]["metric"] == "perplexity"
    assert history[-1]["validation_loss"] < history[0]["validation_loss"]
    assert metrics["test"]["perplexity"] == test["perplexity"]


def _own_corpus(task, tmp_path, n=300):
    """The first n train fortunes on one line each, as .txt, .csv and .jsonl files."""
    import csv

    texts = [" ".join(t.split()) for t in task.texts["train"][:n]]
    (tmp_path / "corpus.txt").write_text("".join(t + "\n\n" for t in texts), encoding="utf-8")
    with open(tmp_path / "corpus.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "body"])
        writer.writerows((i, t) for i, t in enumerate(texts))
    (tmp_path / "corpus.jsonl").write_text(
        "".join(json.dumps({"body": t}) + "\n" for t in texts), encoding="utf-8")
    return texts


def test_a_corpus_of_your_own_in_each_format_gives_the_same_splits(task, tmp_path):
    from pipeline.config import DataConfig
    from pipeline.files import hash_split
    from pipeline.sources import DataError, load_texts

    texts = _own_corpus(task, tmp_path)
    splits = {}
    for fmt in ("text", "csv", "jsonl"):
        path = tmp_path / f"corpus.{'txt' if fmt == 'text' else fmt}"
        cfg = DataConfig(source=fmt, train_path=str(path), text_column="body")
        splits[fmt] = load_texts(cfg)
    assert splits["text"] == splits["csv"] == splits["jsonl"]
    assert sorted(t for s in splits["text"].values() for t in s) == sorted(texts)
    for split, rows in splits["text"].items():
        assert all(hash_split(t) == split for t in rows)
    with pytest.raises(DataError, match=r"missing column 'text'"):
        load_texts(DataConfig(source="csv", train_path=str(tmp_path / "corpus.csv")))
    (tmp_path / "bad.jsonl").write_text('{"body": "a"}\n{"body": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl: row 2: column 'body' must be a string"):
        load_texts(DataConfig(source="jsonl", train_path=str(tmp_path / "bad.jsonl"),
                              text_column="body"))
    with pytest.raises(DataError, match=r"data\.train_path"):
        load_texts(DataConfig(source="text"))


def test_a_corpus_larger_than_the_sample_streams_from_its_files(task, tmp_path):
    """The same corpus held in memory and streamed (data.sample_examples=20):
    the same texts in each split, the same count of packed rows, the training
    stream from the files, and evaluation over every text of the test split."""
    from pipeline.sources import load_texts

    _own_corpus(task, tmp_path)
    base = [f"runtime.artifacts_root={tmp_path / 'artifacts'}", "data.source=text",
            f"data.train_path={tmp_path / 'corpus.txt'}", "tokenizer.vocabulary_size=300"]
    held = make_task(load_config(DEBUG_CONFIG, base), log=lambda *_: None)
    held.prepare()
    streamed = make_task(load_config(DEBUG_CONFIG, base + ["data.sample_examples=20"]),
                         log=lambda *_: None)
    streamed.prepare()
    whole = load_texts(streamed.cfg.data)
    assert held.texts == whole and held.corpus.complete("train")
    assert streamed.corpus is not None and not streamed.corpus.complete("train")
    assert len(streamed.texts["train"]) == 20
    for split in ("train", "validation", "test"):
        read = [e["text"].decode() for e in streamed._source(split).as_numpy_iterator()]
        assert read == whole[split]
        assert streamed.num_examples(split if split != "train" else "validation") == \
            held.num_examples(split if split != "train" else "validation")
    streamed.tokenizer_path = held.tokenizer_path   # the same ids on both sides
    streamed._tokenizer = None
    assert streamed.num_examples("train") == held.num_examples("train")
    for a, b in zip(held.train_dataset(4).take(5), streamed.train_dataset(4).take(5)):
        np.testing.assert_array_equal(a[0]["token_ids"], b[0]["token_ids"])
    targets = sum(int(t["weights"].numpy().sum()) for _, t in streamed.eval_dataset("test", 8))
    assert targets == sum(len(ids) - 1 for ids in held.token_ids("test"))


@pytest.mark.slow
def test_a_language_model_trains_on_a_plain_text_corpus(task, tmp_path, tfds_dir):
    from pipeline.files import hash_split
    from pipeline.workflow import run

    texts = _own_corpus(task, tmp_path, n=400)
    cfg = load_config(DEBUG_CONFIG, [f"runtime.artifacts_root={tmp_path / 'artifacts'}",
                                     "data.source=text",
                                     f"data.train_path={tmp_path / 'corpus.txt'}",
                                     "tokenizer.vocabulary_size=300", "train.epochs=1"])
    metrics = run(cfg, do_export=False)
    assert metrics["test"]["texts"] == len([t for t in texts if hash_split(t) == "test"])
    assert 1.0 < metrics["test"]["perplexity"] < 300
    card = json.load(open(os.path.join(cfg.run_dir, "data_card.json")))
    assert card["name"] == "text corpus" and card["categories"] == {
        "corpus": {s: card["splits"][s]["entries"] for s in ("train", "validation", "test")}}
