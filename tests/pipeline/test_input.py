"""Tokenizer and tf.data input: ids identical across runtimes, eager == map."""

import os
from functools import partial

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf

from pipeline.input import (
    batch_examples,
    bucket_boundaries,
    make_eval_dataset,
    make_train_dataset,
    tokenize,
    tokenize_examples,
)
from pipeline.tokenizer import PAD_ID, InGraphTokenizer, read_model
from tests.conftest import HOSTILE_TEXTS


@pytest.fixture(scope="module")
def tokenizer_path(debug_run):
    cfg, _ = debug_run
    return os.path.join(cfg.run_dir, "tokenizer", "spm.model")


def library_ids(path, texts, length):
    processor = spm.SentencePieceProcessor(model_file=path)
    out = np.full((len(texts), length), PAD_ID, np.int32)
    for i, ids in enumerate(processor.encode(list(texts), out_type=int)):
        out[i, :len(ids[:length])] = ids[:length]
    return out


def test_ids_identical_in_tf_data_saved_model_and_sentencepiece(
        debug_run, debug_splits, tokenizer_path, saved_model_dir):
    """On the whole test split of the full data set (8,238 texts)."""
    from pipeline.sources import load_splits

    cfg, _ = debug_run
    full = load_splits(type(cfg.data)(**{**cfg.data.__dict__, "max_examples_per_split": 0}),
                       cfg.runtime.artifacts_root, log=lambda *_: None)
    texts = list(full.texts["test"]) + HOSTILE_TEXTS
    length = cfg.model.max_sequence_length
    tokenizer = InGraphTokenizer(read_model(tokenizer_path), length)
    source = tf.data.Dataset.from_tensor_slices({"text": texts, "label": [0] * len(texts)})
    from_tf_data = np.concatenate([b[0]["token_ids"].numpy() for b in make_eval_dataset(
        source, partial(tokenize, tokenizer), cfg, 512)])
    loaded = tf.saved_model.load(saved_model_dir)
    from_saved_model = np.concatenate([
        loaded.signatures["tokenize"](text=tf.constant(texts[i:i + 512]))["token_ids"].numpy()
        for i in range(0, len(texts), 512)])
    from_library = library_ids(tokenizer_path, texts, length)
    assert len(texts) == 8238 + len(HOSTILE_TEXTS)
    np.testing.assert_array_equal(from_tf_data, from_library)
    np.testing.assert_array_equal(from_saved_model, from_library)
    assert (from_library[:len(full.texts["test"])] != PAD_ID).any(axis=1).all()


def test_tokenize_eagerly_and_in_dataset_map_agree(tokenizer_path):
    tokenizer = InGraphTokenizer(read_model(tokenizer_path), 16)
    eager = tokenizer(tf.constant(HOSTILE_TEXTS)).numpy()
    mapped = next(iter(tf.data.Dataset.from_tensor_slices(HOSTILE_TEXTS).batch(8)
                       .map(tokenizer))).numpy()
    np.testing.assert_array_equal(eager, mapped)
    assert eager.shape == (len(HOSTILE_TEXTS), 16) and eager.dtype == np.int32
    assert (eager[0] == PAD_ID).all() and (eager[1] == PAD_ID).all()  # empty, whitespace
    assert (eager[2] != PAD_ID).all()  # 100 kB text truncated to the maximum length


def test_bucketing_pads_to_boundaries_and_keeps_every_example(tokenizer_path, debug_config):
    tokenizer = InGraphTokenizer(read_model(tokenizer_path), 32)
    texts = [" ".join(["cat"] * n) for n in range(0, 40)]
    source = tf.data.Dataset.from_tensor_slices({"text": texts, "label": list(range(40))})
    examples = tokenize_examples(source, partial(tokenize, tokenizer))
    batches = list(batch_examples(examples, 4, 32, bucket=True, drop_remainder=False))
    assert bucket_boundaries(32) == [8, 16, 24, 32]
    assert bucket_boundaries(128) == [8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 120, 128]
    seen = []
    for inputs, labels in batches:
        assert inputs["token_ids"].shape[1] in (8, 16, 24, 32)
        np.testing.assert_array_equal(inputs["padding_mask"], inputs["token_ids"] != PAD_ID)
        seen += labels.numpy().tolist()
    assert sorted(seen) == list(range(40))


def test_train_stream_is_deterministic_and_skip_resumes_it(
        tokenizer_path, debug_config, debug_splits):
    tokenizer = partial(tokenize, InGraphTokenizer(read_model(tokenizer_path), 32))
    source = debug_splits.dataset("train")
    first = [b[1].numpy() for b in make_train_dataset(source, tokenizer, debug_config, 8)
             .take(6)]
    again = [b[1].numpy() for b in make_train_dataset(source, tokenizer, debug_config, 8)
             .take(6)]
    resumed = [b[1].numpy() for b in make_train_dataset(
        source, tokenizer, debug_config, 8, skip_batches=4).take(2)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(resumed[0], first[4])
    np.testing.assert_array_equal(resumed[1], first[5])


def test_task_preprocess_is_the_same_eagerly_and_in_dataset_map(debug_config):
    """The task's preprocessing is a pure dict -> dict function."""
    from pipeline.workflow import prepare

    task = prepare(debug_config, log=lambda *_: None)
    examples = {"text": tf.constant(HOSTILE_TEXTS), "label": tf.range(len(HOSTILE_TEXTS))}
    eager = task.preprocess(examples)
    mapped = next(iter(tf.data.Dataset.from_tensor_slices(examples)
                       .batch(len(HOSTILE_TEXTS)).map(task.preprocess)))
    assert set(eager) == {"token_ids", "length", "label"}
    for key in eager:
        np.testing.assert_array_equal(eager[key].numpy(), mapped[key].numpy())
    lengths = eager["length"].numpy()
    assert lengths[0] == 0 and lengths[1] == 0   # empty, whitespace
    assert lengths[2] == debug_config.model.max_sequence_length   # 100 kB, cut
