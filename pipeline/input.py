"""tf.data input: tokenize in the graph, cache, shuffle, bucket, batch, prefetch.

Every function here maps datasets of dicts to datasets of dicts. For
classification (the defaults), model inputs are {"token_ids": int32 (batch,
seq), "padding_mask": bool (batch, seq)} and the label is int32 (batch,);
other tasks pass their own `trim` and `finalize` hooks (translation: a
source and a target sequence, bucketed together).
"""

from __future__ import annotations

import tensorflow as tf

from pipeline.config import ExperimentConfig
from pipeline.tokenizer import PAD_ID, InGraphTokenizer

AUTOTUNE = tf.data.AUTOTUNE
TOKENIZE_BATCH = 256


def bucket_boundaries(max_sequence_length: int) -> list[int]:
    """Padded lengths of the buckets: multiples of 8 that grow by at most a
    quarter (8, 16, 24, ..., 64, 80, 96, 112, 128, 160, ...) up to the maximum.

    Fine buckets waste little compute on padding (WordNet texts of 25.6 tokens
    on average padded to 35.6 with power-of-two buckets, to 29.6 with these)
    and trace few enough shapes.
    """
    lengths, n = [], 8
    while n < max_sequence_length:
        lengths.append(n)
        n += 8 * max(1, n // 32)
    return lengths + [max_sequence_length]


def tokenize(tokenizer: InGraphTokenizer, examples: dict) -> dict:
    """A batch of raw examples to token ids: a pure dict -> dict tf function.

    {"text": (batch,) string, other keys} -> {"token_ids": (batch, longest)
    int32 right-padded with PAD_ID, "length": (batch,) int32, other keys as
    they are}.
    """
    ragged = tokenizer.ragged(examples["text"])
    features = {k: v for k, v in examples.items() if k != "text"}
    features.update({"token_ids": ragged.to_tensor(default_value=PAD_ID),
                     "length": tf.cast(ragged.row_lengths(), tf.int32)})
    return features


def tokenize_examples(dataset: tf.data.Dataset, preprocess, trim=None) -> tf.data.Dataset:
    """Raw examples -> tokenized examples, one at a time, unpadded.

    `preprocess` is the task's batch function (`tokenize` with its tokenizer);
    `trim` maps one of its unbatched outputs to the example kept: by default
    {"token_ids": (None,) int32 cut to "length", "label"} (classification).
    A task with other sequences (translation: source and target) passes its
    own; every rank-1 value is a sequence that `batch_examples` pads.
    """
    def trim_classification(example):
        return {"token_ids": example["token_ids"][: example["length"]],
                "label": example["label"]}

    return (dataset.batch(TOKENIZE_BATCH)
            .map(preprocess,
                 num_parallel_calls=AUTOTUNE, deterministic=True)
            .unbatch()
            .map(trim or trim_classification, num_parallel_calls=AUTOTUNE,
                 deterministic=True))


def add_padding_mask(batch: dict) -> tuple[dict, tf.Tensor]:
    ids = batch["token_ids"]
    return {"token_ids": ids, "padding_mask": tf.not_equal(ids, PAD_ID)}, batch["label"]


def batch_examples(dataset: tf.data.Dataset, batch_size: int, max_sequence_length: int,
                   bucket: bool, drop_remainder: bool,
                   finalize=add_padding_mask) -> tf.data.Dataset:
    """Pads to a bucket boundary (or the maximum length), batches, and maps
    `finalize` (batch dict -> (inputs, targets)) over the batches.

    Every rank-1 value of an example is a sequence padded with PAD_ID; every
    scalar is batched as it is. With several sequences (a source and a
    target), an example's length is its longest sequence and all its
    sequences are padded to the same bucket.
    """
    spec = dataset.element_spec
    sequences = [k for k, s in spec.items() if s.shape.rank == 1]
    padding_values = {k: tf.constant(PAD_ID if k in sequences else 0, s.dtype)
                      for k, s in spec.items()}

    def longest(example):
        return tf.reduce_max(tf.stack([tf.shape(example[k])[0] for k in sequences]))

    if bucket:
        lengths = bucket_boundaries(max_sequence_length)
        dataset = dataset.bucket_by_sequence_length(
            longest,
            # Boundaries are exclusive upper bounds; padding goes to boundary - 1.
            bucket_boundaries=[n + 1 for n in lengths[:-1]],
            bucket_batch_sizes=[batch_size] * len(lengths),
            padded_shapes={k: [None] if k in sequences else [] for k in spec},
            padding_values=padding_values,
            pad_to_bucket_boundary=False,
            drop_remainder=drop_remainder,
        )
        # Round each batch's length up to its bucket so few shapes are traced.
        def pad_to_bucket(batch):
            length = tf.reduce_max(tf.stack([tf.shape(batch[k])[1] for k in sequences]))
            target = tf.reduce_min(tf.boolean_mask(
                tf.constant(lengths), tf.constant(lengths) >= length))
            return {k: tf.pad(v, [[0, 0], [0, target - tf.shape(v)[1]]],
                              constant_values=PAD_ID) if k in sequences else v
                    for k, v in batch.items()}
        dataset = dataset.map(pad_to_bucket, num_parallel_calls=AUTOTUNE)
    else:
        dataset = dataset.padded_batch(
            batch_size,
            padded_shapes={k: [max_sequence_length] if k in sequences else []
                           for k in spec},
            padding_values=padding_values, drop_remainder=drop_remainder)
    return dataset.map(finalize, num_parallel_calls=AUTOTUNE)


def make_train_dataset(source: tf.data.Dataset, preprocess,
                       cfg: ExperimentConfig, batch_size: int,
                       skip_batches: int = 0,
                       input_context: tf.distribute.InputContext | None = None,
                       trim=None, finalize=add_padding_mask) -> tf.data.Dataset:
    """An endless, deterministic stream of training batches.

    The order depends only on `train.seed`, so a resumed run skips exactly the
    batches already trained on (`skip_batches` = completed steps). `trim` and
    `finalize` are the task's hooks of `tokenize_examples` and `batch_examples`.
    """
    t = cfg.train
    dataset = source
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)
    dataset = tokenize_examples(dataset, preprocess, trim).cache()
    dataset = dataset.shuffle(t.shuffle_buffer, seed=t.seed,
                              reshuffle_each_iteration=True).repeat()
    dataset = batch_examples(dataset, batch_size, cfg.model.max_sequence_length,
                             t.bucket_by_length, drop_remainder=True, finalize=finalize)
    if skip_batches:
        dataset = dataset.skip(skip_batches)
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options).prefetch(AUTOTUNE)


def make_eval_dataset(source: tf.data.Dataset, preprocess,
                      cfg: ExperimentConfig, batch_size: int,
                      trim=None, finalize=add_padding_mask) -> tf.data.Dataset:
    """Batches of the whole split in order, padded to the maximum length."""
    dataset = tokenize_examples(source, preprocess, trim).cache()
    dataset = batch_examples(dataset, batch_size, cfg.model.max_sequence_length,
                             bucket=False, drop_remainder=False, finalize=finalize)
    return dataset.prefetch(AUTOTUNE)
