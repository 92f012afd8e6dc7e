"""Masked-language-model pre-training of the encoder backbone (BERT-style): a
task on the shared trainer.

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
the model is `models.MaskedLanguageModel` (a `TransformerEncoderBackbone` of
the classifier's shape with a head tied to its token embedding), and the loop
is the shared trainer's (`pipeline/trainer.py`: checkpoints, exact resume,
SIGTERM save, step watchdog). The result is cached in
<artifacts_root>/pretrained/mlm-<fingerprint>/:

  tokenizer/spm.model     SentencePiece with [MASK], used by fine-tuning too
  checkpoints/            full training state (a rerun, or a run after SIGTERM,
                          resumes at the next step)
  encoder/encoder-<step>  the backbone weights fine-tuning starts from
  tensorboard/pretrain/   loss, masked-token accuracy, learning rate
  pretrain.json           written last: corpus, steps, loss, accuracy, time

A run whose fingerprint (corpus, tokenizer, model and pre-training settings)
matches a finished directory reuses it without training.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field

from pipeline.config import ExperimentConfig, TrainConfig, check
from pipeline.datasets.wordnet_topics import parse_gloss_line, read_parsed, split_of
from pipeline.files import write_json
from pipeline.progress import format_duration
from pipeline.sources import DataError, TextSplits
from pipeline.tasks import register_task
from pipeline.tasks.base import Task

WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
SUMMARY_FILE = "pretrain.json"
# `pretrain.corpora` entry: the task's own training split (CSV/JSONL users' text).
TRAIN_SPLIT = "train_split"


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


@dataclass
class Corpus:
    """The pre-training text: `texts` held in memory (de-duplicated, held-out
    text dropped) and `streams`, parts too large for memory read from files at
    every pass (functions input_context -> dataset of tf.string, sharded for
    that input pipeline), whose held-out text is dropped in the input
    pipeline. `sample` is what the tokenizer trains on: `texts` and a bounded
    sample of each stream."""
    texts: list[str]
    streams: list = field(default_factory=list)
    stream_examples: int = 0
    sample: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)   # fingerprints of the streams

    @property
    def size(self) -> int:
        """Texts in memory plus examples streamed (before their held-out filter)."""
        return len(self.texts) + self.stream_examples

    def __len__(self) -> int:
        return self.size

    def dataset(self, input_context=None):
        """{"text", "label": 0} of the whole corpus, this input pipeline's share:
        the texts in memory, then each stream without its held-out texts."""
        import numpy as np
        import tensorflow as tf

        from pipeline.prepared import shard_elements

        parts = []
        if self.texts:
            parts.append(shard_elements(tf.data.Dataset.from_tensor_slices(
                {"text": np.array(self.texts, dtype=object),
                 "label": np.zeros(len(self.texts), np.int32)}), input_context))
        held_out = None
        if self.streams and self.held_out:
            held_out = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant(self.held_out), tf.ones(len(self.held_out), tf.int32)),
                default_value=0)

        def kept(text):
            if held_out is None:
                return tf.constant(True)
            # As build_corpus: neither the text nor its gloss (after "lemmas: ").
            gloss = tf.strings.regex_replace(text, r"(?s)^.*?: ", "", replace_global=False)
            return tf.equal(held_out.lookup(text) + held_out.lookup(gloss), 0)

        for stream in self.streams:
            parts.append(stream(input_context).filter(kept).map(
                lambda text: {"text": text, "label": tf.constant(0, tf.int32)}))
        dataset = parts[0]
        for part in parts[1:]:
            dataset = dataset.concatenate(part)
        return dataset


def _text_file_rows(path: str):
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                yield "train", line.strip(), ""


def file_corpus(cfg: ExperimentConfig, path: str, log=print):
    """A .txt (a text per line), .csv or .jsonl (column `data.text_column`)
    file, prepared once into TFRecord shards (`pipeline.prepared`): (its texts
    in memory, or None when it has more than `data.sample_examples`; a stream
    function; its size; its sample; its prepared directory's name)."""
    from pipeline import prepared
    from pipeline.sources import _read_rows

    if not os.path.isfile(path):
        raise DataError(f"config key 'pretrain.corpora': file not found: {path}")
    d = cfg.data
    if path.endswith((".csv", ".jsonl")):
        fmt = "csv" if path.endswith(".csv") else "jsonl"

        def rows():
            for _, text, _ in _read_rows(path, fmt, d.text_column, d.text_column):
                yield "train", text, ""
    else:
        fmt = "text"

        def rows():
            return _text_file_rows(path)
    data = prepared.prepare(cfg.runtime.artifacts_root, "corpus", [path],
                            {"format": fmt, "text_column": d.text_column}, rows, ["train"],
                            d.examples_per_shard, d.sample_examples, log=log)
    info = data.split("train")
    sample = [text for text, _ in info["sample"]]

    def stream(input_context=None):
        return prepared.read_shards(data.files("train"), input_context).map(
            lambda e: e["text"])

    complete = len(sample) == info["examples"]
    return (sample if complete else None), stream, info["examples"], sample, data.name


def build_corpus(cfg: ExperimentConfig, splits: TextSplits, log=print
                 ) -> tuple[Corpus, dict]:
    """The pre-training corpus (de-duplicated where held in memory) and what
    was excluded."""
    p = cfg.pretrain
    held_out_texts = set()
    for split in p.exclude_splits:
        if splits.complete(split):
            held_out_texts.update(str(t) for t in splits.sample(split)[0])
        else:   # a held-out split that streams: its texts, one pass
            import tensorflow as tf

            for batch in splits.dataset(split).map(lambda e: e["text"]).batch(4096) \
                    .prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
                held_out_texts.update(t.decode("utf-8") for t in batch)
    texts, stats, held_out_glosses = [], {}, set()
    corpus = Corpus([])
    for source in p.corpora:
        found = None
        if source == "wordnet":
            found, held_out_glosses, counts = wordnet_corpus(
                p.wordnet_dir, p.exclude_splits, cfg.data.include_lemmas)
            stats["wordnet"] = counts
        elif source == TRAIN_SPLIT:
            # The task's own training texts: never its validation or test ones.
            if splits.complete("train"):
                found = [str(t) for t in splits.sample("train")[0]]
            else:
                corpus.streams.append(lambda ctx: splits.dataset("train", ctx).map(
                    lambda e: e["text"]))
                corpus.stream_examples += splits.num_examples("train")
                corpus.sample.extend(str(t) for t in splits.sample("train")[0])
                corpus.parts.append(f"{TRAIN_SPLIT}:{splits.fingerprint}")
            stats[TRAIN_SPLIT] = {"texts": splits.num_examples("train"),
                                  "streamed": found is None}
        else:
            found, stream, count, sample, name = file_corpus(cfg, source, log)
            if found is None:
                corpus.streams.append(stream)
                corpus.stream_examples += count
                corpus.sample.extend(sample)
                corpus.parts.append(f"file:{name}")
            stats[source] = {"texts": count, "streamed": found is None}
        if found is not None:
            texts.extend(found)
    seen, dropped = set(), 0
    for text in texts:
        if text in seen:
            continue
        seen.add(text)
        gloss = text.split(": ", 1)[-1]
        if text in held_out_texts or gloss in held_out_glosses or \
                (held_out_texts and gloss in held_out_texts):
            dropped += 1
            continue
        corpus.texts.append(text)
    corpus.sample = corpus.texts + corpus.sample
    if corpus.streams:
        corpus.held_out = sorted(held_out_texts | held_out_glosses)
    stats.update({"texts": corpus.size, "dropped_as_held_out": dropped,
                  "excluded_splits": list(p.exclude_splits),
                  "characters": sum(len(t) for t in corpus.texts)})
    if corpus.streams:
        stats["streamed_examples"] = corpus.stream_examples
    log(f"[pretrain] corpus: {corpus.size:,} texts "
        + (f"({len(corpus.texts):,} in memory, {stats['characters'] / 1e6:.1f}M "
           f"characters; {corpus.stream_examples:,} streamed from files, their held-out "
           "texts dropped as they are read) " if corpus.streams else
           f"({stats['characters'] / 1e6:.1f}M characters) ")
        + f"from {', '.join(p.corpora)}; the task's "
        f"{'/'.join(p.exclude_splits)} texts excluded")
    return corpus, stats


def fingerprint(cfg: ExperimentConfig, corpus: Corpus) -> str:
    """What the pre-trained encoder depends on: corpus and settings."""
    digest = hashlib.sha256()
    for text in corpus.texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\n")
    for part in corpus.parts:   # streamed parts: their prepared files' fingerprints
        digest.update(f"\0{part}".encode())
    model = {k: v for k, v in cfg.to_dict()["model"].items() if k != "init_checkpoint"}
    pretrain = {k: v for k, v in cfg.to_dict()["pretrain"].items()
                if k not in ("from_scratch_experiment", "checkpoint_every_steps",
                             "log_every_steps")}
    # checkpoint_format 2: backbone weights keyed "backbone/..." (models/ split
    # the backbone from the heads); a cache of format 1 is not reused.
    settings = {"corpus": digest.hexdigest(), "model": model, "pretrain": pretrain,
                "checkpoint_format": 2,
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


def make_mlm_dataset(corpus: Corpus | list[str], preprocess, cfg: ExperimentConfig,
                     batch_size: int, mask_token_id: int, vocab_size: int,
                     skip_batches: int = 0, input_context=None):
    """Endless batches of ({token_ids, padding_mask, mask_positions},
    {mask_ids, mask_weights}) with BERT's 80/10/10 masking. The texts in
    memory come first, then each stream; the tokenized examples are kept in
    memory only when nothing streams."""
    import keras_hub
    import tensorflow as tf

    from pipeline.input import AUTOTUNE, batch_examples, tokenize_examples
    from pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

    if not callable(preprocess):
        raise TypeError("make_mlm_dataset: `preprocess` must be a batch function")

    p = cfg.pretrain
    if not isinstance(corpus, Corpus):
        corpus = Corpus(list(corpus))
    dataset = corpus.dataset(input_context)
    dataset = tokenize_examples(dataset, preprocess)
    if not corpus.streams:
        dataset = dataset.cache()
    dataset = dataset.shuffle(min(corpus.size, 200_000), seed=p.seed,
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
    task = MaskedLMTask(cfg, log=log)
    task.set_corpus(corpus, stats, out_dir, fp)
    result = task.pretrain(strategy)
    _copy_summaries(out_dir, cfg.run_dir)
    return result


def _copy_summaries(out_dir: str, run_dir: str) -> None:
    """The pre-training curves go next to the fine-tuning ones in TensorBoard."""
    source = os.path.join(out_dir, "tensorboard", "pretrain")
    if os.path.isdir(source):
        shutil.copytree(source, os.path.join(run_dir, "tensorboard", "pretrain"),
                        dirs_exist_ok=True)


def backbone_variables(backbone):
    """The backbone's weights (no dropout state) as a tf.Module for tf.train,
    keyed by their path below the model (`backbone/...`): what pre-training
    hands to fine-tuning, whichever model holds the backbone."""
    import tensorflow as tf

    from pipeline.trainer import ModelVariables

    module = tf.Module()
    module.by_path = {key.split("/", 1)[1]: v
                      for key, v in ModelVariables(backbone).by_path.items()
                      if "seed_generator" not in key}
    return module


def init_backbone(backbone, init_checkpoint: str, log=print) -> str:
    """Loads pre-trained backbone weights; returns the checkpoint path read."""
    import tensorflow as tf

    path = tf.train.latest_checkpoint(init_checkpoint) if os.path.isdir(
        init_checkpoint) else init_checkpoint
    if not path or not tf.io.gfile.exists(f"{path}.index"):
        raise FileNotFoundError(
            f"config key 'model.init_checkpoint' = {init_checkpoint!r}: no encoder "
            "checkpoint there (expected <dir>/encoder/encoder-N written by pre-training)")
    try:
        tf.train.Checkpoint(encoder=backbone_variables(backbone)).read(path) \
            .assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as err:
        raise ValueError(
            f"config key 'model.init_checkpoint' = {init_checkpoint!r}: its weights do "
            f"not fit this model (model.* must match pre-training): "
            f"{str(err).splitlines()[0][:300]}") from None
    log(f"[train] encoder initialised from pre-trained {path}")
    return path


@register_task("masked_lm")
class MaskedLMTask(Task):
    """BERT-style masked-LM pre-training of a `TransformerEncoderBackbone`.

    Its config is the `pretrain` section (and `model`, `tokenizer`); it runs
    as the first stage of a task with `pretrain.enabled` (`pretrain()` below)
    or alone (`python -m pipeline pretrain <config>`). No validation split:
    the trainer keeps the last weights.
    """

    best_metric = "loss"
    best_direction = "min"
    log_prefix = "[pretrain]"
    log_names = {"masked_token_accuracy": "masked-token acc"}
    batch_size_key = "pretrain.global_batch_size"

    @classmethod
    def validate_config(cls, cfg) -> None:
        p, d = cfg.pretrain, cfg.data
        check(bool(p.corpora), "pretrain.corpora", p.corpora,
              f"'wordnet', '{TRAIN_SPLIT}' and/or text/CSV/JSONL file paths")
        check(TRAIN_SPLIT not in p.corpora or "train" not in p.exclude_splits,
              "pretrain.exclude_splits", p.exclude_splits,
              f"no 'train' when pretrain.corpora holds '{TRAIN_SPLIT}'")
        for split in p.exclude_splits:
            check(split in ("train", "validation", "test"), "pretrain.exclude_splits",
                  split, "each one of 'train', 'validation', 'test'")
        check("test" in p.exclude_splits, "pretrain.exclude_splits",
              p.exclude_splits, "a list that holds 'test' (no test text in "
              "pre-training)")
        check(d.source == "wordnet_topics" or "wordnet" not in p.corpora,
              "pretrain.corpora", p.corpora,
              "no 'wordnet' unless data.source is 'wordnet_topics' (the split "
              "exclusion needs the task's synset split)")
        check(p.steps > 0, "pretrain.steps", p.steps, "> 0")
        check(p.global_batch_size > 0, "pretrain.global_batch_size",
              p.global_batch_size, "> 0")
        check(p.learning_rate > 0, "pretrain.learning_rate", p.learning_rate, "> 0")
        check(0.0 <= p.warmup_fraction < 1.0, "pretrain.warmup_fraction",
              p.warmup_fraction, "in [0, 1)")
        check(0.0 < p.mask_rate < 1.0, "pretrain.mask_rate", p.mask_rate, "in (0, 1)")
        check(p.max_predictions > 0, "pretrain.max_predictions",
              p.max_predictions, "> 0")
        check(p.checkpoint_every_steps > 0, "pretrain.checkpoint_every_steps",
              p.checkpoint_every_steps, "> 0")
        check(p.log_every_steps > 0, "pretrain.log_every_steps",
              p.log_every_steps, "> 0")

    def __init__(self, cfg, log=print):
        super().__init__(cfg, log)
        self.corpus: Corpus | None = None
        self.backbone = None

    # --------------------------------------------------------------- data
    def set_corpus(self, corpus: Corpus, stats: dict, out_dir: str, fp: str) -> None:
        self.corpus, self.stats, self.out_dir, self.fingerprint = corpus, stats, out_dir, fp

    @property
    def run_dir(self) -> str:
        return self.out_dir

    def prepare(self, strategy=None) -> None:
        """The corpus (the classification task's held-out texts excluded) and
        the tokenizer with [MASK]."""
        from pipeline.tokenizer import (
            MASK_TOKEN,
            InGraphTokenizer,
            read_model,
            token_id,
            train_sentencepiece,
        )

        if self.corpus is None:
            from pipeline.sources import load_splits

            splits = load_splits(self.cfg.data, self.cfg.runtime.artifacts_root,
                                 log=self.log)
            corpus, stats = build_corpus(self.cfg, splits, self.log)
            if not corpus:
                raise DataError("config key 'pretrain.corpora': the pre-training "
                                "corpus is empty")
            fp = fingerprint(self.cfg, corpus)
            self.set_corpus(corpus, stats, pretrained_dir(self.cfg, fp), fp)
        os.makedirs(self.out_dir, exist_ok=True)
        self.tokenizer_path = train_sentencepiece(
            self.corpus.sample, self.cfg.tokenizer, os.path.join(self.out_dir, "tokenizer"),
            log=self.log, control_symbols=(MASK_TOKEN,))
        self.mask_id = token_id(self.tokenizer_path, MASK_TOKEN)
        self._tokenizer = InGraphTokenizer(read_model(self.tokenizer_path),
                                           self.cfg.model.max_sequence_length)

    def train_config(self) -> TrainConfig:
        p = self.cfg.pretrain
        return TrainConfig(
            global_batch_size=p.global_batch_size, epochs=1, max_steps=p.steps,
            learning_rate=p.learning_rate, warmup_fraction=p.warmup_fraction,
            decay="cosine", weight_decay=p.weight_decay, clip_norm=1.0,
            checkpoint_every_steps=p.checkpoint_every_steps, keep_checkpoints=2,
            log_every_steps=p.log_every_steps, seed=p.seed)

    def num_examples(self, split):
        return self.corpus.size if split == "train" else 0

    def sample(self, split, max_examples=0, seed=None):
        texts = self.corpus.sample if split == "train" else []
        return [{"text": t} for t in (texts[:max_examples] if max_examples else texts)]

    def preprocess(self, examples):
        from pipeline.input import tokenize

        return tokenize(self._tokenizer, examples)

    def train_dataset(self, batch_size, skip_batches=0, input_context=None):
        from pipeline.tokenizer import vocabulary_size

        return make_mlm_dataset(self.corpus, self.preprocess, self.cfg, batch_size,
                                self.mask_id, vocabulary_size(self.tokenizer_path),
                                skip_batches=skip_batches, input_context=input_context)

    def eval_dataset(self, split, batch_size):
        return None

    def tensorboard_dirs(self):
        return os.path.join(self.out_dir, "tensorboard", "pretrain"), None

    def write_start_summaries(self, train_writer, validation_writer, model) -> None:
        pass

    # -------------------------------------------------------------- model
    def build_model(self):
        import tensorflow as tf

        from models import MaskedLanguageModel, TransformerEncoderBackbone
        from pipeline.tokenizer import vocabulary_size

        m, p = self.cfg.model, self.cfg.pretrain
        self.backbone = TransformerEncoderBackbone(
            vocabulary_size=vocabulary_size(self.tokenizer_path),
            hidden_dim=m.hidden_dim, intermediate_dim=m.intermediate_dim,
            num_heads=m.num_heads, num_layers=m.num_layers, dropout=m.dropout,
            max_sequence_length=m.max_sequence_length, norm_first=m.norm_first,
            name="backbone")
        model = MaskedLanguageModel(self.backbone, name="masked_language_model")
        model({"token_ids": tf.zeros((1, 8), tf.int32),
               "padding_mask": tf.ones((1, 8), tf.bool),
               "mask_positions": tf.zeros((1, p.max_predictions), tf.int32)})
        return model

    # --------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, targets, training=True):
        import tensorflow as tf

        from models.losses import sparse_softmax_cross_entropy

        ids, weights = targets["mask_ids"], targets["mask_weights"]  # (batch, predictions)
        # Logits of the real predictions only (weight > 0), row-major.
        logits = model({**inputs, "mask_weights": weights}, training=training)
        selected = tf.where(weights > 0)                  # (selected, 2): row, slot
        selected_ids = tf.gather_nd(ids, selected)
        token_loss = sparse_softmax_cross_entropy(selected_ids, logits)  # (selected,)
        batch = tf.shape(ids)[0]
        rows = tf.cast(selected[:, 0], tf.int32)
        counts = tf.reduce_sum(weights, -1)
        per_example = tf.math.unsorted_segment_sum(
            token_loss * tf.gather_nd(weights, selected), rows, batch) / tf.maximum(counts, 1.0)
        hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), selected_ids),
                       tf.float32)
        # Masked-token accuracy, scaled so that the sum / batch is the accuracy.
        accuracy = tf.reduce_sum(hits) / tf.maximum(tf.reduce_sum(weights), 1.0)
        return per_example, {
            "masked_token_accuracy": accuracy * tf.cast(batch, tf.float32)}

    # ---------------------------------------------------------- the stage
    def pretrain(self, strategy=None) -> str:
        """Prepares, trains (resuming) on the shared trainer, writes the
        backbone checkpoint and pretrain.json; returns the checkpoint path."""
        from pipeline.distribute import worker_info
        from pipeline.tokenizer import vocabulary_size
        from pipeline.trainer import train

        self.prepare(strategy)
        p, log = self.cfg.pretrain, self.log
        log(f"[pretrain] masked-LM pre-training: vocabulary "
            f"{vocabulary_size(self.tokenizer_path):,} ([MASK] = {self.mask_id}), "
            f"global batch {p.global_batch_size}, {p.steps:,} steps "
            f"(~{p.steps * p.global_batch_size / len(self.corpus):.1f} passes over the "
            f"corpus), writing {self.out_dir}/")
        result = train(self, log=log, strategy=strategy)
        step = result.steps
        encoder_path = os.path.join(self.out_dir, "encoder", f"encoder-{step}")
        is_chief = worker_info(strategy)[0] if strategy is not None else True
        loss = result.last_logs.get("loss", float("nan"))
        accuracy = result.last_logs.get("masked_token_accuracy", float("nan"))
        if is_chief:
            _write_encoder(backbone_variables(self.backbone), encoder_path)
            write_json(os.path.join(self.out_dir, SUMMARY_FILE), {
                "fingerprint": self.fingerprint, "steps": step,
                "resumed_from_step": result.resumed_from_step,
                "seconds": round(result.train_seconds, 1), "loss": loss,
                "masked_accuracy": accuracy, "corpus": self.stats,
                "tokenizer": self.tokenizer_path, "encoder_checkpoint": encoder_path,
                "config": self.cfg.to_dict()["pretrain"]})
        log(f"[pretrain] done: {step:,} steps in {format_duration(result.train_seconds)}; "
            f"masked-token accuracy {accuracy:.3f}; encoder {encoder_path}")
        return encoder_path


def _write_encoder(variables, path: str) -> None:
    """Writes the encoder checkpoint into a temporary directory, then renames it."""
    import tensorflow as tf

    final_dir = os.path.dirname(path)
    from pipeline.files import replace_dir, temp_dir_path

    tmp_dir = temp_dir_path(final_dir)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tf.train.Checkpoint(encoder=variables).write(
        os.path.join(tmp_dir, os.path.basename(path)))
    replace_dir(tmp_dir, final_dir)


def summary_of(init_checkpoint: str) -> dict | None:
    """pretrain.json of the directory an encoder checkpoint belongs to."""
    encoder_dir = init_checkpoint if os.path.isdir(init_checkpoint) else \
        os.path.dirname(init_checkpoint)
    path = os.path.join(os.path.dirname(os.path.abspath(encoder_dir)), SUMMARY_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
