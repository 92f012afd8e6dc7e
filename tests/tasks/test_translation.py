"""The translation task on the shared pipeline: targets shifted with bos/eos,
both sides bucketed together, padding out of the loss, BLEU/chrF beside the
copy and word-by-word baselines, and a real (tiny) training run."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ConfigError, load_config
from pipeline.tasks import make_task
from pipeline.tasks.translation import corpus_scores, single_word_lexicon, word_by_word
from pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID
from tests.conftest import ROOT

DEBUG_CONFIG = os.path.join(ROOT, "configs", "translation_debug.yaml")


@pytest.fixture(scope="module")
def debug_cfg(tmp_path_factory, tfds_dir):
    root = str(tmp_path_factory.mktemp("translation_artifacts"))
    return load_config(DEBUG_CONFIG, [f"runtime.artifacts_root={root}",
                                      f"data.tfds_data_dir={tfds_dir}"])


@pytest.fixture(scope="module")
def task(debug_cfg):
    task = make_task(debug_cfg, log=lambda *_: None)
    task.prepare()
    return task


def test_targets_are_shifted_with_bos_and_eos(task):
    examples = task.sample("train", 16)
    out = task.preprocess({"de": tf.constant([e["de"] for e in examples]),
                           "en": tf.constant([e["en"] for e in examples])})
    source_ragged = task.tokenizer.ragged(tf.constant([e["de"] for e in examples]))
    np.testing.assert_array_equal(out["source_ids"].numpy(),
                                  source_ragged.to_tensor(default_value=PAD_ID).numpy())
    for row_in, row_out, n in zip(out["target_in"].numpy(), out["target_out"].numpy(),
                                  out["target_length"].numpy()):
        assert 2 <= n <= task.cfg.model.max_sequence_length
        assert row_in[0] == BOS_ID and row_out[n - 1] == EOS_ID
        np.testing.assert_array_equal(row_in[1:n], row_out[: n - 1])
        assert (row_in[n:] == PAD_ID).all() and (row_out[n:] == PAD_ID).all()


def test_batches_pad_source_and_target_to_one_bucket(task):
    length = task.cfg.model.max_sequence_length
    for inputs, targets in task.train_dataset(8).take(20):
        s, t = inputs["source_ids"].shape[1], inputs["target_ids"].shape[1]
        assert s == t == targets.shape[1] and s in (8, 16, length)
        np.testing.assert_array_equal(inputs["target_padding_mask"].numpy(),
                                      targets.numpy() != PAD_ID)
        np.testing.assert_array_equal(inputs["source_padding_mask"].numpy(),
                                      inputs["source_ids"].numpy() != PAD_ID)
    inputs, _ = next(iter(task.eval_dataset("validation", 8)))
    assert inputs["source_ids"].shape == (8, length)


def test_padded_positions_do_not_count_in_the_loss(task):
    vocab = 50
    targets = tf.constant([[5, 6, EOS_ID, 0], [7, EOS_ID, 0, 0]])
    mask = tf.not_equal(targets, 0)
    logits = tf.random.stateless_normal((2, 4, vocab), seed=(1, 2))
    noise = tf.where(mask[..., None], 0.0, 100.0 * tf.ones_like(logits))
    inputs = {"target_padding_mask": mask}
    loss_a, logs_a = task.compute_loss(lambda x, training: logits, inputs, targets)
    loss_b, logs_b = task.compute_loss(lambda x, training: logits + noise, inputs, targets)
    np.testing.assert_allclose(loss_a.numpy(), loss_b.numpy(), rtol=1e-6)
    assert float(logs_a["token_accuracy"]) == float(logs_b["token_accuracy"])


def test_baselines_and_scores():
    assert corpus_scores(["the cat sat on the mat"], ["the cat sat on the mat"])["bleu"] \
        == pytest.approx(100.0)
    assert corpus_scores(["a b c d"], ["w x y z"])["bleu"] < 1.0
    assert word_by_word("Der Hund schläft.", {"der": "the", "hund": "dog"}) == \
        "the dog schläft ."
    lexicon = single_word_lexicon("/usr/share/trans/de-en")
    assert len(lexicon) > 50_000
    assert lexicon["hund"] == "dog" and lexicon["katze"] == "cat"


def test_other_data_sources_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"data\.source"):
        load_config(DEBUG_CONFIG, ["data.source=wordnet_topics"])


@pytest.mark.slow
def test_a_tiny_translator_trains_and_reports_bleu_beside_both_baselines(debug_cfg):
    from pipeline.workflow import run

    metrics = run(debug_cfg, do_export=False)
    saved = json.load(open(os.path.join(debug_cfg.run_dir, "metrics.json")))
    assert saved["task"] == "translation"
    test = saved["test"]
    assert 0.0 <= test["bleu"] <= 100.0 and test["chrf"] > 0.0
    assert test["examples"] == 600 and len(test["samples"]) == 10
    assert set(saved["baselines"]) == {"copy_source", "word_by_word"}
    history = saved["training"]["history"]
    assert len(history) == 2 and all("validation_bleu" in row for row in history)
    assert saved["training"]["best_validation"]["metric"] == "bleu"
    # Training lowers the loss (teacher forcing) from the first epoch to the last.
    assert history[-1]["validation_loss"] < history[0]["validation_loss"]
    assert metrics["test"]["bleu"] == test["bleu"]
