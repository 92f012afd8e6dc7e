"""Masked-language-model pre-training of the task encoder (BERT-style).

The corpus is unlabeled text that installs here: every gloss and usage
example of WordNet's nouns, verbs, adjectives and adverbs (`wordnet-base`),
plus any text/CSV/JSONL file that `pretrain.corpora` names. No held-out text
of the task enters it:

- the noun synsets of `pretrain.exclude_splits` (validation and test by
  default, by the task's own md5 split of the synset offset) are skipped, and
- any corpus text whose gloss, or whose whole text, equals a gloss or text of
  those splits is dropped too (a verb or an external file can repeat one).

`tests/pipeline/test_pretrain.py` checks that no test gloss is in the corpus.

Masking is `keras_hub.layers.MaskedLMMaskGenerator` in tf.data (15% of the
tokens selected; of those 80% become [MASK], 10% a random token, 10% stay),
the model is `models.MaskedLanguageModel` (the classifier's own encoder with a
head tied to its token embedding), and the step is `pipeline.train`'s. The
result is cached in <artifacts_root>/pretrained/mlm-<fingerprint>/:

  tokenizer/spm.model     SentencePiece with [MASK], used by fine-tuning too
  checkpoints/            full training state (a rerun resumes)
  encoder/encoder-<step>  the encoder weights fine-tuning starts from
  tensorboard/pretrain/   loss, masked-token accuracy, learning rate
  pretrain.json           written last: corpus, steps, loss, accuracy, time

A run whose fingerprint (corpus, tokenizer, model and pre-training settings)
matches a finished directory reuses it without training.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time

from pipeline.config import ExperimentConfig
from pipeline.datasets.wordnet_topics import read_parsed, split_of
from pipeline.progress import format_duration
from pipeline.sources import DataError, TextSplits

WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
SUMMARY_FILE = "pretrain.json"
_ADJ_MARKER = re.compile(r"\((a|p|ip)\)$")


def parse_gloss_line(line: str) -> tuple[str, list[str], str] | None:
    """(offset, lemmas, gloss) of one WordNet data.* line; None for the header."""
    if not line or line.startswith("  ") or " | " not in line:
        return None
    data, _, gloss = line.partition(" | ")
    fields = data.split()
    word_count = int(fields[3], 16)
    words = [_ADJ_MARKER.sub("", w).replace("_", " ")
             for w in fields[4:4 + 2 * word_count:2]]
    return fields[0], words, gloss.strip()


def _format(lemmas: list[str], gloss: str, include_lemmas: bool) -> str:
    """The task's text format (pipeline/sources.py): "lemmas: definition"."""
    return f"{', '.join(lemmas)}: {gloss}" if include_lemmas else gloss


def wordnet_corpus(wordnet_dir: str, exclude_splits, include_lemmas: bool = True
                   ) -> tuple[list[str], set[str], dict]:
    """Texts of every WordNet synset but the noun synsets of `exclude_splits`.

    Returns (texts, held-out glosses, counts per file).
    """
    held_out, kept, counts = set(), [], {}
    for name in WORDNET_FILES:
        rows = list(read_parsed(os.path.join(wordnet_dir, name), parse_gloss_line,
                                error=DataError))
        excluded = 0
        for offset, lemmas, gloss in rows:
            if name == "data.noun" and split_of(offset) in exclude_splits:
                held_out.add(gloss)
                excluded += 1
            else:
                kept.append((lemmas, gloss))
        counts[name] = {"synsets": len(rows), "held_out": excluded}
    texts = [_format(lemmas, gloss, include_lemmas) for lemmas, gloss in kept
             if gloss not in held_out]
    counts["same_gloss_as_held_out"] = len(kept) - len(texts)
    return texts, held_out, counts


def file_corpus(path: str, text_column: str) -> list[str]:
    """Texts of a .txt (one per line), .csv or .jsonl (column `text_column`) file."""
    from pipeline.sources import _read_rows

    if not os.path.isfile(path):
        raise DataError(f"config key 'pretrain.corpora': file not found: {path}")
    if path.endswith((".csv", ".jsonl")):
        fmt = "csv" if path.endswith(".csv") else "jsonl"
        return [text for _, text, _ in _read_rows(path, fmt, text_column, text_column)]
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.strip() for line in f if line.strip()]


def build_corpus(cfg: ExperimentConfig, splits: TextSplits, log=print
                 ) -> tuple[list[str], dict]:
    """The de-duplicated pre-training texts and what was excluded."""
    p = cfg.pretrain
    held_out_texts = {str(t) for s in p.exclude_splits for t in splits.texts[s]}
    texts, stats, held_out_glosses = [], {}, set()
    for source in p.corpora:
        if source == "wordnet":
            found, held_out_glosses, counts = wordnet_corpus(
                p.wordnet_dir, p.exclude_splits, cfg.data.include_lemmas)
            stats["wordnet"] = counts
        else:
            found = file_corpus(source, cfg.data.text_column)
            stats[source] = {"texts": len(found)}
        texts.extend(found)
    seen, corpus, dropped = set(), [], 0
    for text in texts:
        if text in seen:
            continue
        seen.add(text)
        gloss = text.split(": ", 1)[-1]
        if text in held_out_texts or gloss in held_out_glosses or \
                (held_out_texts and gloss in held_out_texts):
            dropped += 1
            continue
        corpus.append(text)
    stats.update({"texts": len(corpus), "dropped_as_held_out": dropped,
                  "excluded_splits": list(p.exclude_splits),
                  "characters": sum(len(t) for t in corpus)})
    log(f"[pretrain] corpus: {len(corpus):,} texts ({stats['characters'] / 1e6:.1f}M "
        f"characters) from {', '.join(p.corpora)}; the task's "
        f"{'/'.join(p.exclude_splits)} texts excluded")
    return corpus, stats


def fingerprint(cfg: ExperimentConfig, corpus: list[str]) -> str:
    """What the pre-trained encoder depends on: corpus and settings."""
    digest = hashlib.sha256()
    for text in corpus:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\n")
    model = {k: v for k, v in cfg.to_dict()["model"].items() if k != "init_checkpoint"}
    pretrain = {k: v for k, v in cfg.to_dict()["pretrain"].items()
                if k not in ("from_scratch_experiment", "checkpoint_every_steps",
                             "log_every_steps")}
    settings = {"corpus": digest.hexdigest(), "model": model, "pretrain": pretrain,
                "tokenizer": cfg.to_dict()["tokenizer"],
                "precision": cfg.runtime.precision}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def pretrained_dir(cfg: ExperimentConfig, fp: str) -> str:
    """Named by the fingerprint only: experiments that differ in fine-tuning
    alone share one pre-trained encoder."""
    return os.path.join(cfg.runtime.artifacts_root, "pretrained", f"mlm-{fp}")


def tokenizer_of(init_checkpoint: str) -> str:
    """The tokenizer that belongs to an encoder checkpoint (file or directory)."""
    encoder_dir = init_checkpoint if os.path.isdir(init_checkpoint) else \
        os.path.dirname(init_checkpoint)
    path = os.path.join(os.path.dirname(os.path.abspath(encoder_dir)), "tokenizer",
                        "spm.model")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"config key 'model.init_checkpoint' = {init_checkpoint!r}: no tokenizer at "
            f"{path}; an encoder checkpoint is <dir>/encoder/encoder-N with "
            "<dir>/tokenizer/spm.model beside it (written by pre-training)")
    return path


def make_mlm_dataset(texts: list[str], tokenizer, cfg: ExperimentConfig,
                     batch_size: int, mask_token_id: int, vocab_size: int,
                     skip_batches: int = 0, input_context=None):
    """Endless batches of ({token_ids, padding_mask, mask_positions},
    {mask_ids, mask_weights}) with BERT's 80/10/10 masking."""
    import keras_hub
    import numpy as np
    import tensorflow as tf

    from pipeline.input import AUTOTUNE, batch_examples, tokenize_examples
    from pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

    p = cfg.pretrain
    dataset = tf.data.Dataset.from_tensor_slices(
        {"text": np.array(texts, dtype=object),
         "label": np.zeros(len(texts), np.int32)})
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)
    dataset = tokenize_examples(dataset, tokenizer).cache()
    dataset = dataset.shuffle(min(len(texts), 200_000), seed=p.seed,
                              reshuffle_each_iteration=True).repeat()
    dataset = batch_examples(dataset, batch_size, cfg.model.max_sequence_length,
                             bucket=True, drop_remainder=True)
    masker = keras_hub.layers.MaskedLMMaskGenerator(
        vocabulary_size=vocab_size, mask_selection_rate=p.mask_rate,
        mask_token_id=mask_token_id, mask_selection_length=p.max_predictions,
        unselectable_token_ids=[PAD_ID, UNK_ID, BOS_ID, EOS_ID, mask_token_id])

    def mask(inputs, _):
        out = masker(inputs["token_ids"])
        return ({"token_ids": tf.cast(out["token_ids"], tf.int32),
                 "padding_mask": inputs["padding_mask"],
                 "mask_positions": tf.cast(out["mask_positions"], tf.int32)},
                {"mask_ids": tf.cast(out["mask_ids"], tf.int32),
                 "mask_weights": tf.cast(out["mask_weights"], tf.float32)})

    dataset = dataset.map(mask, num_parallel_calls=AUTOTUNE)
    if skip_batches:
        dataset = dataset.skip(skip_batches)
    return dataset.prefetch(AUTOTUNE)


def pretrain(cfg: ExperimentConfig, splits: TextSplits, log=print, strategy=None) -> str:
    """Pre-trains (or reuses) the encoder; returns its checkpoint path."""
    corpus, stats = build_corpus(cfg, splits, log)
    if not corpus:
        raise DataError("config key 'pretrain.corpora': the pre-training corpus is empty")
    fp = fingerprint(cfg, corpus)
    out_dir = pretrained_dir(cfg, fp)
    summary_path = os.path.join(out_dir, SUMMARY_FILE)
    if os.path.isfile(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
        log(f"[pretrain] reusing {out_dir} ({summary['steps']:,} steps, masked-token "
            f"accuracy {summary['masked_accuracy']:.3f}, pre-trained in "
            f"{format_duration(summary['seconds'])})")
        _copy_summaries(out_dir, cfg.run_dir)
        # The directory may have moved: the checkpoint is found relative to it.
        return os.path.join(out_dir, "encoder",
                            os.path.basename(summary["encoder_checkpoint"]))
    result = _train_mlm(cfg, corpus, stats, out_dir, fp, log, strategy)
    _copy_summaries(out_dir, cfg.run_dir)
    return result


def _copy_summaries(out_dir: str, run_dir: str) -> None:
    """The pre-training curves go next to the fine-tuning ones in TensorBoard."""
    source = os.path.join(out_dir, "tensorboard", "pretrain")
    if os.path.isdir(source):
        shutil.copytree(source, os.path.join(run_dir, "tensorboard", "pretrain"),
                        dirs_exist_ok=True)


def _train_mlm(cfg, corpus, stats, out_dir, fp, log, strategy) -> str:
    import keras
    import tensorflow as tf

    from models import MaskedLanguageModel
    from pipeline.distribute import get_strategy, worker_info
    from pipeline.tokenizer import (MASK_TOKEN, InGraphTokenizer, read_model,
                                    token_id, train_sentencepiece, vocabulary_size)
    from pipeline.train import (EncoderVariables, ModelVariables, WarmupSchedule,
                                _Saver, build_model, make_train_step, restore_latest)

    p = cfg.pretrain
    strategy = strategy or get_strategy(cfg.runtime)
    is_chief, worker, _ = worker_info(strategy)
    keras.config.set_dtype_policy(cfg.runtime.precision)
    keras.utils.set_random_seed(p.seed)
    os.makedirs(out_dir, exist_ok=True)
    tokenizer_path = train_sentencepiece(corpus, cfg.tokenizer,
                                         os.path.join(out_dir, "tokenizer"), log=log,
                                         control_symbols=(MASK_TOKEN,))
    mask_id = token_id(tokenizer_path, MASK_TOKEN)
    vocab = vocabulary_size(tokenizer_path)
    tokenizer = InGraphTokenizer(read_model(tokenizer_path), cfg.model.max_sequence_length)
    replicas = strategy.num_replicas_in_sync
    if p.global_batch_size % replicas:
        raise ValueError(f"config key 'pretrain.global_batch_size' = "
                         f"{p.global_batch_size}: must be divisible by the number of "
                         f"replicas ({replicas})")
    with strategy.scope():
        encoder = build_model(cfg, vocab, num_classes=2)  # the head is not trained
        model = MaskedLanguageModel(encoder, name="masked_language_model")
        model({"token_ids": tf.zeros((1, 8), tf.int32),
               "padding_mask": tf.ones((1, 8), tf.bool),
               "mask_positions": tf.zeros((1, p.max_predictions), tf.int32)})
        optimizer = keras.optimizers.AdamW(
            learning_rate=WarmupSchedule(p.learning_rate,
                                         int(p.warmup_fraction * p.steps), p.steps),
            weight_decay=p.weight_decay, global_clipnorm=1.0)
        optimizer.build(model.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=ModelVariables(model), optimizer=optimizer)
    saver = _Saver(checkpoint, os.path.join(out_dir, "checkpoints"), is_chief, worker,
                   max_to_keep=2)
    restored = restore_latest(checkpoint, saver.reader, log)
    start_step = int(optimizer.iterations.numpy())
    if restored:
        log(f"[pretrain] resumed from {restored} at step {start_step:,}/{p.steps:,}")
    log(f"[pretrain] masked-LM pre-training: {model.count_params():,} parameters, "
        f"vocabulary {vocab:,} ([MASK] = {mask_id}), global batch "
        f"{p.global_batch_size}, {p.steps:,} steps "
        f"(~{p.steps * p.global_batch_size / len(corpus):.1f} passes over the corpus), "
        f"writing {out_dir}/")

    per_replica = p.global_batch_size // replicas
    data = strategy.distribute_datasets_from_function(
        lambda ctx: make_mlm_dataset(corpus, tokenizer, cfg, per_replica, mask_id,
                                     vocab, skip_batches=start_step, input_context=ctx))

    def mlm_loss(inputs, targets):
        logits = model(inputs, training=True)  # (batch, predictions, vocab)
        ids, weights = targets["mask_ids"], targets["mask_weights"]
        token_loss = keras.losses.sparse_categorical_crossentropy(
            ids, logits, from_logits=True)  # (batch, predictions)
        per_example = tf.reduce_sum(token_loss * weights, -1) / tf.maximum(
            tf.reduce_sum(weights, -1), 1.0)
        hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), ids),
                       tf.float32)
        # Masked-token accuracy, scaled so that correct / batch is the accuracy.
        accuracy = tf.reduce_sum(hits * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)
        return per_example, accuracy * tf.cast(tf.shape(ids)[0], tf.float32)

    train_step = make_train_step(model, optimizer, strategy, mlm_loss,
                                 p.global_batch_size, jit_compile=cfg.runtime.jit_compile)
    writer = tf.summary.create_file_writer(os.path.join(out_dir, "tensorboard", "pretrain")) \
        if is_chief else tf.summary.create_noop_writer()
    iterator = iter(data)
    step, start = start_step, time.time()
    window = {"loss": 0.0, "correct": 0.0, "steps": 0, "start": time.time()}
    loss = accuracy = float("nan")
    no_stop = tf.constant(0.0)
    while step < p.steps:
        step_loss, correct, _ = train_step(iterator, no_stop)
        window["loss"] += float(step_loss)
        window["correct"] += float(correct)
        window["steps"] += 1
        step += 1
        if step % p.log_every_steps == 0 or step == p.steps:
            elapsed = time.time() - window["start"]
            rate = window["steps"] * p.global_batch_size / max(elapsed, 1e-9)
            loss = window["loss"] / window["steps"]
            accuracy = window["correct"] / (window["steps"] * p.global_batch_size)
            lr = float(optimizer.learning_rate)
            eta = (p.steps - step) * p.global_batch_size / max(rate, 1e-9)
            log(f"[pretrain] step {step:,}/{p.steps:,}  loss {loss:.4f}  masked-token "
                f"acc {accuracy:.3f}  lr {lr:.2e}  {rate:,.0f} ex/s  "
                f"ETA {format_duration(eta)}")
            with writer.as_default(step=step):
                tf.summary.scalar("loss", loss)
                tf.summary.scalar("masked_token_accuracy", accuracy)
                tf.summary.scalar("learning_rate", lr)
                tf.summary.scalar("examples_per_second", rate)
            window = {"loss": 0.0, "correct": 0.0, "steps": 0, "start": time.time()}
        if step % p.checkpoint_every_steps == 0 or step == p.steps:
            saver.save(step)
    writer.flush()
    seconds = time.time() - start
    encoder_path = os.path.join(out_dir, "encoder", f"encoder-{step}")
    if is_chief:
        _write_encoder(EncoderVariables(encoder), encoder_path)
        summary = {"fingerprint": fp, "steps": step, "resumed_from_step": start_step,
                   "seconds": round(seconds, 1), "loss": loss,
                   "masked_accuracy": accuracy, "corpus": stats,
                   "tokenizer": tokenizer_path, "encoder_checkpoint": encoder_path,
                   "config": cfg.to_dict()["pretrain"]}
        from pipeline.evaluate import write_json

        write_json(os.path.join(out_dir, SUMMARY_FILE), summary)
    log(f"[pretrain] done: {step:,} steps in {format_duration(seconds)}; masked-token "
        f"accuracy {accuracy:.3f}; encoder {encoder_path}")
    return encoder_path


def _write_encoder(variables, path: str) -> None:
    """Writes the encoder checkpoint into a temporary directory, then renames it."""
    import tensorflow as tf

    final_dir = os.path.dirname(path)
    tmp_dir = f"{final_dir}.{os.getpid()}.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tf.train.Checkpoint(encoder=variables).write(
        os.path.join(tmp_dir, os.path.basename(path)))
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(tmp_dir, final_dir)


def summary_of(init_checkpoint: str) -> dict | None:
    """pretrain.json of the directory an encoder checkpoint belongs to."""
    encoder_dir = init_checkpoint if os.path.isdir(init_checkpoint) else \
        os.path.dirname(init_checkpoint)
    path = os.path.join(os.path.dirname(os.path.abspath(encoder_dir)), SUMMARY_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
