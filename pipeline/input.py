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
from pipeline.prepared import shard_elements
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
    return unbatch_examples(tokenize_batches(dataset, preprocess), trim)


def tokenize_batches(dataset: tf.data.Dataset, preprocess) -> tf.data.Dataset:
    """The first half of `tokenize_examples`: raw examples -> `preprocess`ed
    batches of TOKENIZE_BATCH (the last one smaller), padded to their longest."""
    return dataset.batch(TOKENIZE_BATCH).map(preprocess, num_parallel_calls=AUTOTUNE,
                                             deterministic=True)


def _trim_classification(example):
    return {"token_ids": example["token_ids"][: example["length"]],
            "label": example["label"]}


def unbatch_examples(batches: tf.data.Dataset, trim=None) -> tf.data.Dataset:
    """The second half of `tokenize_examples`: `tokenize_batches`' output ->
    one unpadded example at a time (`trim`, by default the classification one)."""
    return batches.unbatch().map(trim or _trim_classification,
                                 num_parallel_calls=AUTOTUNE, deterministic=True)


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


def shard_source(source, input_context: tf.distribute.InputContext | None):
    """This input pipeline's share of `source`: a dataset (sharded here by
    element), or a function input_context -> dataset that shards itself (a
    source streamed from files shards by file)."""
    return source(input_context) if callable(source) else \
        shard_elements(source, input_context)


def make_train_dataset(source, preprocess,
                       cfg: ExperimentConfig, batch_size: int,
                       skip_batches: int = 0,
                       input_context: tf.distribute.InputContext | None = None,
                       trim=None, finalize=add_padding_mask,
                       cache: bool = True) -> tf.data.Dataset:
    """An endless, deterministic stream of training batches.

    The order depends only on `train.seed`, so a resumed run skips exactly the
    batches already trained on (`skip_batches` = completed steps). `trim` and
    `finalize` are the task's hooks of `tokenize_examples` and `batch_examples`.
    `source` is a dataset or a function of the input context (`shard_source`);
    `cache` keeps the tokenized examples in memory after the first epoch (off
    for data streamed from files: it is tokenized again every epoch).
    With `runtime.data_service` set, the tf.data service produces the stream
    instead (`make_service_train_dataset`: not in a reproducible order).
    """
    if cfg.runtime.data_service:
        return make_service_train_dataset(source, preprocess, cfg, batch_size,
                                          start_step=skip_batches,
                                          input_context=input_context, trim=trim,
                                          finalize=finalize)
    t = cfg.train
    dataset = tokenize_examples(shard_source(source, input_context), preprocess, trim)
    if cache:
        dataset = dataset.cache()
    dataset = dataset.shuffle(t.shuffle_buffer, seed=t.seed,
                              reshuffle_each_iteration=True).repeat()
    dataset = batch_examples(dataset, batch_size, cfg.model.max_sequence_length,
                             t.bucket_by_length, drop_remainder=True, finalize=finalize)
    if skip_batches:
        dataset = dataset.skip(skip_batches)
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options).prefetch(AUTOTUNE)


def split_in_chunks(source: tf.data.Dataset, size: int) -> tf.data.Dataset:
    """The examples of `source`, in order, as a dataset whose splittable
    source is the chunk index: a tf.data service in DYNAMIC mode then hands
    out `size` consecutive examples per split. `source` as it is when its
    length is unknown."""
    count = int(source.cardinality())
    if count < 0:
        return source
    chunks = tf.data.Dataset.range((count + size - 1) // size)
    return chunks.flat_map(lambda i: source.skip(i * size).take(size))


def make_service_train_dataset(source, preprocess,
                               cfg: ExperimentConfig, batch_size: int,
                               start_step: int = 0,
                               input_context: tf.distribute.InputContext | None = None,
                               trim=None, finalize=add_padding_mask) -> tf.data.Dataset:
    """The training stream of `make_train_dataset` with its tokenization done
    by the tf.data service at `runtime.data_service`: its workers tokenize one
    pass over the data per job; this process shuffles, buckets and batches
    what they send. Why it is cut this way (trials in docs/DATA_SERVICE.md):

    Processing mode ShardingPolicy.DYNAMIC ("distributed_epoch"): the
    dispatcher hands chunks of the source to the workers as they ask, so one
    job (one pass, one epoch here) tokenizes each example once, on whichever
    worker took it. `repeat()` is on this side: each epoch is a new job, and
    an epoch holds each example exactly once, as locally. Each trainer of a
    multi-worker run reads its own shard, as locally, through its own jobs
    (`pipeline.data_service.job_name` says why they share none).
    The other modes do not fit: with OFF every worker produces all the data
    (two workers: every example twice per epoch); the static ones (FILE,
    DATA, HINT) need each trainer to read only from a worker inside its own
    process (target_workers="LOCAL"), and these are other processes or hosts.

    What runs where, and what differs from the local stream:
    - shuffle and bucketing stay here. On the workers, each one shuffles its
      own share and emits nothing before the end of its share of an epoch;
      the faster one then takes most of the next epoch, and the trainer gets
      neighbouring epochs interleaved (an epoch's worth of batches repeats
      some examples and misses others).
    - no cache(): the workers tokenize again every epoch (that is the work
      they take off the trainer). A cache on the workers would also pin the
      examples a worker got in the first epoch to it, so those of a worker
      that dies would be gone for the rest of training.
    - the dispatcher hands out chunks of TOKENIZE_BATCH consecutive examples
      (`split_in_chunks`): one split request per example is several times
      slower. Whole tokenized batches travel to the trainer.
    - a source streamed from files (a split larger than
      `data.sample_examples`) is split by file: the dispatcher hands out
      whole TFRecord shards, so give it at least as many shards as workers
      (`data.examples_per_shard`).
    - no skip(start_step): the order depends on the order in which the
      workers' batches arrive, so it cannot be replayed; a resumed run reads
      a new job, which starts a fresh epoch.
    - the trainer's shuffle holds a whole epoch (as locally), so each epoch
      starts once the workers have tokenized all of it.
    """
    from pipeline import data_service

    t = cfg.train
    trainer, trainers = 0, 1
    if input_context is not None and input_context.num_input_pipelines > 1:
        trainer, trainers = input_context.input_pipeline_id, input_context.num_input_pipelines
    source = shard_source(source, input_context)
    served = tokenize_batches(split_in_chunks(source, TOKENIZE_BATCH), preprocess)
    served = data_service.distribute(
        served, cfg.runtime.data_service,
        data_service.job_name(cfg, start_step, trainer, trainers),
        timeout=cfg.runtime.data_service_timeout_seconds)
    dataset = unbatch_examples(served, trim)
    dataset = dataset.shuffle(t.shuffle_buffer, seed=t.seed,
                              reshuffle_each_iteration=True).repeat()
    dataset = batch_examples(dataset, batch_size, cfg.model.max_sequence_length,
                             t.bucket_by_length, drop_remainder=True, finalize=finalize)
    return dataset.prefetch(AUTOTUNE)


def make_eval_dataset(source: tf.data.Dataset, preprocess,
                      cfg: ExperimentConfig, batch_size: int,
                      trim=None, finalize=add_padding_mask,
                      cache: bool = True) -> tf.data.Dataset:
    """Batches of the whole split in order, padded to the maximum length
    (tokenized once and kept in memory with `cache`)."""
    dataset = tokenize_examples(source, preprocess, trim)
    if cache:
        dataset = dataset.cache()
    dataset = batch_examples(dataset, batch_size, cfg.model.max_sequence_length,
                             bucket=False, drop_remainder=False, finalize=finalize)
    return dataset.prefetch(AUTOTUNE)
