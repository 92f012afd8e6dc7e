"""Masked-LM pre-training: the corpus holds no held-out text, masking follows
BERT, and fine-tuning starts from the pre-trained encoder and its tokenizer."""

import os
from functools import partial

import numpy as np
import pytest

from tests.conftest import DEBUG_CONFIG

WORDNET_DIR = "/usr/share/wordnet"


def _test_noun_glosses():
    from pipeline.datasets.wordnet_topics import split_of
    from pipeline.tasks.masked_lm import parse_gloss_line

    glosses = set()
    with open(os.path.join(WORDNET_DIR, "data.noun"), encoding="utf-8") as f:
        for line in f:
            row = parse_gloss_line(line.rstrip("\n"))
            if row and split_of(row[0]) == "test":
                glosses.add(row[2])
    return glosses


def test_no_test_split_gloss_in_the_pretraining_corpus(debug_splits, debug_config):
    """Every gloss of a test noun synset (the task's md5 split of the synset
    offset, whatever max_examples_per_split keeps) is absent from the corpus,
    as a gloss and as a whole task text."""
    from pipeline.tasks.masked_lm import build_corpus

    corpus, stats = build_corpus(debug_config, debug_splits, log=lambda *_: None)
    test_glosses = _test_noun_glosses()
    assert len(test_glosses) > 7000  # the whole test split, not a debug slice
    corpus_glosses = {text.split(": ", 1)[1] for text in corpus.texts}
    assert not corpus_glosses & test_glosses
    test_texts = {str(t) for t in debug_splits.texts["test"]}
    assert not set(corpus.texts) & test_texts
    # The corpus is real: all four parts of speech, most of WordNet.
    assert stats["wordnet"]["data.verb"]["synsets"] > 13000
    assert stats["wordnet"]["data.noun"]["held_out"] > 15000   # validation + test
    assert len(corpus) > 90000
    assert any(text.startswith("breathe, take a breath, respire") for text in corpus.texts)


def test_a_repeated_held_out_gloss_is_dropped_from_other_files(tmp_path, debug_splits,
                                                               debug_config):
    """An external corpus line equal to a test gloss or test text is dropped."""
    import dataclasses

    from pipeline.tasks.masked_lm import build_corpus

    test_text = str(debug_splits.texts["test"][0])
    path = tmp_path / "extra.txt"
    path.write_text(f"an unrelated sentence\n{test_text}\n", encoding="utf-8")
    cfg = dataclasses.replace(debug_config, pretrain=dataclasses.replace(
        debug_config.pretrain, corpora=[str(path)]))
    corpus, stats = build_corpus(cfg, debug_splits, log=lambda *_: None)
    assert corpus.texts == ["an unrelated sentence"] and not corpus.streams
    assert stats["dropped_as_held_out"] == 1
    # The same file streamed (more lines than data.sample_examples): the
    # held-out line is dropped as the input pipeline reads it.
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sample_examples=1))
    corpus, stats = build_corpus(cfg, debug_splits, log=lambda *_: None)
    assert corpus.texts == [] and len(corpus.streams) == 1 and corpus.size == 2
    read = [e["text"].decode() for e in corpus.dataset().as_numpy_iterator()]
    assert read == ["an unrelated sentence"]


def test_adjective_markers_and_underscores_are_removed():
    from pipeline.tasks.masked_lm import parse_gloss_line

    line = ("00002312 00 a 02 abaxial(a) 0 dorsal_side 4 000 | facing away from "
            "the axis of an organ; \"the abaxial surface\"  ")
    assert parse_gloss_line(line) == ("00002312", ["abaxial", "dorsal side"],
                                      'facing away from the axis of an organ; '
                                      '"the abaxial surface"')
    assert parse_gloss_line("  1 This software and database is") is None


def test_masking_follows_bert(debug_config, tmp_path):
    """15% of real tokens selected, never padding; 80% of them become [MASK]."""
    import dataclasses

    import tensorflow as tf

    from pipeline.input import tokenize
    from pipeline.tasks.masked_lm import make_mlm_dataset
    from pipeline.tokenizer import (
        MASK_TOKEN,
        PAD_ID,
        InGraphTokenizer,
        read_model,
        token_id,
        train_sentencepiece,
    )

    texts = [f"word{i % 50} thing{i % 7} item{i % 13} and more words here"
             for i in range(400)]
    spm_path = train_sentencepiece(texts, debug_config.tokenizer.__class__(
        vocabulary_size=120), str(tmp_path), log=lambda *_: None,
        control_symbols=(MASK_TOKEN,))
    mask_id = token_id(spm_path, MASK_TOKEN)
    assert mask_id == 4
    cfg = dataclasses.replace(debug_config, pretrain=dataclasses.replace(
        debug_config.pretrain, max_predictions=8))
    tokenizer = InGraphTokenizer(read_model(spm_path), cfg.model.max_sequence_length)
    data = make_mlm_dataset(texts, partial(tokenize, tokenizer), cfg, 64, mask_id, 120)
    selected = masked = real = 0
    for inputs, targets in data.take(10):
        ids = inputs["token_ids"].numpy()
        pad = ~inputs["padding_mask"].numpy()
        positions = inputs["mask_positions"].numpy()
        weights = targets["mask_weights"].numpy()
        assert (ids[pad] == PAD_ID).all()
        rows = np.arange(len(ids))[:, None].repeat(positions.shape[1], 1)
        chosen = weights > 0
        assert not pad[rows[chosen], positions[chosen]].any()
        assert (targets["mask_ids"].numpy()[chosen] != mask_id).all()
        masked += int((ids[rows[chosen], positions[chosen]] == mask_id).sum())
        selected += int(chosen.sum())
        real += int((~pad).sum())
    assert 0.10 < selected / real < 0.20
    assert 0.70 < masked / selected < 0.90
    assert isinstance(inputs["token_ids"], tf.Tensor)


def classifier(cfg, vocab_size=50, num_classes=3):
    import tensorflow as tf

    from models import TextClassifier

    m = cfg.model
    model = TextClassifier(vocab_size, num_classes, hidden_dim=m.hidden_dim,
                           intermediate_dim=m.intermediate_dim, num_heads=m.num_heads,
                           num_layers=m.num_layers, max_sequence_length=m.max_sequence_length)
    model({"token_ids": tf.zeros((1, 8), tf.int32), "padding_mask": tf.ones((1, 8), bool)})
    return model


def test_layerwise_learning_rates(debug_config):
    """Factors follow the backbone's layer groups; multiplier 0 freezes the
    backbone while the head still learns."""
    import dataclasses

    import keras
    import tensorflow as tf

    from pipeline.trainer import LayerwiseAdamW, layerwise_multipliers

    cfg = dataclasses.replace(debug_config, model=dataclasses.replace(
        debug_config.model, num_layers=2))
    model = classifier(cfg)
    factors = layerwise_multipliers(model.backbone.layer_groups(), layer_decay=0.5)
    assert factors[model.backbone.final_layer_norm.trainable_variables[0].path] == 1.0
    assert all(factors[v.path] == 0.5
               for v in model.backbone.encoder_layers[1].trainable_variables)
    assert all(factors[v.path] == 0.25
               for v in model.backbone.encoder_layers[0].trainable_variables)
    assert factors[model.backbone.embedding.token_embedding.embeddings.path] == 0.125
    assert not any(v.path in factors for v in model.classifier_head.trainable_variables)
    assert len(factors) == len(model.backbone.trainable_variables)

    frozen = layerwise_multipliers(model.backbone.layer_groups(), multiplier=0.0)
    optimizer = LayerwiseAdamW(frozen, learning_rate=0.01, weight_decay=0.0)
    optimizer.build(model.trainable_variables)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    inputs = {"token_ids": tf.constant([[5, 6, 7, 0]]),
              "padding_mask": tf.constant([[True, True, True, False]])}
    with tf.GradientTape() as tape:
        loss = keras.ops.sum(model(inputs, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    for v in model.trainable_variables:
        changed = not np.allclose(before[v.path], v.numpy())
        assert changed == ("/logits/" in v.path), v.path


def tiny_pretraining(tmp_path, tfds_dir, steps: int, texts: int = 3000) -> list[str]:
    """Overrides of the debug config for a seconds-scale pre-training on a
    made-up text file."""
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("".join(f"a kind of thing number {i % 97} with parts {i % 11}\n"
                                  for i in range(texts)), encoding="utf-8")
    return [f"runtime.artifacts_root={tmp_path}", f"data.tfds_data_dir={tfds_dir}",
            "pretrain.enabled=true", f"pretrain.corpora=[{corpus}]",
            f"pretrain.steps={steps}", "pretrain.global_batch_size=16",
            "tokenizer.vocabulary_size=300"]


@pytest.mark.slow
def test_pretrain_then_finetune_starts_from_the_encoder(tmp_path, tfds_dir):
    """A tiny pre-training run on a text file, then fine-tuning: the classifier
    starts from the pre-trained encoder with its [MASK] tokenizer, TensorBoard
    has the masked-LM curves, and a second run reuses the cache."""
    import tensorflow as tf

    from pipeline.config import load_config
    from pipeline.tasks.masked_lm import SUMMARY_FILE, backbone_variables
    from pipeline.tokenizer import MASK_TOKEN, token_id
    from pipeline.workflow import prepare

    cfg = load_config(DEBUG_CONFIG, tiny_pretraining(tmp_path, tfds_dir, 30) +
                      ["pretrain.log_every_steps=10"]).validate()
    lines = []
    task = prepare(cfg, log=lines.append)
    tokenizer_path = task.tokenizer_path
    pretrained = os.path.dirname(os.path.dirname(cfg.model.init_checkpoint))
    assert os.path.isfile(os.path.join(pretrained, SUMMARY_FILE))
    assert token_id(tokenizer_path, MASK_TOKEN) == 4  # the pre-trained tokenizer
    events = tf.io.gfile.glob(os.path.join(cfg.run_dir, "tensorboard", "pretrain",
                                           "events.out.tfevents.*"))
    tags = {v.tag for path in events
            for event in tf.compat.v1.train.summary_iterator(path)
            for v in event.summary.value}
    assert {"loss", "masked_token_accuracy", "learning_rate"} <= tags

    model = task.build_model()
    task.initialize(model)
    assert any("initialised from pre-trained" in line for line in lines)
    reader = tf.train.load_checkpoint(cfg.model.init_checkpoint)
    by_path = backbone_variables(model.backbone).by_path
    assert len(by_path) == len(model.backbone.trainable_weights)  # no RNG state
    for key, variable in by_path.items():
        saved = reader.get_tensor(
            f"encoder/by_path/{key.replace('/', '.S')}/.ATTRIBUTES/VARIABLE_VALUE")
        np.testing.assert_array_equal(saved, variable.numpy())

    again = load_config(DEBUG_CONFIG, tiny_pretraining(tmp_path, tfds_dir, 30)).validate()
    printed = []
    prepare(again, log=printed.append)
    assert any("[pretrain] reusing" in line for line in printed)
    assert again.model.init_checkpoint == cfg.model.init_checkpoint


def test_init_checkpoint_of_another_shape_is_a_clear_error(tmp_path, debug_config):
    import dataclasses

    import tensorflow as tf

    from pipeline.tasks.masked_lm import backbone_variables, init_backbone

    small = classifier(debug_config)
    path = tf.train.Checkpoint(encoder=backbone_variables(small.backbone)).write(
        str(tmp_path / "encoder" / "encoder-1"))
    other = dataclasses.replace(debug_config, model=dataclasses.replace(
        debug_config.model, hidden_dim=64))
    with pytest.raises(ValueError, match="model.init_checkpoint"):
        init_backbone(classifier(other).backbone, path)
    with pytest.raises(FileNotFoundError, match="model.init_checkpoint"):
        init_backbone(small.backbone, str(tmp_path / "missing"))


@pytest.mark.slow
def test_sigterm_during_pretraining_saves_and_the_rerun_resumes(tmp_path, tfds_dir):
    """Pre-training runs on the shared trainer: SIGTERM saves a checkpoint and
    exits 143; the same command resumes at the next step and finishes."""
    import re
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"a kind of thing number {i % 97} with parts {i % 11}\n"
                              for i in range(3000)), encoding="utf-8")
    command = [sys.executable, "-m", "pipeline", "pretrain", DEBUG_CONFIG]
    for override in (f"runtime.artifacts_root={tmp_path}", f"data.tfds_data_dir={tfds_dir}",
                     "pretrain.enabled=true", f"pretrain.corpora=[{corpus}]",
                     "pretrain.steps=200", "pretrain.global_batch_size=16",
                     "pretrain.log_every_steps=1", "pretrain.checkpoint_every_steps=1000",
                     "tokenizer.vocabulary_size=300"):
        command += ["--set", override]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines, deadline = [], time.time() + 300
    try:
        for line in process.stdout:
            lines.append(line)
            if re.match(r"\[pretrain\] step 5/200", line):
                process.send_signal(signal.SIGTERM)
            assert time.time() < deadline, "".join(lines[-20:])
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    output = "".join(lines)
    assert code == 143, output[-3000:]
    saved = re.search(r"SIGTERM received: checkpoint (\S+) saved at step (\d+)", output)
    assert saved, output[-3000:]
    step = int(saved.group(2))
    assert 5 <= step < 200 and os.path.isfile(saved.group(1) + ".index")
    assert "encoder checkpoint" not in output   # no encoder from an unfinished run

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resumed from {saved.group(1)} at step {step}/200" in again.stdout
    assert re.search(rf"\[pretrain\] step {step + 1}/200", again.stdout), again.stdout[-2000:]
    assert "[pretrain] step 1/200" not in again.stdout
    assert "[pretrain] encoder checkpoint:" in again.stdout


def test_train_split_corpus_holds_no_validation_or_test_text(tmp_path):
    """`pretrain.corpora: [train_split]` pre-trains on a CSV task's own training
    texts; a validation or test text never enters, even when the train file
    repeats it."""
    from pipeline.config import ConfigError, load_config
    from pipeline.sources import load_splits
    from pipeline.tasks.masked_lm import build_corpus

    rows = [f"text number {i} about topic {i % 3}" for i in range(300)]
    train = tmp_path / "train.csv"
    held_out = tmp_path / "test.csv"
    train.write_text("text,label\n" + "".join(f"{t},t{i % 3}\n" for i, t in enumerate(rows))
                     + "the shared sentence,t0\n", encoding="utf-8")
    held_out.write_text("text,label\nthe shared sentence,t0\nonly in test,t1\n",
                        encoding="utf-8")
    base = [f"data.train_path={train}", "data.source=csv", f"data.test_path={held_out}",
            f"data.validation_path={held_out}", "pretrain.enabled=true",
            "pretrain.corpora=[train_split]"]
    cfg = load_config(None, base)
    splits = load_splits(cfg.data, str(tmp_path), log=lambda *_: None)
    corpus, stats = build_corpus(cfg, splits, log=lambda *_: None)
    assert "the shared sentence" in set(splits.texts["train"])
    assert not set(corpus.texts) & (set(splits.texts["test"]) | set(splits.texts["validation"]))
    assert set(corpus.texts) == set(rows) and stats["dropped_as_held_out"] == 1
    with pytest.raises(ConfigError, match="pretrain.exclude_splits"):
        load_config(None, base + ["pretrain.exclude_splits=[train,test]"])
    with pytest.raises(ConfigError, match="pretrain.corpora"):
        load_config(None, base + ["pretrain.corpora=[wordnet]"])


@pytest.mark.slow
def test_a_pretrained_run_shows_three_rows_training_the_from_scratch_twin(
        tmp_path, tfds_dir, capsys):
    """With pretrain.from_scratch_experiment named and not yet run, the run
    trains the same classifier from random weights (no export) and its
    metrics.json and summary hold the three rows; a second comparison reuses
    the twin's metrics.json instead of training again."""
    import json

    from pipeline import workflow
    from pipeline.config import load_config

    cfg = load_config(DEBUG_CONFIG, tiny_pretraining(tmp_path, tfds_dir, 20, 2000) + [
        "train.epochs=2", "train.layer_decay=0.8",
        "pretrain.from_scratch_experiment=scratch_twin"])
    metrics = workflow.run(cfg, do_export=False)
    rows = metrics["comparison"]
    assert set(rows) == {"pretrained_finetuned", "from_scratch", "baseline"}
    with open(tmp_path / "scratch_twin" / "metrics.json") as f:
        twin = json.load(f)
    assert twin["test"]["examples"] == metrics["test"]["examples"]
    assert rows["from_scratch"]["accuracy"] == twin["test"]["accuracy"]
    assert "pretraining" not in twin                      # random weights
    assert "export" not in os.listdir(tmp_path / "scratch_twin")
    with open(tmp_path / "scratch_twin" / "config.yaml") as f:
        twin_config = f.read()
    assert "layer_decay: 1.0" in twin_config and "init_checkpoint: ''" in twin_config
    with open(os.path.join(cfg.run_dir, "metrics.json")) as f:
        assert json.load(f)["comparison"] == rows
    printed = capsys.readouterr().out
    summary = printed[printed.rindex(f"== {cfg.name} done"):]
    assert "(pre-trained + fine-tuned," in summary
    assert "(Transformer from scratch: experiment scratch_twin)" in summary
    assert "(baseline: TF-IDF + linear SVM" in summary
    assert "  => the Transformer " in summary

    assert workflow.compare_with_from_scratch(cfg, metrics) == rows
    assert "training the same classifier from random weights" not in \
        capsys.readouterr().out
    # A twin run by hand (the multi-worker hint) under another strategy, with
    # pre-training settings left over, is still this run's twin.
    import yaml

    saved = tmp_path / "scratch_twin" / "config.yaml"
    by_hand = yaml.safe_load(saved.read_text(encoding="utf-8"))
    by_hand["runtime"]["strategy"] = "mirrored"
    by_hand["pretrain"].update(steps=999, enabled=False)
    saved.write_text(yaml.safe_dump(by_hand), encoding="utf-8")
    assert workflow.compare_with_from_scratch(cfg, metrics) == rows
    # Other fine-tuning settings: the cached twin is not theirs; it is left as
    # it is and not compared.
    cfg.train.epochs = 3
    other = workflow.compare_with_from_scratch(cfg, metrics)
    assert set(other) == {"pretrained_finetuned", "baseline"}
    assert "with other settings (train.epochs): not compared" in capsys.readouterr().out
    with open(tmp_path / "scratch_twin" / "metrics.json") as f:
        assert json.load(f) == twin


def test_the_packed_masked_lm_loss_equals_the_weighted_mean_over_all_slots(debug_config):
    """The pre-training loss scores only the real predictions; per example it
    is the weighted mean of the token losses over every slot, as BERT's."""
    import keras
    import tensorflow as tf

    from models import MaskedLanguageModel, TransformerEncoderBackbone
    from pipeline.tasks.masked_lm import MaskedLMTask

    backbone = TransformerEncoderBackbone(
        vocabulary_size=40, hidden_dim=16, intermediate_dim=32, num_heads=2,
        num_layers=1, max_sequence_length=12)
    model = MaskedLanguageModel(backbone)
    rng = np.random.default_rng(1)
    inputs = {"token_ids": tf.constant(rng.integers(5, 40, (4, 10)), tf.int32),
              "padding_mask": tf.ones((4, 10), tf.bool),
              "mask_positions": tf.constant(rng.integers(0, 10, (4, 3)), tf.int32)}
    weights = tf.constant([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]], tf.float32)
    ids = tf.constant(rng.integers(5, 40, (4, 3)), tf.int32)
    task = MaskedLMTask(debug_config, log=lambda *_: None)
    per_example, logs = task.compute_loss(model, inputs,
                                          {"mask_ids": ids, "mask_weights": weights},
                                          training=False)
    logits = model(inputs)
    token_loss = keras.losses.sparse_categorical_crossentropy(ids, logits, from_logits=True)
    expected = tf.reduce_sum(token_loss * weights, -1) / tf.maximum(
        tf.reduce_sum(weights, -1), 1.0)
    np.testing.assert_allclose(per_example.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert per_example.numpy()[2] == 0.0                  # no prediction, no loss
    hits = tf.cast(tf.argmax(logits, -1, output_type=tf.int32) == ids, tf.float32)
    np.testing.assert_allclose(logs["masked_token_accuracy"].numpy() / 4,
                               (tf.reduce_sum(hits * weights) / 6).numpy(), rtol=1e-6)
